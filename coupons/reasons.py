"""Stable reason codes for every decision, and the sentence a cashier says for each."""

from __future__ import annotations

from enum import StrEnum

from coupons.i18n import N_, translate


class Reason(StrEnum):
    OK = "ok"
    MALFORMED = "malformed"
    UNKNOWN_CODE = "unknown_code"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    KEY_REVOKED = "key_revoked"
    UNKNOWN_CAMPAIGN = "unknown_campaign"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    CAMPAIGN_PAUSED = "campaign_paused"
    OUTSIDE_HOURS = "outside_hours"
    REVOKED = "revoked"
    ALREADY_REDEEMED = "already_redeemed"
    ALREADY_APPLIED = "already_applied"
    CUSTOMER_LIMIT = "customer_limit"
    BUDGET_EXHAUSTED = "budget_exhausted"
    BELOW_MINIMUM = "below_minimum"
    NO_ELIGIBLE_ITEMS = "no_eligible_items"
    NOT_FOR_CUSTOMER = "not_for_customer"
    WRONG_STORE = "wrong_store"
    WRONG_CURRENCY = "wrong_currency"
    NOT_STACKABLE = "not_stackable"
    TAG_MISMATCH = "tag_mismatch"
    TAG_REPLAYED = "tag_replayed"
    LEDGER_STALE = "ledger_stale"
    NO_LEDGER = "no_ledger"
    CLOCK_UNTRUSTED = "clock_untrusted"
    SUSPECTED_FRAUD = "suspected_fraud"
    UNKNOWN_CHECKOUT = "unknown_checkout"
    HOLD_EXPIRED = "hold_expired"
    NOT_COMMITTED = "not_committed"
    VOIDED = "voided"
    VOID_REFUSED = "void_refused"
    OPERATION_CONFLICT = "operation_conflict"
    NEEDS_TOTAL = "needs_total"
    STORAGE_FAILURE = "storage_failure"
    INTERNAL_ERROR = "internal_error"

    def message(self, lang: str = "en") -> str:
        return translate(MESSAGES[self], lang)


# What the cashier can say to the shopper. English is the msgid; other languages live in
# coupons/locale/<lang>.po.
MESSAGES: dict[Reason, str] = {
    Reason.OK: N_("Coupon accepted."),
    Reason.MALFORMED: N_("This code is not a coupon we can read. Please show the coupon again."),
    Reason.UNKNOWN_CODE: N_("This code was not found. Please check it and type it again."),
    Reason.BAD_SIGNATURE: N_("This coupon is not genuine and cannot be used."),
    Reason.UNKNOWN_KEY: N_("This coupon was issued by a source this till does not recognise."),
    Reason.KEY_REVOKED: N_("This coupon's issuer has been withdrawn, so it cannot be used."),
    Reason.UNKNOWN_CAMPAIGN: N_("This promotion is not known at this store."),
    Reason.NOT_YET_VALID: N_("This coupon is not valid yet."),
    Reason.EXPIRED: N_("This coupon has expired."),
    Reason.CAMPAIGN_PAUSED: N_("This promotion is paused for now and cannot be used."),
    Reason.OUTSIDE_HOURS: N_("This coupon can only be used at certain days or hours."),
    Reason.REVOKED: N_("This coupon has been cancelled by the issuer."),
    Reason.ALREADY_REDEEMED: N_("This coupon has already been used."),
    Reason.ALREADY_APPLIED: N_("This coupon is already applied to this sale."),
    Reason.CUSTOMER_LIMIT: N_("You have already used this offer the maximum number of times."),
    Reason.BUDGET_EXHAUSTED: N_("This promotion has run out."),
    Reason.BELOW_MINIMUM: N_("Your purchase does not reach this coupon's minimum spend yet."),
    Reason.NO_ELIGIBLE_ITEMS: N_("None of the items in your basket are covered by this coupon."),
    Reason.NOT_FOR_CUSTOMER: N_("This coupon is reserved for other customers."),
    Reason.WRONG_STORE: N_("This coupon cannot be used at this store."),
    Reason.WRONG_CURRENCY: N_("This coupon is for a different currency."),
    Reason.NOT_STACKABLE: N_("This coupon cannot be combined with the coupons already applied."),
    Reason.TAG_MISMATCH: N_("This coupon tag is not the original one and cannot be used."),
    Reason.TAG_REPLAYED: N_(
        "This tag reading was already used. Please hold the coupon tag to the reader again."
    ),
    Reason.LEDGER_STALE: N_(
        "This till needs an update before it can accept this coupon. A manager can approve it."
    ),
    Reason.NO_LEDGER: N_("This till is not ready to accept coupons yet."),
    Reason.CLOCK_UNTRUSTED: N_("This till's clock needs checking before coupons can be accepted."),
    Reason.SUSPECTED_FRAUD: N_("This coupon needs a manager's check before it can be used."),
    Reason.UNKNOWN_CHECKOUT: N_("This till has no open checkout with that number."),
    Reason.HOLD_EXPIRED: N_(
        "The coupon was held too long and has been released. Please scan it again."
    ),
    Reason.NOT_COMMITTED: N_(
        "This checkout was not paid with a coupon, so there is nothing to refund."
    ),
    Reason.VOIDED: N_("The coupon was taken off this sale. It can be used another time."),
    Reason.VOID_REFUSED: N_(
        "This coupon can no longer be taken off the sale here. A manager can refund it."
    ),
    Reason.OPERATION_CONFLICT: N_(
        "The till sent this request twice with different details. Please start the step again."
    ),
    Reason.NEEDS_TOTAL: N_("The coupon is ready. Please enter the purchase total to apply it."),
    Reason.STORAGE_FAILURE: N_(
        "This till cannot save coupon records right now. Please try another till."
    ),
    Reason.INTERNAL_ERROR: N_(
        "Something went wrong at this till. Please try again or ask a manager."
    ),
}


# Reason.ALREADY_REDEEMED when a till of the same store holds the coupon (coupons/claims.py):
# the cashier can tell the shopper where it went.
USED_AT = N_("This coupon was already used at till {till}.")


def used_at_message(till: str, lang: str = "en") -> str:
    return translate(USED_AT, lang).format(till=till)


# What a till hears when a checkout step is done (Reason.OK's "Coupon accepted." is for a
# coupon, not for a payment or a refund), and when it was done on a sale without a coupon
# (only a paid sale with coupons can be refunded).
STEP_DONE: dict[str, str] = {
    "commit": N_("Payment recorded. The coupons on this sale are now used."),
    "release": N_("Sale cancelled. Its coupons are free to use again."),
    "reverse": N_("Refund recorded, together with the coupons used on this sale."),
}
STEP_DONE_NO_COUPON: dict[str, str] = {
    "commit": N_("Payment recorded. No coupon was applied to this checkout."),
    "release": N_("Checkout cancelled. No coupon was applied to it."),
}

# Why a step, or a coupon ("apply"), cannot be taken in the checkout's state: (what was
# asked, the state the checkout is in) -> the sentence. A reverse of a paid checkout that had
# no coupon says Reason.NOT_COMMITTED's own.
STEP_REFUSED: dict[tuple[str, str], str] = {
    ("apply", "committed"): N_("This sale is already paid. No coupon can be added to it."),
    ("apply", "released"): N_("This sale was cancelled. No coupon can be added to it."),
    ("apply", "reversed"): N_("This sale was refunded. No coupon can be added to it."),
    ("commit", "committed"): N_("This sale is already paid."),
    ("commit", "released"): N_("This sale was cancelled; it cannot be paid."),
    ("commit", "reversed"): N_("This sale was refunded; it cannot be paid."),
    ("release", "committed"): N_(
        "This sale is already paid, so it cannot be cancelled. Refund it instead."
    ),
    ("release", "released"): N_("This sale was already cancelled."),
    ("release", "reversed"): N_("This sale was refunded; it cannot be cancelled."),
    ("reverse", "open"): N_("This sale is not paid yet, so there is nothing to refund."),
    ("reverse", "released"): N_("This sale was cancelled, so there is nothing to refund."),
    ("reverse", "reversed"): N_("This sale was already refunded."),
}


def step_done(step: str, with_coupons: bool, lang: str = "en") -> str:
    """The sentence for a checkout step done (commit, release, reverse)."""
    words = STEP_DONE[step] if with_coupons else STEP_DONE_NO_COUPON.get(step, STEP_DONE[step])
    return translate(words, lang)
