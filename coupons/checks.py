"""Deciding a coupon without recording anything: resolve the scanned code (token or typed
code), then the checks in the order DESIGN.md fixes. The engine adds recording on top."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType

from coupons import cose, fraud, sun, tokens
from coupons.clock import Clock
from coupons.decision import Context, Coupon, Decision, Refuse, serial_hex
from coupons.fraud import Flag
from coupons.journal import Journal, tag_counter
from coupons.ledger import LedgerState
from coupons.ledger_store import LedgerStore
from coupons.reasons import Reason
from coupons.rules import Basket, Customer, Refusal, apply_in_order

# What a typed code is made of, as cashiers type them (tokens.normalize_code drops the rest).
CODE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -")


def well_formed_code(code: str) -> bool:
    """A typed code as cashiers type it: 4-64 ASCII letters and digits, with spaces and
    dashes between them. One the ledger does not hold is `unknown_code` (typed wrong);
    anything else that is neither a token nor a SUN URL is `malformed` (not a code at all)."""
    text = code.strip().upper()
    return set(text) <= CODE_CHARS and 4 <= len(tokens.normalize_code(text)) <= 64


class Checks:
    """The read-only half of the engine. Holds no state of its own: the ledger, the journal
    head (for trusted time) and the usage counters belong to the Engine."""

    ledger_store: LedgerStore
    clock: Clock
    store: str
    terminal: str
    journal: Journal
    bursts: fraud.BurstDetector
    _trusted_s: float
    clock_offset_s: float | None  # central time minus ours, as the last sync measured it
    own_usage: dict[str, tuple[int, int]]  # our uses the newest ledger's usage already counts
    # The same per (campaign, customer) for the ledger's customer_usage; none by default
    # (the central's own checker: the ledger's counts are the whole truth there).
    own_customer_usage: Mapping[tuple[str, str], int] = MappingProxyType({})
    serial_uses: Counter[str]
    customer_uses: Counter[tuple[str, str]]
    campaign_count: Counter[str]
    campaign_minor: Counter[str]

    @property
    def ledger(self) -> LedgerState:
        return self.ledger_store.state

    # ------------------------------------------------------------ time

    def now(self) -> float:
        return self.clock.now()

    def trusted_time(self) -> float:
        """Latest time we know has passed: last ledger issue time, last journal entry."""
        return max(self._trusted_s, float(self.ledger.issued_at), self.journal.last_at_ms / 1000.0)

    def clock_offset_ok(self) -> bool:
        """The last sync found the device clock near the central's (or none measured yet)."""
        limit = self.ledger.policy.max_clock_offset_s
        return self.clock_offset_s is None or not limit or abs(self.clock_offset_s) <= limit

    def clock_ok(self, now: float) -> bool:
        return (
            now >= self.trusted_time() - self.ledger.policy.clock_tolerance_s
            and self.clock_offset_ok()
        )

    def ledger_age_s(self, now: float | None = None) -> float | None:
        if not self.ledger.version:
            return None
        return max(0.0, (now if now is not None else self.now()) - self.ledger.issued_at)

    # ------------------------------------------------------------ resolving a coupon

    def _resolve(self, code: str, basket: Basket, ctx: Context, now: float) -> Coupon:
        led = self.ledger
        if not led.version:
            raise Refuse(Reason.NO_LEDGER, "no ledger imported")
        if not self.clock_offset_ok():
            # Measured against the central by sync: already journaled when it went wrong.
            raise Refuse(
                Reason.CLOCK_UNTRUSTED,
                f"clock is {-(self.clock_offset_s or 0.0):+.0f} s off the central's time "
                f"(limit {self.ledger.policy.max_clock_offset_s} s)",
            )
        if not self.clock_ok(now):
            raise Refuse(
                Reason.CLOCK_UNTRUSTED,
                f"clock {now:.0f} is before trusted time {self.trusted_time():.0f}",
                Flag(fraud.FLAG_CLOCK_ROLLBACK, f"clock {now:.0f}"),
            )
        claims: tokens.Claims | None = None
        tap: sun.SunRead | None = None
        if tokens.looks_like_token(code):
            coupon, claims = self._from_token(code, basket, ctx, now)
        elif sun.looks_like_sun(code):
            coupon, tap = self._from_sun(code, basket)
        else:
            coupon = self._from_code(code, basket)
        c = coupon.campaign
        try:
            c.check_time(now)
            # After the time window: an ended campaign keeps its pause (fail closed against
            # a till clock a little behind) and must still read as expired.
            c.check_paused()
        except Refusal as exc:
            raise Refuse(exc.reason, exc.detail, coupon=coupon) from None
        if c.stores and self.store not in c.stores:
            raise Refuse(
                Reason.WRONG_STORE,
                f"campaign for {sorted(c.stores)}",
                Flag(fraud.FLAG_WRONG_STORE, f"store {self.store}"),
                coupon,
            )
        if claims is not None and claims.tag_uid is not None and ctx.tag_uid != claims.tag_uid:
            raise Refuse(
                Reason.TAG_MISMATCH,
                "token bound to another tag",
                Flag(fraud.FLAG_TAG_MISMATCH, (ctx.tag_uid or b"").hex() or "no tag"),
                coupon,
            )
        if tap is not None and ctx.tag_uid is not None and ctx.tag_uid != tap.uid:
            # The URL of one SUN tag, written onto another (or mirrored by a phone).
            raise Refuse(
                Reason.TAG_MISMATCH,
                "SUN URL of another tag",
                Flag(fraud.FLAG_TAG_MISMATCH, f"read from {ctx.tag_uid.hex()}"),
                coupon,
            )
        tag_uid = tap.uid if tap is not None else ctx.tag_uid
        if tag_uid is not None and tag_uid in led.deny_tags:
            raise Refuse(
                Reason.SUSPECTED_FRAUD,
                "tag is deny-listed",
                Flag(fraud.FLAG_DENIED_TAG, tag_uid.hex()),
                coupon,
            )
        if tap is not None:
            high = tag_counter(c.id, tap.uid)
            if high is not None and tap.counter <= high:
                raise Refuse(
                    Reason.TAG_REPLAYED,
                    f"read counter {tap.counter}, already redeemed up to {high}",
                    Flag(sun.FLAG_REPLAY, f"counter {tap.counter} <= {high}"),
                    coupon,
                )
        if coupon.customer and coupon.customer in led.deny_customers:
            raise Refuse(
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
            tok = tokens.parse(code, self._issuer_key)
        except tokens.TokenMalformed as exc:
            raise Refuse(Reason.MALFORMED, str(exc)) from None
        kid = tok.message.kid
        if kid in led.revoked_kids:
            raise Refuse(Reason.KEY_REVOKED, f"issuer key {kid.hex()} revoked")
        cert = led.issuer_keys.get(kid)
        if cert is None:
            raise Refuse(Reason.UNKNOWN_KEY, f"issuer key {kid.hex()} not in ledger")
        if not cose.verify_sign1(tok.message, cert.public_key):
            raise Refuse(
                Reason.BAD_SIGNATURE,
                "signature does not verify",
                Flag(fraud.FLAG_FORGED, f"kid {kid.hex()}"),
            )
        claims = tok.claims
        if not cert.valid_at(claims.not_before):
            raise Refuse(Reason.UNKNOWN_KEY, "issuer key was not valid at issue time")
        campaign = led.campaigns.get(claims.campaign)
        if campaign is None:
            raise Refuse(Reason.UNKNOWN_CAMPAIGN, f"campaign {claims.campaign}")
        customer = claims.customer_ref.hex() if claims.customer_ref else None
        coupon = Coupon(
            serial_hex(claims.serial),
            claims.serial,
            campaign,
            customer or (basket.customer.ref if basket.customer else None),
            "token",
        )
        if now < claims.not_before:
            raise Refuse(Reason.NOT_YET_VALID, coupon=coupon)
        if now >= claims.expires:
            raise Refuse(Reason.EXPIRED, coupon=coupon)
        if customer and not (basket.customer and basket.customer.ref == customer):
            raise Refuse(
                Reason.NOT_FOR_CUSTOMER, "coupon issued to another customer", coupon=coupon
            )
        return coupon, claims

    def _issuer_key(self, kid: bytes) -> bytes | None:
        """The ledger's issuer public key for a kid: tokens.parse reads a link that
        form-encoding made ambiguous the way this key verifies."""
        cert = self.ledger.issuer_keys.get(kid)
        return None if cert is None else cert.public_key

    def _sun_read(self, code: str) -> tuple[sun.SunMessage, sun.SunRead]:
        """A SUN URL parsed and verified with its campaign's SDM key from the ledger."""
        try:
            msg = sun.parse(code)
        except sun.SunMalformed as exc:
            raise Refuse(Reason.MALFORMED, str(exc)) from None
        key = self.ledger.sun_keys.get(msg.campaign)
        if key is None:
            raise Refuse(Reason.UNKNOWN_KEY, f"no SUN key for campaign {msg.campaign}")
        try:
            return msg, sun.verify(msg, key)
        except sun.SunError as exc:
            raise Refuse(
                Reason.BAD_SIGNATURE,
                str(exc),
                Flag(fraud.FLAG_FORGED, f"SUN tag of campaign {msg.campaign}"),
            ) from None

    def _from_sun(self, code: str, basket: Basket) -> tuple[Coupon, sun.SunRead]:
        msg, tap = self._sun_read(code)
        campaign = self.ledger.campaigns.get(msg.campaign)
        if campaign is None:
            raise Refuse(Reason.UNKNOWN_CAMPAIGN, f"campaign {msg.campaign}")
        serial = sun.serial_for(campaign.id, tap.uid)
        coupon = Coupon(
            serial_hex(serial),
            serial,
            campaign,
            basket.customer.ref if basket.customer else None,
            "sun",
        )
        return coupon, tap

    def _from_code(self, code: str, basket: Basket) -> Coupon:
        led = self.ledger
        norm = tokens.normalize_code(code)
        if not 4 <= len(norm) <= 64:
            raise Refuse(Reason.MALFORMED, "not a coupon code")
        entry = led.plain_codes.get(tokens.plain_code_hash(led.plain_salt, norm))
        if entry is None:
            if well_formed_code(code):
                # A code as cashiers type them that the ledger does not hold: most likely
                # mistyped, so the cashier is asked to type it again, not to rescan.
                raise Refuse(Reason.UNKNOWN_CODE, "no such coupon code in the ledger")
            raise Refuse(Reason.MALFORMED, "unknown coupon code")
        campaign = led.campaigns.get(entry.campaign)
        if campaign is None:
            raise Refuse(Reason.UNKNOWN_CAMPAIGN, f"campaign {entry.campaign}")
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
            raise Refuse(Reason.REVOKED, coupon=coupon)
        if coupon.serial in led.redeemed or self.serial_uses[coupon.key] >= c.uses_per_coupon:
            raise Refuse(
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
            raise Refuse(exc.reason, exc.detail, coupon=coupon) from None
        if c.uses_per_customer is not None and coupon.customer:
            key = (c.id, coupon.customer)
            used = self.customer_uses[key]
            # Uses at other tills, as the ledger counts them (our synced ones taken out once,
            # as for budgets below).
            synced = led.customer_usage.get(key)
            if synced:
                used += max(0, synced - self.own_customer_usage.get(key, 0))
            if used >= c.uses_per_customer:
                raise Refuse(Reason.CUSTOMER_LIMIT, coupon=coupon)
        # The ledger's usage counts the whole chain, this till's synced uses included; those
        # are also in this till's own counters, so take them out once.
        total_count, total_minor = led.usage.get(c.id, (0, 0))
        own_count, own_minor = self.own_usage.get(c.id, (0, 0))
        elsewhere_count = max(0, total_count - own_count)
        elsewhere_minor = max(0, total_minor - own_minor)
        if (
            c.budget_count is not None
            and elsewhere_count + self.campaign_count[c.id] >= c.budget_count
        ):
            raise Refuse(Reason.BUDGET_EXHAUSTED, coupon=coupon)
        if (
            c.budget_minor is not None
            and elsewhere_minor + self.campaign_minor[c.id] + value_minor > c.budget_minor
        ):
            raise Refuse(Reason.BUDGET_EXHAUSTED, coupon=coupon)

    def _check_fraud_and_staleness(
        self, value_minor: int, ctx: Context, now: float, coupon: Coupon, warnings: list[str]
    ) -> list[Flag]:
        policy = self.ledger.policy
        burst = self.bursts.before_accept(self.terminal, ctx.cashier, now, policy)
        if burst:
            raise Refuse(Reason.SUSPECTED_FRAUD, burst.detail, burst, coupon)
        age = self.ledger_age_s(now) or 0.0
        flags: list[Flag] = []
        if age > policy.stale_warn_hours * 3600:
            warnings.append("ledger_stale")
        if age > policy.stale_block_hours * 3600 and value_minor > policy.stale_high_value_minor:
            if not ctx.manager_override:
                raise Refuse(
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
            raise Refuse(Reason.ALREADY_APPLIED, "already applied to this checkout", coupon=coupon)
        # Single use before the basket (DESIGN.md's order): a replayed coupon is reported and
        # flagged as a replay even when the basket would not qualify either.
        self._check_single_use(coupon)
        try:
            combo = apply_in_order(
                [(o.key, o.campaign) for o in others] + [(coupon.key, c)], basket
            )
        except Refusal as exc:
            raise Refuse(exc.reason, exc.detail, coupon=coupon) from None
        if coupon.key in combo.refused:
            why = combo.refused[coupon.key]
            raise Refuse(why.reason, why.detail, coupon=coupon)
        if combo.refused:
            # Stacking this one would take a held coupon below its own rules (a threshold
            # after a percent): refuse it rather than keep the held one's stale discount.
            key, why = next(iter(combo.refused.items()))
            raise Refuse(
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

    def _refusal(self, r: Refuse, basket: Basket) -> Decision:
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
