"""The daemon's command lines: `redeem run`, `redeem config check`, `redeem scan-test`."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from coupons.cliutil import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_REFUSED,
    AddCommand,
    Subcommands,
    UserError,
    add_json,
    emit,
    read_document,
)
from coupons.timeutil import clock_from_env
from drivers import registry
from drivers.scan import DOWN, STOPPED, Driver, Scan
from terminal.daemon import config as config_mod
from terminal.daemon import control


def cmd_run(args: argparse.Namespace) -> int:
    from terminal.daemon import runner

    try:
        return runner.run(Path(args.config), clock_from_env())
    except config_mod.ConfigError as exc:
        raise UserError(str(exc)) from None


def cmd_config_check(args: argparse.Namespace) -> int:
    try:
        cfg = config_mod.load(Path(args.file))
    except config_mod.ConfigError as exc:
        if not args.json:
            raise UserError(str(exc)) from None
        # An installer's script gets the line and key as fields, not to be parsed out.
        bad = {"file": args.file, "ok": False, "line": exc.line, "key": exc.key}
        emit(args, {**bad, "error": str(exc)}, "")
        return EXIT_ERROR
    names = ", ".join(f"{i.name} ({i.kind})" for i in cfg.inputs) or "none"
    doc = {
        "file": args.file,
        "ok": True,
        "data": cfg.terminal.data,
        "inputs": [{"name": i.name, "kind": i.kind, "enabled": i.enabled} for i in cfg.inputs],
        "outputs": [{"name": o.name, "kind": o.kind, "enabled": o.enabled} for o in cfg.outputs],
    }
    emit(args, doc, f"{args.file}: OK; inputs: {names}; data: {cfg.terminal.data}")
    return EXIT_OK


def cmd_scan_test(args: argparse.Namespace) -> int:
    """Show an installer what an input decodes, without redeeming anything."""
    chosen = [
        (k, v)
        for k, v in (("camera", args.camera), ("nfc", args.nfc), ("serial", args.serial))
        if v
    ]
    if len(chosen) != 1:
        raise UserError("give exactly one of --camera, --nfc, --serial")
    kind, source = chosen[0]
    doc: dict[str, Any] = {
        "camera": {"source": source},
        "nfc": {"path": source},
        "serial": {"port": source},
    }[kind]
    for pair in args.option or ():
        key, _, value = pair.partition("=")
        doc[key] = json.loads(value) if value[:1] in '[{0123456789-tf"' else value
    try:
        options = registry.options_for(kind, doc)
    except (KeyError, ValueError) as exc:
        raise UserError(f"{kind}: {exc}") from None
    driver = registry.create("scan-test", kind, options, time.time)
    seen = threading.Event()
    count = [0]

    def show(scan: Scan) -> None:
        count[0] += 1
        if args.json:  # one JSON object a line as scans come, like `redeem watch --json`
            doc = {
                "at": scan.at,
                "source": scan.source,
                "kind": scan.kind,
                "text": scan.text(),
                "payload_hex": scan.payload.hex(),
                "meta": dict(scan.meta),
            }
            print(json.dumps(doc, ensure_ascii=False, default=str), flush=True)
        else:
            meta = " ".join(f"{k}={v}" for k, v in scan.meta.items())
            line = f"{time.strftime('%H:%M:%S')} {scan.kind}: {scan.text()!r} {meta}"
            print(line.rstrip(), flush=True)
        if args.count and count[0] >= args.count:
            seen.set()

    driver.start(show)
    ended = False  # the input stopped by itself: a video file played to its end
    try:
        deadline = time.monotonic() + args.seconds
        while not seen.is_set() and time.monotonic() < deadline:
            seen.wait(0.2)
            health = driver.health()
            if args.verbose:
                print(f"  health: {health.state} {health.detail}", file=sys.stderr)
            if _ended(driver):
                ended = True
                break
    except KeyboardInterrupt:
        pass
    finally:
        driver.stop(2.0)
    health = driver.health()
    if args.json:  # the last line: a summary object
        summary = {"scans": count[0], "ended": ended, "health": health.to_dict()}
        print(json.dumps(summary, ensure_ascii=False))
    else:
        if ended:
            why = "end of file" if "end of file" in health.detail else health.detail
            print(f"{source}: {why}; not waiting out --seconds")
        print(f"{count[0]} scan(s); input health: {health.state} {health.detail}".rstrip())
    return EXIT_OK if count[0] else EXIT_ERROR


def _ended(driver: Driver) -> bool:
    """The driver's loop returned by itself (a file's end, a device given up on for good):
    nothing more will come, so waiting out --seconds would only keep the installer waiting."""
    alive = getattr(driver, "alive", None)
    return alive is False and driver.health().state in (STOPPED, DOWN)


def _ask(args: argparse.Namespace, req: dict[str, Any]) -> dict[str, Any]:
    try:
        reply = control.request(Path(args.data), {**req, "lang": args.lang})
    except (OSError, ValueError) as exc:
        raise UserError(
            f"the daemon is not answering on {control.socket_path(Path(args.data))}"
            f" ({exc}); is `redeem run` running?"
        ) from None
    if not reply.get("ok"):
        raise UserError(str(reply.get("error")))
    return reply


def _line(pub: dict[str, Any]) -> str:
    d = pub.get("decision")
    if d is None:
        return f"#{pub['number']} {pub['source']}: not a coupon, ignored"
    verdict = "ACCEPTED" if d["accepted"] else "REFUSED "
    amount = f" -{d['discount_minor'] / 100:.2f} {d['currency']}" if d["accepted"] else ""
    gift = f" + gift {d['gift_sku']}" if d.get("gift_sku") else ""
    what = d.get("campaign_name") or d.get("campaign") or ""
    return (
        f"#{pub['number']} {pub['source']}: {verdict} {what}{amount}{gift}  "
        f"[{d['reason']}] {d['message']}  ({pub['latency_ms']:.1f} ms)"
    )


def cmd_status(args: argparse.Namespace) -> int:
    reply = _ask(args, {"op": "status"})
    led = reply["ledger"]
    lines = [
        f"terminal {reply['terminal']} of store {reply['store']}: "
        f"{'healthy' if reply['healthy'] else 'NOT healthy'}",
        f"ledger v{led['version']}, age {led['age_s'] or 0:.0f} s; clock "
        f"{'ok' if reply['clock_ok'] else 'UNTRUSTED'}",
        f"decisions {reply['decisions']}, ignored scans {reply['ignored']}",
    ]
    lines += [f"input {name}: {h['state']} {h['detail']}" for name, h in reply["inputs"].items()]
    emit(args, reply, "\n".join(lines))
    return EXIT_OK if reply["healthy"] else EXIT_REFUSED


def cmd_till(args: argparse.Namespace) -> int:
    if args.clear:
        basket = None
    elif args.basket:
        basket = read_document(args.basket)
    elif args.total is not None:
        basket = {"currency": args.currency, "total_minor": args.total}
    else:
        raise UserError("give --total MINOR, --basket FILE or --clear")
    reply = _ask(args, {"op": "basket", "basket": basket})
    emit(
        args,
        reply,
        "\n".join(
            ["sale cleared" if basket is None else "new sale"]
            + [
                _line({"number": i + 1, "source": "pending", "latency_ms": 0, "decision": d})
                for i, d in enumerate(reply["decisions"])
            ]
        ),
    )
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    """Print decisions as the daemon publishes them."""
    after = 0 if args.all else int(_ask(args, {"op": "decisions", "after": 1 << 62})["count"])
    shown = 0
    deadline = time.monotonic() + args.seconds if args.seconds else None
    while (not args.count or shown < args.count) and (
        deadline is None or time.monotonic() < deadline
    ):
        wait = 5.0 if deadline is None else max(0.0, min(5.0, deadline - time.monotonic()))
        reply = _ask(args, {"op": "decisions", "after": after, "wait_s": wait})
        for pub in reply["decisions"]:
            print(json.dumps(pub, ensure_ascii=False) if args.json else _line(pub), flush=True)
            after = pub["number"]
            shown += 1
    return EXIT_OK


def add_commands(sub: Subcommands, cmd: AddCommand) -> None:
    """Register on the `redeem` parser; `cmd` is its helper that adds --data/--lang/--json."""
    from kiosk_ui import manager, tills

    tills.add_commands(sub, cmd)  # redeem pos-token
    manager.add_commands(sub, cmd)  # redeem manager set-pin
    sp = sub.add_parser("run", help="run the terminal daemon")
    sp.add_argument("--config", required=True, help="the daemon's TOML config")
    sp.set_defaults(func=cmd_run)
    cf = sub.add_parser("config", help="the daemon's config").add_subparsers(
        dest="config_command", required=True
    )
    sp = cf.add_parser("check", help="validate a config file; name the bad key and line")
    sp.add_argument("file")
    add_json(sp)
    sp.set_defaults(func=cmd_config_check)
    sp = sub.add_parser("scan-test", help="show what an input decodes, redeeming nothing")
    sp.add_argument("--camera", help="device index, /dev/videoN, file, URL or pipeline")
    sp.add_argument("--nfc", help="nfcpy path: usb:..., tty:AMA0:pn532, udp:127.0.0.1:PORT")
    sp.add_argument("--serial", help="serial port, e.g. /dev/ttyACM0")
    sp.add_argument("--option", action="append", help="extra input option KEY=VALUE")
    sp.add_argument("--seconds", type=float, default=30.0, help="give up after this long")
    sp.add_argument("--count", type=int, default=0, help="stop after this many scans")
    sp.add_argument("--verbose", action="store_true")
    add_json(sp)
    sp.set_defaults(func=cmd_scan_test)
    cmd(sub, "status", cmd_status, "ask the running daemon how it is")
    sp = cmd(sub, "till", cmd_till, "start a standalone sale: the total the cashier keyed in")
    sp.add_argument("--total", type=int, help="purchase total in minor units")
    sp.add_argument("--currency", default="CNY")
    sp.add_argument("--basket", help="a basket JSON file instead of a total")
    sp.add_argument("--clear", action="store_true", help="end the sale")
    sp = cmd(sub, "watch", cmd_watch, "print the daemon's decisions as they happen")
    sp.add_argument("--count", type=int, default=0, help="stop after this many")
    sp.add_argument("--seconds", type=float, default=0, help="stop after this long")
    sp.add_argument("--all", action="store_true", help="start with the decisions kept so far")
