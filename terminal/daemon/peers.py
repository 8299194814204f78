"""The daemon's part in the store peers (docs/store-peers.md): starting and stopping the
PeerService that is the engine's claimer, its status for the kiosk and its health line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from coupons.i18n import N_
from coupons.jsontypes import JSONObject
from ports.scan import Health
from sync.peers.service import PeerService

if TYPE_CHECKING:
    from coupons.engine import Engine
    from terminal.daemon.config import Config
    from terminal.daemon.worker import EngineWorker

log = logging.getLogger(__name__)

# The health line's words (the kiosk shows them in the manager's language).
PEERS_OFF = N_("store peers off")
NO_TILLS_LISTED = N_("no tills of this store in the ledger yet")
PEERS_UP = N_("{up} of {listed} peers up")


class PeersPart:
    """A mixin of `Daemon`: the attributes below are the daemon's."""

    if TYPE_CHECKING:
        cfg: Config
        engine: Engine | None
        worker: EngineWorker | None
        peers: PeerService | None

    def _start_peers(self) -> None:
        """The store peers (docs/store-peers.md): without a device key, or switched off, the
        engine keeps its NO_PEERS claimer and decides alone as before."""
        cfg, engine, worker = self.cfg.peers, self.engine, self.worker
        if not cfg.enabled or engine is None or worker is None:
            return
        try:
            self.peers = PeerService.create(
                cfg, Path(self.cfg.terminal.data), worker.submit, engine
            )
        except (OSError, ValueError) as exc:
            log.error("peers: cannot listen on %s: %s; deciding alone", cfg.listen, exc)
            self.peers = None
        if self.peers is None:
            return
        # Class attributes on the Engine (coupons/engine.py): reload() re-runs __init__ and
        # keeps what is set here.
        engine.claimer = self.peers
        engine.claim_bound_s = cfg.claim_bound_ms / 1000
        engine.claim_counters = cfg.claim_counters

    def _stop_peers(self) -> None:
        peers, self.peers = self.peers, None
        if self.engine is not None:
            from coupons.claims import NO_PEERS

            self.engine.claimer = NO_PEERS
        if peers is not None:
            peers.stop()

    def peers_status(self) -> JSONObject:
        """All the kiosk reads of the store peers; `{"enabled": False}` when off."""
        if self.peers is None:
            return {"enabled": False, "terminal": self.engine.terminal if self.engine else None}
        status: JSONObject = self.peers.status()
        return status

    def _peers_health(self) -> Health:
        peers = self.peers
        if peers is None:
            return Health("stopped", PEERS_OFF, words={})
        listed = [p for p in peers.status()["peers"] if not p["revoked"]]
        if not listed:
            return Health("degraded", NO_TILLS_LISTED, words={})
        up = sum(1 for p in listed if p["up"])
        state = "ok" if up == len(listed) else "down" if up == 0 else "degraded"
        return Health(state, PEERS_UP, words={"up": up, "listed": len(listed)})

    def peers_status_or_off(self) -> JSONObject:
        """`peers_status()`, or off with the reason when it cannot be read (a status page
        must never fail because of the peers)."""
        try:
            return self.peers_status()
        except Exception as exc:  # noqa: BLE001 - any fault of the peer service
            log.warning("peers: status unreadable: %s", exc)
            return {"enabled": False, "error": str(exc)}
