"""Rows written in an entry's transaction: coupon uses, operation answers, SUN tag counters."""

from __future__ import annotations

import peewee as pw

from coupons.journal.schema import Operation, TagCounter, Use, database_proxy, db_errors, insert_sql


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


_USE_SQL = insert_sql(
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
_OPERATION_SQL = insert_sql(Operation, ("op_id", "request", "seq", "response"))


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
    with db_errors:
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
    with db_errors:
        database_proxy.obj.connection().execute(
            _OPERATION_SQL, (op_id, request, int(seq), response)
        )
