"""Reading times from people and files; the injectable clock for command lines."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from terminal.clock import Clock, FixedClock, SystemClock


def parse_time(text: str) -> float:
    """Epoch seconds or ISO 8601 (naive means UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def clock_from_env() -> Clock:
    """REDEEM_NOW pins the clock (demos, tests, replaying a day); otherwise system time."""
    fixed = os.environ.get("REDEEM_NOW")
    return FixedClock(parse_time(fixed)) if fixed else SystemClock()
