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
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from bench._world import T0, goal, machine, scratch  # noqa: E402
from coupons import cose, journal, setup  # noqa: E402
from coupons.clock import SystemClock  # noqa: E402
from coupons.journal import GENESIS_HASH, HASHED_FIELDS, entry_hash  # noqa: E402
from sync import protocol  # noqa: E402
from sync.central import terminals  # noqa: E402
from sync.central.store import Central  # noqa: E402
from sync.client import run_once  # noqa: E402
from sync.enroll import enroll  # noqa: E402
from tests import master_key, postgres  # noqa: E402


class Serve:
    """`redeem-central serve` as its own process on 127.0.0.1."""

    def __init__(self, data: Path, database: str | None) -> None:
        self.port = postgres.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [
            sys.executable,
            "-m",
            "sync.central.cli",
            "serve",
            "--data",
            str(data),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if database:
            args += ["--database", database]
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**os.environ, **master_key.env(data.parent)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(self.url + "/healthz", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("redeem-central serve did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(15)


def chained_rows(n: int, terminal: str) -> list[dict[str, Any]]:
    """n redemption entries as a terminal would upload them, hash chain included."""
    prev = GENESIS_HASH
    rows = []
    for seq in range(1, n + 1):
        row: dict[str, Any] = {
            "seq": seq,
            "at_ms": int(T0 * 1000) + seq * 1000,
            "kind": "redeem",
            "op_id": None,
            "checkout_id": secrets.token_hex(8),
            "accepted": True,
            "reason": "ok",
            "campaign": "FIVE",
            "serial": f"{secrets.randbits(64):016x}",
            "customer": None,
            "discount_minor": 500,
            "currency": "CNY",
            "cashier": "C01",
            "source": "camera",
            "detail": json.dumps({"detail": "", "gift": None}),
            "prev_hash": prev,
        }
        row["hash"] = entry_hash({k: row[k] for k in HASHED_FIELDS})
        prev = row["hash"]
        rows.append(row)
    return rows


def new_central(root: Path, database: str | None) -> Central:
    central = Central.init(root / "central", database=database, master_key=master_key.KEY)
    central.add_campaign(
        {"id": "FIVE", "kind": "fixed", "currency": "CNY", "amount_minor": 500, "stacking": "any"}
    )
    central.publish()
    return central


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
        backlog = engine.journal.head_seq
        t = time.perf_counter()
        result = run_once(data, engine)
        took = time.perf_counter() - t
        acked = int(journal.get_meta("acked_seq") or 0)
        engine.db.close()
        assert result.ok and acked >= backlog, (result.error, acked, backlog)
        return backlog / took
    finally:
        serve.stop()


def concurrent_ingest(root: Path, database: str, terminals_n: int, per: int) -> float:
    central = new_central(root, database)
    devices = []
    for _ in range(terminals_n):
        key = cose.SigningKey.generate()
        code, _ = terminals.new_enroll_code(central, "S1")
        enrolled = terminals.enroll(central, code, key.public)
        devices.append((key, enrolled.terminal, chained_rows(per, enrolled.terminal)))
    central.close()
    serve = Serve(root / "central", database)
    errors: list[str] = []

    def upload(key: cose.SigningKey, terminal: str, rows: list[dict[str, Any]]) -> None:
        session = requests.Session()
        for start in range(0, len(rows), protocol.MAX_BATCH):
            body = json.dumps({"entries": rows[start : start + protocol.MAX_BATCH]}).encode()
            headers = protocol.sign_headers(
                key, terminal, "POST", protocol.JOURNAL, body, time.time()
            )
            headers["Content-Type"] = "application/json"
            r = session.post(serve.url + protocol.JOURNAL, data=body, headers=headers, timeout=120)
            if not r.ok:
                errors.append(f"{terminal}: {r.status_code} {r.text[:200]}")
                return

    try:
        threads = [threading.Thread(target=upload, args=d) for d in devices]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        took = time.perf_counter() - t
    finally:
        serve.stop()
    assert not errors, errors[:3]
    return terminals_n * per / took


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


@contextmanager
def pg_database(label: str) -> Iterator[str]:
    """A fresh database on the test cluster, dropped afterwards (a cluster kept running with
    `python -m tests.postgres start` would otherwise collect one per run)."""
    db = postgres.create_database(label)
    try:
        yield db
    finally:
        postgres.drop_database(db)


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
