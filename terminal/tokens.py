"""Coupon tokens: `CPN1:` + base45(COSE_Sign1(EdDSA, CBOR claims)), and plain codes."""

from __future__ import annotations

import hashlib
import urllib.parse
import zlib
from dataclasses import dataclass
from typing import Any

import cbor2

from terminal import base45, cose, sun

PREFIX = "CPN1:"
MAX_TOKEN_CHARS = 1024  # far above any token we issue; bounds work on garbage input

# Claim keys: 4 and 5 are the CWT (RFC 8392) exp and nbf; small negative ints are ours
# because they encode in one byte, which keeps the QR code small.
CLAIM_EXP = 4
CLAIM_NBF = 5
CLAIM_CAMPAIGN = -1
CLAIM_SERIAL = -2
CLAIM_CUSTOMER = -3
CLAIM_TAG_UID = -4


class TokenMalformed(ValueError):
    """Not a coupon token, or a damaged one."""


@dataclass(frozen=True, slots=True)
class Claims:
    campaign: str
    serial: int
    not_before: int
    expires: int
    customer_ref: bytes | None = None
    tag_uid: bytes | None = None

    def to_cbor(self) -> bytes:
        body: dict[int, Any] = {
            CLAIM_CAMPAIGN: self.campaign,
            CLAIM_SERIAL: self.serial,
            CLAIM_NBF: self.not_before,
            CLAIM_EXP: self.expires,
        }
        if self.customer_ref is not None:
            body[CLAIM_CUSTOMER] = self.customer_ref
        if self.tag_uid is not None:
            body[CLAIM_TAG_UID] = self.tag_uid
        return cbor2.dumps(body)

    @classmethod
    def from_cbor(cls, data: bytes) -> Claims:
        try:
            body = cbor2.loads(data)
            claims = cls(
                campaign=body[CLAIM_CAMPAIGN],
                serial=body[CLAIM_SERIAL],
                not_before=body[CLAIM_NBF],
                expires=body[CLAIM_EXP],
                customer_ref=body.get(CLAIM_CUSTOMER),
                tag_uid=body.get(CLAIM_TAG_UID),
            )
        except Exception:
            raise TokenMalformed("claims are not a valid coupon") from None
        if not (
            isinstance(claims.campaign, str)
            and isinstance(claims.serial, int)
            and isinstance(claims.not_before, int)
            and isinstance(claims.expires, int)
            and 0 <= claims.serial < 2**64
            and isinstance(claims.customer_ref, (bytes, type(None)))
            and isinstance(claims.tag_uid, (bytes, type(None)))
        ):
            raise TokenMalformed("claims have the wrong types")
        return claims


@dataclass(frozen=True, slots=True)
class Token:
    message: cose.Sign1
    claims: Claims


def issue(key: cose.SigningKey, claims: Claims) -> str:
    """Sign claims into a token string; zlib only when it makes the token shorter."""
    raw = key.sign1(claims.to_cbor())
    packed = zlib.compress(raw, 9)
    return PREFIX + base45.encode(packed if len(packed) < len(raw) else raw)


def looks_like_token(text: str) -> bool:
    return text.strip().upper().startswith(PREFIX)


def parse(text: str) -> Token:
    """Decode a token string to its message and claims, without checking the signature."""
    text = text.strip()
    if len(text) > MAX_TOKEN_CHARS:
        raise TokenMalformed("too long to be a coupon")
    if not text.upper().startswith(PREFIX):
        raise TokenMalformed("not a coupon token")
    try:
        data = base45.decode(text[len(PREFIX) :])
    except base45.Base45Error as exc:
        raise TokenMalformed(str(exc)) from None
    if data[:1] == b"\x78":  # zlib header; a COSE_Sign1 starts with 0xD2 or 0x84
        try:
            inflater = zlib.decompressobj()
            data = inflater.decompress(data, 4096)
        except zlib.error:
            raise TokenMalformed("damaged compressed token") from None
        # Without these checks a token cut short (checksum missing), one with bytes
        # appended, or one inflating past the limit would still be read.
        if not inflater.eof or inflater.unused_data or inflater.unconsumed_tail:
            raise TokenMalformed("damaged compressed token")
    try:
        message = cose.parse_sign1(data)
    except cose.CoseError as exc:
        raise TokenMalformed(str(exc)) from None
    return Token(message, Claims.from_cbor(message.payload))


def normalize_code(code: str) -> str:
    """Typed codes ignore case, spaces and dashes, as cashiers type them."""
    return "".join(ch for ch in code.upper() if ch.isalnum())


def plain_code_hash(salt: bytes, code: str) -> bytes:
    return hashlib.sha256(salt + normalize_code(code).encode()).digest()[:16]


_CODE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -")


def extract(text: str) -> str | None:
    """What in a scanned text could be a coupon: a `CPN1:` token (also inside a URL, where it
    is percent-encoded, as NFC URI records and phone links carry it), the URL of an NTAG 424
    DNA SUN tag (terminal/sun.py), or something shaped like a typed code. None for anything
    else (a product barcode, a plain URL), which the terminal ignores rather than refuses."""
    text = text.strip()
    upper = text.upper()
    if upper.startswith(PREFIX):
        return text
    if "://" in text:
        url = urllib.parse.unquote(text)
        at = url.upper().find(PREFIX)
        if at >= 0:
            return url[at:].split("&", 1)[0].split("#", 1)[0]
        return text if sun.looks_like_sun(text) else None
    if set(upper) <= _CODE_CHARS and any(c.isalpha() for c in upper):
        if 8 <= len(normalize_code(upper)) <= 24:
            return text
    return None
