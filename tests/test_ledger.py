"""The signed ledger as the terminal takes it in: snapshots and hash-chained deltas are
applied; forged, truncated, older, gap-skipping and damaged updates are refused, the
terminal keeps the version it has, and every refusal is journaled as a flag."""

from __future__ import annotations

import json
from typing import Any

import cbor2
import pytest

from coupons import cose, ledger, serials, tokens
from coupons.journal import Entry
from coupons.keys import PURPOSE_ISSUER, PURPOSE_LEDGER, make_cert
from coupons.ledger import LedgerRefused, ledger_file, sign_update
from coupons.reasons import Reason
from tests.conftest import T0, World, basket

NOW = int(T0)


# ---------------------------------------------------------------- helpers


def ledger_flags() -> list[dict[str, Any]]:
    rows = (
        Entry.select()
        .where((Entry.kind == "flag") & (Entry.reason == "ledger_refused"))
        .order_by(Entry.seq)
    )
    return [json.loads(r.detail) for r in rows]


def ready(world: World) -> str:
    """A campaign, a token and two published versions held by the terminal."""
    world.campaign(id="TEN", amount_minor=1000, stacking="any")
    (token,) = world.issue("TEN")
    world.sync_ledger()
    world.clock.advance(60)
    world.sync_ledger()
    assert world.engine.ledger.version == 2
    return token


def refused(world: World, data: bytes, kind: str, token: str | None = None) -> LedgerRefused:
    """Import `data`, expect one refusal of `kind`, and check nothing else changed."""
    led = world.engine.ledger
    before = (led.version, led.chain, led.issued_at)
    flags_before = len(ledger_flags())
    result = world.engine.import_ledger(data)
    assert not result.applied, result.applied
    assert [r.kind for r in result.refused] == [kind], result.refused
    led = world.engine.ledger
    assert (led.version, led.chain, led.issued_at) == before
    flags = ledger_flags()
    assert len(flags) == flags_before + 1
    assert flags[-1]["kind"] == kind and flags[-1]["have_version"] == before[0]
    if token is not None:  # the till still works on the ledger it kept
        assert world.engine.check(token, basket(5000)).accepted
    return result.refused[0]


def real_ledger_key(world: World) -> tuple[cose.SigningKey, bytes]:
    return world.central._active(PURPOSE_LEDGER)


def next_delta(world: World, **body: Any) -> dict[str, Any]:
    """A body that would be the valid next delta for the terminal (plus overrides)."""
    led = world.engine.ledger
    doc: dict[str, Any] = {
        "type": "delta",
        "version": led.version + 1,
        "prev": led.chain,
        "issued_at": int(world.clock.now()),
    }
    doc.update(body)
    return doc


def signed_by_central(world: World, body: dict[str, Any]) -> bytes:
    key, cert = real_ledger_key(world)
    return sign_update(key, cert, body)


# ---------------------------------------------------------------- applying


def test_delta_chain_applies_in_one_file(world: World) -> None:
    world.campaign(id="TEN", amount_minor=1000, stacking="any")
    (token,) = world.issue("TEN")
    for _ in range(3):
        world.central.publish()
        world.clock.advance(60)
    result = world.engine.import_ledger(ledger_file(world.central.deltas(0)))
    assert result.applied == [1, 2, 3] and not result.refused and not result.current
    assert world.engine.ledger.version == 3
    assert world.engine.ledger.chain == bytes(world.central.latest().chain)  # type: ignore
    assert world.engine.ledger.issued_at == world.central.latest().issued_at  # type: ignore
    assert world.engine.check(token, basket(5000)).accepted
    applied = Entry.select().where((Entry.kind == "ledger") & (Entry.reason == "applied"))
    assert [json.loads(e.detail)["version"] for e in applied] == [1, 2, 3]
    assert ledger_flags() == []


def test_delta_chain_applies_one_file_at_a_time(world: World) -> None:
    token = ready(world)
    for expected in (3, 4, 5):
        world.sync_ledger()
        assert world.engine.ledger.version == expected
    assert world.engine.check(token, basket(5000)).accepted


def test_snapshot_import_matches_the_delta_chain(world: World) -> None:
    world.campaign(id="TEN", amount_minor=1000, stacking="any")
    world.campaign(id="CODE", amount_minor=300, stacking="any")
    (token,) = world.issue("TEN")
    (code,) = world.issue("CODE", 1, codes=True)
    world.central.publish()
    world.clock.advance(60)
    revoked_serial = world.central.issue("TEN", 1)[0]
    world.central.mark([revoked_serial.serial, 2**64 - 1], "revoked")
    world.central.publish()
    snapshot = world.central.snapshot()
    reference = world.central.state()

    result = world.engine.import_ledger(ledger_file([snapshot]))
    assert result.applied == [2] and not result.refused
    led = world.engine.ledger
    assert led.summary() == reference.summary()
    assert led.chain == bytes(world.central.latest().chain)  # type: ignore[union-attr]
    assert led.plain_salt == reference.plain_salt and led.plain_salt
    assert world.engine.check(token, basket(5000)).accepted
    assert world.engine.check(code.lower(), basket(5000)).accepted
    d = world.engine.check(revoked_serial.token or "", basket(5000))
    assert not d.accepted and d.reason is Reason.REVOKED

    # deltas published later follow the snapshot
    world.clock.advance(60)
    world.central.mark([serials_of(token, world)], "redeemed")
    world.sync_ledger()
    assert world.engine.ledger.version == 3
    d = world.engine.check(token, basket(5000))
    assert not d.accepted and d.reason is Reason.ALREADY_REDEEMED


def serials_of(token: str, world: World) -> int:
    return tokens.parse(token).claims.serial


def test_snapshot_on_top_of_older_version_jumps_ahead(world: World) -> None:
    token = ready(world)
    for _ in range(3):
        world.clock.advance(60)
        world.central.publish()
    result = world.engine.import_ledger(ledger_file([world.central.snapshot()]))
    assert result.applied == [5]
    assert world.engine.ledger.version == 5
    world.sync_ledger()
    assert world.engine.ledger.version == 6
    assert world.engine.check(token, basket(5000)).accepted


def test_reimporting_the_current_version_is_harmless(world: World) -> None:
    token = ready(world)
    current = world.central.deltas(1)
    result = world.engine.import_ledger(ledger_file(current))
    assert result.current == [2] and not result.applied and not result.refused
    result = world.engine.import_ledger(ledger_file([world.central.snapshot()]))
    assert result.current == [2] and not result.applied and not result.refused
    assert world.engine.ledger.version == 2
    assert ledger_flags() == []
    assert world.engine.check(token, basket(5000)).accepted


def test_file_with_good_and_bad_updates_applies_the_good_prefix(world: World) -> None:
    token = ready(world)
    world.central.publish()
    world.central.publish()
    v3, v4 = world.central.deltas(2)
    cert, signed = cbor2.loads(v3)
    forged_v3 = cbor2.dumps([cert, signed[:-1] + bytes([signed[-1] ^ 0x01])])
    result = world.engine.import_ledger(ledger_file([forged_v3, v4]))
    assert not result.applied
    assert [r.kind for r in result.refused] == ["forged", "gap"]
    assert world.engine.ledger.version == 2
    assert [f["kind"] for f in ledger_flags()] == ["forged", "gap"]
    result = world.engine.import_ledger(ledger_file([v3, v4]))
    assert result.applied == [3, 4]
    assert world.engine.check(token, basket(5000)).accepted


# ---------------------------------------------------------------- refusals


def test_flipped_signature_is_forged(world: World) -> None:
    token = ready(world)
    world.central.publish()
    (raw,) = world.central.deltas(2)
    cert, signed = cbor2.loads(raw)
    obj = cbor2.loads(signed)
    protected, unprotected, payload, sig = obj.value
    for i in (0, 31, 63):
        bad_sig = bytearray(sig)
        bad_sig[i] ^= 0x80
        bad = cbor2.dumps(
            [
                cert,
                cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected, payload, bytes(bad_sig)])),
            ]
        )
        refused(world, ledger_file([bad]), "forged", token)
    world.engine.import_ledger(ledger_file([raw]))
    assert world.engine.ledger.version == 3


def test_edited_payload_is_forged(world: World) -> None:
    token = ready(world)
    world.central.publish()
    (raw,) = world.central.deltas(2)
    cert, signed = cbor2.loads(raw)
    protected, unprotected, payload, sig = cbor2.loads(signed).value
    body = dict(cbor2.loads(payload))
    body["revoked"] = serials.pack([serials_of(token, world)])
    edited = cbor2.dumps(
        cbor2.CBORTag(18, [protected, unprotected, cbor2.dumps(body, canonical=True), sig])
    )
    refused(world, ledger_file([cbor2.dumps([cert, edited])]), "forged", token)


def test_ledger_key_not_certified_by_our_root_is_forged(world: World) -> None:
    token = ready(world)
    other_root = cose.SigningKey.generate()
    their_key = cose.SigningKey.generate()
    their_cert = make_cert(other_root, their_key, PURPOSE_LEDGER, NOW - 60, NOW + 10**8)
    body = next_delta(world, revoked=serials.pack([serials_of(token, world)]))
    err = refused(world, ledger_file([sign_update(their_key, their_cert, body)]), "forged", token)
    assert "trust anchor" in err.detail


def test_real_certificate_with_attackers_signature_is_forged(world: World) -> None:
    token = ready(world)
    _, real_cert = real_ledger_key(world)
    attacker = cose.SigningKey.generate()
    body = next_delta(world, revoked=serials.pack([serials_of(token, world)]))
    payload = cbor2.dumps({"format": ledger.UPDATE_FORMAT, **body}, canonical=True)
    real_kid = world.central.anchor.check_cert(real_cert).kid
    protected = cbor2.dumps({1: -8, 4: real_kid})
    sig = attacker.sign(cbor2.dumps(["Signature1", protected, b"", payload]))
    signed = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, sig]))
    refused(world, ledger_file([cbor2.dumps([real_cert, signed])]), "forged", token)


def test_update_signed_with_an_issuer_key_is_forged(world: World) -> None:
    """An issuer key is root-certified too, but only for coupons."""
    token = ready(world)
    key, cert = world.central._active(PURPOSE_ISSUER)
    body = next_delta(world, revoked=serials.pack([serials_of(token, world)]))
    err = refused(world, ledger_file([sign_update(key, cert, body)]), "forged", token)
    assert "ledger key" in err.detail


def test_update_issued_outside_the_ledger_keys_validity_is_forged(world: World) -> None:
    token = ready(world)
    key, cert = real_ledger_key(world)
    too_late = world.central.anchor.check_cert(cert).not_after + 1
    body = next_delta(world, issued_at=too_late)
    refused(world, ledger_file([sign_update(key, cert, body)]), "forged", token)


def test_truncated_file_is_refused_at_every_cut(world: World) -> None:
    token = ready(world)
    world.central.publish()
    world.central.publish()
    data = ledger_file(world.central.deltas(2))
    for cut in sorted(
        {
            1,
            2,
            10,
            40,
            100,
            len(data) // 3,
            len(data) // 2,
            len(data) - 64,
            len(data) - 2,
            len(data) - 1,
        }
    ):
        err = refused(world, data[:cut], "damaged", token)
        assert world.engine.ledger.version == 2, (cut, err)
    assert world.engine.import_ledger(data).applied == [3, 4]


def test_truncated_update_inside_a_valid_file_is_refused(world: World) -> None:
    token = ready(world)
    world.central.publish()
    (raw,) = world.central.deltas(2)
    for cut in (1, len(raw) // 2, len(raw) - 1):
        refused(world, ledger_file([raw[:cut]]), "damaged", token)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"not a ledger",
        cbor2.dumps({"format": "something-else/1", "updates": [b""]}),
        cbor2.dumps({"format": ledger.FILE_FORMAT, "updates": []}),
        cbor2.dumps({"format": ledger.FILE_FORMAT, "updates": [1, 2]}),
        cbor2.dumps({"format": ledger.FILE_FORMAT}),
        cbor2.dumps([ledger.FILE_FORMAT]),
    ],
)
def test_not_a_ledger_file_is_damaged(world: World, data: bytes) -> None:
    token = ready(world)
    refused(world, data, "damaged", token)


def test_older_delta_is_rollback(world: World) -> None:
    token = ready(world)
    world.central.publish()
    world.engine.import_ledger(ledger_file(world.central.deltas(2)))
    assert world.engine.ledger.version == 3
    v2 = world.central.deltas(1)[0]
    err = refused(world, ledger_file([v2]), "rollback", token)
    assert "not newer" in err.detail


def test_older_snapshot_is_rollback(world: World) -> None:
    token = ready(world)
    old_snapshot = world.central.snapshot()  # version 2
    world.central.mark([serials_of(token, world)], "revoked")
    world.central.publish()
    world.engine.import_ledger(ledger_file(world.central.deltas(2)))
    assert world.engine.check(token, basket(5000)).reason is Reason.REVOKED
    refused(world, ledger_file([old_snapshot]), "rollback")
    # the revocation is still in force
    assert world.engine.check(token, basket(5000)).reason is Reason.REVOKED


def test_rewritten_history_at_the_same_version_is_refused(world: World) -> None:
    """A validly signed snapshot claiming our version with another chain is not ours."""
    token = ready(world)
    key, cert = real_ledger_key(world)
    state = world.central.state()
    state.chain = bytes(32)
    refused(
        world, ledger_file([sign_update(key, cert, ledger.snapshot_body(state))]), "rollback", token
    )


def test_different_delta_at_the_same_version_is_not_current(world: World) -> None:
    """Only the very update we hold is "current"; another one signed for our version (a
    forked history, e.g. a central restored from backup) is refused and flagged."""
    token = ready(world)
    led = world.engine.ledger
    v2 = world.central.deltas(1)[0]
    prev = cbor2.loads(cbor2.loads(cbor2.loads(v2)[1]).value[2])["prev"]
    fork = signed_by_central(
        world,
        {
            "type": "delta",
            "version": 2,
            "prev": prev,
            "issued_at": led.issued_at,
            "revoked": serials.pack([serials_of(token, world)]),
        },
    )
    refused(world, ledger_file([fork]), "rollback", token)


def test_skipped_delta_is_gap(world: World) -> None:
    token = ready(world)
    world.central.publish()
    world.central.publish()
    v3, v4 = world.central.deltas(2)
    err = refused(world, ledger_file([v4]), "gap", token)
    assert "does not follow" in err.detail
    assert world.engine.import_ledger(ledger_file([v3, v4])).applied == [3, 4]


def test_delta_from_another_chain_is_gap(world: World) -> None:
    token = ready(world)
    body = next_delta(world, prev=bytes(32))
    refused(world, ledger_file([signed_by_central(world, body)]), "gap", token)


@pytest.mark.parametrize(
    "override",
    [
        {"revoked": b"\x00" * 7},  # not whole serials
        {"revoked": serials.pack([5]) + serials.pack([1])},  # not sorted
        {"redeemed": "serials"},  # wrong type
        {"campaigns": [{"id": "BAD", "kind": "nonsense"}]},  # invalid campaign
        {"campaigns": "TEN"},
        {"issuer_certs": [b"garbage"]},  # not a certificate
        {"policy": {"stale_warn_hours": -1}},
        {"policy": {"no_such_field": 1}},
        {"plain_codes": [[b"h", "TEN"]]},  # entry too short
        {"type": "merge"},  # unknown update type
        {"version": "three"},
        {"version": None},
        {"customer_usage": "TEN"},
        {"customer_usage": {"TEN": {b"\x01": -1}}},  # negative count
        {"customer_usage": {"TEN": {7: 1}}},  # reference neither bytes nor text
        {"customer_usage": {"TEN": {"member-7": True}}},
    ],
)
def test_damaged_body_is_refused(world: World, override: dict[str, Any]) -> None:
    token = ready(world)
    body = next_delta(world, **override)
    refused(world, ledger_file([signed_by_central(world, body)]), "damaged", token)


def test_body_that_is_not_a_ledger_update_is_damaged(world: World) -> None:
    token = ready(world)
    key, cert = real_ledger_key(world)
    for payload in (
        b"\xff\xff",
        cbor2.dumps([1, 2, 3]),
        cbor2.dumps({"format": "other/1", **next_delta(world)}),
    ):
        raw = cbor2.dumps([cert, key.sign1(payload)])
        refused(world, ledger_file([raw]), "damaged", token)


def test_every_refusal_leaves_one_flag_each(world: World) -> None:
    token = ready(world)
    world.central.publish()
    world.central.publish()
    v3, v4 = world.central.deltas(2)
    world.engine.import_ledger(ledger_file([v4]))  # gap
    world.engine.import_ledger(ledger_file([v3])[:-5])  # damaged
    world.engine.import_ledger(ledger_file(world.central.deltas(0)[:1]))  # rollback
    assert [f["kind"] for f in ledger_flags()] == ["gap", "damaged", "rollback"]
    assert all(f["have_version"] == 2 for f in ledger_flags())
    assert world.engine.check(token, basket(5000)).accepted


# ---------------------------------------------------------------- serial lists


def test_revoked_serial_is_refused_after_sync(world: World) -> None:
    world.campaign(id="TEN", amount_minor=1000, stacking="any")
    (token, other) = world.issue("TEN", 2)
    world.sync_ledger()
    assert world.engine.check(token, basket(5000)).accepted
    world.central.mark([serials_of(token, world)], "revoked")
    assert world.engine.check(token, basket(5000)).accepted  # not synced yet
    world.sync_ledger()
    d = world.engine.check(token, basket(5000))
    assert not d.accepted and d.reason is Reason.REVOKED
    assert world.engine.check(other, basket(5000)).accepted


def test_redeemed_elsewhere_is_already_redeemed(world: World) -> None:
    world.campaign(id="TEN", amount_minor=1000, stacking="any")
    (token, other) = world.issue("TEN", 2)
    world.sync_ledger()
    world.central.mark([serials_of(token, world)], "redeemed")
    world.sync_ledger()
    d = world.engine.redeem(token, basket(5000))
    assert not d.accepted and d.reason is Reason.ALREADY_REDEEMED
    assert world.engine.redeem(other, basket(5000)).accepted


def test_many_marks_across_versions(world: World) -> None:
    world.campaign(id="TEN", amount_minor=1000, stacking="any")
    issued = world.central.issue("TEN", 30)
    world.sync_ledger()
    world.central.mark([i.serial for i in issued[:10]], "revoked")
    world.sync_ledger()
    world.central.mark([i.serial for i in issued[10:20]], "redeemed")
    world.sync_ledger()
    reasons = [world.engine.check(i.token or "", basket(5000)).reason for i in issued]
    assert reasons == [Reason.REVOKED] * 10 + [Reason.ALREADY_REDEEMED] * 10 + [Reason.OK] * 10
    assert len(world.engine.ledger.revoked) == 10 and len(world.engine.ledger.redeemed) == 10


def test_customer_usage_in_deltas_and_snapshots_limits_the_customer(world: World) -> None:
    world.campaign(id="LIM", amount_minor=1000, stacking="any", uses_per_customer=1)
    ref = "6f1c0d0e9a8b7c6d5e4f30211a2b3c4d"
    (token,) = world.issue("LIM", 1, customer=bytes.fromhex(ref))
    (code,) = world.issue("LIM", 1, codes=True)
    world.sync_ledger()
    assert world.engine.ledger.customer_usage == {}  # a ledger without the field, as before
    assert world.engine.check(token, basket(5000, ref=ref)).accepted

    # Used once at another till: the central says so, the hash ref as 16 bytes, a loyalty
    # ref that is not hex as text.
    usage = {"LIM": {bytes.fromhex(ref): 1, "member-7": 1}}
    world.engine.import_ledger(
        ledger_file([signed_by_central(world, next_delta(world, customer_usage=usage))])
    )
    assert world.engine.ledger.customer_usage == {("LIM", ref): 1, ("LIM", "member-7"): 1}
    d = world.engine.check(token, basket(5000, ref=ref))
    assert not d.accepted and d.reason is Reason.CUSTOMER_LIMIT
    d = world.engine.check(code, basket(5000, ref="member-7"))
    assert not d.accepted and d.reason is Reason.CUSTOMER_LIMIT
    assert world.engine.check(code, basket(5000, ref="member-8")).accepted

    # A snapshot carries the same counts.
    state = world.engine.ledger
    body = ledger.snapshot_body(state)
    body.update(version=state.version + 1, chain=bytes(32), issued_at=int(world.clock.now()))
    result = world.engine.import_ledger(ledger_file([signed_by_central(world, body)]))
    assert result.applied == [state.version + 1], result.refused
    assert world.engine.ledger.customer_usage == state.customer_usage

    # The use was refunded there: a count of 0 frees the customer again.
    usage = {"LIM": {bytes.fromhex(ref): 0}}
    world.engine.import_ledger(
        ledger_file([signed_by_central(world, next_delta(world, customer_usage=usage))])
    )
    assert world.engine.ledger.customer_usage == {("LIM", "member-7"): 1}
    assert world.engine.check(token, basket(5000, ref=ref)).accepted


def test_the_central_publishes_only_changed_customer_counts(world: World) -> None:
    world.campaign(id="LIM", amount_minor=1000, stacking="any", uses_per_customer=2)
    world.campaign(id="ANY", amount_minor=1000, stacking="any")
    from sync.central.models import CustomerUse

    CustomerUse.insert_many(
        [
            {"campaign": "LIM", "customer": "ab" * 16, "count": 1},
            {"campaign": "ANY", "customer": "ab" * 16, "count": 5},  # no limit: not carried
        ]
    ).execute()
    world.sync_ledger()
    assert world.engine.ledger.customer_usage == {("LIM", "ab" * 16): 1}
    assert not world.central.changed()  # nothing new: no version to publish
    CustomerUse.update(count=2).where(CustomerUse.campaign == "LIM").execute()
    assert world.central.changed()
    world.sync_ledger()
    assert world.engine.ledger.customer_usage == {("LIM", "ab" * 16): 2}


def _cbor_map(pairs: list[tuple[Any, Any]]) -> bytes:
    """A CBOR map written pair by pair, so a key can appear twice (cbor2 would not)."""
    assert len(pairs) < 24
    return bytes([0xA0 + len(pairs)]) + b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in pairs)


def test_a_ledger_read_two_ways_is_damaged(world: World) -> None:
    """The ledger is read as strictly as a token: a body naming `version` twice (a plain
    CBOR reader keeps the last, another reader the first), bytes after a signed body, after
    an update or after the file are each one update the till cannot vouch for."""
    token = ready(world)
    key, cert = real_ledger_key(world)
    body = {"format": ledger.UPDATE_FORMAT, **next_delta(world)}
    twice = _cbor_map([*body.items(), ("version", body["version"] + 5)])
    trailing_body = cbor2.dumps(body, canonical=True) + b"\x00"
    for payload in (twice, trailing_body):
        refused(world, ledger_file([cbor2.dumps([cert, key.sign1(payload)])]), "damaged", token)
    good = signed_by_central(world, body)
    refused(world, ledger_file([good + b"\x00"]), "damaged", token)
    refused(world, ledger_file([good]) + b"\x00", "damaged", token)
    assert world.engine.import_ledger(ledger_file([good])).applied  # the same, read one way
