"""`redeem --version` and `redeem-central --version` through the installed console scripts
and `python -m`: the package version from its metadata and the formats each side speaks,
exit 0, nothing else needed (no data directory, no subcommand)."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coupons import ledger, tokens
from coupons.journal.schema import MIGRATIONS
from sync import protocol
from sync.central import archive, models

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's bin/, where pip put the console scripts
PACKAGE = importlib.metadata.version("edge-redeem")


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    # This checkout's code, whichever one the venv was installed from.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("REDEEM_DATA", None)
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, cwd="/")


def fields(out: str) -> dict[str, str]:
    first, *rest = out.strip().splitlines()
    name, version = first.split(" ", 1)
    return {"name": name, "version": version} | dict(line.split(": ", 1) for line in rest)


SHARED = {
    "sync-protocol": protocol.VERSION,
    "ledger-format": ledger.UPDATE_FORMAT,
    "ledger-file-format": ledger.FILE_FORMAT,
    "token-prefix": tokens.PREFIX,
}


@pytest.mark.parametrize(
    "argv",
    [[str(BIN / "redeem")], [sys.executable, "-m", "terminal.cli"]],
    ids=["console-script", "python-m"],
)
def test_redeem_version(argv: list[str]) -> None:
    if not Path(argv[0]).exists():
        pytest.skip(f"{argv[0]} is not installed (pip install -e .)")
    done = run(*argv, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    got = fields(done.stdout)
    assert got == {
        "name": "redeem",
        "version": PACKAGE,
        **SHARED,
        "journal-schema": str(1 + len(MIGRATIONS)),
    }


@pytest.mark.parametrize(
    "argv",
    [[str(BIN / "redeem-central")], [sys.executable, "-m", "sync.central.cli"]],
    ids=["console-script", "python-m"],
)
def test_redeem_central_version(argv: list[str]) -> None:
    if not Path(argv[0]).exists():
        pytest.skip(f"{argv[0]} is not installed (pip install -e .)")
    done = run(*argv, "--version")
    assert done.returncode == 0, done.stderr
    got = fields(done.stdout)
    assert got == {
        "name": "redeem-central",
        "version": PACKAGE,
        **SHARED,
        "database-schema": str(models.SCHEMA_VERSION),
        "archive-format": archive.FORMAT,
    }


def test_the_distribution_is_the_one_pyproject_names() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "edge-redeem"  # the name both commands look their version up by


def test_version_is_listed_in_help() -> None:
    for script in ("terminal.cli", "sync.central.cli"):
        done = run(sys.executable, "-m", script, "--help")
        assert done.returncode == 0 and "--version" in done.stdout
