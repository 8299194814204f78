"""The redemption engine: one call decides a coupon offline, in the order DESIGN.md fixes
(format, signature, key and campaign, time, scope, limits, basket, fraud), and journals
every attempt before answering. Standalone redeem and two-phase hold/commit/release/
reverse, all idempotent by the caller's operation id. One thread calls it (one writer)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import sqlite3
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import peewee as pw

from terminal import cose, fraud, tokens
from terminal.clock import Clock
from terminal.fraud import Flag
from terminal.journal import (
    Journal,
    Operation,
    Use,
    database_proxy,
    get_meta,
    insert_operation,
    insert_use,
    set_meta,
)
from terminal.ledger import LedgerRefused, LedgerState
from terminal.ledger_store import ImportResult, LedgerStore
from terminal.reasons import Reason
from terminal.rules import Basket, Campaign, Customer, Refusal, apply_in_order, best_combination

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """Who and where: filled by the daemon, the POS API or the CLI."""

    source: str = "cli"  # camera, nfc, serial, keyboard, pos, cli
    cashier: str | None = None
    tag_uid: bytes | None = None  # from the NFC reader, for the token's tag binding
    manager_override: str | None = None  # manager id approving a stale-ledger coupon


@dataclass
class Decision:
    accepted: bool
    reason: Reason
    discount_minor: int = 0
    currency: str | None = None
    campaign: str | None = None
    campaign_name: str | None = None
    serial: str | None = None
    journal_seq: int | None = None
    gift_sku: str | None = None
    checkout_id: str | None = None
    detail: str = ""
    warnings: list[str] = field(default_factory=list)
    coupons: list[dict[str, Any]] = field(default_factory=list)
    replayed: bool = False

    def to_dict(self, lang: str = "en") -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "reason": self.reason.value,
            "message": self.reason.message(lang),
            "discount_minor": self.discount_minor,
            "currency": self.currency,
            "campaign": self.campaign,
            "campaign_name": self.campaign_name,
            "serial": self.serial,
            "journal_seq": self.journal_seq,
            "gift_sku": self.gift_sku,
            "checkout_id": self.checkout_id,
            "detail": self.detail,
            "warnings": self.warnings,
            "coupons": self.coupons,
            "replayed": self.replayed,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Decision:
        keep = {k: v for k, v in d.items() if k not in ("message", "reason")}
        return cls(reason=Reason(d["reason"]), **keep)


@dataclass(frozen=True)
class Coupon:
    key: str  # serial as 16 hex digits
    serial: int
    campaign: Campaign
    customer: str | None  # customer ref (hex) from the token, else from the basket
    via: str  # token or code


class _Refuse(Exception):
    def __init__(
        self,
        reason: Reason,
        detail: str = "",
        flag: Flag | None = None,
        coupon: Coupon | None = None,
    ) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.flag, self.coupon = reason, detail, flag, coupon


def serial_hex(serial: int) -> str:
    return f"{serial:016x}"


@functools.lru_cache(maxsize=256)
def _use_detail(via: str, gift_sku: str | None) -> str:
    """A coupon use's detail column (json.dumps's default spelling, as it always was)."""
    return json.dumps({"code": "", "via": via, "gift": gift_sku})


# What _record tells peewee while its transaction is open (see there).
_TRANSACTION = object()


class Engine:
    def __init__(
        self, ledger_store: LedgerStore, clock: Clock, store: str, terminal: str, db: pw.Database
    ) -> None:
        self.ledger_store = ledger_store
        self.clock = clock
        self.store = store
        self.terminal = terminal
        self.db = db
        self.journal = Journal()
        self.bursts = fraud.BurstDetector()
        self._trusted_s = float(get_meta("trusted_time", "0") or 0)
        self._rebuild_usage()

    @property
    def ledger(self) -> LedgerState:
        return self.ledger_store.state

    # ------------------------------------------------------------ usage cache

    def _rebuild_usage(self) -> None:
        """In-memory counters of uses that count; the Use table is the truth."""
        self.serial_uses: Counter[str] = Counter()
        self.customer_uses: Counter[tuple[str, str]] = Counter()
        self.campaign_count: Counter[str] = Counter()
        self.campaign_minor: Counter[str] = Counter()
        self._next_expiry = float("inf")
        for u in Use.select().where(Use.counts == True).iterator():  # noqa: E712
            self._count(u, +1)
            if u.status == "held" and u.expires_at is not None:
                self._next_expiry = min(self._next_expiry, u.expires_at)

    def _count(self, u: Use, sign: int) -> None:
        self._count_use(u.serial, u.campaign, u.customer, u.value_minor, sign)

    def _count_use(
        self, serial: str, campaign: str, customer: str | None, value_minor: int, sign: int
    ) -> None:
        self.serial_uses[serial] += sign
        if customer:
            self.customer_uses[(campaign, customer)] += sign
        self.campaign_count[campaign] += sign
        self.campaign_minor[campaign] += sign * value_minor

    # ------------------------------------------------------------ time

    def now(self) -> float:
        return self.clock.now()

    def trusted_time(self) -> float:
        """Latest time we know has passed: last ledger issue time, last journal entry."""
        return max(self._trusted_s, float(self.ledger.issued_at), self.journal.last_at_ms / 1000.0)

    def clock_ok(self, now: float) -> bool:
        return now >= self.trusted_time() - self.ledger.policy.clock_tolerance_s

    def ledger_age_s(self, now: float | None = None) -> float | None:
        if not self.ledger.version:
            return None
        return max(0.0, (now if now is not None else self.now()) - self.ledger.issued_at)

    # ------------------------------------------------------------ resolving a coupon

    def _resolve(self, code: str, basket: Basket, ctx: Context, now: float) -> Coupon:
        led = self.ledger
        if not led.version:
            raise _Refuse(Reason.NO_LEDGER, "no ledger imported")
        if not self.clock_ok(now):
            raise _Refuse(
                Reason.CLOCK_UNTRUSTED,
                f"clock {now:.0f} is before trusted time {self.trusted_time():.0f}",
                Flag(fraud.FLAG_CLOCK_ROLLBACK, f"clock {now:.0f}"),
            )
        if tokens.looks_like_token(code):
            coupon, claims = self._from_token(code, basket, ctx, now)
        else:
            coupon, claims = self._from_code(code, basket), None
        c = coupon.campaign
        try:
            c.check_time(now)
        except Refusal as exc:
            raise _Refuse(exc.reason, exc.detail, coupon=coupon) from None
        if c.stores and self.store not in c.stores:
            raise _Refuse(
                Reason.WRONG_STORE,
                f"campaign for {sorted(c.stores)}",
                Flag(fraud.FLAG_WRONG_STORE, f"store {self.store}"),
                coupon,
            )
        if claims is not None and claims.tag_uid is not None and ctx.tag_uid != claims.tag_uid:
            raise _Refuse(
                Reason.TAG_MISMATCH,
                "token bound to another tag",
                Flag(fraud.FLAG_TAG_MISMATCH, (ctx.tag_uid or b"").hex() or "no tag"),
                coupon,
            )
        if ctx.tag_uid is not None and ctx.tag_uid in led.deny_tags:
            raise _Refuse(
                Reason.SUSPECTED_FRAUD,
                "tag is deny-listed",
                Flag(fraud.FLAG_DENIED_TAG, ctx.tag_uid.hex()),
                coupon,
            )
        if coupon.customer and coupon.customer in led.deny_customers:
            raise _Refuse(
                Reason.SUSPECTED_FRAUD,
                "customer is deny-listed",
                Flag(fraud.FLAG_DENIED_CUSTOMER, coupon.customer),
                coupon,
            )
        return coupon

    def _from_token(
        self,
        code: str,
        basket: Basket,
        ctx: Context,
        now: float,
    ) -> tuple[Coupon, tokens.Claims]:
        led = self.ledger
        try:
            tok = tokens.parse(code)
        except tokens.TokenMalformed as exc:
            raise _Refuse(Reason.MALFORMED, str(exc)) from None
        kid = tok.message.kid
        if kid in led.revoked_kids:
            raise _Refuse(Reason.KEY_REVOKED, f"issuer key {kid.hex()} revoked")
        cert = led.issuer_keys.get(kid)
        if cert is None:
            raise _Refuse(Reason.UNKNOWN_KEY, f"issuer key {kid.hex()} not in ledger")
        if not cose.verify_sign1(tok.message, cert.public_key):
            raise _Refuse(
                Reason.BAD_SIGNATURE,
                "signature does not verify",
                Flag(fraud.FLAG_FORGED, f"kid {kid.hex()}"),
            )
        claims = tok.claims
        if not cert.valid_at(claims.not_before):
            raise _Refuse(Reason.UNKNOWN_KEY, "issuer key was not valid at issue time")
        campaign = led.campaigns.get(claims.campaign)
        if campaign is None:
            raise _Refuse(Reason.UNKNOWN_CAMPAIGN, f"campaign {claims.campaign}")
        customer = claims.customer_ref.hex() if claims.customer_ref else None
        coupon = Coupon(
            serial_hex(claims.serial),
            claims.serial,
            campaign,
            customer or (basket.customer.ref if basket.customer else None),
            "token",
        )
        if now < claims.not_before:
            raise _Refuse(Reason.NOT_YET_VALID, coupon=coupon)
        if now >= claims.expires:
            raise _Refuse(Reason.EXPIRED, coupon=coupon)
        if customer and not (basket.customer and basket.customer.ref == customer):
            raise _Refuse(
                Reason.NOT_FOR_CUSTOMER, "coupon issued to another customer", coupon=coupon
            )
        return coupon, claims

    def _from_code(self, code: str, basket: Basket) -> Coupon:
        led = self.ledger
        norm = tokens.normalize_code(code)
        if not 4 <= len(norm) <= 64:
            raise _Refuse(Reason.MALFORMED, "not a coupon code")
        entry = led.plain_codes.get(tokens.plain_code_hash(led.plain_salt, norm))
        if entry is None:
            raise _Refuse(Reason.MALFORMED, "unknown coupon code")
        campaign = led.campaigns.get(entry.campaign)
        if campaign is None:
            raise _Refuse(Reason.UNKNOWN_CAMPAIGN, f"campaign {entry.campaign}")
        return Coupon(
            serial_hex(entry.serial),
            entry.serial,
            campaign,
            basket.customer.ref if basket.customer else None,
            "code",
        )

    def _check_single_use(self, coupon: Coupon) -> None:
        led, c = self.ledger, coupon.campaign
        if coupon.serial in led.revoked:
            raise _Refuse(Reason.REVOKED, coupon=coupon)
        if coupon.serial in led.redeemed or self.serial_uses[coupon.key] >= c.uses_per_coupon:
            raise _Refuse(
                Reason.ALREADY_REDEEMED, coupon=coupon, flag=Flag(fraud.FLAG_REPLAY, coupon.key)
            )

    def _check_limits(
        self, coupon: Coupon, value_minor: int, basket: Basket, single_use_checked: bool = False
    ) -> None:
        led, c = self.ledger, coupon.campaign
        if not single_use_checked:
            self._check_single_use(coupon)
        try:
            c.check_audience(basket.customer if basket.customer else Customer(ref=None))
        except Refusal as exc:
            raise _Refuse(exc.reason, exc.detail, coupon=coupon) from None
        if (
            c.uses_per_customer is not None
            and coupon.customer
            and self.customer_uses[(c.id, coupon.customer)] >= c.uses_per_customer
        ):
            raise _Refuse(Reason.CUSTOMER_LIMIT, coupon=coupon)
        elsewhere_count, elsewhere_minor = led.usage.get(c.id, (0, 0))
        if (
            c.budget_count is not None
            and elsewhere_count + self.campaign_count[c.id] >= c.budget_count
        ):
            raise _Refuse(Reason.BUDGET_EXHAUSTED, coupon=coupon)
        if (
            c.budget_minor is not None
            and elsewhere_minor + self.campaign_minor[c.id] + value_minor > c.budget_minor
        ):
            raise _Refuse(Reason.BUDGET_EXHAUSTED, coupon=coupon)

    def _check_fraud_and_staleness(
        self, value_minor: int, ctx: Context, now: float, coupon: Coupon, warnings: list[str]
    ) -> list[Flag]:
        policy = self.ledger.policy
        burst = self.bursts.before_accept(self.terminal, ctx.cashier, now, policy)
        if burst:
            raise _Refuse(Reason.SUSPECTED_FRAUD, burst.detail, burst, coupon)
        age = self.ledger_age_s(now) or 0.0
        flags: list[Flag] = []
        if age > policy.stale_warn_hours * 3600:
            warnings.append("ledger_stale")
        if age > policy.stale_block_hours * 3600 and value_minor > policy.stale_high_value_minor:
            if not ctx.manager_override:
                raise _Refuse(
                    Reason.LEDGER_STALE,
                    f"ledger {age / 3600:.0f} h old; manager override needed",
                    coupon=coupon,
                )
            flags.append(Flag(fraud.FLAG_STALE_OVERRIDE, f"manager {ctx.manager_override}"))
        return flags

    # ------------------------------------------------------------ deciding

    def _decide(
        self, code: str, basket: Basket, ctx: Context, now: float, others: list[Coupon]
    ) -> tuple[Decision, Coupon, list[Flag], dict[str, int]]:
        """Everything but recording. Returns the decision, the coupon, flags to journal and
        the discount of every coupon in the checkout after restacking."""
        coupon = self._resolve(code, basket, ctx, now)
        c = coupon.campaign
        if any(o.key == coupon.key for o in others):
            raise _Refuse(
                Reason.ALREADY_REDEEMED, "already applied to this checkout", coupon=coupon
            )
        # Single use before the basket (DESIGN.md's order): a replayed coupon is reported and
        # flagged as a replay even when the basket would not qualify either.
        self._check_single_use(coupon)
        try:
            combo = apply_in_order(
                [(o.key, o.campaign) for o in others] + [(coupon.key, c)], basket
            )
        except Refusal as exc:
            raise _Refuse(exc.reason, exc.detail, coupon=coupon) from None
        if coupon.key in combo.refused:
            why = combo.refused[coupon.key]
            raise _Refuse(why.reason, why.detail, coupon=coupon)
        if combo.refused:
            # Stacking this one would take a held coupon below its own rules (a threshold
            # after a percent): refuse it rather than keep the held one's stale discount.
            key, why = next(iter(combo.refused.items()))
            raise _Refuse(
                Reason.NOT_STACKABLE,
                f"held coupon {key} would no longer apply ({why.reason.value})",
                coupon=coupon,
            )
        mine = next(a for a in combo.applied if a.key == coupon.key)
        self._check_limits(coupon, mine.value_minor, basket, single_use_checked=True)
        warnings: list[str] = []
        flags = self._check_fraud_and_staleness(mine.value_minor, ctx, now, coupon, warnings)
        decision = Decision(
            True,
            Reason.OK,
            mine.discount_minor,
            c.currency,
            c.id,
            c.name,
            coupon.key,
            gift_sku=mine.gift_sku,
            warnings=warnings,
        )
        return decision, coupon, flags, {a.key: a.discount_minor for a in combo.applied}

    def check(self, code: str, basket: Basket, ctx: Context = Context()) -> Decision:
        """Decide without recording anything (the `redeem check` command, a till's preview)."""
        now = self.now()
        self._expire_holds(now)  # else a lapsed hold still reads as "already used"
        try:
            decision, _, _, _ = self._decide(code, basket, ctx, now, [])
        except _Refuse as r:
            return self._refusal(r, basket)
        return decision

    def _refusal(self, r: _Refuse, basket: Basket) -> Decision:
        c = r.coupon
        return Decision(
            False,
            r.reason,
            0,
            basket.currency,
            c.campaign.id if c else None,
            c.campaign.name if c else None,
            c.key if c else None,
            detail=r.detail,
        )

    # ------------------------------------------------------------ recording

    def _replay(self, op_id: str | None, request: str) -> Decision | None:
        """The stored answer when this operation id was seen before with the same request;
        a refusal when the id was used for a different request."""
        if not op_id:
            return None
        row = Operation.get_or_none(Operation.op_id == op_id)
        if row is None:
            return None
        if row.request != request:
            return Decision(
                False,
                Reason.OPERATION_CONFLICT,
                detail=f"operation id {op_id} was used for another request",
            )
        d = Decision.from_dict(json.loads(row.response))
        d.replayed = True
        return d

    @staticmethod
    def _request(*parts: str) -> str:
        joined = "\x1f".join(parts).encode("utf-8", "surrogatepass")
        return hashlib.sha256(joined).hexdigest()[:32]

    def _record(self, op_id: str | None, work: Any, request: str = "") -> Decision:
        """Run `work` (which appends journal entries) in one durable transaction and store
        the answer under op_id. A storage fault refuses (fails closed) and loses nothing."""
        journal = self.journal
        head = (journal.head_seq, journal.head_hash, journal.last_at_ms)
        db = self.db
        try:
            if db.transaction_depth():  # inside a caller's transaction: a savepoint, as ever
                with db.atomic():
                    return self._work_and_remember(op_id, work, request)
            # db.atomic() without its bookkeeping: BEGIN and COMMIT on the connection, rolled
            # back on any error. Peewee is told a transaction is open, so that an atomic()
            # inside `work` nests as a savepoint as it would have.
            conn = db.connection()
            conn.execute("BEGIN")
            db.push_transaction(_TRANSACTION)
            try:
                decision = self._work_and_remember(op_id, work, request)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                db.pop_transaction()
            return decision
        except (pw.OperationalError, pw.IntegrityError, sqlite3.Error, OSError) as exc:
            log.error("journal write failed, refusing: %s", exc)
            reason, detail = Reason.STORAGE_FAILURE, str(exc)
        except Exception:
            # A bug must not accept a coupon or kill the terminal: refuse and keep the trace.
            log.exception("engine fault, refusing")
            reason, detail = Reason.INTERNAL_ERROR, ""
        journal.head_seq, journal.head_hash, journal.last_at_ms = head
        self._rebuild_usage()
        return Decision(False, reason, detail=detail)

    def _work_and_remember(self, op_id: str | None, work: Any, request: str) -> Decision:
        decision: Decision = work()
        if op_id:
            insert_operation(op_id, request, self.journal.head_seq, json.dumps(decision.to_dict()))
        return decision

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
    ) -> int:
        at_ms = int(now * 1000)
        seq = self.journal.write(
            at_ms,
            kind,
            op_id,
            checkout_id,
            decision.accepted,
            decision.reason.value,
            decision.campaign,
            decision.serial,
            coupon.customer if coupon else None,
            decision.discount_minor,
            decision.currency or (basket.currency if basket else None),
            ctx.cashier,
            ctx.source,
            {
                "detail": decision.detail,
                "gift": decision.gift_sku,
                "basket_minor": basket.total_minor if basket else None,
                "tag": ctx.tag_uid.hex() if ctx.tag_uid else None,
                "override": ctx.manager_override,
            },
        )
        decision.journal_seq = seq
        for flag in flags:
            self.journal.append(
                at_ms=at_ms,
                kind="flag",
                accepted=False,
                reason=flag.kind,
                serial=decision.serial,
                campaign=decision.campaign,
                cashier=ctx.cashier,
                source=ctx.source,
                detail={"detail": flag.detail, "about_seq": seq},
            )
        return seq

    def _attempt(
        self,
        kind: str,
        code: str,
        basket: Basket,
        ctx: Context,
        op_id: str | None,
        checkout_id: str,
        status: str,
        request: str,
    ) -> Decision:
        now = self.now()
        self._expire_holds(now)
        others = self._held_coupons(checkout_id) if status == "held" else []

        def work() -> Decision:
            flags: list[Flag] = []
            coupon: Coupon | None
            try:
                decision, coupon, flags, restacked = self._decide(code, basket, ctx, now, others)
            except _Refuse as r:
                decision, coupon = self._refusal(r, basket), r.coupon
                flags = [r.flag] if r.flag else []
                restacked = {}
            if coupon is not None:
                burst = self.bursts.on_attempt(coupon.key, now, self.ledger.policy)
                if burst:
                    flags.append(burst)
            # A standalone redemption is its own one-coupon checkout: its id is what a refund
            # (reverse) names.
            decision.checkout_id = checkout_id
            self._append(kind, decision, basket, ctx, now, op_id, coupon, checkout_id, flags)
            if decision.accepted and coupon is not None:
                self._add_use(coupon, decision, checkout_id, status, now)
                if len(restacked) > 1:
                    self._restack(checkout_id, coupon.key, restacked)
                if status == "held":
                    decision.coupons = self._checkout_coupons(checkout_id)
            return decision

        decision = self._record(op_id, work, request)
        if decision.accepted:
            self.bursts.on_accept(self.terminal, ctx.cashier, now)
        return decision

    def _restack(self, checkout_id: str, new_key: str, discounts: dict[str, int]) -> None:
        """Held coupons of a checkout take the discounts the new stacking order gives them;
        their value against the campaign budget follows."""
        for u in Use.select().where(
            (Use.checkout_id == checkout_id) & (Use.status == "held") & (Use.serial != new_key)
        ):
            off = discounts.get(u.serial, u.discount_minor)
            if off == u.discount_minor:
                continue
            value = u.value_minor - u.discount_minor + off
            self.campaign_minor[u.campaign] += value - u.value_minor
            Use.update(discount_minor=off, value_minor=value).where(Use.id == u.id).execute()

    def _add_use(
        self, coupon: Coupon, d: Decision, checkout_id: str, status: str, now: float
    ) -> None:
        c = coupon.campaign
        value = d.discount_minor + (c.gift_value_minor if d.gift_sku else 0)
        expires = now + self.ledger.policy.hold_ttl_s if status == "held" else None
        insert_use(
            coupon.key,
            c.id,
            coupon.customer,
            checkout_id,
            status,
            True,
            d.discount_minor,
            value,
            d.currency or c.currency,
            expires,
            _use_detail(coupon.via, d.gift_sku),
        )
        self._count_use(coupon.key, c.id, coupon.customer, value, +1)
        if expires is not None:
            self._next_expiry = min(self._next_expiry, expires)

    # ------------------------------------------------------------ public operations

    def redeem(
        self, code: str, basket: Basket, ctx: Context = Context(), op_id: str | None = None
    ) -> Decision:
        """Standalone: decide and redeem at once."""
        request = self._request("redeem", code)
        return self._replay(op_id, request) or self._attempt(
            "redeem", code, basket, ctx, op_id, op_id or uuid.uuid4().hex, "committed", request
        )

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
        request = self._request("hold", checkout_id, code)
        return self._replay(op_id, request) or self._attempt(
            "hold", code, basket, ctx, op_id, checkout_id, "held", request
        )

    def best(
        self,
        codes: list[str],
        basket: Basket,
        ctx: Context = Context(),
    ) -> tuple[list[Decision], list[Decision]]:
        """Which of the presented coupons to use together for the most value. Records
        nothing; returns (chosen, refused)."""
        now = self.now()
        self._expire_holds(now)
        coupons: dict[str, Coupon] = {}
        refused: list[Decision] = []
        for code in codes:
            try:
                coupon = self._resolve(code, basket, ctx, now)
                self._check_limits(coupon, 0, basket)
                coupons[coupon.key] = coupon
            except _Refuse as r:
                refused.append(self._refusal(r, basket))
        combo = best_combination([(k, c.campaign) for k, c in coupons.items()], basket)
        chosen = [
            Decision(
                True,
                Reason.OK,
                a.discount_minor,
                a.campaign.currency,
                a.campaign.id,
                a.campaign.name,
                a.key,
                gift_sku=a.gift_sku,
            )
            for a in combo.applied
        ]
        for key, exc in combo.refused.items():
            c = coupons[key].campaign
            refused.append(
                Decision(
                    False, exc.reason, 0, basket.currency, c.id, c.name, key, detail=exc.detail
                )
            )
        return chosen, refused

    def _held_coupons(self, checkout_id: str) -> list[Coupon]:
        out = []
        for u in Use.select().where((Use.checkout_id == checkout_id) & (Use.status == "held")):
            campaign = self.ledger.campaigns.get(u.campaign)
            if campaign is not None:
                out.append(
                    Coupon(
                        u.serial,
                        int(u.serial, 16),
                        campaign,
                        u.customer,
                        json.loads(u.detail).get("via", "token"),
                    )
                )
        return out

    def _checkout_coupons(self, checkout_id: str) -> list[dict[str, Any]]:
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
        from_status: str,
        to_status: str,
        missing: Reason,
    ) -> Decision:
        request = self._request(kind, checkout_id)
        cached = self._replay(op_id, request)
        if cached:
            return cached
        now = self.now()
        self._expire_holds(now)

        def work() -> Decision:
            uses = list(
                Use.select().where((Use.checkout_id == checkout_id) & (Use.status == from_status))
            )
            if not uses:
                known = Use.select().where(Use.checkout_id == checkout_id).exists()
                reason = missing if known else Reason.UNKNOWN_CHECKOUT
                if (
                    known
                    and kind == "commit"
                    and Use.select()
                    .where((Use.checkout_id == checkout_id) & (Use.status == "expired"))
                    .exists()
                ):
                    reason = Reason.HOLD_EXPIRED
                d = Decision(False, reason, checkout_id=checkout_id)
                self._append(kind, d, None, ctx, now, op_id, checkout_id=checkout_id)
                return d
            total = 0
            seqs = []
            for u in uses:
                campaign = self.ledger.campaigns.get(u.campaign)
                counts = to_status == "committed" or (
                    to_status == "reversed"
                    and campaign is not None
                    and not campaign.reusable_after_refund
                )
                if u.counts and not counts:
                    self._count(u, -1)
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
                )
                seqs.append(self._append(kind, d, None, ctx, now, op_id, checkout_id=checkout_id))
                total += u.discount_minor
            return Decision(
                True,
                Reason.OK,
                total,
                uses[0].currency,
                checkout_id=checkout_id,
                journal_seq=seqs[-1],
                coupons=self._checkout_coupons(checkout_id),
            )

        return self._record(op_id, work, request)

    def commit(
        self, checkout_id: str, op_id: str | None = None, ctx: Context = Context()
    ) -> Decision:
        """POS step 2: payment done; held coupons become redeemed."""
        return self._transition(
            "commit", checkout_id, op_id, ctx, "held", "committed", Reason.UNKNOWN_CHECKOUT
        )

    def release(
        self, checkout_id: str, op_id: str | None = None, ctx: Context = Context()
    ) -> Decision:
        """Checkout cancelled: held coupons are free again."""
        return self._transition(
            "release", checkout_id, op_id, ctx, "held", "released", Reason.UNKNOWN_CHECKOUT
        )

    def reverse(
        self, checkout_id: str, op_id: str | None = None, ctx: Context = Context()
    ) -> Decision:
        """Refund: committed coupons are reversed; the campaign says whether they (and the
        budget) become usable again."""
        return self._transition(
            "reverse", checkout_id, op_id, ctx, "committed", "reversed", Reason.NOT_COMMITTED
        )

    def _expire_holds(self, now: float) -> None:
        if now < self._next_expiry:
            return

        def work() -> Decision:
            expired = list(Use.select().where((Use.status == "held") & (Use.expires_at <= now)))
            for u in expired:
                Use.update(status="expired", counts=False, expires_at=None).where(
                    Use.id == u.id
                ).execute()
                self._count(u, -1)
                self._append(
                    "expire",
                    Decision(
                        False,
                        Reason.HOLD_EXPIRED,
                        u.discount_minor,
                        u.currency,
                        u.campaign,
                        serial=u.serial,
                    ),
                    None,
                    Context(source="engine"),
                    now,
                    None,
                    checkout_id=u.checkout_id,
                )
            return Decision(True, Reason.OK)

        self._record(None, work)
        nxt = Use.select(pw.fn.MIN(Use.expires_at)).where(Use.status == "held").scalar()
        self._next_expiry = nxt if nxt is not None else float("inf")

    # ------------------------------------------------------------ ledger

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
            self.journal.append(
                at_ms=int(now * 1000),
                kind="flag",
                accepted=True,
                reason=fraud.FLAG_CLOCK_RESET,
                source="manager",
                detail={"manager": manager, "detail": d.detail},
            )
            set_meta("trusted_time", str(int(now)))
            set_meta("clock_reset_seq", str(self.journal.head_seq))
            return d

        decision = self._record(None, work)
        if decision.accepted:
            self._trusted_s = now
            self.journal.last_at_ms = int(now * 1000)
        return decision

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
            self.journal.append(
                at_ms=int(now * 1000),
                kind="ledger",
                accepted=True,
                reason="applied",
                source=ctx.source,
                detail={"version": version},
            )
        for exc in result.refused:
            self._flag_ledger(exc, now)
        return Decision(not result.refused, Reason.OK)

    def _flag_ledger(self, exc: LedgerRefused, now: float) -> None:
        self.journal.append(
            at_ms=int(now * 1000),
            kind="flag",
            accepted=False,
            reason=fraud.FLAG_LEDGER_REFUSED,
            source="ledger",
            detail={"kind": exc.kind, "detail": exc.detail, "have_version": self.ledger.version},
        )


__all__ = ["Context", "Decision", "Engine", "database_proxy"]
