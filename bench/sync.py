"""Sync throughput over loopback, against `redeem-central serve` as its own process:

1. a terminal's 100,000-entry journal backlog uploaded by the real sync client (signed
   batches, acknowledged high-water mark), with SQLite and with PostgreSQL at the central.
   Goal: at least 5,000 entries/s.
2. central ingest with 50 terminals uploading at once (PostgreSQL). Goal: at least 10,000
   entries/s on this 2-core machine.
3. the same coupon checked offline by the terminal and online through a loopback round trip
   to the central (POST /v1/check). Goal: offline at least 10x faster.

The backlog is written straight into the terminal's journal (hash-chained like any entry)
rather than redeemed one coupon at a time, so that setting up does not take minutes.

    .venv/bin/python bench/sync.py [--entries N] [--terminals N] [--skip-postgres]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from bench._central import (  # noqa: E402
    Serve,
    chained_rows,
    concurrent_ingest,
    new_central,
    pg_database,
)
from bench._world import goal, machine, scratch  # noqa: E402
from coupons import journal, setup  # noqa: E402
from coupons.clock import SystemClock  # noqa: E402
from coupons.journal import HASHED_FIELDS  # noqa: E402
from sync import protocol  # noqa: E402
from sync.central import terminals  # noqa: E402
from sync.client import run_once  # noqa: E402
from sync.enroll import enroll  # noqa: E402


def backlog_upload(root: Path, database: str | None, n: int) -> float:
    central = new_central(root, database)
    code, _ = terminals.new_enroll_code(central, "S1")
    central.close()
    serve = Serve(root / "central", database)
    try:
        data = root / "terminal"
        enroll(data, serve.url, code, SystemClock(), first_sync=True)
        engine = setup.open_engine(data, SystemClock())
        with engine.db.atomic():
            for row in chained_rows(n, engine.terminal):
                fields = {k: row[k] for k in HASHED_FIELDS if k not in ("seq", "prev_hash")}
                fields["detail"] = json.loads(row["detail"])
                engine.journal.append(**fields)
        engine.journal.__init__()  # type: ignore[misc]  # re-read the head
        backlog = int(engine.journal.head_seq)
        t = time.perf_counter()
        result = run_once(data, engine)
        took = time.perf_counter() - t
        acked = int(journal.get_meta("acked_seq") or 0)
        engine.db.close()
        assert result.ok and acked >= backlog, (result.error, acked, backlog)
        return backlog / took
    finally:
        serve.stop()


def offline_vs_online(root: Path, n: int) -> tuple[float, float]:
    """Median seconds per check of one coupon: offline in the engine, online over loopback."""
    central = new_central(root, None)
    token = central.issue("FIVE", 1)[0].token or ""
    central.publish()
    code, _ = terminals.new_enroll_code(central, "S1")
    central.close()
    serve = Serve(root / "central", None)
    try:
        data = root / "terminal"
        enroll(data, serve.url, code, SystemClock(), first_sync=True)
        engine = setup.open_engine(data, SystemClock())
        from coupons.rules import Basket
        from sync.device import read_device_key

        key = read_device_key(data)
        doc = {"currency": "CNY", "total_minor": 12800}
        basket = Basket.from_dict(doc)
        session = requests.Session()
        offline, online = [], []
        for _ in range(n):
            t = time.perf_counter()
            d = engine.check(token, basket)
            offline.append(time.perf_counter() - t)
            body = json.dumps({"code": token, "basket": doc}).encode()
            t = time.perf_counter()
            headers = protocol.sign_headers(
                key, engine.terminal, "POST", protocol.CHECK, body, time.time()
            )
            headers["Content-Type"] = "application/json"
            r = session.post(serve.url + protocol.CHECK, data=body, headers=headers, timeout=30)
            online.append(time.perf_counter() - t)
            assert d.accepted and r.ok and r.json()["accepted"], (d, r.text)
        engine.db.close()
    finally:
        serve.stop()
    return sorted(offline)[n // 2], sorted(online)[n // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--terminals", type=int, default=50)
    ap.add_argument("--per-terminal", type=int, default=2_000)
    ap.add_argument("--skip-postgres", action="store_true")
    args = ap.parse_args()
    print(f"bench/sync.py: {machine()}")
    pg = not args.skip_postgres
    if True:
        rates: dict[str, float] = {}
        with scratch("sync-sqlite") as root:
            rates["sqlite"] = backlog_upload(root, None, args.entries)
        if pg:
            with scratch("sync-pg") as root, pg_database("benchbacklog") as db:
                rates["postgresql"] = backlog_upload(root, db, args.entries)
            with scratch("sync-pg50") as root, pg_database("benchingest") as db:
                ingest = concurrent_ingest(root, db, args.terminals, args.per_terminal)
        print(f"\n{'backlog upload (real sync client, one terminal)':<52} {'entries/s':>10}")
        for backend, rate in rates.items():
            print(f"  {args.entries:,} entries, central on {backend:<22} {rate:>10,.0f}")
        for backend, rate in rates.items():
            goal(f"backlog upload >= 5,000 entries/s ({backend})", rate >= 5000, f"{rate:,.0f}/s")
        with scratch("sync-check") as root:
            off, on = offline_vs_online(root, 500)
        print(
            f"\nthe same coupon checked 500 times: offline {off * 1000:.3f} ms, online over "
            f"loopback {on * 1000:.3f} ms (medians) = offline {on / off:.0f}x faster"
        )
        goal("offline check at least 10x faster than online", on / off >= 10, f"{on / off:.0f}x")
        if pg:
            total = args.terminals * args.per_terminal
            print(
                f"\ncentral ingest, {args.terminals} terminals at once x {args.per_terminal:,}"
                f" entries = {total:,} (PostgreSQL): {ingest:,.0f} entries/s"
            )
            goal(
                "central ingest with 50 concurrent terminals >= 10,000 entries/s",
                ingest >= 10000,
                f"{ingest:,.0f}/s",
            )


if __name__ == "__main__":
    main()
