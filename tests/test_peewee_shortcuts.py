"""What the code's shortcuts past peewee's query builder rely on in peewee, one test each, so
that a peewee upgrade that changes it fails here rather than in a till's journal."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import peewee as pw
import psycopg2
import psycopg2.errors
import pytest

from coupons import journal
from coupons.journal import schema
from sync.central import bulk, models
from sync.central.store import LOCK_PUBLISH, Central
from tests import postgres
from tests.central_server import BACKENDS, database_for
from tests.master_key import KEY as MASTER_KEY


@pytest.fixture
def journal_db(tmp_path: Path) -> Iterator[pw.SqliteDatabase]:
    db = journal.open_database(tmp_path / "journal.db")
    yield db
    db.close()


@pytest.fixture(params=BACKENDS)
def central(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Central]:
    database = database_for(request.param, "shortcuts")
    c = Central.init(tmp_path / "central", database=database, master_key=MASTER_KEY)
    try:
        yield c
    finally:
        c.close()
        if database:
            postgres.drop_database(database)


def _locked(path: Path) -> bool:
    """Whether another connection, waiting for nothing, is refused the write lock."""
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError as exc:
        assert exc.sqlite_errorname == "SQLITE_BUSY"
        return True
    finally:
        other.close()


# ---------------------------------------------------------------- the exception wrapper
# coupons/journal.py and sync/central/bulk.py write through the driver inside peewee's
# module-level __exception_wrapper__, so callers catch peewee's errors as everywhere else.


def test_the_exception_wrapper_is_the_one_peewee_uses() -> None:
    wrapper = pw.__dict__["__exception_wrapper__"]
    assert isinstance(wrapper, pw.ExceptionWrapper)
    assert schema.db_errors is wrapper
    assert bulk._db_errors is wrapper


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (sqlite3.OperationalError("database is locked"), pw.OperationalError),
        (sqlite3.IntegrityError("UNIQUE constraint failed"), pw.IntegrityError),
        (sqlite3.DatabaseError("file is not a database"), pw.DatabaseError),
        (psycopg2.errors.UniqueViolation("duplicate key"), pw.IntegrityError),
        (psycopg2.errors.SerializationFailure("could not serialize"), pw.OperationalError),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else v.__name__,
)
def test_the_wrapper_maps_driver_errors_to_peeweees(
    raised: Exception, expected: type[Exception]
) -> None:
    with pytest.raises(expected) as caught:
        with schema.db_errors:
            raise raised
    assert type(caught.value) is expected
    # The words stay the driver's: the journal tells a full disk by them (_is_full) and the
    # engine shows them as a storage failure's detail.
    assert str(caught.value) == str(raised)
    assert caught.value.orig is raised


def test_a_raw_journal_write_raises_peewees_integrity_error(journal_db: pw.SqliteDatabase) -> None:
    with journal_db.atomic():
        journal.insert_operation("op-1", "request", 1, "{}")
        with pytest.raises(pw.IntegrityError):
            journal.insert_operation("op-1", "request", 1, "{}")


# ---------------------------------------------------------------- model metadata
# Hand-written SQL takes table and column names from Model._meta, and names some outright
# ("serialuse" in sync/central/reconcile.py; "op_id", "seq", "serial"... in journal.py).
# Existing data directories hold tables named the way peewee named them when they were made.


@pytest.mark.parametrize(
    "model",
    [*schema.MODELS, *models.MODELS],
    ids=lambda m: m.__name__,
)
def test_tables_and_columns_keep_their_names(model: type[pw.Model]) -> None:
    meta = model._meta
    assert meta.table_name == model.__name__.lower()  # peewee's legacy_table_names
    for name, field in meta.fields.items():
        assert field.column_name == name


def test_the_proxy_hands_out_the_database_it_was_given(journal_db: pw.SqliteDatabase) -> None:
    assert journal.database_proxy.obj is journal_db  # `database_proxy.obj` throughout


# ---------------------------------------------------------------- the engine's transaction
# Engine._record opens its transaction with BEGIN on the raw connection and tells peewee with
# push_transaction, so that an atomic() inside nests as a savepoint and commits nothing.


def test_the_connection_is_sqlite3s_own_in_autocommit_mode(journal_db: pw.SqliteDatabase) -> None:
    conn = journal_db.connection()
    assert isinstance(conn, sqlite3.Connection)
    # No implicit BEGIN from the driver: the hand-written one is the only one.
    assert conn.isolation_level is None
    assert not conn.in_transaction


def test_atomic_inside_a_pushed_transaction_is_a_savepoint(journal_db: pw.SqliteDatabase) -> None:
    conn = journal_db.connection()
    conn.execute("BEGIN")
    journal_db.push_transaction(object())
    try:
        assert journal_db.in_transaction() and journal_db.transaction_depth() == 1
        with journal_db.atomic():
            journal.insert_operation("kept", "", 1, "{}")
        assert conn.in_transaction, "atomic() committed the hand-opened transaction"
        with pytest.raises(RuntimeError), journal_db.atomic():
            journal.insert_operation("undone", "", 2, "{}")
            raise RuntimeError
        ids = [op.op_id for op in journal.Operation.select()]
        assert ids == ["kept"]
    finally:
        journal_db.pop_transaction()
        conn.execute("ROLLBACK")
    assert journal_db.transaction_depth() == 0
    assert journal.Operation.select().count() == 0


# ---------------------------------------------------------------- the central's locks


def test_begin_immediate_takes_the_write_lock(tmp_path: Path) -> None:
    central = Central.init(tmp_path / "central", master_key=MASTER_KEY)
    path = tmp_path / "central" / "central.db"
    try:
        for hold in (central.exclusive, central.writing):
            assert not _locked(path)
            with hold():
                assert _locked(path)
            assert not _locked(path)
    finally:
        central.close()


def test_the_advisory_lock_lasts_the_transaction(tmp_path: Path) -> None:
    # peewee runs psycopg2 in autocommit mode and opens atomic()'s transaction itself: the
    # transaction-scoped lock must last until that transaction ends, not one statement.
    database = database_for("postgresql", "shortcuts")
    assert database is not None
    central = Central.init(tmp_path / "central", database=database, master_key=MASTER_KEY)
    other = psycopg2.connect(database)
    try:

        def free() -> bool:
            with other, other.cursor() as cur:  # a transaction, ended at once
                cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (LOCK_PUBLISH,))
                return bool(cur.fetchone()[0])

        assert free()
        with central.exclusive():
            assert not free()
        assert free()
    finally:
        other.close()
        central.close()
        postgres.drop_database(database)


# ---------------------------------------------------------------- many-row inserts


def test_bulk_insert_and_its_on_conflict_clause(central: Central) -> None:
    upsert = 'ON CONFLICT ("serial") DO UPDATE SET "count" = "serialuse"."count" + excluded."count"'
    with central.writing():
        bulk.insert(central.db, models.SerialUse, ("serial", "count"), [(7, 1), (8, 2)])
        bulk.insert(central.db, models.SerialUse, ("serial", "count"), [(7, 3)], upsert)
    counts = dict(models.SerialUse.select(models.SerialUse.serial, models.SerialUse.count).tuples())
    assert counts == {7: 4, 8: 2}
    with pytest.raises(pw.IntegrityError), central.writing():
        bulk.insert(central.db, models.SerialUse, ("serial", "count"), [(8, 1)])


# ---------------------------------------------------------------- the redemption's own SQL
# coupons/journal/uses.py reads and writes the rows of a redemption with fixed SQL through
# the connection: they must find what the models find, and fail as peewee fails.


def test_a_new_use_names_every_column_but_the_id() -> None:
    named = {f.name for f in dataclasses.fields(journal.NewUse)}
    assert named | {"id"} == set(journal.Use._meta.fields)


def test_the_hand_written_reads_find_what_the_models_find(journal_db: pw.SqliteDatabase) -> None:
    journal.insert_operation("op-1", "fingerprint", 7, '{"accepted": true}')
    row = journal.Operation.get(journal.Operation.op_id == "op-1")
    assert journal.operation_answer("op-1") == (row.request, row.response)
    assert journal.operation_answer("op-2") is None
    for serial, status in (("a1", "held"), ("b2", "committed"), ("c3", "released")):
        journal.insert_use(
            journal.NewUse(
                serial=serial,
                campaign="TEN",
                customer=None,
                checkout_id="co",
                status=status,
                counts=True,
                discount_minor=100,
                value_minor=100,
                currency="CNY",
                expires_at=None,
                detail="{}",
            )
        )
    by_model = [
        (u.serial, u.campaign, u.customer, u.status, u.detail)
        for u in journal.Use.select()
        .where((journal.Use.checkout_id == "co") & journal.Use.status.in_(("held", "committed")))
        .order_by(journal.Use.id)
    ]
    assert journal.checkout_uses("co", ("held", "committed")) == by_model
    assert journal.checkout_uses("co", ("held",)) == by_model[:1]


def test_the_tag_counter_never_goes_down(journal_db: pw.SqliteDatabase) -> None:
    uid = bytes.fromhex("04a1b2c3d4e5f6")
    assert journal.tag_counter("SUN", uid) is None
    journal.raise_tag_counter("SUN", uid, 5)
    journal.raise_tag_counter("SUN", uid, 3)
    assert journal.tag_counter("SUN", uid) == 5
    row = journal.TagCounter.get(journal.TagCounter.uid == uid.hex())
    assert (row.campaign, row.counter) == ("SUN", 5)
    journal.raise_tag_counter("SUN", uid, 9)
    assert journal.tag_counter("SUN", uid) == 9


def test_a_hand_written_read_raises_peewees_error(journal_db: pw.SqliteDatabase) -> None:
    journal_db.execute_sql('DROP TABLE "operation"')
    with pytest.raises(pw.OperationalError):
        journal.operation_answer("op-1")
