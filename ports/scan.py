"""A device's port: a Scan event, the health a driver reports, and the interface every
driver family implements (real device or simulated twin). The kiosk, the daemon and the
drivers all speak these; none of them needs another's code for it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

OK, DEGRADED, DOWN, STOPPED = "ok", "degraded", "down", "stopped"


@dataclass(frozen=True)
class Scan:
    """One thing a device read: the bytes, when, from which input, and what else the device
    knows (NFC tag UID, camera id, barcode symbology)."""

    source: str  # the input's name in the config, e.g. "front-camera"
    kind: str  # camera, nfc, serial, keyboard, fake
    payload: bytes
    at: float
    meta: Mapping[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """Payload as text; bytes that are not UTF-8 stay visible as escapes, never raise."""
        return self.payload.decode("utf-8", "backslashreplace")


ScanSink = Callable[[Scan], None]
Now = Callable[[], float]


@dataclass(frozen=True)
class Health:
    state: str  # ok, degraded, down, stopped
    detail: str = ""
    since: float = 0.0
    counters: Mapping[str, int] = field(default_factory=dict)
    # With `words`, `detail` is a marked message (coupons.i18n.N_) to fill with these: the
    # kiosk shows it in the manager's language, everyone else reads it filled in English.
    words: Mapping[str, int | str] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "state": self.state,
            "detail": self.detail if self.words is None else self.detail.format_map(self.words),
            "since": self.since,
            "counters": dict(self.counters),
        }
        if self.words is not None:
            out["message"] = {"id": self.detail, "words": dict(self.words)}
        return out


class Driver(Protocol):
    name: str
    kind: str

    def start(self, sink: ScanSink) -> None:
        """Begin delivering scans to `sink` (from the driver's own thread)."""

    def stop(self, timeout: float = 2.0) -> None:
        """Stop and join; no scan is delivered after this returns."""

    def health(self) -> Health: ...
