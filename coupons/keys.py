"""Key certificates: the root key vouches for ledger and issuer keys, so keys rotate
while a terminal holds only the root public key (the trust anchor)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2

from coupons import cose

PURPOSE_LEDGER = "ledger"
PURPOSE_ISSUER = "issuer"


class CertError(ValueError):
    """A certificate or trust anchor is unusable."""


@dataclass(frozen=True, slots=True)
class KeyCert:
    kid: bytes
    purpose: str
    public_key: bytes
    not_before: int
    not_after: int
    raw: bytes  # the signed COSE_Sign1 bytes, kept so the cert can be passed on as is

    def valid_at(self, t: float) -> bool:
        return self.not_before <= t < self.not_after


def make_cert(
    root: cose.SigningKey, key: cose.SigningKey, purpose: str, not_before: int, not_after: int
) -> bytes:
    payload = cbor2.dumps({1: key.kid, 2: purpose, 3: key.public, 4: not_before, 5: not_after})
    return root.sign1(payload)


def _hex_field(doc: object, name: str) -> bytes:
    """A JSON object's hex field; CertError saying which field and what is wrong."""
    if not isinstance(doc, dict):
        raise CertError(f"not a JSON object but {type(doc).__name__}")
    if name not in doc:
        raise CertError(f"missing field '{name}'")
    value = doc[name]
    if not isinstance(value, str):
        raise CertError(f"field '{name}' must be hex text, not {type(value).__name__}")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise CertError(f"field '{name}' is not hex: {value!r}") from None


@dataclass(frozen=True, slots=True)
class TrustAnchor:
    public_key: bytes

    @property
    def kid(self) -> bytes:
        return cose.key_id(self.public_key)

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.public_key).hexdigest()
        return "SHA256:" + ":".join(digest[i : i + 4] for i in range(0, 32, 4))

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": "edge-redeem-trust-anchor/1",
                "root_public_key": self.public_key.hex(),
                "kid": self.kid.hex(),
                "fingerprint": self.fingerprint,
            },
            indent=2,
        )

    @classmethod
    def load(cls, path: Path) -> TrustAnchor:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CertError(f"trust anchor {path} is unreadable: {exc}") from None
        try:
            key = _hex_field(doc, "root_public_key")
        except CertError as exc:
            raise CertError(f"trust anchor {path} is unreadable: {exc}") from None
        if len(key) != 32:
            raise CertError(f"trust anchor {path} does not hold an Ed25519 key")
        return cls(key)

    def check_cert(self, raw: bytes) -> KeyCert:
        """Verify a root-signed certificate; raise CertError when it is not genuine."""
        try:
            msg = cose.parse_sign1(raw)
        except cose.CoseError as exc:
            raise CertError(f"certificate malformed: {exc}") from None
        if msg.kid != self.kid or not cose.verify_sign1(msg, self.public_key):
            raise CertError("certificate not signed by the trust anchor")
        try:
            body: Any = cose.loads_strict(msg.payload, "certificate")
            cert = KeyCert(
                kid=body[1],
                purpose=body[2],
                public_key=body[3],
                not_before=int(body[4]),
                not_after=int(body[5]),
                raw=raw,
            )
        except (cbor2.CBORDecodeError, LookupError, TypeError, ValueError):
            raise CertError("certificate fields missing") from None
        if not (
            isinstance(cert.kid, bytes)
            and isinstance(cert.public_key, bytes)
            and isinstance(cert.purpose, str)
        ):
            raise CertError("certificate fields have the wrong types")
        if cose.key_id(cert.public_key) != cert.kid:
            raise CertError("certificate key id does not match its key")
        return cert
