"""NTAG 424 DNA SUN tags: the verification against NXP's published example (AN12196), then
the terminal accepting a tapped SUN URL as a coupon: one coupon per tag, a copied URL refused,
the read counter's high-water mark kept durably with the redemption, keys from the ledger."""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any

import ndef
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC
from hypothesis import given, settings
from hypothesis import strategies as st

from coupons import journal, ledger, sun, tokens
from coupons.decision import Context, serial_hex
from coupons.journal import Entry, TagCounter, Use
from coupons.reasons import Reason
from drivers import registry
from drivers.scan import Scan
from sync.central.store import CentralError
from tests.conftest import World, basket
from tests.nfc_emulation import Type2Tag, Type4Tag

# ---------------------------------------------------------------- NXP AN12196's example

# AN12196 Rev. 1.5 ("NTAG 424 DNA and NTAG 424 DNA TagTamper features and hints"), the SUN
# example with SDMMACInputOffset == SDMMACOffset (MAC over empty input): both the SDMMetaRead
# and the SDMFileRead key are the all-zero factory key, and the tag mirrored this URL.
AN_URL = "https://choose.url.com/ntag424?e=EF963FF7828658A599F3041510671E88&c=94EED9EE65337086"
AN_KEY = bytes(16)
AN_PICC_PLAIN = bytes.fromhex("C704DE5F1EACC0403D0000DA5CF60941")
AN_UID = bytes.fromhex("04DE5F1EACC040")
AN_COUNTER = 0x3D  # SDMReadCtr 3D0000, least significant byte first
AN_SV2 = bytes.fromhex("3CC30001008004DE5F1EACC0403D0000")
AN_SESSION_KEY = bytes.fromhex("3FB5F6E3A807A03D5E3570ACE393776F")
AN_FULL_MAC = bytes.fromhex("E194C7EE12D9F7EE8A65C8331B704386")
AN_MAC = bytes.fromhex("94EED9EE65337086")


def with_campaign(url: str, campaign: str = "TAP") -> str:
    return url.replace("?", f"?campaign={campaign}&", 1)


def test_an12196_example_decrypts_to_the_published_uid_and_counter() -> None:
    msg = sun.parse(with_campaign(AN_URL))
    assert msg.campaign == "TAP" and msg.mac == AN_MAC
    decryptor = Cipher(algorithms.AES(AN_KEY), modes.CBC(bytes(16))).decryptor()
    assert decryptor.update(msg.picc_data or b"") + decryptor.finalize() == AN_PICC_PLAIN
    assert sun.decrypt_picc_data(AN_KEY, msg.picc_data or b"") == sun.SunRead(AN_UID, AN_COUNTER)


def test_an12196_example_session_key_and_mac() -> None:
    assert sun.SV2_PREFIX + AN_UID + AN_COUNTER.to_bytes(3, "little") == AN_SV2
    assert sun.session_mac_key(AN_KEY, AN_UID, AN_COUNTER) == AN_SESSION_KEY
    assert AN_FULL_MAC[1::2] == AN_MAC  # the truncation: bytes 1, 3, ..., 15
    assert sun.sdm_mac(AN_KEY, AN_UID, AN_COUNTER) == AN_MAC
    assert sun.verify(sun.parse(with_campaign(AN_URL)), AN_KEY) == sun.SunRead(AN_UID, 61)


def test_plain_mirror_example() -> None:
    # UID and counter mirrored in plain (counter shown most significant byte first): the
    # example of the sdm-backend project's README, which other SDM libraries test against.
    url = "https://x.example/tagpt?campaign=TAP&uid=041E3C8A2D6B80&ctr=000006&cmac=4B00064004B0B3D3"
    assert sun.verify(sun.parse(url), bytes(16)) == sun.SunRead(bytes.fromhex("041E3C8A2D6B80"), 6)


@pytest.mark.parametrize(
    "url",
    [
        AN_URL.replace("c=94EED9EE65337086", "c=94EED9EE65337087"),  # MAC off by one bit
        AN_URL.replace("e=EF96", "e=EF97"),  # PICC data changed
        "https://x.example/?uid=041E3C8A2D6B81&ctr=000006&cmac=4B00064004B0B3D3",  # other tag
        "https://x.example/?uid=041E3C8A2D6B80&ctr=000007&cmac=4B00064004B0B3D3",  # counter
    ],
)
def test_anything_changed_does_not_verify(url: str) -> None:
    with pytest.raises(sun.SunForged):
        sun.verify(sun.parse(with_campaign(url)), AN_KEY)


def test_another_key_does_not_verify() -> None:
    with pytest.raises(sun.SunForged):
        sun.verify(sun.parse(with_campaign(AN_URL)), bytes(15) + b"\x01")
    with pytest.raises(sun.SunForged):  # right PICC key, wrong file-read (MAC) key
        sun.verify(sun.parse(with_campaign(AN_URL)), AN_KEY, file_key=b"\x01" * 16)


E, C = "EF963FF7828658A599F3041510671E88", "94EED9EE65337086"
X = "https://x.example/?"


@pytest.mark.parametrize(
    "url, why",
    [
        (f"{X}e={E}&c={C}", "campaign"),
        (f"{X}campaign=TAP&e={E}", "MAC"),
        (f"{X}campaign=TAP&e={E[:-2]}&c={C}", "16 bytes"),
        (f"{X}campaign=TAP&e=ZZ{E[2:]}&c={C}", "not hex"),
        (f"{X}campaign=TAP&c={C}&c={C}&e={E}", "more than once"),
        (f"{X}campaign=TAP&e={E}&uid=041E3C8A2D6B80&c={C}", "both"),
        (f"ftp://x.example/?campaign=TAP&e={E}&c={C}", "http"),
        (f"{X}campaign=TAP&uid=041E3C8A2D6B80&cmac=4B00064004B0B3D3", "read counter"),
    ],
)
def test_malformed_urls_say_what_is_wrong(url: str, why: str) -> None:
    with pytest.raises(sun.SunMalformed, match=why):
        sun.parse(url)


def tag_url(key: bytes, uid: bytes, counter: int, campaign: str = "TAP") -> str:
    """What an NTAG 424 DNA personalised with `key` mirrors at a tap: the spec's steps done
    here with the AES primitives, not with coupons/sun.py."""
    ctr = counter.to_bytes(3, "little")
    encryptor = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor()
    picc = encryptor.update(b"\xc7" + uid + ctr + os.urandom(5)) + encryptor.finalize()
    session = CMAC(algorithms.AES(key))
    session.update(bytes.fromhex("3CC300010080") + uid + ctr)
    mac = CMAC(algorithms.AES(session.finalize())).finalize()[1::2]
    return (
        f"https://tap.example/c?campaign={campaign}"
        f"&picc_data={picc.hex().upper()}&cmac={mac.hex().upper()}"
    )


@settings(max_examples=60, deadline=None)
@given(
    key=st.binary(min_size=16, max_size=16),
    uid=st.binary(min_size=7, max_size=7),
    counter=st.integers(0, 2**24 - 1),
    bit=st.integers(0, 8 * 24 - 1),
)
def test_any_tap_verifies_and_any_flipped_bit_does_not(
    key: bytes, uid: bytes, counter: int, bit: int
) -> None:
    url = tag_url(key, uid, counter)
    msg = sun.parse(url)
    assert sun.verify(msg, key) == sun.SunRead(uid, counter)
    data = bytearray((msg.picc_data or b"") + msg.mac)
    data[bit // 8] ^= 1 << (bit % 8)
    forged = sun.SunMessage(msg.campaign, bytes(data[16:]), picc_data=bytes(data[:16]))
    with pytest.raises(sun.SunForged):
        sun.verify(forged, key)


def test_the_terminal_picks_sun_urls_out_of_scans() -> None:
    url = tag_url(bytes(16), AN_UID, 7)
    assert tokens.extract(url) == url
    assert tokens.extract("https://shop.example/p?uid=12&c=blue") is None  # not ours: ignored


# ---------------------------------------------------------------- the terminal

KEY = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
UID = bytes.fromhex("04A1B2C3D4E5F6")
NFC = Context(source="nfc", tag_uid=UID)


def sun_campaign(world: World, key: bytes | None = KEY, **doc: Any) -> str:
    doc.setdefault("id", "TAP")
    cid = world.campaign(**doc)
    if key is not None:
        world.central.set_sun_key(cid, key)
    world.sync_ledger()
    return cid


def flags(kind: str) -> list[Entry]:
    return list(Entry.select().where((Entry.kind == "flag") & (Entry.reason == kind)))


def test_a_tap_redeems_once_and_a_copied_url_is_refused(world: World) -> None:
    sun_campaign(world)
    first = world.engine.redeem(tag_url(KEY, UID, 5), basket(5000), NFC)
    assert first.accepted and first.discount_minor == 1000 and first.campaign == "TAP"
    assert first.serial == serial_hex(sun.serial_for("TAP", UID))

    # The same URL again (copied, replayed from a phone's history): refused and flagged.
    copy = world.engine.redeem(tag_url(KEY, UID, 5), basket(5000))
    assert not copy.accepted and copy.reason is Reason.TAG_REPLAYED
    older = world.engine.redeem(tag_url(KEY, UID, 3), basket(5000), NFC)
    assert older.reason is Reason.TAG_REPLAYED
    assert len(flags(sun.FLAG_REPLAY)) == 2

    # The genuine tag tapped again: a fresh counter, but the tag's coupon is used.
    again = world.engine.redeem(tag_url(KEY, UID, 6), basket(5000), NFC)
    assert again.reason is Reason.ALREADY_REDEEMED
    # Another tag of the same campaign is another coupon.
    other = bytes.fromhex("04A1B2C3D4E5F7")
    assert world.engine.redeem(tag_url(KEY, other, 1), basket(5000)).accepted
    assert Use.select().where(Use.counts == True).count() == 2  # noqa: E712


def test_the_high_water_mark_survives_a_restart(world: World) -> None:
    sun_campaign(world, uses_per_coupon=3)
    assert world.engine.redeem(tag_url(KEY, UID, 10), basket(5000), NFC).accepted
    engine = world.reopen()
    assert engine.redeem(tag_url(KEY, UID, 10), basket(5000), NFC).reason is Reason.TAG_REPLAYED
    assert engine.redeem(tag_url(KEY, UID, 11), basket(5000), NFC).accepted  # second use
    (row,) = TagCounter.select()
    assert (row.campaign, row.uid, row.counter) == ("TAP", UID.hex(), 11)
    assert journal.verify().ok


def test_only_a_redemption_moves_the_mark(world: World) -> None:
    sun_campaign(world, kind="threshold", min_spend_minor=10000)
    url = tag_url(KEY, UID, 8)
    # Scanned before the basket qualifies, previewed, refused: the same tap still counts
    # once the cashier has rung up enough.
    assert world.engine.check(url, basket(20000), NFC).accepted
    assert world.engine.redeem(url, basket(500), NFC).reason is Reason.BELOW_MINIMUM
    assert world.engine.redeem(url, basket(20000), NFC).accepted
    assert world.engine.redeem(url, basket(20000), NFC).reason is Reason.TAG_REPLAYED


def test_a_held_tap_sets_the_mark_and_release_needs_a_new_tap(world: World) -> None:
    sun_campaign(world)
    url = tag_url(KEY, UID, 20)
    assert world.engine.hold("co-1", url, basket(5000), NFC).accepted
    assert world.engine.release("co-1").accepted
    assert world.engine.hold("co-2", url, basket(5000), NFC).reason is Reason.TAG_REPLAYED
    assert world.engine.hold("co-2", tag_url(KEY, UID, 21), basket(5000), NFC).accepted
    assert world.engine.commit("co-2").accepted


def test_the_mark_is_written_in_the_redemption_transaction(world: World) -> None:
    sun_campaign(world)
    url = tag_url(KEY, UID, 30)
    entries = Entry.select().count()
    db = world.engine.db
    db.execute_sql(
        "CREATE TRIGGER refuse_mark BEFORE INSERT ON tagcounter "
        "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    failed = world.engine.redeem(url, basket(5000), NFC)
    assert failed.reason is Reason.STORAGE_FAILURE
    # Nothing of the attempt stayed: no use, no journal entry, no mark.
    assert Use.select().count() == 0 and Entry.select().count() == entries
    assert TagCounter.select().count() == 0
    db.execute_sql("DROP TRIGGER refuse_mark")
    assert world.engine.redeem(url, basket(5000), NFC).accepted
    assert journal.verify().ok


def test_forged_and_unknown_tags(world: World) -> None:
    sun_campaign(world)
    url = tag_url(KEY, UID, 1)
    forged = url[:-1] + ("0" if url[-1] != "0" else "1")
    d = world.engine.redeem(forged, basket(5000), NFC)
    assert d.reason is Reason.BAD_SIGNATURE and not d.accepted
    assert flags("forged_token")
    # A tag personalised with a key the campaign does not have.
    stranger = world.engine.redeem(tag_url(b"\x42" * 16, UID, 1), basket(5000), NFC)
    assert stranger.reason is Reason.BAD_SIGNATURE
    # A campaign with no SUN key in the ledger, and one the ledger does not know.
    sun_campaign(world, key=None, id="PLAIN")
    assert world.engine.redeem(tag_url(KEY, UID, 1, "PLAIN"), basket(5000)).reason is (
        Reason.UNKNOWN_KEY
    )
    assert world.engine.redeem(tag_url(KEY, UID, 1, "NOPE"), basket(5000)).reason is (
        Reason.UNKNOWN_KEY
    )
    bad = "https://tap.example/c?campaign=TAP&picc_data=00&cmac=00"
    assert world.engine.redeem(bad, basket(5000)).reason is Reason.MALFORMED
    assert Use.select().count() == 0


def test_the_url_of_one_tag_on_another_tag_is_refused(world: World) -> None:
    sun_campaign(world)
    url = tag_url(KEY, UID, 2)
    other = Context(source="nfc", tag_uid=bytes.fromhex("04000000000001"))
    d = world.engine.redeem(url, basket(5000), other)
    assert d.reason is Reason.TAG_MISMATCH and flags("tag_mismatch")
    assert world.engine.redeem(url, basket(5000), NFC).accepted


def test_sun_keys_travel_in_the_ledger(world: World) -> None:
    sun_campaign(world)
    assert world.engine.ledger.sun_keys == {"TAP": KEY}
    # Published once; a new key replaces the old one at the terminal.
    new = bytes(range(16))
    world.central.set_sun_key("TAP", new)
    world.sync_ledger()
    assert world.engine.ledger.sun_keys == {"TAP": new}
    last = ledger.verify_update(world.central.anchor, world.central.deltas(0)[-1]).body
    assert dict(last["sun_keys"]) == {"TAP": new}
    world.sync_ledger()
    body = ledger.verify_update(world.central.anchor, world.central.deltas(0)[-1]).body
    assert dict(body["sun_keys"]) == {}
    # A snapshot carries them too.
    state, kind = ledger.apply(world.central.anchor, ledger.LedgerState(), world.central.snapshot())
    assert kind == "snapshot" and state.sun_keys == {"TAP": new}
    with pytest.raises(CentralError):
        world.central.set_sun_key("TAP", b"short")
    with pytest.raises(CentralError):
        world.central.set_sun_key("NOPE", KEY)


def test_an_older_journal_gets_the_counter_table(world: World) -> None:
    db = world.engine.db
    db.execute_sql("DROP TABLE tagcounter")
    db.execute_sql("DROP TABLE poscheckout")
    db.execute_sql("PRAGMA user_version = 1")
    sun_campaign(world)
    engine = world.reopen()
    assert engine.db.execute_sql("PRAGMA user_version").fetchone()[0] == 3
    assert engine.db.table_exists("poscheckout")  # 3: the POS API's stored checkouts
    assert engine.redeem(tag_url(KEY, UID, 1), basket(5000), NFC).accepted


# ---------------------------------------------------------------- tapped on a reader


def uri_message(url: str) -> bytes:
    return b"".join(ndef.message_encoder([ndef.UriRecord(url)]))


class Reader:
    """A real NfcDriver on a tag emulator's udp: path, scans handed over one by one."""

    def __init__(self, path: str) -> None:
        self.scans: list[Scan] = []
        self._arrived = threading.Event()
        opts = registry.options_for("nfc", {"path": path, "targets": ["106A"]})
        self.driver = registry.create("nfc", "nfc", opts, time.time)
        self.driver.start(self._sink)

    def _sink(self, scan: Scan) -> None:
        self.scans.append(scan)
        self._arrived.set()

    def next(self) -> Scan:
        assert self._arrived.wait(6.0), "no scan"
        self._arrived.clear()
        return self.scans[-1]


def redeem_scan(world: World, scan: Scan) -> Reason:
    """What the daemon does with a scan (terminal/daemon/runner.py)."""
    code = tokens.extract(scan.text())
    assert code is not None
    ctx = Context(source=scan.kind, tag_uid=bytes.fromhex(scan.meta["tag_uid"]))
    return world.engine.redeem(code, basket(5000), ctx).reason


def test_a_tag_tapped_on_the_nfc_reader_redeems_once(world: World) -> None:
    """NTAG 424 DNA emulator -> nfcpy udp: -> NfcDriver -> the daemon's extraction ->
    engine. The tag makes a fresh URL at every tap, as SDM does."""
    sun_campaign(world)
    taps = itertools.count(1)
    tag = Type4Tag(UID, lambda: uri_message(tag_url(KEY, UID, next(taps))))
    tag.start()
    reader = Reader(tag.path)
    try:
        first = reader.next()
        assert first.meta["tag_uid"] == UID.hex() and first.meta["record"] == "uri"
        assert redeem_scan(world, first) is Reason.OK
        tag.remove()
        time.sleep(0.8)
        tag.place()
        second = reader.next()
        assert second.text() != first.text()  # a new counter, a new URL
        assert redeem_scan(world, second) is Reason.ALREADY_REDEEMED
    finally:
        reader.driver.stop()
        tag.stop()

    # The first URL written onto an ordinary NTAG213 and tapped: a copy on another tag.
    copy = Type2Tag(bytes.fromhex("04999999999999"), uri_message(first.text()))
    copy.start()
    reader = Reader(copy.path)
    try:
        assert redeem_scan(world, reader.next()) is Reason.TAG_MISMATCH
    finally:
        reader.driver.stop()
        copy.stop()
    # Typed in or shown from a phone (no tag UID to compare): a replayed read counter.
    assert world.engine.redeem(first.text(), basket(5000)).reason is Reason.TAG_REPLAYED
