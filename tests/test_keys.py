"""Trust anchor and key certificates; issuer and ledger key rotation and revocation as a
terminal sees them through the ledger."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest

from coupons import cose, setup, tokens
from coupons.keys import PURPOSE_ISSUER, PURPOSE_LEDGER, CertError, TrustAnchor, make_cert
from coupons.ledger import LedgerState, apply, ledger_file
from coupons.reasons import Reason
from tests.conftest import T0, World, basket, write_json

NOW = int(T0)


@pytest.fixture
def root() -> cose.SigningKey:
    return cose.SigningKey(bytes(range(32)))


# ---------------------------------------------------------------- trust anchor file


def test_fingerprint_format_and_stability(root: cose.SigningKey) -> None:
    anchor = TrustAnchor(root.public)
    fp = anchor.fingerprint
    assert re.fullmatch(r"SHA256:[0-9a-f]{4}(:[0-9a-f]{4}){7}", fp), fp
    assert fp == TrustAnchor(root.public).fingerprint
    assert fp != TrustAnchor(cose.SigningKey.generate().public).fingerprint
    assert anchor.kid == cose.key_id(root.public) and len(anchor.kid) == 4


def test_anchor_json_round_trip(tmp_path: Path, root: cose.SigningKey) -> None:
    anchor = TrustAnchor(root.public)
    path = tmp_path / "anchor.json"
    path.write_text(anchor.to_json())
    doc = json.loads(path.read_text())
    assert doc["format"] == "edge-redeem-trust-anchor/1"
    assert doc["fingerprint"] == anchor.fingerprint and doc["kid"] == anchor.kid.hex()
    assert TrustAnchor.load(path) == anchor


def test_central_writes_the_anchor_the_terminal_holds(world: World) -> None:
    central_copy = TrustAnchor.load(world.central.data / "trust-anchor.json")
    terminal_copy = TrustAnchor.load(world.data / "trust-anchor.json")
    assert central_copy == terminal_copy == world.central.anchor


def test_missing_anchor_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(CertError, match="unreadable") as err:
        TrustAnchor.load(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{",
        "not json",
        "[]",
        "null",
        '{"root_public_key": 5}',
        '{"kid": "abcd"}',
        '{"root_public_key": "zz"}',
        '{"root_public_key": "abc"}',
    ],
)
def test_unreadable_anchor_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "anchor.json"
    path.write_text(content)
    with pytest.raises(CertError, match="unreadable") as err:
        TrustAnchor.load(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("nbytes", [0, 16, 31, 33, 64])
def test_anchor_with_wrong_key_length(tmp_path: Path, nbytes: int) -> None:
    path = write_json(tmp_path / "anchor.json", {"root_public_key": "ab" * nbytes})
    with pytest.raises(CertError, match="does not hold an Ed25519 key") as err:
        TrustAnchor.load(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"kid": "abcd"}', "missing field 'root_public_key'"),
        ("[]", "not a JSON object but list"),
        ('{"root_public_key": 5}', "field 'root_public_key' must be hex text, not int"),
        ('{"root_public_key": "zz"}', "field 'root_public_key' is not hex: 'zz'"),
    ],
)
def test_anchor_errors_name_the_field(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "b.json"
    path.write_text(content)
    with pytest.raises(CertError) as err:
        TrustAnchor.load(path)
    assert str(err.value) == f"trust anchor {path} is unreadable: {words}"


def test_init_with_an_anchor_lacking_the_key_says_which_field(tmp_path: Path) -> None:
    """`redeem init --trust-anchor b.json`, as an installer types it."""
    anchor = tmp_path / "b.json"
    anchor.write_text('{"format": "edge-redeem-trust-anchor/1", "kid": "abcd"}')
    proc = subprocess.run(
        [sys.executable, "-m", "terminal.cli", "init", "--data", str(tmp_path / "t")]
        + ["--trust-anchor", str(anchor), "--store", "S1", "--terminal", "T1"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.returncode == 2
    assert f"trust anchor {anchor} is unreadable: missing field 'root_public_key'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_anchor_file_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(CertError, match="unreadable"):
        TrustAnchor.load(tmp_path)


# ---------------------------------------------------------------- certificates


def test_cert_round_trip(root: cose.SigningKey) -> None:
    key = cose.SigningKey.generate()
    raw = make_cert(root, key, PURPOSE_LEDGER, NOW - 60, NOW + 3600)
    cert = TrustAnchor(root.public).check_cert(raw)
    assert (cert.kid, cert.purpose, cert.public_key) == (key.kid, PURPOSE_LEDGER, key.public)
    assert cert.raw == raw
    assert cert.valid_at(NOW) and cert.valid_at(NOW - 60)
    assert not cert.valid_at(NOW - 61) and not cert.valid_at(NOW + 3600)


def test_cert_from_another_root_is_refused(root: cose.SigningKey) -> None:
    other_root = cose.SigningKey.generate()
    raw = make_cert(other_root, cose.SigningKey.generate(), PURPOSE_ISSUER, 0, NOW * 2)
    with pytest.raises(CertError, match="not signed by the trust anchor"):
        TrustAnchor(root.public).check_cert(raw)


def test_cert_from_another_root_claiming_our_root_kid_is_refused(root: cose.SigningKey) -> None:
    other_root = cose.SigningKey.generate()
    key = cose.SigningKey.generate()
    payload = cbor2.dumps({1: key.kid, 2: PURPOSE_ISSUER, 3: key.public, 4: 0, 5: NOW * 2})
    protected = cbor2.dumps({1: -8, 4: root.kid})
    sig = other_root.sign(cbor2.dumps(["Signature1", protected, b"", payload]))
    raw = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, sig]))
    with pytest.raises(CertError, match="not signed by the trust anchor"):
        TrustAnchor(root.public).check_cert(raw)


def test_cert_with_edited_validity_is_refused(root: cose.SigningKey) -> None:
    raw = make_cert(root, cose.SigningKey.generate(), PURPOSE_ISSUER, NOW, NOW + 10)
    tag = cbor2.loads(raw)
    protected, unprotected, payload, sig = tag.value
    body = dict(cbor2.loads(payload))
    body[5] = NOW + 10**9
    edited = cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected, cbor2.dumps(body), sig]))
    with pytest.raises(CertError, match="not signed by the trust anchor"):
        TrustAnchor(root.public).check_cert(edited)


def test_cert_whose_kid_does_not_match_its_key_is_refused(root: cose.SigningKey) -> None:
    a, b = cose.SigningKey.generate(), cose.SigningKey.generate()
    payload = cbor2.dumps({1: a.kid, 2: PURPOSE_ISSUER, 3: b.public, 4: 0, 5: NOW * 2})
    with pytest.raises(CertError, match="key id does not match"):
        TrustAnchor(root.public).check_cert(root.sign1(payload))


@pytest.mark.parametrize("payload", [cbor2.dumps({1: b"abcd"}), cbor2.dumps([1, 2, 3])])
def test_cert_with_missing_fields_is_refused(root: cose.SigningKey, payload: bytes) -> None:
    with pytest.raises(CertError):
        TrustAnchor(root.public).check_cert(root.sign1(payload))


@pytest.mark.parametrize("raw", [b"", b"\x00", b"garbage", cbor2.dumps([1, 2])])
def test_malformed_cert_is_refused(root: cose.SigningKey, raw: bytes) -> None:
    with pytest.raises(CertError, match="malformed"):
        TrustAnchor(root.public).check_cert(raw)


# ---------------------------------------------------------------- rotation and revocation


def _setup(world: World) -> str:
    world.campaign(id="TEN", amount_minor=1000, stacking="any")
    (token,) = world.issue("TEN")
    world.sync_ledger()
    assert world.engine.check(token, basket(5000)).accepted
    return token


def test_key_rotation_keeps_old_tokens_and_accepts_new_ones(world: World) -> None:
    old_token = _setup(world)
    old_cert = cbor2.loads(world.central.deltas(0)[0])[0]
    world.clock.advance(3600)
    new_issuer = world.central.rotate_key(PURPOSE_ISSUER)
    new_ledger = world.central.rotate_key(PURPOSE_LEDGER)
    (new_token,) = world.issue("TEN")
    world.sync_ledger()  # the new version is signed with the new ledger key
    cert_raw = cbor2.loads(world.central.deltas(world.engine.ledger.version - 1)[0])[0]
    assert cert_raw != old_cert
    assert world.central.anchor.check_cert(cert_raw).kid.hex() == new_ledger
    assert bytes.fromhex(new_issuer) in world.engine.ledger.issuer_keys
    assert len(world.engine.ledger.issuer_keys) == 2
    old = world.engine.check(old_token, basket(5000))
    new = world.engine.check(new_token, basket(5000))
    assert old.accepted, old
    assert new.accepted, new
    # and the rotation survives a restart (each stored version verified again)
    world.reopen()
    assert world.engine.check(old_token, basket(5000)).accepted
    assert world.engine.check(new_token, basket(5000)).accepted


def test_revoked_issuer_key_refuses_its_tokens(world: World) -> None:
    old_token = _setup(world)
    old_kid = next(iter(world.engine.ledger.issuer_keys)).hex()
    world.central.rotate_key(PURPOSE_ISSUER)
    (new_token,) = world.issue("TEN")
    world.central.revoke_key(old_kid)
    world.sync_ledger()
    old = world.engine.check(old_token, basket(5000))
    assert not old.accepted and old.reason is Reason.KEY_REVOKED
    assert world.engine.check(new_token, basket(5000)).accepted
    assert bytes.fromhex(old_kid) not in world.engine.ledger.issuer_keys
    # still refused after more versions and after a restart
    world.sync_ledger()
    world.reopen()
    again = world.engine.check(old_token, basket(5000))
    assert not again.accepted and again.reason is Reason.KEY_REVOKED
    assert world.engine.check(new_token, basket(5000)).accepted


def test_revoked_key_is_refused_when_starting_from_a_snapshot(world: World) -> None:
    old_token = _setup(world)
    old_kid = next(iter(world.engine.ledger.issuer_keys)).hex()
    world.central.rotate_key(PURPOSE_ISSUER)
    world.central.revoke_key(old_kid)
    world.central.publish()
    # a second terminal that only ever sees a snapshot
    data2 = world.data.parent / "terminal2"
    world.engine.db.close()
    setup.init(data2, world.central.data / "trust-anchor.json", "S1", "T2")
    engine2 = setup.open_engine(data2, world.clock)
    try:
        result = engine2.import_ledger(ledger_file([world.central.snapshot()]))
        assert not result.refused and result.applied
        d = engine2.check(old_token, basket(5000))
        assert not d.accepted and d.reason is Reason.KEY_REVOKED
    finally:
        engine2.db.close()
        world.reopen()


def test_token_signed_before_its_key_was_valid_is_refused(world: World) -> None:
    """A leaked issuer key cannot back-date coupons to before its certificate began."""
    _setup(world)
    kid = next(iter(world.engine.ledger.issuer_keys))
    key = world.central._key(kid.hex())
    early = tokens.issue(key, tokens.Claims("TEN", 5, NOW - 7 * 24 * 3600, NOW + 24 * 3600))
    d = world.engine.check(early, basket(5000))
    assert not d.accepted and d.reason is Reason.UNKNOWN_KEY


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff not cbor",
        cbor2.dumps({1: 1234, 2: PURPOSE_ISSUER, 3: b"\x00" * 32, 4: 0, 5: 1}),
        cbor2.dumps({1: b"abcd", 2: PURPOSE_ISSUER, 3: "key", 4: 0, 5: 1}),
        cbor2.dumps({1: b"abcd", 2: 7, 3: b"\x00" * 32, 4: 0, 5: 1}),
        cbor2.dumps({1: b"abcd", 2: PURPOSE_ISSUER, 3: b"\x00" * 32, 4: "soon", 5: 1}),
    ],
)
def test_cert_with_wrong_field_types_is_refused(root: cose.SigningKey, payload: bytes) -> None:
    with pytest.raises(CertError):
        TrustAnchor(root.public).check_cert(root.sign1(payload))


def test_snapshot_after_ledger_key_rotation_is_importable(world: World) -> None:
    _setup(world)
    world.clock.advance(24 * 3600)
    world.central.rotate_key(PURPOSE_LEDGER)
    apply(world.central.anchor, LedgerState(), world.central.snapshot())
