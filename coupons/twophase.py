"""The POS's two-phase checkout on the engine: hold, commit, release, reverse and void."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import peewee as pw

from coupons.checks import Checks
from coupons.claims import Claimer, ClaimKey
from coupons.decision import Context, Coupon, CouponUse, Decision
from coupons.fraud import Flag
from coupons.journal import LIVE_USES, Entry, Use, UseStatus
from coupons.reasons import Reason
from coupons.rules import Basket


class TwoPhase(Checks):
    """The checkout steps of `Engine` (coupons/engine.py), which owns the transaction each
    step runs in, the journal appends and the usage counters; what it provides is declared
    below for the type checker only."""

    if TYPE_CHECKING:
        claimer: Claimer

        def _use_key(self, u: Use) -> ClaimKey: ...

        @staticmethod
        def request_key(*parts: str) -> str: ...

        def _replay(self, op_id: str | None, request: str) -> Decision | None: ...

        def _record(
            self, op_id: str | None, work: Callable[[], Decision], request: str = ""
        ) -> Decision: ...

        def _expire_holds(self, now: float) -> None: ...

        def _count(self, u: Use, sign: int) -> None: ...

        def _attempt(
            self,
            kind: str,
            code: str,
            basket: Basket,
            ctx: Context,
            op_id: str | None,
            checkout_id: str,
            status: UseStatus,
            request: str,
            same_sale: bool = False,
        ) -> Decision: ...

        def _append(
            self,
            kind: str,
            decision: Decision,
            basket: Basket | None,
            ctx: Context,
            now: float,
            op_id: str | None,
            coupon: Coupon | None = None,
            checkout_id: str | None = None,
            flags: Sequence[Flag] = (),
        ) -> int: ...

    def hold(
        self,
        checkout_id: str,
        code: str,
        basket: Basket,
        ctx: Context = Context(),
        op_id: str | None = None,
    ) -> Decision:
        """POS step 1: hold a coupon for an open checkout (counts against limits until it is
        committed, released or expires)."""
        request = self.request_key("hold", checkout_id, code) if op_id else ""
        return self._replay(op_id, request) or self._attempt(
            "hold", code, basket, ctx, op_id, checkout_id, UseStatus.HELD, request
        )

    def checkout_coupons(self, checkout_id: str) -> list[CouponUse]:
        """Every coupon a checkout has had, with its status (held, committed, ...)."""
        return [
            {
                "serial": u.serial,
                "campaign": u.campaign,
                "status": u.status,
                "discount_minor": u.discount_minor,
                "currency": u.currency,
                "gift_sku": json.loads(u.detail).get("gift"),
            }
            for u in Use.select().where(Use.checkout_id == checkout_id).order_by(Use.id)
        ]

    def _transition(
        self,
        kind: str,
        checkout_id: str,
        op_id: str | None,
        ctx: Context,
        from_status: UseStatus,
        to_status: UseStatus,
        missing: Reason,
        use_id: int | None = None,
        answer: Reason = Reason.OK,
    ) -> Decision:
        parts = (kind, checkout_id) if use_id is None else (kind, checkout_id, f"use {use_id}")
        request = self.request_key(*parts)
        cached = self._replay(op_id, request)
        if cached:
            return cached
        now = self.now()
        self._expire_holds(now)
        detail = "void" if use_id is not None else ""
        released: list[ClaimKey] = []  # uses that stop counting: the peers may take them

        def work() -> Decision:
            which = (Use.checkout_id == checkout_id) & (Use.status == from_status)
            if use_id is not None:
                which &= Use.id == use_id
            uses = list(Use.select().where(which))
            if not uses:
                reason = self._why_none(kind, checkout_id, missing)
                d = Decision(False, reason, checkout_id=checkout_id)
                self._append(kind, d, None, ctx, now, op_id, checkout_id=checkout_id)
                return d
            total = 0
            seqs = []
            for u in uses:
                campaign = self.ledger.campaigns.get(u.campaign)
                counts = to_status == UseStatus.COMMITTED or (
                    to_status == UseStatus.REVERSED
                    and campaign is not None
                    and not campaign.reusable_after_refund
                )
                if u.counts and not counts:
                    self._count(u, -1)
                    released.append(self._use_key(u))
                Use.update(status=to_status, counts=counts, expires_at=None).where(
                    Use.id == u.id
                ).execute()
                d = Decision(
                    True,
                    Reason.OK,
                    u.discount_minor,
                    u.currency,
                    u.campaign,
                    serial=u.serial,
                    checkout_id=checkout_id,
                    gift_sku=json.loads(u.detail).get("gift"),
                    detail=detail,
                )
                seqs.append(self._append(kind, d, None, ctx, now, op_id, checkout_id=checkout_id))
                total += u.discount_minor
            return Decision(
                True,
                answer,
                total,
                uses[0].currency,
                uses[0].campaign if use_id is not None else None,
                serial=uses[0].serial if use_id is not None else None,
                checkout_id=checkout_id,
                detail=detail,
                journal_seq=seqs[-1],
                coupons=self.checkout_coupons(checkout_id),
                step=kind,
            )

        decision = self._record(op_id, work, request)
        if decision.accepted and released:
            self.claimer.release(released)
        return decision

    def _why_none(self, kind: str, checkout_id: str, missing: Reason) -> Reason:
        """Why a step found no coupon to move: the checkout is unknown, its coupons are in
        another state (`missing`), or, for a commit, its holds expired first."""
        known = Use.select().where(Use.checkout_id == checkout_id).exists()
        reason = missing if known else Reason.UNKNOWN_CHECKOUT
        if (
            known
            and kind == "commit"
            and Use.select()
            .where((Use.checkout_id == checkout_id) & (Use.status == UseStatus.EXPIRED))
            .exists()
        ):
            reason = Reason.HOLD_EXPIRED
        return reason

    def commit(
        self, checkout_id: str, op_id: str | None = None, ctx: Context = Context()
    ) -> Decision:
        """POS step 2: payment done; held coupons become redeemed."""
        return self._transition(
            "commit",
            checkout_id,
            op_id,
            ctx,
            UseStatus.HELD,
            UseStatus.COMMITTED,
            Reason.UNKNOWN_CHECKOUT,
        )

    def release(
        self, checkout_id: str, op_id: str | None = None, ctx: Context = Context()
    ) -> Decision:
        """Checkout cancelled: held coupons are free again."""
        return self._transition(
            "release",
            checkout_id,
            op_id,
            ctx,
            UseStatus.HELD,
            UseStatus.RELEASED,
            Reason.UNKNOWN_CHECKOUT,
        )

    def reverse(
        self, checkout_id: str, op_id: str | None = None, ctx: Context = Context()
    ) -> Decision:
        """Refund: committed coupons are reversed; the campaign says whether they (and the
        budget) become usable again."""
        return self._transition(
            "reverse",
            checkout_id,
            op_id,
            ctx,
            UseStatus.COMMITTED,
            UseStatus.REVERSED,
            Reason.NOT_COMMITTED,
        )

    def voidable(self, checkout_id: str, window_s: float) -> tuple[Use | None, str]:
        """The coupon a cashier may take back from a standalone sale, or why not: it must be
        the sale's last redemption, made less than `window_s` ago, of a campaign whose
        coupons are usable again after a refund (a void is journaled as a reverse, so the
        central counts it exactly as it counts a refund)."""
        last = (
            Use.select()
            .where((Use.checkout_id == checkout_id) & Use.status.in_(LIVE_USES))
            .order_by(Use.id.desc())
            .first()
        )
        if last is None:
            return None, "no coupon in this sale"
        if last.status != UseStatus.COMMITTED:
            return None, "held for the till: the till releases it"
        campaign = self.ledger.campaigns.get(last.campaign)
        if campaign is None or not campaign.reusable_after_refund:
            return None, "the campaign does not let this coupon be used again"
        voided_before = (
            Entry.select()
            .where(
                (Entry.kind == "reverse")
                & (Entry.serial == last.serial)
                & Entry.accepted
                & Entry.detail.contains('"detail":"void"')
            )
            .exists()
        )
        if voided_before:
            # Once per coupon: redeem, give the discount, void, redeem again... is the
            # pattern a void must not allow. A manager's refund (reverse) is still open.
            return None, "this coupon was taken back once already"
        at_ms = (
            Entry.select(pw.fn.MAX(Entry.at_ms))
            .where(
                (Entry.checkout_id == checkout_id)
                & (Entry.serial == last.serial)
                & Entry.accepted
                & Entry.kind.in_(("redeem", "commit"))
            )
            .scalar()
        )
        if at_ms is None or self.now() * 1000 - at_ms > window_s * 1000:
            return None, f"more than {window_s:.0f} s ago"
        return last, ""

    def void(
        self,
        checkout_id: str,
        window_s: float,
        op_id: str | None = None,
        ctx: Context = Context(),
    ) -> Decision:
        """The cashier takes back the last coupon of a standalone sale (scanned by mistake,
        or the shopper changed their mind) while the sale is still open: the redemption is
        reversed and the coupon and budget are free again. Refused (VOID_REFUSED) where
        `voidable` says no; nothing is recorded then."""
        use, why = self.voidable(checkout_id, window_s)
        if use is None:
            return Decision(False, Reason.VOID_REFUSED, checkout_id=checkout_id, detail=why)
        return self._transition(
            "reverse",
            checkout_id,
            op_id,
            ctx,
            UseStatus.COMMITTED,
            UseStatus.REVERSED,
            Reason.NOT_COMMITTED,
            use_id=use.id,
            answer=Reason.VOIDED,
        )
