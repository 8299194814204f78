"""The redemption engine against a real central and a real journal: standalone and two-phase
redemption, idempotency, limits, bindings, clock and ledger trust, fraud signals, storage
faults, and a property that no coupon is ever counted twice."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from coupons import journal, setup, tokens
from coupons.clock import FixedClock
from coupons.decision import Context, Decision, serial_hex
from coupons.journal import Entry, Use
from coupons.ledger import Policy
from coupons.reasons import Reason
from sync.central.store import Central
from tests.conftest import T0, World, basket
from tests.master_key import KEY as MASTER_KEY

DAY = 24 * 3600


def key_of(token: str) -> str:
    return serial_hex(tokens.parse(token).claims.serial)


def flags(kind: str | None = None) -> list[Entry]:
    q = Entry.select().where(Entry.kind == "flag")
    if kind is not None:
        q = q.where(Entry.reason == kind)
    return list(q.order_by(Entry.seq))


def counted_uses(token: str) -> int:
    return Use.select().where((Use.serial == key_of(token)) & (Use.counts == True)).count()  # noqa: E712


def setup_coupons(world: World, n: int = 1, **doc: Any) -> list[str]:
    doc.setdefault("id", "TEN")
    doc.setdefault("stacking", "any")
    cid = world.campaign(**doc)
    toks = world.issue(cid, n)
    world.sync_ledger()
    return toks


# ---------------------------------------------------------------- standalone


def test_redeem_then_replay_is_refused_and_flagged(world: World) -> None:
    (tok,) = setup_coupons(world)
    first = world.engine.redeem(tok, basket(5000))
    assert first.accepted and first.reason is Reason.OK
    assert first.discount_minor == 1000 and first.currency == "CNY"
    assert first.campaign == "TEN" and first.serial == key_of(tok)
    assert first.journal_seq is not None
    second = world.engine.redeem(tok, basket(5000))
    assert not second.accepted and second.reason is Reason.ALREADY_REDEEMED
    assert second.discount_minor == 0
    (flag,) = flags("replay")
    assert flag.serial == key_of(tok) and flag.seq > (second.journal_seq or 0)
    assert counted_uses(tok) == 1


def test_used_coupon_says_used_even_with_a_small_basket(world: World) -> None:
    # A replay must be reported (and flagged) as a replay, not as "spend more".
    (tok,) = setup_coupons(world, kind="threshold", min_spend_minor=10000, amount_minor=2000)
    assert world.engine.redeem(tok, basket(10000)).accepted
    again = world.engine.redeem(tok, basket(500))
    assert again.reason is Reason.ALREADY_REDEEMED
    assert len(flags("replay")) == 1


def test_every_attempt_is_journaled(world: World) -> None:
    (tok,) = setup_coupons(world)
    before = Entry.select().count()
    world.engine.redeem(tok, basket(5000))
    world.engine.redeem("CPN1:garbage", basket(5000))
    entries = list(Entry.select().where(Entry.seq > before).order_by(Entry.seq))
    assert [(e.kind, e.accepted, e.reason) for e in entries] == [
        ("redeem", True, "ok"),
        ("redeem", False, "malformed"),
    ]
    assert journal.verify().ok


def test_check_records_nothing(world: World) -> None:
    (tok,) = setup_coupons(world)
    before = Entry.select().count()
    preview = world.engine.check(tok, basket(5000))
    assert preview.accepted and preview.discount_minor == 1000
    assert world.engine.check(tok, basket(5000)).accepted
    assert Entry.select().count() == before
    assert world.engine.redeem(tok, basket(5000)).accepted


def test_used_state_survives_restart(world: World) -> None:
    (tok,) = setup_coupons(world)
    assert world.engine.redeem(tok, basket(5000)).accepted
    world.reopen()
    assert world.engine.redeem(tok, basket(5000)).reason is Reason.ALREADY_REDEEMED


def test_typed_code(world: World) -> None:
    world.campaign(id="CODE", stacking="any")
    (code,) = world.issue("CODE", codes=True)
    world.sync_ledger()
    messy = " " + code.lower().replace("-", " ") + " "
    assert world.engine.redeem(messy, basket(5000)).accepted
    assert world.engine.redeem(code, basket(5000)).reason is Reason.ALREADY_REDEEMED


# ---------------------------------------------------------------- idempotency


def test_same_op_id_gives_same_answer_once(world: World) -> None:
    (tok,) = setup_coupons(world)
    first = world.engine.redeem(tok, basket(5000), op_id="op-1")
    again = world.engine.redeem(tok, basket(5000), op_id="op-1")
    assert first.accepted and not first.replayed
    assert again.accepted and again.replayed
    assert again.journal_seq == first.journal_seq
    assert again.discount_minor == first.discount_minor and again.serial == first.serial
    assert counted_uses(tok) == 1
    assert not flags("replay")
    world.reopen()
    after = world.engine.redeem(tok, basket(5000), op_id="op-1")
    assert after.accepted and after.replayed and after.journal_seq == first.journal_seq
    assert counted_uses(tok) == 1
    # A new operation on the same coupon is a real replay.
    assert world.engine.redeem(tok, basket(5000), op_id="op-2").reason is Reason.ALREADY_REDEEMED


def test_refusal_is_idempotent_too(world: World) -> None:
    (tok,) = setup_coupons(world, stores=["S9"])
    first = world.engine.redeem(tok, basket(5000), op_id="op-1")
    entries = Entry.select().count()
    again = world.engine.redeem(tok, basket(5000), op_id="op-1")
    assert not again.accepted and again.reason is Reason.WRONG_STORE and again.replayed
    assert again.journal_seq == first.journal_seq
    assert Entry.select().count() == entries


def test_commit_idempotent(world: World) -> None:
    (tok,) = setup_coupons(world)
    assert world.engine.hold("co-1", tok, basket(5000), op_id="h1").accepted
    first = world.engine.commit("co-1", op_id="c1")
    again = world.engine.commit("co-1", op_id="c1")
    assert first.accepted and again.accepted and again.replayed
    assert again.discount_minor == first.discount_minor == 1000
    # Without the op id a second commit finds nothing held.
    assert not world.engine.commit("co-1").accepted


# ---------------------------------------------------------------- two-phase


def test_hold_then_commit(world: World) -> None:
    (tok,) = setup_coupons(world)
    held = world.engine.hold("co-1", tok, basket(5000))
    assert held.accepted and held.checkout_id == "co-1" and held.discount_minor == 1000
    assert [c["status"] for c in held.coupons] == ["held"]
    done = world.engine.commit("co-1")
    assert done.accepted and done.discount_minor == 1000 and done.checkout_id == "co-1"
    assert [c["status"] for c in done.coupons] == ["committed"]
    assert world.engine.redeem(tok, basket(5000)).reason is Reason.ALREADY_REDEEMED
    assert world.engine.hold("co-2", tok, basket(5000)).reason is Reason.ALREADY_REDEEMED


def test_held_coupon_cannot_be_held_elsewhere(world: World) -> None:
    (tok,) = setup_coupons(world)
    assert world.engine.hold("co-1", tok, basket(5000)).accepted
    other = world.engine.hold("co-2", tok, basket(5000))
    assert not other.accepted and other.reason is Reason.ALREADY_REDEEMED
    assert world.engine.redeem(tok, basket(5000)).reason is Reason.ALREADY_REDEEMED
    same = world.engine.hold("co-1", tok, basket(5000))  # this very checkout holds it
    assert same.reason is Reason.ALREADY_APPLIED
    assert counted_uses(tok) == 1


def test_release_frees_the_coupon(world: World) -> None:
    (tok,) = setup_coupons(world)
    assert world.engine.hold("co-1", tok, basket(5000)).accepted
    rel = world.engine.release("co-1")
    assert rel.accepted and [c["status"] for c in rel.coupons] == ["released"]
    assert world.engine.hold("co-2", tok, basket(5000)).accepted
    assert world.engine.commit("co-2").accepted
    assert not world.engine.commit("co-1").accepted
    assert counted_uses(tok) == 1


def test_hold_expires(world: World) -> None:
    (tok,) = setup_coupons(world)
    ttl = world.engine.ledger.policy.hold_ttl_s
    assert world.engine.hold("co-1", tok, basket(5000)).accepted
    world.clock.advance(ttl - 1)
    assert world.engine.hold("co-2", tok, basket(5000)).reason is Reason.ALREADY_REDEEMED
    world.clock.advance(2)
    late = world.engine.commit("co-1")
    assert not late.accepted and late.reason is Reason.HOLD_EXPIRED
    assert Entry.select().where(Entry.kind == "expire").count() == 1
    # The coupon is the shopper's again.
    assert world.engine.hold("co-2", tok, basket(5000)).accepted
    assert world.engine.commit("co-2").accepted


def test_hold_expires_across_restart(world: World) -> None:
    (tok,) = setup_coupons(world)
    assert world.engine.hold("co-1", tok, basket(5000)).accepted
    world.reopen()
    world.clock.advance(world.engine.ledger.policy.hold_ttl_s + 1)
    assert world.engine.redeem(tok, basket(5000)).accepted


def test_unknown_checkout(world: World) -> None:
    setup_coupons(world)
    for op in (world.engine.commit, world.engine.release, world.engine.reverse):
        d = op("nope")
        assert not d.accepted and d.reason is Reason.UNKNOWN_CHECKOUT
    assert journal.verify().ok


def test_reverse_needs_a_commit(world: World) -> None:
    (tok,) = setup_coupons(world)
    assert world.engine.hold("co-1", tok, basket(5000)).accepted
    d = world.engine.reverse("co-1")
    assert not d.accepted and d.reason is Reason.NOT_COMMITTED
    assert world.engine.commit("co-1").accepted
    assert world.engine.reverse("co-1").accepted
    twice = world.engine.reverse("co-1")
    assert not twice.accepted and twice.reason is Reason.NOT_COMMITTED


def test_reverse_reusable_restores_coupon_and_budget(world: World) -> None:
    a, b = setup_coupons(world, 2, budget_count=1, reusable_after_refund=True)
    assert world.engine.hold("co-1", a, basket(5000)).accepted
    assert world.engine.commit("co-1").accepted
    assert world.engine.redeem(b, basket(5000)).reason is Reason.BUDGET_EXHAUSTED
    rev = world.engine.reverse("co-1")
    assert rev.accepted and rev.discount_minor == 1000
    assert [c["status"] for c in rev.coupons] == ["reversed"]
    assert world.engine.redeem(b, basket(5000)).accepted
    # a is usable again, but the budget is spent again by b.
    assert world.engine.redeem(a, basket(5000)).reason is Reason.BUDGET_EXHAUSTED


def test_reverse_of_standalone_redeem_by_op_id(world: World) -> None:
    (tok,) = setup_coupons(world)
    assert world.engine.redeem(tok, basket(5000), op_id="sale-1").accepted
    assert world.engine.reverse("sale-1").accepted
    assert world.engine.redeem(tok, basket(5000)).accepted


def test_reverse_not_reusable_keeps_it_used(world: World) -> None:
    a, b = setup_coupons(world, 2, budget_count=1, reusable_after_refund=False)
    assert world.engine.hold("co-1", a, basket(5000)).accepted
    assert world.engine.commit("co-1").accepted
    assert world.engine.reverse("co-1").accepted
    assert world.engine.redeem(a, basket(5000)).reason is Reason.ALREADY_REDEEMED
    assert world.engine.redeem(b, basket(5000)).reason is Reason.BUDGET_EXHAUSTED
    world.reopen()
    assert world.engine.redeem(a, basket(5000)).reason is Reason.ALREADY_REDEEMED


# ---------------------------------------------------------------- stacking in a checkout


def test_two_stackable_coupons_on_one_checkout(world: World) -> None:
    world.campaign(id="PCT", kind="percent", percent=10, stacking="any")
    world.campaign(id="FIX", kind="fixed", amount_minor=1000, stacking="any")
    world.campaign(id="EXC", kind="fixed", amount_minor=500)
    (pct,), (fix,), (exc,) = world.issue("PCT"), world.issue("FIX"), world.issue("EXC")
    world.sync_ledger()
    b = basket(20000)
    first = world.engine.hold("co-1", fix, b)
    assert first.accepted and first.discount_minor == 1000
    second = world.engine.hold("co-1", pct, b)
    # Percent goes first: 10 % of 200.00, then 10.00 off the rest.
    assert second.accepted and second.discount_minor == 2000
    assert {c["campaign"]: c["discount_minor"] for c in second.coupons} == {
        "FIX": 1000,
        "PCT": 2000,
    }
    refused = world.engine.hold("co-1", exc, b)
    assert not refused.accepted and refused.reason is Reason.NOT_STACKABLE
    done = world.engine.commit("co-1")
    assert done.accepted and done.discount_minor == 3000
    # The exclusive one was not spent by the refusal.
    assert world.engine.redeem(exc, b).accepted


def test_stacking_refused_when_it_would_break_a_held_coupon(world: World) -> None:
    world.campaign(
        id="THR", kind="threshold", min_spend_minor=10000, amount_minor=2000, stacking="any"
    )
    world.campaign(id="PCT", kind="percent", percent=10, stacking="any")
    (thr,), (pct,) = world.issue("THR"), world.issue("PCT")
    world.sync_ledger()
    assert world.engine.hold("co-1", thr, basket(10500)).accepted
    # 10 % first leaves 94.50, under the threshold's 100.00: the pair does not work.
    d = world.engine.hold("co-1", pct, basket(10500))
    assert not d.accepted and d.reason is Reason.NOT_STACKABLE
    done = world.engine.commit("co-1")
    assert done.accepted and done.discount_minor == 2000
    # With a big enough basket they do stack.
    world.campaign(
        id="THR2", kind="threshold", min_spend_minor=10000, amount_minor=2000, stacking="any"
    )
    (thr2,) = world.issue("THR2")
    world.sync_ledger()
    assert world.engine.hold("co-2", thr2, basket(20000)).accepted
    assert world.engine.hold("co-2", pct, basket(20000)).accepted
    assert world.engine.commit("co-2").discount_minor == 2000 + 2000


def test_second_copy_of_a_campaign_per_basket(world: World) -> None:
    a, b = setup_coupons(world, 2)
    assert world.engine.hold("co-1", a, basket(5000)).accepted
    assert world.engine.hold("co-1", b, basket(5000)).reason is Reason.NOT_STACKABLE
    assert world.engine.hold("co-2", b, basket(5000)).accepted


# ---------------------------------------------------------------- limits


def test_uses_per_customer(world: World) -> None:
    a, b, c = setup_coupons(world, 3, uses_per_customer=1)
    assert world.engine.redeem(a, basket(5000, ref="cust1")).accepted
    d = world.engine.redeem(b, basket(5000, ref="cust1"))
    assert not d.accepted and d.reason is Reason.CUSTOMER_LIMIT
    assert world.engine.redeem(b, basket(5000, ref="cust2")).accepted
    anonymous = world.engine.redeem(c, basket(5000))
    assert anonymous.reason is Reason.NOT_FOR_CUSTOMER


def test_customer_limit_freed_by_release(world: World) -> None:
    a, b = setup_coupons(world, 2, uses_per_customer=1)
    assert world.engine.hold("co-1", a, basket(5000, ref="cust1")).accepted
    assert world.engine.hold("co-2", b, basket(5000, ref="cust1")).reason is Reason.CUSTOMER_LIMIT
    assert world.engine.release("co-1").accepted
    assert world.engine.hold("co-2", b, basket(5000, ref="cust1")).accepted


def test_budget_count(world: World) -> None:
    a, b, c = setup_coupons(world, 3, budget_count=2)
    assert world.engine.redeem(a, basket(5000)).accepted
    assert world.engine.redeem(b, basket(5000)).accepted
    d = world.engine.redeem(c, basket(5000))
    assert not d.accepted and d.reason is Reason.BUDGET_EXHAUSTED
    world.reopen()
    assert world.engine.redeem(c, basket(5000)).reason is Reason.BUDGET_EXHAUSTED


def test_budget_minor(world: World) -> None:
    a, b, c = setup_coupons(world, 3, amount_minor=1000, budget_minor=2500)
    assert world.engine.redeem(a, basket(5000)).accepted
    assert world.engine.redeem(b, basket(5000)).accepted
    assert world.engine.redeem(c, basket(5000)).reason is Reason.BUDGET_EXHAUSTED
    # A smaller basket makes a smaller discount that still fits.
    assert world.engine.redeem(c, basket(500)).accepted


def test_wrong_store(world: World) -> None:
    (tok,) = setup_coupons(world, stores=["S2", "S3"])
    d = world.engine.redeem(tok, basket(5000))
    assert not d.accepted and d.reason is Reason.WRONG_STORE
    (flag,) = flags("wrong_store")
    assert flag.serial == key_of(tok)
    (ok,) = setup_coupons(world, id="HERE", stores=["S1"])
    assert world.engine.redeem(ok, basket(5000)).accepted


def test_token_bound_to_a_customer(world: World) -> None:
    world.campaign(id="MINE", stacking="any")
    (tok,) = world.issue("MINE", customer=bytes.fromhex("c0ffee01"))
    world.sync_ledger()
    for b in (basket(5000), basket(5000, ref="c0ffee02")):
        d = world.engine.redeem(tok, b)
        assert not d.accepted and d.reason is Reason.NOT_FOR_CUSTOMER
    assert world.engine.redeem(tok, basket(5000, ref="c0ffee01")).accepted


def test_token_bound_to_an_nfc_tag(world: World) -> None:
    world.campaign(id="TAG", stacking="any")
    uid = bytes.fromhex("04a1b2c3d4e5f6")
    (tok,) = world.issue("TAG", tag_uid=uid)
    world.sync_ledger()
    for ctx in (Context(source="camera"), Context(source="nfc", tag_uid=b"\x04\x00\x00\x00")):
        d = world.engine.redeem(tok, basket(5000), ctx)
        assert not d.accepted and d.reason is Reason.TAG_MISMATCH
    assert len(flags("tag_mismatch")) == 2
    assert world.engine.redeem(tok, basket(5000), Context(source="nfc", tag_uid=uid)).accepted


# ---------------------------------------------------------------- time and ledger trust


def test_clock_rollback_fails_closed(world: World) -> None:
    a, b = setup_coupons(world, 2)
    assert world.engine.redeem(a, basket(5000)).accepted
    world.clock.at = T0 - DAY
    d = world.engine.redeem(b, basket(5000))
    assert not d.accepted and d.reason is Reason.CLOCK_UNTRUSTED
    assert len(flags("clock_rollback")) == 1
    world.reopen()
    assert world.engine.redeem(b, basket(5000)).reason is Reason.CLOCK_UNTRUSTED
    world.clock.at = T0 + 60
    assert world.engine.redeem(b, basket(5000)).accepted


def test_small_clock_drift_is_tolerated(world: World) -> None:
    a, b = setup_coupons(world, 2)
    world.clock.advance(600)
    assert world.engine.redeem(a, basket(5000)).accepted
    world.clock.advance(-(world.engine.ledger.policy.clock_tolerance_s - 10))
    assert world.engine.redeem(b, basket(5000)).accepted


def test_stale_ledger(world: World) -> None:
    world.campaign(id="BIG", amount_minor=6000, stacking="any")
    world.campaign(id="SMALL", amount_minor=1000, stacking="any")
    big1, big2 = world.issue("BIG", 2)
    (small,) = world.issue("SMALL")
    world.sync_ledger()
    world.clock.advance(73 * 3600)
    d = world.engine.redeem(big1, basket(10000))
    assert not d.accepted and d.reason is Reason.LEDGER_STALE
    ok = world.engine.redeem(big1, basket(10000), Context(manager_override="m1"))
    assert ok.accepted and ok.discount_minor == 6000 and "ledger_stale" in ok.warnings
    (flag,) = flags("stale_ledger_override")
    assert "m1" in flag.detail
    low = world.engine.redeem(small, basket(10000))
    assert low.accepted and low.warnings == ["ledger_stale"]
    # A fresh ledger lifts the block.
    world.sync_ledger()
    fresh = world.engine.redeem(big2, basket(10000))
    assert fresh.accepted and fresh.warnings == []


def test_ledger_warns_before_it_blocks(world: World) -> None:
    world.campaign(id="BIG", amount_minor=6000, stacking="any")
    (big,) = world.issue("BIG")
    world.sync_ledger()
    world.clock.advance(25 * 3600)
    d = world.engine.redeem(big, basket(10000))
    assert d.accepted and d.warnings == ["ledger_stale"]


def test_no_ledger(world: World) -> None:
    world.campaign(id="TEN", stacking="any")
    (tok,) = world.issue("TEN")
    d = world.engine.redeem(tok, basket(5000))
    assert not d.accepted and d.reason is Reason.NO_LEDGER


def test_burst_per_terminal(world: World) -> None:
    world.central.set_policy(Policy(burst_per_terminal=3))
    world.campaign(id="TEN", stacking="any")
    toks = world.issue("TEN", 5)
    world.sync_ledger()
    assert [world.engine.redeem(t, basket(5000)).accepted for t in toks[:3]] == [True] * 3
    d = world.engine.redeem(toks[3], basket(5000))
    assert not d.accepted and d.reason is Reason.SUSPECTED_FRAUD
    assert len(flags("burst_terminal")) == 1
    world.clock.advance(world.engine.ledger.policy.burst_window_s + 1)
    assert world.engine.redeem(toks[3], basket(5000)).accepted


def test_burst_per_coupon_is_flagged(world: World) -> None:
    (tok,) = setup_coupons(world)
    limit = world.engine.ledger.policy.burst_per_coupon
    for _ in range(limit + 1):
        world.engine.redeem(tok, basket(5000))
    assert len(flags("burst_coupon")) == 1


# ---------------------------------------------------------------- best combination


def test_best_picks_the_most_valuable_set(world: World) -> None:
    world.campaign(id="EXC", amount_minor=3000)
    world.campaign(id="A", amount_minor=2000, stacking="any")
    world.campaign(id="B", kind="percent", percent=10, stacking="any")
    world.campaign(id="FAR", amount_minor=9000, stores=["S2"])
    (exc,), (a,), (b,), (far,) = (world.issue(c) for c in ("EXC", "A", "B", "FAR"))
    (used,) = world.issue("A")
    world.sync_ledger()
    assert world.engine.redeem(used, basket(5000)).accepted
    before = Entry.select().count()
    chosen, refused = world.engine.best([exc, a, b, far, used], basket(20000))
    assert sorted(d.campaign or "" for d in chosen) == ["A", "B"]
    # Percent first: 10 % of 200.00, then 20.00 off.
    assert sum(d.discount_minor for d in chosen) == 2000 + 2000
    why = {d.serial: d.reason for d in refused}
    assert why == {
        key_of(exc): Reason.NOT_STACKABLE,
        key_of(far): Reason.WRONG_STORE,
        key_of(used): Reason.ALREADY_REDEEMED,
    }
    assert Entry.select().count() == before  # a suggestion records nothing
    # Holding the suggestion gives what it promised.
    for d in chosen:
        assert world.engine.hold(
            "co-1", {key_of(a): a, key_of(b): b}[d.serial or ""], basket(20000)
        ).accepted
    assert world.engine.commit("co-1").discount_minor == 4000


# ---------------------------------------------------------------- storage faults


def test_storage_failure_refuses_and_loses_nothing(world: World) -> None:
    (tok,) = setup_coupons(world)
    entries = Entry.select().count()
    world.engine.db.execute_sql("PRAGMA query_only=1")
    d = world.engine.redeem(tok, basket(5000), op_id="op-1")
    assert not d.accepted and d.reason is Reason.STORAGE_FAILURE
    held = world.engine.hold("co-1", tok, basket(5000))
    assert not held.accepted and held.reason is Reason.STORAGE_FAILURE
    world.engine.db.execute_sql("PRAGMA query_only=0")
    assert Entry.select().count() == entries
    assert Use.select().count() == 0
    assert journal.verify().ok
    # The failed operation was not remembered: retrying it gives a real answer.
    ok = world.engine.redeem(tok, basket(5000), op_id="op-1")
    assert ok.accepted and not ok.replayed
    assert world.engine.redeem(tok, basket(5000)).reason is Reason.ALREADY_REDEEMED
    assert counted_uses(tok) == 1
    assert journal.verify().ok


def test_storage_failure_during_commit(world: World) -> None:
    (tok,) = setup_coupons(world)
    assert world.engine.hold("co-1", tok, basket(5000)).accepted
    world.engine.db.execute_sql("PRAGMA query_only=1")
    d = world.engine.commit("co-1")
    assert not d.accepted and d.reason is Reason.STORAGE_FAILURE
    world.engine.db.execute_sql("PRAGMA query_only=0")
    assert world.engine.hold("co-2", tok, basket(5000)).reason is Reason.ALREADY_REDEEMED
    assert world.engine.commit("co-1").accepted
    assert counted_uses(tok) == 1
    assert journal.verify().ok


# ---------------------------------------------------------------- property


def _new_world(tmp: Path) -> World:
    clock = FixedClock(T0)
    central = Central.init(tmp / "central", clock.now, master_key=MASTER_KEY)
    data = tmp / "terminal"
    setup.init(data, tmp / "central" / "trust-anchor.json", "S1", "T1")
    return World(clock, central, data, setup.open_engine(data, clock))


COUPONS = 3  # 0 and 1 reusable after refund, 2 not
CHECKOUTS = ["co-0", "co-1"]

ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("redeem"), st.integers(0, COUPONS - 1)),
        st.tuples(st.just("hold"), st.sampled_from(CHECKOUTS), st.integers(0, COUPONS - 1)),
        st.tuples(st.just("commit"), st.sampled_from(CHECKOUTS)),
        st.tuples(st.just("release"), st.sampled_from(CHECKOUTS)),
        st.tuples(st.just("reverse"), st.integers(0, 5)),
        st.tuples(st.just("expire")),
        st.tuples(st.just("replay"), st.integers(0, 30)),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=50, deadline=None)
@given(ops_st)
def test_no_coupon_is_ever_counted_twice(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        w = _new_world(Path(tmp))
        try:
            _run_sequence(w, ops)
        finally:
            w.engine.db.close()
            w.central.db.close()


def _run_sequence(w: World, ops: list[tuple[Any, ...]]) -> None:
    w.campaign(id="R", stacking="any", per_basket=COUPONS, reusable_after_refund=True)
    w.campaign(id="N", stacking="any", reusable_after_refund=False)
    toks = w.issue("R", 2) + w.issue("N", 1)
    keys = [key_of(t) for t in toks]
    w.sync_ledger()
    e = w.engine
    # Model: None (free), ("held", checkout), ("committed", checkout), ("spent",)
    state: list[tuple[str, ...] | None] = [None] * COUPONS
    done: list[tuple[tuple[Any, ...], str, Decision]] = []  # (op, op_id, decision)
    targets: list[str] = list(CHECKOUTS)
    b = basket(10000)

    for step, op in enumerate(ops):
        op_id = f"op-{step}"
        kind = op[0]
        if kind == "replay":
            if not done:
                continue
            old_op, old_id, old = done[op[1] % len(done)]
            d = _call(e, old_op, old_id, toks, b, targets)
            assert d.replayed and d.accepted == old.accepted and d.reason == old.reason
            assert d.journal_seq == old.journal_seq
        elif kind == "expire":
            w.clock.advance(e.ledger.policy.hold_ttl_s + 1)
            state = [None if s and s[0] == "held" else s for s in state]
            continue
        else:
            if kind == "redeem":
                targets.append(op_id)
            d = _call(e, op, op_id, toks, b, targets)
            assert not d.replayed
            expect = _model(state, op, op_id, targets)
            assert d.accepted == expect, (op, state, d)
            if kind == "reverse":  # a replay must name the same checkout as the original
                op = ("reverse", targets.index(targets[op[1] % len(targets)]))
            done.append((op, op_id, d))
        _check_counts(e, keys, state, w.clock.now())
    assert journal.verify().ok
    w.reopen()
    _check_counts(w.engine, keys, state, w.clock.now())
    assert journal.verify().ok


def _check_counts(e: Any, keys: list[str], state: list[tuple[str, ...] | None], now: float) -> None:
    """The Use table matches the model, no coupon counts twice, and the engine's in-memory
    counters match the table. Holds past their expiry are dropped lazily, at the next
    operation, so they are not counted as in force here."""
    for i, key in enumerate(keys):
        counted = list(Use.select().where((Use.serial == key) & (Use.counts == True)))  # noqa: E712
        assert len(counted) <= 1
        assert e.serial_uses[key] == len(counted)
        live = [u for u in counted if not (u.status == "held" and u.expires_at <= now)]
        assert len(live) == (0 if state[i] is None else 1), (i, state)


def _call(
    e: Any, op: tuple[Any, ...], op_id: str, toks: list[str], b: Any, targets: list[str]
) -> Decision:
    kind = op[0]
    if kind == "redeem":
        return e.redeem(toks[op[1]], b, op_id=op_id)  # type: ignore[no-any-return]
    if kind == "hold":
        return e.hold(op[1], toks[op[2]], b, op_id=op_id)  # type: ignore[no-any-return]
    if kind == "reverse":
        return e.reverse(targets[op[1] % len(targets)], op_id=op_id)  # type: ignore[no-any-return]
    return getattr(e, kind)(op[1], op_id=op_id)  # type: ignore[no-any-return]


def _model(
    state: list[tuple[str, ...] | None], op: tuple[Any, ...], op_id: str, targets: list[str]
) -> bool:
    """Apply op to the model in place; return whether the engine should accept it."""
    kind = op[0]
    if kind in ("redeem", "hold"):
        i = op[1] if kind == "redeem" else op[2]
        if state[i] is not None:
            return False
        state[i] = ("committed", op_id) if kind == "redeem" else ("held", op[1])
        return True
    checkout = targets[op[1] % len(targets)] if kind == "reverse" else op[1]
    src = "committed" if kind == "reverse" else "held"
    mine = [i for i, s in enumerate(state) if s == (src, checkout)]
    for i in mine:
        if kind == "commit":
            state[i] = ("committed", checkout)
        elif kind == "release":
            state[i] = None
        else:
            state[i] = None if i < 2 else ("spent",)
    return bool(mine)


def test_preview_sees_an_expired_hold_as_free(world: World) -> None:
    (tok,) = setup_coupons(world)
    assert world.engine.hold("co-1", tok, basket(5000)).accepted
    assert world.engine.check(tok, basket(5000)).reason is Reason.ALREADY_REDEEMED
    world.clock.advance(world.engine.ledger.policy.hold_ttl_s + 1)
    assert world.engine.check(tok, basket(5000)).accepted
    chosen, refused = world.engine.best([tok], basket(5000))
    assert [d.serial for d in chosen] == [key_of(tok)] and not refused


def test_multi_use_coupon(world: World) -> None:
    (tok,) = setup_coupons(world, uses_per_coupon=2)
    assert world.engine.redeem(tok, basket(5000)).accepted
    assert world.engine.redeem(tok, basket(5000)).accepted
    assert world.engine.redeem(tok, basket(5000)).reason is Reason.ALREADY_REDEEMED


def test_an_operation_id_reused_for_another_request_is_a_conflict(world: World) -> None:
    a, b = setup_coupons(world, 2)
    first = world.engine.redeem(a, basket(5000), op_id="op-1")
    other = world.engine.redeem(b, basket(5000), op_id="op-1")
    assert first.accepted
    assert not other.accepted and other.reason is Reason.OPERATION_CONFLICT
    assert counted_uses(b) == 0
    # The coupon itself is untouched and still redeemable under its own id.
    assert world.engine.redeem(b, basket(5000), op_id="op-2").accepted


def test_a_standalone_redemption_can_be_refunded_by_its_checkout_id(world: World) -> None:
    (token,) = setup_coupons(world, 1, reusable_after_refund=True)
    d = world.engine.redeem(token, basket(5000))
    assert d.accepted and d.checkout_id
    refund = world.engine.reverse(d.checkout_id)
    assert refund.accepted and refund.discount_minor == d.discount_minor
    assert world.engine.redeem(token, basket(5000)).accepted


def test_restacking_a_held_coupon_moves_its_budget_value(world: World) -> None:
    world.campaign(id="PCT", kind="percent", percent=10, stacking="any", order=20)
    world.campaign(id="FIX", kind="fixed", amount_minor=1000, stacking="any", order=10)
    (pct,) = world.issue("PCT")
    (fix,) = world.issue("FIX")
    world.sync_ledger()
    b = basket(10000)
    assert world.engine.hold("co-1", pct, b).discount_minor == 1000
    assert world.engine.hold("co-1", fix, b).discount_minor == 1000
    # The fixed coupon now goes first, so the percent one only sees 90.00: 9.00 off.
    held = {u.campaign: u for u in Use.select().where(Use.checkout_id == "co-1")}
    assert held["PCT"].discount_minor == held["PCT"].value_minor == 900
    assert world.engine.campaign_minor["PCT"] == 900
    assert world.engine.commit("co-1").discount_minor == 1900


def test_clock_rollback_is_still_caught_after_a_restart(world: World) -> None:
    (token,) = setup_coupons(world, 1)
    world.engine.redeem(token, basket(5000))
    world.clock.advance(-86400)
    assert world.engine.check(token, basket(5000)).reason is Reason.CLOCK_UNTRUSTED
    world.engine.redeem(token, basket(5000))  # journaled with the wrong, earlier time
    world.reopen()
    assert world.engine.check(token, basket(5000)).reason is Reason.CLOCK_UNTRUSTED


def test_a_manager_can_reset_clock_trust_after_the_clock_ran_ahead(world: World) -> None:
    a, b = setup_coupons(world, 2)
    world.clock.advance(30 * 86400)  # a bad NTP answer: a month ahead
    assert world.engine.redeem(a, basket(5000)).accepted
    world.clock.advance(-30 * 86400)  # corrected
    assert world.engine.check(b, basket(5000)).reason is Reason.CLOCK_UNTRUSTED
    assert world.engine.reset_clock_trust("manager-7").accepted
    assert world.engine.redeem(b, basket(5000)).accepted
    assert flags("clock_reset")
    world.reopen()
    assert world.engine.clock_ok(world.clock.now())
    assert journal.verify().ok


def test_coupons_in_one_standalone_sale_must_stack(world: World) -> None:
    world.campaign(id="EXCL", kind="fixed", amount_minor=500, stacking="exclusive")
    world.campaign(id="ANY", kind="fixed", amount_minor=300, stacking="any")
    (excl,) = world.issue("EXCL")
    (any1,) = world.issue("ANY")
    world.campaign(id="ANY2", kind="fixed", amount_minor=200, stacking="any")
    (other,) = world.issue("ANY2")
    world.sync_ledger()
    b = basket(5000)
    assert world.engine.redeem(any1, b, checkout_id="sale-1").accepted
    refused = world.engine.redeem(excl, b, checkout_id="sale-1")
    assert refused.reason is Reason.NOT_STACKABLE
    assert world.engine.redeem(other, b, checkout_id="sale-1").accepted
    # A new sale starts clean: the exclusive coupon was not used up by its refusal.
    assert world.engine.redeem(excl, b, checkout_id="sale-2").accepted


# ---------------------------------------------------------------- the cashier's void


def test_void_takes_back_only_the_last_coupon_and_frees_it(world: World) -> None:
    world.campaign(id="A", amount_minor=500, stacking="any")
    world.campaign(id="B", amount_minor=1000, stacking="any", budget_count=1)
    (a,) = world.issue("A")
    b, b2 = world.issue("B", 2)
    world.sync_ledger()
    sale = basket(5000)
    assert world.engine.redeem(a, sale, checkout_id="sale-1").accepted
    assert world.engine.redeem(b, sale, checkout_id="sale-1").accepted
    world.clock.advance(60)
    d = world.engine.void("sale-1", 300)
    assert d.accepted and d.reason is Reason.VOIDED and d.serial == key_of(b)
    assert d.discount_minor == 1000
    assert {c["serial"]: c["status"] for c in world.engine.checkout_coupons("sale-1")} == {
        key_of(a): "committed",
        key_of(b): "reversed",
    }
    # The journal says reverse (so the central counts it like a refund), marked as a void.
    last = Entry.select().order_by(Entry.seq.desc()).first()
    assert last.kind == "reverse" and last.serial == key_of(b) and '"void"' in last.detail
    # b is free again, and so is the campaign's budget of one; a is still used.
    assert world.engine.redeem(b2, basket(5000)).accepted
    assert world.engine.redeem(a, basket(5000)).reason is Reason.ALREADY_REDEEMED
    assert journal.verify().ok


def test_a_coupon_is_taken_back_once_at_most(world: World) -> None:
    # Redeem, give the discount, void, redeem again, void again... stops at the second void.
    (tok,) = setup_coupons(world, 1, budget_count=5)
    assert world.engine.redeem(tok, basket(5000), checkout_id="sale-1").accepted
    assert world.engine.void("sale-1", 300).reason is Reason.VOIDED
    assert world.engine.redeem(tok, basket(5000), checkout_id="sale-2").accepted
    again = world.engine.void("sale-2", 300)
    assert again.reason is Reason.VOID_REFUSED and "once already" in again.detail
    assert world.engine.redeem(tok, basket(5000)).reason is Reason.ALREADY_REDEEMED
    assert world.engine.reverse("sale-2").accepted  # a manager's refund is still open


def test_void_is_refused_where_the_rules_do_not_allow_it(world: World) -> None:
    world.campaign(id="KEEP", amount_minor=500, stacking="any", reusable_after_refund=False)
    world.campaign(id="FREE", amount_minor=500, stacking="any")
    (keep,) = world.issue("KEEP")
    free1, free2 = world.issue("FREE", 2)
    world.sync_ledger()
    sale = basket(5000)
    before = Entry.select().count()
    assert world.engine.void("sale-0", 300).reason is Reason.VOID_REFUSED  # nothing to void
    assert world.engine.redeem(keep, sale, checkout_id="sale-1").accepted
    no = world.engine.void("sale-1", 300)  # would burn a coupon the campaign keeps used
    assert no.reason is Reason.VOID_REFUSED and not no.accepted and "campaign" in no.detail
    assert world.engine.redeem(free1, sale, checkout_id="sale-2").accepted
    world.clock.advance(301)
    late = world.engine.void("sale-2", 300)
    assert late.reason is Reason.VOID_REFUSED and "300 s" in late.detail
    assert world.engine.hold("co-1", free2, sale).accepted
    assert world.engine.void("co-1", 300).reason is Reason.VOID_REFUSED  # the till's to release
    assert Entry.select().count() == before + 3  # the three redemptions, no void entries
    assert world.engine.redeem(free1, basket(5000)).reason is Reason.ALREADY_REDEEMED
