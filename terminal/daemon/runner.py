"""`redeem run`: the daemon. Starts in order (engine, worker, outputs, inputs), feeds every
scan to the one engine worker, publishes each decision to the outputs and listeners,
restarts stalled inputs within a budget, pings systemd's watchdog only while healthy,
reloads on SIGHUP and stops in reverse order on SIGTERM within one deadline."""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coupons import setup, tokens
from coupons import sync_state as sync_status
from coupons.clock import Clock
from coupons.decision import Context, Decision
from coupons.engine import Engine
from coupons.jsontypes import JSONObject
from coupons.reasons import Reason
from coupons.rules import Basket
from drivers import registry
from drivers.scan import DOWN, Driver, Scan
from sync.peers.service import PeerService
from terminal.daemon import config as config_mod
from terminal.daemon import control as control_mod
from terminal.daemon import feedback, logs, sync_loop
from terminal.daemon.control import Control
from terminal.daemon.decisions import DecisionChannel, Published
from terminal.daemon.notify import Notifier
from terminal.daemon.peers import PeersPart
from terminal.daemon.worker import EngineWorker

if TYPE_CHECKING:  # the kiosk (and FastAPI) load only when it is enabled
    from kiosk_ui.daemon_port import Status

log = logging.getLogger(__name__)
SHUTDOWN_S = 4.5  # SIGTERM to exit, inside systemd's and the 5 s
DRAIN_RESERVE_S = 1.5  # of SHUTDOWN_S, kept for the worker's drain whatever inputs take
OUTPUT_RESERVE_S = 0.25  # of what is left after the drain, kept for the displays
RELOAD_INPUTS_S = 1.0  # inputs restarted by SIGHUP stop within this, all at once


@dataclass
class Till:
    """The standalone sale the cashier is ringing up: its basket (the total they keyed in)
    and the coupons scanned before the total was known."""

    basket: Basket | None = None
    checkout_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    pending: list[Scan] = field(default_factory=list)


class Daemon(DecisionChannel, PeersPart):
    def __init__(
        self, cfg: config_mod.Config, clock: Clock, notifier: Notifier | None = None
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.notifier = notifier or Notifier()
        self.engine: Engine | None = None
        self.worker: EngineWorker | None = None
        self.inputs: list[Driver] = []
        self.outputs: list[feedback.Output] = []
        self.till = Till()
        self.recent: deque[Published] = deque(maxlen=500)
        self.published_count = 0
        self.control: Control | None = None
        self.kiosk: Any = None
        self.sync: sync_loop.SyncLoop | None = None
        self.peers: PeerService | None = None  # terminal/daemon/peers.py
        self.listeners: list[Callable[[Published], None]] = []
        self.ignored = 0
        self._stop = threading.Event()
        self._publish_lock = threading.Lock()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self._restarts: dict[str, deque[float]] = {}
        self._worker_stuck = False
        self.exit_code = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        data = Path(self.cfg.terminal.data)
        self.engine = setup.open_engine(data, self.clock)
        self.worker = EngineWorker(self.engine, self.cfg.watchdog.engine_stall_s)
        self.worker.start()
        self.outputs = [
            feedback.create(o, self.cfg.terminal.lang) for o in self.cfg.outputs if o.enabled
        ]
        for out in self.outputs:
            out.start()
        self._start_peers()  # before the inputs: the first scan can already claim
        self._start_inputs()
        self.control = Control(self, control_mod.socket_path(data))
        self.control.start()
        self._start_kiosk()
        self.sync = sync_loop.create(self.cfg.sync, data, self.worker, self.input_states)
        log.info(
            "terminal %s of store %s running: ledger v%s, %d input(s), %d output(s)",
            self.engine.terminal,
            self.engine.store,
            self.engine.ledger.version,
            len(self.inputs),
            len(self.outputs),
        )
        self.notifier.ready(f"ledger v{self.engine.ledger.version}")

    def _start_kiosk(self) -> None:
        """The cashier screen, manager dashboard and POS API. Enabled but not serving (a
        port in use, an address this machine lacks) stops the daemon with the reason: a
        till running without its screen and POS API looks up but is not (docs/daemon.md)."""
        if not self.cfg.kiosk.enabled:
            return
        try:
            from kiosk_ui.app import KioskServer

            self.kiosk = KioskServer(self, self.cfg.kiosk.host, self.cfg.kiosk.port)
            self.kiosk.start()
        except Exception as exc:
            self.kiosk = None
            self.stop()
            raise config_mod.ConfigError(
                self.cfg.path,
                None,
                "kiosk",
                f"the kiosk cannot serve on {self.cfg.kiosk.host}:{self.cfg.kiosk.port} ({exc});"
                " free the port or change [kiosk] host/port, or set enabled = false",
            ) from None

    def _start_inputs(self) -> None:
        for spec in self.cfg.inputs:
            if not spec.enabled:
                continue
            driver = registry.create(spec.name, spec.kind, spec.options, self.clock.now)
            driver.start(self.on_scan)
            self.inputs.append(driver)

    def _input_steps(self, until: float) -> list[tuple[str, Callable[[], object]]]:
        def step(driver: Driver) -> Callable[[], object]:
            return lambda: driver.stop(max(0.0, until - time.monotonic()))

        return [(f"input {d.name}", step(d)) for d in self.inputs]

    def _stop_inputs(self) -> None:
        """All inputs at once (a reload): each is told to stop, then all are awaited."""
        until = time.monotonic() + RELOAD_INPUTS_S
        late = _in_parallel(self._input_steps(until), until)
        if late:
            log.warning("%s still stopping after %.1f s", ", ".join(late), RELOAD_INPUTS_S)
        self.inputs = []

    def stop(self) -> None:
        """Reverse order within one deadline (SHUTDOWN_S), each step getting the time left:
        no new work (inputs, kiosk, control socket, all at once), the worker finishes
        every scan already queued, then outputs, then the journal closes."""
        started = time.monotonic()
        deadline = started + SHUTDOWN_S

        def left(reserve: float = 0.0) -> float:
            return max(0.0, deadline - reserve - time.monotonic())

        self.notifier.stopping()
        if self.sync is not None:  # first: a round in flight is abandoned, never awaited
            self.sync.stop(min(0.5, left(DRAIN_RESERVE_S)))
        # Everything that submits work stops together; the worker keeps deciding meanwhile.
        until = time.monotonic() + left(DRAIN_RESERVE_S)
        producers = self._input_steps(until)
        if self.kiosk is not None:
            producers.append(("kiosk", self.kiosk.stop))
        if self.control is not None:
            producers.append(("control socket", self.control.stop))
        if self.peers is not None:  # claim() answers NO_PEERS at once from here on
            producers.append(("peers", self._stop_peers))
        late = _in_parallel(producers, until)
        self.inputs = []
        drained = True
        if self.worker is not None and not self.worker.stop(left(OUTPUT_RESERVE_S)):
            drained = False
            late.append("engine worker")
            log.error(
                "engine worker did not finish in time: %d job(s) still queued",
                self.worker.pending(),
            )
        late += _in_parallel(
            [(f"output {o.name}", o.stop) for o in reversed(self.outputs)],
            time.monotonic() + left(),
        )
        if self.engine is not None and drained:  # never under a write still running
            self.engine.db.close()
        took = time.monotonic() - started
        if late:
            log.warning("stopped in %.2f s; still running: %s", took, ", ".join(late))
        else:
            log.info("stopped in %.2f s (limit %.1f s)", took, SHUTDOWN_S)

    def reload(self) -> None:
        """SIGHUP: read the config again; inputs and outputs restart with it. The engine,
        the journal and the till's sale are kept."""
        self.notifier.reloading()
        try:
            cfg = config_mod.load(self.cfg.path)
        except config_mod.ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            self.notifier.ready()
            return
        cfg = self._keep_bound_at_start(cfg)
        if cfg.log != self.cfg.log:  # first, so what follows is logged the new way
            log.info(
                "reload: log format %s, level %s, device traffic %s",
                cfg.log.format,
                cfg.log.level,
                "on" if cfg.log.device_traffic else "off",
            )
            logs.setup(cfg.log.format, cfg.log.level, cfg.log.device_traffic)
        self._stop_inputs()
        for out in reversed(self.outputs):
            out.stop()
        old_sync, old_peers, self.cfg = self.cfg.sync, self.cfg.peers, cfg
        assert self.worker is not None
        self.worker.stall_s = cfg.watchdog.engine_stall_s
        self.outputs = [feedback.create(o, cfg.terminal.lang) for o in cfg.outputs if o.enabled]
        for out in self.outputs:
            out.start()
        self._start_inputs()
        if cfg.peers != old_peers:
            self._stop_peers()
            self._start_peers()
        if cfg.sync != old_sync:
            if self.sync is not None:
                self.sync.stop()
            self.sync = sync_loop.create(
                cfg.sync, Path(cfg.terminal.data), self.worker, self.input_states
            )
        log.info("config reloaded: %d input(s)", len(self.inputs))
        self.notifier.ready()

    def _keep_bound_at_start(self, cfg: config_mod.Config) -> config_mod.Config:
        """[kiosk] (a listening socket the cashier screen is connected to) and [terminal]
        data (the open journal) are bound at start: a change is warned about and waits for
        a restart; the daemon keeps running on the old values."""
        old = self.cfg
        if cfg.kiosk != old.kiosk:
            log.warning(
                "reload: [kiosk] changed (%s:%s%s -> %s:%s%s); it takes effect at the next"
                " restart, the kiosk keeps its current address",
                old.kiosk.host,
                old.kiosk.port,
                "" if old.kiosk.enabled else " disabled",
                cfg.kiosk.host,
                cfg.kiosk.port,
                "" if cfg.kiosk.enabled else " disabled",
            )
            cfg = dataclasses.replace(cfg, kiosk=old.kiosk)
        if cfg.terminal.data != old.terminal.data:
            log.warning(
                "reload: [terminal] data changed (%s -> %s); it takes effect at the next"
                " restart, the journal stays in %s",
                old.terminal.data,
                cfg.terminal.data,
                old.terminal.data,
            )
            terminal = dataclasses.replace(cfg.terminal, data=old.terminal.data)
            cfg = dataclasses.replace(cfg, terminal=terminal)
        return cfg

    # ------------------------------------------------------------------ scans

    def on_scan(self, scan: Scan) -> None:
        """Called on a driver's thread: hand the scan to the engine worker and return."""
        ready = scan.meta.get("frame_ready")
        arrived = ready if isinstance(ready, float) else time.monotonic()
        assert self.worker is not None
        fut = self.worker.submit(lambda engine: self._decide(engine, scan))
        fut.add_done_callback(lambda f: self._published(scan, f, arrived))

    def _decide(
        self, engine: Engine, scan: Scan, manager_override: str | None = None
    ) -> Decision | None:
        code = tokens.extract(scan.text())
        if code is None:
            return None
        tag = scan.meta.get("tag_uid")
        ctx = Context(
            source=scan.kind,
            cashier=self.cfg.terminal.cashier,
            tag_uid=bytes.fromhex(tag) if isinstance(tag, str) else None,
            manager_override=manager_override,
        )
        till = self.till
        if till.basket is None:
            # Scanned before the total was keyed in: a good coupon waits for the total; a
            # bad one is refused (and journaled) now.
            zero = Basket(self.cfg.terminal.currency, ())
            preview = engine.check(code, zero, ctx)
            if preview.reason in (Reason.NO_ELIGIBLE_ITEMS, Reason.BELOW_MINIMUM):
                till.pending.append(scan)
                preview.reason, preview.accepted = Reason.NEEDS_TOTAL, False
                return preview
            return engine.redeem(code, zero, ctx)
        return engine.redeem(code, till.basket, ctx, checkout_id=till.checkout_id)

    def _published(self, scan: Scan, fut: Future[Decision | None], arrived: float) -> None:
        try:
            decision = fut.result()
        except Exception:
            log.exception("scan from %s could not be decided", scan.source)
            decision = Decision(False, Reason.INTERNAL_ERROR)
        self._publish_scan(scan, decision, arrived)

    # ------------------------------------------------------------------ the till

    def start_sale(self, basket: Basket | None) -> Future[list[Decision]]:
        """The cashier keyed in a total (or cleared it: None): a new sale starts, and coupons
        scanned before the total are decided against it. Queued behind scans already in
        flight; the future resolves with those coupons' decisions."""
        assert self.worker is not None
        arrived = time.monotonic()

        def job(engine: Engine) -> list[Decision]:
            pending = self.till.pending
            self.till = Till(basket)
            decided = []
            for scan in pending:
                decision = self._decide(engine, scan)
                self._publish_scan(scan, decision, arrived)
                if decision is not None:
                    decided.append(decision)
            return decided

        return self.worker.submit(job)

    def void_last(self) -> Decision:
        """The cashier screen's void: take back the open sale's last coupon where the rules
        allow (Engine.void); published like a scan's decision."""
        assert self.worker is not None
        arrived = time.monotonic()
        ctx = Context(source="kiosk", cashier=self.cfg.terminal.cashier)
        window = self.cfg.terminal.void_window_s
        decision = self.worker.call(
            lambda engine: engine.void(self.till.checkout_id, window, ctx=ctx)
        )
        self.publish(decision, "kiosk", "void", arrived)
        return decision

    def override(self, number: int, manager: str) -> Decision | None:
        """A manager approves a coupon refused for a stale ledger: the same scan is decided
        again, for the open sale, with the manager's override (journaled and flagged as
        `stale_ledger_override`). None when that refusal is not awaiting an override."""
        assert self.worker is not None
        pub = next((p for p in self.awaiting_override() if p.number == number), None)
        if pub is None:
            return None
        scan = pub.scan
        assert scan is not None  # awaiting_override lists scans only
        arrived = time.monotonic()
        decision = self.worker.call(lambda engine: self._decide(engine, scan, manager))
        self._publish_scan(scan, decision, arrived)
        return decision

    def set_basket(self, basket: Basket | None) -> list[Decision]:
        return self.start_sale(basket).result(10.0)

    def status(self) -> Status:
        engine = self.engine
        assert engine is not None
        basket = self.till.basket
        return {
            "store": engine.store,
            "terminal": engine.terminal,
            "ledger": {
                "version": engine.ledger.version,
                "age_s": engine.ledger_age_s(),
                "problem": engine.ledger_store.load_problem,
            },
            "clock_ok": engine.clock_ok(engine.now()),
            "inputs": self.health(),
            "healthy": self.healthy(),
            "decisions": self.published_count,
            "ignored": self.ignored,
            "till": {
                "total_minor": basket.total_minor if basket else None,
                "pending": len(self.till.pending),
            },
            "sync": self.sync_status(brief=True),
            "peers": self.peers_status_or_off(),
        }

    def sync_status(self, brief: bool = False) -> JSONObject:
        """Sync as the loop sees it; from Meta alone when sync is off."""
        assert self.worker is not None
        if not self.worker.healthy():
            # The engine is stuck on a job: answer `redeem status` without queueing behind it.
            full: JSONObject = {"central": self.cfg.sync.central, "running": self.sync is not None}
            full["last_error"] = "unknown: the engine worker is stuck"
        elif self.sync is not None:
            full = self.sync.status()
        else:
            full = self.worker.call(sync_status.snapshot)
            full.update({"central": self.cfg.sync.central, "running": False})
        if not brief:
            return full
        keys = ("central", "running", "last_success", "last_error", "backlog", "clock_offset_s")
        return {k: full.get(k) for k in keys}

    # ------------------------------------------------------------------ supervision

    def health(self) -> dict[str, Mapping[str, object]]:
        lines: dict[str, Mapping[str, object]] = {d.name: d.health().to_dict() for d in self.inputs}
        if self.cfg.peers.enabled:  # the name `peers` is reserved for this line
            lines["peers"] = self._peers_health().to_dict()
        return lines

    def input_states(self) -> dict[str, str]:
        """Each input's health state, as the sync client reports it to the central."""
        return {d.name: d.health().state for d in list(self.inputs)}

    def healthy(self) -> bool:
        """What systemd's watchdog hears: the engine worker is not stuck in one job (past
        [watchdog] engine_stall_s) and no running input is down. An input that could not
        load at all (no reader plugged in, a missing library) is a warning on the
        dashboard, not a reason to be restarted."""
        if self.worker is None or not self.worker.healthy():
            return False
        return all(
            d.health().state != DOWN
            for d in self.inputs
            if not isinstance(d, registry.FailedDriver)
        )

    def supervise_once(self) -> None:
        """Restart inputs that went down, within the budget; past it, exit non-zero and let
        systemd restart the whole daemon."""
        budget, window = self.cfg.watchdog.restart_budget, self.cfg.watchdog.window_s
        now = time.monotonic()
        for i, driver in enumerate(list(self.inputs)):
            if driver.health().state != DOWN or isinstance(driver, registry.FailedDriver):
                continue
            times = self._restarts.setdefault(driver.name, deque())
            while times and times[0] < now - window:
                times.popleft()
            if len(times) >= budget:
                log.error(
                    "input %s failed %d times in %.0f s: giving up", driver.name, len(times), window
                )
                self.exit_code = 3
                self.request_stop()
                return
            times.append(now)
            log.warning("restarting input %s: %s", driver.name, driver.health().detail)
            driver.stop(1.0)
            spec = next(s for s in self.cfg.inputs if s.name == driver.name)
            fresh = registry.create(spec.name, spec.kind, spec.options, self.clock.now)
            fresh.start(self.on_scan)
            self.inputs[i] = fresh
        self._note_worker()
        if self.notifier.watchdog_s and self.healthy():
            self.notifier.watchdog()

    def _note_worker(self) -> None:
        """Say once in the log why the watchdog pings stopped, and when they resume."""
        if self.worker is None:
            return
        stuck = not self.worker.healthy()
        if stuck and not self._worker_stuck:
            busy = self.worker.busy_s()
            log.error(
                "engine worker stuck on one job for %.1f s (limit %.1f s): watchdog pings withheld",
                busy or 0.0,
                self.worker.stall_s,
            )
        elif self._worker_stuck and not stuck:
            log.warning("engine worker moving again: watchdog pings resume")
        self._worker_stuck = stuck

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()

    def _start_when_space(self) -> bool:
        """start(), waiting out a full disk: the journal cannot be opened until space is
        freed, which no restart changes, and exiting would run into the unit's start limit
        and leave the till down for good. So: say why once, tell systemd the service is up
        (STATUS says it waits; the watchdog is fed), try again every disk_full_retry_s.
        Nothing is served meanwhile: no coupon can be recorded, so none is accepted.
        False when told to stop while waiting."""
        every = self.cfg.watchdog.disk_full_retry_s
        waiting = False
        while True:
            try:
                self.start()
            except setup.DiskFull as exc:
                if not waiting:
                    log.error("%s; trying again every %.0f s", exc, every)
                    self.notifier.ready(f"waiting: disk full under {self.cfg.terminal.data}")
                    waiting = True
            else:
                if waiting:
                    log.info("space is back: the journal opened")
                return True
            until = time.monotonic() + every
            while not self._stop.is_set() and time.monotonic() < until:
                if self.notifier.watchdog_s:
                    self.notifier.watchdog()
                self._wake.wait(min(1.0, max(0.01, until - time.monotonic())))
                self._wake.clear()
            if self._stop.is_set():
                log.info("stopped while waiting for disk space")
                return False

    def run_forever(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
        if not self._start_when_space():
            return self.exit_code
        tick = min(1.0, (self.notifier.watchdog_s or 2.0) / 2)
        while not self._stop.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            if self._stop.is_set():
                break
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            self.supervise_once()
        self.stop()
        return self.exit_code


def _in_parallel(steps: list[tuple[str, Callable[[], object]]], until: float) -> list[str]:
    """Run each step on its own thread, wait for all until `until` (monotonic); return the
    names of those still running. A step that raises is logged, not propagated."""

    def guarded(name: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception:  # one broken part must not keep the others running
            log.exception("%s did not stop cleanly", name)

    threads = []
    for name, fn in steps:
        t = threading.Thread(target=guarded, args=(name, fn), name=f"stop {name}", daemon=True)
        t.start()
        threads.append((name, t))
    late = []
    for name, t in threads:
        t.join(max(0.0, until - time.monotonic()))
        if t.is_alive():
            late.append(name)
    return late


def run(config_path: Path, clock: Clock) -> int:
    cfg = config_mod.load(config_path)
    logs.setup(cfg.log.format, cfg.log.level, cfg.log.device_traffic)
    return Daemon(cfg, clock).run_forever()
