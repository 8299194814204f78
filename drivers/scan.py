"""The port between devices and the terminal: a Scan event, the health a driver reports,
and the interface every driver family implements (real device or simulated twin)."""

from __future__ import annotations

import threading
import time
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "detail": self.detail,
            "since": self.since,
            "counters": dict(self.counters),
        }


class Driver(Protocol):
    name: str
    kind: str

    def start(self, sink: ScanSink) -> None:
        """Begin delivering scans to `sink` (from the driver's own thread)."""

    def stop(self, timeout: float = 2.0) -> None:
        """Stop and join; no scan is delivered after this returns."""

    def health(self) -> Health: ...


class HealthState:
    """Thread-safe health bookkeeping shared by the drivers."""

    def __init__(self, now: Now = time.time) -> None:
        self._now = now
        self._lock = threading.Lock()
        self._health = Health(STOPPED, "not started", now())
        self._counters: dict[str, int] = {}

    def set(self, state: str, detail: str = "") -> None:
        with self._lock:
            if state != self._health.state or detail != self._health.detail:
                since = self._health.since if state == self._health.state else self._now()
                self._health = Health(state, detail, since)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + n

    def get(self) -> Health:
        with self._lock:
            h = self._health
            return Health(h.state, h.detail, h.since, dict(self._counters))


class LoopDriver:
    """A driver whose device work is one blocking loop in a thread (`run(stop_event)`);
    the loop returns or raises only when the device is gone for good or stop is set."""

    kind = "loop"

    def __init__(self, name: str, now: Now = time.time) -> None:
        self.name = name
        self.now = now
        self.state = HealthState(now)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sink: ScanSink | None = None

    def start(self, sink: ScanSink) -> None:
        self._sink = sink
        self._stop.clear()
        self._thread = threading.Thread(target=self._main, name=f"driver-{self.name}", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self.run(self._stop)
        except Exception as exc:  # a driver fault is a health state, never a crash
            self.state.set(DOWN, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if self._stop.is_set():
                self.state.set(STOPPED, "stopped")

    def emit(self, payload: bytes, **meta: Any) -> None:
        if self._sink is not None and not self._stop.is_set():
            self.state.count("scans")
            self._sink(Scan(self.name, self.kind, payload, self.now(), meta))

    def run(self, stop: threading.Event) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Unblock the loop (close a port, release a capture); default: nothing to do."""

    def health(self) -> Health:
        return self.state.get()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
