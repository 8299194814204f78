"""Fixtures of the reliability suite: a size-limited tmpfs (root only, unmounted in the
finalizer) and the random seed of a run. Nothing here is autouse or starts a process."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

Mount = Callable[[str], Path]


def mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        check=True,
        capture_output=True,
    )


def remount(path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    """mode "ro" or "rw"; the caller looks at returncode (busy while files are open)."""
    return subprocess.run(
        ["mount", "-o", f"remount,{mode}", str(path)], capture_output=True, text=True
    )


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Mount]:
    """tmpfs("2m") mounts a tmpfs of that size under tmp_path and returns its path."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a size-limited tmpfs (CI runs these tests as root)")
    mounted: list[Path] = []

    def make(size: str) -> Path:
        path = tmp_path / f"tmpfs{len(mounted)}"
        mount_tmpfs(path, size)
        mounted.append(path)
        return path

    yield make
    for path in reversed(mounted):
        remount(path, "rw")
        done = subprocess.run(["umount", str(path)], capture_output=True)
        if done.returncode:  # a daemon a failed test left behind: detach, never leak it
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def seed() -> int:
    """REDEEM_SEED replays a failed run; otherwise a new seed, printed on failure."""
    value = os.environ.get("REDEEM_SEED")
    return int(value) if value else int.from_bytes(os.urandom(4), "big")
