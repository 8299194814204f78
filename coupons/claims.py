"""The claim port: before a till accepts a single-use coupon it asks the other tills of its
store whether one of them already holds it (docs/store-peers.md). The core knows only this
interface; the transport lives in sync/peers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class ClaimOutcome(StrEnum):
    GRANTED = "granted"
    HELD = "held"
    NO_PEERS = "no_peers"


@dataclass(frozen=True)
class ClaimKey:
    kind: str  # "serial" | "customer" | "budget"
    campaign: str
    subject: str
    slot: int = 1
    limit: int = 1


@dataclass(frozen=True)
class ClaimResult:
    outcome: ClaimOutcome
    claim_id: bytes = b""
    holder: str | None = None
    key: ClaimKey | None = None
    asked: int = 0
    answered: int = 0
    unreachable: tuple[str, ...] = ()
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class PeerRecord:
    """Journaled as kind="peer"; what: granted|peer_used|peer_released|won|late_held."""

    at_ms: int
    what: str
    peer: str
    key: ClaimKey
    claim_id: str
    pseq: int | None = None


class Claimer(Protocol):
    def claim(self, keys: Sequence[ClaimKey], deadline: float) -> ClaimResult:
        """Monotonic deadline; never raises."""
        ...

    def settle(self, result: ClaimResult, accepted: bool, seq: int | None) -> None: ...

    def release(self, keys: Sequence[ClaimKey]) -> None:
        """A use stopped counting."""
        ...


class NoPeers:
    """No store group: every claim is NO_PEERS; settle and release do nothing."""

    def claim(self, keys: Sequence[ClaimKey], deadline: float) -> ClaimResult:
        return ClaimResult(ClaimOutcome.NO_PEERS)

    def settle(self, result: ClaimResult, accepted: bool, seq: int | None) -> None:
        return None

    def release(self, keys: Sequence[ClaimKey]) -> None:
        return None


NO_PEERS = NoPeers()
