"""The demo's plumbing: running the real command lines, printing story lines, money."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any


class DemoFailed(Exception):
    pass


def yuan(minor: int) -> str:
    sign = "-" if minor < 0 else ""
    minor = abs(minor)
    return f"{sign}¥{minor // 100}.{minor % 100:02d}"


def say(when: str, text: str) -> None:
    wide = sum(unicodedata.east_asian_width(ch) in "WF" for ch in when)  # 2 columns each
    print(f"{when:<{8 - wide}} {text}", flush=True)


def _tool(name: str, module: str) -> list[str]:
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


TOOLS = {
    "redeem": _tool("redeem", "terminal.cli"),
    "redeem-central": _tool("redeem-central", "sync.central.cli"),
}


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without REDEEM_* settings: every child runs on the real
    clock (no REDEEM_NOW) with the data directories the demo names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDEEM_")}
    env.update(extra)
    return env


def run(
    tool: str,
    *args: str,
    ok_codes: tuple[int, ...] = (0,),
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """One command line, in its own session so a Ctrl-C at the keyboard reaches only the
    demo, which then stops everything in order."""
    proc = subprocess.run(
        [*TOOLS[tool], *args],
        env=env or clean_env(),
        input=stdin,  # a secret (a password) goes here, never into the argument list
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        start_new_session=True,
    )
    if proc.returncode not in ok_codes:
        raise DemoFailed(
            f"`{tool} {' '.join(args)}` exited {proc.returncode}: "
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def run_json(tool: str, *args: str, ok_codes: tuple[int, ...] = (0,), **kw: Any) -> Any:
    return json.loads(run(tool, *args, "--json", ok_codes=ok_codes, **kw).stdout)
