"""POS checkouts: the stored checkout, its states and steps, and the one idempotency layer.

A checkout is opened with its basket, collects coupons (the engine's holds) while open, and
then is committed or released; a committed one can be reversed. Every function here is an
engine job: it takes the Engine and runs on the engine worker, the journal's one writer, so
two requests for one checkout are taken in turn and the second sees the first's state. The
journal's Operation table is the one record of which operation id got which first answer
(the engine's own for the coupon steps, this module's for the steps it answers itself)."""

from __future__ import annotations

import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from coupons.decision import Context, CouponUse, Decision
from coupons.engine import Engine
from coupons.journal import LIVE_USES, Operation, PosCheckout, UseStatus, insert_operation
from coupons.jsontypes import JSONObject
from coupons.reasons import STEP_REFUSED, Reason
from coupons.rules import Basket, InputError, best_combination

log = logging.getLogger(__name__)

KEEP_MS = 7 * 86_400_000  # stored checkouts older than this go (the journal keeps every step)
# Coupon lists of first apply answers kept for retries within one run (see Checkouts).
MAX_REMEMBERED = 20_000
# The best combination of no coupons (a checkout just opened).
NOTHING_BEST: JSONObject = {"discount_minor": 0, "value_minor": 0, "coupons": [], "refused": {}}


class CheckoutState(StrEnum):
    OPEN = "open"
    COMMITTED = "committed"
    RELEASED = "released"
    REVERSED = "reversed"


class Step(StrEnum):
    COMMIT = "commit"
    RELEASE = "release"
    REVERSE = "reverse"


# The state each step needs, and the state it leaves the checkout in.
TRANSITIONS: dict[Step, tuple[CheckoutState, CheckoutState]] = {
    Step.COMMIT: (CheckoutState.OPEN, CheckoutState.COMMITTED),
    Step.RELEASE: (CheckoutState.OPEN, CheckoutState.RELEASED),
    Step.REVERSE: (CheckoutState.COMMITTED, CheckoutState.REVERSED),
}


class Why(StrEnum):
    """Why a request was refused before the engine decided (nothing is stored)."""

    UNKNOWN = "unknown-checkout"
    CLOSED = "checkout-closed"
    NOT_COMMITTED = "not-committed"
    CONFLICT = "operation-conflict"


REASONS = {
    Why.UNKNOWN: Reason.UNKNOWN_CHECKOUT,
    Why.CLOSED: Reason.UNKNOWN_CHECKOUT,
    Why.NOT_COMMITTED: Reason.NOT_COMMITTED,
    Why.CONFLICT: Reason.OPERATION_CONFLICT,
}


class Refused(Exception):
    """`words`: the sentence for the cashier (a msgid) when the reason's own would be
    untrue, e.g. a commit of a refunded sale (STEP_REFUSED)."""

    def __init__(self, why: Why, detail: str, words: str | None = None) -> None:
        super().__init__(detail)
        self.why, self.detail, self.reason = why, detail, REASONS[why]
        self.words = words


@dataclass(frozen=True)
class Checkout:
    id: str
    till: str
    basket: Basket
    cashier: str | None
    state: CheckoutState


@dataclass(frozen=True)
class Applied:
    decision: Decision
    coupons: list[CouponUse]


def unknown(checkout_id: str) -> Refused:
    return Refused(Why.UNKNOWN, f"no checkout {checkout_id} at this terminal")


# ---------------------------------------------------------------- idempotency


def first_answer(op: str, request: str) -> str | None:
    """The first answer (JSON text) stored for this operation id, None when it was never
    answered; Refused(CONFLICT) when it was used for another request."""
    row = Operation.get_or_none(Operation.op_id == op)
    if row is None:
        return None
    if row.request != request:
        raise Refused(Why.CONFLICT, "this Idempotency-Key was used for another request")
    return str(row.response)


def first_decision(op: str, request: str) -> Decision | None:
    """A coupon step's first decision, marked as a replay (as the engine replays it)."""
    stored = first_answer(op, request)
    if stored is None:
        return None
    decision = Decision.from_dict(json.loads(stored))
    decision.replayed = True
    return decision


# ---------------------------------------------------------------- stored checkouts


def prune(engine: Engine) -> int:
    """Drop stored checkouts older than KEEP_MS (the daemon's start-up)."""
    cutoff = int(engine.now() * 1000) - KEEP_MS
    return int(PosCheckout.delete().where(PosCheckout.opened_ms < cutoff).execute())


def _derived(stored: CheckoutState, coupons: list[CouponUse]) -> CheckoutState:
    """A step's new state is stored after the engine's own transaction, best effort: one a
    fault or a power cut kept from being stored is read off the coupons, which the engine
    changed with the journal."""
    statuses = {c["status"] for c in coupons}
    if UseStatus.HELD in statuses:
        return stored
    if stored is CheckoutState.OPEN:
        for done in (UseStatus.REVERSED, UseStatus.COMMITTED, UseStatus.RELEASED):
            if done in statuses:
                return CheckoutState(done)
    if (
        stored is CheckoutState.COMMITTED
        and UseStatus.REVERSED in statuses
        and UseStatus.COMMITTED not in statuses
    ):
        return CheckoutState.REVERSED
    return stored


def load(engine: Engine, checkout_id: str, till: str) -> Checkout | None:
    """The stored checkout (None: never opened here, or pruned); another till's checkout is
    not this till's business (Refused UNKNOWN)."""
    row = PosCheckout.get_or_none(PosCheckout.id == checkout_id)
    if row is None:
        return None
    if row.till != till:
        raise unknown(checkout_id)
    try:
        basket = Basket.from_dict(json.loads(row.basket))
    except (InputError, ValueError):
        log.error("stored checkout %s has an unreadable basket; ignored", checkout_id)
        return None
    state = CheckoutState(row.state)
    if state in (CheckoutState.OPEN, CheckoutState.COMMITTED):
        state = _derived(state, engine.checkout_coupons(checkout_id))
    return Checkout(row.id, row.till, basket, row.cashier, state)


def _store_state(checkout_id: str, state: CheckoutState) -> None:
    """Best effort: the engine's journal is the record (see _derived)."""
    try:
        PosCheckout.update(state=state.value).where(PosCheckout.id == checkout_id).execute()
    except Exception as exc:
        log.warning("checkout %s: state %s not stored: %s", checkout_id, state, exc)


def best(engine: Engine, coupons: list[CouponUse], basket: Basket) -> JSONObject:
    """The best combination of the checkout's live coupons for its basket."""
    held = [
        (c["serial"], engine.ledger.campaigns[c["campaign"]])
        for c in coupons
        if c["status"] in LIVE_USES and c["campaign"] in engine.ledger.campaigns
    ]
    combo = best_combination(held, basket)
    return {
        "discount_minor": combo.discount_minor,
        "value_minor": combo.value_minor,
        "coupons": [a.key for a in combo.applied],
        "refused": {k: r.reason.value for k, r in combo.refused.items()},
    }


def view(
    checkout_id: str,
    co: Checkout | None,
    coupons: list[CouponUse],
    best_doc: JSONObject | None,
) -> dict[str, object]:
    """What a till reads of a checkout (state `unknown`: not stored here, only its coupons)."""
    return {
        "checkout_id": checkout_id,
        "state": co.state.value if co else "unknown",
        "basket_total_minor": co.basket.total_minor if co else None,
        "currency": co.basket.currency if co else None,
        "coupons": coupons,
        "best": best_doc,
    }


# ---------------------------------------------------------------- the steps


def open_checkout(
    engine: Engine,
    till: str,
    basket: Basket,
    basket_doc: Mapping[str, object],
    cashier: str | None,
    op: str,
    request: str,
) -> dict[str, object]:
    """Open a checkout; a retry of the same request gets the first answer, forever."""
    stored = first_answer(op, request)
    if stored is not None:
        return dict(json.loads(stored))
    row = PosCheckout.get_or_none(PosCheckout.open_key == op)
    if row is not None:  # opened before opens were stored as operations
        if row.open_fingerprint != request:
            raise Refused(Why.CONFLICT, "this Idempotency-Key was used for another request")
        basket = Basket.from_dict(json.loads(row.basket))
        co = Checkout(row.id, row.till, basket, row.cashier, CheckoutState.OPEN)
        return view(co.id, co, [], dict(NOTHING_BEST))
    co = Checkout(uuid.uuid4().hex, till, basket, cashier, CheckoutState.OPEN)
    answer = view(co.id, co, [], dict(NOTHING_BEST))
    with engine.db.atomic():  # the checkout and its first answer, together
        PosCheckout.insert(
            id=co.id,
            till=till,
            basket=json.dumps(basket_doc, sort_keys=True),
            cashier=cashier,
            state=co.state.value,
            open_key=op,
            open_fingerprint=request,
            opened_ms=int(engine.now() * 1000),
        ).execute()
        insert_operation(op, request, engine.journal.head_seq, json.dumps(answer))
    return answer


def read(engine: Engine, till: str, checkout_id: str) -> dict[str, object]:
    co = load(engine, checkout_id, till)
    coupons = engine.checkout_coupons(checkout_id)
    if co is None and not coupons:
        raise unknown(checkout_id)
    return view(checkout_id, co, coupons, best(engine, coupons, co.basket) if co else None)


class Checkouts:
    """The coupon steps. Holds one thing in memory, for one run of the daemon: the coupons
    each first apply answer listed, so that a retry within the run gets that body again
    (docs/pos-api.md); after a restart a retry lists the coupons as they are now. Whether
    and what was answered is always the journal's."""

    def __init__(self) -> None:
        self._listed: OrderedDict[str, str] = OrderedDict()  # op -> coupons as JSON text

    def apply(self, engine: Engine, till: str, checkout_id: str, code: str, op: str) -> Applied:
        """Hold a coupon for an open checkout; a retry gets the first decision however the
        checkout moved on since (committed, released, pruned)."""
        first = first_decision(op, engine.request_key("hold", checkout_id, code))
        if first is not None:
            listed = self._listed.get(op)
            coupons = json.loads(listed) if listed else engine.checkout_coupons(checkout_id)
            return Applied(first, coupons)
        co = load(engine, checkout_id, till)
        if co is None:
            raise unknown(checkout_id)
        if co.state is not CheckoutState.OPEN:
            raise Refused(
                Why.CLOSED,
                f"checkout {co.id} is {co.state}: coupons go only to an open checkout",
                STEP_REFUSED.get(("apply", co.state.value)),
            )
        ctx = Context(source="pos", cashier=co.cashier or co.till)
        decision = engine.hold(checkout_id, code, co.basket, ctx, op)
        coupons = engine.checkout_coupons(checkout_id)
        if not decision.replayed:
            self._listed[op] = json.dumps(coupons)
            while len(self._listed) > MAX_REMEMBERED:
                self._listed.popitem(last=False)
        return Applied(decision, coupons)


def step(engine: Engine, till: str, checkout_id: str, kind: Step, op: str) -> Decision:
    """Commit, release or reverse a checkout, from the state TRANSITIONS allows. A retry
    gets the step's first answer whatever came after."""
    co = load(engine, checkout_id, till)
    first = first_decision(op, engine.request_key(kind.value, checkout_id))
    if first is not None:
        return first
    method = {
        Step.COMMIT: engine.commit,
        Step.RELEASE: engine.release,
        Step.REVERSE: engine.reverse,
    }
    coupons = bool(engine.checkout_coupons(checkout_id))
    if co is None:  # not stored here (pruned): the engine's coupons decide
        if not coupons:
            raise unknown(checkout_id)
        return method[kind](checkout_id, op, Context(source="pos"))
    need, done = TRANSITIONS[kind]
    if co.state is not need or (kind is Step.REVERSE and not coupons):
        raise _wrong_state(co, kind)
    if not coupons:  # a sale without coupons: answered here, with the engine's promise
        d = Decision(
            True, Reason.OK, 0, co.basket.currency, checkout_id=checkout_id, step=kind.value
        )
        with engine.db.atomic():  # the answer and the new state, together
            insert_operation(
                op,
                engine.request_key(kind.value, checkout_id),
                engine.journal.head_seq,
                json.dumps(d.to_dict()),
            )
            PosCheckout.update(state=done.value).where(PosCheckout.id == checkout_id).execute()
        return d
    d = method[kind](checkout_id, op, Context(source="pos", cashier=co.cashier or co.till))
    if d.accepted and not d.replayed:
        _store_state(checkout_id, done)
    return d


def _wrong_state(co: Checkout, kind: Step) -> Refused:
    need, done = TRANSITIONS[kind]
    words = STEP_REFUSED.get((kind.value, co.state.value))
    if kind is Step.REVERSE:
        why = "has no redeemed coupon" if co.state is need else f"is {co.state}"
        return Refused(
            Why.NOT_COMMITTED,
            f"checkout {co.id} {why}: only a checkout paid with coupons can be reversed",
            words,
        )
    return Refused(
        Why.CLOSED,
        f"checkout {co.id} is {co.state}: only an {need} checkout can be {done}",
        words,
    )
