"""What an edit of a running campaign may change (docs/central.md, "Editing a campaign"):
what its coupons promise the shopper may only grow once coupons are out, and the id, kind
and currency never change. Pure: the caller reads the stored campaign and the clock."""

from __future__ import annotations

from coupons.i18n import N_
from coupons.rules import Campaign, CampaignKind

KIND_FIXED = N_(
    "The kind cannot change: coupons already made say what they give. "
    "End this campaign and add a new one."
)
CURRENCY_FIXED = N_(
    "The currency cannot change: coupons already made are worth an amount in it. "
    "End this campaign and add a new one."
)
ID_FIXED = N_("The campaign id cannot change: every coupon of the campaign carries it.")
LESS_GENEROUS = N_(
    "Coupons of this campaign are already out: this may only change in the shopper's favour."
)
GIFT_FIXED = N_("Coupons of this campaign are already out: the gift cannot change.")
STORES_NARROWED = N_(
    "Coupons of this campaign are already out: stores may be added, none taken away."
)
STARTED = N_("The campaign has started: its start cannot move.")
END_NOT_AHEAD = N_(
    "This end is not in the future: to end the campaign now, use End on the campaign list."
)
FINISHED = N_("This campaign has ended: it cannot be edited. Add a new campaign instead.")


def _less_generous(old: Campaign, new: Campaign) -> dict[str, str]:
    """Document fields where `new` gives a shopper less than `old` did. The central's
    plausibility check (trust.py) bounds offline redemptions by the current document, and
    printed coupons state the old terms: neither may be undercut."""
    out: dict[str, str] = {}
    if new.kind in (CampaignKind.THRESHOLD, CampaignKind.FIXED):
        if new.amount_minor < old.amount_minor:
            out["amount_minor"] = LESS_GENEROUS
    if new.kind is CampaignKind.PERCENT:
        if new.percent_bp < old.percent_bp:
            out["percent_bp"] = LESS_GENEROUS
        if new.cap_minor is not None and (old.cap_minor is None or new.cap_minor < old.cap_minor):
            out["cap_minor"] = LESS_GENEROUS
    if new.kind is CampaignKind.GIFT:
        if new.gift_sku != old.gift_sku:
            out["gift_sku"] = GIFT_FIXED
        if new.gift_value_minor < old.gift_value_minor:
            out["gift_value_minor"] = LESS_GENEROUS
    if new.min_spend_minor > old.min_spend_minor:
        out["min_spend_minor"] = LESS_GENEROUS
    narrowed = bool(new.stores) and (not old.stores or not old.stores <= new.stores)
    if narrowed:
        out["stores"] = STORES_NARROWED
    return out


def refusals(old: Campaign, new: Campaign, live: bool, now: int) -> dict[str, str]:
    """Document field -> why this edit of it is refused (empty: the edit may be saved).
    `live`: coupons of it have been issued or redeemed, so shoppers hold its terms."""
    out: dict[str, str] = {}
    if new.id != old.id:
        out["id"] = ID_FIXED
    if new.kind is not old.kind:
        out["kind"] = KIND_FIXED
    if new.currency != old.currency:
        out["currency"] = CURRENCY_FIXED
    if live and not out:
        out.update(_less_generous(old, new))
    started = old.valid_from is None or old.valid_from <= now
    if new.valid_from != old.valid_from and started:
        out["valid_from"] = STARTED
    if new.valid_until != old.valid_until and new.valid_until is not None:
        if new.valid_until <= now:
            out["valid_until"] = END_NOT_AHEAD
    return out


__all__ = ["FINISHED", "refusals"]
