"""The one publisher: a thread in every `redeem-central serve` instance, of which one at a
time is the leader (a PostgreSQL session advisory lock, or an exclusive file lock beside a
SQLite database). Every `interval_s` the leader turns what changed (campaigns, keys,
revocations, redemptions from uploads, reconciliation, flag decisions, deny lists) into at
most one chain-wide version and at most one version per store scope. Requests never
publish; they only write rows and read signed bytes (docs/central-scale.md)."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import peewee as pw

from coupons import cose, ledger
from coupons.keys import PURPOSE_LEDGER
from sync.central import scopes
from sync.central.models import ScopeRow, SnapshotRow, VersionRow
from sync.central.store import Central

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 5.0
LOCK_LEADER = 0x45445250  # PostgreSQL advisory lock id of the publisher ("EDRP")
KEEP_AFTER_SNAPSHOT = 32  # deltas kept before a (scope's or the chain's) newest snapshot
CHAIN_SNAPSHOT_EVERY = 256  # the chain-wide ledger gets a snapshot every this many versions


@dataclass
class Tick:
    leader: bool
    chain_version: int | None = None  # a new chain-wide version, if one was made
    scope_versions: int = 0
    snapshots: int = 0
    seconds: float = 0.0
    # The longest a change carried by this tick can have waited: from the start of the tick
    # before it (a change made just after that tick began missed it) to the end of this one.
    lag_bound_s: float = 0.0


class Leadership:
    """Whether this instance is the one that publishes, decided by a lock that the database
    (or the kernel) frees when the holder dies, so another takes over at its next tick."""

    def __init__(
        self, central: Central, lock_id: int = LOCK_LEADER, lock_file: str = "publisher.lock"
    ) -> None:
        self.central = central
        self.lock_id = lock_id  # another background duty (issuance jobs) has its own lock
        self.lock_file = lock_file
        self.fd: int | None = None
        self.held = False

    def acquire(self) -> bool:
        if self.held:
            return True
        if self.central.postgres:
            # Session-level: held as long as this thread's connection lives.
            self.central.db.connect(reuse_if_open=True)
            cur = self.central.db.execute_sql("SELECT pg_try_advisory_lock(%s)", (self.lock_id,))
            self.held = bool(cur.fetchone()[0])
        else:
            path = self.central.data / self.lock_file
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            self.fd, self.held = fd, True
        return self.held

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        elif not self.central.db.is_closed():
            self.central.db.execute_sql("SELECT pg_advisory_unlock(%s)", (self.lock_id,))


class Publisher:
    def __init__(
        self,
        central: Central,
        interval_s: float = DEFAULT_INTERVAL_S,
        on_tick: Callable[[Tick], None] | None = None,
    ) -> None:
        self.central = central
        self.interval_s = interval_s
        self.on_tick = on_tick
        self.leadership = Leadership(central)
        self.view: scopes.ChainView | None = None
        self.stop_event = threading.Event()
        self.wake_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()  # the thread's tick and an admin's "publish now"
        self.last_started: float | None = None  # monotonic start of the previous tick

    # ------------------------------------------------------------ one round

    def tick(self) -> Tick:
        """Publish what changed, if this instance leads; callable directly (CLI, tests)."""
        with self.lock:
            return self._tick()

    def _tick(self) -> Tick:
        started = time.monotonic()
        previous, self.last_started = self.last_started, started
        if not self.leadership.acquire():
            return Tick(leader=False)
        central = self.central
        now = int(central.now())
        # The chain-wide version in a short transaction of its own: uploads update the same
        # usage rows, and must not wait for thousands of stores to be signed.
        with central.exclusive():
            version = central.publish_if_changed()
            latest = central.latest()
        assert latest is not None  # publish_if_changed makes version 1 on a fresh central
        view = self._view(int(latest.version))
        key, cert = central.active_key(PURPOSE_LEDGER)
        done = scopes.publish_scopes(
            view, int(latest.version), now, key, cert, transaction=central.exclusive
        )
        with central.exclusive():
            scopes.compact(KEEP_AFTER_SNAPSHOT)
            if version is not None and version % CHAIN_SNAPSHOT_EVERY == 0:
                self._compact_chain(view, key, cert)
        ended = time.monotonic()
        tick = Tick(
            True,
            version,
            done.published,
            done.snapshots,
            ended - started,
            ended - (previous if previous is not None else started),
        )
        if self.on_tick is not None:
            self.on_tick(tick)
        return tick

    def _compact_chain(self, view: scopes.ChainView, key: cose.SigningKey, cert: bytes) -> None:
        """A snapshot of the chain-wide ledger (signed from the state in memory), and its
        deltas dropped up to KEEP_AFTER_SNAPSHOT before it and before every store scope's
        base: a new leader then replays a few hundred deltas, not the chain's history."""
        state = view.state
        body = ledger.snapshot_body(state)
        body["signed_at"] = int(self.central.now())
        raw = ledger.sign_update(key, cert, body)
        SnapshotRow.insert(version=state.version, signed=raw).on_conflict_ignore().execute()
        SnapshotRow.delete().where(SnapshotRow.version < state.version).execute()
        lowest_base = ScopeRow.select(pw.fn.MIN(ScopeRow.base)).scalar()
        cut = min(state.version, lowest_base or state.version) - KEEP_AFTER_SNAPSHOT
        VersionRow.delete().where(VersionRow.version <= cut).execute()

    def _view(self, version: int) -> scopes.ChainView:
        """The chain-wide state at `version`, advanced from the last one this leader held
        (a new leader replays it once, verifying each update as a till would)."""
        view = self.view
        if view is None or view.state.version > version:
            view = scopes.ChainView(self.central.state_at(version))
        elif view.state.version < version:
            anchor = self.central.anchor
            state = view.state
            for raw in self.central.deltas(state.version, version):
                state, _ = ledger.apply(anchor, state, raw)
            view.state = state
        self.view = view
        return view

    # ------------------------------------------------------------ the thread

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self.thread.start()

    def wake(self) -> None:
        """Publish at the next chance instead of waiting out the interval (an admin asked)."""
        self.wake_event.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stop_event.set()
        self.wake_event.set()
        if self.thread is not None:
            self.thread.join(timeout_s)

    def _run(self) -> None:
        # The thread keeps its own connection: on PostgreSQL the leader's lock lives as long
        # as that session, and is freed by the server if this process dies.
        db = self.central.db
        while not self.stop_event.is_set():
            try:
                db.connect(reuse_if_open=True)
                self.tick()
            except Exception:  # a database blip: start over at the next tick
                log.exception("publisher tick failed; retrying in %.1f s", self.interval_s)
                self.view = None
                self._drop_connection()
            self.wake_event.wait(self.interval_s)
            self.wake_event.clear()
        try:
            self.leadership.release()
        finally:
            self._drop_connection()

    def _drop_connection(self) -> None:
        self.leadership.held = False
        if self.leadership.fd is not None:
            os.close(self.leadership.fd)
            self.leadership.fd = None
        db = self.central.db
        try:
            if db.is_closed():
                return
            if self.central.postgres:
                # Really closed, not returned to the pool: a pooled session would keep the
                # leader's lock while another thread used it.
                db.manual_close()  # type: ignore[attr-defined]
            else:
                db.close()
        except Exception:  # already broken: nothing to give back
            log.debug("publisher connection was already gone")
