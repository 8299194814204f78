"""The one publisher (issue 13, item 2): requests never publish; one leader at a time; a
publisher that dies mid-publish leaves no half-written version, and another instance takes
over within one interval."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import requests

from coupons import cose, ledger
from coupons.clock import FixedClock, SystemClock
from coupons.ledger import LedgerState, read_file, store_scope
from sync.central import publisher as publisher_mod
from sync.central import scopes
from sync.central.delivery import Delivery
from sync.central.models import ScopeRow, ScopeVersion, SnapshotRow, VersionRow
from sync.central.publisher import Publisher, Tick
from sync.central.store import Central
from sync.central.terminals import new_enroll_code
from tests import postgres
from tests.central_server import BACKENDS, Running, database_for, running_central, serve_process
from tests.conftest import T0
from tests.master_key import KEY as MASTER_KEY


@pytest.fixture(params=BACKENDS)
def central(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Running]:
    with running_central(request.param, tmp_path, FixedClock(T0)) as c:
        c.central.add_campaign({"id": "P1", "kind": "fixed", "currency": "CNY", "amount_minor": 1})
        yield c


def _counts(c: Central) -> tuple[int, int]:
    with c.session():
        return VersionRow.select().count(), ScopeVersion.select().count()


def test_a_ledger_pull_and_an_upload_never_publish(central: Running) -> None:
    dev = central.device("S1")  # the store's first ledger comes from a tick
    before = _counts(central.central)
    central.central.mark([10**9], "revoked")  # a change waiting for the publisher
    assert dev.ledger(0).status_code == 200
    assert dev.push([])["acked_seq"] == 0
    assert _counts(central.central) == before  # nothing signed while the requests ran
    central.publish()
    after = _counts(central.central)
    assert after[0] == before[0] + 1 and after[1] == before[1] + 1


def _in_thread(publisher: Publisher) -> Tick:
    """A tick on a thread (and database session) of its own, as another instance's."""
    out: list[Tick] = []

    def run() -> None:
        with publisher.central.session():
            out.append(publisher.tick())

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(30)
    return out[0]


def test_one_leader_at_a_time_and_a_second_takes_over_when_it_goes(central: Running) -> None:
    c = central.central
    with c.session():
        new_enroll_code(c, "S1")
        first, second = Publisher(c), Publisher(c)
        assert first.tick().leader
        c.mark([10**9 + 1], "revoked")
        assert not _in_thread(second).leader  # the first holds the lock: nothing published
        assert scopes.behind(int(c.latest().version)) == [] and c.changed()
        first.leadership.release()  # the first instance dies (its lock goes with it)
        took = _in_thread(second)
        assert took.leader and took.chain_version is not None and took.scope_versions == 1
        assert not c.changed()


def test_a_publisher_dying_mid_publish_leaves_no_half_version(
    central: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stores are written a chunk at a time; dying between chunks leaves every store either
    at its new version (delta, snapshot and position together) or at its old one, and the
    next leader finishes the rest."""
    c = central.central
    with c.session():
        for store in ("S1", "S2", "S3"):
            new_enroll_code(c, store)
        earlier = Publisher(c)
        earlier.tick()
        earlier.leadership.release()  # that instance stopped; the next one leads
        c.mark([10**9 + 2], "revoked")
        monkeypatch.setattr(scopes, "STORES_PER_TRANSACTION", 1)
        signed = []
        real = scopes.ledger.signed_update

        def dies_at_the_second_store(
            key: cose.SigningKey, cert: bytes, body: Mapping[str, object]
        ) -> tuple[bytes, bytes]:
            if "scope" in body:  # a store's delta (the chain-wide one names none)
                if signed:
                    raise RuntimeError("power cut")
                signed.append(1)
            return real(key, cert, body)

        monkeypatch.setattr(scopes.ledger, "signed_update", dies_at_the_second_store)
        dying = Publisher(c)
        with pytest.raises(RuntimeError):
            dying.tick()
        monkeypatch.undo()
        versions = {r.scope: r.version for r in ScopeRow.select()}
        assert sorted(versions.values()) == [1, 1, 2]  # one store moved, two did not
        for scope, version in versions.items():  # and each is whole where it stands
            newest = ScopeVersion.select().where(ScopeVersion.scope == scope)
            assert max(v.version for v in newest) == version
        dying.leadership.release()
        Publisher(c).tick()
        assert sorted(r.version for r in ScopeRow.select()) == [2, 2, 2]
        for store in ("S1", "S2", "S3"):  # every store's chain verifies from nothing
            state = LedgerState()
            for raw in read_file(Delivery(c).answer(store_scope(store), 0, {}).body):
                state, _ = ledger.apply(c.anchor, state, raw, store)
            assert state.version == 2 and 10**9 + 2 in state.revoked


@pytest.mark.parametrize("backend", BACKENDS)
def test_killing_the_leading_instance_hands_publishing_to_another(
    backend: str, tmp_path: Path
) -> None:
    """Two `serve` processes on one database (0.2 s publish interval): SIGKILL the one that
    leads, and a change made afterwards is still published within a few intervals."""
    database = database_for(backend, "failover")
    clock = SystemClock()
    central = Central.init(tmp_path / "central", clock.now, database, master_key=MASTER_KEY)
    procs = [serve_process(tmp_path / "central", database)[0] for _ in range(2)]
    try:
        with central.session():
            new_enroll_code(central, "S1")
        leader = _wait_for_leader(central, procs)
        os.kill(leader.pid, signal.SIGKILL)
        leader.wait(10)
        with central.session():
            central.mark([10**9 + 3], "revoked")
            waited = _wait_published(central, timeout_s=10)
        # Within one interval of the survivor (0.2 s), plus a tick; generous for a busy CI.
        assert waited < 5.0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        central.close()
        if database:
            postgres.drop_database(database)


def _wait_for_leader(central: Central, procs: list[object]) -> object:
    """The serve process that publishes: the one holding the leader's lock (on SQLite the
    file lock, on PostgreSQL the advisory lock; found by which process's death frees it)."""
    with central.session():
        _wait_published(central, timeout_s=10)
    if central.postgres:
        with central.session():
            row = central.db.execute_sql(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = %s",
                (publisher_mod.LOCK_LEADER,),
            ).fetchone()
            backend_pid = row[0]
            client = central.db.execute_sql(
                "SELECT client_port FROM pg_stat_activity WHERE pid = %s", (backend_pid,)
            ).fetchone()[0]
        return _owner_of_tcp_port(procs, client)
    return _owner_of_lock_file(procs, central.data / "publisher.lock")


def _owner_of_lock_file(procs: list[object], path: Path) -> object:
    """/proc/locks: "1: FLOCK  ADVISORY  WRITE <pid> <major>:<minor>:<inode> 0 EOF"."""
    inode = path.stat().st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}"):
            for proc in procs:
                if proc.pid == int(fields[4]):  # type: ignore[attr-defined]
                    return proc
    raise AssertionError("no serve process holds the publisher's lock")


def _owner_of_tcp_port(procs: list[object], port: int) -> object:
    for proc in procs:
        pid = proc.pid  # type: ignore[attr-defined]
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            if local_port == port and fields[9] in inodes:
                return proc
    raise AssertionError("no serve process holds the leader's database session")


def _wait_published(central: Central, timeout_s: float) -> float:
    started = time.monotonic()
    while True:
        latest = central.latest()
        if latest is not None and not central.changed() and not scopes.behind(latest.version):
            return time.monotonic() - started
        assert time.monotonic() - started < timeout_s, "nothing published in time"
        time.sleep(0.05)


def test_the_admin_publish_endpoint_only_wakes_the_publisher(central: Running) -> None:
    central.device("S1")
    before = _counts(central.central)
    central.central.mark([10**9 + 4], "revoked")
    r = requests.post(
        central.url + "/admin/v1/publish",
        headers={"Authorization": f"Bearer {central.admin_token()}"},
        timeout=30,
    )
    assert r.status_code == 200
    # This app runs without its lifespan (tests/central_server.py): no publisher thread to
    # wake, and the request itself signed nothing.
    assert r.json()["woken"] is False
    assert _counts(central.central) == before


def test_old_chain_wide_deltas_are_compacted_behind_a_snapshot(
    central: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publisher_mod, "CHAIN_SNAPSHOT_EVERY", 8)
    monkeypatch.setattr(publisher_mod, "KEEP_AFTER_SNAPSHOT", 2)
    c = central.central
    with c.session():
        new_enroll_code(c, "S1")
        pub = Publisher(c)
        for n in range(20):
            c.mark([10**9 + 100 + n], "revoked")
            pub.tick()
        latest = c.latest()
        assert latest is not None and latest.version >= 16
        kept = [r.version for r in VersionRow.select().order_by(VersionRow.version)]
        snap = SnapshotRow.select(SnapshotRow.version).scalar()
        assert snap is not None and snap % 8 == 0
        assert kept[0] > snap - 8 and kept[-1] == latest.version  # the rest is gone
        # A new leader rebuilds the chain-wide state from the snapshot and the deltas kept,
        # and it is the state the old leader had.
        pub.leadership.release()
        successor = Publisher(c)
        c.mark([10**9 + 999], "revoked")
        assert successor.tick().leader
        assert successor.view is not None and pub.view is not None
        assert 10**9 + 100 in successor.view.state.revoked
        assert 10**9 + 999 in successor.view.state.revoked
