"""Shared set-up for the benchmarks: a real central and a real terminal in a scratch
directory on the repository's disk (never /dev/shm), removed afterwards.

Not a benchmark itself; the scripts next to it import it."""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from coupons import setup  # noqa: E402
from coupons.clock import FixedClock  # noqa: E402
from coupons.engine import Engine  # noqa: E402
from coupons.ledger import Policy, ledger_file  # noqa: E402
from sync.central.store import Central  # noqa: E402
from tests.master_key import KEY as MASTER_KEY  # noqa: E402

# Wednesday 2026-11-25 12:00 UTC, as in tests/conftest.py.
T0 = 1795_608_000.0


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temporary directory on the real disk (under the repo), always removed."""
    path = Path(tempfile.mkdtemp(prefix=f".bench-{prefix}-", dir=ROOT))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def new_central(root: Path, clock: FixedClock, policy: Policy | None = None) -> Central:
    central = Central.init(root / "central", clock.now, master_key=MASTER_KEY)
    if policy is not None:
        central.set_policy(policy)
    return central


def add_campaigns(central: Central, n: int) -> list[str]:
    ids = []
    with central.db.atomic():
        for i in range(n):
            cid = f"C{i:05d}"
            central.add_campaign(
                {
                    "id": cid,
                    "name": f"Campaign {i}",
                    "kind": "fixed",
                    "currency": "CNY",
                    "amount_minor": 500 + i,
                    "stacking": "any",
                }
            )
            ids.append(cid)
    return ids


def random_serials(n: int) -> list[int]:
    return [secrets.randbits(64) for _ in range(n)]


def new_terminal(root: Path, clock: FixedClock, name: str = "terminal") -> tuple[Path, Engine]:
    data = root / name
    setup.init(data, root / "central" / "trust-anchor.json", "S1", "T1")
    return data, setup.open_engine(data, clock)


def terminal_for_daemon(root: Path, clock: FixedClock, central: Central) -> Path:
    """A terminal data directory holding the central's newest ledger, closed again so a
    daemon can own its journal."""
    central.publish()
    data = root / "terminal"
    setup.init(data, root / "central" / "trust-anchor.json", "S1", "T1")
    engine = setup.open_engine(data, clock)
    engine.import_ledger(ledger_file([central.snapshot()]))
    engine.db.close()
    return data


def timed(label: str, fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    print(f"  [setup] {label}: {dt:.2f} s", flush=True)
    return dt, out


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(p / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def latency_summary(ns: list[int]) -> dict[str, float]:
    """Per-call latencies in ns -> ms figures."""
    s = sorted(ns)
    return {
        "p50": percentile(s, 50) / 1e6,
        "p99": percentile(s, 99) / 1e6,
        "max": s[-1] / 1e6,
        "mean": statistics.fmean(s) / 1e6,
    }


def goal(name: str, met: bool, detail: str) -> None:
    print(f"GOAL {'met' if met else 'not met'}: {name} ({detail})")


def machine() -> str:
    return f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, dir {ROOT}"
