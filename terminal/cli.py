"""`redeem`: the terminal's command line (set-up, ledger, decisions, journal)."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from coupons import journal, ledger, setup, tokens
from coupons.cliutil import (
    EXIT_OK,
    EXIT_REFUSED,
    Command,
    Subcommands,
    UserError,
    add_json,
    emit,
    read_document,
    run_main,
)
from coupons.decision import Context, Decision
from coupons.engine import Engine
from coupons.i18n import normalize_lang, translate
from coupons.journal.schema import MIGRATIONS
from coupons.ledger_store import DEFAULT_MAX_FILE_BYTES, LedgerTooLarge, read_limited
from coupons.rules import Basket, InputError
from coupons.timeutil import clock_from_env, parse_time

DISTRIBUTION = "edge-redeem"  # pyproject.toml's [project] name


def _env_float(name: str, default: float) -> float | None:
    """A number from the environment; None (reported by the command) if it is not one."""
    raw = os.environ.get(name)
    try:
        return default if raw is None else float(raw)
    except ValueError:
        return None


def _engine(args: argparse.Namespace) -> Engine:
    return setup.open_engine(Path(args.data), clock_from_env())


def _basket(path: str) -> Basket:
    return Basket.from_dict(read_document(path))


def _ctx(args: argparse.Namespace) -> Context:
    tag = bytes.fromhex(args.tag_uid) if getattr(args, "tag_uid", None) else None
    return Context(
        source="cli",
        cashier=getattr(args, "cashier", None),
        tag_uid=tag,
        manager_override=getattr(args, "manager_override", None),
    )


VERBS = {"hold": "HELD", "commit": "PAID", "release": "RELEASED", "reverse": "REFUNDED"}


def _show(args: argparse.Namespace, d: Decision) -> int:
    lang = normalize_lang(args.lang)
    data = d.to_dict(lang)
    if d.accepted:
        off = f"{d.discount_minor / 100:.2f} {d.currency}" if d.currency else ""
        gift = f" + gift {d.gift_sku}" if d.gift_sku else ""
        verb = VERBS.get(args.command, "ACCEPTED")
        what = d.campaign_name or d.campaign or ", ".join(c["campaign"] for c in d.coupons) or ""
        text = f"{verb:<9} {what}  -{off}{gift}"
    else:
        text = f"REFUSED   {d.reason.value}: {data['message']}"
    if d.journal_seq:
        text += f"  (journal #{d.journal_seq})"
    emit(args, data, text)
    return EXIT_OK if d.accepted else EXIT_REFUSED


def cmd_init(args: argparse.Namespace) -> int:
    anchor = setup.init(Path(args.data), Path(args.trust_anchor), args.store, args.terminal)
    emit(
        args,
        {
            "data": args.data,
            "store": args.store,
            "terminal": args.terminal,
            "fingerprint": anchor.fingerprint,
        },
        f"terminal {args.terminal} of store {args.store} initialised in {args.data}\n"
        f"trust anchor fingerprint: {anchor.fingerprint}",
    )
    return EXIT_OK


def cmd_ledger_import(args: argparse.Namespace) -> int:
    if args.max_mb is None or not 1 <= args.max_mb <= 4096:
        raise UserError("--max-mb (env REDEEM_LEDGER_MAX_MB) must be a number from 1 to 4096")
    try:
        # Read (bounded) before opening the engine: a wrong file changes nothing at all.
        data = read_limited(Path(args.file), int(args.max_mb * 2**20))
    except LedgerTooLarge as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot read {args.file}: {exc}") from None
    engine = _engine(args)
    result = engine.import_ledger(data)
    refused = [{"kind": r.kind, "detail": r.detail} for r in result.refused]
    text = [f"applied version(s): {', '.join(map(str, result.applied)) or 'none'}"]
    text += [f"refused: {r.kind}: {r.detail}" for r in result.refused]
    text.append(f"ledger is at version {engine.ledger.version}")
    emit(
        args,
        {"applied": result.applied, "refused": refused, "version": engine.ledger.version},
        "\n".join(text),
    )
    return EXIT_OK if not result.refused else EXIT_REFUSED


def cmd_ledger_status(args: argparse.Namespace) -> int:
    engine = _engine(args)
    info = engine.ledger.summary()
    age_s = info["age_s"] = engine.ledger_age_s()
    info["clock_ok"] = engine.clock_ok(engine.now())
    info["load_problem"] = engine.ledger_store.load_problem
    age = f"{age_s / 3600:.1f} h" if age_s is not None else "-"
    emit(
        args,
        info,
        f"ledger version {info['version']} (age {age}), "
        f"{info['campaigns']} campaigns, {info['revoked_serials']} revoked and "
        f"{info['redeemed_serials']} redeemed serials"
        + (f"\nproblem: {info['load_problem']}" if info["load_problem"] else ""),
    )
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    return _show(args, _engine(args).check(args.token, _basket(args.basket), _ctx(args)))


def cmd_redeem(args: argparse.Namespace) -> int:
    return _show(
        args, _engine(args).redeem(args.token, _basket(args.basket), _ctx(args), args.op_id)
    )


def cmd_hold(args: argparse.Namespace) -> int:
    return _show(
        args,
        _engine(args).hold(args.checkout, args.token, _basket(args.basket), _ctx(args), args.op_id),
    )


def _transition(name: str) -> Command:
    def run(args: argparse.Namespace) -> int:
        engine = _engine(args)
        return _show(args, getattr(engine, name)(args.checkout, args.op_id, _ctx(args)))

    return run


def cmd_clock_reset(args: argparse.Namespace) -> int:
    engine = _engine(args)
    d = engine.reset_clock_trust(args.manager)
    emit(
        args,
        d.to_dict(normalize_lang(args.lang)),
        f"clock trust reset by {args.manager}; trusted time is now the device clock"
        if d.accepted
        else f"not reset: {d.detail}",
    )
    return EXIT_OK if d.accepted else EXIT_REFUSED


def cmd_journal_verify(args: argparse.Namespace) -> int:
    # Not the engine: it refuses a journal that lost its last entries, which verify names.
    acknowledged = setup.open_journal(Path(args.data))
    r = journal.verify(acknowledged, normalize_lang(args.lang))
    emit(
        args,
        {
            "ok": r.ok,
            "entries": r.entries,
            "first_bad_seq": r.first_bad_seq,
            "problem": r.problem,
            "missing": r.missing,
        },
        f"journal OK: {r.entries} entries, chain intact"
        if r.ok
        # Behind its mark is a loss (a WAL gone, an old copy put back), not an edit.
        else f"journal INCOMPLETE: {r.problem}"
        if r.missing
        else f"journal TAMPERED: {r.problem}",
    )
    return EXIT_OK if r.ok else EXIT_REFUSED


def cmd_journal_accept_loss(args: argparse.Namespace) -> int:
    """A manager's decision to go on with a journal behind its mark (runbook: 'Journal
    behind its mark'): journaled as a flag, then the mark follows the journal."""
    lang = normalize_lang(args.lang)
    if not args.confirm:
        raise UserError(translate(journal.ACCEPT_NEEDS_CONFIRM, lang))
    setup.open_journal(Path(args.data))
    done = journal.accept_loss(args.manager, int(clock_from_env().now() * 1000))
    if done is None:
        emit(args, {"accepted": False}, translate(journal.NOT_BEHIND, lang))
        return EXIT_REFUSED
    behind, seq = done
    emit(
        args,
        {"accepted": True, "journal_seq": seq, "missing": behind.missing},
        translate(journal.LOSS_ACCEPTED_SAID, lang).format(manager=args.manager, seq=seq),
    )
    return EXIT_OK


def cmd_journal_export(args: argparse.Namespace) -> int:
    _engine(args)
    since = int(parse_time(args.since) * 1000) if args.since else None
    until = int(parse_time(args.until) * 1000) if args.until else None
    if args.out:
        with open(args.out, "w", encoding="utf-8", newline="") as fh:
            n = journal.export(args.format, fh, since, until)
        print(f"exported {n} entries to {args.out}", file=sys.stderr)
    else:
        journal.export(args.format, sys.stdout, since, until)
    return EXIT_OK


def _cmd(parent: Subcommands, name: str, func: Command, help_: str) -> argparse.ArgumentParser:
    """A sub-command with the options every `redeem` command takes: --data, --lang, --json."""
    env_data = os.environ.get("REDEEM_DATA")
    sp = parent.add_parser(name, help=help_)
    sp.add_argument(
        "--data",
        default=env_data,
        required=env_data is None,
        help="terminal data directory (env REDEEM_DATA)",
    )
    sp.add_argument(
        "--lang",
        default=os.environ.get("REDEEM_LANG", "en"),
        help="en or zh_CN (env REDEEM_LANG)",
    )
    add_json(sp)
    sp.set_defaults(func=func)
    return sp


def _decision_args(sp: argparse.ArgumentParser, token: bool = True) -> None:
    if token:
        sp.add_argument("token", help="CPN1: token or a typed coupon code")
        sp.add_argument("--basket", required=True, help="basket JSON file (- for stdin)")
    sp.add_argument("--cashier")
    sp.add_argument("--tag-uid", help="NFC tag UID (hex) the token was read from")
    sp.add_argument("--manager-override", help="manager id approving a stale ledger")
    sp.add_argument("--op-id", help="idempotency key: a retry returns the first answer")


def _add_setup_commands(sub: Subcommands) -> None:
    """init, ledger import, ledger status."""
    sp = _cmd(sub, "init", cmd_init, "set up a terminal data directory")
    sp.add_argument("--trust-anchor", required=True)
    sp.add_argument("--store", required=True)
    sp.add_argument("--terminal", required=True)

    led = sub.add_parser("ledger", help="the signed ledger").add_subparsers(
        dest="ledger_command", required=True
    )
    sp = _cmd(led, "import", cmd_ledger_import, "apply a ledger file (USB stick)")
    sp.add_argument("file")
    sp.add_argument(
        "--max-mb",
        type=float,
        default=_env_float("REDEEM_LEDGER_MAX_MB", DEFAULT_MAX_FILE_BYTES / 2**20),
        help="refuse a file larger than this, unread (default 64; env REDEEM_LEDGER_MAX_MB)",
    )
    _cmd(led, "status", cmd_ledger_status, "version, age and size of the ledger")


def _add_decision_commands(sub: Subcommands) -> None:
    """check, redeem, and the checkout steps: hold, commit, release, reverse."""
    sp = _cmd(sub, "check", cmd_check, "decide a coupon without recording anything")
    _decision_args(sp)
    sp = _cmd(sub, "redeem", cmd_redeem, "decide and redeem a coupon (standalone mode)")
    _decision_args(sp)
    sp = _cmd(sub, "hold", cmd_hold, "hold a coupon for an open POS checkout")
    sp.add_argument("--checkout", required=True)
    _decision_args(sp)
    for name, help_ in (
        ("commit", "payment done: redeem the held coupons"),
        ("release", "checkout cancelled: free the held coupons"),
        ("reverse", "refund: reverse the redeemed coupons"),
    ):
        sp = _cmd(sub, name, _transition(name), help_)
        sp.add_argument("--checkout", required=True)
        _decision_args(sp, token=False)


def _add_clock_commands(sub: Subcommands) -> None:
    ck = sub.add_parser("clock", help="device clock trust").add_subparsers(
        dest="clock_command", required=True
    )
    _cmd(
        ck, "reset", cmd_clock_reset, "a manager confirms the clock is right after it ran ahead"
    ).add_argument("--manager", required=True, help="manager id (journaled)")


def _add_journal_commands(sub: Subcommands) -> None:
    """journal verify, accept-loss, export."""
    jr = sub.add_parser("journal", help="the tamper-evident journal").add_subparsers(
        dest="journal_command", required=True
    )
    _cmd(jr, "verify", cmd_journal_verify, "check the hash chain; name the first bad entry")
    sp = _cmd(
        jr,
        "accept-loss",
        cmd_journal_accept_loss,
        "go on with a journal behind its mark",
    )
    sp.add_argument("--manager", required=True, help="manager id (journaled)")
    sp.add_argument("--confirm", action="store_true", help="the entries missing stay lost")
    sp = _cmd(jr, "export", cmd_journal_export, "export entries as JSON lines or CSV")
    sp.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    sp.add_argument("--since", help="ISO time or epoch seconds")
    sp.add_argument("--until", help="ISO time or epoch seconds")
    sp.add_argument("--out", help="file to write (default stdout)")


def version_text() -> str:
    """What `redeem --version` prints: the package, then the formats this till speaks, one
    `name: value` a line, so an installer can check them against the central's."""
    # Here, not at the top: the core CLI imports no sync code (build_parser's sync commands
    # are imported lazily too).
    from sync import protocol

    try:
        package = importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
        package = "unknown (not installed)"
    return "\n".join(
        [
            f"redeem {package}",
            f"sync-protocol: {protocol.VERSION}",
            f"ledger-format: {ledger.UPDATE_FORMAT}",
            f"ledger-file-format: {ledger.FILE_FORMAT}",
            f"journal-schema: {1 + len(MIGRATIONS)}",
            f"token-prefix: {tokens.PREFIX}",
        ]
    )


class _Version(argparse.Action):
    """--version (argparse's own version action would re-wrap the lines into one)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(version_text())
        parser.exit(EXIT_OK)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="redeem", description=__doc__)
    p.add_argument(
        "--version", action=_Version, nargs=0, default=argparse.SUPPRESS, help="print versions"
    )
    sub = p.add_subparsers(dest="command", required=True)
    # The order here is the order `redeem --help` lists them in.
    _add_setup_commands(sub)
    _add_decision_commands(sub)
    _add_clock_commands(sub)

    from terminal.daemon.commands import add_commands
    from terminal.daemon.sync_commands import add_commands as add_sync_commands

    add_commands(sub, _cmd)
    add_sync_commands(sub, _cmd)
    _add_journal_commands(sub)
    return p


def _temporary_failures(func: Command) -> Command:
    """A full disk is printed like any start-up error but exits 75 (EX_TEMPFAIL), not 2:
    systemd's RestartPreventExitStatus=2 must not keep the till down once space is back."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except setup.DiskFull as exc:
            print(f"redeem: {exc}", file=sys.stderr)
            return setup.DiskFull.exit_code

    return run


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func = _temporary_failures(args.func)
    return run_main("redeem", args, (UserError, InputError, setup.NotInitialised, ValueError))


if __name__ == "__main__":
    sys.exit(main())
