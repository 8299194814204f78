"""Opening a terminal's data directory: identity, trust anchor, ledger and journal."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from coupons import journal
from coupons.clock import Clock
from coupons.engine import Engine
from coupons.journal import JournalFull, JournalUnavailable, open_database
from coupons.keys import CertError, TrustAnchor
from coupons.ledger_store import LedgerStore

IDENTITY = "terminal.json"
ANCHOR = "trust-anchor.json"
# The central's acknowledged mark, copied by the sync client outside journal.db after each
# acknowledgement: a journal.db replaced by an older copy cannot take this file back with it.
ACKED_COPY = "sync/acked.json"


class NotInitialised(Exception):
    pass


class DataUnusable(NotInitialised):
    """The data directory is there but cannot be redeemed on (a damaged, truncated or
    read-only journal): the daemon and every command stop with this sentence."""


class DiskFull(DataUnusable):
    """The journal's file system is full: nothing is damaged and the same start succeeds
    once space is freed, so the process exits with EX_TEMPFAIL and systemd retries it."""

    exit_code = 75  # EX_TEMPFAIL (sysexits.h); 2 is "restarting cannot help"


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
    store = LedgerStore(data / "ledger", anchor, identity.store)
    store.load()
    path = data / "journal.db"
    try:
        db = open_database(path)
    except JournalFull as exc:
        raise DiskFull(str(exc)) from None
    except JournalUnavailable as exc:
        raise DataUnusable(str(exc)) from None
    truncated = journal.tail_problem(acknowledged_elsewhere(data))
    if truncated:
        db.close()
        raise DataUnusable(
            f"{path} has lost its last entries: {truncated[1]}: not redeeming on it, as new "
            "entries would take their numbers; restore the data directory from the latest "
            "backup or re-enroll (the central holds every entry it received)"
        )
    behind = journal.behind_mark()  # the mark kept outside journal.db (issue 11)
    if behind:
        db.close()
        raise DataUnusable(behind.sentence())
    return Engine(store, clock, identity.store, identity.terminal, db)


def open_journal(data: Path) -> int:
    """The journal of an initialised data directory opened for checking (`redeem journal
    verify`), also when it is truncated; returns the acknowledged mark kept outside it."""
    Identity.load(data)
    try:
        open_database(data / "journal.db")
    except JournalFull as exc:
        raise DiskFull(str(exc)) from None
    except JournalUnavailable as exc:
        raise DataUnusable(str(exc)) from None
    return acknowledged_elsewhere(data)


def acknowledged_elsewhere(data: Path) -> int:
    """The central's acknowledged mark as kept beside the journal (ACKED_COPY, written by
    the sync client): it survives the journal being replaced by an older one. 0 when there
    is none or it is unreadable (the mark inside journal.db still counts)."""
    try:
        value = json.loads((data / ACKED_COPY).read_text()).get("acked_seq", 0)
    except (OSError, ValueError, AttributeError):
        return 0
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def keep_acknowledged_copy(data: Path, acked: int) -> None:
    """Write ACKED_COPY atomically (write, rename); a lost write only weakens the check."""
    path = data / ACKED_COPY
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"acked_seq": acked}))
    os.replace(tmp, path)
