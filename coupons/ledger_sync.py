"""What sync and a manager tell the engine: ledger imports, the central's clock offset and
usage counts, and a reset of clock trust; each journaled."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from coupons import fraud
from coupons.checks import Checks
from coupons.decision import Context, Decision
from coupons.journal import Entry, NewEntry, Use, get_meta, set_meta
from coupons.journal.meta import CLOCK_OFFSET as META_CLOCK_OFFSET
from coupons.journal.meta import CLOCK_OFFSET_AT as META_CLOCK_OFFSET_AT
from coupons.journal.meta import OWN_CUSTOMER_USAGE as META_OWN_CUSTOMER_USAGE
from coupons.ledger import LedgerRefused, clamped_usage
from coupons.ledger_store import ImportResult
from coupons.reasons import Reason

log = logging.getLogger(__name__)

# A flag is journaled each time the clock offset sync measures crosses the policy's limit.
FLAG_CLOCK_OFFSET = "clock_offset"


class LedgerSync(Checks):
    """The ledger and sync half of `Engine` (coupons/engine.py), which owns the transaction
    each of these runs in; declared below for the type checker only."""

    if TYPE_CHECKING:

        def _record(
            self, op_id: str | None, work: Callable[[], Decision], request: str = ""
        ) -> Decision: ...

    def reset_clock_trust(self, manager: str) -> Decision:
        """A manager confirms the device clock is right after it had run ahead (a bad NTP
        answer, a wrong RTC): trusted time restarts from now. Journaled as a flag."""
        now = self.now()
        if now < self.ledger.issued_at:
            return Decision(
                False, Reason.CLOCK_UNTRUSTED, detail="clock is before the ledger's issue time"
            )

        def work() -> Decision:
            d = Decision(True, Reason.OK, detail=f"trusted time was {self.trusted_time():.0f}")
            self.journal.write(
                NewEntry(
                    at_ms=int(now * 1000),
                    kind="flag",
                    accepted=True,
                    reason=fraud.FLAG_CLOCK_RESET,
                    source="manager",
                    detail={"manager": manager, "detail": d.detail},
                )
            )
            set_meta("trusted_time", str(int(now)))
            set_meta("clock_reset_seq", str(self.journal.head_seq))
            return d

        decision = self._record(None, work)
        if decision.accepted:
            self._trusted_s = now
            self.journal.last_at_ms = int(now * 1000)
        return decision

    def record_clock_offset(self, offset_s: float, uncertainty_s: float = 0.0) -> bool:
        """Sync measured the central's time minus ours. Beyond the policy's limit the clock
        is untrusted (coupons are refused with clock_untrusted) until a later measurement is
        back in range; each crossing is journaled as a flag. Returns whether it is in range."""
        was_ok = self.clock_offset_ok()
        previous = self.clock_offset_s
        self.clock_offset_s = float(offset_s)
        ok = self.clock_offset_ok()
        now = self.now()

        def work() -> Decision:
            set_meta(META_CLOCK_OFFSET, f"{offset_s:.3f}")
            set_meta(META_CLOCK_OFFSET_AT, f"{now:.3f}")
            if ok != was_ok:
                limit = self.ledger.policy.max_clock_offset_s
                self.journal.write(
                    NewEntry(
                        at_ms=int(now * 1000),
                        kind="flag",
                        accepted=ok,
                        reason=FLAG_CLOCK_OFFSET,
                        source="sync",
                        detail={
                            "offset_s": round(offset_s, 3),
                            "uncertainty_s": round(uncertainty_s, 3),
                            "limit_s": limit,
                            "detail": "clock back in range" if ok else "clock untrusted",
                        },
                    )
                )
            return Decision(True, Reason.OK)

        decision = self._record(None, work)
        if not decision.accepted:  # not stored: keep what the journal and Meta still say
            self.clock_offset_s = previous
            return was_ok
        if ok != was_ok:
            log.warning(
                "device clock is %+.1f s off the central's (limit %s s): %s",
                -offset_s,
                self.ledger.policy.max_clock_offset_s,
                "back in range" if ok else "clock untrusted",
            )
        return ok

    def record_own_usage(self, usage: dict[str, list[int]]) -> None:
        """What the central counts of this till's uses, as of the ledger just pulled (the
        sync client calls this after a round's push and pull both succeeded)."""
        set_meta("own_usage", json.dumps(usage, sort_keys=True))
        self.own_usage = clamped_usage(usage)
        self._count_own_customer_usage(int(get_meta("acked_seq", "0") or 0))

    def _count_own_customer_usage(self, acked: int) -> None:
        """Count, as the central's reconciliation does, this till's uses per (campaign,
        customer) in the journal entries the central acknowledged: the ledger's
        customer_usage holds them too, and the limit check takes them out of it once.
        Incremental (only the entries acknowledged since the last round); a campaign that
        gained a per-customer limit since is counted again from the start of the journal."""
        limited = {c.id for c in self.ledger.campaigns.values() if c.uses_per_customer is not None}
        saved = json.loads(get_meta(META_OWN_CUSTOMER_USAGE, "{}") or "{}")
        since = int(saved.get("seq", 0))
        counts: Counter[tuple[str, str]] = Counter(
            {(c, r): int(n) for c, r, n in saved.get("counts", ())}
        )
        if not limited <= set(saved.get("campaigns", ())):
            since, counts = 0, Counter()
        if limited and acked > since:
            query = (
                Entry.select(
                    Entry.kind, Entry.campaign, Entry.serial, Entry.customer, Entry.checkout_id
                )
                .where(
                    (Entry.seq > since)
                    & (Entry.seq <= acked)
                    & Entry.accepted
                    & Entry.kind.in_(("redeem", "commit", "reverse"))
                    & Entry.campaign.in_(sorted(limited))
                    & Entry.serial.is_null(False)
                )
                .order_by(Entry.seq)
            )
            for e in query.iterator():
                sign = +1
                if e.kind == "reverse":
                    campaign = self.ledger.campaigns.get(e.campaign)
                    if campaign is None or not campaign.reusable_after_refund:
                        continue  # the refunded use still counts
                    sign = -1
                customer = e.customer if e.kind == "redeem" else self._use_customer(e)
                if customer:
                    counts[(e.campaign, customer)] += sign
        kept = {k: n for k, n in counts.items() if n > 0 and k[0] in limited}
        set_meta(
            META_OWN_CUSTOMER_USAGE,
            json.dumps(
                {
                    "seq": max(since, acked),
                    "campaigns": sorted(limited),
                    "counts": sorted([c, r, n] for (c, r), n in kept.items()),
                }
            ),
        )
        self.own_customer_usage = kept

    @staticmethod
    def _use_customer(e: Entry) -> str | None:
        """The customer of the coupon use a commit or reverse entry is about (those entries
        name the checkout and serial; the hold or redemption named the customer)."""
        row = (
            Use.select(Use.customer)
            .where((Use.checkout_id == e.checkout_id) & (Use.serial == e.serial))
            .order_by(Use.id.desc())
            .first()
        )
        return row.customer if row else None

    def import_ledger(self, data: bytes) -> ImportResult:
        """Apply a ledger file (USB stick or sync); every refusal is journaled as a flag."""
        result = self.ledger_store.import_file(data)
        now = self.now()
        if result.refused or result.applied:
            self._record(None, lambda: self._journal_ledger(result, now))
        if result.applied:
            self._trusted_s = max(self._trusted_s, float(self.ledger.issued_at))
            set_meta("trusted_time", str(int(self._trusted_s)))
        return result

    def _journal_ledger(self, result: ImportResult, now: float) -> Decision:
        ctx = Context(source="ledger")
        for version in result.applied:
            self.journal.write(
                NewEntry(
                    at_ms=int(now * 1000),
                    kind="ledger",
                    accepted=True,
                    reason="applied",
                    source=ctx.source,
                    detail={"version": version},
                )
            )
        for exc in result.refused:
            self._flag_ledger(exc, now)
        return Decision(not result.refused, Reason.OK)

    def _flag_ledger(self, exc: LedgerRefused, now: float) -> None:
        self.journal.write(
            NewEntry(
                at_ms=int(now * 1000),
                kind="flag",
                accepted=False,
                reason=fraud.FLAG_LEDGER_REFUSED,
                source="ledger",
                detail={
                    "kind": exc.kind,
                    "detail": exc.detail,
                    "have_version": self.ledger.version,
                },
            )
        )
