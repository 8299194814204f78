"""The device clock jumps while the daemon runs (REDEEM_CLOCK_OFFSET_FILE moves the one
injectable clock): a day back refuses every coupon with clock_untrusted until the clock is
right again; a month forward makes the ledger stale (high-value coupons need a manager)
and, once coupons were journaled at that future time, coming back needs a manager's
`redeem clock reset`. Asserted as the cashier sees it: the decision's sentence, the
cashier screen's banner, `redeem status`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import requests

from coupons import fraud
from coupons.reasons import Reason
from tests.conftest import T0, World
from tests.reliability.harness import (
    DaemonProc,
    cli,
    prepare,
    read_journal,
    serial_of,
    verify_chain,
    write_config,
)

DAY = 24 * 3600
UNTRUSTED = Reason.CLOCK_UNTRUSTED.message("en")
STALE = Reason.LEDGER_STALE.message("en")
BANNER = "The clock is not trusted: ask the manager to check the time."


def set_offset(path: Path, seconds: float) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{seconds}\n")
    os.replace(tmp, path)  # the daemon reads it on every call: never half a number


def status(daemon: DaemonProc, env: dict[str, str]) -> str:
    """`redeem status` as the manager reads it."""
    proc = cli("status", "--data", str(daemon.data), env=env)
    return proc.stdout


def clock_ok(daemon: DaemonProc) -> bool:
    """The same fact through the control socket (no process start: cheaper)."""
    return bool(daemon.control({"op": "status"})["clock_ok"])


def screen(daemon: DaemonProc) -> str:
    assert daemon.url is not None
    return requests.get(daemon.url + "/", timeout=10).text


def refused(decision: dict[str, Any], reason: Reason) -> bool:
    return not decision["accepted"] and decision["reason"] == reason.value


def test_clock_jumps_back_a_day_and_forward_a_month(world: World, tmp_path: Path) -> None:
    world.campaign(id="BIG", kind="fixed", amount_minor=6000, stacking="any", per_basket=10)
    (big,) = world.issue("BIG", 1)  # 60.00 off: above the policy's stale_high_value_minor
    coupons = prepare(world, 8)
    offset = tmp_path / "clock-offset"
    set_offset(offset, 0)
    # The terminal runs an hour after the ledger and the coupons were issued: a clock a
    # little behind is still after the coupons' not-before.
    env = {"REDEEM_NOW": str(T0 + 3600), "REDEEM_CLOCK_OFFSET_FILE": str(offset)}
    fifo = tmp_path / "scan.fifo"
    cfg = write_config(tmp_path / "redeem.toml", world.data, fifo)
    daemon = DaemonProc(world.data, cfg, fifo, tmp_path / "logs", env=env).start()
    try:
        daemon.wait_ready()
        daemon.new_sale()
        assert daemon.scan(coupons[0])["accepted"]

        # A few minutes back (NTP stepping the clock) is within clock_tolerance_s.
        set_offset(offset, -120)
        assert daemon.scan(coupons[1])["accepted"]

        # A day back (a dead RTC battery, a bad NTP answer): nothing is accepted.
        set_offset(offset, -DAY)
        back = daemon.scan(coupons[2])
        assert refused(back, Reason.CLOCK_UNTRUSTED) and back["message"] == UNTRUSTED, back
        assert "clock UNTRUSTED" in status(daemon, env)
        assert BANNER in screen(daemon)
        # The clock is right again: the same coupon is accepted, nothing was lost.
        set_offset(offset, 0)
        assert clock_ok(daemon)
        assert BANNER not in screen(daemon)
        assert daemon.scan(coupons[2])["accepted"]

        # A month forward: the ledger looks 30 days old. Small coupons pass with a warning;
        # a high-value one needs a manager (the stale-ledger policy).
        set_offset(offset, 30 * DAY)
        small = daemon.scan(coupons[3])
        assert small["accepted"] and "ledger_stale" in small["warnings"], small
        high = daemon.scan(big)
        assert refused(high, Reason.LEDGER_STALE) and high["message"] == STALE, high
        assert clock_ok(daemon)  # ahead is not detectable offline

        # The clock is put right: the journal already holds entries stamped a month ahead,
        # so the device's time is now before trusted time: refused until a manager says so.
        set_offset(offset, 0)
        after = daemon.scan(coupons[4])
        assert refused(after, Reason.CLOCK_UNTRUSTED) and after["message"] == UNTRUSTED, after
        assert not clock_ok(daemon)
        assert BANNER in screen(daemon)

        # The manager checks the time and says so; the running daemon picks the reset up
        # from the journal before its next decision (no restart).
        reset = cli("clock", "reset", "--manager", "m-1", "--data", str(world.data), env=env)
        assert reset.returncode == 0 and "clock trust reset by m-1" in reset.stdout, reset.stderr
        assert daemon.scan(coupons[4])["accepted"]
        assert "clock ok" in status(daemon, env)
        assert BANNER not in screen(daemon)
        assert daemon.scan(big)["accepted"]  # the ledger is fresh again at the true time
        assert "journal written by another process" in daemon.output()
    finally:
        assert daemon.stop() == 0, daemon.output()[-3000:]

    entries, _, meta = read_journal(world.data)
    assert verify_chain(entries, meta) is None
    flags = [e["reason"] for e in entries if e["kind"] == "flag"]
    assert flags.count(fraud.FLAG_CLOCK_ROLLBACK) == 2 and fraud.FLAG_CLOCK_RESET in flags
    accepted = [e["serial"] for e in entries if e["kind"] == "redeem" and e["accepted"]]
    assert accepted == [serial_of(c) for c in (*coupons[:5], big)]
