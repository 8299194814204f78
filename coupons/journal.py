"""The tamper-evident journal: every attempt and state change, hash-chained, committed
durably (SQLite WAL, synchronous=FULL) before a decision is returned. Also the coupon-use
and idempotency tables that the engine keeps in the same transaction."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sqlite3
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peewee as pw

from coupons import csvsafe
from coupons.i18n import N_, translate

GENESIS_HASH = "0" * 64
RETENTION_S = 2 * 366 * 24 * 3600
# Where the newest coupon use's entry is looked for first (entries from the end).
RECENT_ENTRIES = 5000
# An I/O error with less than this free in the data directory is a full disk, not damage.
FULL_BELOW_BYTES = 1 << 20

database_proxy = pw.DatabaseProxy()


class _Base(pw.Model):
    class Meta:
        database = database_proxy


class Entry(_Base):
    seq = pw.IntegerField(primary_key=True)
    at_ms = pw.IntegerField()
    kind = pw.CharField()  # redeem, hold, commit, release, expire, reverse, flag, ledger
    op_id = pw.CharField(null=True)
    checkout_id = pw.CharField(null=True)
    accepted = pw.BooleanField()
    reason = pw.CharField()
    campaign = pw.CharField(null=True)
    serial = pw.CharField(null=True)
    customer = pw.CharField(null=True)
    discount_minor = pw.IntegerField(default=0)
    currency = pw.CharField(null=True)
    cashier = pw.CharField(null=True)
    source = pw.CharField(null=True)
    detail = pw.TextField(default="{}")
    prev_hash = pw.CharField()
    hash = pw.CharField()


class Use(_Base):
    """A coupon use that counts against limits: held for a checkout or committed."""

    id = pw.AutoField()
    serial = pw.CharField()
    campaign = pw.CharField()
    customer = pw.CharField(null=True)
    checkout_id = pw.CharField(index=True)
    status = pw.CharField()  # held, committed, released, expired, reversed
    counts = pw.BooleanField()  # still counts against uses and budget
    discount_minor = pw.IntegerField()
    value_minor = pw.IntegerField()
    currency = pw.CharField()
    expires_at = pw.FloatField(null=True)
    detail = pw.TextField(default="{}")


class Operation(_Base):
    """Idempotency: the first answer to an operation id is the answer forever."""

    op_id = pw.CharField(primary_key=True)
    request = pw.CharField()  # digest of what was asked: reusing an id for another request
    seq = pw.IntegerField()  # is a conflict, not a replay
    response = pw.TextField()


class Meta(_Base):
    key = pw.CharField(primary_key=True)
    value = pw.TextField()


class TagCounter(_Base):
    """The highest SUN read counter redeemed per tag and campaign: a URL with a counter at
    or below it was copied from an earlier tap. Written with the redemption it allowed."""

    campaign = pw.CharField()
    uid = pw.CharField()  # hex
    counter = pw.IntegerField()

    class Meta:
        primary_key = pw.CompositeKey("campaign", "uid")


class PosCheckout(_Base):
    """A checkout a till opened through the POS API, so that its basket (and the answer to
    the open request) outlive a restart; its coupons' holds are Use rows. Not part of the
    hash chain: the journal records every coupon decision on it."""

    id = pw.CharField(primary_key=True)
    till = pw.CharField()
    basket = pw.TextField()  # JSON, as Basket.from_dict reads it
    cashier = pw.CharField(null=True)
    state = pw.CharField()  # open, committed, released, reversed
    open_key = pw.CharField(unique=True)  # "<till>:<Idempotency-Key>" of the open request
    open_fingerprint = pw.CharField()
    opened_ms = pw.IntegerField(index=True)


MODELS = [Entry, Use, Operation, Meta, TagCounter, PosCheckout]
HASHED_FIELDS = (
    "seq",
    "at_ms",
    "kind",
    "op_id",
    "checkout_id",
    "accepted",
    "reason",
    "campaign",
    "serial",
    "customer",
    "discount_minor",
    "currency",
    "cashier",
    "source",
    "detail",
    "prev_hash",
)


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


# ---------------------------------------------------------------- the WAL before recovery

_WAL_MAGIC = (0x377F0682, 0x377F0683)  # low bit: checksums over big-endian words
_WAL_HEADER = 32
_FRAME_HEADER = 24
_SMALL_WAL_FRAMES = 64


def wal_problem(wal: Path) -> str | None:
    """A sentence when the WAL holds committed transactions after a damaged frame.

    SQLite's recovery replays frames up to the first one whose salts or cumulative checksum
    do not match and silently drops everything after it. At the tail that is right: a power
    cut tears the transaction being written, whose answer nobody saw (synchronous=FULL), and
    its frames may even reach the card out of order. But a bad frame followed by two or more
    valid commit frames of the same WAL generation means acknowledged redemptions would be
    lost, and their coupons could be redeemed again: refuse instead (fail closed).

    Each frame is checked on its own, from the checksum stored in the frame before it, so
    a frame after the damage is still recognised as valid. One read of the file (a few MB
    at most; checkpoints keep it near 4 MB)."""
    try:
        data = wal.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{wal} cannot be read ({exc}): not redeeming on a journal it may be part of"
    found = _wal_damage(data)
    if found is None:
        return None
    try:  # another process writing the WAL right now owns its index: no recovery happens
        if wal.read_bytes() != data:
            return None
    except OSError:
        return None
    bad, total, commits = found
    return (
        f"{wal} is damaged at frame {bad + 1} of {total}, and {commits} committed "
        "transactions after it would be silently dropped (SQLite stops at the first bad "
        "frame): not redeeming on it, as coupons they recorded could be redeemed again; keep "
        "a copy of the data directory, then restore it from a backup or re-enroll (the "
        "central holds every entry it received)"
    )


def _wal_damage(data: bytes) -> tuple[int, int, int] | None:
    """(first bad frame, frames, valid commit frames from it on) when two or more commits
    follow a bad frame (or a bad header); None otherwise, including a WAL SQLite ignores."""
    if len(data) < _WAL_HEADER:
        return None
    magic, _version, page_size = struct.unpack_from(">III", data, 0)
    if magic not in _WAL_MAGIC or page_size < 512 or page_size > 65536:
        return None
    if page_size & (page_size - 1):
        return None
    order = ">" if magic & 1 else "<"
    frame = _FRAME_HEADER + page_size
    n = (len(data) - _WAL_HEADER) // frame  # a partial frame at the end is never valid
    if n == 0:
        return None
    salts = data[16:24]
    head_ck = struct.unpack_from(">II", data, 24)
    header_ok = _checksum(order, data[:24], (0, 0)) == head_ck
    valid, commit, salted = _frames(data, order, n, page_size, head_ck, salts)
    if header_ok:
        bad = next((i for i in range(n) if not valid[i]), None)
        if bad is None:
            return None
        # The bad frame itself counts when its header (salts, commit size) survived.
        commits = sum(1 for i in range(bad + 1, n) if valid[i] and commit[i])
        commits += 1 if salted[bad] and commit[bad] else 0
    else:
        bad = -1
        commits = sum(1 for i in range(n) if valid[i] and commit[i])
    if commits < 2:
        return None
    return max(bad, 0), n, commits


def _checksum(order: str, chunk: bytes, start: tuple[int, int]) -> tuple[int, int]:
    """SQLite's WAL checksum (fileformat.html, 4.3) over chunk (a multiple of 8 bytes)."""
    s0, s1 = start
    words = struct.unpack(f"{order}{len(chunk) // 4}I", chunk)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def _frames(
    data: bytes, order: str, n: int, page_size: int, head_ck: tuple[int, int], salts: bytes
) -> tuple[list[bool], list[bool], list[bool]]:
    """Per frame: valid (salts match, checksum from the previous frame's stored one), commit
    frame (non-zero database size), salts match. All frames at once with numpy (the 1,000
    frames of a 4 MB WAL in ~7 ms); frame by frame in Python for a small WAL (~70 ms for
    4 MB on the same machine) or without numpy."""
    frame = _FRAME_HEADER + page_size
    try:
        if n <= _SMALL_WAL_FRAMES:  # not worth numpy's import (~0.1 s) at start-up
            raise ImportError
        import numpy as np
    except ImportError:
        valid, commit, salted = [], [], []
        prev = head_ck
        for i in range(n):
            at = _WAL_HEADER + i * frame
            head = data[at : at + _FRAME_HEADER]
            stored = struct.unpack_from(">II", head, 16)
            ck = _checksum(order, head[:8] + data[at + _FRAME_HEADER : at + frame], prev)
            salted.append(head[8:16] == salts)
            valid.append(salted[-1] and ck == stored)
            commit.append(struct.unpack_from(">I", head, 4)[0] != 0)
            prev = stored
        return valid, commit, salted
    raw = np.frombuffer(data, dtype=np.uint8, count=n * frame, offset=_WAL_HEADER)
    raw = raw.reshape(n, frame)
    be = raw[:, :_FRAME_HEADER].copy().view(">u4").astype(np.uint32)  # (n, 6) header words
    salted_a = (raw[:, 8:16] == np.frombuffer(salts, dtype=np.uint8)).all(axis=1)
    body = np.concatenate((raw[:, :8], raw[:, _FRAME_HEADER:]), axis=1)
    words = np.ascontiguousarray(body.view(order + "u4").astype(np.uint32).T)  # (m, n)
    s0 = np.concatenate(([head_ck[0]], be[:-1, 4])).astype(np.uint32)
    s1 = np.concatenate(([head_ck[1]], be[:-1, 5])).astype(np.uint32)
    for i in range(0, words.shape[0], 2):  # uint32 arithmetic wraps as SQLite's does
        s0 += words[i] + s1
        s1 += words[i + 1] + s0
    valid_a = salted_a & (s0 == be[:, 4]) & (s1 == be[:, 5])
    return valid_a.tolist(), (be[:, 1] != 0).tolist(), salted_a.tolist()


# ---------------------------------------------------------------- the head mark

# The newest committed entry (seq, hash), kept beside journal.db and written after each
# commit: a lost or damaged WAL, or an older journal.db put back, leaves the journal
# behind it, which nothing inside journal.db can show.
MARK_NAME = "journal.mark"
_MARK_MAGIC = "redeem-journal-mark-1"
_MARK_SLOT = 512  # two copies, each in its own sector: a torn write spoils one, not both
LOSS_ACCEPTED = "journal_loss_accepted"  # the flag a manager's decision is journaled as
BEHIND = N_(
    "The journal ends at entry {head} but this till had committed entry {mark}: {missing} "
    "entries are missing (journal.db-wal lost or an older journal.db put back). Do not "
    "redeem coupons on this till; see the runbook step 'Journal behind its mark'."
)
FORKED = N_(
    "The journal's entry {mark} is not the one this till committed (journal.db was replaced "
    "by another copy). Do not redeem coupons on this till; see the runbook step 'Journal "
    "behind its mark'."
)

# What `redeem journal accept-loss` says.
ACCEPT_NEEDS_CONFIRM = N_(
    "Nothing done: add --confirm. The missing entries stay lost, and the coupons they "
    "redeemed can be redeemed again on this till."
)
NOT_BEHIND = N_("Nothing done: the journal is not behind its mark.")
LOSS_ACCEPTED_SAID = N_(
    "Decision recorded as journal entry {seq} (manager {manager}); the till may redeem again."
)


@dataclass(frozen=True)
class Mark:
    seq: int
    hash: str


def mark_path(db: pw.Database | None = None) -> Path:
    """The mark file beside the open journal's database file."""
    db = db if db is not None else database_proxy.obj
    return Path(db.database).parent / MARK_NAME


def write_mark(path: Path, seq: int, digest: str) -> None:
    """Record (seq, digest) as committed: one small write, no fsync. Call only after the
    commit returned (synchronous=FULL: the WAL is on the card by then), so the mark can
    be behind the journal after a power cut, never ahead of it. The slot alternates with
    seq, so a write torn by a power cut leaves the other slot's (older) mark readable."""
    body = f"{_MARK_MAGIC} {seq} {digest}"
    line = f"{body} {zlib.crc32(body.encode()):08x}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, line, (seq % 2) * _MARK_SLOT)
    finally:
        os.close(fd)


def read_mark(path: Path) -> Mark | None:
    """The newest intact mark; None when there is none (a till that never committed since
    this check came in, or both copies torn, which only weakens the check)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    found: list[Mark] = []
    for at in (0, _MARK_SLOT):
        line = raw[at : at + _MARK_SLOT].split(b"\n", 1)[0]
        parts = line.decode("ascii", "replace").split(" ")
        if len(parts) != 4 or parts[0] != _MARK_MAGIC or not parts[1].isdigit():
            continue
        body = " ".join(parts[:3])
        if f"{zlib.crc32(body.encode()):08x}" == parts[3] and len(parts[2]) == 64:
            found.append(Mark(int(parts[1]), parts[2]))
    return max(found, key=lambda m: m.seq, default=None)


@dataclass(frozen=True)
class Behind:
    """The journal is behind the mark kept outside it: entries this till committed are
    gone (or journal.db is another copy). missing is None for another copy."""

    head: int
    mark: Mark
    missing: int | None

    def sentence(self, lang: str = "en") -> str:
        if self.missing is None:
            return translate(FORKED, lang).format(mark=self.mark.seq)
        return translate(BEHIND, lang).format(
            head=self.head, mark=self.mark.seq, missing=self.missing
        )


def behind_mark() -> Behind | None:
    """Compare the open journal with its mark: behind it (entries missing) or holding
    another entry under the mark's number (journal.db replaced). A mark behind the journal
    is normal after a power cut (it is written without fsync) and is no alarm. Two indexed
    reads: cheap enough for every start-up."""
    mark = read_mark(mark_path())
    if mark is None:
        return None
    seq, digest = _stored_head()
    if mark.seq > seq:
        return Behind(seq, mark, mark.seq - seq)
    if mark.seq == seq:
        same = digest == mark.hash
    else:
        row = Entry.select(Entry.hash).where(Entry.seq == mark.seq).first()
        if row is None:  # pruned (two years old and acknowledged): nothing to compare
            return None
        same = row.hash == mark.hash
    return None if same else Behind(seq, mark, None)


def accept_loss(manager: str, at_ms: int) -> tuple[Behind, int] | None:
    """A manager decides to go on with the journal as it is: journal the decision (a flag
    naming the mark, the head and the count missing), then move the mark to it. None when
    the journal is not behind its mark."""
    behind = behind_mark()
    if behind is None:
        return None
    db = database_proxy.obj
    with db.atomic():
        seq = Journal().append(
            at_ms=at_ms,
            kind="flag",
            accepted=True,
            reason=LOSS_ACCEPTED,
            source="manager",
            detail={
                "manager": manager,
                "journal_head": behind.head,
                "mark_seq": behind.mark.seq,
                "mark_hash": behind.mark.hash,
                "missing": behind.missing,
                "detail": behind.sentence(),
            },
        )
    head_seq, head_hash = _stored_head()
    _replace_mark(mark_path(), head_seq, head_hash)
    return behind, seq


def _replace_mark(path: Path, seq: int, digest: str) -> None:
    """A new mark file in place of the old one, durably (fsync, rename, fsync of the
    directory): once the decision is made, the old mark must not come back after a power
    cut. Rare (a manager's decision), so the fsyncs cost nothing that matters."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    write_mark(tmp, seq, digest)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_integrity(db: pw.SqliteDatabase) -> None:
    """SQLite's quick_check (structure of every page, not index contents): a page of garbage
    in the file is found before a coupon is decided on it, not at some later query. WAL
    frames a power cut tore were already dropped by recovery when the file was opened."""
    rows = db.execute_sql("PRAGMA quick_check").fetchall()
    if rows != [("ok",)]:
        raise pw.DatabaseError("; ".join(str(r[0]) for r in rows[:3]))


# Numbered schema changes after version 1 (a new database gets MODELS at once; these
# bring an older one up to them). 2: TagCounter. 3: PosCheckout.
MIGRATIONS: list[list[str]] = [
    [
        'CREATE TABLE IF NOT EXISTS "tagcounter" ("campaign" VARCHAR(255) NOT NULL, '
        '"uid" VARCHAR(255) NOT NULL, "counter" INTEGER NOT NULL, PRIMARY KEY ("campaign", "uid"))'
    ],
    [
        'CREATE TABLE IF NOT EXISTS "poscheckout" ("id" VARCHAR(255) NOT NULL PRIMARY KEY, '
        '"till" VARCHAR(255) NOT NULL, "basket" TEXT NOT NULL, "cashier" VARCHAR(255), '
        '"state" VARCHAR(255) NOT NULL, "open_key" VARCHAR(255) NOT NULL, '
        '"open_fingerprint" VARCHAR(255) NOT NULL, "opened_ms" INTEGER NOT NULL)',
        'CREATE UNIQUE INDEX IF NOT EXISTS "poscheckout_open_key" ON "poscheckout" ("open_key")',
        'CREATE INDEX IF NOT EXISTS "poscheckout_opened_ms" ON "poscheckout" ("opened_ms")',
    ],
]


def migrate(db: pw.SqliteDatabase) -> None:
    version = db.execute_sql("PRAGMA user_version").fetchone()[0]
    if version == 0:
        with db.atomic():
            db.create_tables(MODELS)
            db.execute_sql("PRAGMA user_version = 1")
        version = 1
    for number, statements in enumerate(MIGRATIONS, start=2):
        if version < number:
            with db.atomic():
                for sql in statements:
                    db.execute_sql(sql)
                db.execute_sql(f"PRAGMA user_version = {number}")


# The exact encoders json.dumps would build for these arguments, built once: the entry hash
# and the stored detail must stay byte-for-byte what they were (existing journals verify).
_canon_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_detail_json = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def entry_hash(fields: dict[str, Any]) -> str:
    canon = _canon_json([fields[k] for k in HASHED_FIELDS])
    return hashlib.sha256(canon.encode()).hexdigest()


def get_meta(key: str, default: str | None = None) -> str | None:
    row = Meta.get_or_none(Meta.key == key)
    return row.value if row else default


def set_meta(key: str, value: str) -> None:
    Meta.insert(key=key, value=value).on_conflict_replace().execute()


def tag_counter(campaign: str, uid: bytes) -> int | None:
    """The highest SUN read counter redeemed for this tag in this campaign, if any."""
    row = TagCounter.get_or_none((TagCounter.campaign == campaign) & (TagCounter.uid == uid.hex()))
    return None if row is None else int(row.counter)


def raise_tag_counter(campaign: str, uid: bytes, counter: int) -> None:
    """Record a redeemed SUN read counter (never lowers the mark). Call inside the
    redemption's transaction."""
    TagCounter.insert(campaign=campaign, uid=uid.hex(), counter=counter).on_conflict(
        conflict_target=[TagCounter.campaign, TagCounter.uid],
        update={TagCounter.counter: pw.fn.MAX(TagCounter.counter, pw.EXCLUDED.counter)},
    ).execute()


def _insert_sql(model: type[_Base], columns: tuple[str, ...]) -> str:
    meta = model._meta
    names = ", ".join(f'"{meta.fields[c].column_name}"' for c in columns)
    marks = ", ".join("?" * len(columns))
    # Names come from the model's own metadata, never from input.
    return f'INSERT INTO "{meta.table_name}" ({names}) VALUES ({marks})'  # noqa: S608


_ENTRY_SQL = _insert_sql(Entry, (*HASHED_FIELDS, "hash"))
_USE_SQL = _insert_sql(
    Use,
    (
        "serial",
        "campaign",
        "customer",
        "checkout_id",
        "status",
        "counts",
        "discount_minor",
        "value_minor",
        "currency",
        "expires_at",
        "detail",
    ),
)
_OPERATION_SQL = _insert_sql(Operation, ("op_id", "request", "seq", "response"))
_ENTRY_KEYS = frozenset(Entry._meta.fields)
# Rows written straight through the connection raise what peewee's execute_sql would.
_db_errors: pw.ExceptionWrapper = pw.__dict__["__exception_wrapper__"]


def insert_use(
    serial: str,
    campaign: str,
    customer: str | None,
    checkout_id: str,
    status: str,
    counts: bool,
    discount_minor: int,
    value_minor: int,
    currency: str,
    expires_at: float | None,
    detail: str,
) -> int:
    """Use.create(...) for a new coupon use: the same row (every column given, converted as
    the fields would: int, bool, float, str), written straight through the connection.
    Returns the new id."""
    with _db_errors:
        cursor = database_proxy.obj.connection().execute(
            _USE_SQL,
            (
                serial,
                campaign,
                customer,
                checkout_id,
                status,
                bool(counts),
                int(discount_minor),
                int(value_minor),
                currency,
                None if expires_at is None else float(expires_at),
                detail,
            ),
        )
    return int(cursor.lastrowid)


def insert_operation(op_id: str, request: str, seq: int, response: str) -> None:
    """Operation.insert(...).execute(), straight through the connection."""
    with _db_errors:
        database_proxy.obj.connection().execute(
            _OPERATION_SQL, (op_id, request, int(seq), response)
        )


class Journal:
    """Appends hash-chained entries. Call inside a transaction owned by the one writer."""

    def __init__(self) -> None:
        last = Entry.select().order_by(Entry.seq.desc()).first()
        if last is not None:
            self.head_seq, self.head_hash = last.seq, last.hash
        else:
            self.head_seq = int(get_meta("pruned_seq", "0") or 0)
            self.head_hash = get_meta("pruned_hash", GENESIS_HASH) or GENESIS_HASH
        # The latest time any entry was stamped with since a manager last reset clock trust:
        # entries a wrong clock stamped earlier must not lower it (one scan at start-up).
        since = int(get_meta("clock_reset_seq", "0") or 0)
        latest = Entry.select(pw.fn.MAX(Entry.at_ms)).where(Entry.seq >= since).scalar()
        self.last_at_ms = int(latest or 0)

    def append(self, **fields: Any) -> int:
        """Journal one entry; fields are Entry's (seq, prev_hash and hash are the chain's
        own, whatever is passed). Returns its seq."""
        unknown = fields.keys() - _ENTRY_KEYS
        if unknown:
            raise KeyError(sorted(unknown)[0])
        return self.write(
            fields["at_ms"],
            fields.get("kind"),
            fields.get("op_id"),
            fields.get("checkout_id"),
            fields.get("accepted"),
            fields.get("reason"),
            fields.get("campaign"),
            fields.get("serial"),
            fields.get("customer"),
            fields.get("discount_minor"),
            fields.get("currency"),
            fields.get("cashier"),
            fields.get("source"),
            fields.get("detail"),
        )

    def write(
        self,
        at_ms: int,
        kind: str | None,
        op_id: str | None,
        checkout_id: str | None,
        accepted: bool | None,
        reason: str | None,
        campaign: str | None,
        serial: str | None,
        customer: str | None,
        discount_minor: int | None,
        currency: str | None,
        cashier: str | None,
        source: str | None,
        detail: dict[str, Any] | None,
    ) -> int:
        """append() with the fields in HASHED_FIELDS order: one list serves as the hashed
        values and, with the hash, as the row written through the connection."""
        seq: int = self.head_seq + 1
        at_ms = int(at_ms)
        values: list[Any] = [
            seq,
            at_ms,
            kind,
            op_id,
            checkout_id,
            bool(accepted),
            reason,
            campaign,
            serial,
            customer,
            discount_minor or 0,
            currency,
            cashier,
            source,
            _detail_json(detail or {}),
            self.head_hash,
        ]
        digest = hashlib.sha256(_canon_json(values).encode()).hexdigest()
        values.append(digest)
        with _db_errors:
            database_proxy.obj.connection().execute(_ENTRY_SQL, values)
        self.head_seq, self.head_hash = seq, digest
        if at_ms > self.last_at_ms:
            self.last_at_ms = at_ms
        return seq


@dataclass
class VerifyResult:
    ok: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str | None = None
    missing: int | None = None  # entries committed that the journal no longer holds


def verify(acknowledged: int = 0, lang: str = "en") -> VerifyResult:
    """Walk the chain; name the first entry that was edited, removed, inserted or moved.
    Then the end: entries deleted from the end leave a chain that links up, so it is held
    against what is known to have been written: the head mark kept beside journal.db, the
    central's acknowledged mark (`acknowledged` adds one kept outside this file), every
    operation id answered and every coupon use that counts."""
    with database_proxy.obj.atomic():  # one snapshot, also beside a writing daemon
        result = _walk()
        if not result.ok:
            return result
        problem = tail_problem(acknowledged) or _answered_problem() or _uses_problem()
        # After those, which name their own evidence; this one counts what is missing.
        behind = None if problem else behind_mark()
        if behind is not None:
            first = behind.head + 1 if behind.missing else behind.mark.seq
            return VerifyResult(False, result.entries, first, behind.sentence(lang), behind.missing)
    if problem:
        return VerifyResult(False, result.entries, problem[0], problem[1])
    return result


def _walk() -> VerifyResult:
    expect_seq = int(get_meta("pruned_seq", "0") or 0) + 1
    prev = get_meta("pruned_hash", GENESIS_HASH) or GENESIS_HASH
    count = 0
    for row in Entry.select().order_by(Entry.seq).dicts().iterator():
        count += 1
        if row["seq"] != expect_seq:
            return VerifyResult(
                False,
                count,
                expect_seq,
                f"entry {expect_seq} is missing (next stored is {row['seq']})",
            )
        if row["prev_hash"] != prev:
            return VerifyResult(
                False,
                count,
                row["seq"],
                f"entry {row['seq']} does not follow entry {row['seq'] - 1}",
            )
        if entry_hash(row) != row["hash"]:
            return VerifyResult(False, count, row["seq"], f"entry {row['seq']} was altered")
        prev = row["hash"]
        expect_seq += 1
    return VerifyResult(True, count)


def _stored_head() -> tuple[int, str]:
    last = Entry.select(Entry.seq, Entry.hash).order_by(Entry.seq.desc()).first()
    if last is not None:
        return int(last.seq), str(last.hash)
    pruned = int(get_meta("pruned_seq", "0") or 0)
    return pruned, get_meta("pruned_hash", GENESIS_HASH) or GENESIS_HASH


def tail_problem(acknowledged: int = 0) -> tuple[int, str] | None:
    """(first missing seq, sentence) when the chain ends before an entry it is known to have
    had: the central acknowledged more (the larger of the mark in Meta and `acknowledged`),
    the newest operation id was answered with a later entry, or the newest coupon use has
    no entry (it is written with its accepted entry, in one transaction). A few indexed
    reads: cheap enough for every start-up. No head record is kept beside the entries:
    writing one with each entry adds a page to every redemption's commit, the hot path
    that already misses its goal (bench/durable.py)."""
    seq, _ = _stored_head()
    acked = max(int(get_meta("acked_seq", "0") or 0), acknowledged)
    if acked > seq:
        return seq + 1, (
            f"entries after {seq} are missing (the central acknowledged entries up to {acked})"
        )
    db = database_proxy.obj
    op = db.execute_sql(
        f'SELECT "op_id", "seq" FROM "{Operation._meta.table_name}" ORDER BY rowid DESC LIMIT 1'  # noqa: S608
    ).fetchone()
    if op is not None and op[1] > seq:
        return seq + 1, (
            f"entries after {seq} are missing (operation {op[0]} was answered with entry {op[1]})"
        )
    use = db.execute_sql(
        f'SELECT "serial", "checkout_id", "status" FROM "{Use._meta.table_name}" '  # noqa: S608
        'ORDER BY "id" DESC LIMIT 1'
    ).fetchone()
    if use is None or _entry_of_use(use[0], use[1], seq - RECENT_ENTRIES):
        return None
    if _entry_of_use(use[0], use[1], None):
        return None
    pruned = int(get_meta("pruned_seq", "0") or 0) > 0
    if pruned and not Entry.select().where(Entry.accepted & Entry.serial.is_null(False)).exists():
        return None  # every redemption's entry is older than two years and was pruned
    return seq + 1, (
        f"entries after {seq} are missing (the {use[2]} use of coupon {use[0]} in checkout "
        f"{use[1]} has no entry)"
    )


def _entry_of_use(serial: str, checkout_id: str, after_seq: int | None) -> bool:
    """Is there an accepted entry that made this use (after after_seq, or anywhere)?"""
    which = (Entry.checkout_id == checkout_id) & (Entry.serial == serial) & Entry.accepted
    if after_seq is not None:
        which &= Entry.seq > after_seq
    return bool(Entry.select(Entry.seq).where(which).exists())


def _answered_problem() -> tuple[int, str] | None:
    """An operation id answered with an entry past the end of the chain."""
    seq, _ = _stored_head()
    row = (
        Operation.select(Operation.op_id, Operation.seq)
        .where(Operation.seq > seq)
        .order_by(Operation.seq.desc())
        .first()
    )
    if row is None:
        return None
    return seq + 1, (
        f"entries after {seq} are missing (operation {row.op_id} was answered with entry {row.seq})"
    )


def _uses_problem() -> tuple[int, str] | None:
    """A held or committed coupon use (it counts against limits) without the accepted entry
    that made it. Once entries were pruned, uses older than the oldest kept entry may have
    lost theirs legitimately: only a use newer than one whose entry is there is a problem."""
    seq, _ = _stored_head()
    use, entry = Use._meta.table_name, Entry._meta.table_name
    # Names from the models' metadata, never from input. The join, not a correlated
    # EXISTS: entry has no index on checkout_id, SQLite builds one for the join.
    uses = database_proxy.obj.execute_sql(
        f'SELECT u."serial", u."checkout_id", u."status", e."serial" IS NOT NULL '  # noqa: S608
        f'FROM "{use}" u LEFT JOIN (SELECT DISTINCT "checkout_id", "serial" FROM "{entry}" '
        'WHERE "accepted" AND "serial" IS NOT NULL) e '
        'ON e."checkout_id" = u."checkout_id" AND e."serial" = u."serial" ORDER BY u."id"'
    )
    pruned = int(get_meta("pruned_seq", "0") or 0) > 0
    seen_present = not pruned
    for serial, checkout, status, present in uses:
        if present:
            seen_present = True
        elif seen_present and status in ("held", "committed"):
            return seq + 1, (
                f"the {status} use of coupon {serial} (checkout {checkout}) has no journal "
                f"entry: entries after {seq} are missing, or the use was added outside the "
                "journal"
            )
    return None


EXPORT_FIELDS = (*HASHED_FIELDS, "hash")  # what an export row (and an upload) carries


def rows(since_ms: int | None = None, until_ms: int | None = None) -> Iterator[dict[str, Any]]:
    query = Entry.select().order_by(Entry.seq)
    if since_ms is not None:
        query = query.where(Entry.at_ms >= since_ms)
    if until_ms is not None:
        query = query.where(Entry.at_ms < until_ms)
    for row in query.dicts().iterator():
        yield {k: row[k] for k in EXPORT_FIELDS}


CSV_FIELDS = tuple("at" if k == "at_ms" else k for k in EXPORT_FIELDS)


def export(
    fmt: str, out: io.TextIOBase | Any, since_ms: int | None = None, until_ms: int | None = None
) -> int:
    n = 0
    if fmt == "csv":
        # For spreadsheets: `at` (ISO 8601 with offset) instead of at_ms, formulas
        # neutralised (coupons/csvsafe.py); JSON lines stay the machine format.
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows(since_ms, until_ms):
            row["at"] = csvsafe.iso_time(row.pop("at_ms"))
            writer.writerow({k: csvsafe.cell(row[k]) for k in CSV_FIELDS})
            n += 1
    else:
        for row in rows(since_ms, until_ms):
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def prune(now_s: float) -> int:
    """Drop entries older than the retention period that the central has acknowledged."""
    acked = int(get_meta("acked_seq", "0") or 0)
    cutoff_ms = int((now_s - RETENTION_S) * 1000)
    # Only the leading run of old entries: one stamped by a wrong clock (a Pi booting at 1970)
    # must not carry younger entries before it away.
    young = Entry.select(pw.fn.MIN(Entry.seq)).where(Entry.at_ms >= cutoff_ms).scalar()
    bound = acked if young is None else min(acked, young - 1)
    last = (
        Entry.select()
        .where((Entry.seq <= bound) & (Entry.at_ms < cutoff_ms))
        .order_by(Entry.seq.desc())
        .first()
    )
    if last is None:
        return 0
    db = database_proxy.obj
    with db.atomic():
        set_meta("pruned_seq", str(last.seq))
        set_meta("pruned_hash", last.hash)
        return int(Entry.delete().where(Entry.seq <= last.seq).execute())
