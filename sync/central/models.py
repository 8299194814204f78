"""The central's tables (peewee models bound to one proxy) and opening its database:
SQLite in the data directory by default, PostgreSQL when a URL is given."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import peewee as pw
from playhouse.db_url import parse as parse_db_url
from playhouse.migrate import SchemaMigrator, migrate
from playhouse.pool import PooledPostgresqlDatabase

db_proxy = pw.DatabaseProxy()
SCHEMA_LOCK = 0x45445246  # PostgreSQL advisory lock id for schema changes
# 1: keys, campaigns, coupons, marks, versions; 2: sync tables; 3: KeyRow.sealed (private
# keys in the database, sealed under the master key: sync/central/keyvault.py) and the
# campaign numbers of numbered serials (CampaignRow.number, .issued); 4: console users, the
# audit log (append-only, guarded by triggers) and roles of admin tokens
SCHEMA_VERSION = 4


class _M(pw.Model):
    class Meta:
        database = db_proxy


# ---------------------------------------------------------------- ledger (schema 1)


class KeyRow(_M):
    kid = pw.CharField(primary_key=True)
    purpose = pw.CharField()
    cert = pw.BlobField()
    created = pw.IntegerField()
    active = pw.BooleanField(default=True)  # the key new signatures use
    revoked = pw.BooleanField(default=False)
    published_in = pw.IntegerField(null=True)
    # The private key's seed sealed under the master key (schema 3). NULL for a root key
    # kept off the central, and for keys of an older data directory not yet imported from
    # its keys/ files.
    sealed = pw.BlobField(null=True)


class CampaignRow(_M):
    id = pw.CharField(primary_key=True)
    doc = pw.TextField()
    published_doc = pw.TextField(null=True)
    removed = pw.BooleanField(default=False)
    # Numbered serials (docs/central-scale.md): the high 32 bits of the campaign's
    # serials, and the last count issued, their low 32 bits (schema 3).
    number = pw.BigIntegerField(null=True, unique=True)
    issued = pw.BigIntegerField(default=0)
    # The lifecycle head office sees (sync/central/campaigns.py): active, paused, ended or
    # archived. What tills act on is the document (`paused`, `valid_until`); this says why.
    status = pw.CharField(default="active")
    ended_at = pw.BigIntegerField(null=True)  # when `campaign end` ended it


class CouponRow(_M):
    serial = pw.BigIntegerField(primary_key=True)  # stored signed; see db_serial
    campaign = pw.CharField(index=True)
    issued_at = pw.IntegerField()
    code_hash = pw.BlobField(null=True)
    customer = pw.CharField(null=True)
    published_in = pw.IntegerField(null=True)  # for typed codes: the version that listed it


class SerialMark(_M):
    """A serial every terminal must refuse (revoked, redeemed somewhere already), or one
    that is usable again after a refund (unredeemed)."""

    serial = pw.BigIntegerField()
    kind = pw.CharField()  # revoked | redeemed | unredeemed
    published_in = pw.IntegerField(null=True, index=True)

    class Meta:
        primary_key = pw.CompositeKey("serial", "kind")


class VersionRow(_M):
    version = pw.IntegerField(primary_key=True)
    chain = pw.BlobField()
    issued_at = pw.IntegerField()
    signed = pw.BlobField()  # the signed delta


class Setting(_M):
    key = pw.CharField(primary_key=True)
    value = pw.TextField()


class SunKeyRow(_M):
    """A campaign's NTAG 424 DNA SDM key (AES-128), sent to terminals in the ledger."""

    campaign = pw.CharField(primary_key=True)
    key = pw.BlobField()
    published_in = pw.IntegerField(null=True)


# ---------------------------------------------------------------- sync (schema 2)


class SnapshotRow(_M):
    """The signed snapshot of a version, made once: every instance serves the same bytes,
    so a download resumed with a Range request elsewhere still fits together."""

    version = pw.IntegerField(primary_key=True)
    signed = pw.BlobField()


class DenyRow(_M):
    kind = pw.CharField()  # tag (hex UID) | customer (reference)
    value = pw.TextField()
    published_in = pw.IntegerField(null=True, index=True)

    class Meta:
        primary_key = pw.CompositeKey("kind", "value")


class EnrollCode(_M):
    code_hash = pw.CharField(primary_key=True)  # SHA-256 of the normalised code
    store = pw.CharField()
    created_at = pw.BigIntegerField()
    expires_at = pw.BigIntegerField()
    used_at = pw.BigIntegerField(null=True)
    terminal = pw.CharField(null=True)


class TerminalRow(_M):
    id = pw.CharField(primary_key=True)
    store = pw.CharField(index=True)
    public_key = pw.CharField()  # hex Ed25519
    enrolled_at = pw.BigIntegerField()
    revoked = pw.BooleanField(default=False)
    revoked_at = pw.BigIntegerField(null=True)
    acked_seq = pw.BigIntegerField(default=0)  # journal high-water mark
    head_hash = pw.CharField()  # hash of the entry at acked_seq
    last_seen = pw.BigIntegerField(null=True)  # last signed request
    last_upload = pw.BigIntegerField(null=True)  # last journal batch that stored entries
    ledger_version = pw.IntegerField(null=True)  # the version it said it holds
    # What the till last reported of itself (sync/till_status.py); NULL: never reported
    # (a till from before the report, or one that cannot tell).
    journal_head = pw.BigIntegerField(null=True)  # its last entry's seq: backlog = head - acked
    clock_ms = pw.BigIntegerField(null=True)  # its clock minus the central's
    health = pw.CharField(null=True)  # ok | stopped | degraded | down
    unwell = pw.CharField(null=True)  # the inputs not ok, comma-separated
    app_version = pw.CharField(null=True)
    status_at = pw.BigIntegerField(null=True)  # when that report was stored
    status_ignored = pw.IntegerField(default=0)  # reports refused as malformed or forged


class JournalRow(_M):
    """A terminal's journal entry exactly as uploaded (and verified)."""

    terminal = pw.CharField()
    seq = pw.BigIntegerField()
    at_ms = pw.BigIntegerField()
    kind = pw.TextField()
    op_id = pw.TextField(null=True)
    checkout_id = pw.TextField(null=True)
    accepted = pw.BooleanField()
    reason = pw.TextField()
    campaign = pw.TextField(null=True)
    serial = pw.TextField(null=True)
    customer = pw.TextField(null=True)
    discount_minor = pw.BigIntegerField()
    currency = pw.TextField(null=True)
    cashier = pw.TextField(null=True)
    source = pw.TextField(null=True)
    detail = pw.TextField()
    prev_hash = pw.TextField()
    hash = pw.TextField()

    class Meta:
        primary_key = pw.CompositeKey("terminal", "seq")
        indexes = ((("terminal", "checkout_id"), False),)


class Redemption(_M):
    """A coupon use the central counts: an accepted redeem or commit with a serial."""

    terminal = pw.CharField()
    seq = pw.BigIntegerField()
    store = pw.CharField(index=True)
    campaign = pw.TextField(index=True)
    serial = pw.BigIntegerField(index=True)  # stored signed; see db_serial
    checkout_id = pw.TextField(null=True)
    customer = pw.TextField(null=True)
    tag = pw.TextField(null=True)
    discount_minor = pw.BigIntegerField()
    value_minor = pw.BigIntegerField()  # discount plus gift value: what budgets count
    currency = pw.TextField(null=True)
    at_ms = pw.BigIntegerField()
    reversed_seq = pw.BigIntegerField(null=True)
    counts = pw.BooleanField(default=True)  # false once a refund made it reusable

    class Meta:
        primary_key = pw.CompositeKey("terminal", "seq")


class SerialUse(_M):
    serial = pw.BigIntegerField(primary_key=True)
    count = pw.IntegerField()


class CustomerUse(_M):
    campaign = pw.TextField()
    customer = pw.TextField()
    count = pw.IntegerField()

    class Meta:
        primary_key = pw.CompositeKey("campaign", "customer")


class PublishedCustomerUse(_M):
    """The per-customer use count (CustomerUse) a ledger version last carried, for
    campaigns with a per-customer limit: a count that differs goes into the next version."""

    campaign = pw.TextField()
    customer = pw.TextField()
    count = pw.IntegerField()
    published_in = pw.IntegerField()

    class Meta:
        primary_key = pw.CompositeKey("campaign", "customer")


class CampaignUsage(_M):
    """Uses counted across all terminals; the ledger's `usage` map carries them."""

    campaign = pw.TextField(primary_key=True)
    count = pw.BigIntegerField(default=0)
    minor = pw.BigIntegerField(default=0)
    pub_count = pw.BigIntegerField(default=0)
    pub_minor = pw.BigIntegerField(default=0)
    published_in = pw.IntegerField(null=True)


class TerminalUsage(_M):
    terminal = pw.CharField()
    campaign = pw.TextField()
    count = pw.BigIntegerField(default=0)
    minor = pw.BigIntegerField(default=0)

    class Meta:
        primary_key = pw.CompositeKey("terminal", "campaign")


class FlagRow(_M):
    id = pw.AutoField()
    key = pw.CharField(unique=True)  # SHA-256 of what makes it the same flag when seen again
    kind = pw.TextField(index=True)
    store = pw.CharField(null=True, index=True)
    terminal = pw.CharField(null=True)
    seq = pw.BigIntegerField(null=True)
    campaign = pw.TextField(null=True)
    serial = pw.TextField(null=True)
    customer = pw.TextField(null=True)
    tag = pw.TextField(null=True)
    detail = pw.TextField(default="{}")
    source = pw.CharField()  # terminal (a journal flag entry) | central (reconciliation)
    status = pw.CharField(default="open", index=True)
    note = pw.TextField(null=True)
    created_at = pw.BigIntegerField()
    updated_at = pw.BigIntegerField()


class FlagUpdate(_M):
    """A decision on a flag, in the order terminals read them (GET /v1/flags?since=)."""

    id = pw.AutoField()
    flag = pw.IntegerField(index=True)
    store = pw.CharField(null=True, index=True)
    status = pw.CharField()
    note = pw.TextField(null=True)
    at = pw.BigIntegerField()


class AdminToken(_M):
    token_hash = pw.CharField(primary_key=True)
    label = pw.CharField(null=True)
    created_at = pw.BigIntegerField()
    # Schema 4: what the token may do (sync/central/users.py PERMISSIONS); tokens made
    # before roles existed could do everything, so they became admin.
    role = pw.CharField(default="admin")
    revoked = pw.BooleanField(default=False)


# ---------------------------------------------------------------- users and audit (schema 4)


class UserRow(_M):
    """A console user. The password is kept only as an argon2id hash."""

    id = pw.AutoField()
    name = pw.CharField(unique=True)
    role = pw.CharField()
    password_hash = pw.TextField()
    disabled = pw.BooleanField(default=False)
    failed_logins = pw.IntegerField(default=0)  # since the last good one
    locked_until = pw.BigIntegerField(null=True)  # epoch seconds
    created_at = pw.BigIntegerField()
    # Console sessions carry the epoch they began in; logging out, a password reset or
    # disabling the user moves it on, which ends every session of the user at once.
    session_epoch = pw.IntegerField(default=0)


class AuditRow(_M):
    """One change, as who made it saw it. Append-only: the code has no update or delete,
    and triggers refuse both (append_only_guard)."""

    id = pw.AutoField()
    at = pw.BigIntegerField(index=True)  # epoch seconds, from Central.now
    actor = pw.CharField()  # user name, "token:LABEL" or "cli:OS_USER"
    action = pw.CharField(index=True)  # e.g. flag.decide, user.add, campaign.add
    target = pw.TextField()
    before = pw.TextField(null=True)  # JSON
    after = pw.TextField(null=True)  # JSON


class IssueJob(_M):
    """An issuance job (sync/central/issuing.py): coupons issued chunk by chunk, each chunk's
    rows and `done_count` committed together, so a job that stops resumes where it was."""

    id = pw.AutoField()
    campaign = pw.CharField(index=True)
    count = pw.IntegerField()
    kind = pw.CharField()  # token | code
    state = pw.CharField(default="queued")  # queued | running | done | failed
    done_count = pw.IntegerField(default=0)
    chunk = pw.IntegerField()  # coupons per chunk, fixed for the job: its parts line up
    not_before = pw.BigIntegerField()  # fixed at creation: a resumed chunk signs the same
    expires = pw.BigIntegerField()
    pdf = pw.BooleanField(default=False)
    out_dir = pw.TextField()
    error = pw.TextField(null=True)
    created_by = pw.CharField()
    created_at = pw.BigIntegerField()
    finished_at = pw.BigIntegerField(null=True)


# ---------------------------------------------------------------- store scopes


class ScopeRow(_M):
    """A store's ledger: its own hash chain (docs/central-scale.md). `base` is the
    chain-wide version it has caught up with; `campaigns` the ids it last published (JSON);
    `meta` a hash of the keys, policy and salt it last carried."""

    scope = pw.CharField(primary_key=True)
    version = pw.IntegerField()
    chain = pw.BlobField()
    base = pw.IntegerField()
    campaigns = pw.TextField()
    meta = pw.BlobField()
    issued_at = pw.BigIntegerField()
    snapshot_version = pw.IntegerField(default=0)
    # A hash of the store's tills (keys, revocations) it last published; NULL: none yet
    # (a scope from before store peers: its next version carries them).
    tills = pw.BlobField(null=True)


class ScopeVersion(_M):
    """One signed delta of a store's ledger."""

    scope = pw.CharField()
    version = pw.IntegerField()
    signed = pw.BlobField()
    issued_at = pw.BigIntegerField()

    class Meta:
        primary_key = pw.CompositeKey("scope", "version")


class ScopeSnapshot(_M):
    """A store ledger's signed snapshot at a version, made by the publisher."""

    scope = pw.CharField()
    version = pw.IntegerField()
    signed = pw.BlobField()

    class Meta:
        primary_key = pw.CompositeKey("scope", "version")


SCOPE_MODELS: list[type[_M]] = [ScopeRow, ScopeVersion, ScopeSnapshot]


LEDGER_MODELS: list[type[_M]] = [
    KeyRow,
    CampaignRow,
    CouponRow,
    SerialMark,
    VersionRow,
    Setting,
    SunKeyRow,
]
SYNC_MODELS: list[type[_M]] = [
    SnapshotRow,
    DenyRow,
    EnrollCode,
    TerminalRow,
    JournalRow,
    Redemption,
    SerialUse,
    CustomerUse,
    PublishedCustomerUse,
    CampaignUsage,
    TerminalUsage,
    FlagRow,
    FlagUpdate,
    AdminToken,
    UserRow,
    AuditRow,
    IssueJob,
]
MODELS = LEDGER_MODELS + SYNC_MODELS + SCOPE_MODELS
# Columns a table gained after it was first created: added to an existing table before
# create_tables makes the indexes that may name them. (model, column, SQL type and default)
ADDED_COLUMNS: list[tuple[type[_M], str, str]] = [
    (CampaignRow, "number", "BIGINT"),  # schema 3
    (CampaignRow, "issued", "BIGINT NOT NULL DEFAULT 0"),  # schema 3
    (CampaignRow, "status", "VARCHAR(255) NOT NULL DEFAULT 'active'"),  # campaign lifecycle
    (CampaignRow, "ended_at", "BIGINT"),  # campaign lifecycle
    (UserRow, "session_epoch", "INTEGER NOT NULL DEFAULT 0"),  # console sessions
    (TerminalRow, "journal_head", "BIGINT"),  # the till's status report (fleet)
    (TerminalRow, "clock_ms", "BIGINT"),
    (TerminalRow, "health", "VARCHAR(255)"),
    (TerminalRow, "unwell", "VARCHAR(255)"),
    (TerminalRow, "app_version", "VARCHAR(255)"),
    (TerminalRow, "status_at", "BIGINT"),
    (TerminalRow, "status_ignored", "INTEGER NOT NULL DEFAULT 0"),
    (ScopeRow, "tills", "BLOB"),  # store peers (BYTEA on PostgreSQL: _add_columns)
]


# Lowercase hex, the only way tills and the central write serials and hashes.
HEX_DIGITS = frozenset("0123456789abcdef")


def db_serial(serial: int) -> int:
    """SQLite and PostgreSQL integers are signed 64-bit; store serials two's-complement."""
    return serial - 2**64 if serial >= 2**63 else serial


def from_db_serial(stored: int) -> int:
    return stored + 2**64 if stored < 0 else stored


def is_postgres(db: pw.Database) -> bool:
    return isinstance(db, pw.PostgresqlDatabase)


def open_database(data: Path, url: str | None = None, pool_size: int = 16) -> pw.Database:
    """SQLite at DATA/central.db, or the PostgreSQL database a URL names
    (postgresql://user:password@127.0.0.1:5432/name); pooled, one connection per request."""
    if not url:
        return pw.SqliteDatabase(
            str(data / "central.db"),
            pragmas={"journal_mode": "wal", "synchronous": 1, "busy_timeout": 30_000},
            timeout=30,
        )
    scheme = urlparse(url).scheme
    if scheme not in ("postgres", "postgresql"):
        raise ValueError(f"unsupported database URL scheme {scheme!r} (use postgresql://)")
    params: dict[str, Any] = parse_db_url(url)
    name = params.pop("database")
    db: pw.Database = PooledPostgresqlDatabase(
        name, max_connections=pool_size, stale_timeout=300, timeout=30, **params
    )
    return db


def create_schema(db: pw.Database) -> None:
    """Create missing columns and tables, then run the numbered migrations the database has
    not had (a schema-1 data directory gains the sync tables, a schema-2 one KeyRow.sealed
    and the campaign numbers)."""
    with db.atomic():
        if is_postgres(db):  # instances starting together must not race on CREATE TABLE
            lock = "SELECT pg_advisory_xact_lock(%s)"
            db.execute_sql(lock, (SCHEMA_LOCK,))
        _add_columns(db)
        db.create_tables(MODELS, safe=True)
        row = Setting.get_or_none(Setting.key == "schema")
        have = int(row.value) if row else 0
        for version, step in sorted(MIGRATIONS.items()):
            if have < version:
                step(db)
        if have < SCHEMA_VERSION:  # never lowered: an older release must not claim it
            Setting.insert(key="schema", value=str(SCHEMA_VERSION)).on_conflict(
                conflict_target=[Setting.key], update={Setting.value: str(SCHEMA_VERSION)}
            ).execute()


def _add_sealed_keys(db: pw.Database) -> None:
    """Schema 3: KeyRow.sealed. A new database has it from create_tables already, so add it
    only when missing (a schema-1 database has no schema number to tell)."""
    table = KeyRow._meta.table_name
    if "sealed" not in {c.name for c in db.get_columns(table)}:
        migrate(
            SchemaMigrator.from_database(db).add_column(table, "sealed", pw.BlobField(null=True))
        )


def _add_roles_and_audit_guard(db: pw.Database) -> None:
    """Schema 4: AdminToken.role (existing tokens become admin) and .revoked, and the
    triggers that keep the audit log append-only."""
    table = AdminToken._meta.table_name
    have = {c.name for c in db.get_columns(table)}
    migrator = SchemaMigrator.from_database(db)
    steps = []
    if "role" not in have:
        steps.append(migrator.add_column(table, "role", pw.CharField(default="admin")))
    if "revoked" not in have:
        steps.append(migrator.add_column(table, "revoked", pw.BooleanField(default=False)))
    if steps:
        migrate(*steps)
    append_only_guard(db)


AUDIT_GUARD_PG = (
    "CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger AS $$ BEGIN "
    "RAISE EXCEPTION 'the audit log is append-only'; END $$ LANGUAGE plpgsql",
    'DROP TRIGGER IF EXISTS audit_no_change ON "{t}"',
    'CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON "{t}" '
    "FOR EACH ROW EXECUTE PROCEDURE audit_append_only()",
    'DROP TRIGGER IF EXISTS audit_no_truncate ON "{t}"',
    'CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON "{t}" '
    "FOR EACH STATEMENT EXECUTE PROCEDURE audit_append_only()",
)
AUDIT_GUARD_SQLITE = (
    'CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON "{t}" '
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    'CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON "{t}" '
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
)


def append_only_guard(db: pw.Database) -> None:
    """Triggers refusing UPDATE and DELETE (and on PostgreSQL TRUNCATE) of the audit log.
    On PostgreSQL a role without ownership of the table cannot drop them; on SQLite anyone
    who can write the database file can (docs/central.md, "Users, roles and the audit log")."""
    for sql in AUDIT_GUARD_PG if is_postgres(db) else AUDIT_GUARD_SQLITE:
        db.execute_sql(sql.format(t=AuditRow._meta.table_name))


MIGRATIONS: dict[int, Callable[[pw.Database], None]] = {
    3: _add_sealed_keys,
    4: _add_roles_and_audit_guard,
}


def _add_columns(db: pw.Database) -> None:
    for model, column, sql in ADDED_COLUMNS:
        table = model._meta.table_name
        if not db.table_exists(table):
            continue  # create_tables makes it whole
        if is_postgres(db):
            sql = sql.replace("BLOB", "BYTEA")
        if column not in {c.name for c in db.get_columns(table)}:
            db.execute_sql(f'ALTER TABLE "{table}" ADD COLUMN "{column}" {sql}')
