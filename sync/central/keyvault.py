"""The central's master key and the private keys sealed under it: where an instance finds
the master key, sealing and opening a key seed (AES-256-GCM), and the check value that
tells a wrong master key from a right one before anything is signed."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "CREDENTIAL",
    "ENV_FILE",
    "KeySource",
    "Vault",
    "VaultError",
    "create_master_key_file",
    "load_master_key",
    "locate",
    "read_master_key",
]

log = logging.getLogger(__name__)

ENV_FILE = "REDEEM_CENTRAL_MASTER_KEY_FILE"
CREDENTIAL = "master-key"  # systemd: LoadCredential=master-key:/etc/edge-redeem/master-key
MASTER_KEY_BYTES = 32
# What the check value is an HMAC of: fixed, so every instance computes the same value from
# the same master key, and a different key gives a different value (never the key itself).
CHECK_LABEL = b"edge-redeem central master key check/1"
SEALED_FORMAT = b"\x01"  # first byte of a sealed blob: AES-256-GCM, 12-byte nonce
NONCE_BYTES = 12
WRONG_KEY = (
    "the master key does not open this database's keys: this instance was given another "
    "central's master key, or a new one; start it with the master key `redeem-central init` "
    "used for this database (docs/deploy-central.md)"
)


class VaultError(Exception):
    """The master key is missing, unreadable or not this database's, or a sealed key does
    not open: in words for an operator."""


@dataclass(frozen=True)
class KeySource:
    """Where the master key comes from: a file, and how it was named (for messages)."""

    path: Path
    where: str
    creatable: bool  # named by the operator (flag or environment): init may create it


def locate(flag: str | None = None, environ: Mapping[str, str] | None = None) -> KeySource:
    """The first of `--master-key-file`, REDEEM_CENTRAL_MASTER_KEY_FILE and the systemd
    credential `master-key`. A path named by the flag or the environment wins even when the
    file is missing (reading it then says so): falling through to another key would open
    the database with a key the operator did not mean."""
    env = os.environ if environ is None else environ
    if flag:
        return KeySource(Path(flag), "--master-key-file", True)
    named = env.get(ENV_FILE, "").strip()
    if named:
        return KeySource(Path(named), ENV_FILE, True)
    credentials = env.get("CREDENTIALS_DIRECTORY", "").strip()
    if credentials and (Path(credentials) / CREDENTIAL).exists():
        return KeySource(
            Path(credentials) / CREDENTIAL, f"the systemd credential {CREDENTIAL}", False
        )
    why = (
        f"no file {CREDENTIAL} in {credentials}"
        if credentials
        else "CREDENTIALS_DIRECTORY is not set"
    )
    raise VaultError(
        "no master key: looked for --master-key-file PATH, the environment variable "
        f"{ENV_FILE} (not set) and the systemd credential {CREDENTIAL} ({why}). Give one of "
        "them a file holding 64 hex digits (`redeem-central init --master-key-file PATH` "
        "makes one); the central will not start without it (docs/deploy-central.md)"
    )


def read_master_key(source: KeySource) -> bytes:
    try:
        text = source.path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise VaultError(
            f"master key file {source.path} (from {source.where}) is unreadable: {detail}"
        ) from None
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != MASTER_KEY_BYTES:
        raise VaultError(
            f"master key file {source.path} (from {source.where}) must hold 64 hex digits "
            "(32 bytes) and nothing else"
        )
    try:
        mode = source.path.stat().st_mode & 0o777
    except OSError:
        mode = 0
    if mode & 0o077:  # a warning, not a refusal: systemd's credential copies are its own
        log.warning(
            "master key file %s can be read by others (mode %o): make it 0600", source.path, mode
        )
    return key


def load_master_key(flag: str | None = None, environ: Mapping[str, str] | None = None) -> bytes:
    return read_master_key(locate(flag, environ))


def create_master_key_file(path: Path) -> bytes:
    """A new random master key in a new file (mode 0600); never overwrites one."""
    key = secrets.token_bytes(MASTER_KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise VaultError(f"cannot create master key file {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(key.hex() + "\n")
    return key


class Vault:
    """Seals and opens key seeds under one master key. The associated data is the key id
    and purpose, so a sealed seed copied into another row does not open there."""

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != MASTER_KEY_BYTES:
            raise VaultError("a master key is 32 bytes (64 hex digits)")
        self._aead = AESGCM(master_key)
        self._check = hmac.new(master_key, CHECK_LABEL, hashlib.sha256).hexdigest()

    @property
    def check_value(self) -> str:
        """What the database keeps to recognise this master key (an HMAC, not the key)."""
        return self._check

    def opens(self, stored_check: str) -> bool:
        return hmac.compare_digest(stored_check.encode(), self._check.encode())

    def seal(self, kid: str, purpose: str, seed: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return SEALED_FORMAT + nonce + self._aead.encrypt(nonce, seed, _aad(kid, purpose))

    def open(self, kid: str, purpose: str, sealed: bytes) -> bytes:
        if len(sealed) <= 1 + NONCE_BYTES or sealed[:1] != SEALED_FORMAT:
            raise VaultError(f"key {kid}: its sealed copy in the database is damaged")
        nonce, box = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, box, _aad(kid, purpose))
        except InvalidTag:
            raise VaultError(
                f"key {kid} does not open with this master key: its sealed copy was altered "
                "or belongs to another key"
            ) from None


def _aad(kid: str, purpose: str) -> bytes:
    return b"edge-redeem central key\x00" + kid.encode() + b"\x00" + purpose.encode()
