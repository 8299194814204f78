"""coupons/checkout.py on a real engine, without the web: the states and the steps allowed
from each, the one idempotency layer over the journal's operation table (a key is one
request of any kind, its first answer kept across restarts), and a state read off the
coupons when its update was lost."""

from __future__ import annotations

from typing import Any

import pytest

from coupons import checkout
from coupons.checkout import Checkouts, CheckoutState, Refused, Step, Why
from coupons.journal import Operation, PosCheckout
from coupons.reasons import Reason
from tests.conftest import World, basket

DOC = {"currency": "CNY", "total_minor": 12800}


@pytest.fixture
def codes(world: World) -> list[str]:
    world.campaign(id="SPEND", kind="threshold", amount_minor=2000, stacking="any")
    codes = world.issue("SPEND", 3)
    world.sync_ledger()
    return codes


def opened(world: World, op: str, till: str = "t1") -> dict[str, Any]:
    return checkout.open_checkout(world.engine, till, basket(12800), DOC, None, f"{till}:{op}", op)


def refused(why: Why, fn: Any, *args: Any) -> Refused:
    with pytest.raises(Refused) as exc:
        fn(*args)
    assert exc.value.why is why, exc.value.detail
    return exc.value


def test_states_and_the_steps_allowed_from_each(world: World, codes: list[str]) -> None:
    e, steps = world.engine, Checkouts()
    cid = opened(world, "o1")["checkout_id"]
    assert steps.apply(e, "t1", cid, codes[0], "t1:a1").decision.accepted
    refused(Why.NOT_COMMITTED, checkout.step, e, "t1", cid, Step.REVERSE, "t1:r0")
    assert checkout.step(e, "t1", cid, Step.COMMIT, "t1:c1").accepted
    assert checkout.load(e, cid, "t1").state is CheckoutState.COMMITTED  # type: ignore[union-attr]
    refused(Why.CLOSED, steps.apply, e, "t1", cid, codes[1], "t1:a2")
    refused(Why.CLOSED, checkout.step, e, "t1", cid, Step.RELEASE, "t1:l1")
    assert checkout.step(e, "t1", cid, Step.REVERSE, "t1:r1").accepted
    assert checkout.read(e, "t1", cid)["state"] == "reversed"
    # Another till's checkout is not that till's business; an unknown one is unknown.
    refused(Why.UNKNOWN, checkout.read, e, "t2", cid)
    refused(Why.UNKNOWN, checkout.step, e, "t2", cid, Step.COMMIT, "t2:c1")
    refused(Why.UNKNOWN, steps.apply, e, "t1", "nosuch", codes[1], "t1:a3")


def test_a_key_is_one_request_of_any_kind_and_its_answer_outlives_a_restart(
    world: World, codes: list[str]
) -> None:
    first = opened(world, "k1")
    cid = first["checkout_id"]
    assert Operation.get_or_none(Operation.op_id == "t1:k1") is not None
    e = world.reopen()
    assert opened(world, "k1") == first  # the stored first answer, not a new checkout
    refused(Why.CONFLICT, Checkouts().apply, e, "t1", cid, codes[0], "t1:k1")
    refused(Why.CONFLICT, checkout.step, e, "t1", cid, Step.COMMIT, "t1:k1")
    applied = Checkouts().apply(e, "t1", cid, codes[0], "t1:k2")
    with pytest.raises(Refused):
        checkout.open_checkout(e, "t1", basket(12800), DOC, None, "t1:k2", "k1")
    # The checkout's record pruned: its open is still answered from the journal.
    PosCheckout.delete().where(PosCheckout.id == cid).execute()
    assert opened(world, "k1") == first
    again = Checkouts().apply(e, "t1", cid, codes[0], "t1:k2")
    assert again.decision.replayed and again.decision.journal_seq == applied.decision.journal_seq


def test_a_retried_apply_lists_the_coupons_as_then_within_a_run_and_as_now_after(
    world: World, codes: list[str]
) -> None:
    e, steps = world.engine, Checkouts()
    cid = opened(world, "o1")["checkout_id"]
    first = steps.apply(e, "t1", cid, codes[0], "t1:a1")
    assert checkout.step(e, "t1", cid, Step.COMMIT, "t1:c1").accepted
    again = steps.apply(e, "t1", cid, codes[0], "t1:a1")
    assert again.decision.replayed and again.coupons == first.coupons
    assert [c["status"] for c in again.coupons] == ["held"]
    after = Checkouts().apply(e, "t1", cid, codes[0], "t1:a1")  # a new run
    assert [c["status"] for c in after.coupons] == ["committed"]


@pytest.mark.parametrize(
    ("stored", "done", "step"),
    [("open", "committed", Step.COMMIT), ("committed", "reversed", Step.REVERSE)],
)
def test_a_lost_state_update_is_read_off_the_coupons(
    world: World, codes: list[str], stored: str, done: str, step: Step
) -> None:
    e = world.engine
    cid = opened(world, "o1")["checkout_id"]
    Checkouts().apply(e, "t1", cid, codes[0], "t1:a1")
    if step is Step.REVERSE:
        assert checkout.step(e, "t1", cid, Step.COMMIT, "t1:c1").accepted
    assert checkout.step(e, "t1", cid, step, "t1:s1").accepted
    PosCheckout.update(state=stored).where(PosCheckout.id == cid).execute()
    assert checkout.read(e, "t1", cid)["state"] == done


def test_a_sale_without_coupons_is_answered_here_with_the_engines_promise(
    world: World,
) -> None:
    e = world.engine
    cid = opened(world, "o1")["checkout_id"]
    seq = e.journal.head_seq
    d = checkout.step(e, "t1", cid, Step.COMMIT, "t1:c1")
    assert d.accepted and d.reason is Reason.OK and d.discount_minor == 0
    assert e.journal.head_seq == seq
    # The engine answers the retry from the same record.
    again = e.commit(cid, "t1:c1")
    assert again.replayed and again.accepted
    refused(Why.NOT_COMMITTED, checkout.step, e, "t1", cid, Step.REVERSE, "t1:r1")
