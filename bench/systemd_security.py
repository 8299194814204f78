"""Exposure of each shipped systemd unit as `systemd-analyze security --offline=yes` rates
it (0 = locked down, 10 = unprotected). A figure, not a test: docs/security-model.md quotes
it. Goal for redeem.service: at most 2.5.

    .venv/bin/python bench/systemd_security.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
USER_UNITS = {"redeem-kiosk.service"}  # installed in /etc/systemd/user
GOALS = {"redeem.service": 2.5}
OVERALL = re.compile(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?) (\S+)")


def exposure(analyze: str, unit: Path, runtime: str) -> tuple[float, str]:
    cmd = [analyze, "security", "--offline=yes", "--no-pager"]
    if unit.name in USER_UNITS:
        cmd.append("--user")
    env = {**os.environ, "XDG_RUNTIME_DIR": runtime, "LC_ALL": "C", "SYSTEMD_COLORS": "0"}
    out = subprocess.run(
        [*cmd, str(unit)], capture_output=True, text=True, env=env, timeout=120
    ).stdout
    found = OVERALL.search(out)
    if not found:
        raise RuntimeError(f"no exposure figure for {unit.name} in:\n{out[-500:]}")
    return float(found.group(2)), found.group(3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        print("systemd-analyze is not installed", file=sys.stderr)
        return 2
    rows = {}
    with tempfile.TemporaryDirectory() as runtime:
        os.chmod(runtime, 0o700)
        for unit in sorted(UNITS.glob("*.service")):
            level, verdict = exposure(analyze, unit, runtime)
            rows[unit.name] = {"exposure": level, "verdict": verdict, "goal": GOALS.get(unit.name)}
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for name, row in rows.items():
        goal = f"  (goal <= {row['goal']})" if row["goal"] is not None else ""
        print(f"{name:26} {row['exposure']:4.1f} {row['verdict']}{goal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
