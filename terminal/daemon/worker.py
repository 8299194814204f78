"""The engine worker: the one thread that calls the engine (the journal's one writer).
Inputs, the kiosk and the POS API hand it work through a queue and wait on a future."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from coupons.engine import Engine
from coupons.journal import Entry, get_meta

log = logging.getLogger(__name__)
_HEAD_SQL = f'SELECT max(seq) FROM "{Entry._meta.table_name}"'  # noqa: S608 (a constant)
T = TypeVar("T")
_STOP = object()


class WorkerStopped(RuntimeError):
    pass


class EngineWorker:
    def __init__(self, engine: Engine, stall_s: float = 30.0) -> None:
        self.engine = engine
        self.stall_s = stall_s  # one job running longer than this: not healthy
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="engine-worker", daemon=True)
        self._accepting = False
        self._job_started: float | None = None  # monotonic start of the job running now
        self.jobs_done = 0

    def start(self) -> None:
        self._accepting = True
        self._thread.start()

    def submit(self, job: Callable[[Engine], T]) -> Future[T]:
        """Queue a job; the future resolves with its result or its exception."""
        fut: Future[T] = Future()
        if not self._accepting:
            fut.set_exception(WorkerStopped("the terminal is shutting down"))
            return fut
        self._queue.put((job, fut))
        return fut

    def call(self, job: Callable[[Engine], T], timeout: float = 10.0) -> T:
        return self.submit(job).result(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            job, fut = item
            if not fut.set_running_or_notify_cancel():
                continue
            # Timed through the future's callbacks too (publishing to the outputs runs on
            # this thread): a display write that hangs stops the scans just the same.
            self._job_started = time.monotonic()
            try:
                self._catch_up()
                fut.set_result(job(self.engine))
            except BaseException as exc:  # handed to the caller, who decides
                fut.set_exception(exc)
            finally:
                self._job_started = None
            self.jobs_done += 1

    def _catch_up(self) -> None:
        """A `redeem` command run beside the daemon (a manager's `redeem clock reset`, a
        USB `redeem ledger import`) wrote to the journal: the engine's head, trusted time,
        usage counters and ledger are stale. Reload them from disk before deciding, rather
        than fail every later write on the taken sequence number until a restart. (A write
        racing this check still fails closed: its sequence number is taken.)"""
        engine = self.engine
        # On the raw connection: ~3 us a job, where the same query through peewee costs ~57.
        stored = engine.db.connection().execute(_HEAD_SQL).fetchone()[0]
        if stored is None:  # every entry pruned: the head is the pruned mark
            stored = int(get_meta("pruned_seq", "0") or 0)
        if stored == engine.journal.head_seq:
            return
        log.warning(
            "journal written by another process (entry %d, ours %d): reloading the engine",
            stored,
            engine.journal.head_seq,
        )
        engine.reload()

    def pending(self) -> int:
        """Jobs queued and not yet started (approximate, for the log)."""
        return self._queue.qsize()

    def busy_s(self) -> float | None:
        """How long the job running now has run; None when idle."""
        started = self._job_started
        return None if started is None else time.monotonic() - started

    def healthy(self, within_s: float | None = None) -> bool:
        """Alive, and not stuck in one job (a stalled SD-card write, a lock never released)
        for longer than `within_s` (default: `stall_s`). A long queue behind a job that
        keeps finishing is progress, not a hang."""
        if not self._thread.is_alive():
            return False
        busy = self.busy_s()
        limit = self.stall_s if within_s is None else within_s
        return busy is None or busy < limit

    def stop(self, timeout: float = 5.0) -> bool:
        """Finish everything already queued (no scan in flight is lost), then stop."""
        self._accepting = False
        self._queue.put(_STOP)
        self._thread.join(timeout)
        return not self._thread.is_alive()
