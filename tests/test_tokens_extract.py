"""What the terminal makes of a scanned text (tokens.extract): the edges of a typed code's
shape, links carrying a token, SUN tag URLs; and the plain-code hash as docs/tokens.md
fixes it; what the till says of a revoked issuer key or a damaged token. Written to kill
mutants that `make mutate` found surviving."""

from __future__ import annotations

import hashlib
import urllib.parse

from coupons import cose, tokens
from coupons.journal import Entry
from coupons.keys import PURPOSE_ISSUER
from coupons.reasons import Reason
from coupons.tokens import Claims
from tests.conftest import World, basket

NBF, EXP = 1_795_000_000, 1_800_000_000


def _token_with(*chars: str) -> str:
    """A genuine token whose text holds every one of `chars` (base45 has ' ' and '+')."""
    key = cose.SigningKey.generate()
    for serial in range(1, 2000):
        token = tokens.issue(key, Claims("TEN", serial, NBF, EXP))
        if all(c in token for c in chars):
            return token
    raise AssertionError(f"no token with {chars!r}")


def test_a_typed_code_is_read_from_8_to_24_letters_and_digits() -> None:
    # Spaces and dashes do not count: the cashier types them as printed.
    for text in ("ABCD-1234", "abcd efgh", "A" * 24, "AB-CD-EF-GH-12-34-56-78-90-12-34-56"):
        assert tokens.extract(text) == text, text
    assert tokens.extract("  ABCD-1234  ") == "ABCD-1234"


def test_a_code_one_character_too_short_or_too_long_is_ignored() -> None:
    assert tokens.extract("ABC-1234") is None  # 7
    assert tokens.extract("A" * 25) is None
    assert tokens.extract("AB-CD-EF-GH-12-34-56-78-90-12-34-56-7") is None  # 25


def test_product_barcodes_and_other_text_are_ignored_not_refused() -> None:
    assert tokens.extract("4006381333931") is None  # an EAN-13 on a tin of soup
    assert tokens.extract("HELLO!WORLD1") is None  # a character no code has
    assert tokens.extract("ABCD_1234") is None


def test_a_token_is_passed_on_as_scanned_in_any_case() -> None:
    token = _token_with()
    assert tokens.extract(token) == token
    lower = "cpn1:" + token[len(tokens.PREFIX) :]
    assert tokens.extract(lower) == lower


def test_a_link_carrying_a_token_gives_the_token_itself() -> None:
    token = _token_with(" ")
    link = "https://c.example/r?c=" + urllib.parse.quote(token, safe=":") + "&src=nfc#top"
    assert tokens.extract(link) == token


def test_a_link_whose_token_reads_two_ways_is_passed_on_whole() -> None:
    # A '+' left as it is may be a plus or a space: parse() decides by the signature.
    token = _token_with(" ", "+")
    link = "https://c.example/r?c=" + urllib.parse.quote(token, safe=":+")
    assert tokens.extract(link) == link


def test_a_sun_tag_url_is_kept_and_a_plain_shop_link_ignored() -> None:
    url = "https://t.example/s?campaign=TEN&picc_data=" + "00" * 16 + "&cmac=" + "00" * 8
    assert tokens.extract(url) == url
    assert tokens.extract("https://shop.example/p?uid=12&c=blue") is None


def test_a_typed_code_hash_is_the_documented_16_bytes() -> None:
    """docs/tokens.md: SHA-256(salt || normalised code) truncated to 16 bytes, which the
    central computed when it published the ledger: any other form makes every printed code
    unknown at the till."""
    salt = bytes(range(16))
    expected = hashlib.sha256(salt + b"ABCD1234").digest()[:16]
    assert tokens.plain_code_hash(salt, "abcd-1234") == expected
    assert tokens.plain_code_hash(salt, " ABCD 1234 ") == expected


def test_a_token_of_a_revoked_issuer_key_is_refused_naming_the_key(world: World) -> None:
    world.campaign(id="TEN", amount_minor=1000, stacking="any")
    (token,) = world.issue("TEN")
    kid = tokens.parse(token).message.kid.hex()
    world.central.revoke_key(kid)
    world.sync_ledger()
    d = world.engine.check(token, basket(5000))
    assert not d.accepted and d.reason is Reason.KEY_REVOKED
    assert d.detail == f"issuer key {kid} revoked"


def _signed(world: World, campaign: str, serial: int, key: cose.SigningKey | None = None) -> str:
    """A token for `campaign`, valid now, signed by `key` (the central's issuer key when
    None), on a till that holds a ledger with the TEN campaign."""
    world.campaign(id="TEN", amount_minor=1000, stacking="any")
    world.sync_ledger()
    if key is None:
        key, _ = world.central._active(PURPOSE_ISSUER)
    now = int(world.clock.now())
    return tokens.issue(key, Claims(campaign, serial, now - 60, now + 3600))


def test_a_damaged_token_is_refused_saying_what_is_wrong(world: World) -> None:
    world.campaign(id="TEN", amount_minor=1000, stacking="any")
    world.sync_ledger()
    d = world.engine.check(tokens.PREFIX + "%%%%", basket(5000))
    assert not d.accepted and d.reason is Reason.MALFORMED
    assert d.detail and d.detail != "None"


def test_a_signed_token_of_a_campaign_the_ledger_lacks_is_unknown_campaign(
    world: World,
) -> None:
    token = _signed(world, "GONE", 7)
    d = world.engine.check(token, basket(5000))
    assert not d.accepted and d.reason is Reason.UNKNOWN_CAMPAIGN
    assert d.detail == "campaign GONE"


def test_a_stranger_key_is_named_in_the_refusal(world: World) -> None:
    token = _signed(world, "TEN", 99, cose.SigningKey.generate())
    kid = tokens.parse(token).message.kid.hex()
    d = world.engine.check(token, basket(5000))
    assert not d.accepted and d.reason is Reason.UNKNOWN_KEY
    assert d.detail == f"issuer key {kid} not in ledger"


def test_a_not_yet_valid_refusal_is_journaled_with_its_coupon(world: World) -> None:
    """The manager's list of failed scans names the coupon that came too early."""
    world.campaign(id="TEN", amount_minor=1000, stacking="any")
    world.sync_ledger()
    key, _ = world.central._active(PURPOSE_ISSUER)
    now = int(world.clock.now())
    token = tokens.issue(key, Claims("TEN", 4242, now + 3600, now + 7200))
    d = world.engine.redeem(token, basket(5000))
    assert not d.accepted and d.reason is Reason.NOT_YET_VALID
    entry = Entry.get(Entry.seq == d.journal_seq)
    assert (entry.campaign, entry.serial) == ("TEN", d.serial) and d.serial
