"""Store scopes (issue 13, item 3): each store's ledger holds only what can matter there,
is its own signed chain, and a till takes only its own store's (or the chain-wide one,
once, before it moves to its store's)."""

from __future__ import annotations

import secrets

import cbor2

from coupons import cose, ledger
from coupons.keys import PURPOSE_LEDGER
from coupons.ledger import ledger_file, read_file, store_scope
from coupons.reasons import Reason
from sync.central import scopes
from sync.central.delivery import Delivery
from sync.central.models import TerminalRow
from sync.central.publisher import Publisher
from sync.central.terminals import enroll, new_enroll_code, revoke_terminal
from tests.conftest import World, basket


def _scope_file(world: World, store: str, since: int = 0) -> bytes:
    answer = Delivery(world.central).answer(store_scope(store), since, {})
    assert answer.status == 200, answer.status
    return answer.body


def _setup(world: World) -> Publisher:
    for store in ("S1", "S2"):
        new_enroll_code(world.central, store)
    return Publisher(world.central)


def test_a_store_ledger_holds_its_campaigns_and_not_another_stores(world: World) -> None:
    pub = _setup(world)
    world.campaign(id="ALL", amount_minor=500)
    world.campaign(id="ONLY2", amount_minor=700, stores=["S2"])
    [code2] = world.issue("ONLY2", 1, codes=True)
    [all_token] = world.issue("ALL", 1)
    pub.tick()
    s1 = ledger.LedgerState()
    for raw in read_file(_scope_file(world, "S1")):
        s1, _ = ledger.apply(world.central.anchor, s1, raw, "S1")
    s2 = ledger.LedgerState()
    for raw in read_file(_scope_file(world, "S2")):
        s2, _ = ledger.apply(world.central.anchor, s2, raw, "S2")
    assert s1.scope == store_scope("S1") and set(s1.campaigns) == {"ALL"}
    assert set(s2.campaigns) == {"ALL", "ONLY2"}
    assert not s1.plain_codes and len(s2.plain_codes) == 1  # S2's typed code stays at S2
    # The till of S1 imports its store's ledger and redeems the chain-wide coupon.
    assert world.engine.import_ledger(_scope_file(world, "S1")).applied
    assert world.engine.redeem(all_token, basket(5000)).accepted
    assert world.engine.redeem(code2, basket(5000)).accepted is False


def test_a_till_refuses_another_stores_ledger(world: World) -> None:
    pub = _setup(world)
    world.campaign(id="ALL")
    pub.tick()
    result = world.engine.import_ledger(_scope_file(world, "S2"))
    assert [r.kind for r in result.refused] == ["wrong_scope"]
    assert "store:S2" in result.refused[0].detail
    assert world.engine.ledger.version == 0  # nothing taken


def test_a_till_moves_once_from_the_chain_wide_ledger_to_its_stores(world: World) -> None:
    pub = _setup(world)
    world.campaign(id="ALL")
    world.sync_ledger()  # the chain-wide ledger, as a till from before scopes holds it
    assert world.engine.ledger.scope == ledger.CHAIN_WIDE and world.engine.ledger.version > 0
    pub.tick()
    assert world.engine.import_ledger(_scope_file(world, "S1")).applied
    assert world.engine.ledger.scope == store_scope("S1")
    # From now on the chain-wide ledger does not continue what the till holds.
    world.campaign(id="MORE")
    world.central.publish()
    refused = world.engine.import_ledger(ledger_file(world.central.deltas(0))).refused
    assert refused and {r.kind for r in refused} == {"wrong_scope"}
    # And a restart replays the store's ledger from disk.
    assert world.reopen().ledger.scope == store_scope("S1")


def test_redemptions_reach_only_the_scopes_of_their_campaign(world: World) -> None:
    pub = _setup(world)
    world.campaign(id="ONLY2", stores=["S2"])
    world.campaign(id="ALL")
    only2 = world.central.issue("ONLY2", 3)
    every = world.central.issue("ALL", 2)
    pub.tick()
    world.central.mark([only2[0].serial, every[0].serial], "redeemed")
    pub.tick()
    s1 = ledger.LedgerState()
    for raw in read_file(_scope_file(world, "S1")):
        s1, _ = ledger.apply(world.central.anchor, s1, raw, "S1")
    assert every[0].serial in s1.redeemed and only2[0].serial not in s1.redeemed


def test_an_ended_campaign_leaves_the_scope_with_its_serials(world: World) -> None:
    pub = _setup(world)
    end = int(world.clock.now()) + 3600
    world.campaign(id="SHORT", valid_until=end)
    world.campaign(id="LONG")
    short = world.central.issue("SHORT", 2)
    pub.tick()
    world.central.mark([short[0].serial], "redeemed")
    pub.tick()
    assert world.engine.import_ledger(_scope_file(world, "S1")).applied
    held = world.engine.ledger
    assert "SHORT" in held.campaigns and short[0].serial in held.redeemed
    world.clock.advance(3600 + scopes.ENDED_GRACE_S + 1)
    world.central.mark([10**9], "revoked")  # anything: a tick only publishes a change
    pub.tick()
    since = world.engine.ledger.version
    assert world.engine.import_ledger(_scope_file(world, "S1", since)).applied
    held = world.engine.ledger
    assert "SHORT" not in held.campaigns and short[0].serial not in held.redeemed
    assert "LONG" in held.campaigns


def test_deltas_replayed_from_nothing_equal_the_scopes_snapshot(world: World) -> None:
    """What a till builds from every delta is what the publisher's snapshot says."""
    pub = _setup(world)
    world.campaign(id="A")
    world.campaign(id="B", stores=["S1"])
    world.campaign(id="C", stores=["S2"])
    issued = {cid: world.central.issue(cid, 4) for cid in "ABC"}
    tills = [_enroll(world, "S1") for _ in range(3)]
    for n in range(scopes.SNAPSHOT_EVERY + 2):
        if n == 3:
            revoke_terminal(world.central, tills[1])
        if n == 9:
            _enroll(world, "S1")
        cid = "ABC"[n % 3]
        world.central.mark([issued[cid][n % 4].serial], "redeemed" if n % 5 else "revoked")
        if n == 7:
            world.campaign(id="B", stores=["S2"])  # B leaves S1
        pub.tick()
    answer = Delivery(world.central).answer(store_scope("S1"), 0, {})
    updates = read_file(answer.body)
    from_snapshot = ledger.LedgerState()
    from_snapshot, kind = ledger.apply(world.central.anchor, from_snapshot, updates[0], "S1")
    assert kind == "snapshot"
    for raw in updates[1:]:
        from_snapshot, _ = ledger.apply(world.central.anchor, from_snapshot, raw, "S1")
    replayed = ledger.LedgerState()
    for row in (
        scopes.ScopeVersion.select()
        .where(scopes.ScopeVersion.scope == store_scope("S1"))
        .order_by(scopes.ScopeVersion.version)
    ):
        replayed, _ = ledger.apply(world.central.anchor, replayed, bytes(row.signed), "S1")
    assert replayed.version == from_snapshot.version
    assert replayed.chain == from_snapshot.chain
    assert set(replayed.campaigns) == set(from_snapshot.campaigns) == {"A"}
    assert list(replayed.redeemed) == list(from_snapshot.redeemed)
    assert list(replayed.revoked) == list(from_snapshot.revoked)
    assert replayed.usage == from_snapshot.usage
    assert replayed.tills == from_snapshot.tills and len(replayed.tills) == 4
    assert replayed.tills[tills[1]].revoked and not replayed.tills[tills[0]].revoked


def test_a_scope_delta_out_of_order_is_a_gap_and_an_old_one_a_rollback(world: World) -> None:
    pub = _setup(world)
    world.campaign(id="ALL")
    pub.tick()
    assert world.engine.import_ledger(_scope_file(world, "S1")).applied
    have = world.engine.ledger.version
    for n in range(2):
        world.central.mark([10**9 + n], "revoked")
        pub.tick()
    rows = list(
        scopes.ScopeVersion.select()
        .where(scopes.ScopeVersion.scope == store_scope("S1"))
        .order_by(scopes.ScopeVersion.version)
    )
    newest = bytes(rows[-1].signed)
    assert [r.kind for r in world.engine.import_ledger(ledger_file([newest])).refused] == ["gap"]
    assert world.engine.ledger.version == have  # the gap changed nothing
    assert world.engine.import_ledger(ledger_file([bytes(rows[have].signed)])).applied
    oldest = bytes(rows[0].signed)
    refused = world.engine.import_ledger(ledger_file([oldest])).refused
    assert [r.kind for r in refused] == ["rollback"]
    assert world.engine.ledger.version == have + 1


def test_a_revoked_coupon_is_refused_at_every_store_holding_its_campaign(world: World) -> None:
    pub = _setup(world)
    world.campaign(id="ALL", amount_minor=500)
    [coupon] = world.central.issue("ALL", 1)
    pub.tick()
    world.central.mark([coupon.serial], "revoked")
    pub.tick()
    assert world.engine.import_ledger(_scope_file(world, "S1")).applied
    assert world.engine.redeem(coupon.token or "", basket(5000)).reason == Reason.REVOKED


def test_numbered_serials_travel_as_a_bitmap_under_two_bytes_each(world: World) -> None:
    pub = _setup(world)
    world.campaign(id="BIG")
    issued = world.central.issue("BIG", 3000, codes=True)  # typed codes: no signing cost
    pub.tick()
    redeemed = [c.serial for c in issued[::3]]  # one in three
    world.central.mark(redeemed, "redeemed")
    pub.tick()
    newest = (
        scopes.ScopeVersion.select()
        .where(scopes.ScopeVersion.scope == store_scope("S1"))
        .order_by(scopes.ScopeVersion.version.desc())
        .first()
    )
    body = ledger.verify_update(world.central.anchor, bytes(newest.signed)).body
    # Two bytes a serial and a small fixed header at this size (an array container); a
    # denser campaign takes less (bench/ledger_scope.py: 0.39 bytes at 1M issued).
    assert "redeemed" not in body and len(body["redeemed_rb"]) <= 2 * len(redeemed) + 64
    assert world.engine.import_ledger(_scope_file(world, "S1")).applied
    held = world.engine.ledger.redeemed
    assert all(s in held for s in redeemed) and issued[1].serial not in held


def test_a_quiet_store_gets_a_heartbeat_before_its_ledger_would_look_stale(world: World) -> None:
    pub = _setup(world)
    world.campaign(id="ALL")
    pub.tick()
    assert world.engine.import_ledger(_scope_file(world, "S1")).applied
    held = world.engine.ledger.version
    assert pub.tick().scope_versions == 0  # nothing changed: nothing new
    # A quarter of stale_warn_hours later, still nothing changed: an empty version comes, so
    # a till that syncs never shows "the ledger is out of date" in a quiet store.
    world.clock.advance(world.engine.ledger.policy.stale_warn_hours * 3600 // 4 + 1)
    assert pub.tick().scope_versions == 2  # S1 and S2
    assert world.engine.import_ledger(_scope_file(world, "S1", held)).applied
    assert world.engine.ledger.version == held + 1
    assert world.engine.ledger_age_s() == 0


def test_a_mixed_serial_set_travels_as_a_bitmap_and_a_list() -> None:
    """Numbered serials in the bitmap, old random ones in the 8-byte list: each in the form
    that is small on the wire and in the till's memory."""
    numbered = [(7 << 32) | n for n in range(1, 3001)]
    random_ = [secrets.randbits(64) | (1 << 31) for _ in range(100)]  # low half >= 2**24
    field = ledger.serial_field("redeemed", numbered + random_)
    assert set(field) == {"redeemed_rb", "redeemed"}
    assert len(field["redeemed"]) == 8 * len(random_) and len(field["redeemed_rb"]) < 8_000
    assert set(ledger.read_serials(field, "redeemed")) == set(numbered + random_)
    only_random = ledger.serial_field("revoked", random_)
    assert set(only_random) == {"revoked"}  # a bitmap of random serials would be bigger


# ---------------------------------------------------------------- the store's tills (issue 16)


def _enroll(world: World, store: str) -> str:
    code, _ = new_enroll_code(world.central, store)
    return enroll(world.central, code, secrets.token_bytes(32)).terminal


def _scope_state(world: World, store: str) -> ledger.LedgerState:
    state = ledger.LedgerState()
    for raw in read_file(_scope_file(world, store)):
        state, _ = ledger.apply(world.central.anchor, state, raw, store)
    return state


def _newest_body(store: str) -> dict[str, object]:
    row = (
        scopes.ScopeVersion.select()
        .where(scopes.ScopeVersion.scope == store_scope(store))
        .order_by(scopes.ScopeVersion.version.desc())
        .first()
    )
    _, signed = cbor2.loads(bytes(row.signed))
    return dict(cbor2.loads(cose.parse_sign1(signed).payload))


def test_a_store_ledger_lists_its_own_tills_and_not_another_stores(world: World) -> None:
    pub = _setup(world)
    world.campaign(id="ALL")
    a, b, other = _enroll(world, "S1"), _enroll(world, "S1"), _enroll(world, "S2")
    pub.tick()
    keys = {r.id: bytes.fromhex(r.public_key) for r in TerminalRow.select()}
    s1 = _scope_state(world, "S1")
    assert s1.tills == {t: ledger.TillKey(keys[t], False) for t in (a, b)}
    assert set(_scope_state(world, "S2").tills) == {other}
    assert world.central.state_at(world.central.latest().version).tills == {}  # chain-wide
    # The till takes them with its store's ledger, and keeps them over a restart.
    assert world.engine.import_ledger(_scope_file(world, "S1")).applied
    assert world.engine.ledger.tills == s1.tills
    assert world.engine.ledger.summary()["tills"] == 2
    assert world.reopen().ledger.tills == s1.tills


def test_an_enrollment_and_a_revocation_reach_the_stores_tills_at_the_next_tick(
    world: World,
) -> None:
    pub = _setup(world)
    world.campaign(id="ALL")
    a = _enroll(world, "S1")
    pub.tick()
    assert world.engine.import_ledger(_scope_file(world, "S1")).applied
    assert pub.tick().scope_versions == 0  # nothing changed: nothing new
    b = _enroll(world, "S1")
    assert pub.tick().scope_versions == 1  # S1 only: S2's tills did not change
    assert set(_newest_body("S1")["tills"]) == {a, b}  # type: ignore[arg-type]
    revoke_terminal(world.central, a)
    assert pub.tick().scope_versions == 1
    assert _newest_body("S1")["tills"][a]["revoked"] is True  # type: ignore[index]
    held = world.engine.ledger.version
    assert world.engine.import_ledger(_scope_file(world, "S1", held)).applied
    tills = world.engine.ledger.tills
    assert set(tills) == {a, b} and tills[a].revoked and not tills[b].revoked
    # A change elsewhere leaves the tills out of the delta (the till keeps its map).
    world.central.mark([10**9], "revoked")
    pub.tick()
    assert "tills" not in _newest_body("S1")
    held = world.engine.ledger.version
    assert world.engine.import_ledger(_scope_file(world, "S1", held)).applied
    assert world.engine.ledger.tills == tills


def _delta_with(world: World, tills: object) -> bytes:
    key, cert = world.central.active_key(PURPOSE_LEDGER)
    state = world.engine.ledger
    body = {
        "scope": state.scope,
        "type": "delta",
        "version": state.version + 1,
        "prev": state.chain,
        "issued_at": state.issued_at,
        "tills": tills,
    }
    return ledger_file([ledger.sign_update(key, cert, body)])


def test_a_malformed_tills_map_is_a_damaged_update(world: World) -> None:
    pub = _setup(world)
    world.campaign(id="ALL")
    _enroll(world, "S1")
    pub.tick()
    assert world.engine.import_ledger(_scope_file(world, "S1")).applied
    have = world.engine.ledger.tills
    good = {"key": bytes(32), "revoked": False}
    for bad in (
        [["S1-001", good]],  # not a map
        {"bad id!": good},
        {"x" * 65: good},
        {"S1-009": {"key": bytes(31), "revoked": False}},
        {"S1-009": {"key": "00" * 32, "revoked": False}},
        {"S1-009": {"key": bytes(32), "revoked": 1}},
        {"S1-009": {"key": bytes(32)}},
        {"S1-009": bytes(32)},
    ):
        refused = world.engine.import_ledger(_delta_with(world, bad)).refused
        assert [r.kind for r in refused] == ["damaged"], bad
        assert world.engine.ledger.tills == have
    # The same delta, well formed, replaces the map whole.
    assert world.engine.import_ledger(_delta_with(world, {"S1-009": good})).applied
    assert world.engine.ledger.tills == {"S1-009": ledger.TillKey(bytes(32), False)}
