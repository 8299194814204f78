"""The simulated input: scans from a list, a file (one per line) or a named pipe, for tests,
demos and installers checking the pipeline with no device attached."""

from __future__ import annotations

import os
import select
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from drivers.options import OptionError
from drivers.scan import DOWN, OK, LoopDriver, Now


@dataclass(frozen=True)
class FakeOptions:
    payloads: list[str] = field(default_factory=list)  # delivered in order at start
    file: str | None = None  # more payloads, one per line
    fifo: str | None = None  # a named pipe: every line written to it becomes a scan
    interval_s: float = 0.0  # pause between listed payloads
    start_delay_s: float = 0.0

    def check(self) -> None:
        if self.interval_s < 0 or self.start_delay_s < 0:
            raise OptionError("interval_s", "must not be negative")


class FakeDriver(LoopDriver):
    kind = "fake"

    def __init__(self, name: str, options: FakeOptions, now: Now = time.time) -> None:
        super().__init__(name, now)
        self.options = options

    def feed(self, payload: bytes | str, **meta: object) -> None:
        """Deliver one scan now (in-process callers: tests, the kiosk's typed entry)."""
        self.emit(payload.encode() if isinstance(payload, str) else payload, **meta)

    def run(self, stop: threading.Event) -> None:
        self.state.set(OK, "simulated input")
        if stop.wait(self.options.start_delay_s):
            return
        queue = list(self.options.payloads)
        if self.options.file:
            queue += Path(self.options.file).read_text(encoding="utf-8").splitlines()
        for payload in queue:
            if stop.is_set():
                return
            self.feed(payload)
            if self.options.interval_s and stop.wait(self.options.interval_s):
                return
        if self.options.fifo:
            self._read_fifo(Path(self.options.fifo), stop)
        else:
            stop.wait()

    def _read_fifo(self, path: Path, stop: threading.Event) -> None:
        if not path.exists():
            os.mkfifo(path, 0o600)
        # O_RDWR keeps the pipe open when writers come and go, so no EOF spin.
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        buf = b""
        try:
            while not stop.is_set():
                ready, _, _ = select.select([fd], [], [], 0.2)
                if not ready:
                    continue
                chunk = os.read(fd, 65536)
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        self.feed(line.strip())
        except OSError as exc:
            self.state.set(DOWN, f"fifo {path}: {exc}")
        finally:
            os.close(fd)
