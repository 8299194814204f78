"""What a campaign as typed would give a few baskets (issue 14, item 3): the tills' own
basket rules (coupons.rules.apply_in_order, the call coupons/checks.py decides with) on
sample baskets of 50, 100 and 300 in its currency and on one the user types. Nothing is
saved; the customer checks (audience, limits) need a shopper and are not previewed."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from babel.numbers import get_currency_precision

from coupons.i18n import N_
from coupons.reasons import Reason
from coupons.rules import MAX_LINES, Basket, Campaign, Line, Refusal, apply_in_order

SAMPLES_MAJOR = (50, 100, 300)
KEY = "preview"  # the coupon's key in the combination: there is no serial yet
MAX_TYPED_LINES = 50
BAD_LINE = N_("Line {n}: write it as SKU PRICE [QUANTITY] [CATEGORY], e.g. TEA-1 12.50 2 drinks.")
TOO_MANY_LINES = N_("At most 50 lines.")
TYPED = N_("Your basket")


class BasketError(ValueError):
    """A typed basket line that is not `SKU PRICE [QUANTITY] [CATEGORY]`: its line number."""

    def __init__(self, line: int) -> None:
        super().__init__(f"basket line {line}")
        self.line = line


@dataclass(frozen=True)
class Outcome:
    """One basket's answer: the discount (and gift) or the reason the tills would give."""

    label: str  # "" for a sample basket (its total says what it is), TYPED for the typed one
    basket: Basket
    reason: Reason  # Reason.OK when the coupon applies
    discount_minor: int = 0
    gift_sku: str | None = None
    detail: str = ""


def exponent(currency: str) -> int:
    return get_currency_precision(currency) if len(currency) == 3 else 2


def samples(currency: str) -> list[Basket]:
    """Standalone baskets (one line, the total the cashier keys in), as a till sees them."""
    scale = 10 ** exponent(currency)
    return [Basket(currency, (Line("TOTAL", "", 1, m * scale),)) for m in SAMPLES_MAJOR]


def typed_basket(text: str, currency: str) -> Basket | None:
    """The basket typed as lines of `SKU PRICE [QUANTITY] [CATEGORY]` (price in major
    units); None when nothing is typed."""
    rows = [r.split() for r in text.splitlines()]
    numbered = [(n, r) for n, r in enumerate(rows, start=1) if r]
    if not numbered:
        return None
    if len(numbered) > min(MAX_TYPED_LINES, MAX_LINES):
        raise BasketError(0)
    lines = []
    for n, parts in numbered:
        if not 2 <= len(parts) <= 4:
            raise BasketError(n)
        try:
            price = Decimal(parts[1].replace(",", "")).scaleb(exponent(currency))
            qty = int(parts[2]) if len(parts) > 2 else 1
        except (InvalidOperation, ValueError):
            raise BasketError(n) from None
        if not price.is_finite() or price != price.to_integral_value() or price < 0:
            raise BasketError(n)
        if not 1 <= qty <= 100_000 or price > 10**10:
            raise BasketError(n)
        category = parts[3] if len(parts) > 3 else ""
        lines.append(Line(parts[0], category, qty, int(price)))
    return Basket(currency, tuple(lines))


def outcome(campaign: Campaign, basket: Basket, label: str = "") -> Outcome:
    try:
        combo = apply_in_order([(KEY, campaign)], basket)
    except Refusal as exc:
        return Outcome(label, basket, exc.reason, detail=exc.detail)
    if KEY in combo.refused:
        why = combo.refused[KEY]
        return Outcome(label, basket, why.reason, detail=why.detail)
    [applied] = combo.applied
    return Outcome(label, basket, Reason.OK, applied.discount_minor, applied.gift_sku)


def preview(campaign: Campaign, typed: Basket | None) -> list[Outcome]:
    found = [outcome(campaign, b) for b in samples(campaign.currency)]
    if typed is not None:
        found.append(outcome(campaign, typed, TYPED))
    return found


def refused_now(campaign: Campaign, now: float) -> Reason | None:
    """Why a till would refuse every coupon of it at `now` whatever the basket (its dates,
    days and hours, a pause), or None."""
    try:
        campaign.check_time(now)
        campaign.check_paused()
    except Refusal as exc:
        return exc.reason
    return None


__all__ = ["BasketError", "Outcome", "preview", "refused_now", "typed_basket"]
