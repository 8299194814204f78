"""The issuance jobs' runner: a thread in every `redeem-central serve` instance, of which one
at a time runs jobs, the holder of the jobs lock (a PostgreSQL session advisory lock, or an
exclusive file lock beside a SQLite database: publisher.Leadership with a lock of its own,
so a long job never holds up the ledger). The holder runs queued jobs and the jobs left
"running" by an instance that died (the lock died with it), oldest first; run_job resumes
each from its committed done_count, so a restart neither duplicates nor skips a coupon."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from sync.central import issuing
from sync.central.models import IssueJob
from sync.central.publisher import Leadership
from sync.central.store import Central

log = logging.getLogger(__name__)

LOCK_JOBS = 0x45445249  # PostgreSQL advisory lock id of the jobs runner ("EDRI")
LOCK_FILE = "issuing.lock"
POLL_S = 1.0  # how often a runner looks for work (a job started here wakes it at once)
JOBS_DIR = "issuing"  # DATA/issuing/job-N: where the console's jobs write their files
# A job another process moved on under this runner (a CLI `issue-job resume`) is left to it
# this long before this runner tries it again (it would be left "running" if that died).
ELSEWHERE_BACKOFF_S = 60.0


class Stopping(Exception):
    """The instance is shutting down: the job stops after its current chunk."""


def job_dir(central: Central, job_id: int) -> Path:
    """Where a console job's files go: under the central's data directory, never a path a
    user typed."""
    return central.data / JOBS_DIR / f"job-{job_id}"


def next_job(skip: frozenset[int] = frozenset()) -> int | None:
    """The oldest job to run: queued, or left running by an instance that stopped."""
    query = IssueJob.select(IssueJob.id).where(
        IssueJob.state.in_((issuing.QUEUED, issuing.RUNNING))
    )
    if skip:
        query = query.where(IssueJob.id.not_in(list(skip)))
    row = query.order_by(IssueJob.id).first()
    return None if row is None else int(row.id)


class JobRunner:
    def __init__(self, central: Central, poll_s: float = POLL_S) -> None:
        self.central = central
        self.poll_s = poll_s
        self.leadership = Leadership(central, LOCK_JOBS, LOCK_FILE)
        self.stop_event = threading.Event()
        self.wake_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.elsewhere: dict[int, float] = {}  # job id -> when another process ran it

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="issuing", daemon=True)
        self.thread.start()

    def wake(self) -> None:
        """Look for work now (a job was just created)."""
        self.wake_event.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stop_event.set()
        self.wake_event.set()
        if self.thread is not None:
            self.thread.join(timeout_s)

    def run_pending(self) -> int:
        """Run every job waiting, if this instance holds the jobs lock; returns how many ran
        to an end (done or failed)."""
        if not self.leadership.acquire():
            return 0
        ran = 0
        now = time.monotonic()
        self.elsewhere = {
            j: at for j, at in self.elsewhere.items() if now - at < ELSEWHERE_BACKOFF_S
        }
        while not self.stop_event.is_set():
            job_id = next_job(frozenset(self.elsewhere))
            if job_id is None:
                break
            self._run_one(job_id)
            ran += 1
        return ran

    def _run_one(self, job_id: int) -> None:
        def progress(done: int, count: int) -> None:
            if self.stop_event.is_set():
                raise Stopping

        try:
            issuing.run_job(self.central, job_id, progress)
        except Stopping:
            # Not a fault: back in the queue, where the next runner resumes it.
            IssueJob.update(state=issuing.QUEUED, error=None).where(IssueJob.id == job_id).execute()
            log.info("issuance job %d stopped for shutdown; it resumes at the next start", job_id)
        except issuing.RunElsewhere:
            self.elsewhere[job_id] = time.monotonic()
            log.warning("issuance job %d is being run by another process; left to it", job_id)
        except Exception:  # run_job has marked it failed, with the reason
            log.exception("issuance job %d failed", job_id)

    def _run(self) -> None:
        db = self.central.db
        while not self.stop_event.is_set():
            try:
                db.connect(reuse_if_open=True)
                self.run_pending()
            except Exception:  # a database blip: the lock is given up, and taken again
                log.exception("issuance runner failed; retrying in %.1f s", self.poll_s)
                self._drop_connection()
            self.wake_event.wait(self.poll_s)
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
                db.manual_close()  # type: ignore[attr-defined]  # not back to the pool: the lock
            else:
                db.close()
        except Exception:  # already broken: nothing to give back
            log.debug("issuance runner connection was already gone")


__all__ = ["JOBS_DIR", "JobRunner", "job_dir", "next_job"]
