"""What the journal's start-up checks cost: the WAL walk that refuses a write-ahead log with
committed transactions after a damaged frame (coupons.journal.wal_problem), on a WAL of
about 4 MB (SQLite's default checkpoint keeps it near there), intact and damaged in the
middle. Informational (no goal): docs/reliability.md quotes it.

    .venv/bin/python bench/journal_start.py [--wal-mb N] [--runs N]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._world import machine, scratch  # noqa: E402
from coupons.journal import wal_problem  # noqa: E402

FRAME = 24 + 4096  # frame header + one page at SQLite's default page size


def make_wal(folder: Path, megabytes: float) -> Path:
    """A WAL that was never checkpointed, one row per transaction, copied while the
    connection is open (as a power cut leaves it). Returns the copy's -wal file."""
    live = folder / "live.db"
    con = sqlite3.connect(str(live), isolation_level=None)
    con.execute("PRAGMA journal_mode=wal")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
    wal = folder / "live.db-wal"
    n = 0
    while not wal.exists() or wal.stat().st_size < megabytes * 1024 * 1024:
        n += 1
        con.execute("INSERT INTO t (body) VALUES (?)", (bytes(300),))
    copy = folder / "copy.db"
    shutil.copyfile(live, copy)
    shutil.copyfile(wal, folder / "copy.db-wal")
    con.close()
    return folder / "copy.db-wal"


def timed(wal: Path, runs: int) -> tuple[float, str | None]:
    times, found = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        found = wal_problem(wal)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000, found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wal-mb", type=float, default=4.0)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    print(f"bench/journal_start.py — {machine()}")
    with scratch("journal-start") as root:
        wal = make_wal(root, args.wal_mb)
        frames = (wal.stat().st_size - 32) // FRAME
        intact_ms, intact = timed(wal, args.runs)
        assert intact is None, intact
        data = bytearray(wal.read_bytes())
        data[32 + (frames // 2) * FRAME + 24 + 100] ^= 0xFF  # a page in the middle
        wal.write_bytes(bytes(data))
        damaged_ms, damaged = timed(wal, args.runs)
        assert damaged is not None, "the damaged WAL was not refused"
    size = frames * FRAME / (1024 * 1024)
    print(f"\nWAL of {frames:,} frames ({size:.1f} MB), median of {args.runs} runs")
    print(f"  intact WAL walked:                 {intact_ms:6.1f} ms")
    print(f"  damaged in the middle, refused:    {damaged_ms:6.1f} ms")
    print("(informational: no goal; paid once at each start-up before SQLite opens the journal)")


if __name__ == "__main__":
    main()
