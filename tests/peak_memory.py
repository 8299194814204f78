"""A Python module run in a child process, with the child's own peak memory (VmHWM).

The rusage of a child started from a big process (pytest after a few hundred tests) carries
the parent's high-water mark across fork and exec, so it measures the parent, not the
child. VmHWM belongs to the address space exec made, so the child reports it at exit."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

_WRAPPER = """
import atexit, runpy, sys
_path = sys.argv[1]
def _report():
    with open("/proc/self/status") as fh:
        kb = next(line.split()[1] for line in fh if line.startswith("VmHWM:"))
    with open(_path, "w") as out:
        out.write(kb)
atexit.register(_report)
module = sys.argv[2]
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def command(module: str, args: Sequence[str], report: Path) -> list[str]:
    """argv that runs `python -m module args...` and writes its peak RSS (kB) to `report`."""
    return [sys.executable, "-c", _WRAPPER, str(report), module, *args]


def peak_mb(report: Path) -> float:
    """The peak RSS the child wrote, in MB (0 when it died before it could say)."""
    try:
        return int(report.read_text()) / 1024
    except (OSError, ValueError):
        return 0.0


__all__ = ["command", "peak_mb"]
