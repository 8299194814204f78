"""Rows written in an entry's transaction: coupon uses, operation answers, SUN tag counters.

The reads and writes a redemption makes go straight through the connection with fixed SQL
(built once from the models' metadata): peewee's query builder costs more CPU than the
statement itself, and the redemption is the till's hot path."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from coupons.journal.schema import (
    Operation,
    TagCounter,
    Use,
    columns,
    database_proxy,
    db_errors,
    insert_sql,
)


class UseStatus(StrEnum):
    """A coupon use's `status` in the Use table (the values are what the journal stores)."""

    HELD = "held"  # for an open checkout, until its hold expires
    COMMITTED = "committed"
    RELEASED = "released"
    EXPIRED = "expired"  # a hold nobody committed in time
    REVERSED = "reversed"


# The statuses of a use that still takes a coupon (a checkout's live coupons).
LIVE_USES = (UseStatus.HELD, UseStatus.COMMITTED)

# Names come from the models' own metadata, never from input.
_TAG = TagCounter._meta.table_name
_TAG_COUNTER_SQL = f'SELECT "counter" FROM "{_TAG}" WHERE "campaign" = ? AND "uid" = ?'  # noqa: S608
_RAISE_TAG_COUNTER_SQL = (
    insert_sql(TagCounter, ("campaign", "uid", "counter"))
    + ' ON CONFLICT ("campaign", "uid") DO UPDATE SET '
    + '"counter" = MAX("counter", excluded."counter")'
)


def _execute(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """One statement through the open journal's connection, raising what peewee would."""
    with db_errors:
        rows: list[tuple[Any, ...]] = (
            database_proxy.obj.connection().execute(sql, params).fetchall()
        )
    return rows


def tag_counter(campaign: str, uid: bytes) -> int | None:
    """The highest SUN read counter redeemed for this tag in this campaign, if any."""
    rows = _execute(_TAG_COUNTER_SQL, (campaign, uid.hex()))
    return int(rows[0][0]) if rows else None


def raise_tag_counter(campaign: str, uid: bytes, counter: int) -> None:
    """Record a redeemed SUN read counter (never lowers the mark). Call inside the
    redemption's transaction."""
    _execute(_RAISE_TAG_COUNTER_SQL, (campaign, uid.hex(), int(counter)))


_OPERATION_SQL = insert_sql(Operation, ("op_id", "request", "seq", "response"))


@dataclass(frozen=True, slots=True, kw_only=True)
class NewUse:
    """A new coupon use row, as the engine records it with the redemption or hold that made
    it (Use's columns but the id, which SQLite assigns). Keyword-only: eleven columns, four
    of them money and counts, must not trade places at a call site."""

    serial: str
    campaign: str
    customer: str | None
    checkout_id: str
    status: str
    counts: bool
    discount_minor: int
    value_minor: int
    currency: str
    expires_at: float | None
    detail: str


# The columns in NewUse's order, which insert_use's row follows.
_USE_SQL = insert_sql(Use, tuple(f.name for f in dataclasses.fields(NewUse)))


def insert_use(use: NewUse) -> int:
    """Use.create(...) for a new coupon use: the same row (every column given, converted as
    the fields would: int, bool, float, str), written straight through the connection.
    Returns the new id."""
    expires_at = use.expires_at
    with db_errors:
        cursor = database_proxy.obj.connection().execute(
            _USE_SQL,
            (
                use.serial,
                use.campaign,
                use.customer,
                use.checkout_id,
                use.status,
                bool(use.counts),
                int(use.discount_minor),
                int(use.value_minor),
                use.currency,
                None if expires_at is None else float(expires_at),
                use.detail,
            ),
        )
    return int(cursor.lastrowid)


def insert_operation(op_id: str, request: str, seq: int, response: str) -> None:
    """Operation.insert(...).execute(), straight through the connection."""
    with db_errors:
        database_proxy.obj.connection().execute(
            _OPERATION_SQL, (op_id, request, int(seq), response)
        )


_OPERATION_ANSWER_SQL = 'SELECT {} FROM "{}" WHERE "op_id" = ?'.format(  # noqa: S608
    columns(Operation, ("request", "response")), Operation._meta.table_name
)


def operation_answer(op_id: str) -> tuple[str, str] | None:
    """The stored (request fingerprint, answer JSON) of an operation id; None: never seen."""
    rows = _execute(_OPERATION_ANSWER_SQL, (op_id,))
    return (str(rows[0][0]), str(rows[0][1])) if rows else None


_CHECKOUT_USES_SQL = (
    'SELECT {} FROM "{}" WHERE "checkout_id" = ? AND "status" IN ({}) ORDER BY "id"'
)
_USE_KEYS = ("serial", "campaign", "customer", "status", "detail")
_CHECKOUT_USES = {
    n: _CHECKOUT_USES_SQL.format(columns(Use, _USE_KEYS), Use._meta.table_name, ", ".join("?" * n))
    for n in (1, 2)
}


def checkout_uses(
    checkout_id: str, statuses: tuple[UseStatus, ...]
) -> list[tuple[str, str, str | None, str, str]]:
    """(serial, campaign, customer, status, detail) of a checkout's uses in these statuses
    (one or two), oldest first."""
    rows = _execute(_CHECKOUT_USES[len(statuses)], (checkout_id, *statuses))
    return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]
