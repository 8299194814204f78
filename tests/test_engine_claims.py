"""The engine's claim hook (coupons/claims.py, coupons/peer_claims.py) against a real journal,
with a FakeClaimer at the edge standing in for the store's other tills: a peer's hold refuses
with the till that holds the coupon, nobody to ask changes nothing (journal bytes included),
settle runs once after COMMIT, refusals never reach the peers, and uses that stop counting are
given back."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from coupons import journal
from coupons.claims import NO_PEERS, ClaimKey, ClaimOutcome, ClaimResult, PeerRecord
from coupons.decision import Context, Decision
from coupons.engine import Engine
from coupons.journal import Entry, Use
from coupons.reasons import Reason
from tests.conftest import World, basket
from tests.test_engine import counted_uses, flags, key_of, setup_coupons

PLAIN_DETAIL = {"detail", "gift", "basket_minor", "tag", "override"}


@dataclass
class FakeClaimer:
    """The store's other tills, as the engine sees them through the Claimer port."""

    engine: Engine
    outcome: ClaimOutcome = ClaimOutcome.GRANTED
    holder: str | None = None
    asked: int = 2
    claims: list[list[ClaimKey]] = field(default_factory=list)
    settled: list[tuple[ClaimResult, bool, int | None, bool]] = field(default_factory=list)
    released: list[list[ClaimKey]] = field(default_factory=list)
    in_transaction_at_claim: list[bool] = field(default_factory=list)

    def claim(self, keys: Sequence[ClaimKey], deadline: float) -> ClaimResult:
        self.claims.append(list(keys))
        self.in_transaction_at_claim.append(self.engine.db.in_transaction())
        if self.outcome is ClaimOutcome.HELD:
            return ClaimResult(
                ClaimOutcome.HELD, b"c1", self.holder, keys[0], self.asked, self.asked
            )
        asked = self.asked if self.outcome is ClaimOutcome.GRANTED else 0
        return ClaimResult(self.outcome, b"c1", asked=asked, answered=asked)

    def settle(self, result: ClaimResult, accepted: bool, seq: int | None) -> None:
        # Committed means another connection sees the entry the seq names.
        visible = False
        if seq is not None:
            with sqlite3.connect(self.engine.db.database) as other:
                row = other.execute("SELECT 1 FROM entry WHERE seq = ?", (seq,)).fetchone()
            visible = row is not None
        self.settled.append((result, accepted, seq, visible))

    def release(self, keys: Sequence[ClaimKey]) -> None:
        self.released.append(list(keys))


@pytest.fixture
def peers(world: World) -> FakeClaimer:
    fake = FakeClaimer(world.engine)
    world.engine.claimer = fake
    return fake


def detail_of(seq: int | None) -> dict[str, object]:
    entry = Entry.get(Entry.seq == seq)
    return dict(json.loads(entry.detail))


def test_a_peer_hold_refuses_with_the_till_that_holds_it(world: World, peers: FakeClaimer) -> None:
    (tok,) = setup_coupons(world)
    peers.outcome, peers.holder = ClaimOutcome.HELD, "S1-002"
    d = world.engine.redeem(tok, basket(5000))
    assert not d.accepted and d.reason is Reason.ALREADY_REDEEMED
    assert d.used_at == "S1-002" and d.detail == "used at till S1-002"
    assert d.message() == "This coupon was already used at till S1-002."
    assert "S1-002" in d.message("zh_CN") and d.message("zh_CN") != d.message()
    assert d.to_dict()["used_at"] == "S1-002"
    assert Decision.from_dict(d.to_dict()).used_at == "S1-002"
    assert counted_uses(tok) == 0
    (flag,) = flags("peer_replay")
    assert json.loads(flag.detail)["about_seq"] == d.journal_seq
    assert flag.serial == key_of(tok) and "S1-002" in json.loads(flag.detail)["detail"]
    peer = detail_of(d.journal_seq)["peer"]
    assert peer == {"holder": "S1-002", "asked": 2, "answered": 2, "unreachable": [], "ms": 0.0}
    (keys,) = peers.claims
    assert keys == [ClaimKey("serial", "TEN", key_of(tok), 1, 1)]
    assert peers.in_transaction_at_claim == [True]  # inside the attempt: _decide ran once
    assert journal.verify().ok


def test_the_refusal_names_the_kind_of_key_held(world: World) -> None:
    (tok,) = setup_coupons(world)
    engine = world.engine
    coupon = engine._resolve(tok, basket(5000), Context(), engine.now())

    def held(kind: str) -> ClaimResult:
        return ClaimResult(ClaimOutcome.HELD, holder="S1-003", key=ClaimKey(kind, "TEN", "x"))

    for kind, reason in (
        ("serial", Reason.ALREADY_REDEEMED),
        ("customer", Reason.CUSTOMER_LIMIT),
        ("budget", Reason.BUDGET_EXHAUSTED),
    ):
        d = engine._held_by_peer(coupon, held(kind), basket(5000))
        assert d.reason is reason and d.used_at == "S1-003" and not d.accepted
    # Only a used coupon says where it was used; the limits keep their own sentence.
    budget = engine._held_by_peer(coupon, held("budget"), basket(5000))
    assert budget.message() == Reason.BUDGET_EXHAUSTED.message()


def test_nobody_to_ask_leaves_the_journal_as_it_was(world: World, peers: FakeClaimer) -> None:
    a, b = setup_coupons(world, 2)
    world.engine.claimer = NO_PEERS
    plain = world.engine.redeem(a, basket(5000))
    assert plain.accepted and set(detail_of(plain.journal_seq)) == PLAIN_DETAIL
    world.engine.claimer = peers
    peers.outcome = ClaimOutcome.NO_PEERS
    alone = world.engine.redeem(b, basket(5000))
    assert alone.accepted and alone.used_at is None
    assert set(detail_of(alone.journal_seq)) == PLAIN_DETAIL
    assert len(peers.claims) == 1 and peers.settled[0][1] is True
    assert "used_at" in alone.to_dict() and alone.to_dict()["used_at"] is None


def test_a_granted_claim_accepts_and_is_settled_once_after_commit(
    world: World, peers: FakeClaimer
) -> None:
    (tok,) = setup_coupons(world)
    d = world.engine.redeem(tok, basket(5000))
    assert d.accepted and counted_uses(tok) == 1
    assert detail_of(d.journal_seq)["peer"] == {
        "holder": None,
        "asked": 2,
        "answered": 2,
        "unreachable": [],
        "ms": 0.0,  # how long the sale waited on the peers (this claimer answers at once)
    }
    ((result, accepted, seq, visible),) = peers.settled
    assert result.outcome is ClaimOutcome.GRANTED and accepted and seq == d.journal_seq
    assert visible, "settle ran before COMMIT"
    # A hold claims too; commit moves nothing on the peers.
    (tok2,) = world.issue("TEN")
    world.sync_ledger()
    assert world.engine.hold("co-1", tok2, basket(5000)).accepted
    assert world.engine.commit("co-1").accepted
    assert len(peers.claims) == 2 and len(peers.settled) == 2 and not peers.released


def test_a_storage_fault_after_the_claim_settles_it_refused(
    world: World, peers: FakeClaimer
) -> None:
    (tok,) = setup_coupons(world)
    world.engine.db.execute_sql("PRAGMA query_only=1")
    d = world.engine.redeem(tok, basket(5000))
    world.engine.db.execute_sql("PRAGMA query_only=0")
    assert not d.accepted and d.reason is Reason.STORAGE_FAILURE
    ((_, accepted, seq, _),) = peers.settled
    assert accepted is False and seq is None
    assert journal.verify().ok


def test_a_refusal_never_reaches_the_peers(world: World, peers: FakeClaimer) -> None:
    # No peer can make a till accept: what the checks refuse is never asked about.
    (tok,) = setup_coupons(world)
    world.engine.claimer = NO_PEERS
    assert world.engine.redeem(tok, basket(5000)).accepted
    world.engine.claimer = peers
    again = world.engine.redeem(tok, basket(5000))
    assert again.reason is Reason.ALREADY_REDEEMED and again.used_at is None
    assert world.engine.redeem("not a coupon at all!", basket(5000)).reason is Reason.MALFORMED
    assert not peers.claims and not peers.settled
    # Previews never claim either.
    world.engine.check(tok, basket(5000))
    world.engine.best([tok], basket(5000))
    assert not peers.claims


def test_reload_keeps_the_claimer(world: World, peers: FakeClaimer) -> None:
    world.engine.claim_bound_s = 0.4
    world.engine.reload()
    assert world.engine.claimer is peers and world.engine.claim_bound_s == 0.4
    assert Engine.claimer is NO_PEERS  # the class keeps its default


def test_release_and_expiry_give_the_claim_back(world: World, peers: FakeClaimer) -> None:
    a, b = setup_coupons(world, 2)
    serial = ClaimKey("serial", "TEN", key_of(a), 1, 1)
    assert world.engine.hold("co-1", a, basket(5000)).accepted
    assert world.engine.release("co-1").accepted
    assert peers.released == [[serial]]
    assert world.engine.hold("co-2", b, basket(5000)).accepted
    world.clock.advance(world.engine.ledger.policy.hold_ttl_s + 1)
    world.engine.check(a, basket(5000))  # any call expires lapsed holds
    assert peers.released[-1] == [ClaimKey("serial", "TEN", key_of(b), 1, 1)]


def test_a_void_gives_the_claim_back_and_a_final_refund_does_not(
    world: World, peers: FakeClaimer
) -> None:
    world.campaign(id="R", stacking="any", reusable_after_refund=True)
    world.campaign(id="N", stacking="any", reusable_after_refund=False)
    (r,) = world.issue("R")
    (n,) = world.issue("N")
    world.sync_ledger()
    assert world.engine.redeem(r, basket(5000), checkout_id="sale-1").accepted
    assert world.engine.void("sale-1", 300).accepted
    assert peers.released == [[ClaimKey("serial", "R", key_of(r), 1, 1)]]
    assert world.engine.redeem(n, basket(5000), checkout_id="sale-2").accepted
    assert world.engine.reverse("sale-2").accepted
    assert len(peers.released) == 1  # still counts: nobody else may use it


def test_counter_slots_are_claimed_when_enabled(world: World, peers: FakeClaimer) -> None:
    toks = setup_coupons(world, 2, budget_count=5, uses_per_customer=3)
    world.engine.claim_counters = True
    sale = basket(5000, ref="c0ffee")
    assert world.engine.redeem(toks[0], sale).accepted
    assert world.engine.redeem(toks[1], sale).accepted
    kinds = [[(k.kind, k.subject, k.slot, k.limit) for k in keys] for keys in peers.claims]
    assert kinds[1] == [
        ("serial", key_of(toks[1]), 1, 1),
        ("customer", "c0ffee", 2, 3),
        ("budget", "", 2, 5),
    ]
    # A held customer slot refuses as the customer's limit, with the till that holds it.
    (tok3,) = world.issue("TEN")
    world.sync_ledger()
    peers.outcome, peers.holder = ClaimOutcome.HELD, "S1-004"
    peers.claims.clear()
    world.engine.claim_counters = True
    assert world.engine.redeem(tok3, sale).accepted is False
    assert [k.kind for k in peers.claims[0]] == ["serial", "customer", "budget"]


def test_the_peer_jobs_journal_and_list_what_counts(world: World) -> None:
    a, b, c = setup_coupons(world, 3)
    assert world.engine.redeem(a, basket(5000)).accepted
    assert world.engine.hold("co-1", b, basket(5000)).accepted
    assert world.engine.hold("co-2", c, basket(5000)).accepted
    assert world.engine.release("co-2").accepted
    assert world.engine.live_claim_keys() == sorted(
        [ClaimKey("serial", "TEN", key_of(a), 1, 1), ClaimKey("serial", "TEN", key_of(b), 1, 1)],
        key=lambda k: k.subject,
    )
    key = ClaimKey("serial", "TEN", key_of(c), 1, 1)
    world.clock.advance(5)
    recs = [
        PeerRecord(1, "granted", "S1-002", key, "00ff", None),
        PeerRecord(2, "peer_used", "S1-002", key, "00ff", 7),
    ]
    before = world.engine.trusted_time()
    assert world.engine.record_peer(recs)
    peer_rows = list(Entry.select().where(Entry.kind == "peer").order_by(Entry.seq))
    assert [(e.reason, e.serial, e.source, e.accepted) for e in peer_rows] == [
        ("granted", key_of(c), "peers", False),
        ("peer_used", key_of(c), "peers", False),
    ]
    assert json.loads(peer_rows[1].detail) == {
        "peer": "S1-002",
        "key": ["serial", "TEN", key_of(c), 1, 1],
        "claim": "00ff",
        "pseq": 7,
        "at": 2,
    }
    # The entry is at this till's time: a peer's clock never moves trusted time.
    assert world.engine.trusted_time() >= before
    assert world.engine.flag_peer("peer_forged", "bad signature from 127.0.0.9")
    (flag,) = flags("peer_forged")
    assert flag.source == "peers"
    with pytest.raises(ValueError):
        world.engine.flag_peer("replay", "not a peer flag")
    assert journal.verify().ok
    assert Use.select().count() == 3


def test_a_fresh_engine_starts_alone(tmp_path: Path, world: World) -> None:
    assert world.engine.claimer is NO_PEERS
    assert NO_PEERS.claim([], 0.0).outcome is ClaimOutcome.NO_PEERS
