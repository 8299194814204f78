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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peewee as pw

GENESIS_HASH = "0" * 64
RETENTION_S = 2 * 366 * 24 * 3600

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


def open_database(path: Path) -> pw.SqliteDatabase:
    path.parent.mkdir(parents=True, exist_ok=True)
    _check_writable(path.parent)
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

    def rollback_head(self, seq: int, digest: str) -> None:
        """Restore the head after a failed transaction."""
        self.head_seq, self.head_hash = seq, digest


@dataclass
class VerifyResult:
    ok: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str | None = None


def verify() -> VerifyResult:
    """Walk the chain; name the first entry that was edited, removed, inserted or moved."""
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


EXPORT_FIELDS = (*HASHED_FIELDS, "hash")  # what an export row (and an upload) carries


def rows(since_ms: int | None = None, until_ms: int | None = None) -> Iterator[dict[str, Any]]:
    query = Entry.select().order_by(Entry.seq)
    if since_ms is not None:
        query = query.where(Entry.at_ms >= since_ms)
    if until_ms is not None:
        query = query.where(Entry.at_ms < until_ms)
    for row in query.dicts().iterator():
        yield {k: row[k] for k in EXPORT_FIELDS}


def export(
    fmt: str, out: io.TextIOBase | Any, since_ms: int | None = None, until_ms: int | None = None
) -> int:
    n = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS)
        writer.writeheader()
        for row in rows(since_ms, until_ms):
            writer.writerow(row)
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
