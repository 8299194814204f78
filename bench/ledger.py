"""The signed ledger at scale: verify + apply time of a 1,000,000-serial snapshot, peak RSS
of a terminal process holding it, and verify + apply time of a 10,000-serial delta.

Goals: snapshot verify + apply < 10 s; peak RSS < 150 MB; 10,000-entry delta < 0.5 s.

    .venv/bin/python bench/ledger.py [--serials N] [--delta N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._world import (  # noqa: E402
    ROOT,
    T0,
    add_campaigns,
    goal,
    machine,
    new_central,
    random_serials,
    scratch,
    timed,
)
from coupons import ledger, setup  # noqa: E402
from coupons.clock import FixedClock  # noqa: E402
from coupons.ledger import LedgerState, ledger_file  # noqa: E402
from coupons.ledger_store import LedgerStore  # noqa: E402

REPEAT = 3

# Run in a fresh interpreter, so its peak RSS is that of a terminal and nothing else.
CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
mode, data = sys.argv[2], sys.argv[3]
from pathlib import Path
from coupons import setup
from coupons.clock import FixedClock
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def hwm_mb():  # Linux: peak RSS of this process image only
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
base = rss_mb()
t = time.perf_counter()
if mode == "load":       # start-up: replay and re-verify the ledger files on disk
    engine = setup.open_engine(Path(data), FixedClock(float(sys.argv[4])))
else:                    # import a ledger file (USB stick / sync) into a fresh terminal
    engine = setup.open_engine(Path(data), FixedClock(float(sys.argv[4])))
    res = engine.import_ledger(Path(sys.argv[5]).read_bytes())
    assert not res.refused, res.refused
dt = time.perf_counter() - t
led = engine.ledger
print(json.dumps({"base_mb": base, "peak_mb": rss_mb(), "hwm_mb": hwm_mb(), "seconds": dt,
                  "version": led.version, "redeemed": len(led.redeemed),
                  "campaigns": len(led.campaigns)}))
"""


def child(mode: str, data: Path, extra: list[str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), mode, str(data), str(T0), *extra],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def best_of(fn, n: int = REPEAT) -> tuple[float, float, object]:  # type: ignore[no-untyped-def]
    """(min, median) seconds over n runs, and the last result."""
    times, out = [], None
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times), out


def work(args: argparse.Namespace, root: Path) -> None:
    """Build the ledger, time verify + apply in this process, and leave terminal data
    directories for the RSS children; results go to root/results.json."""
    clock = FixedClock(T0)
    central = new_central(root, clock)
    timed(f"add {args.campaigns} campaigns", lambda: add_campaigns(central, args.campaigns))
    timed(
        f"Central.mark {args.serials:,} serials redeemed",
        lambda: central.mark(random_serials(args.serials), "redeemed"),
    )
    timed("Central.publish (version 1)", central.publish)
    _, snap = timed("Central.snapshot (version 1)", central.snapshot)
    timed(
        f"Central.mark {args.delta:,} more serials",
        lambda: central.mark(random_serials(args.delta), "redeemed"),
    )
    timed("Central.publish (version 2, the delta)", central.publish)
    (delta,) = central.deltas(1)
    anchor = central.anchor
    central.db.close()
    assert isinstance(snap, bytes)

    # Pure verify + apply (ledger.apply), then the store (which also writes the update to
    # disk atomically, with fsyncs), then start-up replay from disk.
    empty = LedgerState()
    times: dict[str, tuple[float, float]] = {}
    times["snap_verify"] = best_of(lambda: ledger.verify_update(anchor, snap))[:2]
    *t, out = best_of(lambda: ledger.apply(anchor, empty, snap))
    times["snap_apply"] = (t[0], t[1])
    state, kind = out  # type: ignore[misc]
    assert kind == "snapshot" and len(state.redeemed) == args.serials
    *t, out = best_of(lambda: ledger.apply(anchor, state, delta), 5)
    times["delta_apply"] = (t[0], t[1])
    state2, kind = out  # type: ignore[misc]
    assert kind == "delta" and len(state2.redeemed) == args.serials + args.delta
    times["delta_verify"] = best_of(lambda: ledger.verify_update(anchor, delta), 5)[:2]
    store_times, delta_store_times = [], []
    for i in range(REPEAT):
        store = LedgerStore(root / f"store-{i}", anchor)
        t0 = time.perf_counter()
        res = store.import_file(ledger_file([snap]))
        store_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        res2 = store.import_file(ledger_file([delta]))
        delta_store_times.append(time.perf_counter() - t0)
        assert res.applied == [1] and res2.applied == [2], (res, res2)
    times["snap_store"] = (min(store_times), statistics.median(store_times))
    times["delta_store"] = (min(delta_store_times), statistics.median(delta_store_times))
    *t, loaded = best_of(lambda: LedgerStore(root / "store-0", anchor).load())
    times["load"] = (t[0], t[1])
    assert loaded.version == 2  # type: ignore[attr-defined]

    # Data directories for the children: one holding snapshot + delta, one fresh.
    held = root / "terminal-held"
    setup.init(held, root / "central" / "trust-anchor.json", "S1", "T1")
    eng = setup.open_engine(held, clock)
    assert not eng.import_ledger(ledger_file([snap, delta])).refused
    eng.db.close()
    setup.init(root / "terminal-fresh", root / "central" / "trust-anchor.json", "S1", "T1")
    (root / "snapshot.ledger").write_bytes(ledger_file([snap]))
    (root / "results.json").write_text(
        json.dumps({"times": times, "snap_bytes": len(snap), "delta_bytes": len(delta)})
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--serials", type=int, default=1_000_000)
    ap.add_argument("--campaigns", type=int, default=1_000)
    ap.add_argument("--delta", type=int, default=10_000)
    ap.add_argument("--work-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.work_dir:
        work(args, Path(args.work_dir))
        return
    print(f"bench/ledger.py — {machine()}", flush=True)
    with scratch("ledger") as root:
        # The big build runs in its own process: a child forked from a process that once
        # held the central's million rows would inherit that peak in ru_maxrss.
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--serials",
                str(args.serials),
                "--campaigns",
                str(args.campaigns),
                "--delta",
                str(args.delta),
                "--work-dir",
                str(root),
            ],
            check=True,
        )
        res = json.loads((root / "results.json").read_text())
        rss_load = child("load", root / "terminal-held", [])
        rss_import = child("import", root / "terminal-fresh", [str(root / "snapshot.ledger")])
    assert rss_load["redeemed"] == args.serials + args.delta
    assert rss_import["redeemed"] == args.serials
    times = res["times"]
    print()
    print(
        f"snapshot: {res['snap_bytes']:,} bytes ({res['snap_bytes'] / 1e6:.1f} MB), "
        f"{args.serials:,} redeemed serials, {args.campaigns:,} campaigns; delta: "
        f"{res['delta_bytes']:,} bytes, {args.delta:,} serials"
    )
    print()
    print(f"{'operation':<62}{'best ms':>9}{'median ms':>11}")
    print("-" * 82)
    rows = [
        ("snapshot: verify only (ledger.verify_update)", "snap_verify"),
        ("snapshot: verify + apply (ledger.apply)", "snap_apply"),
        ("snapshot: LedgerStore.import_file (+ atomic write, fsync)", "snap_store"),
        ("start-up: LedgerStore.load() (snapshot + delta from disk)", "load"),
        (f"delta ({args.delta:,}): verify only", "delta_verify"),
        (f"delta ({args.delta:,}): verify + apply (ledger.apply)", "delta_apply"),
        (f"delta ({args.delta:,}): LedgerStore.import_file (+ write)", "delta_store"),
    ]
    for name, key in rows:
        best, med = times[key]
        print(f"{name:<62}{best * 1e3:>9.1f}{med * 1e3:>11.1f}")
    print()
    print(
        f"{'terminal process (child)':<56}{'ru_maxrss':>10}{'VmHWM':>10}{'at start':>10}"
        f"{'took s':>8}"
    )
    print("-" * 94)
    for name, r in (
        ("open_engine on a data dir holding snapshot + delta", rss_load),
        ("fresh open_engine + import_ledger(snapshot file)", rss_import),
    ):
        print(
            f"{name:<56}{r['peak_mb']:>7.1f} MB{r['hwm_mb']:>7.1f} MB"
            f"{r['base_mb']:>7.1f} MB{r['seconds']:>8.2f}"
        )
    print(
        "(ru_maxrss = getrusage(RUSAGE_SELF) peak of the child, interpreter and imports "
        "included; 'at start' = after imports, before the ledger)"
    )
    print()
    s_med, st_med = times["snap_apply"][1], times["snap_store"][1]
    goal(
        "1M-serial snapshot verify + apply < 10 s",
        max(s_med, st_med) < 10,
        f"ledger.apply median {s_med:.2f} s, with store write {st_med:.2f} s",
    )
    peak = max(rss_load["peak_mb"], rss_import["peak_mb"])
    goal(
        "peak RSS of a terminal holding it < 150 MB",
        peak < 150,
        f"start-up {rss_load['peak_mb']:.1f} MB, import {rss_import['peak_mb']:.1f} MB",
    )
    d_med, ds_med = times["delta_apply"][1], times["delta_store"][1]
    goal(
        f"{args.delta:,}-entry delta < 0.5 s",
        max(d_med, ds_med) < 0.5,
        f"ledger.apply median {d_med:.3f} s, with store write {ds_med:.3f} s",
    )


if __name__ == "__main__":
    main()
