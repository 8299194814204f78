"""NTAG 424 DNA Secure Unique NFC (SUN): the URL such a tag rewrites at every tap, carrying
its UID and read counter (encrypted PICCData, or mirrored in plain) and a truncated AES-CMAC
(the SDM MAC). Verified as NXP AN12196 ("NTAG 424 DNA and NTAG 424 DNA TagTamper features
and hints") computes it: PICCData decrypted with AES-128-CBC and a zero IV, the
session MAC key = CMAC(key, SV2), the MAC over the empty input truncated to its odd bytes."""

from __future__ import annotations

import hashlib
import hmac
import urllib.parse
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

MAX_URL_CHARS = 1024
KEY_BYTES = 16
# Query parameter names: ours for the campaign, AN12196's spellings (and the short ones
# NXP's TagWriter offers) for the SDM mirrors.
CAMPAIGN = "campaign"
ENCRYPTED = ("picc_data", "e")
MAC = ("cmac", "c")
PLAIN_UID, PLAIN_COUNTER = "uid", "ctr"
# PICCDataTag: UID mirrored (bit 7), read counter mirrored (bit 6), UID length 7.
PICC_DATA_TAG = 0xC7
SV2_PREFIX = bytes.fromhex("3CC300010080")
FLAG_REPLAY = "sun_replay"  # a read counter at or below what this till already recorded


class SunError(ValueError):
    """A SUN URL that cannot be used."""


class SunMalformed(SunError):
    """Not a SUN URL we can read: a parameter missing, repeated, or of the wrong length."""


class SunForged(SunError):
    """Does not verify with the campaign's key: not made by a genuine tag with that key."""


@dataclass(frozen=True, slots=True)
class SunMessage:
    campaign: str
    mac: bytes  # the 8-byte truncated SDM MAC
    picc_data: bytes | None = None  # encrypted PICCData (16 bytes), or...
    uid: bytes | None = None  # ...UID and counter mirrored in plain
    counter: int | None = None


@dataclass(frozen=True, slots=True)
class SunRead:
    """What a verified SUN URL proves: this tag, at this tap."""

    uid: bytes
    counter: int


def _query(text: str) -> dict[str, list[str]] | None:
    text = text.strip()
    if len(text) > MAX_URL_CHARS:
        return None
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:  # "Invalid IPv6 URL" for a stray bracket: not a SUN URL
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return urllib.parse.parse_qs(parts.query, keep_blank_values=True)


def looks_like_sun(text: str) -> bool:
    """An http(s) URL naming a campaign, with an SDM MAC and mirrored tag data beside it
    (whether they are well formed is parse()'s to say)."""
    q = _query(text)
    if q is None or CAMPAIGN not in q:
        return False
    has_data = any(n in q for n in ENCRYPTED) or PLAIN_UID in q
    return has_data and any(n in q for n in MAC)


def _one(q: dict[str, list[str]], names: tuple[str, ...]) -> str | None:
    found = [v for n in names for v in q.get(n, ())]
    if len(found) > 1:
        raise SunMalformed(f"'{names[0]}' given more than once")
    return found[0] if found else None


def _hex(value: str | None, nbytes: int, what: str) -> bytes:
    if value is None:
        raise SunMalformed(f"no {what}")
    try:
        data = bytes.fromhex(value)
    except ValueError:
        raise SunMalformed(f"{what} is not hex") from None
    if len(data) != nbytes or len(value) != 2 * nbytes:
        raise SunMalformed(f"{what} must be {nbytes} bytes")
    return data


def parse(text: str) -> SunMessage:
    """Read the SUN parameters of a URL, without checking anything cryptographic."""
    q = _query(text)
    if q is None:
        raise SunMalformed("not an http(s) URL")
    campaign = _one(q, (CAMPAIGN,))
    if not campaign:
        raise SunMalformed("no campaign")
    mac = _hex(_one(q, MAC), 8, "SDM MAC")
    encrypted = _one(q, ENCRYPTED)
    if encrypted is not None:
        if PLAIN_UID in q or PLAIN_COUNTER in q:
            raise SunMalformed("both encrypted and plain tag data")
        return SunMessage(campaign, mac, picc_data=_hex(encrypted, 16, "PICC data"))
    uid = _hex(_one(q, (PLAIN_UID,)), 7, "UID")
    # The ASCII mirror shows the counter most significant byte first.
    counter = int.from_bytes(_hex(_one(q, (PLAIN_COUNTER,)), 3, "read counter"), "big")
    return SunMessage(campaign, mac, uid=uid, counter=counter)


def _check_key(key: bytes) -> None:
    if len(key) != KEY_BYTES:
        raise ValueError("an SDM key is 16 bytes (AES-128)")


def decrypt_picc_data(key: bytes, picc_data: bytes) -> SunRead:
    """UID and read counter from encrypted PICCData (the SDMMetaRead key)."""
    _check_key(key)
    decryptor = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).decryptor()
    plain = decryptor.update(picc_data) + decryptor.finalize()
    if plain[0] != PICC_DATA_TAG:
        # Also what a wrong key gives: the data cannot be told apart from a forgery.
        raise SunForged("PICC data does not decrypt with this key")
    return SunRead(uid=plain[1:8], counter=int.from_bytes(plain[8:11], "little"))


def _cmac(key: bytes, data: bytes) -> bytes:
    mac = CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()


def session_mac_key(key: bytes, uid: bytes, counter: int) -> bytes:
    """KSesSDMFileReadMAC = CMAC(K_SDMFileRead, SV2), SV2 = 3CC300010080 || UID || SDMReadCtr
    (least significant byte first), 16 bytes, so no padding."""
    _check_key(key)
    return _cmac(key, SV2_PREFIX + uid + counter.to_bytes(3, "little"))


def sdm_mac(key: bytes, uid: bytes, counter: int, mac_input: bytes = b"") -> bytes:
    """The 8-byte MAC a tag mirrors: CMAC over the MAC input (empty when the MAC input
    offset equals the MAC offset, as configured for SUN), bytes 1, 3, ..., 15 of it."""
    return _cmac(session_mac_key(key, uid, counter), mac_input)[1::2]


def verify(message: SunMessage, key: bytes, file_key: bytes | None = None) -> SunRead:
    """Decrypt (with `key`, the SDMMetaRead key) and check the MAC (with `file_key`, the
    SDMFileRead key; the same key unless given). Raises SunForged."""
    if message.picc_data is not None:
        read = decrypt_picc_data(key, message.picc_data)
    elif message.uid is not None and message.counter is not None:
        read = SunRead(message.uid, message.counter)
    else:
        raise SunMalformed("no tag data")
    expected = sdm_mac(file_key if file_key is not None else key, read.uid, read.counter)
    if not hmac.compare_digest(expected, message.mac):
        raise SunForged("SDM MAC does not verify")
    return read


def serial_for(campaign: str, uid: bytes) -> int:
    """The coupon serial of a campaign's SUN tag: one coupon per tag and campaign, the same
    at every till (so the central's redeemed list covers it), not reversible to the UID."""
    return int.from_bytes(hashlib.sha256(b"sun:" + campaign.encode() + uid).digest()[:8], "big")
