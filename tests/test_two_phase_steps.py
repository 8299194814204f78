"""POS two-phase steps as the central and a POS see them: what a release journals, and what
a second release or a release after payment answers. Written to kill mutants that
`make mutate` found surviving (coupons/engine.py: commit, release, reverse)."""

from __future__ import annotations

import json

from coupons.journal import Entry
from coupons.reasons import Reason
from tests.conftest import World, basket


def _held(world: World, checkout: str) -> str:
    world.campaign(id="TEN", amount_minor=1000, stacking="any")
    (code,) = world.issue("TEN")
    world.sync_ledger()
    assert world.engine.hold(checkout, code, basket(5000)).accepted
    return code


def _paid(world: World, checkout: str) -> None:
    """Another checkout of the TEN campaign, held and paid."""
    (code,) = world.issue("TEN")
    world.sync_ledger()
    assert world.engine.hold(checkout, code, basket(5000)).accepted
    assert world.engine.commit(checkout).accepted


def test_a_release_is_journaled_as_a_release_of_that_coupon(world: World) -> None:
    """The central frees the coupon on the entry's kind: a release journaled under any
    other kind leaves it counted as held there."""
    _held(world, "co-1")
    d = world.engine.release("co-1")
    assert d.accepted
    entry = Entry.get(Entry.seq == d.journal_seq)
    assert (entry.kind, entry.checkout_id, entry.accepted) == ("release", "co-1", True)


def test_releasing_again_or_after_payment_is_refused_as_unknown_checkout(world: World) -> None:
    _held(world, "co-1")
    assert world.engine.release("co-1").accepted
    again = world.engine.release("co-1")
    assert not again.accepted and again.reason is Reason.UNKNOWN_CHECKOUT
    _paid(world, "co-2")
    paid = world.engine.release("co-2")
    assert not paid.accepted and paid.reason is Reason.UNKNOWN_CHECKOUT


def test_a_reverse_is_journaled_as_a_reverse(world: World) -> None:
    """The central gives the coupon (and the budget) back on a reverse entry."""
    _held(world, "co-1")
    commit = world.engine.commit("co-1")
    assert commit.accepted and commit.detail == ""  # a payment, not a cashier's void
    d = world.engine.reverse("co-1")
    assert d.accepted and d.detail == ""
    entry = Entry.get(Entry.seq == d.journal_seq)
    assert (entry.kind, entry.checkout_id, entry.accepted) == ("reverse", "co-1", True)


def test_paying_twice_is_refused_as_unknown_checkout(world: World) -> None:
    _held(world, "co-1")
    assert world.engine.commit("co-1").accepted
    again = world.engine.commit("co-1")  # no operation id: not a retry, a second payment
    assert not again.accepted and again.reason is Reason.UNKNOWN_CHECKOUT


def test_each_step_journals_the_coupon_as_the_central_reads_it(world: World) -> None:
    """The central settles a checkout from these entries alone: every commit, release and
    reverse entry names the coupon, its campaign, discount, currency, the checkout and the
    POS's operation id; the answer names the entry it was journaled as."""
    world.campaign(id="TOTE", kind="gift", gift_sku="TOTE-1", gift_value_minor=3900)
    world.campaign(id="TEN", amount_minor=1000, stacking="any")
    (tote,) = world.issue("TOTE")
    (ten,) = world.issue("TEN")
    world.sync_ledger()
    for checkout, code, campaign, discount, gift in (
        ("co-g", tote, "TOTE", 0, "TOTE-1"),
        ("co-t", ten, "TEN", 1000, None),
    ):
        held = world.engine.hold(checkout, code, basket(50000))
        assert held.accepted, held.reason
        for step, op in (("commit", "pay-1"), ("reverse", "refund-1")):
            d = getattr(world.engine, step)(checkout, op_id=f"{op}-{checkout}")
            assert d.accepted and d.discount_minor == discount and d.currency == "CNY"
            entry = Entry.get(Entry.seq == d.journal_seq)
            assert entry.kind == step and entry.op_id == f"{op}-{checkout}"
            assert (entry.checkout_id, entry.campaign, entry.serial) == (
                checkout,
                campaign,
                held.serial,
            )
            assert (entry.discount_minor, entry.currency) == (discount, "CNY")
            assert json.loads(entry.detail)["gift"] == gift


def test_a_refused_step_is_journaled_with_its_checkout_and_operation(world: World) -> None:
    d = world.engine.commit("co-none", op_id="pay-9")
    assert not d.accepted and d.reason is Reason.UNKNOWN_CHECKOUT and d.checkout_id == "co-none"
    entry = Entry.get(Entry.seq == d.journal_seq)
    assert (entry.kind, entry.checkout_id, entry.op_id, entry.accepted) == (
        "commit",
        "co-none",
        "pay-9",
        False,
    )


def test_reversing_a_checkout_that_never_was_is_unknown_not_unpaid(world: World) -> None:
    _held(world, "co-1")  # another checkout's coupon exists
    d = world.engine.reverse("co-never")
    assert not d.accepted and d.reason is Reason.UNKNOWN_CHECKOUT
    held_only = world.engine.reverse("co-1")  # held, not paid: nothing to refund yet
    assert not held_only.accepted and held_only.reason is Reason.NOT_COMMITTED


def test_one_lapsed_hold_does_not_make_another_paid_checkout_look_lapsed(world: World) -> None:
    _held(world, "co-late")
    world.clock.advance(world.engine.ledger.policy.hold_ttl_s + 60)
    late = world.engine.commit("co-late")
    assert not late.accepted and late.reason is Reason.HOLD_EXPIRED
    _paid(world, "co-paid")
    again = world.engine.commit("co-paid")
    assert not again.accepted and again.reason is Reason.UNKNOWN_CHECKOUT
    # Cancelling a lapsed hold: nothing is held any more, and it is not a payment.
    cancel = world.engine.release("co-late")
    assert not cancel.accepted and cancel.reason is Reason.UNKNOWN_CHECKOUT


def test_a_void_answer_names_the_campaign_of_the_coupon_taken_back(world: World) -> None:
    """The cashier's screen says which coupon came off the sale."""
    world.campaign(id="A", amount_minor=500, stacking="any")
    world.campaign(id="B", amount_minor=1000, stacking="any")
    (a,) = world.issue("A")
    (b,) = world.issue("B")
    world.sync_ledger()
    assert world.engine.redeem(a, basket(5000), checkout_id="sale-1").accepted
    used = world.engine.redeem(b, basket(5000), checkout_id="sale-1")
    d = world.engine.void("sale-1", 300)
    assert d.accepted and d.reason is Reason.VOIDED
    assert (d.campaign, d.serial, d.detail) == ("B", used.serial, "void")


def test_a_hold_is_journaled_and_its_operation_id_is_bound_to_checkout_and_coupon(
    world: World,
) -> None:
    """A POS retrying with the same operation id gets the same answer; the same id sent
    for another checkout or another coupon is a conflict, never a second hold."""
    code = _held_with_op(world)
    entry = Entry.get(Entry.op_id == "op-1")
    assert (entry.kind, entry.checkout_id, entry.accepted) == ("hold", "co-1", True)
    assert world.engine.hold("co-1", code, basket(5000), op_id="op-1").replayed
    (other,) = world.issue("TEN")
    world.sync_ledger()
    for checkout, coupon in (("co-2", code), ("co-1", other)):
        d = world.engine.hold(checkout, coupon, basket(5000), op_id="op-1")
        assert not d.accepted and d.reason is Reason.OPERATION_CONFLICT, (checkout, coupon)


def _held_with_op(world: World) -> str:
    world.campaign(id="TEN", amount_minor=1000, stacking="any")
    (code,) = world.issue("TEN")
    world.sync_ledger()
    assert world.engine.hold("co-1", code, basket(5000), op_id="op-1").accepted
    return code
