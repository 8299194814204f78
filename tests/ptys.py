"""Pseudo-terminals standing in for serial devices in the driver tests (the simulator itself
lives in drivers/scanner/pty.py, which the demo uses too)."""

from __future__ import annotations

import time
from collections.abc import Callable

from drivers.scanner.pty import Pty

__all__ = ["Pty", "wait_for"]


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
