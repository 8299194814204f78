"""The failure categories a refusal falls into, as head office reads them (DOMAIN.md's
published split: network, expired, budget or stock, system; then the reasons the split
has no word for), each holding reason codes of coupons/reasons.py."""

from __future__ import annotations

from coupons.i18n import N_
from coupons.reasons import Reason

OTHER = "other"
# category -> (what a person reads, the reason codes it holds), in the order shown. An
# offline-first till has no network failures as such: what remains of them is a ledger
# the till could not fetch in time.
CATEGORIES: dict[str, tuple[str, frozenset[Reason]]] = {
    "network": (
        N_("Network: the till's ledger was missing or too old"),
        frozenset({Reason.LEDGER_STALE, Reason.NO_LEDGER}),
    ),
    "expired": (
        N_("Expired or not valid at that time"),
        frozenset(
            {
                Reason.EXPIRED,
                Reason.NOT_YET_VALID,
                Reason.OUTSIDE_HOURS,
                Reason.CAMPAIGN_PAUSED,
            }
        ),
    ),
    "budget": (
        N_("Budget or stock used up"),
        frozenset({Reason.BUDGET_EXHAUSTED, Reason.CUSTOMER_LIMIT}),
    ),
    "system": (
        N_("System faults"),
        frozenset(
            {
                Reason.STORAGE_FAILURE,
                Reason.INTERNAL_ERROR,
                Reason.CLOCK_UNTRUSTED,
                Reason.OPERATION_CONFLICT,
                Reason.UNKNOWN_CHECKOUT,
                Reason.HOLD_EXPIRED,
                Reason.VOID_REFUSED,
                Reason.NOT_COMMITTED,
            }
        ),
    ),
    "conditions": (
        N_("The coupon's conditions were not met"),
        frozenset(
            {
                Reason.BELOW_MINIMUM,
                Reason.NO_ELIGIBLE_ITEMS,
                Reason.NOT_FOR_CUSTOMER,
                Reason.WRONG_STORE,
                Reason.WRONG_CURRENCY,
                Reason.NOT_STACKABLE,
                Reason.NEEDS_TOTAL,
            }
        ),
    ),
    "trust": (
        N_("Used already, revoked, unreadable or not genuine"),
        frozenset(
            {
                Reason.MALFORMED,
                Reason.UNKNOWN_CODE,
                Reason.BAD_SIGNATURE,
                Reason.UNKNOWN_KEY,
                Reason.KEY_REVOKED,
                Reason.UNKNOWN_CAMPAIGN,
                Reason.REVOKED,
                Reason.ALREADY_REDEEMED,
                Reason.ALREADY_APPLIED,
                Reason.TAG_MISMATCH,
                Reason.TAG_REPLAYED,
                Reason.SUSPECTED_FRAUD,
            }
        ),
    ),
    OTHER: (N_("Other reasons"), frozenset({Reason.VOIDED})),
}
_OF = {reason.value: name for name, (_, held) in CATEGORIES.items() for reason in held}


def category(reason: str) -> str:
    """The category of a reason code; a code this version does not know (a newer till's)
    is `other`."""
    return _OF.get(reason, OTHER)


def label(name: str) -> str:
    """The English words for a category (a msgid: translate it for the page)."""
    return CATEGORIES[name][0]


__all__ = ["CATEGORIES", "OTHER", "category", "label"]
