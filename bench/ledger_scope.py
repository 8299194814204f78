"""Redeemed sets at chain scale (docs/central-scale.md): bytes per redeemed serial in the
two wire forms, the sorted 8-byte list and the serialized roaring bitmap, for serials
numbered per campaign (5 campaigns of 1,000,000 issued; a third, two thirds, all
redeemed) and for old random serials; then the peak RSS of a till process holding
5,000,000 redeemed numbered serials, or 1,000,000 old random ones, or both, in a
SerialSet, and what lookups and a delta (copy the set, add 10,000 serials) cost there.

Goals (issue 13): at most 2 bytes per redeemed serial; under 150 MB RSS at 5,000,000
numbered; 1,000,000 random within 5 MB of the sorted array they were held in before the
bitmap (29 MB then).

    .venv/bin/python bench/ledger_scope.py [--issued N] [--campaigns N] [--random N]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._world import ROOT, goal, machine, scratch, timed  # noqa: E402
from coupons import serials  # noqa: E402

SEED = 13
HELD = 5_000_000

# A fresh interpreter per set, so its peak is that of a till holding it and nothing else.
CHILD = r"""
import bisect, itertools, json, random, resource, sys, time
sys.path.insert(0, sys.argv[1])
form, path = sys.argv[2], sys.argv[3]
from coupons import serials
from coupons.serials import SerialSet
def status_mb(key):  # Linux: of this process image only (ru_maxrss survives exec)
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")
def hwm_mb():  # the peak
    return status_mb("VmHWM")
base = hwm_mb()
data = open(path, "rb").read()
t = time.perf_counter()
if form == "array":  # what SerialSet held before the bitmap: the sorted array itself
    held = serials.unpack(data)
    def has(serial):
        i = bisect.bisect_left(held, serial)
        return i < len(held) and held[i] == serial
else:
    held = SerialSet(serials.unpack_rb(data) if form == "rb" else serials.unpack(data))
    has = held.__contains__
load_s = time.perf_counter() - t
del data
held_mb = status_mb("VmRSS")  # what holding the set costs once it is read
rng = random.Random(1)
members = list(itertools.islice(held, 0, None, max(1, len(held) // 20_000)))
probes = members + [rng.getrandbits(64) for _ in range(20_000)]
t = time.perf_counter()
found = sum(1 for p in probes if has(p))
lookup_us = (time.perf_counter() - t) / len(probes) * 1e6
delta_ms = delta_numbered_ms = float("nan")
if form != "array":
    # What applying a delta does: copy the set, add 10,000 (old random serials, or the
    # next 10,000 of a numbered campaign, as a delta's list or bitmap brings them).
    adds = [[rng.getrandbits(64) for _ in range(10_000)] for _ in range(5)]
    t = time.perf_counter()
    for add in adds:
        other = held.copy()
        other.add_many(add)
    delta_ms = (time.perf_counter() - t) / 5 * 1e3
    campaign = rng.randrange(1, 2**32) << 32
    adds = [serials.unpack_rb(serials.pack_rb(range(campaign | (1 + 10_000 * i),
                                                    campaign | (10_001 + 10_000 * i))))
            for i in range(5)]
    t = time.perf_counter()
    for add in adds:
        other = held.copy()
        other.add_many(add)
    delta_numbered_ms = (time.perf_counter() - t) / 5 * 1e3
print(json.dumps({"base_mb": base, "hwm_mb": hwm_mb(),
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "held": len(held), "held_mb": held_mb, "found": found, "load_s": load_s,
                  "lookup_us": lookup_us, "delta_ms": delta_ms,
                  "delta_numbered_ms": delta_numbered_ms}))
"""


def numbered_set(campaigns: int, issued: int, share: float, rng: random.Random) -> list[int]:
    """Serials of `campaigns` numbered campaigns, `share` of each one's `issued` redeemed
    (in no particular order: any coupon may come back first)."""
    out: list[int] = []
    for _ in range(campaigns):
        number = rng.randrange(1, 2**32)
        counts = range(1, issued + 1)
        picked = counts if share >= 1 else rng.sample(counts, round(issued * share))
        out.extend((number << 32) | n for n in picked)
    return out


def forms(values: list[int]) -> tuple[int, int, str]:
    """(list bytes, roaring bytes, the form pack_best sends)."""
    rb = serials.pack_rb(values)
    chosen, _ = serials.pack_best(serials.unpack_rb(rb))
    return 8 * len(set(values)), len(rb), chosen


def child(form: str, path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), form, str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--issued", type=int, default=1_000_000, help="coupons per campaign")
    ap.add_argument("--campaigns", type=int, default=5)
    ap.add_argument("--random", type=int, default=1_000_000, help="old random serials")
    args = ap.parse_args()
    print(f"bench/ledger_scope.py — {machine()}", flush=True)
    rng = random.Random(SEED)

    print()
    print(f"{'redeemed set':<52}{'serials':>11}{'list B/s':>10}{'roaring B/s':>13}  sent")
    print("-" * 94)
    per_serial: dict[str, float] = {}
    cases: list[tuple[str, list[int]]] = [
        (
            f"numbered, {args.campaigns} x {args.issued:,} issued, {label} redeemed",
            numbered_set(args.campaigns, args.issued, share, rng),
        )
        for label, share in (("1/3", 1 / 3), ("2/3", 2 / 3), ("all", 1.0))
    ]
    cases.append((f"old random 64-bit serials, {args.random:,}", _random(args.random, rng)))
    for label, values in cases:
        list_b, rb_b, chosen = forms(values)
        n = len(set(values))
        per_serial[label] = min(list_b, rb_b) / n
        print(f"{label:<52}{n:>11,}{list_b / n:>10.4f}{rb_b / n:>13.4f}  {chosen}")
    del cases

    print()
    with scratch("ledger-scope") as root:
        sets: list[tuple[str, str, list[int]]] = [
            ("5 x 1,000,000 numbered, all redeemed", "rb", numbered_set(5, 1_000_000, 1, rng)),
            (
                "5 x 3,000,000 numbered, 1/3 redeemed",
                "rb",
                numbered_set(5, 3_000_000, 1 / 3, rng),
            ),
            ("5 x 3,000,000 numbered, 1/3 redeemed, list", "list", []),
            (f"old random, {args.random:,}, list form", "list", _random(args.random, rng)),
            (f"old random, {args.random:,}, roaring form", "rb", []),
            (f"old random, {args.random:,}, before: sorted array", "array", []),
            (
                f"5 x 1,000,000 numbered + {args.random:,} random",
                "rb",
                numbered_set(5, 1_000_000, 1, rng) + _random(args.random, rng),
            ),
        ]
        rows = []
        previous: list[int] = []
        for label, form, values in sets:
            values = values or previous  # the same serials again, in the other form
            previous = values
            path = root / f"set-{len(rows)}.{form}"
            pack = serials.pack_rb if form == "rb" else serials.pack  # array: the list
            held = serials.SerialSet(values)
            _, blob = timed(f"pack {label}", lambda h=held, p=pack: p(h))  # type: ignore[misc]
            assert isinstance(blob, bytes)
            path.write_bytes(blob)
            rows.append((label, form, len(blob), child(form, path)))
        print()
        print(
            f"{'till process holding':<46}{'wire MB':>9}{'peak MB':>9}{'held MB':>9}"
            f"{'python MB':>10}"
            f"{'load s':>8}{'lookup us':>10}{'delta ms':>9}{'delta# ms':>10}"
        )
        print("-" * 120)
        for label, _form, size, r in rows:
            print(
                f"{label:<46}{size / 2**20:>9.1f}{r['hwm_mb']:>9.1f}{r['held_mb']:>9.1f}"
                f"{r['base_mb']:>10.1f}"
                f"{r['load_s']:>8.2f}{r['lookup_us']:>10.3f}{r['delta_ms']:>9.1f}"
                f"{r['delta_numbered_ms']:>10.1f}"
            )
        print("(peak: VmHWM of the child; held: its VmRSS once the set is read and the wire")
        print(" bytes dropped; python: its peak before the set was read;")
        print(" delta: copy the set and add 10,000 random serials, as a ledger delta does;")
        print(" delta#: the same with 10,000 numbered serials in a bitmap;")
        print(" before: the sorted array the SerialSet kept until the bitmap, for comparison)")

    print()
    third = next(k for k in per_serial if "1/3" in k)
    goal(
        "<= 2 bytes per redeemed serial (numbered, a third redeemed)",
        per_serial[third] <= 2,
        f"{per_serial[third]:.3f}",
    )
    worst = max(r[3]["hwm_mb"] for r in rows if r[1] == "rb" and "random" not in r[0])
    goal(f"< 150 MB RSS holding {HELD:,} numbered serials", worst < 150, f"{worst:.1f} MB")
    random_mb = next(r[3]["hwm_mb"] for r in rows if r[0].endswith("list form"))
    array_mb = next(r[3]["hwm_mb"] for r in rows if r[1] == "array")
    goal(
        f"{args.random:,} random serials (list form) within 5 MB of the sorted array",
        random_mb <= array_mb + 5,
        f"{random_mb:.1f} MB, the array {array_mb:.1f} MB",
    )


def _random(n: int, rng: random.Random) -> list[int]:
    return [rng.getrandbits(64) for _ in range(n)]


if __name__ == "__main__":
    main()
