"""The manager's PIN (a slow salted scrypt hash in <data>/manager.json), the lock-out after
wrong tries (<data>/manager_lockout.json, so a power cycle does not reset it), login
sessions, and the local review of fraud flags (<data>/flag_reviews.json)."""

from __future__ import annotations

import argparse
import getpass
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

PIN_FILE = "manager.json"
REVIEWS_FILE = "flag_reviews.json"
LOCKOUT_FILE = "manager_lockout.json"
MAX_TRIES = 5
LOCKOUT_S = 300.0
SESSION_S = 900.0
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class PinError(ValueError):
    pass


def _hash(pin: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(pin.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024)


def set_pin(data: Path, pin: str) -> Path:
    """Store a new PIN (4 to 12 digits) as a salted scrypt hash; the PIN itself never."""
    if not (pin.isdigit() and 4 <= len(pin) <= 12):
        raise PinError("the PIN must be 4 to 12 digits")
    salt = secrets.token_bytes(16)
    doc = {"scheme": "scrypt", "salt": salt.hex(), **_SCRYPT}
    doc["hash"] = _hash(pin, salt, **_SCRYPT).hex()
    path = Path(data) / PIN_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def check_pin(data: Path, pin: str) -> bool:
    path = Path(data) / PIN_FILE
    if not path.exists():
        return False
    doc = json.loads(path.read_text())
    got = _hash(pin, bytes.fromhex(doc["salt"]), int(doc["n"]), int(doc["r"]), int(doc["p"]))
    return hmac.compare_digest(got, bytes.fromhex(doc["hash"]))


class Manager:
    """Login state of the one terminal: tries and lock-out (kept in the data directory, on
    the wall clock `wall`, so pulling the plug does not buy five more guesses) and sessions
    (in memory, on `now`: a restart logs the manager out)."""

    def __init__(
        self,
        data: Path,
        now: Callable[[], float] = time.monotonic,
        session_s: float = SESSION_S,
        lockout_s: float = LOCKOUT_S,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.data = Path(data)
        self.now = now
        self.wall = wall
        self.session_s, self.lockout_s = session_s, lockout_s
        self.sessions: dict[str, float] = {}
        self._lock = threading.Lock()
        self.failures, self.locked_until = self._load_lockout()

    def _load_lockout(self) -> tuple[int, float]:
        path = self.data / LOCKOUT_FILE
        try:
            doc = json.loads(path.read_text())
            failures, until = int(doc["failures"]), float(doc["locked_until"])
        except FileNotFoundError:
            return 0, 0.0
        except (ValueError, KeyError, TypeError):
            # A torn or edited file must not unlock: count it as a fresh lock-out.
            return 0, self.wall() + self.lockout_s
        # A clock set back after the lock-out began must not stretch it past its length.
        return max(0, failures), min(until, self.wall() + self.lockout_s)

    def _store_lockout(self) -> None:
        path = self.data / LOCKOUT_FILE
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"failures": self.failures, "locked_until": self.locked_until}, f)
            f.flush()
            os.fsync(f.fileno())  # the point is to survive a power cut
        os.replace(tmp, path)

    def has_pin(self) -> bool:
        return (self.data / PIN_FILE).exists()

    def locked_for(self) -> float:
        return max(0.0, self.locked_until - self.wall())

    def login(self, pin: str) -> str | None:
        """A session token for the right PIN; None otherwise. While locked out, even the
        right PIN is refused."""
        with self._lock:
            if self.locked_for() > 0:
                return None
            ok = check_pin(self.data, pin)
            if not ok:
                self.failures += 1
                if self.failures >= MAX_TRIES:
                    self.failures = 0
                    self.locked_until = self.wall() + self.lockout_s
                self._store_lockout()
                return None
            if self.failures or self.locked_until:
                self.failures, self.locked_until = 0, 0.0
                self._store_lockout()
            token = secrets.token_urlsafe(32)
            self.sessions[token] = self.now() + self.session_s
            return token

    def valid(self, token: str | None) -> bool:
        if not token:
            return False
        with self._lock:
            expires = self.sessions.get(token)
            if expires is None:
                return False
            if expires < self.now():
                del self.sessions[token]
                return False
            self.sessions[token] = self.now() + self.session_s  # sliding timeout
            return True

    def logout(self, token: str | None) -> None:
        with self._lock:
            self.sessions.pop(token or "", None)


class Reviews:
    """A manager's acknowledge/resolve and note per flag, by journal seq: kept beside the
    journal, never in its hash chain."""

    def __init__(self, data: Path) -> None:
        self.path = Path(data) / REVIEWS_FILE
        self._lock = threading.Lock()

    def all(self) -> dict[str, dict[str, object]]:
        if not self.path.exists():
            return {}
        doc = json.loads(self.path.read_text())
        return doc if isinstance(doc, dict) else {}

    def set(self, seq: int, status: str, note: str, at: float) -> None:
        if status not in ("acknowledged", "resolved"):
            raise ValueError(f"unknown review status {status!r}")
        with self._lock:
            doc = self.all()
            doc[str(seq)] = {"status": status, "note": note[:500], "at": at}
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc, ensure_ascii=False))
            os.replace(tmp, self.path)


def cmd_set_pin(args: argparse.Namespace) -> int:
    pin = os.environ.get("REDEEM_MANAGER_PIN") or getpass.getpass("new manager PIN: ")
    try:
        path = set_pin(Path(args.data), pin)
    except PinError as exc:
        print(f"error: {exc}")
        return 2
    print(f"manager PIN stored in {path}")
    return 0


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    cmd: Callable[..., argparse.ArgumentParser],
) -> None:
    """Register `redeem manager set-pin` with the CLI's subparsers and its `cmd` helper."""
    mg = sub.add_parser("manager", help="the kiosk manager's PIN").add_subparsers(
        dest="manager_command", required=True
    )
    cmd(mg, "set-pin", cmd_set_pin, "set the manager PIN (env REDEEM_MANAGER_PIN or a prompt)")
