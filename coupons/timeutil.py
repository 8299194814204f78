"""Reading times from people and files; the injectable clock for command lines."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from coupons.clock import Clock, FixedClock, OffsetFileClock, SystemClock


def parse_time(text: str) -> float:
    """Epoch seconds or ISO 8601 (naive means UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def clock_from_env() -> Clock:
    """REDEEM_NOW pins the clock (demos, tests, replaying a day); otherwise system time.
    REDEEM_CLOCK_OFFSET_FILE moves that clock by the seconds the file holds, read on every
    call (clock drills and the reliability tests move a running daemon's clock)."""
    fixed = os.environ.get("REDEEM_NOW")
    clock: Clock = FixedClock(parse_time(fixed)) if fixed else SystemClock()
    offset_file = os.environ.get("REDEEM_CLOCK_OFFSET_FILE")
    return OffsetFileClock(clock, Path(offset_file)) if offset_file else clock
