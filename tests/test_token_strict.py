"""Token strictness (RFC 9052 section 3, RFC 8949 preferred serialization): one token string,
one reading. Every message here carries a valid signature by the real issuer key, so only
the format checks stand between it and an accept: a repeated label or claim key (readers
disagree on which one counts), bytes after the claims or the header, a second spelling of
the envelope, a critical header, a label in both header buckets."""

from __future__ import annotations

from collections.abc import Callable

import cbor2
import pytest

from coupons import base45, cose, tokens
from coupons.journal import Entry
from coupons.keys import PURPOSE_ISSUER
from coupons.reasons import Reason
from coupons.tokens import PREFIX
from tests.conftest import T0, World, basket

NBF = int(T0)
EXP = NBF + 30 * 24 * 3600


def cbor_map(*pairs: tuple[object, object]) -> bytes:
    """A CBOR map written pair by pair, so a key can be repeated (cbor2.dumps cannot)."""
    assert len(pairs) < 24
    return bytes([0xA0 + len(pairs)]) + b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in pairs)


def claims(serial: object = 1, *more: tuple[object, object]) -> bytes:
    return cbor_map((-1, "TEN"), (-2, serial), (5, NBF), (4, EXP), *more)


def claims_raw(serial: bytes) -> bytes:
    """The claims with the serial's encoding given as bytes."""
    rest = cbor_map((5, NBF), (4, EXP))[1:]
    return b"\xa4" + cbor2.dumps(-1) + cbor2.dumps("TEN") + cbor2.dumps(-2) + serial + rest


def protected(key: cose.SigningKey, *more: tuple[object, object]) -> bytes:
    return cbor_map((1, -8), (4, key.kid), *more)


def token(
    key: cose.SigningKey,
    protected_: bytes,
    payload: bytes,
    unprotected: bytes = b"\xa0",
    spell: Callable[[bytes], bytes] = cbor2.dumps,
) -> str:
    """A tagged COSE_Sign1 signed by `key` over exactly these bytes; `spell` writes each
    byte-string field of the envelope (to try other spellings of the same message)."""
    signature = key.sign(cbor2.dumps(["Signature1", protected_, b"", payload]))
    body = b"\x84" + spell(protected_) + unprotected + spell(payload) + spell(signature)
    return PREFIX + base45.encode(b"\xd2" + body)


@pytest.fixture
def issuer(world: World) -> cose.SigningKey:
    world.campaign(id="TEN", amount_minor=1000, stacking="any")
    world.issue("TEN")
    world.sync_ledger()
    key, _ = world.central._active(PURPOSE_ISSUER)
    return key


def test_the_hand_built_token_is_accepted_as_it_stands(
    world: World, issuer: cose.SigningKey
) -> None:
    """The control: the helpers make a genuine token; each case below changes one thing."""
    d = world.engine.check(token(issuer, protected(issuer), claims()), basket(5000))
    assert d.accepted and d.serial == f"{1:016x}"
    same = token(issuer, protected(issuer), claims_raw(cbor2.dumps(1)))
    assert world.engine.check(same, basket(5000)).accepted


def _long_bstr(data: bytes) -> bytes:
    """The same byte string with a 4-byte length head where a shorter one fits."""
    return b"\x5a" + len(data).to_bytes(4, "big") + data


def _chunked_bstr(data: bytes) -> bytes:
    """The same byte string as an indefinite-length string of two chunks."""
    return b"\x5f" + cbor2.dumps(data[:1]) + cbor2.dumps(data[1:]) + b"\xff"


CASES: dict[str, Callable[[cose.SigningKey], str]] = {
    # pycose and any first-wins reader see serial 1; cbor2.loads keeps the last (2)
    "claims: serial twice": lambda k: token(k, protected(k), claims(1, (-2, 2))),
    "claims: exp twice, the first already past": lambda k: token(
        k, protected(k), cbor_map((-1, "TEN"), (-2, 1), (5, NBF), (4, NBF - 1), (4, EXP))
    ),
    "claims: a byte after the map": lambda k: token(k, protected(k), claims() + b"\x00"),
    "claims: a second map after the first": lambda k: token(k, protected(k), claims() + claims(2)),
    "claims: serial with a longer head than needed": lambda k: token(
        k, protected(k), claims_raw(b"\x1b" + (1).to_bytes(8, "big"))
    ),
    "claims: indefinite-length map": lambda k: token(
        k, protected(k), b"\xbf" + claims()[1:] + b"\xff"
    ),
    "claims: serial is true": lambda k: token(k, protected(k), claims(True)),
    "protected: kid twice": lambda k: token(
        k, cbor_map((1, -8), (4, b"\x00\x00\x00\x00"), (4, k.kid)), claims()
    ),
    "protected: alg twice, ES256 first": lambda k: token(
        k, cbor_map((1, -7), (1, -8), (4, k.kid)), claims()
    ),
    "protected: a byte after the map": lambda k: token(k, protected(k) + b"\x00", claims()),
    "protected: a critical parameter": lambda k: token(k, protected(k, (2, [-70000])), claims()),
    "kid in both header buckets": lambda k: token(
        k, protected(k), claims(), unprotected=cbor_map((4, b"\x00\x00\x00\x00"))
    ),
    "envelope: byte strings with long length heads": lambda k: token(
        k, protected(k), claims(), spell=_long_bstr
    ),
    "envelope: byte strings in chunks": lambda k: token(
        k, protected(k), claims(), spell=_chunked_bstr
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_ambiguous_or_respelled_token_is_malformed_though_signed(
    world: World, issuer: cose.SigningKey, case: str
) -> None:
    text = CASES[case](issuer)
    with pytest.raises(tokens.TokenMalformed):
        tokens.parse(text)
    d = world.engine.redeem(text, basket(5000))
    assert not d.accepted and d.reason is Reason.MALFORMED, (d.reason, d.detail)
    # A format fault by whoever signed it, not a forgery: no fraud flag against the shopper.
    assert not Entry.select().where(Entry.kind == "flag").exists()
