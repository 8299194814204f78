"""The interoperability promise (DESIGN.md): any COSE library verifies our tokens with the
issuer public key. Checked against pycose, an independent COSE implementation, in both
directions."""

from __future__ import annotations

import hashlib
import zlib

import cbor2
import pytest
from pycose.algorithms import EdDSA
from pycose.headers import KID, Algorithm
from pycose.keys import OKPKey
from pycose.keys.curves import Ed25519
from pycose.messages import Sign1Message

from coupons import base45, cose, tokens
from coupons.keys import PURPOSE_ISSUER
from coupons.reasons import Reason
from coupons.tokens import PREFIX, Claims
from tests.conftest import T0, World, basket

NBF = int(T0)
EXP = NBF + 30 * 24 * 3600


def cose_bytes(token: str) -> bytes:
    """What a third party does: strip the prefix, base45-decode, inflate if zlib."""
    assert token.startswith(PREFIX)
    data = base45.decode(token[len(PREFIX) :])
    return zlib.decompress(data) if data[0] == 0x78 else data


def pycose_decode(data: bytes) -> Sign1Message:
    try:
        return Sign1Message.decode(data)
    except TypeError:
        # pycose 1.1 expects a list and a dict from cbor2; cbor2 >= 6 gives a tuple and a
        # frozendict inside a tag (TimothyClaeys/pycose#141). Hand pycose the same values
        # as list and dict; header parsing, Sig_structure and verification stay pycose's.
        obj = cbor2.loads(data)
        assert isinstance(obj, cbor2.CBORTag) and obj.tag == 18
        fields = list(obj.value)
        fields[1] = dict(fields[1])
        return Sign1Message.from_cose_obj(fields, True)


def public_okp(public_key: bytes) -> OKPKey:
    return OKPKey(crv=Ed25519, x=public_key)


def issuer_key(world: World) -> cose.SigningKey:
    key, _ = world.central._active(PURPOSE_ISSUER)
    return key


@pytest.fixture
def issued(world: World) -> str:
    world.campaign(id="TEN", amount_minor=1000, stacking="any")
    (token,) = world.issue("TEN")
    world.sync_ledger()
    return token


def test_pycose_verifies_a_project_token(world: World, issued: str) -> None:
    key = issuer_key(world)
    msg = pycose_decode(cose_bytes(issued))
    assert msg.get_attr(Algorithm) is EdDSA
    assert msg.get_attr(KID) == key.kid
    msg.key = public_okp(key.public)
    assert msg.verify_signature() is True
    claims = cbor2.loads(msg.payload)
    assert claims[-1] == "TEN" and claims[5] <= claims[4]


@pytest.mark.parametrize("campaign", ["C", "LONG" * 8])
def test_pycose_verifies_plain_and_compressed_tokens(campaign: str) -> None:
    key = cose.SigningKey.generate()
    token = tokens.issue(
        key,
        Claims(
            campaign,
            2**64 - 1,
            NBF,
            EXP,
            hashlib.sha256(b"customer").digest()[:16],
            bytes.fromhex("04a2c31d5e6f80"),
        ),
    )
    compressed = base45.decode(token[len(PREFIX) :])[0] == 0x78
    assert compressed == (campaign != "C")
    msg = pycose_decode(cose_bytes(token))
    msg.key = public_okp(key.public)
    assert msg.verify_signature() is True


def test_pycose_rejects_a_tampered_token(world: World, issued: str) -> None:
    key = issuer_key(world)
    obj = cbor2.loads(cose_bytes(issued))
    protected, unprotected, payload, signature = obj.value
    claims = cbor2.loads(payload)
    claims[4] += 365 * 24 * 3600  # stretch the expiry by a year
    for altered in (
        [protected, unprotected, cbor2.dumps(claims), signature],
        [protected, unprotected, payload, signature[:-1] + bytes([signature[-1] ^ 1])],
    ):
        msg = pycose_decode(cbor2.dumps(cbor2.CBORTag(18, altered)))
        msg.key = public_okp(key.public)
        assert msg.verify_signature() is False
        # and the till agrees
        d = world.engine.check(
            PREFIX + base45.encode(cbor2.dumps(cbor2.CBORTag(18, altered))), basket(5000)
        )
        assert not d.accepted and d.reason is Reason.BAD_SIGNATURE


def test_pycose_rejects_a_token_checked_with_another_key(issued: str) -> None:
    msg = pycose_decode(cose_bytes(issued))
    msg.key = public_okp(cose.SigningKey.generate().public)
    assert msg.verify_signature() is False


def _pycose_sign(key: cose.SigningKey, payload: bytes) -> bytes:
    msg = Sign1Message(phdr={Algorithm: EdDSA, KID: key.kid}, payload=payload)
    msg.key = OKPKey(crv=Ed25519, d=key.seed, x=key.public)
    encoded: bytes = msg.encode()
    return encoded


def test_pycose_signed_message_verifies_with_terminal_cose() -> None:
    key = cose.SigningKey.generate()
    claims = Claims("SPRING", 12345, NBF, EXP, customer_ref=b"\x01" * 16)
    data = _pycose_sign(key, claims.to_cbor())
    parsed = cose.parse_sign1(data)
    assert parsed.kid == key.kid
    assert cose.verify_sign1(parsed, key.public)
    assert not cose.verify_sign1(parsed, cose.SigningKey.generate().public)
    token = tokens.parse(PREFIX + base45.encode(data))
    assert token.claims == claims


def test_pycose_signed_untagged_message_verifies_with_terminal_cose() -> None:
    key = cose.SigningKey.generate()
    msg = Sign1Message(
        phdr={Algorithm: EdDSA, KID: key.kid}, payload=Claims("C", 1, NBF, EXP).to_cbor()
    )
    msg.key = OKPKey(crv=Ed25519, d=key.seed, x=key.public)
    parsed = cose.parse_sign1(msg.encode(tag=False))
    assert cose.verify_sign1(parsed, key.public)


def test_token_made_by_pycose_with_the_issuer_key_is_accepted(world: World, issued: str) -> None:
    """Another implementation holding the issuer key makes coupons the till takes."""
    key = issuer_key(world)
    data = _pycose_sign(key, Claims("TEN", 777, NBF, EXP).to_cbor())
    d = world.engine.check(PREFIX + base45.encode(data), basket(5000))
    assert d.accepted and d.discount_minor == 1000 and d.serial == f"{777:016x}"


def test_pycose_message_with_wrong_key_is_refused_by_the_till(world: World, issued: str) -> None:
    real_kid = issuer_key(world).kid
    attacker = cose.SigningKey.generate()
    msg = Sign1Message(
        phdr={Algorithm: EdDSA, KID: real_kid}, payload=Claims("TEN", 778, NBF, EXP).to_cbor()
    )
    msg.key = OKPKey(crv=Ed25519, d=attacker.seed, x=attacker.public)
    d = world.engine.check(PREFIX + base45.encode(msg.encode()), basket(5000))
    assert not d.accepted and d.reason is Reason.BAD_SIGNATURE


def test_ledger_key_certificate_verifies_with_pycose(world: World) -> None:
    """Certificates and ledger updates use the same envelope, so they verify too."""
    anchor = world.central.anchor
    world.central.publish()
    cert_raw, signed = cbor2.loads(world.central.deltas(0)[0])
    cert_msg = pycose_decode(cert_raw)
    cert_msg.key = public_okp(anchor.public_key)
    assert cert_msg.verify_signature() is True
    ledger_public = cbor2.loads(cert_msg.payload)[3]
    update_msg = pycose_decode(signed)
    update_msg.key = public_okp(ledger_public)
    assert update_msg.verify_signature() is True
