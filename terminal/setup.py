"""Opening a terminal's data directory: identity, trust anchor, ledger and journal."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from terminal.clock import Clock
from terminal.engine import Engine
from terminal.journal import JournalUnavailable, open_database
from terminal.keys import CertError, TrustAnchor
from terminal.ledger_store import LedgerStore

IDENTITY = "terminal.json"
ANCHOR = "trust-anchor.json"


class NotInitialised(Exception):
    pass


class DataUnusable(NotInitialised):
    """The data directory is there but cannot be redeemed on (a damaged or read-only
    journal): the daemon and every command stop with this sentence."""


@dataclass(frozen=True)
class Identity:
    store: str
    terminal: str

    @classmethod
    def load(cls, data: Path) -> Identity:
        path = data / IDENTITY
        try:
            doc = json.loads(path.read_text())
            return cls(str(doc["store"]), str(doc["terminal"]))
        except FileNotFoundError:
            raise NotInitialised(
                f"{data} is not a terminal data directory (run `redeem init`)"
            ) from None
        except (OSError, ValueError, KeyError) as exc:
            raise NotInitialised(f"{path} is unreadable: {exc}") from None


def init(data: Path, anchor_file: Path, store: str, terminal: str) -> TrustAnchor:
    anchor = TrustAnchor.load(anchor_file)
    check_not_initialised(data)
    data.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(anchor_file, data / ANCHOR)
    _write_identity(data, store, terminal)
    return anchor


def check_not_initialised(data: Path) -> None:
    if (data / IDENTITY).exists():
        raise NotInitialised(f"{data} is already initialised")


def init_enrolled(data: Path, anchor: TrustAnchor, store: str, terminal: str) -> None:
    """`redeem init` for a terminal that enrollment named: the trust anchor comes from the
    central (checked against the pinned fingerprint by the caller), not from a file."""
    check_not_initialised(data)
    data.mkdir(parents=True, exist_ok=True)
    (data / ANCHOR).write_text(anchor.to_json())
    _write_identity(data, store, terminal)


def _write_identity(data: Path, store: str, terminal: str) -> None:
    # terminal.json last: its presence is what "initialised" means.
    open_database(data / "journal.db").close()
    (data / IDENTITY).write_text(json.dumps({"store": store, "terminal": terminal}, indent=2))


def open_engine(data: Path, clock: Clock) -> Engine:
    identity = Identity.load(data)
    try:
        anchor = TrustAnchor.load(data / ANCHOR)
    except CertError as exc:
        raise NotInitialised(str(exc)) from None
    store = LedgerStore(data / "ledger", anchor)
    store.load()
    try:
        db = open_database(data / "journal.db")
    except JournalUnavailable as exc:
        raise DataUnusable(str(exc)) from None
    return Engine(store, clock, identity.store, identity.terminal, db)
