"""`redeem enroll` and `redeem sync`: enrolling with the central, one sync round, and the
sync status (from the running daemon, or from the journal database when it is stopped).
Here, in the wiring package, because the core CLI must not import sync code."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from coupons import setup
from coupons import sync_state as status
from coupons.cliutil import EXIT_OK, EXIT_REFUSED, AddCommand, Subcommands, UserError, emit
from coupons.timeutil import clock_from_env
from sync.client import RoundResult, open_link, run_once
from sync.device import DeviceKeyError, Settings
from sync.enroll import EnrollError, enroll
from sync.http import SyncError
from terminal.daemon import control


def cmd_enroll(args: argparse.Namespace) -> int:
    if args.fingerprint and args.trust_anchor:
        raise UserError("give --fingerprint or --trust-anchor, not both")
    data = Path(args.data)
    try:
        done = enroll(
            data,
            args.central,
            args.code,
            clock_from_env(),
            store=args.store,
            fingerprint=args.fingerprint,
            anchor_file=Path(args.trust_anchor) if args.trust_anchor else None,
            ca=Path(args.ca) if args.ca else None,
            first_sync=not args.no_sync,
        )
    except (EnrollError, DeviceKeyError) as exc:
        raise UserError(str(exc)) from None
    lines = [
        f"enrolled as terminal {done.terminal} of store {done.store} in {data}",
        f"device key: {done.key_path}" + (" (new, mode 0600)" if done.key_created else ""),
        f"trust anchor fingerprint: {done.fingerprint}",
    ]
    if done.pinned == "tofu":
        lines.append(
            "TRUST ON FIRST USE: no --fingerprint or --trust-anchor was given, so this "
            "fingerprint is now pinned without a check. Compare it with the one the central's "
            "operator gave you; if it differs, delete this data directory and enroll again "
            "with --fingerprint."
        )
    else:
        lines.append(f"trust anchor checked against the {done.pinned} given: it matches")
    first = done.first_round
    if first is not None:
        lines.append(first.summary())
        if not first.ok:
            lines.append("enrolled anyway; the ledger comes with the next `redeem sync --once`")
    emit(
        args,
        {
            "terminal": done.terminal,
            "store": done.store,
            "fingerprint": done.fingerprint,
            "pinned": done.pinned,
            "device_key": done.key_path,
            "first_sync": first.to_dict() if first else None,
        },
        "\n".join(lines),
    )
    return EXIT_OK


def _daemon(data: Path, req: dict[str, Any]) -> dict[str, Any] | None:
    """The running daemon's answer, or None when no daemon listens on this directory."""
    if not control.socket_path(data).exists():
        return None
    try:
        reply = control.request(data, req, timeout=120.0)
    except (ConnectionRefusedError, FileNotFoundError):
        return None
    except (OSError, ValueError) as exc:
        raise UserError(f"the daemon did not answer: {exc}") from None
    if not reply.get("ok"):
        raise UserError(str(reply.get("error")))
    return reply


def cmd_sync(args: argparse.Namespace) -> int:
    if args.what == "status":
        return _sync_status(args)
    if not args.once:
        raise UserError("give --once (one round now) or `status`")
    data = Path(args.data)
    if args.central is None and args.ca is None:
        reply = _daemon(data, {"op": "sync", "run": True})
        if reply is not None:  # the daemon owns the journal: it runs the round
            result = reply["round"]
            text = RoundResult(**result).summary() + "\n(run by the daemon)"
            emit(args, result, text)
            return EXIT_OK if result["ok"] else EXIT_REFUSED
    engine = setup.open_engine(data, clock_from_env())
    try:
        link = open_link(
            data,
            engine,
            central=args.central,
            ca=args.ca,
            connect_timeout_s=args.connect_timeout,
            read_timeout_s=args.read_timeout,
        )
        round_ = run_once(data, engine, link)
    except DeviceKeyError as exc:
        raise UserError(str(exc)) from None
    except SyncError as exc:
        raise UserError(exc.message) from None
    finally:
        engine.db.close()
    emit(args, round_.to_dict(), round_.summary())
    return EXIT_OK if round_.ok else EXIT_REFUSED


def _sync_status(args: argparse.Namespace) -> int:
    data = Path(args.data)
    reply = _daemon(data, {"op": "sync"})
    if reply is not None:
        snap = reply["status"]
    else:
        engine = setup.open_engine(data, clock_from_env())
        try:
            snap = status.snapshot(engine)
        finally:
            engine.db.close()
        settings = Settings.load(data)
        snap.update({"central": settings.central if settings else None, "running": False})
    emit(args, snap, status.describe(snap))
    return EXIT_OK


def add_commands(sub: Subcommands, cmd: AddCommand) -> None:
    """Register on the `redeem` parser; `cmd` is its helper that adds --data/--lang/--json."""
    env = os.environ.get
    sp = cmd(sub, "enroll", cmd_enroll, "enroll this terminal with the central (one-time code)")
    sp.add_argument(
        "--central",
        default=env("REDEEM_CENTRAL"),
        required=env("REDEEM_CENTRAL") is None,
        help="the central's URL, https://... (env REDEEM_CENTRAL)",
    )
    sp.add_argument(
        "--code",
        default=env("REDEEM_ENROLL_CODE"),
        required=env("REDEEM_ENROLL_CODE") is None,
        help="one-time code from `redeem-central enroll-code` (env REDEEM_ENROLL_CODE)",
    )
    sp.add_argument("--store", help="refuse unless the code is for this store")
    sp.add_argument(
        "--fingerprint",
        default=env("REDEEM_CENTRAL_FINGERPRINT"),
        help="expected trust anchor fingerprint, SHA256:... (env REDEEM_CENTRAL_FINGERPRINT)",
    )
    sp.add_argument("--trust-anchor", help="expected trust anchor file (trust-anchor.json)")
    sp.add_argument(
        "--ca",
        default=env("REDEEM_CENTRAL_CA"),
        help="PEM bundle pinning the central's CA (env REDEEM_CENTRAL_CA)",
    )
    sp.add_argument("--no-sync", action="store_true", help="do not pull the first ledger now")

    sp = cmd(sub, "sync", cmd_sync, "sync with the central: one round now, or the status")
    sp.add_argument("what", nargs="?", choices=["status"], help="status: show the sync status")
    sp.add_argument("--once", action="store_true", help="run one round now and print it")
    sp.add_argument("--central", help="another central URL than the enrolled one")
    sp.add_argument("--ca", help="PEM bundle pinning the central's CA")
    sp.add_argument("--connect-timeout", type=float, default=5.0, help="seconds (default 5)")
    sp.add_argument("--read-timeout", type=float, default=20.0, help="seconds (default 20)")
