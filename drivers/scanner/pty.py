"""A pseudo-terminal standing in for a serial device (a barcode scanner, a pole display):
the driver opens a stable path (a symlink, as udev's /dev/serial/by-id/... is) and the
simulator works the master side. Used by the driver tests and by `make demo`."""

from __future__ import annotations

import os
import select
import time
from pathlib import Path


class Pty:
    """A pty behind `path`; unplug() makes the device vanish, plug() brings a new one back
    at the same path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.master = self.slave = -1
        self.plug()

    def plug(self) -> None:
        self.master, self.slave = os.openpty()
        tmp = self.path.with_name(self.path.name + ".new")
        tmp.symlink_to(os.ttyname(self.slave))
        os.replace(tmp, self.path)

    def unplug(self) -> None:
        self.path.unlink()
        os.close(self.master)
        os.close(self.slave)
        self.master = self.slave = -1

    def write(self, data: bytes) -> None:
        """What the device sends to the driver (a scanner: the barcode and its CR)."""
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view) :]

    def read(self, n: int, timeout: float = 5.0) -> bytes:
        """Exactly `n` bytes the driver sent to the device (fewer only on timeout)."""
        out = b""
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.master], [], [], left)[0]:
                break
            out += os.read(self.master, n - len(out))
        return out

    def idle(self, wait: float = 0.2) -> bool:
        """True if the driver sends nothing more within `wait` seconds."""
        return not select.select([self.master], [], [], wait)[0]

    def close(self) -> None:
        if self.master >= 0:
            self.unplug()
