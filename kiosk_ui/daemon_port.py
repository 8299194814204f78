"""The daemon as the kiosk sees it: the Protocol its routes are typed against, the shapes it
answers with, and the FastAPI dependency that hands it to a route."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Protocol, TypedDict, TypeVar

from fastapi import Depends, Request

from coupons.clock import Clock
from coupons.decision import Decision
from coupons.engine import Engine
from coupons.rules import Basket
from ports.scan import Health, Scan

T = TypeVar("T")

# Members are read-only properties: the daemon's own attributes are more precise types
# (terminal.daemon's config sections, its EngineWorker), which a settable Protocol member
# would refuse.


class TerminalConfig(Protocol):
    @property
    def data(self) -> str | Path: ...
    @property
    def lang(self) -> str: ...
    @property
    def currency(self) -> str: ...
    @property
    def void_window_s(self) -> float: ...


class KioskConfig(Protocol):
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def hostnames(self) -> Sequence[str]: ...
    @property
    def allowed_clients(self) -> Sequence[str]: ...
    @property
    def idle_after_s(self) -> float: ...
    @property
    def sound(self) -> bool: ...


class Config(Protocol):
    @property
    def terminal(self) -> TerminalConfig: ...
    @property
    def kiosk(self) -> KioskConfig: ...


class Worker(Protocol):
    """The daemon's one engine worker: every journal read or write goes through it."""

    def call(self, job: Callable[[Engine], T], timeout: float = 10.0) -> T: ...


class Till(Protocol):
    """The standalone sale the cashier is ringing up."""

    @property
    def basket(self) -> Basket | None: ...
    @property
    def checkout_id(self) -> str: ...
    @property
    def pending(self) -> Sequence[Scan]: ...


class Input(Protocol):
    """A running device input (ports.scan.Driver); a camera also has `snapshot()`."""

    @property
    def name(self) -> str: ...
    def health(self) -> Health: ...


class Published(Protocol):
    """One published decision (or an ignored scan: `decision` None)."""

    @property
    def number(self) -> int: ...
    @property
    def decision(self) -> Decision | None: ...
    @property
    def latency_s(self) -> float: ...
    @property
    def source(self) -> str: ...
    @property
    def kind(self) -> str: ...
    def to_dict(self, lang: str = "en") -> dict[str, object]: ...


Listener = Callable[[Published], None]


class Listeners(Protocol):
    def append(self, listener: Listener, /) -> None: ...


class LedgerStatus(TypedDict):
    version: int
    age_s: float | None
    problem: str | None


class TillStatus(TypedDict):
    total_minor: int | None
    pending: int


class Status(TypedDict):
    """Daemon.status(): what `redeem status` and the screens show."""

    store: str
    terminal: str
    ledger: LedgerStatus
    clock_ok: bool
    inputs: Mapping[str, Mapping[str, object]]  # input name -> Health.to_dict()
    healthy: bool
    decisions: int
    ignored: int
    till: TillStatus
    sync: Mapping[str, object]  # Daemon.sync_status(brief=True)
    peers: Mapping[str, object]  # Daemon.peers_status()


class DaemonPort(Protocol):
    """What kiosk_ui calls on the daemon (terminal.daemon.runner.Daemon)."""

    @property
    def cfg(self) -> Config: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def engine(self) -> Engine | None: ...  # None until started: the kiosk starts after
    @property
    def worker(self) -> Worker | None: ...  # None until started: the kiosk starts after
    @property
    def till(self) -> Till: ...
    @property
    def inputs(self) -> Sequence[Input]: ...
    @property
    def recent(self) -> Iterable[Published]: ...
    @property
    def published_count(self) -> int: ...
    @property
    def listeners(self) -> Listeners: ...

    def status(self) -> Status: ...
    def sync_status(self, brief: bool = False) -> Mapping[str, object]: ...
    def health(self) -> Mapping[str, Mapping[str, object]]: ...
    def on_scan(self, scan: Scan) -> None: ...
    def publish(
        self,
        decision: Decision | None,
        source: str,
        kind: str,
        arrived: float,
        scan: Scan | None = None,
    ) -> None:
        """The one decision channel: scans, POS applies, voids and overrides alike."""

    def set_basket(self, basket: Basket | None) -> Sequence[Decision]: ...
    def void_last(self) -> Decision: ...
    def override(self, number: int, manager: str) -> Decision | None: ...
    def awaiting_override(self) -> Sequence[Published]: ...
    def published_after(self, number: int) -> Sequence[Published]: ...


def worker(daemon: DaemonPort) -> Worker:
    """The engine worker of a started daemon (the kiosk is created after it starts)."""
    running = daemon.worker
    if running is None:
        raise RuntimeError("the daemon's engine worker is not running")
    return running


def engine(daemon: DaemonPort) -> Engine:
    """The engine of a started daemon, for the plain reads that need no worker trip."""
    running = daemon.engine
    if running is None:
        raise RuntimeError("the daemon's engine is not open")
    return running


def get_daemon(request: Request) -> DaemonPort:
    """The daemon the app was created for (create_app puts it on app.state)."""
    daemon: DaemonPort = request.app.state.daemon
    return daemon


Daemon = Annotated[DaemonPort, Depends(get_daemon)]
