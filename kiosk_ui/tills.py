"""Till bearer tokens for the POS API: `redeem pos-token` issues one per till; only salted
SHA-256 hashes are kept, in <data>/pos-tokens.json (mode 0600)."""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

FILE = "pos-tokens.json"
PREFIX = "pos_"
_TILL = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def _digest(salt: bytes, token: str) -> str:
    # The token is 256 random bits, so one salted SHA-256 is enough (no slow hash needed).
    return hashlib.sha256(salt + token.encode("utf-8", "surrogatepass")).hexdigest()


def _read(path: Path) -> dict[str, object]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return doc if isinstance(doc, dict) else {}


def issue(data: Path | str, till: str) -> str:
    """A new token for `till` (replacing its old one); returns the token, stored hashed."""
    if not _TILL.match(till):
        raise ValueError("till names are 1-32 letters, digits, '-' or '_'")
    path = Path(data) / FILE
    doc = _read(path)
    token = PREFIX + secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    doc[till] = {"salt": salt.hex(), "hash": _digest(salt, token)}
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return token


class Tills:
    """Checks bearer tokens against the file, re-read when it changes (a new till's token
    works without a restart)."""

    def __init__(self, data: Path) -> None:
        self.path = data / FILE
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._entries: list[tuple[str, bytes, str]] = []

    def _load(self) -> list[tuple[str, bytes, str]]:
        try:
            st = self.path.stat()
            stamp: tuple[float, int] | None = (st.st_mtime, st.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                entries = []
                for till, row in _read(self.path).items():
                    if not isinstance(row, dict):
                        continue  # a damaged entry authorises nobody
                    try:
                        entries.append((till, bytes.fromhex(row["salt"]), str(row["hash"])))
                    except (KeyError, TypeError, ValueError):
                        continue  # a damaged entry authorises nobody
                self._entries, self._stamp = entries, stamp
            return self._entries

    def till_for(self, authorization: str | None) -> str | None:
        """The till a `Bearer <token>` header belongs to, or None."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token.startswith(PREFIX) or len(token) > 200:
            return None
        found = None
        for till, salt, digest in self._load():
            if hmac.compare_digest(_digest(salt, token), digest):
                found = till
        return found


def cmd_pos_token(args: argparse.Namespace) -> int:
    from coupons.cliutil import UserError

    data = Path(args.data)
    if not data.is_dir():
        raise UserError(f"{data} is not a directory")
    try:
        token = issue(data, args.till)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if getattr(args, "json", False):
        print(json.dumps({"till": args.till, "token": token}))
    else:
        print(token)
    return 0


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    cmd: Callable[..., argparse.ArgumentParser],
) -> None:
    """Register `redeem pos-token` (cmd is terminal.cli's subcommand helper)."""
    sp = cmd(sub, "pos-token", cmd_pos_token, "print a new POS API bearer token for a till")
    sp.add_argument("--till", required=True, help="till name (its old token stops working)")
