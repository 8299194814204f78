"""The rules engine shared by terminal and central: campaigns, baskets, discounts,
stacking order and the best combination. Pure functions of their inputs."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from coupons.fields import InputError as InputError  # callers catch it from here
from coupons.fields import (
    amount,
    currency_code,
    minutes,
    one_of,
    opt,
    req,
    strset,
    timestamp,
    typed,
)
from coupons.jsontypes import JSONObject
from coupons.money import allocate, percent_of
from coupons.reasons import Reason


class CampaignKind(StrEnum):
    """What a campaign gives; the values are the ledger's and the journal's words."""

    THRESHOLD = "threshold"
    PERCENT = "percent"
    FIXED = "fixed"
    GIFT = "gift"


class Stacking(StrEnum):
    """With which other coupons a campaign shares a basket."""

    EXCLUSIVE = "exclusive"
    GROUP = "group"  # only with campaigns of the same stack_group
    ANY = "any"


KIND_ORDER = {
    CampaignKind.PERCENT: 0,
    CampaignKind.THRESHOLD: 1,
    CampaignKind.FIXED: 2,
    CampaignKind.GIFT: 3,
}
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_LINES = 500
MAX_PRESENTED = 10  # best combination enumerates subsets: 2**10 is still instant


class Refusal(Exception):
    """A rule says no; carries the reason code."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(detail or reason.value)
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------- a campaign's fields


def _percent_bp(doc: Mapping[str, object], where: str) -> int | None:
    """Basis points, from 'percent_bp' or from 'percent' (a number of per cent)."""
    percent_bp = opt(doc, "percent_bp", int, where)
    if percent_bp is not None and "percent" in doc:
        raise InputError(f"{where}: give 'percent' or 'percent_bp', not both")
    if percent_bp is None and "percent" in doc:
        pct = typed(doc["percent"], "percent", (int, float), where)
        if not 0 < pct <= 100:  # also refuses NaN and infinity, which round() cannot take
            raise InputError(f"{where}: 'percent' must be above 0 and at most 100")
        percent_bp = round(pct * 100)  # 8.7 * 100 is 869.999... in binary floating point
    return percent_bp


def _days(doc: Mapping[str, object], where: str) -> frozenset[int]:
    days: frozenset[int] = frozenset()
    listed: list[object] = opt(doc, "days", list, where, [])
    listed = listed + opt(doc, "days_of_week", list, where, [])
    for d in listed:
        if isinstance(d, str) and d[:3].lower() in DAYS:
            days |= {DAYS.index(d[:3].lower())}
        elif isinstance(d, int) and 0 <= d <= 6:
            days |= {d}
        else:
            raise InputError(f"{where}: day '{d}' is not mon..sun")
    return days


def _hours(doc: Mapping[str, object], where: str) -> tuple[tuple[int, int], ...]:
    hours: list[tuple[int, int]] = []
    spans: list[object] = opt(doc, "hours", list, where, [])
    for span in spans:
        if not isinstance(span, str) or "-" not in span:
            raise InputError(f"{where}: hours must look like '10:00-11:00'")
        start, end = (minutes(t.strip(), where) for t in span.split("-", 1))
        if end > start:
            hours.append((start, end))
        elif end < start:  # a late window past midnight, e.g. 22:00-02:00
            hours += [(start, 24 * 60), (0, end)] if end else [(start, 24 * 60)]
        else:
            raise InputError(f"{where}: hours window '{span}' is empty")
    return tuple(hours)


def _timezone(doc: Mapping[str, object], where: str) -> str:
    tz = opt(doc, "timezone", str, where, "UTC")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(f"{where}: unknown timezone '{tz}'") from None
    return tz


# ---------------------------------------------------------------- campaigns


@dataclass(frozen=True, slots=True)
class Campaign:
    id: str
    name: str
    kind: CampaignKind
    currency: str
    amount_minor: int = 0  # threshold and fixed: amount off
    percent_bp: int = 0  # percent: basis points, 1500 = 15 %
    cap_minor: int | None = None  # percent: most it can take off
    min_spend_minor: int = 0  # eligible subtotal needed
    gift_sku: str | None = None
    gift_name: str | None = None
    gift_value_minor: int = 0  # what the gift is worth, for ranking and budgets
    valid_from: int | None = None
    valid_until: int | None = None
    days_of_week: frozenset[int] = frozenset()  # 0 = Monday
    hours: tuple[tuple[int, int], ...] = ()  # [start, end) minutes since midnight
    timezone: str = "UTC"
    include_categories: frozenset[str] = frozenset()
    include_skus: frozenset[str] = frozenset()
    exclude_categories: frozenset[str] = frozenset()
    exclude_skus: frozenset[str] = frozenset()
    new_customers_only: bool = False
    tiers: frozenset[str] = frozenset()
    stores: frozenset[str] = frozenset()
    uses_per_coupon: int = 1
    uses_per_customer: int | None = None
    budget_count: int | None = None
    budget_minor: int | None = None
    stacking: Stacking = Stacking.EXCLUSIVE
    stack_group: str | None = None
    order: int | None = None
    reusable_after_refund: bool = True
    per_basket: int = 1
    # Head office paused it (redeem-central campaign pause): tills refuse it with
    # campaign_paused until it is resumed. Written only when true, so the documents, ledgers
    # and hashes of campaigns that were never paused stay what they were before the field.
    paused: bool = False

    @property
    def item_level(self) -> bool:
        return bool(self.include_categories or self.include_skus)

    @property
    def apply_order(self) -> int:
        """Item-level before basket-level; percent before threshold before fixed before gift,
        unless the campaign names its own order."""
        if self.order is not None:
            return self.order
        return (0 if self.item_level else 10) + KIND_ORDER[self.kind]

    @classmethod
    def from_dict(cls, doc: Mapping[str, object]) -> Campaign:
        if not isinstance(doc, Mapping):
            raise InputError("campaign must be a table/object")
        cid = req(doc, "id", str, "campaign")
        where = f"campaign {cid}"
        if not cid or len(cid) > 32 or not all(c.isalnum() or c in "-_" for c in cid):
            raise InputError(f"{where}: 'id' must be 1-32 letters, digits, '-' or '_'")
        known = set(cls.__dataclass_fields__) | {"percent", "days", "hours"}
        for key in doc:
            if key not in known:
                raise InputError(f"{where}: unknown field '{key}'")
        # The order of the reads is the order of the errors a document with several faults
        # gets: the first one found is the one reported.
        kind = one_of(CampaignKind, req(doc, "kind", str, where), "kind", where)
        currency = currency_code(doc, where)
        percent_bp = _percent_bp(doc, where)
        days = _days(doc, where)
        hours = _hours(doc, where)
        tz = _timezone(doc, where)
        stacking = one_of(
            Stacking, opt(doc, "stacking", str, where, "exclusive"), "stacking", where
        )
        camp = cls(
            id=cid,
            name=opt(doc, "name", str, where, cid),
            kind=kind,
            currency=currency,
            amount_minor=amount(doc, "amount_minor", where, 0) or 0,
            percent_bp=percent_bp or 0,
            cap_minor=amount(doc, "cap_minor", where),
            min_spend_minor=amount(doc, "min_spend_minor", where, 0) or 0,
            gift_sku=opt(doc, "gift_sku", str, where),
            gift_name=opt(doc, "gift_name", str, where),
            gift_value_minor=amount(doc, "gift_value_minor", where, 0) or 0,
            valid_from=timestamp(doc.get("valid_from"), "valid_from", where),
            valid_until=timestamp(doc.get("valid_until"), "valid_until", where),
            days_of_week=days,
            hours=hours,
            timezone=tz,
            include_categories=strset(doc, "include_categories", where),
            include_skus=strset(doc, "include_skus", where),
            exclude_categories=strset(doc, "exclude_categories", where),
            exclude_skus=strset(doc, "exclude_skus", where),
            new_customers_only=opt(doc, "new_customers_only", bool, where, False),
            tiers=strset(doc, "tiers", where),
            stores=strset(doc, "stores", where),
            uses_per_coupon=opt(doc, "uses_per_coupon", int, where, 1),
            uses_per_customer=opt(doc, "uses_per_customer", int, where),
            budget_count=opt(doc, "budget_count", int, where),
            budget_minor=amount(doc, "budget_minor", where),
            stacking=stacking,
            stack_group=opt(doc, "stack_group", str, where),
            order=opt(doc, "order", int, where),
            reusable_after_refund=opt(doc, "reusable_after_refund", bool, where, True),
            per_basket=opt(doc, "per_basket", int, where, 1),
            paused=opt(doc, "paused", bool, where, False),
        )
        camp._check(where)
        return camp

    def _check(self, where: str) -> None:
        if self.kind in (CampaignKind.THRESHOLD, CampaignKind.FIXED) and self.amount_minor <= 0:
            raise InputError(f"{where}: '{self.kind}' needs a positive 'amount_minor'")
        if self.kind is CampaignKind.THRESHOLD and self.min_spend_minor <= 0:
            raise InputError(f"{where}: 'threshold' needs a positive 'min_spend_minor'")
        if self.kind is CampaignKind.PERCENT and not 0 < self.percent_bp <= 10_000:
            raise InputError(f"{where}: 'percent' must be above 0 and at most 100")
        if self.kind is CampaignKind.GIFT and not self.gift_sku:
            raise InputError(f"{where}: 'gift' needs a 'gift_sku'")
        if self.stacking is Stacking.GROUP and not self.stack_group:
            raise InputError(f"{where}: stacking 'group' needs a 'stack_group'")
        for name in ("uses_per_coupon", "per_basket", "uses_per_customer", "budget_count"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"{where}: '{name}' must be at least 1")
        if (
            self.valid_from is not None
            and self.valid_until is not None
            and self.valid_until <= self.valid_from
        ):
            raise InputError(f"{where}: 'valid_until' is not after 'valid_from'")
        for start, end in self.hours:
            if end <= start:
                raise InputError(f"{where}: an hours window ends before it starts")

    def to_dict(self) -> JSONObject:
        out: JSONObject = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if name == "paused" and not value:
                continue  # see the field: absent means not paused
            if isinstance(value, frozenset):
                value = sorted(value)
            if name == "hours":
                value = [f"{s // 60:02d}:{s % 60:02d}-{e // 60:02d}:{e % 60:02d}" for s, e in value]
            if name == "days_of_week":
                value = sorted(value)
            if isinstance(value, StrEnum):
                value = value.value  # the plain text a ledger or a stored campaign carries
            out[name] = value
        return out

    # ---- checks that do not depend on the basket

    def check_time(self, t: float) -> None:
        if self.valid_from is not None and t < self.valid_from:
            raise Refusal(Reason.NOT_YET_VALID)
        if self.valid_until is not None and t >= self.valid_until:
            raise Refusal(Reason.EXPIRED)
        if self.days_of_week or self.hours:
            local = datetime.fromtimestamp(t, ZoneInfo(self.timezone))
            if self.days_of_week and local.weekday() not in self.days_of_week:
                raise Refusal(Reason.OUTSIDE_HOURS)
            minute = local.hour * 60 + local.minute
            if self.hours and not any(s <= minute < e for s, e in self.hours):
                raise Refusal(Reason.OUTSIDE_HOURS)

    def check_paused(self) -> None:
        if self.paused:
            raise Refusal(Reason.CAMPAIGN_PAUSED)

    def check_store(self, store: str) -> None:
        if self.stores and store not in self.stores:
            raise Refusal(Reason.WRONG_STORE)

    def check_audience(self, customer: Customer | None) -> None:
        if self.new_customers_only and not (customer and customer.new):
            raise Refusal(Reason.NOT_FOR_CUSTOMER, "new customers only")
        if self.tiers and not (customer and customer.tier in self.tiers):
            raise Refusal(Reason.NOT_FOR_CUSTOMER, "member tier")
        if self.uses_per_customer is not None and not (customer and customer.ref):
            raise Refusal(Reason.NOT_FOR_CUSTOMER, "needs a customer reference")

    def eligible(self, line: Line) -> bool:
        if line.sku in self.exclude_skus or line.category in self.exclude_categories:
            return False
        if self.item_level:
            return line.sku in self.include_skus or line.category in self.include_categories
        return True


# ---------------------------------------------------------------- baskets


@dataclass(frozen=True, slots=True)
class Line:
    sku: str
    category: str
    quantity: int
    unit_price_minor: int
    name: str = ""

    @property
    def total_minor(self) -> int:
        return self.quantity * self.unit_price_minor


@dataclass(frozen=True, slots=True)
class Customer:
    ref: str | None = None  # a hash from the POS/loyalty system, never a name or phone
    tier: str | None = None
    new: bool = False


@dataclass(frozen=True, slots=True)
class Basket:
    currency: str
    lines: tuple[Line, ...]
    customer: Customer | None = None

    @property
    def total_minor(self) -> int:
        return sum(line.total_minor for line in self.lines)

    @classmethod
    def from_dict(cls, doc: object) -> Basket:
        if not isinstance(doc, Mapping):
            raise InputError("basket must be a JSON object")
        for key in doc:
            if key not in ("currency", "lines", "customer", "total_minor"):
                raise InputError(f"basket: unknown field '{key}'")
        currency = currency_code(doc, "basket")
        raw_lines = opt(doc, "lines", list, "basket", None)
        lines: list[Line] = []
        if raw_lines is None:
            # Standalone mode: the cashier keys in only the total.
            total = amount(doc, "total_minor", "basket")
            if total is None:
                raise InputError("basket: needs 'lines' or 'total_minor'")
            lines = [Line("TOTAL", "", 1, total)]
        else:
            if len(raw_lines) > MAX_LINES:
                raise InputError(f"basket: more than {MAX_LINES} lines")
            for i, raw in enumerate(raw_lines):
                where = f"basket line {i + 1}"
                if not isinstance(raw, Mapping):
                    raise InputError(f"{where}: must be an object")
                for key in raw:
                    if key not in ("sku", "category", "quantity", "unit_price_minor", "name"):
                        raise InputError(f"{where}: unknown field '{key}'")
                qty = opt(raw, "quantity", int, where, 1)
                price = req(raw, "unit_price_minor", int, where)
                if not 1 <= qty <= 100_000:
                    raise InputError(f"{where}: 'quantity' must be 1..100000")
                if not 0 <= price <= 10**10:
                    raise InputError(f"{where}: 'unit_price_minor' must be 0..10^10")
                lines.append(
                    Line(
                        req(raw, "sku", str, where),
                        opt(raw, "category", str, where, ""),
                        qty,
                        price,
                        opt(raw, "name", str, where, ""),
                    )
                )
            stated = amount(doc, "total_minor", "basket")
            if stated is not None and stated != sum(line.total_minor for line in lines):
                raise InputError("basket: 'total_minor' does not match the sum of the lines")
        customer = None
        raw_c = doc.get("customer")
        if raw_c is not None:
            if not isinstance(raw_c, Mapping):  # as _opt says it (Mapping is no concrete type)
                raise InputError("basket: 'customer' has the wrong type")
            for key in raw_c:
                if key not in ("ref", "tier", "new"):
                    raise InputError(f"basket customer: unknown field '{key}'")
            customer = Customer(
                opt(raw_c, "ref", str, "basket customer"),
                opt(raw_c, "tier", str, "basket customer"),
                opt(raw_c, "new", bool, "basket customer", False),
            )
        return cls(currency, tuple(lines), customer)


# ---------------------------------------------------------------- applying coupons


@dataclass(frozen=True, slots=True)
class Applied:
    key: str  # the coupon's serial (hex) or code id
    campaign: Campaign
    discount_minor: int
    per_line: tuple[int, ...]
    gift_sku: str | None = None

    @property
    def value_minor(self) -> int:
        return self.discount_minor + (self.campaign.gift_value_minor if self.gift_sku else 0)


def apply_one(campaign: Campaign, basket: Basket, remaining: Sequence[int], key: str) -> Applied:
    """Apply one coupon to what is left of each line after earlier coupons."""
    if basket.currency != campaign.currency:
        raise Refusal(Reason.WRONG_CURRENCY)
    weights = [
        rest if campaign.eligible(line) else 0
        for line, rest in zip(basket.lines, remaining, strict=True)
    ]
    eligible = sum(weights)
    if eligible <= 0:
        raise Refusal(Reason.NO_ELIGIBLE_ITEMS)
    if eligible < campaign.min_spend_minor:
        raise Refusal(Reason.BELOW_MINIMUM)
    if campaign.kind is CampaignKind.GIFT:
        return Applied(key, campaign, 0, tuple(0 for _ in weights), campaign.gift_sku)
    if campaign.kind is CampaignKind.PERCENT:
        off = percent_of(eligible, campaign.percent_bp)
        if campaign.cap_minor is not None:
            off = min(off, campaign.cap_minor)
    else:
        off = campaign.amount_minor
    off = max(0, min(off, eligible))
    return Applied(key, campaign, off, tuple(allocate(off, weights)))


def compatible(a: Campaign, b: Campaign) -> bool:
    if Stacking.EXCLUSIVE in (a.stacking, b.stacking):
        return False
    if a.stacking is Stacking.GROUP and b.stack_group != a.stack_group:
        return False
    return not (b.stacking is Stacking.GROUP and a.stack_group != b.stack_group)


def stack_problem(campaigns: Sequence[Campaign]) -> str | None:
    """Why this set of coupons cannot share one basket, or None when it can."""
    counts: dict[str, int] = {}
    for c in campaigns:
        counts[c.id] = counts.get(c.id, 0) + 1
        if counts[c.id] > c.per_basket:
            return f"campaign {c.id} allows {c.per_basket} per basket"
    for a, b in itertools.combinations(campaigns, 2):
        if not compatible(a, b):
            return f"{a.id} and {b.id} do not stack"
    return None


@dataclass(frozen=True)
class Combination:
    applied: tuple[Applied, ...]
    refused: dict[str, Refusal] = field(default_factory=dict)

    @property
    def discount_minor(self) -> int:
        return sum(a.discount_minor for a in self.applied)

    @property
    def value_minor(self) -> int:
        return sum(a.value_minor for a in self.applied)


def apply_in_order(coupons: Iterable[tuple[str, Campaign]], basket: Basket) -> Combination:
    """Apply a stackable set in the defined order; a coupon that fails is refused, the rest
    still apply (each sees what earlier ones left)."""
    ordered = sorted(coupons, key=lambda kc: (kc[1].apply_order, kc[1].id, kc[0]))
    problem = stack_problem([c for _, c in ordered])
    if problem:
        raise Refusal(Reason.NOT_STACKABLE, problem)
    remaining = [line.total_minor for line in basket.lines]
    applied: list[Applied] = []
    refused: dict[str, Refusal] = {}
    for key, campaign in ordered:
        try:
            a = apply_one(campaign, basket, remaining, key)
        except Refusal as exc:
            refused[key] = exc
            continue
        remaining = [r - d for r, d in zip(remaining, a.per_line, strict=True)]
        applied.append(a)
    return Combination(tuple(applied), refused)


def best_combination(coupons: Sequence[tuple[str, Campaign]], basket: Basket) -> Combination:
    """The stackable subset worth most to the shopper (discount plus gift value); ties go to
    fewer coupons, so the shopper keeps the rest for another day."""
    too_many = {
        k: Refusal(Reason.NOT_STACKABLE, f"at most {MAX_PRESENTED} coupons at once")
        for k, _ in list(coupons)[MAX_PRESENTED:]
    }
    coupons = list(coupons)[:MAX_PRESENTED]
    best: Combination | None = None
    best_key: tuple[int, int] = (-1, 0)
    last_refusals: dict[str, Refusal] = {}
    for size in range(len(coupons), 0, -1):
        for subset in itertools.combinations(coupons, size):
            if stack_problem([c for _, c in subset]):
                continue
            combo = apply_in_order(subset, basket)
            if combo.refused:
                last_refusals.update(combo.refused)
                continue
            key = (combo.value_minor, -len(combo.applied))
            if key > best_key:
                best, best_key = combo, key
    if best is None:
        return Combination((), {**last_refusals, **too_many})
    chosen = {a.key for a in best.applied}
    refused = {
        k: last_refusals.get(k, Refusal(Reason.NOT_STACKABLE))
        for k, _ in coupons
        if k not in chosen
    }
    return Combination(best.applied, {**refused, **too_many})
