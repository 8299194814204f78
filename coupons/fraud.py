"""Inline fraud detectors: bursts per coupon, terminal and cashier in a sliding window.
The other signals (replay, tag mismatch, wrong store, clock rollback, forged tokens, refused
ledgers) are raised where they are detected and journaled as flags by the engine."""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from coupons.ledger import Policy

FLAG_REPLAY = "replay"
FLAG_FORGED = "forged_token"
FLAG_TAG_MISMATCH = "tag_mismatch"
FLAG_DENIED_TAG = "denied_tag"
FLAG_DENIED_CUSTOMER = "denied_customer"
FLAG_WRONG_STORE = "wrong_store"
FLAG_CLOCK_ROLLBACK = "clock_rollback"
FLAG_BURST_COUPON = "burst_coupon"
FLAG_BURST_TERMINAL = "burst_terminal"
FLAG_BURST_CASHIER = "burst_cashier"
FLAG_LEDGER_REFUSED = "ledger_refused"
FLAG_STALE_OVERRIDE = "stale_ledger_override"
FLAG_CLOCK_RESET = "clock_reset"
# Store peers (coupons/claims.py, sync/peers): a till of the store holds the coupon, and what
# the peer service saw on the wire (a bad signature, a replayed or revoked sender, a flood), or
# a `held` that came after this till had accepted (both accepted: the central reconciles it).
FLAG_PEER_REPLAY = "peer_replay"
FLAG_PEER_FORGED = "peer_forged"
FLAG_PEER_REPLAYED = "peer_replayed"
FLAG_PEER_REVOKED = "peer_revoked"
FLAG_PEER_FLOOD = "peer_flood"
FLAG_PEER_CONFLICT = "peer_conflict"
PEER_FLAGS = frozenset(
    (
        FLAG_PEER_REPLAY,
        FLAG_PEER_FORGED,
        FLAG_PEER_REPLAYED,
        FLAG_PEER_REVOKED,
        FLAG_PEER_FLOOD,
        FLAG_PEER_CONFLICT,
    )
)


@dataclass(frozen=True)
class Flag:
    kind: str
    detail: str = ""


class _Window:
    def __init__(self) -> None:
        self.events: defaultdict[str, deque[float]] = defaultdict(deque)

    def count(self, key: str, now: float, window: float) -> int:
        q = self.events.get(key)
        if not q:
            return 0
        while q and q[0] <= now - window:
            q.popleft()
        if not q:
            del self.events[key]
            return 0
        return len(q)

    def add(self, key: str, now: float) -> None:
        self.events[key].append(now)


@dataclass(frozen=True, slots=True)
class PastAttempt:
    """An attempt the journal holds, as the burst detectors count it: when, on which coupon
    (None when none was resolved), by which cashier, and whether it was accepted."""

    at: float
    serial: str | None
    cashier: str | None
    accepted: bool


class BurstDetector:
    """Counts in memory, seeded at start from the journal's attempts inside the window
    (`seed`), so that a restart, a reload or a second process decides as one would have."""

    def __init__(self) -> None:
        self._attempts = _Window()
        self._accepts = _Window()

    def seed(self, terminal: str, past: Iterable[PastAttempt]) -> None:
        """Replay journaled attempts, oldest first, as on_attempt/on_accept counted them."""
        for p in past:
            if p.serial is not None:
                self._attempts.add(p.serial, p.at)
            if p.accepted:
                self.on_accept(terminal, p.cashier, p.at)

    def on_attempt(self, serial: str, now: float, policy: Policy) -> Flag | None:
        """Call for every attempt on a coupon; flags a coupon being tried again and again."""
        n = self._attempts.count(serial, now, policy.burst_window_s)
        self._attempts.add(serial, now)
        if policy.burst_per_coupon and n + 1 > policy.burst_per_coupon:
            return Flag(FLAG_BURST_COUPON, f"{n + 1} attempts on {serial}")
        return None

    def before_accept(
        self, terminal: str, cashier: str | None, now: float, policy: Policy
    ) -> Flag | None:
        window = policy.burst_window_s
        if (
            policy.burst_per_terminal
            and self._accepts.count("t:" + terminal, now, window) >= policy.burst_per_terminal
        ):
            return Flag(FLAG_BURST_TERMINAL, f"over {policy.burst_per_terminal} in {window}s")
        if (
            cashier
            and policy.burst_per_cashier
            and self._accepts.count("c:" + cashier, now, window) >= policy.burst_per_cashier
        ):
            return Flag(
                FLAG_BURST_CASHIER,
                f"cashier {cashier} over {policy.burst_per_cashier} in {window}s",
            )
        return None

    def on_accept(self, terminal: str, cashier: str | None, now: float) -> None:
        self._accepts.add("t:" + terminal, now)
        if cashier:
            self._accepts.add("c:" + cashier, now)
