"""The tamper-evident journal: every attempt and state change, hash-chained, committed
durably (SQLite WAL, synchronous=FULL) before a decision is returned. Also the coupon-use
and idempotency tables that the engine keeps in the same transaction."""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
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


MODELS = [Entry, Use, Operation, Meta]
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


def open_database(path: Path) -> pw.SqliteDatabase:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = pw.SqliteDatabase(
        str(path),
        pragmas={"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 5000},
    )
    database_proxy.initialize(db)
    db.connect(reuse_if_open=True)
    migrate(db)
    return db


MIGRATIONS: list[list[str]] = []  # numbered schema changes after version 1 go here


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


def entry_hash(fields: dict[str, Any]) -> str:
    canon = json.dumps(
        [fields[k] for k in HASHED_FIELDS], separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canon.encode()).hexdigest()


def get_meta(key: str, default: str | None = None) -> str | None:
    row = Meta.get_or_none(Meta.key == key)
    return row.value if row else default


def set_meta(key: str, value: str) -> None:
    Meta.insert(key=key, value=value).on_conflict_replace().execute()


@functools.lru_cache(maxsize=64)
def _insert_sql(model: type[_Base], columns: tuple[str, ...]) -> str:
    meta = model._meta
    names = ", ".join(f'"{meta.fields[c].column_name}"' for c in columns)
    marks = ", ".join("?" * len(columns))
    # Names come from the model's own metadata, never from input.
    return f'INSERT INTO "{meta.table_name}" ({names}) VALUES ({marks})'  # noqa: S608


def insert_row(model: type[_Base], row: dict[str, Any]) -> int:
    """model.insert(**row).execute() without building the query each time: on the
    redemption path peewee's query builder cost more than SQLite's own work for the row.
    Values go through each field's db_value exactly as peewee converts them, and
    execute_sql wraps errors the same way. Returns the new rowid."""
    fields = model._meta.fields
    params = [fields[c].db_value(v) for c, v in row.items()]
    cursor = model._meta.database.execute_sql(_insert_sql(model, tuple(row)), params)
    return int(cursor.lastrowid)


def add_use(**values: Any) -> Use:
    """Use.create(**values): the same row and the same saved instance (defaults filled
    in, id set, nothing left dirty), through insert_row."""
    use = Use(**values)
    row = dict(use.__data__)
    if row.get("id", 0) is None:  # as Model.save: an unset auto id is left to SQLite
        del row["id"]
    use.id = insert_row(Use, row)
    use._dirty.clear()  # type: ignore[attr-defined]  # peewee keeps no public setter
    return use


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
        fields.setdefault("op_id", None)
        for key in HASHED_FIELDS:
            fields.setdefault(key, None)
        fields["seq"] = self.head_seq + 1
        fields["at_ms"] = int(fields["at_ms"])
        fields["prev_hash"] = self.head_hash
        fields["detail"] = json.dumps(
            fields.get("detail") or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        fields["discount_minor"] = fields.get("discount_minor") or 0
        fields["accepted"] = bool(fields["accepted"])
        digest = entry_hash(fields)
        insert_row(Entry, {**fields, "hash": digest})
        self.head_seq, self.head_hash = fields["seq"], digest
        self.last_at_ms = max(self.last_at_ms, fields["at_ms"])
        return int(fields["seq"])

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


EXPORT_FIELDS = (
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
    "hash",
)


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
