"""The SQL one redemption runs, statement by statement: a redemption is the till's hot path
(bench/durable.py), so a read or write that creeps into it shows here first."""

from __future__ import annotations

import re
from collections.abc import Callable

from coupons.decision import Context, Decision
from tests.conftest import World, basket

BEGIN, COMMIT = "BEGIN", "COMMIT"
ENTRY = 'INSERT INTO "entry"'
USE = 'INSERT INTO "use"'
OPERATION = 'INSERT INTO "operation"'
READ_OPERATION = 'SELECT "request", "response" FROM "operation"'
READ_SALE = 'SELECT "serial", "campaign", "customer", "status", "detail" FROM "use"'


def _statements(world: World, call: Callable[[], Decision]) -> tuple[Decision, list[str]]:
    """What `call` ran on the journal's connection, each statement cut to its verb and table
    (or its first columns for a read), in order."""
    seen: list[str] = []
    conn = world.engine.db.connection()
    conn.set_trace_callback(seen.append)
    try:
        decision = call()
    finally:
        conn.set_trace_callback(None)
    return decision, [_shape(s) for s in seen]


def _shape(sql: str) -> str:
    for known in (READ_OPERATION, READ_SALE, ENTRY, USE, OPERATION):
        if sql.startswith(known):
            return known
    return re.sub(r"\s+", " ", sql)


def _ready(world: World, n: int) -> list[str]:
    world.campaign(id="TEN", stacking="any")
    codes = world.issue("TEN", n)
    world.sync_ledger()
    return codes


def test_an_accepted_standalone_redemption_is_one_transaction_of_two_inserts(
    world: World,
) -> None:
    code, warm = _ready(world, 2)
    assert world.engine.redeem(warm, basket(5000)).accepted
    decision, sql = _statements(world, lambda: world.engine.redeem(code, basket(5000)))
    assert decision.accepted
    # No read at all: the checks run on the ledger and the engine's counters in memory, the
    # chain's head is the Journal's own, and the mark is written after the COMMIT.
    assert sql == [BEGIN, ENTRY, USE, COMMIT]


def test_a_refused_redemption_writes_its_entry_and_flag_only(world: World) -> None:
    (code,) = _ready(world, 1)
    assert world.engine.redeem(code, basket(5000)).accepted
    decision, sql = _statements(world, lambda: world.engine.redeem(code, basket(5000)))
    assert not decision.accepted
    assert sql == [BEGIN, ENTRY, ENTRY, COMMIT]  # the attempt, then its replay flag


def test_a_redemption_in_a_sale_reads_the_sale_once_before_its_transaction(
    world: World,
) -> None:
    world.campaign(id="FIVE", amount_minor=500, stacking="any")
    (first,) = _ready(world, 1)
    (second,) = world.issue("FIVE")
    ctx = Context(source="camera")
    d, sql = _statements(world, lambda: world.engine.redeem(first, basket(5000), ctx, None, "s1"))
    assert d.accepted
    assert sql == [READ_SALE, BEGIN, ENTRY, USE, COMMIT]
    d, sql = _statements(world, lambda: world.engine.redeem(second, basket(5000), ctx, None, "s1"))
    assert d.accepted
    assert sql == [READ_SALE, BEGIN, ENTRY, USE, COMMIT]


def test_a_redemption_under_an_operation_id_reads_it_once_and_stores_its_answer(
    world: World,
) -> None:
    (code,) = _ready(world, 1)
    d, sql = _statements(world, lambda: world.engine.redeem(code, basket(5000), op_id="op-1"))
    assert d.accepted
    assert sql == [READ_OPERATION, BEGIN, ENTRY, USE, OPERATION, COMMIT]
    again, sql = _statements(world, lambda: world.engine.redeem(code, basket(5000), op_id="op-1"))
    assert again.replayed and again.accepted
    assert sql == [READ_OPERATION]  # the stored answer, nothing written


def test_a_check_runs_no_sql(world: World) -> None:
    (code,) = _ready(world, 1)
    d, sql = _statements(world, lambda: world.engine.check(code, basket(5000)))
    assert d.accepted
    assert sql == []
