"""Shared by the central benchmarks (bench/sync.py, bench/fleet.py): `redeem-central serve`
as its own process, a throwaway PostgreSQL database, hash-chained journal rows as a till
uploads them, and the 50-tills-at-once ingest measurement.

Not a benchmark itself; the scripts next to it import it."""

from __future__ import annotations

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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from bench._world import T0  # noqa: E402
from coupons import cose  # noqa: E402
from coupons.journal import GENESIS_HASH, HASHED_FIELDS, entry_hash  # noqa: E402
from sync import protocol  # noqa: E402
from sync.central import terminals  # noqa: E402
from sync.central.models import CouponRow, db_serial  # noqa: E402
from sync.central.store import Central  # noqa: E402
from tests import master_key, postgres  # noqa: E402


class Serve:
    """`redeem-central serve` as its own process on 127.0.0.1 (its log in `log`, if given)."""

    def __init__(
        self,
        data: Path,
        database: str | None,
        *,
        publish_interval_s: float | None = None,
        instance_id: str | None = None,
        log: Path | None = None,
    ) -> None:
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
            "--log-format",
            "text",
        ]
        if database:
            args += ["--database", database]
        if publish_interval_s is not None:
            args += ["--publish-interval-s", str(publish_interval_s)]
        if instance_id:
            args += ["--instance-id", instance_id]
        out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                args,
                cwd=ROOT,
                env={
                    **os.environ,
                    **master_key.env(data.parent),
                    "REDEEM_CENTRAL_LOG_LEVEL": "warning",
                },
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        finally:
            if log is not None and not isinstance(out, int):
                out.close()  # the child holds its own descriptor
        self.pid = self.proc.pid
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(self.url + "/healthz", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("redeem-central serve did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@contextmanager
def pg_database(label: str) -> Iterator[str]:
    """A fresh database on the test cluster, dropped afterwards (a cluster kept running with
    `python -m tests.postgres start` would otherwise collect one per run)."""
    db = postgres.create_database(label)
    try:
        yield db
    finally:
        postgres.drop_database(db)


def chained_rows(n: int, terminal: str, serials: list[int] | None = None) -> list[dict[str, Any]]:
    """n redemption entries as a terminal would upload them, hash chain included: of the
    `serials` given (coupons the central issued), else of random serials (which the
    central flags as never issued, one fraud flag an entry: a heavier ingest)."""
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
            "serial": f"{serials[seq - 1] if serials else secrets.randbits(64):016x}",
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
    """A central with one fixed-amount campaign (FIVE) and its first version."""
    central = Central.init(root / "central", database=database, master_key=master_key.KEY)
    central.add_campaign(
        {"id": "FIVE", "kind": "fixed", "currency": "CNY", "amount_minor": 500, "stacking": "any"}
    )
    central.publish()
    return central


def concurrent_ingest(
    root: Path, database: str, terminals_n: int, per: int, instances: int = 1
) -> float:
    """Entries/s stored by `instances` serve processes on one PostgreSQL database while
    `terminals_n` terminals upload `per` entries each at once (signed batches of MAX_BATCH,
    each terminal talking to one instance, assigned round-robin)."""
    central = new_central(root, database)
    # Coupons the central issued (numbered serials, rows written at once): each upload is
    # an honest redemption the central counts, as a till's is.
    serials = central.allocate_serials("FIVE", terminals_n * per)
    with central.db.atomic():
        for i in range(0, len(serials), 10_000):
            CouponRow.insert_many(
                [
                    {"serial": db_serial(s), "campaign": "FIVE", "issued_at": int(T0)}
                    for s in serials[i : i + 10_000]
                ]
            ).execute()
    devices = []
    for n in range(terminals_n):
        key = cose.SigningKey.generate()
        code, _ = terminals.new_enroll_code(central, "S1")
        enrolled = terminals.enroll(central, code, key.public)
        own = serials[n * per : (n + 1) * per]
        devices.append((key, enrolled.terminal, chained_rows(per, enrolled.terminal, own)))
    central.close()
    serves = [
        Serve(root / "central", database, instance_id=f"ingest-{i}") for i in range(instances)
    ]
    errors: list[str] = []

    def upload(url: str, key: cose.SigningKey, terminal: str, rows: list[dict[str, Any]]) -> None:
        session = requests.Session()
        for start in range(0, len(rows), protocol.MAX_BATCH):
            body = json.dumps({"entries": rows[start : start + protocol.MAX_BATCH]}).encode()
            headers = protocol.sign_headers(
                key, terminal, "POST", protocol.JOURNAL, body, time.time()
            )
            headers["Content-Type"] = "application/json"
            r = session.post(url + protocol.JOURNAL, data=body, headers=headers, timeout=120)
            if not r.ok:
                errors.append(f"{terminal}: {r.status_code} {r.text[:200]}")
                return

    try:
        threads = [
            threading.Thread(target=upload, args=(serves[i % instances].url, *d))
            for i, d in enumerate(devices)
        ]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        took = time.perf_counter() - t
    finally:
        for serve in serves:
            serve.stop()
    assert not errors, errors[:3]
    return terminals_n * per / took
