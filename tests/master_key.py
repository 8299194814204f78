"""The master key the tests' (and benchmarks') centrals are made with: a fixed one, never a
real central's, so a `redeem-central` process and the test that made the central agree."""

from __future__ import annotations

import os
from pathlib import Path

from sync.central.keyvault import ENV_FILE

KEY = bytes.fromhex("7e57" * 16)  # "test": 32 bytes


def key_file(directory: Path) -> Path:
    """DIRECTORY/master-key holding KEY (made once, mode 0600)."""
    path = directory / "master-key"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(KEY.hex() + "\n")
    return path


def env(directory: Path) -> dict[str, str]:
    """The environment a `redeem-central` process finds KEY through."""
    return {ENV_FILE: str(key_file(directory))}
