"""The daemon's sync loop: one thread that runs a sync round every interval (backing off
with full jitter after failures), doing the network I/O itself and every engine and journal
access as jobs on the engine worker. Stopping never waits for a hanging central: the round
is abandoned and the thread, a daemon thread, is left to time out on its own."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from coupons import sync_state as status
from coupons.engine import Engine
from coupons.jsontypes import JSONObject
from sync.client import Backoff, RoundResult, SyncClient
from sync.device import DeviceKeyError, Settings, read_device_key
from sync.http import CentralLink, Link, SyncError, SyncErrorKind
from terminal.daemon.config import SyncSection
from terminal.daemon.worker import EngineWorker

log = logging.getLogger(__name__)
FIRST_ROUND_S = 1.0  # after start-up: the till is serving before the first round begins
MIN_DELAY_S = 0.5


Inputs = Callable[[], Mapping[str, str]]  # the inputs' health states, to report


class SyncLoop:
    def __init__(
        self, cfg: SyncSection, data: Path, worker: EngineWorker, inputs: Inputs | None = None
    ) -> None:
        self.cfg = cfg
        self.data = data
        self.worker = worker
        self.inputs = inputs
        self.backoff = Backoff(cfg.retry_base_s, cfg.max_backoff_s)
        self.last: RoundResult | None = None
        self.rounds = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._round = threading.Lock()  # one round at a time (the loop or `redeem sync --once`)
        self._next_at: float | None = None
        self._link: CentralLink | None = None
        self._thread = threading.Thread(target=self._run, name="sync", daemon=True)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Open the link (device key, URL, CA); raise SyncError or DeviceKeyError when the
        terminal cannot sync at all, so the daemon reports it and serves on without."""
        self._link = self._open_link()
        self._thread.start()
        log.info("sync with %s every %.0f s", self.cfg.central, self.cfg.interval_s)

    def _open_link(self) -> CentralLink:
        assert self.cfg.central is not None
        settings = Settings.load(self.data)
        ca = self.cfg.ca
        if ca is None and settings is not None and settings.central == self.cfg.central:
            ca = settings.ca_path(self.data)
        link = Link(
            self.cfg.central,
            ca,
            connect_timeout_s=self.cfg.connect_timeout_s,
            read_timeout_s=self.cfg.read_timeout_s,
        )
        key = read_device_key(self.data)
        engine = self.worker.engine
        return CentralLink(link, key, engine.terminal, engine.clock)

    def stop(self, timeout: float = 0.5) -> bool:
        """Abandon any round in flight; True when the thread ended within `timeout`."""
        self._stop.set()
        self._wake.set()
        if self._link is not None:
            self._link.close()
        if self._thread.is_alive():
            self._thread.join(timeout)
        alive = self._thread.is_alive()
        if alive:
            log.warning("sync round abandoned: the central has not answered yet")
        return not alive

    def wake(self) -> None:
        """Run the next round now (a new ledger is expected, the network came back)."""
        self._wake.set()

    # ------------------------------------------------------------------ rounds

    def _run(self) -> None:
        delay = FIRST_ROUND_S
        while not self._stop.is_set():
            self._next_at = time.monotonic() + delay
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.run_round()
            delay = max(MIN_DELAY_S, self.backoff.next_delay(self.cfg.interval_s))

    def run_round(self) -> RoundResult:
        """One round on the calling thread (the loop's, or the control socket's for
        `redeem sync --once` while the daemon runs)."""
        with self._round:
            link = self._link
            if link is None or self._stop.is_set():
                return RoundResult(error="sync is not running", error_kind=SyncErrorKind.STOPPED)
            client = SyncClient(self.data, link, self.worker, self._stop, self.inputs)
            try:
                result = client.run_round()
            except SyncError as exc:
                result = RoundResult(error=exc.message, error_kind=exc.kind)
            except Exception as exc:  # the worker stopping under us, or a bug: never fatal
                if not self._stop.is_set():
                    log.exception("sync round failed")
                result = RoundResult(
                    error=f"{type(exc).__name__}: {exc}", error_kind=SyncErrorKind.INTERNAL
                )
            self.rounds += 1
            self.last = result
            if self._stop.is_set():
                return result
            self.backoff.record(result.ok)
            try:
                self.worker.call(_record(result))
            except Exception as exc:
                log.warning("sync status not recorded: %s", exc)
            if result.ok:
                log.info(
                    "sync: backlog %s, ledger v%s, clock offset %s",
                    result.journal.get("backlog"),
                    result.ledger.get("to"),
                    None if result.clock is None else f"{result.clock['offset_s']:+.2f} s",
                )
            return result

    def status(self) -> JSONObject:
        snap = self.worker.call(status.snapshot)
        nxt = self._next_at
        snap.update(
            {
                "central": self.cfg.central,
                "running": self._thread.is_alive() and not self._stop.is_set(),
                "interval_s": self.cfg.interval_s,
                "rounds": self.rounds,
                "next_round_in_s": None if nxt is None else max(0.0, nxt - time.monotonic()),
                "backoff_ceiling_s": self.backoff.ceiling() if self.backoff.failures else None,
                "last_round": self.last.to_dict() if self.last else None,
            }
        )
        return snap


def _record(result: RoundResult) -> Callable[[Engine], None]:
    def job(engine: Engine) -> None:
        status.record_round(engine, result)

    return job


def create(
    cfg: SyncSection, data: Path, worker: EngineWorker, inputs: Inputs | None = None
) -> SyncLoop | None:
    """The loop when [sync] names a central and is enabled; None (logged) otherwise or when
    this terminal cannot sync (not enrolled: no device key)."""
    if not cfg.enabled or not cfg.central:
        log.info("sync off: no [sync] central configured (ledgers by USB stick only)")
        return None
    loop = SyncLoop(cfg, data, worker, inputs)
    try:
        loop.start()
    except (SyncError, DeviceKeyError) as exc:
        log.error("sync cannot start: %s", exc)
        return None
    return loop
