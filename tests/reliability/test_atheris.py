"""Issue 6's coverage-guided fuzzing: atheris (libFuzzer over instrumented Python) runs each
target of fuzz_targets.py in its own process (atheris_main.py), with the same contracts as
the seeded fuzzer in test_fuzz.py. A short run in `make test`; REDEEM_SOAK=1 runs over a
million executions. A crash (an exception a target must not raise, or an accept of what
was never issued) fails the test and leaves the input under test-artifacts/fuzz/."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability.fuzz_targets import TARGETS
from tests.reliability.harness import FUZZ_SEED as SEED
from tests.reliability.harness import SOAK

try:
    import atheris  # noqa: F401
except ImportError:
    HAVE_ATHERIS = False
else:
    HAVE_ATHERIS = True

pytestmark = pytest.mark.skipif(
    not HAVE_ATHERIS,
    reason="atheris is not installed: it ships wheels only for x86_64 Linux (CPython "
    "3.11-3.14), so on a Pi (aarch64) only the seeded fuzzer in test_fuzz.py runs",
)

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "fuzz"

# libFuzzer executions per target. The short run is about 20 s in all on a 2-core VM; the
# full run totals over 1,000,000, two targets at a time.
SHORT = {
    "tokens": 20_000,
    "engine": 20_000,
    "ledger": 10_000,
    "basket": 20_000,
    "ndef": 20_000,
    "serial": 10_000,
    "pos": 1_000,
    "config": 5_000,
    "upload": 300,
}
FULL = {
    "tokens": 300_000,
    "engine": 300_000,
    "ledger": 200_000,
    "basket": 300_000,
    "ndef": 300_000,
    "serial": 200_000,
    "pos": 30_000,
    "config": 200_000,
    "upload": 15_000,
}
MIN_FULL_TOTAL = 1_000_000
# Only a guard against a hung run (libFuzzer stops there and the run count falls short).
MAX_TOTAL_TIME_S = 3600 if SOAK else 600
INPUT_TIMEOUT_S = 120  # one input running this long is a hang, reported as a crash

DONE = re.compile(rb"^Done (\d+) runs in (\d+) second", re.M)
ARTIFACT = re.compile(rb"Test unit written to (\S+)")
COVERAGE = re.compile(rb"^#\d+\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)", re.M)


@dataclass
class Run:
    target: str
    runs: int
    code: int
    executions: int
    seconds: int  # libFuzzer's own count, whole seconds
    wall: float  # the process, start-up and set-up included
    coverage: str
    artifact: str | None
    log: Path

    def line(self) -> str:
        rate = self.executions / self.seconds if self.seconds else float(self.executions)
        return (
            f"atheris {self.target:<7} {self.executions:>9,} runs {self.seconds:>5} s "
            f"{rate:>9,.0f}/s  wall {self.wall:6.1f} s  {self.coverage}  exit={self.code}"
        )

    def failure(self) -> str:
        tail = self.log.read_bytes().decode("utf-8", "replace")[-4000:]
        where = f"input saved as {self.artifact}" if self.artifact else "no input saved"
        replay = (
            f"\nreplay: .venv/bin/python -m tests.reliability.atheris_main {self.target} "
            f"{self.artifact}"
            if self.artifact
            else ""
        )
        return f"atheris {self.target} exited {self.code}, {where}{replay}\n{tail}"


def run_atheris(target: str, runs: int, workdir: Path) -> Run:
    """One libFuzzer run of one target in its own process; crash inputs to ARTIFACTS."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{target}.log"
    cmd = [
        sys.executable,
        "-m",
        "tests.reliability.atheris_main",
        target,
        f"-runs={runs}",
        f"-seed={SEED}",
        f"-max_total_time={MAX_TOTAL_TIME_S}",
        f"-timeout={INPUT_TIMEOUT_S}",
        f"-artifact_prefix={ARTIFACTS}/atheris-{target}-",
        "-print_final_stats=1",
    ]
    env = dict(os.environ, REDEEM_ATHERIS_WORKDIR=str(workdir / target), PYTHONHASHSEED="0")
    start = time.perf_counter()
    with log.open("wb") as out:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    text = log.read_bytes()
    counted = DONE.findall(text)
    cov = COVERAGE.findall(text)
    found = ARTIFACT.search(text)
    return Run(
        target,
        runs,
        done.returncode,
        int(counted[-1][0]) if counted else 0,
        int(counted[-1][1]) if counted else 0,
        wall,
        "cov={} ft={} corpus={}".format(*(v.decode() for v in cov[-1])) if cov else "",
        found.group(1).decode() if found else None,
        log,
    )


def check(run: Run) -> None:
    assert run.code == 0 and run.artifact is None, run.failure()
    assert run.executions == run.runs, (
        f"atheris {run.target}: {run.executions:,} of {run.runs:,} runs (stopped by "
        f"-max_total_time={MAX_TOTAL_TIME_S}?)\n{run.failure()}"
    )


def test_targets_are_the_counted_ones() -> None:
    assert set(SHORT) == set(FULL) == set(TARGETS)
    assert sum(FULL.values()) >= MIN_FULL_TOTAL


@pytest.mark.skipif(SOAK, reason="the full run covers it")
@pytest.mark.parametrize("name", list(SHORT))
def test_atheris_short(name: str, tmp_path: Path) -> None:
    run = run_atheris(name, SHORT[name], tmp_path)
    print("\n" + run.line())
    check(run)


@pytest.mark.skipif(not SOAK, reason="REDEEM_SOAK=1 runs the full atheris fuzz (make soak)")
def test_atheris_full(tmp_path: Path) -> None:
    procs = int(os.environ.get("REDEEM_FUZZ_PROCS", "0")) or os.cpu_count() or 1
    # Slowest first, so the pool does not end on one long run.
    order = sorted(
        FULL, key=lambda n: FULL[n] * (30 if n in ("pos", "upload") else 1), reverse=True
    )
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=procs) as pool:
        runs = list(pool.map(lambda n: run_atheris(n, FULL[n], tmp_path), order))
    wall = time.perf_counter() - start
    total = sum(r.executions for r in runs)
    print("\n" + "\n".join(r.line() for r in runs))
    print(
        f"ATHERIS SUMMARY seed={SEED} total={total:,} runs, {len(runs)} targets, "
        f"{procs} at a time, wall {wall:.1f} s, {total / wall:,.0f}/s"
    )
    for run in runs:
        check(run)
    assert total >= MIN_FULL_TOTAL
