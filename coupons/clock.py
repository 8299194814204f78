"""The one injectable clock: every timestamp in the core comes from here."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch (UTC)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class FixedClock:
    """A settable clock for tests, demos and replay."""

    def __init__(self, at: float) -> None:
        self.at = float(at)

    def now(self) -> float:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += seconds


class OffsetFileClock:
    """Another clock moved by the seconds written in a file, read on every call: a drill or
    a test moves a running daemon's clock back or forward, as a bad RTC or NTP answer
    would, without a second source of time. An unreadable file keeps the last offset."""

    def __init__(self, base: Clock, path: Path) -> None:
        self.base = base
        self.path = path
        self.offset = 0.0

    def now(self) -> float:
        try:
            self.offset = float(self.path.read_text().strip() or 0)
        except FileNotFoundError:
            self.offset = 0.0
        except (OSError, ValueError):
            pass  # a half-written file: keep the last offset
        return self.base.now() + self.offset
