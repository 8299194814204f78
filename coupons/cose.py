"""COSE_Sign1 (RFC 9052) with EdDSA/Ed25519: the one signature envelope for tokens,
key certificates and ledger updates."""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import cbor2
import nacl.bindings
import nacl.exceptions
import nacl.signing

ALG_EDDSA = -8
HDR_ALG = 1
HDR_CRIT = 2
HDR_KID = 4
TAG_SIGN1 = 18


class CoseError(ValueError):
    """The bytes are not a well-formed COSE_Sign1 message we accept."""


@dataclass(frozen=True, slots=True)
class Sign1:
    protected: bytes
    kid: bytes
    payload: bytes
    signature: bytes

    def to_be_signed(self) -> bytes:
        return _sig_structure(self.protected, self.payload)


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, b"", payload])


def key_id(public_key: bytes) -> bytes:
    """Short, stable key id: 4 bytes of SHA-256 of the raw public key."""
    return hashlib.sha256(public_key).digest()[:4]


class SigningKey:
    """An Ed25519 private key (32-byte seed) with its key id."""

    def __init__(self, seed: bytes) -> None:
        self._key = nacl.signing.SigningKey(seed)
        self.seed = seed
        self.public = bytes(self._key.verify_key)
        self.kid = key_id(self.public)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    def sign(self, message: bytes) -> bytes:
        return bytes(self._key.sign(message).signature)

    def sign1(self, payload: bytes) -> bytes:
        protected = cbor2.dumps({HDR_ALG: ALG_EDDSA, HDR_KID: self.kid})
        signature = self.sign(_sig_structure(protected, payload))
        return cbor2.dumps(cbor2.CBORTag(TAG_SIGN1, [protected, {}, payload, signature]))


def loads_strict(data: bytes, what: str) -> object:
    """One CBOR item, each map key once, nothing after it, in preferred serialization
    (RFC 8949 4.1: shortest heads, definite lengths). cbor2 on its own keeps the last of a
    repeated key and ignores trailing bytes, so another COSE reader could see other claims
    or another kid in the very bytes we accepted; and a second spelling of the same item
    would be a second token string for one coupon. Key order is not checked: tokens in the
    field carry their claims in issue order, not sorted."""
    # Every token takes this path three times: first the common case, one cbor2.loads (no
    # file object) whose re-encoding is the input itself, which also shows nothing trails
    # the item. Anything else is read again below, the way that tells what is wrong.
    try:
        obj = cbor2.loads(data, allow_duplicate_keys=False, allow_indefinite=False)
        if cbor2.dumps(obj) == data:
            return obj
    except Exception:  # noqa: S110 (not swallowed: the reading below raises it as CoseError)
        pass
    fp = io.BytesIO(data)
    try:
        obj = cbor2.CBORDecoder(fp, allow_duplicate_keys=False, allow_indefinite=False).decode()
    except Exception as exc:  # cbor2 raises several types on garbage
        raise CoseError(f"{what}: not well-formed CBOR ({exc})") from None
    if fp.tell() != len(data):
        raise CoseError(f"trailing bytes after the {what}")
    try:
        preferred = cbor2.dumps(obj) == data
    except Exception:  # e.g. a tag cbor2 decoded to a value it cannot encode back
        preferred = False
    if not preferred:
        raise CoseError(f"{what}: not in preferred CBOR encoding")
    return obj


@functools.lru_cache(maxsize=64)
def _protected_header(protected: bytes) -> object:
    """A protected header read strictly, kept by its bytes: every token of one issuer key
    carries the same few (alg and kid), and what they read as depends on nothing else. A
    header that fails to read raises each time (lru_cache keeps no exception)."""
    header = loads_strict(protected, "protected header")
    return MappingProxyType(header) if isinstance(header, dict) else header


def parse_sign1(data: bytes) -> Sign1:
    """Structure only; the caller verifies the signature with the key the kid names."""
    if not isinstance(data, bytes):  # a field of a damaged CBOR document: any type at all
        raise CoseError(f"not a byte string but {type(data).__name__}")
    obj = loads_strict(data, "message")
    if isinstance(obj, cbor2.CBORTag):
        if obj.tag != TAG_SIGN1:
            raise CoseError(f"unexpected CBOR tag {obj.tag}")
        obj = obj.value
    if not isinstance(obj, (list, tuple)) or len(obj) != 4:
        raise CoseError("COSE_Sign1 must be an array of four")
    protected, unprotected, payload, signature = obj
    if not (
        isinstance(protected, bytes)
        and isinstance(payload, bytes)
        and isinstance(signature, bytes)
        and isinstance(unprotected, Mapping)
    ):
        raise CoseError("COSE_Sign1 fields have the wrong types")
    if len(signature) != 64:
        raise CoseError("signature is not 64 bytes")
    header = _protected_header(protected) if protected else {}
    if not isinstance(header, Mapping) or header.get(HDR_ALG) != ALG_EDDSA:
        raise CoseError("algorithm is not EdDSA")
    if HDR_CRIT in header or HDR_CRIT in unprotected:
        # RFC 9052 3.1: a reader must refuse critical parameters it does not understand;
        # this one understands none beyond alg and kid.
        raise CoseError("critical header parameters are not supported")
    if set(header) & set(unprotected):
        # RFC 9052 3: a label in both buckets is malformed (readers differ on which wins).
        raise CoseError("a header parameter is both protected and unprotected")
    kid = header.get(HDR_KID, unprotected.get(HDR_KID))
    if not isinstance(kid, bytes):
        raise CoseError("no key id")
    return Sign1(protected, kid, payload, signature)


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False
    return True


def verify_sign1(msg: Sign1, public_key: bytes) -> bool:
    return verify(public_key, msg.to_be_signed(), msg.signature)
