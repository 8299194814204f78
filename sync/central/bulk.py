"""Many-row INSERTs straight through the driver (psycopg2's execute_values, sqlite3's
executemany): building them through peewee's query objects cost more than the database
did for a 5,000-entry batch. Names come from the models, never from input."""

from __future__ import annotations

from collections.abc import Sequence

import peewee as pw

from sync.central.models import is_postgres

_db_errors: pw.ExceptionWrapper = pw.__dict__["__exception_wrapper__"]


def insert(
    db: pw.Database,
    model: type[pw.Model],
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    on_conflict: str = "",
) -> None:
    """INSERT rows (tuples in `columns` order); `on_conflict` is an ON CONFLICT clause in
    the syntax SQLite and PostgreSQL share (use the table name and `excluded`)."""
    if not rows:
        return
    meta = model._meta
    table = meta.table_name
    names = ", ".join(f'"{meta.fields[c].column_name}"' for c in columns)
    with _db_errors:
        cursor = db.cursor()
        if is_postgres(db):
            from psycopg2.extras import execute_values

            sql = f'INSERT INTO "{table}" ({names}) VALUES %s {on_conflict}'  # noqa: S608
            execute_values(cursor, sql, rows, page_size=1000)
        else:
            marks = ", ".join("?" * len(columns))
            sql = f'INSERT INTO "{table}" ({names}) VALUES ({marks}) {on_conflict}'  # noqa: S608
            cursor.executemany(sql, rows)
