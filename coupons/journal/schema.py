"""The journal database's tables (peewee models, bound at start-up) and numbered migrations."""

from __future__ import annotations

import peewee as pw

database_proxy = pw.DatabaseProxy()


class _Base(pw.Model):
    class Meta:
        database = database_proxy


class Entry(_Base):
    seq = pw.IntegerField(primary_key=True)
    at_ms = pw.IntegerField()
    kind = pw.CharField()  # redeem, hold, commit, release, expire, reverse, flag, ledger, peer
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


def columns(model: type[_Base], names: tuple[str, ...]) -> str:
    """These fields of model as a quoted SQL column list."""
    return ", ".join(f'"{model._meta.fields[c].column_name}"' for c in names)


def insert_sql(model: type[_Base], fields: tuple[str, ...]) -> str:
    """The INSERT of these columns of model, for rows written straight through the connection."""
    meta = model._meta
    names = columns(model, fields)
    marks = ", ".join("?" * len(fields))
    # Names come from the model's own metadata, never from input.
    return f'INSERT INTO "{meta.table_name}" ({names}) VALUES ({marks})'  # noqa: S608


# Rows written straight through the connection raise what peewee's execute_sql would.
db_errors: pw.ExceptionWrapper = pw.__dict__["__exception_wrapper__"]
