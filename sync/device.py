"""What enrollment leaves for sync: the device key (<data>/device.key as `redeem enroll`
writes it; on a till install/install-pi.sh moves it to /etc/credstore and systemd hands it
over as $CREDENTIALS_DIRECTORY/device-key) and sync.json in the data directory (the
central's URL, the pinned CA bundle, the trust anchor's fingerprint)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from coupons import cose

KEY_FILE = "device.key"
CREDENTIAL = "device-key"
SETTINGS = "sync.json"
CA_FILE = "central-ca.pem"
# Where install/install-pi.sh keeps the key for systemd's LoadCredential= (redeem.service).
CREDSTORE = Path("/etc/credstore/edge-redeem") / CREDENTIAL
# redeem.service's SetCredential= fallback when the credstore file is missing: no key given.
_NO_CREDENTIAL = (b"", b"\n")

log = logging.getLogger(__name__)


class DeviceKeyError(Exception):
    pass


def credential_path() -> Path | None:
    """$CREDENTIALS_DIRECTORY/device-key, unless systemd passed none or only the unit's
    placeholder (the credstore file is missing: the key is still in the data directory)."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not creds:
        return None
    path = Path(creds) / CREDENTIAL
    try:
        if path.read_bytes() in _NO_CREDENTIAL:
            return None
    except FileNotFoundError:
        return None
    except OSError:
        pass  # read_device_key reports it, naming the file
    return path


def _parse_key(raw: bytes, where: Path) -> cose.SigningKey:
    text = raw.strip()
    try:
        seed = bytes.fromhex(text.decode("ascii")) if len(text) == 64 else raw
    except (UnicodeDecodeError, ValueError):
        seed = raw
    if len(seed) != 32:
        raise DeviceKeyError(f"{where} does not hold an Ed25519 key (hex seed)")
    return cose.SigningKey(seed)


def read_device_key(data: Path) -> cose.SigningKey:
    """The credential systemd passes in wins over the file in the data directory."""
    cred = credential_path()
    path = cred or data / KEY_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DeviceKeyError(
            f"no device key at {path}: enroll the terminal first (`redeem enroll`); if the "
            f"installer moved it to {CREDSTORE}, run this as part of redeem.service (or "
            f"`systemd-run -p LoadCredential={CREDENTIAL}:{CREDSTORE} ...`)"
        ) from None
    except OSError as exc:
        raise DeviceKeyError(f"cannot read the device key {path}: {exc}") from None
    key = _parse_key(raw, path)
    if cred is not None:
        _warn_if_shadowed(key, data / KEY_FILE)
    return key


def _warn_if_shadowed(key: cose.SigningKey, file: Path) -> None:
    """A key in the data directory next to the credential comes from an enrollment after
    the installer moved the old one: the credential then signs for a terminal that is gone."""
    try:
        other = _parse_key(file.read_bytes(), file)
    except (OSError, DeviceKeyError):
        return
    if other.public != key.public:
        log.warning(
            "%s is not the device key systemd passes in (%s), which is used; if this "
            "terminal was enrolled again, run install-pi.sh again to move the new key there",
            file,
            CREDSTORE,
        )


def ensure_device_key(data: Path) -> tuple[cose.SigningKey, Path, bool]:
    """The key to enroll with: the systemd credential or an existing <data>/device.key, or
    a new one written there with mode 0600. Returns (key, where, created)."""
    cred = credential_path()
    if cred is not None:
        return read_device_key(data), cred, False
    path = data / KEY_FILE
    if path.exists():
        return read_device_key(data), path, False
    data.mkdir(parents=True, exist_ok=True)
    key = cose.SigningKey.generate()
    # O_EXCL with the mode given at creation: the seed is never readable by others, not
    # even between open and chmod.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.seed.hex() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return key, path, True


@dataclass(frozen=True)
class Settings:
    central: str
    ca: str | None = None  # file name in the data directory (a copy of --ca), if pinned
    fingerprint: str = ""
    enrolled_at: float = 0.0

    def ca_path(self, data: Path) -> str | None:
        return str(data / self.ca) if self.ca else None

    def save(self, data: Path) -> None:
        (data / SETTINGS).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, data: Path) -> Settings | None:
        try:
            doc = json.loads((data / SETTINGS).read_text())
            return cls(
                central=str(doc["central"]),
                ca=doc.get("ca"),
                fingerprint=str(doc.get("fingerprint", "")),
                enrolled_at=float(doc.get("enrolled_at", 0.0)),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DeviceKeyError(f"{data / SETTINGS} is unreadable: {exc}") from None
