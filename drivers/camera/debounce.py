"""Debounce: a code held in view counts once; it counts again only after it has been out of
view for `hold_s` seconds of the camera's time (frame timestamps, not the wall clock, so
a file replayed faster than real time debounces as it would live)."""

from __future__ import annotations

from collections.abc import Hashable


class Debouncer:
    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self._last_seen: dict[Hashable, float] = {}

    def admit(self, key: Hashable, t: float) -> bool:
        """Saw `key` at time `t`: True if it counts (new, or back after leaving view)."""
        last = self._last_seen.get(key)
        self._last_seen[key] = t
        return last is None or t - last > self.hold_s or t < last

    def forget_old(self, t: float) -> None:
        """Drop codes gone longer than hold_s (keeps the table small on a busy till)."""
        for key in [k for k, seen in self._last_seen.items() if t - seen > self.hold_s]:
            del self._last_seen[key]
