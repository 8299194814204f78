"""The claim port: before a till accepts a use, the tills of its store may say "that is held here".

The engine asks a Claimer (sync/peers' PeerService in the daemon, NO_PEERS otherwise) inside its
acceptance step. Peers can only add refusals: a GRANTED or NO_PEERS outcome leaves the engine's own
decision as it was, and a HELD outcome turns an acceptance into a refusal naming the holder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class ClaimOutcome(StrEnum):
    GRANTED = "granted"  # every peer that was up answered, and none holds a key
    HELD = "held"  # a peer holds a key (used there, granted to another till, or won the tie)
    NO_PEERS = "no_peers"  # nobody to ask (no service, no listed peer up): the till decides alone


@dataclass(frozen=True)
class ClaimKey:
    """One thing a use takes: a serial's use, a customer's slot or a campaign budget slot."""

    kind: str  # "serial" | "customer" | "budget"
    campaign: str
    subject: str  # the serial key, the customer id, or "" for a campaign budget
    slot: int = 1  # which use of the limit this is (1-based)
    limit: int = 1

    def __str__(self) -> str:
        base = f"{self.kind}:{self.campaign}:{self.subject}"
        return base if self.limit == 1 else f"{base}#{self.slot}/{self.limit}"


@dataclass(frozen=True)
class ClaimResult:
    outcome: ClaimOutcome
    claim_id: bytes = b""
    holder: str | None = None  # the terminal that holds `key`, when HELD
    key: ClaimKey | None = None  # the key that was held
    asked: int = 0  # peers the claim was sent to
    answered: int = 0  # peers that answered within the bound
    unreachable: tuple[str, ...] = ()  # peers that did not answer in time
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class PeerRecord:
    """What the peer service journals (as kind="peer"), at least once."""

    at_ms: int
    what: str  # granted | peer_used | peer_released | won | late_held
    peer: str
    key: ClaimKey
    claim_id: str  # hex
    pseq: int | None = None


class Claimer(Protocol):
    def claim(self, keys: Sequence[ClaimKey], deadline: float) -> ClaimResult:
        """Ask the peers for `keys` until the monotonic `deadline`. Never raises."""
        ...

    def settle(self, result: ClaimResult, accepted: bool, seq: int | None) -> None:
        """After COMMIT: the use counted (`accepted`, journal `seq`), or the claim is given back."""
        ...

    def release(self, keys: Sequence[ClaimKey]) -> None:
        """A use stopped counting: a hold expired or was released, a redemption voided."""
        ...


class NoPeers:
    """The claimer of a till alone: no peer to ask, nothing to settle or release."""

    def claim(self, keys: Sequence[ClaimKey], deadline: float) -> ClaimResult:
        return ClaimResult(ClaimOutcome.NO_PEERS)

    def settle(self, result: ClaimResult, accepted: bool, seq: int | None) -> None:
        return None

    def release(self, keys: Sequence[ClaimKey]) -> None:
        return None


NO_PEERS = NoPeers()
