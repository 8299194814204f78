"""The engine's side of store peers (coupons/claims.py): which keys a use claims, the refusal a
peer's hold gives, and the jobs the peer service hands the engine worker (journal what peers
said, raise a peer flag, list the keys this till holds)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from coupons import fraud
from coupons.checks import Checks
from coupons.claims import NO_PEERS, Claimer, ClaimKey, ClaimOutcome, ClaimResult, PeerRecord
from coupons.decision import Coupon, Decision, Refuse
from coupons.fraud import Flag
from coupons.journal import NewEntry, Use
from coupons.reasons import Reason
from coupons.rules import Basket

# The refusal a peer's hold gives, by the kind of key it holds.
HELD_REASONS = {
    "serial": Reason.ALREADY_REDEEMED,
    "customer": Reason.CUSTOMER_LIMIT,
    "budget": Reason.BUDGET_EXHAUSTED,
}


def key_doc(key: ClaimKey) -> list[Any]:
    """A claim key as the journal's detail holds it (the wire's order)."""
    return [key.kind, key.campaign, key.subject, key.slot, key.limit]


class PeerClaims(Checks):
    """Claims for `Engine` (coupons/engine.py), which owns the transaction they run in."""

    # Class attributes, not set in __init__: Engine.reload() re-runs __init__, and the daemon's
    # claimer and bound must survive it. The daemon sets them on the instance.
    claimer: Claimer = NO_PEERS
    claim_bound_s: float = 0.15
    # Also claim the per-customer and budget-count slots (the serial is always claimed; the
    # claimer walks slot+1..limit when a slot is held). `budget_minor` is never claimed: the
    # central reconciles money budgets as before. `[peers] claim_counters` switches it off.
    claim_counters: bool = True

    if TYPE_CHECKING:

        def _record(
            self, op_id: str | None, work: Callable[[], Decision], request: str = ""
        ) -> Decision: ...

    # ------------------------------------------------------------ claiming a use

    def _claim_keys(self, coupon: Coupon) -> list[ClaimKey]:
        """What an accepted use of `coupon` takes, as claim keys, with the slot this use is."""
        c = coupon.campaign
        slot = self.serial_uses[coupon.key] + 1
        keys = [ClaimKey("serial", c.id, coupon.key, slot, c.uses_per_coupon)]
        if not self.claim_counters:
            return keys
        led = self.ledger
        if c.uses_per_customer is not None and coupon.customer:
            pair = (c.id, coupon.customer)
            used = self.customer_uses[pair]
            synced = led.customer_usage.get(pair)
            if synced:
                used += max(0, synced - self.own_customer_usage.get(pair, 0))
            keys.append(ClaimKey("customer", c.id, coupon.customer, used + 1, c.uses_per_customer))
        if c.budget_count is not None:
            total, _ = led.usage.get(c.id, (0, 0))
            own, _ = self.own_usage.get(c.id, (0, 0))
            slot = max(0, total - own) + self.campaign_count[c.id] + 1
            keys.append(ClaimKey("budget", c.id, "", slot, c.budget_count))
        return keys

    def _claim(
        self,
        coupon: Coupon,
        decision: Decision,
        basket: Basket,
        flags: list[Flag],
        pending: list[ClaimResult],
    ) -> tuple[Decision, dict[str, Any] | None]:
        """Ask the peers before accepting (inside the attempt's transaction, after the
        checks). Returns the decision (a refusal when a peer holds a key) and the `peer`
        detail for the journal entry, None when no peer was asked (the entry is as before)."""
        keys = self._claim_keys(coupon)
        if not keys:
            return decision, None
        claim = self.claimer.claim(keys, time.monotonic() + self.claim_bound_s)
        pending.append(claim)
        if claim.outcome is ClaimOutcome.HELD:
            decision = self._held_by_peer(coupon, claim, basket)
            flags.append(Flag(fraud.FLAG_PEER_REPLAY, f"{claim.key} used at till {claim.holder}"))
        if claim.outcome is ClaimOutcome.NO_PEERS and not claim.asked:
            return decision, None
        return decision, {
            "holder": claim.holder,
            "asked": claim.asked,
            "answered": claim.answered,
            "unreachable": list(claim.unreachable),
            "ms": round(claim.elapsed_s * 1000, 1),  # how long the sale waited on the peers
        }

    def _held_by_peer(self, coupon: Coupon, claim: ClaimResult, basket: Basket) -> Decision:
        holder = claim.holder or "?"
        kind = claim.key.kind if claim.key is not None else "serial"
        reason = HELD_REASONS.get(kind, Reason.ALREADY_REDEEMED)
        d = self._refusal(Refuse(reason, f"used at till {holder}", coupon=coupon), basket)
        d.used_at = holder
        return d

    def _use_key(self, u: Use) -> ClaimKey:
        """The serial key of a use that has just stopped counting (its slot is the first free
        one again)."""
        campaign = self.ledger.campaigns.get(u.campaign)
        limit = campaign.uses_per_coupon if campaign is not None else 1
        return ClaimKey("serial", u.campaign, u.serial, self.serial_uses[u.serial] + 1, limit)

    # ------------------------------------------------------------ jobs for the peer service

    def record_peer(self, recs: Sequence[PeerRecord]) -> bool:
        """Journal what the peer service saw (grants, peers' uses and releases, wins, late
        holds), one `peer` entry each, in one transaction. At least once: a duplicate (same
        claim id and what) is harmless. The entry's time is this till's; the peer's is in
        the detail, so a peer's clock never moves this till's trusted time."""
        if not recs:
            return True
        now_ms = int(self.now() * 1000)

        def work() -> Decision:
            for rec in recs:
                key = rec.key
                self.journal.write(
                    NewEntry(
                        at_ms=now_ms,
                        kind="peer",
                        accepted=False,
                        reason=rec.what,
                        campaign=key.campaign,
                        serial=key.subject if key.kind == "serial" else None,
                        customer=key.subject if key.kind == "customer" else None,
                        source="peers",
                        detail={
                            "peer": rec.peer,
                            "key": key_doc(key),
                            "claim": rec.claim_id,
                            "pseq": rec.pseq,
                            "at": rec.at_ms,
                        },
                    )
                )
            return Decision(True, Reason.OK)

        return self._record(None, work).accepted

    def flag_peer(
        self,
        kind: str,
        detail: str | Mapping[str, Any],
        serial: str | None = None,
        campaign: str | None = None,
    ) -> bool:
        """Journal a fraud flag the peer service raised (one of fraud.PEER_FLAGS)."""
        if kind not in fraud.PEER_FLAGS:
            raise ValueError(f"not a peer flag: {kind}")
        body = {"detail": detail} if isinstance(detail, str) else dict(detail)
        now_ms = int(self.now() * 1000)

        def work() -> Decision:
            self.journal.write(
                NewEntry(
                    at_ms=now_ms,
                    kind="flag",
                    accepted=False,
                    reason=kind,
                    campaign=campaign,
                    serial=serial,
                    source="peers",
                    detail=body,
                )
            )
            return Decision(True, Reason.OK)

        return self._record(None, work).accepted

    def live_claim_keys(self) -> list[ClaimKey]:
        """The serial keys of every use that counts here (held or redeemed), one per slot:
        what the peer service holds for this till at start, so a till killed after COMMIT
        but before settle still answers `held`."""
        counts: Counter[tuple[str, str]] = Counter()
        for u in Use.select(Use.serial, Use.campaign).where(Use.counts == True).iterator():  # noqa: E712
            counts[(u.campaign, u.serial)] += 1
        keys: list[ClaimKey] = []
        for (campaign_id, serial), n in sorted(counts.items()):
            campaign = self.ledger.campaigns.get(campaign_id)
            limit = campaign.uses_per_coupon if campaign is not None else n
            keys.extend(
                ClaimKey("serial", campaign_id, serial, slot, max(limit, n))
                for slot in range(1, n + 1)
            )
        return keys


__all__ = ["HELD_REASONS", "PeerClaims", "key_doc"]
