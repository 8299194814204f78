"""Coupon tokens: `CPN1:` + base45(COSE_Sign1(EdDSA, CBOR claims)), and plain codes."""

from __future__ import annotations

import hashlib
import re
import urllib.parse
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from coupons import base45, cose, sun

PREFIX = "CPN1:"
MAX_TOKEN_CHARS = 1024  # far above any token we issue; bounds work on garbage input
_PREFIX_RE = re.compile(re.escape(PREFIX), re.IGNORECASE)
MAX_URL_CHARS = 4 * MAX_TOKEN_CHARS  # a token percent-encoded in full, and the link around it

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
            body = cose.loads_strict(data, "claims")
        except cose.CoseError as exc:
            raise TokenMalformed(str(exc)) from None
        if not isinstance(body, Mapping):
            raise TokenMalformed("claims are not a map")
        try:
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
        ints = (claims.serial, claims.not_before, claims.expires)
        if not (
            isinstance(claims.campaign, str)
            # CBOR true/false decode to Python bools, which are ints too
            and all(isinstance(v, int) and not isinstance(v, bool) for v in ints)
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
    """A token string, or a URL carrying one (what `extract` hands over when the URL's token
    reads two ways)."""
    text = text.strip()
    return text.upper().startswith(PREFIX) or bool(url_readings(text))


def url_readings(text: str) -> list[str]:
    """The token a URL carries, read the two ways a URL is written, strict first: percent-
    decoded only (RFC 3986, where '+' is a plus, itself a base45 character) and form-decoded
    (a space written as '+', as Python's urlencode and JavaScript's URLSearchParams write
    it). One entry when both agree; none when it is not a URL or carries no token. A text
    that starts with the prefix is a token, never a URL: '://' can occur inside base45."""
    if text.upper().startswith(PREFIX) or "://" not in text or len(text) > MAX_URL_CHARS:
        return []
    found: list[str] = []
    for unquote in (urllib.parse.unquote, urllib.parse.unquote_plus):
        url = unquote(text)
        # Not url.upper().find(): upper() can lengthen a string ('ß' -> 'SS'), shifting the
        # index it returns off the prefix in the original.
        at = _PREFIX_RE.search(url)
        if at is not None:
            reading = url[at.start() :].split("&", 1)[0].split("#", 1)[0].strip()
            if reading not in found:
                found.append(reading)
    return found


def parse(text: str, issuer_key: Callable[[bytes], bytes | None] | None = None) -> Token:
    """Decode a token string to its message and claims, without checking the signature.

    A URL whose token reads two ways (see `url_readings`) gives, strict reading first, the
    first well-formed reading that verifies with the public key `issuer_key` returns for
    its kid (the ledger's issuer keys). When none verifies: the first whose kid names an
    issuer key (a forgery of that key, for the engine to refuse and flag as such), else the
    first well-formed one. Every reading needs the issuer's signature to be accepted, so
    reading a link both ways accepts nothing that was not issued."""
    text = text.strip()
    readings = url_readings(text)
    if not readings:
        return _parse_one(text)
    parsed: list[Token] = []
    error: TokenMalformed | None = None
    for reading in readings:
        try:
            tok = _parse_one(reading)
        except TokenMalformed as exc:
            error = error or exc  # the strict reading's words, when both fail
            continue
        if issuer_key is None or len(readings) == 1:
            return tok
        public = issuer_key(tok.message.kid)
        if public is not None and cose.verify_sign1(tok.message, public):
            return tok
        parsed.append(tok)
    if issuer_key is not None:
        for tok in parsed:
            if issuer_key(tok.message.kid) is not None:
                return tok
    if parsed:
        return parsed[0]
    raise error or TokenMalformed("not a coupon token")


def _parse_one(text: str) -> Token:
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
    is percent- or form-encoded, as NFC URI records and phone links carry it; the URL itself
    when its token reads two ways, see `parse`), the URL of an NTAG 424
    DNA SUN tag (coupons/sun.py), or something shaped like a typed code. None for anything
    else (a product barcode, a plain URL), which the terminal ignores rather than refuses."""
    text = text.strip()
    upper = text.upper()
    if upper.startswith(PREFIX):
        return text
    if "://" in text:
        readings = url_readings(text)
        if readings:
            # Two readings: the URL itself, for parse() to choose by the signature.
            return readings[0] if len(readings) == 1 else text
        return text if sun.looks_like_sun(text) else None
    if set(upper) <= _CODE_CHARS and any(c.isalpha() for c in upper):
        if 8 <= len(normalize_code(upper)) <= 24:
            return text
    return None
