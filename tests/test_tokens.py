"""Coupon tokens and plain codes: format, signature, and what the engine makes of damage
and forgery. A forged or altered token must be refused with a reason, never accepted and
never crash the till."""

from __future__ import annotations

import urllib.parse
import zlib

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coupons import base45, cose, tokens
from coupons.clock import FixedClock
from coupons.decision import Context
from coupons.journal import Entry
from coupons.reasons import Reason
from coupons.tokens import PREFIX, Claims, TokenMalformed
from tests.conftest import T0, World, basket

NBF = int(T0)
EXP = NBF + 90 * 24 * 3600


def raw_of(token: str) -> bytes:
    """The COSE bytes a token carries (inflated when it is compressed)."""
    data = base45.decode(token[len(PREFIX) :])
    return zlib.decompress(data) if data[:1] == b"\x78" else data


def as_token(cose_bytes: bytes) -> str:
    return PREFIX + base45.encode(cose_bytes)


@pytest.fixture
def key() -> cose.SigningKey:
    return cose.SigningKey(bytes(range(32)))


# ---------------------------------------------------------------- format


def test_issue_parse_round_trip(key: cose.SigningKey) -> None:
    claims = Claims(
        "SPRING",
        2**64 - 1,
        NBF,
        EXP,
        customer_ref=b"\x01" * 16,
        tag_uid=b"\x04\xa2\x11\x22\x33\x44\x80",
    )
    token = tokens.issue(key, claims)
    assert token.startswith("CPN1:")
    assert set(token[len(PREFIX) :]) <= set(base45.ALPHABET)
    parsed = tokens.parse(token)
    assert parsed.claims == claims
    assert parsed.message.kid == key.kid
    assert cose.verify_sign1(parsed.message, key.public)


def test_parse_tolerates_surrounding_whitespace_and_prefix_case(key: cose.SigningKey) -> None:
    claims = Claims("C", 7, NBF, EXP)
    token = tokens.issue(key, claims)
    assert tokens.parse(f"  {token}\r\n").claims == claims
    assert tokens.parse("cpn1:" + token[len(PREFIX) :]).claims == claims
    assert tokens.looks_like_token(" cpn1:ABC")
    assert not tokens.looks_like_token("ABCD-EFGH")


def test_plain_token_is_short(key: cose.SigningKey) -> None:
    token = tokens.issue(key, Claims("SPRING-2026", 2**64 - 1, NBF, EXP))
    print(f"plain token: {len(token)} chars: {token}")
    assert len(token) < 200
    bound = tokens.issue(
        key,
        Claims("SPRING-2026", 2**64 - 1, NBF, EXP, customer_ref=b"\xaa" * 16, tag_uid=b"\x04" * 7),
    )
    print(f"customer- and tag-bound token: {len(bound)} chars")
    assert len(bound) < 260


def test_compressed_tokens_parse(key: cose.SigningKey) -> None:
    # a long, repetitive campaign id makes zlib worth it
    claims = Claims("X" * 200, 42, NBF, EXP)
    token = tokens.issue(key, claims)
    assert base45.decode(token[len(PREFIX) :])[:1] == b"\x78"
    assert tokens.parse(token).claims == claims


def test_issued_token_is_tagged_cose_sign1_with_cwt_claims(key: cose.SigningKey) -> None:
    obj = cbor2.loads(raw_of(tokens.issue(key, Claims("C", 9, NBF, EXP))))
    assert isinstance(obj, cbor2.CBORTag) and obj.tag == 18
    protected, unprotected, payload, signature = obj.value
    assert cbor2.loads(protected) == {1: -8, 4: key.kid}
    assert len(signature) == 64
    assert cbor2.loads(payload) == {-1: "C", -2: 9, 5: NBF, 4: EXP}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "https://example.com/?c=1",
        "CPN2:BB8",
        "CPN1",
        "CPN:ABC",
        "CPN1:",
        "CPN1:bb8",
        "CPN1:GGW",
        "CPN1:A",
        "CPN1:" + "0" * 2000,
        "CPN1:" + base45.encode(b"not cbor at all \xff"),
        "CPN1:" + base45.encode(cbor2.dumps([1, 2, 3])),
        "CPN1:" + base45.encode(cbor2.dumps(cbor2.CBORTag(17, [b"", {}, b"", b"0" * 64]))),
        "CPN1:" + base45.encode(b"\x78\x9c garbage after a zlib header"),
    ],
)
def test_garbage_is_malformed(text: str) -> None:
    with pytest.raises(TokenMalformed):
        tokens.parse(text)


def _sign1(
    protected: dict[int, object],
    payload: bytes,
    unprotected: dict[int, object] | None = None,
    signature: bytes = b"\x00" * 64,
) -> bytes:
    return cbor2.dumps(
        cbor2.CBORTag(18, [cbor2.dumps(protected), unprotected or {}, payload, signature])
    )


@pytest.mark.parametrize(
    "message",
    [
        _sign1({1: -7, 4: b"kid1"}, Claims("C", 1, 0, 1).to_cbor()),  # ES256, not EdDSA
        _sign1({1: -8}, Claims("C", 1, 0, 1).to_cbor()),  # no kid
        _sign1({1: -8, 4: "kid1"}, Claims("C", 1, 0, 1).to_cbor()),  # kid not bytes
        _sign1({1: -8, 4: b"kid1"}, Claims("C", 1, 0, 1).to_cbor(), signature=b"\x00" * 63),
        _sign1({1: -8, 4: b"kid1"}, cbor2.dumps({-1: "C"})),  # claims missing
        _sign1({1: -8, 4: b"kid1"}, cbor2.dumps({-1: 5, -2: 1, 5: 0, 4: 1})),  # campaign not text
        _sign1({1: -8, 4: b"kid1"}, cbor2.dumps({-1: "C", -2: -1, 5: 0, 4: 1})),  # serial < 0
        _sign1({1: -8, 4: b"kid1"}, cbor2.dumps({-1: "C", -2: 2**64, 5: 0, 4: 1})),  # > 64 bit
        _sign1({1: -8, 4: b"kid1"}, cbor2.dumps({-1: "C", -2: 1, 5: "x", 4: 1})),  # nbf text
        _sign1({1: -8, 4: b"kid1"}, cbor2.dumps([1, 2])),  # claims not a map
    ],
)
def test_structurally_wrong_messages_are_malformed(message: bytes) -> None:
    with pytest.raises(TokenMalformed):
        tokens.parse(as_token(message))


def test_truncated_tokens_are_malformed(key: cose.SigningKey) -> None:
    for claims in (Claims("C", 5, NBF, EXP), Claims("Y" * 200, 5, NBF, EXP)):
        token = tokens.issue(key, claims)
        for cut in range(1, len(token) - len(PREFIX)):
            with pytest.raises(TokenMalformed):
                tokens.parse(token[:-cut])


def test_trailing_bytes_are_malformed(key: cose.SigningKey) -> None:
    for claims in (Claims("C", 5, NBF, EXP), Claims("Y" * 200, 5, NBF, EXP)):
        data = base45.decode(tokens.issue(key, claims)[len(PREFIX) :])
        for extra in (b"\x00", b"\x00\x00", b"\xf6"):
            with pytest.raises(TokenMalformed):
                tokens.parse(PREFIX + base45.encode(data + extra))


def test_flipped_characters_fail(key: cose.SigningKey) -> None:
    token = tokens.issue(key, Claims("C", 5, NBF, EXP))
    body = token[len(PREFIX) :]
    for i in range(len(body)):
        for replacement in {"0", "A", ":", " "} - {body[i]}:
            altered = PREFIX + body[:i] + replacement + body[i + 1 :]
            try:
                parsed = tokens.parse(altered)
            except TokenMalformed:
                continue
            assert not cose.verify_sign1(parsed.message, key.public), (i, replacement)


def test_every_single_bit_flip_fails(key: cose.SigningKey) -> None:
    """Exhaustive over one plain and one compressed token: a flipped bit anywhere is
    malformed or fails the signature, unless the message itself is unchanged (unused
    padding bits at the end of a deflate stream carry no data)."""
    for claims in (Claims("C", 5, NBF, EXP), Claims("LONG" * 8, 5, NBF, EXP)):
        token = tokens.issue(key, claims)
        original = tokens.parse(token).message
        raw = base45.decode(token[len(PREFIX) :])
        for i in range(len(raw)):
            for bit in range(8):
                flipped = bytearray(raw)
                flipped[i] ^= 1 << bit
                try:
                    parsed = tokens.parse(PREFIX + base45.encode(bytes(flipped)))
                except TokenMalformed:
                    continue
                if parsed.message != original:
                    assert not cose.verify_sign1(parsed.message, key.public), (i, bit)


CLAIMS = st.builds(
    Claims,
    campaign=st.text(min_size=1, max_size=32),
    serial=st.integers(0, 2**64 - 1),
    not_before=st.integers(0, 2**40),
    expires=st.integers(0, 2**40),
    customer_ref=st.none() | st.binary(min_size=16, max_size=16),
    tag_uid=st.none() | st.binary(min_size=4, max_size=10),
)


@settings(max_examples=150, deadline=None)
@given(claims=CLAIMS)
def test_any_claims_round_trip(claims: Claims) -> None:
    key = cose.SigningKey(bytes(32))
    token = tokens.issue(key, claims)
    parsed = tokens.parse(token)
    assert parsed.claims == claims
    assert cose.verify_sign1(parsed.message, key.public)
    assert token == token.strip()  # a scanner trimming whitespace cannot damage it


# ---------------------------------------------------------------- engine on real coupons


@pytest.fixture
def issued(world: World) -> str:
    world.campaign(id="TEN", amount_minor=1000, stacking="any")
    (token,) = world.issue("TEN")
    world.sync_ledger()
    return token


def test_genuine_token_accepted(world: World, issued: str) -> None:
    d = world.engine.check(issued, basket(5000))
    assert d.accepted and d.reason is Reason.OK and d.discount_minor == 1000


def _mutate_text(data: st.DataObject, token: str) -> str:
    body = token[len(PREFIX) :]
    op = data.draw(st.sampled_from(["replace", "insert", "delete", "prefix"]))
    if op == "prefix":
        return (
            data.draw(st.sampled_from(["CPN2:", "CPN1;", "CPN1", "CPN:", "PN1:", "QPN1:"])) + body
        )
    i = data.draw(st.integers(0, len(body) - 1 if op != "insert" else len(body)))
    char = data.draw(st.sampled_from(base45.ALPHABET + "a!\u00e9"))
    if op == "replace":
        return PREFIX + body[:i] + char + body[i + 1 :]
    if op == "insert":
        return PREFIX + body[:i] + char + body[i:]
    return PREFIX + body[:i] + body[i + 1 :]


def _mutate_bytes(data: st.DataObject, token: str) -> str:
    """Flip bits in the decoded bytes (compressed or not), then re-encode properly."""
    raw = bytearray(base45.decode(token[len(PREFIX) :]))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    return PREFIX + base45.encode(bytes(raw))


def _same_signed_message(altered: str, original: str) -> bool:
    try:
        return tokens.parse(altered).message == tokens.parse(original).message
    except TokenMalformed:
        return False


_TOKENS: dict[str, tuple[str, str]] = {}


def _two_tokens(world: World) -> tuple[str, str]:
    """One plain and one zlib-compressed genuine token, issued once per world."""
    key = str(world.data)  # one world per test run; hypothesis reuses it for every example
    if key not in _TOKENS:
        _TOKENS.clear()
        world.campaign(id="TEN", amount_minor=1000, stacking="any")
        world.campaign(id="LONG" * 8, amount_minor=1000, stacking="any")  # compresses
        plain = world.issue("TEN")[0]
        packed = world.issue("LONG" * 8)[0]
        world.sync_ledger()
        assert base45.decode(plain[len(PREFIX) :])[:1] == b"\xd2"
        assert base45.decode(packed[len(PREFIX) :])[:1] == b"\x78"
        for token in (plain, packed):
            assert world.engine.check(token, basket(5000)).accepted
        _TOKENS[key] = (plain, packed)
    return _TOKENS[key]


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_no_altered_token_is_ever_accepted(world: World, data: st.DataObject) -> None:
    token = data.draw(st.sampled_from(_two_tokens(world)))
    mutate = data.draw(st.sampled_from([_mutate_text, _mutate_bytes]))
    altered = mutate(data, token)
    if altered == token:
        return
    d = world.engine.check(altered, basket(5000))
    if d.accepted:
        # Only a different spelling of the very same signed message may pass (e.g. unused
        # deflate padding bits): the claims and signature are the issuer's, unchanged.
        assert _same_signed_message(altered, token), altered
    else:
        assert d.reason is not Reason.OK
        assert d.reason in {
            Reason.MALFORMED,
            Reason.BAD_SIGNATURE,
            Reason.UNKNOWN_KEY,
            Reason.UNKNOWN_CAMPAIGN,
        }, (d.reason, d.detail)


def test_altered_claims_with_original_signature_are_bad_signature(
    world: World, issued: str
) -> None:
    obj = cbor2.loads(raw_of(issued))
    protected, unprotected, payload, signature = obj.value
    claims = cbor2.loads(payload)
    for change in ({-1: "TEN", 4: claims[4] + 10**6}, {-2: claims[-2] ^ 1}):
        forged_payload = cbor2.dumps({**claims, **change})
        forged = as_token(
            cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected, forged_payload, signature]))
        )
        d = world.engine.check(forged, basket(5000))
        assert not d.accepted and d.reason is Reason.BAD_SIGNATURE


def test_forged_with_attackers_key_but_issuer_kid_is_bad_signature(
    world: World, issued: str
) -> None:
    real = tokens.parse(issued)
    attacker = cose.SigningKey.generate()
    protected = cbor2.dumps({1: -8, 4: real.message.kid})
    payload = Claims("TEN", 123456, NBF, EXP).to_cbor()
    signature = attacker.sign(cbor2.dumps(["Signature1", protected, b"", payload]))
    forged = as_token(cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature])))
    assert tokens.parse(forged).message.kid == real.message.kid
    d = world.engine.check(forged, basket(5000))
    assert not d.accepted
    assert d.reason is Reason.BAD_SIGNATURE
    # recorded as a forgery when it is an actual redemption attempt
    world.engine.redeem(forged, basket(5000))
    assert Entry.select().where((Entry.kind == "flag") & (Entry.reason == "forged_token")).exists()


def test_token_from_a_key_not_in_the_ledger_is_unknown_key(world: World, issued: str) -> None:
    stranger = cose.SigningKey.generate()
    token = tokens.issue(stranger, Claims("TEN", 99, NBF, EXP))
    d = world.engine.check(token, basket(5000))
    assert not d.accepted and d.reason is Reason.UNKNOWN_KEY


def test_kid_in_unprotected_header_cannot_redirect_to_another_key(
    world: World, issued: str
) -> None:
    """A kid only in the unprotected (unsigned) header still has to verify under that key."""
    attacker = cose.SigningKey.generate()
    real_kid = tokens.parse(issued).message.kid
    protected = cbor2.dumps({1: -8})
    payload = Claims("TEN", 5, NBF, EXP).to_cbor()
    signature = attacker.sign(cbor2.dumps(["Signature1", protected, b"", payload]))
    forged = as_token(
        cbor2.dumps(cbor2.CBORTag(18, [protected, {4: real_kid}, payload, signature]))
    )
    d = world.engine.check(forged, basket(5000))
    assert not d.accepted and d.reason is Reason.BAD_SIGNATURE


def test_garbage_scans_are_refused_as_malformed(world: World, issued: str) -> None:
    for text in (
        "CPN1:",
        "CPN1:GGW",
        "cpn1:hello",
        issued[:-7],
        issued + "::",
        "CPN1:" + "A" * 5000,
    ):
        d = world.engine.check(text, basket(5000))
        assert not d.accepted and d.reason is Reason.MALFORMED, text


# ---------------------------------------------------------------- plain codes


def test_normalize_code_ignores_case_spaces_and_dashes() -> None:
    assert tokens.normalize_code("abcd efgh-jk2m") == "ABCDEFGHJK2M"
    assert tokens.normalize_code(" AbCd-EfGh ") == "ABCDEFGH"
    salt = b"salt"
    assert tokens.plain_code_hash(salt, "abcd-efgh") == tokens.plain_code_hash(salt, "ABCDEFGH")
    assert tokens.plain_code_hash(salt, "ABCDEFGH") != tokens.plain_code_hash(salt, "ABCDEFGJ")
    assert tokens.plain_code_hash(b"other", "ABCDEFGH") != tokens.plain_code_hash(salt, "ABCDEFGH")


def test_typed_codes_are_accepted_in_any_spelling(world: World) -> None:
    world.campaign(id="CODE", amount_minor=500, stacking="any")
    codes = world.issue("CODE", 3, codes=True)
    world.sync_ledger()
    first, second, third = codes
    assert len(first) == 14 and first.count("-") == 2
    for spelling in (
        first,
        first.lower(),
        first.replace("-", " ").lower(),
        " " + first.replace("-", "") + " ",
    ):
        d = world.engine.check(spelling, basket(5000))
        assert d.accepted and d.discount_minor == 500, spelling
    messy = second.lower().replace("-", " - ")
    d = world.engine.redeem(messy, basket(5000))
    assert d.accepted
    again = world.engine.redeem(second, basket(5000))
    assert not again.accepted and again.reason is Reason.ALREADY_REDEEMED
    assert world.engine.check(third, basket(5000)).accepted


def test_unknown_and_unsynced_codes_are_refused(world: World) -> None:
    world.campaign(id="CODE", amount_minor=500, stacking="any")
    (known,) = world.issue("CODE", 1, codes=True)
    world.sync_ledger()
    (late,) = world.issue("CODE", 1, codes=True)  # not yet in the terminal's ledger
    bad = world.engine.check("ZZZZ-ZZZZ-ZZZZ", basket(5000))  # shaped like a code: typed wrong?
    assert not bad.accepted and bad.reason is Reason.UNKNOWN_CODE
    assert not world.engine.check(late, basket(5000)).accepted
    assert not world.engine.check(known[:-1], basket(5000)).accepted
    world.sync_ledger()
    assert world.engine.check(late, basket(5000)).accepted


def test_tag_bound_token_needs_its_tag(world: World) -> None:
    world.campaign(id="NFC", amount_minor=700, stacking="any")
    tag = b"\x04\x11\x22\x33\x44\x55\x66"
    (token,) = world.issue("NFC", 1, tag_uid=tag)
    world.sync_ledger()
    assert world.engine.check(token, basket(5000), Context(tag_uid=tag)).accepted
    other = world.engine.check(token, basket(5000), Context(tag_uid=b"\x04" * 7))
    assert not other.accepted and other.reason is Reason.TAG_MISMATCH
    printed = world.engine.check(token, basket(5000))
    assert not printed.accepted and printed.reason is Reason.TAG_MISMATCH


def test_a_url_with_a_stray_bracket_is_not_a_coupon_and_does_not_crash() -> None:
    # Found by the fuzzer: urlsplit raises "Invalid IPv6 URL" for these.
    assert tokens.extract("https://e[xample.com/x") is None
    assert tokens.extract("http://[::1/?picc_data=00&cmac=00") is None


# ---------------------------------------------------------------- links (NFC URI records)


def _token_with_space_and_plus(world: World, campaign: str) -> str:
    """A genuine token whose text holds both a space and a '+', so a link's '+' can mean
    either (most tokens do: both are base45 characters)."""
    found = [t for t in world.issue(campaign, 20) if " " in t and "+" in t]
    assert found
    return found[0]


def test_a_form_encoded_link_reads_as_the_genuine_coupon(world: World) -> None:
    """urlencode and URLSearchParams write a space as '+' (and a '+' as %2B): the link is
    the genuine coupon, not a forgery to flag against the shopper holding it. A forged
    token in such a link is still refused as forged."""
    world.campaign(id="TEN", amount_minor=1000, stacking="any")
    token = _token_with_space_and_plus(world, "TEN")
    world.sync_ledger()
    form = "https://c.example/r?" + urllib.parse.urlencode({"c": token, "src": "nfc"})
    assert "+" in form and "%2B" in form and "%20" not in form
    code = tokens.extract(form)
    # Read two ways ('+' a plus or a space): handed to the engine whole, to pick by signature.
    assert code == form and tokens.looks_like_token(code)
    d = world.engine.redeem(code, basket(5000))
    assert d.accepted and d.discount_minor == 1000, (d.reason, d.detail)
    assert not Entry.select().where(Entry.kind == "flag").exists()
    # The same coupon written the other ways a link can be: read as that coupon (used now).
    for link in (
        "https://c.example/r?c=" + urllib.parse.quote(token, safe=":"),  # %20 and %2B
        "https://c.example/r?c=" + urllib.parse.quote(token, safe=":+"),  # '+' left as is
        "https://c.example/r?c=" + urllib.parse.quote_plus(token, safe=":") + "#x",
    ):
        again = world.engine.check(tokens.extract(link) or "", basket(5000))
        assert again.reason is Reason.ALREADY_REDEEMED, (link, again.reason)
    # A link mixing both spellings (a '+' meant as a plus beside one meant as a space)
    # reads neither way: refused. Both readings need the issuer's signature, so reading
    # links both ways accepts nothing that was not issued.
    mixed = world.engine.check("https://c.example/r?c=" + token.replace(" ", "+"), basket(5000))
    assert not mixed.accepted and mixed.reason is not Reason.ALREADY_REDEEMED
    # A forged token in a form-encoded link: neither reading verifies, refused and flagged.
    attacker = cose.SigningKey.generate()
    protected = cbor2.dumps({1: -8, 4: tokens.parse(token).message.kid})
    for serial in range(1, 500):
        payload = Claims("TEN", serial, NBF, EXP).to_cbor()
        signature = attacker.sign(cbor2.dumps(["Signature1", protected, b"", payload]))
        forged = as_token(cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature])))
        if " " in forged:
            break
    else:
        raise AssertionError("no forged token with a space")
    link = "https://c.example/r?" + urllib.parse.urlencode({"c": forged})
    d = world.engine.redeem(tokens.extract(link) or "", basket(5000))
    assert not d.accepted and d.reason is Reason.BAD_SIGNATURE
    assert Entry.select().where((Entry.kind == "flag") & (Entry.reason == "forged_token")).exists()


# ---------------------------------------------------------------- the token's own time window


@pytest.fixture
def open_campaign(world: World) -> str:
    """A campaign with no dates of its own: only the token's nbf and exp bound it."""
    world.campaign(id="OPEN", amount_minor=500, stacking="any")
    world.sync_ledger()
    return "OPEN"


def test_a_token_is_good_until_the_second_before_its_exp(
    world: World, clock: FixedClock, open_campaign: str
) -> None:
    (token,) = world.issue(open_campaign, validity_s=3600)
    exp = tokens.parse(token).claims.expires
    assert exp == int(clock.now()) + 3600
    clock.at = exp - 1
    assert world.engine.check(token, basket(5000)).accepted
    clock.at = exp  # valid while now < exp
    d = world.engine.check(token, basket(5000))
    assert not d.accepted and d.reason is Reason.EXPIRED
    clock.at = exp + 86400
    assert world.engine.check(token, basket(5000)).reason is Reason.EXPIRED


def test_a_token_is_not_yet_valid_before_its_nbf_and_good_from_it(
    world: World, clock: FixedClock, open_campaign: str
) -> None:
    clock.advance(1000)  # issued after the ledger was published, as coupons are
    (token,) = world.issue(open_campaign)
    nbf = tokens.parse(token).claims.not_before
    assert nbf == int(clock.now())
    clock.at = nbf - 1
    d = world.engine.check(token, basket(5000))
    assert not d.accepted and d.reason is Reason.NOT_YET_VALID
    clock.at = nbf
    assert world.engine.check(token, basket(5000)).accepted


def test_a_link_with_a_letter_that_grows_in_upper_case_still_gives_its_token() -> None:
    # 'ß'.upper() is 'SS': an index found in the upper-cased link was one off in the link.
    assert tokens.extract("https://straße.example/r?c=CPN1%3AABC") == "CPN1:ABC"


def test_a_forged_link_is_read_the_way_that_names_the_issuer_key() -> None:
    """Neither reading verifies; when the link's '+' falls in the kid, one reading names an
    issuer key and the other an unknown one: the first is kept, so the engine refuses it as
    a forgery of that key (bad_signature, flagged), not as an unknown key."""
    seeds = (bytes([n]) * 32 for n in range(256))
    issuer = next(k for s in seeds if " " in as_token((k := cose.SigningKey(s)).sign1(b""))[17:23])
    attacker = cose.SigningKey(bytes(range(32)))
    protected = cbor2.dumps({1: -8, 4: issuer.kid})
    payload = Claims("TEN", 5, NBF, EXP).to_cbor()
    signature = attacker.sign(cbor2.dumps(["Signature1", protected, b"", payload]))
    forged = as_token(cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature])))
    link = "https://c.example/r?" + urllib.parse.urlencode({"c": forged})
    strict = tokens.parse(link)  # no keys: the strict reading, '+' a plus, another kid
    assert strict.message.kid != issuer.kid
    keys = {issuer.kid: issuer.public}
    assert tokens.parse(link, keys.get).message.kid == issuer.kid
