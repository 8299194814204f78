"""Opening journal.db: refused when read-only or damaged, a full disk told apart from damage."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import peewee as pw

from coupons.journal.schema import database_proxy, migrate
from coupons.journal.wal import wal_problem

# An I/O error with less than this free in the data directory is a full disk, not damage.
FULL_BELOW_BYTES = 1 << 20


class JournalUnavailable(Exception):
    """The journal cannot record redemptions: its directory is not writable or its file is
    damaged. The terminal must not redeem on it (fail closed, with a sentence that says
    why, not a traceback)."""


class JournalFull(JournalUnavailable):
    """The journal cannot be opened because its file system is full: nothing is damaged,
    and the same start succeeds once space is freed (so it is worth retrying)."""


def open_database(path: Path) -> pw.SqliteDatabase:
    path.parent.mkdir(parents=True, exist_ok=True)
    _check_writable(path.parent)
    # Before SQLite's recovery reads the WAL: it would drop committed frames silently.
    problem = wal_problem(path.parent / (path.name + "-wal"))
    if problem:
        raise JournalUnavailable(problem)
    db = pw.SqliteDatabase(
        str(path),
        pragmas={"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 5000},
    )
    database_proxy.initialize(db)
    try:
        db.connect(reuse_if_open=True)
        _check_integrity(db)
        migrate(db)
    # OperationalError too (a subclass): unreadable is as bad as damaged. sqlite3's own
    # errors come from rows fetched outside peewee's wrapper.
    except (pw.DatabaseError, sqlite3.DatabaseError) as exc:
        db.close()
        free = _free_bytes(path.parent)
        if _is_full(exc, free):
            raise JournalFull(
                f"disk full: {path.parent} has {_size(free)} free, too little for the journal "
                f"to record ({exc}): not redeeming until space is freed there (nothing is "
                "damaged)"
            ) from None
        raise JournalUnavailable(
            f"{path} is damaged ({exc}): not redeeming on it; restore the data directory "
            "from a backup or re-enroll (the central holds every entry it received)"
        ) from None
    return db


def _check_writable(directory: Path) -> None:
    """SQLite would open a read-only journal and fail at the first write; say so first."""
    if os.statvfs(directory).f_flag & os.ST_RDONLY:
        raise JournalUnavailable(f"{directory}: Read-only file system: the journal cannot record")
    if not os.access(directory, os.W_OK):
        raise JournalUnavailable(f"{directory} is not writable: the journal cannot record")


def _free_bytes(directory: Path) -> int | None:
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _is_full(exc: Exception, free: int | None) -> bool:
    """SQLITE_FULL says so itself; creating the -shm or -wal on a full file system is an
    I/O error (SQLITE_IOERR_SHMSIZE, ...) that only the free space tells apart from damage."""
    text = str(exc)
    if "database or disk is full" in text:
        return True
    return "disk I/O error" in text and free is not None and free < FULL_BELOW_BYTES


def _size(n: int | None) -> str:
    if n is None:
        return "an unknown amount"
    if n < 1024:
        return f"{n} bytes"
    if n < 1 << 20:
        return f"{n / 1024:.0f} KiB"
    return f"{n / (1 << 20):.1f} MiB"


def _check_integrity(db: pw.SqliteDatabase) -> None:
    """SQLite's quick_check (structure of every page, not index contents): a page of garbage
    in the file is found before a coupon is decided on it, not at some later query. WAL
    frames a power cut tore were already dropped by recovery when the file was opened."""
    rows = db.execute_sql("PRAGMA quick_check").fetchall()
    if rows != [("ok",)]:
        raise pw.DatabaseError("; ".join(str(r[0]) for r in rows[:3]))
