"""Issue 6's fuzzing: a seeded mutation fuzzer (fuzz_engine.py) over the token decoder, the
engine end to end, the ledger reader, the basket reader, the NDEF reader, the serial line
framing and the POS API (fuzz_targets.py), and issue 11's daemon config and central
journal upload (fuzz_config_upload.py). A short run in `make test`; REDEEM_SOAK=1 runs
the full one (over a million inputs, spread over the cores). Same seed, same inputs.
test_atheris.py runs the same targets coverage-guided (atheris, where it installs)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.fuzz_engine import Job, Stats, run_jobs, shards
from tests.reliability.fuzz_targets import TARGETS, make_target
from tests.reliability.harness import FUZZ_SEED as SEED
from tests.reliability.harness import SOAK

# Inputs per target. The short run stays well under 30 s on a laptop core; the full run
# totals over 1,000,000 and is sharded so every core is busy.
SHORT = {
    "tokens": 10_000,
    "engine": 15_000,
    "ledger": 5_000,
    "basket": 10_000,
    "ndef": 8_000,
    "serial": 6_000,
    "pos": 600,
    "config": 4_000,
    "upload": 400,
}
FULL = {
    "tokens": 600_000,
    "engine": 800_000,
    "ledger": 250_000,
    "basket": 500_000,
    "ndef": 500_000,
    "serial": 300_000,
    "pos": 20_000,
    "config": 300_000,
    "upload": 20_000,
}
PER_SHARD = 50_000
SLOW = ("pos", "upload")  # a daemon or a central per input: shards of 6,000, sorted first
MIN_FULL_TOTAL = 1_000_000


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """The targets quiet the project's loggers and a daemon replaces the root handlers: put
    both back, so later tests' caplog still hears the drivers."""
    names = ("", "terminal", "drivers", "kiosk_ui", "sync", "peewee")
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in names]
    handlers = list(logging.getLogger().handlers)
    yield
    for logger, level in saved:
        logger.setLevel(level)
    logging.getLogger().handlers[:] = handlers


def _report(stats: dict[str, Stats], wall_s: float) -> str:
    lines = [s.line() for s in stats.values()]
    total = sum(s.executions for s in stats.values())
    lines.append(
        f"FUZZ SUMMARY seed={SEED} mode={'full' if SOAK else 'short'} total={total:,} inputs "
        f"wall={wall_s:.1f} s rate={total / wall_s if wall_s else 0:,.0f}/s "
        f"failures={sum(len(s.failures) for s in stats.values())}"
    )
    return "\n".join(lines)


def _check(stats: dict[str, Stats], counts: dict[str, int]) -> None:
    failures = [f for s in stats.values() for f in s.failures]
    assert not failures, "\n\n".join(str(f) for f in failures[:10])
    for name, n in counts.items():
        assert stats[name].executions == n, f"{name}: ran {stats[name].executions} of {n}"


def test_targets_are_the_counted_ones() -> None:
    assert set(SHORT) == set(FULL) == set(TARGETS)
    assert sum(FULL.values()) >= MIN_FULL_TOTAL


@pytest.mark.skipif(SOAK, reason="the full run covers it")
@pytest.mark.parametrize("name", list(SHORT))
def test_fuzz_short(name: str, tmp_path: Path) -> None:
    start = time.perf_counter()
    stats = run_jobs([Job(name, SHORT[name], SEED)], make_target, str(tmp_path))
    print("\n" + _report(stats, time.perf_counter() - start))
    _check(stats, {name: SHORT[name]})


@pytest.mark.skipif(not SOAK, reason="REDEEM_SOAK=1 runs the full fuzz (make soak)")
def test_fuzz_full(tmp_path: Path) -> None:
    jobs: list[Job] = []
    for name, n in FULL.items():
        jobs += shards(name, n, SEED, 6_000 if name in SLOW else PER_SHARD)
    # Longest first, so the pool does not end on one slow shard.
    jobs.sort(key=lambda j: j.iterations * (40 if j.target in SLOW else 1), reverse=True)
    processes = int(os.environ.get("REDEEM_FUZZ_PROCS", "0")) or os.cpu_count() or 1
    start = time.perf_counter()
    stats = run_jobs(jobs, make_target, str(tmp_path), processes=processes)
    print("\n" + _report(stats, time.perf_counter() - start))
    _check(stats, FULL)
    assert sum(s.executions for s in stats.values()) >= MIN_FULL_TOTAL
