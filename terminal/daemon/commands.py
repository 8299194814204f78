"""The daemon's command lines: `redeem run`, `redeem config check`, `redeem scan-test`."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from drivers import registry
from drivers.scan import Scan

from terminal.cliutil import EXIT_ERROR, EXIT_OK, UserError
from terminal.daemon import config as config_mod
from terminal.timeutil import clock_from_env


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
        raise UserError(str(exc)) from None
    names = ", ".join(f"{i.name} ({i.kind})" for i in cfg.inputs) or "none"
    print(f"{args.file}: OK; inputs: {names}; data: {cfg.terminal.data}")
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
        meta = " ".join(f"{k}={v}" for k, v in scan.meta.items())
        print(
            f"{time.strftime('%H:%M:%S')} {scan.kind}: {scan.text()!r} {meta}".rstrip(), flush=True
        )
        if args.count and count[0] >= args.count:
            seen.set()

    driver.start(show)
    try:
        deadline = time.monotonic() + args.seconds
        while not seen.is_set() and time.monotonic() < deadline:
            seen.wait(1.0)
            health = driver.health()
            if args.verbose:
                print(f"  health: {health.state} {health.detail}", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        driver.stop(2.0)
    health = driver.health()
    print(f"{count[0]} scan(s); input health: {health.state} {health.detail}".rstrip())
    return EXIT_OK if count[0] else EXIT_ERROR


def add_commands(sub: Any, cmd: Any) -> None:
    """Register on the `redeem` parser; `cmd` is its helper that adds --data/--lang/--json."""
    sp = sub.add_parser("run", help="run the terminal daemon")
    sp.add_argument("--config", required=True, help="the daemon's TOML config")
    sp.set_defaults(func=cmd_run)
    cf = sub.add_parser("config", help="the daemon's config").add_subparsers(
        dest="config_command", required=True
    )
    sp = cf.add_parser("check", help="validate a config file; name the bad key and line")
    sp.add_argument("file")
    sp.set_defaults(func=cmd_config_check)
    sp = sub.add_parser("scan-test", help="show what an input decodes, redeeming nothing")
    sp.add_argument("--camera", help="device index, /dev/videoN, file, URL or pipeline")
    sp.add_argument("--nfc", help="nfcpy path: usb:..., tty:AMA0:pn532, udp:127.0.0.1:PORT")
    sp.add_argument("--serial", help="serial port, e.g. /dev/ttyACM0")
    sp.add_argument("--option", action="append", help="extra input option KEY=VALUE")
    sp.add_argument("--seconds", type=float, default=30.0, help="give up after this long")
    sp.add_argument("--count", type=int, default=0, help="stop after this many scans")
    sp.add_argument("--verbose", action="store_true")
    sp.set_defaults(func=cmd_scan_test)
