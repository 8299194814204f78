"""Driver-side helpers around the port (ports/scan.py): thread-safe health bookkeeping and
the one-blocking-loop driver base. Scan, Health and Driver are re-exported for the drivers."""

from __future__ import annotations

import threading
import time

from ports.scan import (
    DEGRADED,
    DOWN,
    OK,
    STOPPED,
    Driver,
    Health,
    Now,
    Scan,
    ScanSink,
)

__all__ = [
    "DEGRADED",
    "DOWN",
    "OK",
    "STOPPED",
    "Driver",
    "Health",
    "HealthState",
    "LoopDriver",
    "Now",
    "Scan",
    "ScanSink",
]


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

    def emit(self, payload: bytes, **meta: object) -> None:
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
