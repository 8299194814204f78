"""`redeem-central`: set up the central, add campaigns, issue coupons, publish the ledger,
serve terminals (enrollment, ledger, journal upload), admin tokens and reports."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import signal
import sys
from collections.abc import Sequence
from datetime import tzinfo
from pathlib import Path

import segno

from coupons import cose, ledger, logjson, netallow, tokens
from coupons.cliutil import (
    EXIT_OK,
    UserError,
    add_json,
    emit,
    run_main,
    writable_dir,
)
from coupons.keys import PURPOSE_ISSUER, PURPOSE_LEDGER
from coupons.ledger import Policy, ledger_file
from coupons.ledger_store import write_atomic
from coupons.rules import InputError
from coupons.timeutil import clock_from_env
from sync import protocol
from sync.central import (
    archive,
    archive_cli,
    campaign_cli,
    display,
    issuing_cli,
    models,
    report,
    terminals,
    users_cli,
)
from sync.central.cli_common import Commands as _Commands
from sync.central.cli_common import add_key_options, audited, new_or_existing_master_key
from sync.central.cli_common import open_central as _open
from sync.central.store import Central, CentralError


def _root_key_file(path: str) -> cose.SigningKey:
    """The root key from the file `init --root-key-out` wrote (64 hex digits)."""
    try:
        return cose.SigningKey(bytes.fromhex(Path(path).read_text().strip()))
    except OSError as exc:
        raise UserError(f"--root-key-file {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise UserError(f"--root-key-file {path}: expected 64 hex digits (a root key)") from None


def cmd_init(args: argparse.Namespace) -> int:
    master_key, made = new_or_existing_master_key(args)
    root_out = Path(args.root_key_out) if args.root_key_out else None
    try:
        c = Central.init(Path(args.data), clock_from_env().now, args.database, master_key, root_out)
    except BaseException:
        if made is not None:  # nothing was sealed under it
            made.unlink(missing_ok=True)
        raise
    anchor = c.anchor
    lines = [
        f"central initialised in {args.data}",
        f"trust anchor: {args.data}/trust-anchor.json",
        f"fingerprint:  {anchor.fingerprint}",
    ]
    if made is not None:
        lines.append(
            f"master key:   {made} (new: keep a copy in a safe place; without it the keys in "
            "the database cannot be opened)"
        )
    if root_out is not None:
        lines.append(
            f"root key:     {root_out} (only there: move it off this machine; rotate-key "
            "needs it as --root-key-file)"
        )
    emit(
        args,
        {
            "data": args.data,
            "trust_anchor": str(Path(args.data) / "trust-anchor.json"),
            "fingerprint": anchor.fingerprint,
            "master_key_created": str(made) if made is not None else None,
            "root_key_out": str(root_out) if root_out is not None else None,
        },
        "\n".join(lines),
    )
    return EXIT_OK


def cmd_issue(args: argparse.Namespace) -> int:
    if not 1 <= args.count <= 1_000_000:
        raise UserError("--count must be between 1 and 1000000")
    try:
        customer = bytes.fromhex(args.customer) if args.customer else None
    except ValueError:
        raise UserError("--customer must be hex (a hash, never a name)") from None
    tag_uid = _tag_uid(args.tag_uid) if args.tag_uid else None
    if tag_uid is not None and args.codes:
        raise UserError("--tag-uid binds a signed token to an NFC tag; typed codes cannot be")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    c = _open(args)
    issued = c.issue(
        args.campaign, args.count, codes=args.codes, customer=customer, tag_uid=tag_uid
    )
    lines = [i.token or i.code or "" for i in issued]
    audited(c, "coupons.issue", f"campaign:{args.campaign}", None, {"count": len(issued)})
    (out / ("codes.txt" if args.codes else "tokens.txt")).write_text("\n".join(lines) + "\n")
    if not args.no_qr:
        for i in issued:
            segno.make(i.token or i.code or "", error="m", micro=False).save(
                str(out / f"{i.serial:016x}.png"), scale=4, border=4
            )
    emit(
        args,
        {
            "campaign": args.campaign,
            "count": len(issued),
            "out": str(out),
            "serials": [f"{i.serial:016x}" for i in issued],
            "token_chars": max((len(t) for t in lines), default=0),
            "tag_uid": tag_uid.hex() if tag_uid else None,
        },
        f"issued {len(issued)} coupon(s) for {args.campaign} into {out}",
    )
    return EXIT_OK


def _tag_uid(text: str) -> bytes:
    """An NFC tag UID as printed by readers: hex, any case, colons or spaces allowed."""
    cleaned = "".join(ch for ch in text if ch not in ": ")
    try:
        uid = bytes.fromhex(cleaned)
    except ValueError:
        raise UserError("--tag-uid must be the tag's UID in hex (4, 7 or 10 bytes)") from None
    if len(uid) not in (4, 7, 10):
        raise UserError(f"--tag-uid is {len(uid)} bytes; NFC UIDs are 4, 7 or 10 bytes")
    return uid


def _publish_store(c: Central, args: argparse.Namespace) -> int:
    """A store's own ledger for a USB stick: its newest snapshot and the deltas after it,
    as the publisher signed them (a tick first, unless a running instance leads)."""
    from sync.central.delivery import Delivery, NotReady
    from sync.central.publisher import Publisher

    if not args.no_new_version:
        Publisher(c).tick()
    scope = ledger.store_scope(args.store)
    try:
        answer = Delivery(c).answer(scope, args.since or 0, {})
    except NotReady:
        raise UserError(
            f"store {args.store} has no ledger yet: it gets one once a terminal or an "
            "enrollment code names it"
        ) from None
    if answer.status != 200:
        raise UserError(f"store {args.store}: nothing after version {args.since}")
    write_atomic(Path(args.out), answer.body)
    version = int(answer.headers["X-Ledger-Version"])
    emit(
        args,
        {"version": version, "out": args.out, "scope": scope},
        f"wrote the ledger of {scope} up to version {version} to {args.out}",
    )
    return EXIT_OK


def cmd_publish(args: argparse.Namespace) -> int:
    writable_dir(Path(args.out).resolve().parent)
    c = _open(args)
    if args.store:
        return _publish_store(c, args)
    if args.no_new_version:
        latest = c.latest()
        if latest is None:
            raise UserError("nothing published yet")
        version = latest.version
    else:
        version = c.publish()
    updates = c.deltas(args.since) if args.since is not None else [c.snapshot()]
    if (
        args.since is not None
        and args.since < version
        and (
            not updates
            or ledger.verify_update(c.anchor, updates[0]).body["version"] != args.since + 1
        )
    ):
        raise UserError(
            f"the deltas after version {args.since} were compacted (the publisher keeps a "
            "snapshot and the deltas after it); write a snapshot instead (omit --since)"
        )
    write_atomic(Path(args.out), ledger_file(updates))
    kind = f"deltas after {args.since}" if args.since is not None else "snapshot"
    emit(
        args,
        {"version": version, "out": args.out, "kind": kind, "updates": len(updates)},
        f"published ledger version {version} ({kind}) to {args.out}",
    )
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace) -> int:
    c = _open(args)
    try:
        serials = [int(s, 16) for s in args.serial]
    except ValueError:
        raise UserError("serials are 16 hex digits") from None
    c.mark(serials, "revoked")
    audited(c, "coupons.revoke", ",".join(args.serial), None, {"revoked": args.serial})
    emit(
        args,
        {"revoked": args.serial},
        f"revoked {len(serials)} serial(s); terminals learn it at their next ledger pull "
        "(or write a file for USB with `publish`)",
    )
    return EXIT_OK


def cmd_rotate(args: argparse.Namespace) -> int:
    root = _root_key_file(args.root_key_file) if args.root_key_file else None
    kid = (c := _open(args)).rotate_key(args.purpose, root_key=root)
    audited(c, "key.rotate", f"key:{args.purpose}", None, {"kid": kid})
    emit(args, {"purpose": args.purpose, "kid": kid}, f"new {args.purpose} key {kid}")
    return EXIT_OK


def cmd_revoke_key(args: argparse.Namespace) -> int:
    (c := _open(args)).revoke_key(args.kid)
    audited(c, "key.revoke", f"key:{args.kid}", None, {"revoked": True})
    emit(
        args,
        {"revoked_kid": args.kid},
        f"key {args.kid} revoked; terminals learn it at their next ledger pull",
    )
    return EXIT_OK


def cmd_policy(args: argparse.Namespace) -> int:
    """Show the terminal policy, or change fields of it (`--set name=value`, repeatable):
    the next ledger version carries it to every till."""
    c = _open(args)
    doc = c.policy().to_dict()
    before = dict(doc)
    for item in args.set or ():
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in doc:
            known = ", ".join(sorted(doc))
            raise UserError(f"--set {item!r}: expected NAME=VALUE with NAME one of {known}")
        try:
            doc[name] = int(value.strip())
        except ValueError:
            raise UserError(f"--set {name}: {value.strip()!r} is not a whole number") from None
    if args.set:
        c.set_policy(Policy.from_dict(doc))  # refuses negative values, naming the field
        audited(c, "policy.set", "policy", before, doc)
    lines = [f"{k:<24} {v}" for k, v in sorted(doc.items())]
    if args.set:
        lines.append("terminals receive it with the next ledger version (their next pull)")
    emit(args, {"policy": doc, "changed": bool(args.set)}, "\n".join(lines))
    return EXIT_OK


LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from sync.central import metrics
    from sync.central.app import create_app

    if args.port < 0 or args.port > 65535:
        raise UserError("--port must be 0..65535")
    if not args.publish_interval_s > 0:
        raise UserError("--publish-interval-s must be a positive number of seconds")
    allow = [n for given in args.metrics_allow for n in given.replace(",", " ").split()]
    try:
        netallow.networks(allow)
    except ValueError as exc:
        raise UserError(f"--metrics-allow {exc}") from None
    instance = args.instance_id or metrics.default_instance()
    log_level = os.environ.get("REDEEM_CENTRAL_LOG_LEVEL", "info").lower()
    if log_level not in LOG_LEVELS:
        raise UserError(f"REDEEM_CENTRAL_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
    if args.log_format not in logjson.FORMATS:
        raise UserError(f"--log-format must be one of {', '.join(logjson.FORMATS)}")
    # uvicorn's loggers and ours go to one handler (stderr, where uvicorn's own went), each
    # line naming the instance: several instances' logs end up in one place. uvicorn's
    # "trace" is its own level below DEBUG, set on its loggers; the root lets it through.
    root_level = "debug" if log_level == "trace" else log_level
    logjson.configure(args.log_format, root_level, sys.stderr, {"instance": instance})
    c = _open(args)
    # The publisher (one leader among the instances) makes version 1 at its first tick.
    app = create_app(
        c, publish_interval_s=args.publish_interval_s, instance=instance, metrics_allow=allow
    )
    # uvicorn takes SIGTERM/SIGINT for its graceful shutdown and, once done, raises the
    # signal again to the handler that was there before. A no-op handler here makes that
    # the end of it: the database is closed and the service exits 0 (what systemd and a
    # supervisor expect from a clean stop), not "killed by SIGTERM".
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=log_level,
        log_config=None,  # keep the handler above: uvicorn would install its own
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    c.close()
    return EXIT_OK


def cmd_enroll_code(args: argparse.Namespace) -> int:
    c = _open(args)
    code, expires = terminals.new_enroll_code(c, args.store, args.ttl)
    emit(
        args,
        {"code": code, "store": args.store, "expires_at": expires},
        f"{code}\n(one use, for store {args.store}, expires in {args.ttl} s)",
    )
    return EXIT_OK


def _zone(args: argparse.Namespace) -> tzinfo:
    try:
        return display.zone(args.tz)
    except ValueError as exc:
        raise UserError(f"--tz: {exc}") from None


def cmd_terminals(args: argparse.Namespace) -> int:
    tz = _zone(args)
    c = _open(args)
    items = terminals.list_terminals(c)
    emit(args, {"terminals": items}, terminals.terminals_text(items, int(c.now()), tz))
    return EXIT_OK


def cmd_revoke_terminal(args: argparse.Namespace) -> int:
    terminals.revoke_terminal(c := _open(args), args.terminal)
    audited(c, "terminal.revoke", f"terminal:{args.terminal}", None, {"revoked": True})
    emit(args, {"revoked": args.terminal}, f"terminal {args.terminal} revoked")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    tz = _zone(args)
    doc = report.build(_open(args))
    emit(args, doc, report.text(doc, tz))
    return EXIT_OK


def openapi_text(everything: bool = False) -> str:
    """The OpenAPI document the app serves (`everything`) or its terminal-facing part, as
    committed in docs/openapi-terminal.json. Built over an empty scratch database: the
    document depends only on the code."""
    import json
    import secrets
    import tempfile

    from sync.central.app import create_app, terminal_openapi

    with tempfile.TemporaryDirectory(prefix="redeem-openapi-") as tmp:
        c = Central(Path(tmp), clock_from_env().now, master_key=secrets.token_bytes(32))
        try:
            app = create_app(c)
            doc = app.openapi() if everything else terminal_openapi(app)
        finally:
            c.close()
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def cmd_openapi(args: argparse.Namespace) -> int:
    text = openapi_text(args.all)
    if args.out == "-":
        sys.stdout.write(text)
        return EXIT_OK
    write_atomic(Path(args.out), text.encode())
    what = "whole" if args.all else "terminal-facing"
    emit(
        args, {"out": args.out, "all": args.all}, f"wrote the {what} OpenAPI document to {args.out}"
    )
    return EXIT_OK


def _command(parent: _Commands, name: str, func: object, help_: str) -> argparse.ArgumentParser:
    """A sub-command that works on a central: --data, --database and --json."""
    sp = parent.add_parser(name, help=help_)
    sp.add_argument(
        "--data",
        default=os.environ.get("REDEEM_CENTRAL_DATA"),
        required="REDEEM_CENTRAL_DATA" not in os.environ,
        help="central data directory (env REDEEM_CENTRAL_DATA)",
    )
    sp.add_argument(
        "--database",
        default=os.environ.get("REDEEM_CENTRAL_DATABASE"),
        help="postgresql://user:password@host:port/name instead of SQLite in the data "
        "directory (env REDEEM_CENTRAL_DATABASE)",
    )
    add_json(sp)
    add_key_options(sp, name)
    sp.set_defaults(func=func)
    return sp


def _add_setup_commands(sub: _Commands) -> None:
    """init, campaign (add, list, show, pause, resume, end, archive), issue."""
    _command(sub, "init", cmd_init, "create keys and the trust-anchor file")
    campaign_cli.add_commands(sub, _command)
    sp = _command(sub, "issue", cmd_issue, "issue coupons: tokens.txt and one QR PNG per coupon")
    sp.add_argument("--campaign", required=True)
    sp.add_argument("--count", type=int, default=1)
    sp.add_argument("--out", required=True)
    sp.add_argument("--codes", action="store_true", help="typed codes instead of QR tokens")
    sp.add_argument("--customer", help="bind to a customer reference (hex hash)")
    sp.add_argument(
        "--tag-uid",
        metavar="HEX",
        help="bind the tokens to one NFC tag's UID (4, 7 or 10 bytes, hex): the coupon is "
        "refused when read from any other tag",
    )
    sp.add_argument("--no-qr", action="store_true", help="skip the PNG files")


def _add_ledger_commands(sub: _Commands) -> None:
    """publish, revoke, rotate-key, revoke-key, policy: what the next ledger version says."""
    sp = _command(
        sub, "publish", cmd_publish, "publish a new ledger version and write a ledger file"
    )
    sp.add_argument("--out", required=True)
    sp.add_argument(
        "--since", type=int, help="write the deltas after this version instead of a snapshot"
    )
    sp.add_argument(
        "--no-new-version",
        action="store_true",
        help="write the current version without publishing a new one",
    )
    sp.add_argument(
        "--store",
        help="write this store's own ledger (what its terminals receive) instead of the "
        "chain-wide one",
    )
    _command(sub, "revoke", cmd_revoke, "revoke coupon serials").add_argument(
        "--serial", action="append", required=True
    )
    _command(sub, "rotate-key", cmd_rotate, "make a new ledger or issuer key").add_argument(
        "--purpose", choices=[PURPOSE_ISSUER, PURPOSE_LEDGER], required=True
    )
    _command(
        sub,
        "revoke-key",
        cmd_revoke_key,
        "revoke an issuer key by its id (never the root or ledger key)",
    ).add_argument("--kid", required=True)
    _command(
        sub,
        "policy",
        cmd_policy,
        "show the terminal policy, or set fields of it (bursts, stale ledger)",
    ).add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="change one field, e.g. burst_per_terminal=30 (repeatable; 0 turns a burst "
        "detector off)",
    )


def _add_service_commands(sub: _Commands) -> None:
    """serve, enroll-code, terminals, revoke-terminal, report, openapi."""
    sp = _command(
        sub, "serve", cmd_serve, "serve terminals over HTTP(S): enrollment, ledger, journal"
    )
    sp.add_argument("--host", default=os.environ.get("REDEEM_CENTRAL_HOST", "127.0.0.1"))
    sp.add_argument("--port", type=int, default=int(os.environ.get("REDEEM_CENTRAL_PORT", "8700")))
    sp.add_argument("--tls-cert", help="PEM certificate (chain) to serve HTTPS")
    sp.add_argument("--tls-key", help="PEM private key of --tls-cert")
    sp.add_argument(
        "--publish-interval-s",
        type=float,
        default=float(os.environ.get("REDEEM_CENTRAL_PUBLISH_INTERVAL_S", "5")),
        help="how often the leading instance publishes what changed (default 5 s): at "
        "most one ledger version per store in each interval",
    )
    sp.add_argument(
        "--instance-id",
        default=os.environ.get("REDEEM_CENTRAL_INSTANCE_ID"),
        help="this instance's name in logs and /metrics (default: hostname:pid)",
    )
    sp.add_argument(
        "--metrics-allow",
        action="append",
        default=[os.environ.get("REDEEM_CENTRAL_METRICS_ALLOW", "")],
        metavar="NETWORK",
        help="a network besides loopback that may read /metrics, e.g. 10.0.5.0/24 "
        "(repeatable; the env variable takes a comma-separated list)",
    )
    sp.add_argument(
        "--log-format",
        choices=logjson.FORMATS,
        default=os.environ.get("REDEEM_CENTRAL_LOG_FORMAT", "json"),
        help="json lines (default), text, or auto (json under systemd, else text)",
    )
    sp = _command(
        sub, "enroll-code", cmd_enroll_code, "print a one-time code that enrolls one terminal"
    )
    sp.add_argument("--store", required=True)
    sp.add_argument("--ttl", type=int, default=terminals.DEFAULT_TTL_S, help="seconds")
    tz_help = "show times in this IANA zone, e.g. Asia/Shanghai (default UTC)"
    _command(sub, "terminals", cmd_terminals, "list enrolled terminals").add_argument(
        "--tz", help=tz_help
    )
    _command(
        sub, "revoke-terminal", cmd_revoke_terminal, "refuse a terminal from now on"
    ).add_argument("--terminal", required=True)
    _command(
        sub, "report", cmd_report, "redemptions, redemption rate, open flags, quiet terminals"
    ).add_argument("--tz", help=tz_help)
    sp = sub.add_parser(
        "openapi",
        help="write the OpenAPI document of the terminal-facing endpoints (no data needed)",
    )
    sp.add_argument("--out", default="-", help="file to write (default: standard output)")
    sp.add_argument("--all", action="store_true", help="the whole document, admin routes too")
    add_json(sp)
    sp.set_defaults(func=cmd_openapi)


def version_text() -> str:
    """`redeem-central --version`: the package, then the formats this central speaks, one
    `name: value` a line (the till's `redeem --version` prints the same names)."""
    try:
        package = importlib.metadata.version("edge-redeem")  # pyproject.toml's name
    except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
        package = "unknown (not installed)"
    return (
        f"redeem-central {package}\nsync-protocol: {protocol.VERSION}\n"
        f"ledger-format: {ledger.UPDATE_FORMAT}\nledger-file-format: {ledger.FILE_FORMAT}\n"
        f"database-schema: {models.SCHEMA_VERSION}\narchive-format: {archive.FORMAT}\n"
        f"token-prefix: {tokens.PREFIX}"
    )


class _Version(argparse.Action):
    """--version (argparse's own version action would re-wrap the lines into one)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(version_text())
        parser.exit(EXIT_OK)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="redeem-central", description=__doc__)
    p.add_argument(
        "--version", action=_Version, nargs=0, default=argparse.SUPPRESS, help="print versions"
    )
    sub = p.add_subparsers(dest="command", required=True)
    # In this order: `redeem-central --help` lists the commands as they are added.
    _add_setup_commands(sub)
    _add_ledger_commands(sub)
    _add_service_commands(sub)
    archive_cli.add_commands(sub, _command)
    users_cli.add_commands(sub, _command)
    issuing_cli.add_commands(sub, _command)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main("redeem-central", args, (UserError, CentralError, InputError))


if __name__ == "__main__":
    sys.exit(main())
