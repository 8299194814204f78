"""Exactly-once journal upload under the faults a store's network and power produce: a
fault-injecting proxy while thousands of entries go up, the central killed and restarted in
the middle of a batch, the terminal killed in the middle of a batch; on SQLite and on
PostgreSQL. Afterwards the central holds exactly the terminal's journal: no entry lost,
none twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coupons import journal, setup
from coupons.clock import SystemClock
from coupons.engine import Engine
from sync import protocol
from sync.central import terminals
from sync.central.models import JournalRow
from sync.central.store import Central
from sync.client import open_link, run_once
from sync.enroll import enroll
from tests import postgres
from tests.central_server import BACKENDS, ROOT, database_for, serve_process
from tests.conftest import basket
from tests.faultproxy import FaultProxy
from tests.master_key import KEY as MASTER_KEY


@dataclass
class Site:
    central_dir: Path
    url: str
    proc: subprocess.Popen[str]
    data: Path
    clock: SystemClock
    database: str | None  # None: SQLite in central_dir

    def restart_central(self) -> None:
        self.proc.wait(10)
        self.proc, self.url = serve_process(self.central_dir, self.database)

    def central_hashes(self, terminal: str) -> list[str]:
        central = Central(self.central_dir, database=self.database, master_key=MASTER_KEY)
        try:
            with central.session():
                return [
                    r.hash
                    for r in JournalRow.select()
                    .where(JournalRow.terminal == terminal)
                    .order_by(JournalRow.seq)
                ]
        finally:
            central.close()


@pytest.fixture(params=BACKENDS)
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    clock = SystemClock()  # the central runs as its own process on the real clock too
    database = database_for(request.param, tmp_path.name)
    try:
        central = Central.init(tmp_path / "central", database=database, master_key=MASTER_KEY)
        central.add_campaign({"id": "C1", "kind": "fixed", "currency": "CNY", "amount_minor": 500})
        central.publish()
        code, _ = terminals.new_enroll_code(central, "S1")
        fingerprint = central.anchor.fingerprint
        central.close()
        proc, url = serve_process(tmp_path / "central", database)
        data = tmp_path / "till"
        site = Site(tmp_path / "central", url, proc, data, clock, database)
        try:
            enroll(data, url, code, clock, fingerprint=fingerprint)
            yield site
        finally:
            site.proc.kill()
            site.proc.wait(10)
    finally:
        if database:
            postgres.drop_database(database)


def fill(engine: Engine, n: int) -> None:
    """n journaled attempts (typed codes that do not exist: refused, each its own commit)."""
    for i in range(n):
        engine.redeem(f"NOSUCH{i:06d}", basket(5000))


def local_hashes() -> list[str]:
    return [r["hash"] for r in journal.rows()]


def test_thousands_of_entries_through_random_faults_arrive_exactly_once(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(protocol, "MAX_BATCH", 150)  # many requests, so faults hit mid-way
    engine = setup.open_engine(site.data, site.clock)
    fill(engine, 2500)
    host, port = site.url.removeprefix("http://").split(":")
    proxy = FaultProxy((host, int(port)), seed=11).start()
    # Every kind of fault at least once, mid-batch cuts among them, then at random.
    proxy.script = ["cut", "http500", "truncate", "cut", "reset", "drop", "hang", "cut", "delay"]
    proxy.mode, proxy.fault_rate, proxy.delay_s = "random", 0.5, 0.1
    failed = 0
    try:
        for _ in range(120):
            link = open_link(site.data, engine, central=proxy.url, read_timeout_s=0.5)
            result = run_once(site.data, engine, link)
            failed += not result.ok
            if result.ok and int(journal.get_meta("acked_seq") or 0) >= engine.journal.head_seq:
                break
        proxy.mode = "pass"
        assert run_once(site.data, engine, open_link(site.data, engine, central=proxy.url)).ok
    finally:
        proxy.stop()
    # Retries inside a round absorb some faults, failed rounds the rest; either way the
    # faults must really have hit the upload.
    assert sum(n for f, n in proxy.counts.items() if f != "pass") >= 9, (failed, proxy.counts)
    terminal, mine = engine.terminal, local_hashes()
    engine.db.close()
    assert len(mine) > 2500
    assert site.central_hashes(terminal) == mine


def test_the_central_killed_mid_batch_loses_and_duplicates_nothing(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(protocol, "MAX_BATCH", 100)
    engine = setup.open_engine(site.data, site.clock)
    fill(engine, 1500)
    host, port = site.url.removeprefix("http://").split(":")
    proxy = FaultProxy((host, int(port))).start()
    proxy.mode, proxy.delay_s = "slow", 0.05  # slow enough to kill it in the middle
    outcome: list[bool] = []
    link = open_link(site.data, engine, central=proxy.url, read_timeout_s=2.0)
    worker = threading.Thread(target=lambda: outcome.append(run_once(site.data, engine, link).ok))
    worker.start()
    deadline = time.monotonic() + 30  # the first batches are through: the upload is under way
    while int(journal.get_meta("acked_seq") or 0) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    site.proc.send_signal(signal.SIGKILL)  # power cut at head office, mid-batch
    worker.join(30)
    proxy.stop()
    assert outcome == [False]
    acked = int(journal.get_meta("acked_seq") or 0)
    assert 0 < acked < engine.journal.head_seq  # part of the backlog made it, not all
    site.restart_central()
    assert run_once(site.data, engine, open_link(site.data, engine, central=site.url)).ok
    terminal, mine = engine.terminal, local_hashes()
    engine.db.close()
    assert site.central_hashes(terminal) == mine


def test_the_terminal_killed_mid_batch_resumes_exactly_once(site: Site) -> None:
    engine = setup.open_engine(site.data, site.clock)
    fill(engine, 1500)
    terminal = engine.terminal
    engine.db.close()
    host, port = site.url.removeprefix("http://").split(":")
    proxy = FaultProxy((host, int(port))).start()
    proxy.mode, proxy.delay_s = "slow", 0.2
    cmd = [sys.executable, "-m", "terminal.cli", "sync", "--once", "--data", str(site.data)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDEEM_")}
    proc = subprocess.Popen(
        [*cmd, "--central", proxy.url],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(1.0)  # the batch is on its way through the slow link
    proc.send_signal(signal.SIGKILL)  # the cleaner pulls the plug
    proc.wait(10)
    proxy.stop()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    engine = setup.open_engine(site.data, site.clock)
    mine = local_hashes()
    assert journal.get_meta("acked_seq") == str(engine.journal.head_seq)
    engine.db.close()
    assert site.central_hashes(terminal) == mine
