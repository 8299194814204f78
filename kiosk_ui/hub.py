"""The cashier screen's live side: the hub that fans the daemon's decisions out to the
screens' SSE streams, and what the decision panel shows (the newest decision while its sale
is open and `[kiosk] idle_after_s` has not passed; else idle, ready for the next coupon)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from kiosk_ui.daemon_port import DaemonPort, Published

# An SSE client's queue holds published decisions, and None: "look at the screen again" (a
# sale ended).
Item = Published | None
Client = tuple[asyncio.AbstractEventLoop, "asyncio.Queue[Item]"]


@dataclass
class Newest:
    """The newest decision as the listener heard it: when, and the standalone sale open then."""

    number: int
    at: float
    till: str


class Hub:
    """Fans published decisions out to SSE clients and decides what the decision panel
    shows. The daemon calls `publish` on its worker thread: it only notes the decision and
    hands it to each client's event loop, never waits."""

    def __init__(self, daemon: DaemonPort) -> None:
        self._daemon = daemon
        self._clients: set[Client] = set()
        self._lock = threading.Lock()
        self._newest: Newest | None = None
        self._ended = 0  # decisions numbered up to this belong to a sale that ended

    def publish(self, item: Published) -> None:
        if item.decision is not None:
            # The worker publishes a scan's decision before it starts another job, so the
            # till read here is the one the decision was made in.
            daemon = self._daemon
            self._newest = Newest(item.number, daemon.clock.now(), daemon.till.checkout_id)
        self._fan_out(item)

    def sale_ended(self, checkout_id: str) -> None:
        """A till committed or cancelled a checkout: if the screen shows a decision of that
        sale, it goes back to idle now."""
        shown = self.showing()
        if shown is not None and shown.decision and shown.decision.checkout_id == checkout_id:
            self._ended = max(self._ended, shown.number)
            self.wake()

    def wake(self) -> None:
        """Every screen looks again at what its panel should show."""
        self._fan_out(None)

    def showing(self) -> Published | None:
        """The decision the panel shows: the newest, unless its sale ended (a till's commit or
        cancel, a new total on this screen) or `[kiosk] idle_after_s` passed since it; None:
        idle, ready for the next coupon."""
        daemon = self._daemon
        decided = [p for p in list(daemon.recent) if p.decision is not None]
        if not decided or decided[-1].number <= self._ended:
            return None
        pub, newest = decided[-1], self._newest
        if newest is None or newest.number != pub.number:
            return pub  # published before this hub listened, or its note not taken yet
        if newest.till != daemon.till.checkout_id:
            return None  # a new standalone sale started since
        age = daemon.clock.now() - newest.at
        return pub if 0 <= age < daemon.cfg.kiosk.idle_after_s else None

    def _fan_out(self, item: Item) -> None:
        with self._lock:
            clients = list(self._clients)
        for loop, queue in clients:
            try:
                loop.call_soon_threadsafe(_offer, queue, item)
            except RuntimeError:  # the client's loop is closed
                self.leave(loop, queue)

    def join(self) -> Client:
        client = (asyncio.get_running_loop(), asyncio.Queue[Item](maxsize=100))
        with self._lock:
            self._clients.add(client)
        return client

    def leave(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Item]) -> None:
        with self._lock:
            self._clients.discard((loop, queue))


def _offer(queue: asyncio.Queue[Item], item: Item) -> None:
    if not queue.full():  # a client that stopped reading loses events, not the daemon
        queue.put_nowait(item)


def setup(app: FastAPI, daemon: DaemonPort) -> None:
    """The app's SSE hub, listening to the daemon's decisions (it never blocks the engine
    worker)."""
    hub = Hub(daemon)
    daemon.listeners.append(hub.publish)
    app.state.hub = hub


def get_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


CashierHub = Annotated[Hub, Depends(get_hub)]
