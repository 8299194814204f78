"""The journal as evidence: the hash chain names the first edited, removed, inserted or
moved entry; exports carry everything needed to check the chain elsewhere; pruning keeps two
years and everything the central has not acknowledged."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import peewee as pw
import pytest

from coupons import csvsafe, journal
from coupons.journal import Entry, Journal, entry_hash, set_meta
from tests.conftest import T0, World, basket

YEAR_MS = 365 * 24 * 3600 * 1000
NOW_MS = int(T0 * 1000)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[pw.SqliteDatabase]:
    database = journal.open_database(tmp_path / "journal.db")
    yield database
    database.close()


def append(j: Journal, at_ms: int, n: int = 1, **kw: Any) -> list[int]:
    seqs = []
    with journal.database_proxy.obj.atomic():
        for i in range(n):
            seqs.append(
                j.append(
                    at_ms=at_ms + i,
                    kind=kw.get("kind", "redeem"),
                    accepted=kw.get("accepted", True),
                    reason=kw.get("reason", "ok"),
                    serial=f"{i:016x}",
                    discount_minor=100 * i,
                    currency="CNY",
                    detail={"note": "满减", "i": i},
                )
            )
    return seqs


def filled(db: pw.SqliteDatabase, n: int = 6) -> Journal:
    j = Journal()
    append(j, NOW_MS, n)
    assert journal.verify().ok
    return j


def sql(db: pw.SqliteDatabase, statement: str, *params: Any) -> None:
    db.execute_sql(statement, params)


# ---------------------------------------------------------------- verify


def test_intact_chain(db: pw.SqliteDatabase) -> None:
    filled(db)
    result = journal.verify()
    assert result.ok and result.entries == 6 and result.first_bad_seq is None


def test_empty_journal_verifies(db: pw.SqliteDatabase) -> None:
    assert journal.verify().ok


def test_edited_entry(db: pw.SqliteDatabase) -> None:
    filled(db)
    sql(db, "UPDATE entry SET discount_minor = 99999 WHERE seq = 3")
    result = journal.verify()
    assert not result.ok and result.first_bad_seq == 3
    assert "3" in (result.problem or "")


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("accepted", 1),
        ("reason", "ok"),
        ("detail", '{"i":1,"note":"x"}'),
        ("at_ms", NOW_MS),
        ("customer", "someone"),
    ],
)
def test_any_field_edit_is_caught(db: pw.SqliteDatabase, column: str, value: Any) -> None:
    j = Journal()
    append(j, NOW_MS, 2, accepted=False, reason="expired")
    sql(db, f"UPDATE entry SET {column} = ? WHERE seq = 2", value)
    assert journal.verify().first_bad_seq == 2


def test_edit_with_recomputed_hash_breaks_the_next_link(db: pw.SqliteDatabase) -> None:
    filled(db)
    row = Entry.select().where(Entry.seq == 3).dicts().get()
    row["discount_minor"] = 99999
    sql(db, "UPDATE entry SET discount_minor = 99999, hash = ? WHERE seq = 3", entry_hash(row))
    result = journal.verify()
    assert not result.ok and result.first_bad_seq == 4


def test_deleted_entry(db: pw.SqliteDatabase) -> None:
    filled(db)
    sql(db, "DELETE FROM entry WHERE seq = 3")
    result = journal.verify()
    assert not result.ok and result.first_bad_seq == 3
    assert "missing" in (result.problem or "")


def test_deleted_first_entry(db: pw.SqliteDatabase) -> None:
    filled(db)
    sql(db, "DELETE FROM entry WHERE seq = 1")
    assert journal.verify().first_bad_seq == 1


def test_inserted_entry(db: pw.SqliteDatabase) -> None:
    filled(db)
    # Make room after entry 2 and slip in a well-formed entry that follows entry 2.
    sql(db, "UPDATE entry SET seq = seq + 100 WHERE seq > 2")
    sql(db, "UPDATE entry SET seq = seq - 99 WHERE seq > 100")
    prev = Entry.get(Entry.seq == 2)
    fake = {k: None for k in journal.HASHED_FIELDS}
    fake.update(
        seq=3,
        at_ms=NOW_MS,
        kind="redeem",
        accepted=True,
        reason="ok",
        discount_minor=5000,
        detail="{}",
        prev_hash=prev.hash,
    )
    Entry.insert(hash=entry_hash(fake), **fake).execute()
    result = journal.verify()
    assert not result.ok
    # The forged entry itself links up; the genuine one after it no longer does.
    assert result.first_bad_seq == 4


def test_inserted_copy_of_an_entry(db: pw.SqliteDatabase) -> None:
    filled(db)
    sql(db, "UPDATE entry SET seq = seq + 100 WHERE seq > 2")
    sql(db, "UPDATE entry SET seq = seq - 99 WHERE seq > 100")
    sql(
        db,
        "INSERT INTO entry SELECT 3, at_ms, kind, op_id, checkout_id, accepted, reason, "
        "campaign, serial, customer, discount_minor, currency, cashier, source, detail, "
        "prev_hash, hash FROM entry WHERE seq = 2",
    )
    assert journal.verify().first_bad_seq == 3


def test_swapped_entries(db: pw.SqliteDatabase) -> None:
    filled(db)
    sql(db, "UPDATE entry SET seq = -1 WHERE seq = 3")
    sql(db, "UPDATE entry SET seq = 3 WHERE seq = 4")
    sql(db, "UPDATE entry SET seq = 4 WHERE seq = -1")
    result = journal.verify()
    assert not result.ok and result.first_bad_seq == 3


def test_swapped_contents(db: pw.SqliteDatabase) -> None:
    filled(db)
    a = Entry.select().where(Entry.seq == 3).dicts().get()
    b = Entry.select().where(Entry.seq == 4).dicts().get()
    for seq, row in ((3, b), (4, a)):
        row = {k: v for k, v in row.items() if k != "seq"}
        Entry.update(**row).where(Entry.seq == seq).execute()
    assert journal.verify().first_bad_seq == 3


def test_engine_journal_verifies(world: World) -> None:
    world.campaign(id="TEN", stacking="any")
    a, b = world.issue("TEN", 2)
    world.sync_ledger()
    world.engine.redeem(a, basket(5000))
    world.engine.redeem(a, basket(5000))  # refused, with a replay flag
    world.engine.hold("co-1", b, basket(5000))
    world.engine.commit("co-1")
    assert journal.verify().ok
    world.engine.db.execute_sql("UPDATE entry SET accepted = 1 WHERE reason = 'already_redeemed'")
    assert not journal.verify().ok


# ---------------------------------------------------------------- export


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    """Turn a CSV row back into the values the journal stores."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in ("seq", "discount_minor"):
            out[key] = int(value)
        elif key == "at":  # ISO 8601 with offset, to the millisecond
            out["at_ms"] = round(datetime.fromisoformat(value).timestamp() * 1000)
        elif key == "accepted":
            out[key] = value == "true"
        else:
            out[key] = csvsafe.restore(value) if value != "" else None
    return out


def _chain_ok(rows: list[dict[str, Any]]) -> bool:
    prev = journal.GENESIS_HASH
    for row in rows:
        if row["prev_hash"] != prev or entry_hash(row) != row["hash"]:
            return False
        prev = row["hash"]
    return True


def test_export_jsonl_round_trips(db: pw.SqliteDatabase) -> None:
    filled(db)
    out = io.StringIO()
    assert journal.export("jsonl", out) == 6
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert rows == list(journal.rows())
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert json.loads(rows[0]["detail"])["note"] == "满减"
    assert _chain_ok(rows)  # the export alone is enough to check the chain


def test_export_csv_round_trips(db: pw.SqliteDatabase) -> None:
    filled(db)
    out = io.StringIO()
    assert journal.export("csv", out) == 6
    rows = [_typed(r) for r in csv.DictReader(io.StringIO(out.getvalue()))]
    assert rows == list(journal.rows())
    assert _chain_ok(rows)


def test_export_time_window(db: pw.SqliteDatabase) -> None:
    filled(db)
    out = io.StringIO()
    assert journal.export("jsonl", out, since_ms=NOW_MS + 2, until_ms=NOW_MS + 4) == 2
    assert [json.loads(x)["seq"] for x in out.getvalue().splitlines()] == [3, 4]


def test_export_of_a_tampered_journal_fails_the_chain(db: pw.SqliteDatabase) -> None:
    filled(db)
    sql(db, "UPDATE entry SET discount_minor = 1 WHERE seq = 2")
    out = io.StringIO()
    journal.export("jsonl", out)
    assert not _chain_ok([json.loads(x) for x in out.getvalue().splitlines()])


# ---------------------------------------------------------------- prune


def _old_and_new(db: pw.SqliteDatabase) -> Journal:
    j = Journal()
    append(j, NOW_MS - 3 * YEAR_MS, 3)  # seq 1-3: three years old
    append(j, NOW_MS - 1 * YEAR_MS, 2)  # seq 4-5: one year old
    append(j, NOW_MS, 1)  # seq 6: today
    return j


def _seqs() -> list[int]:
    return [e.seq for e in Entry.select().order_by(Entry.seq)]


def test_prune_keeps_unacknowledged_entries(db: pw.SqliteDatabase) -> None:
    _old_and_new(db)
    assert journal.prune(T0) == 0
    assert _seqs() == [1, 2, 3, 4, 5, 6]


def test_prune_removes_only_acknowledged_old_entries(db: pw.SqliteDatabase) -> None:
    _old_and_new(db)
    set_meta("acked_seq", "2")
    assert journal.prune(T0) == 2
    assert _seqs() == [3, 4, 5, 6]
    assert journal.verify().ok


def test_prune_keeps_two_years_even_when_acknowledged(db: pw.SqliteDatabase) -> None:
    _old_and_new(db)
    set_meta("acked_seq", "6")
    assert journal.prune(T0) == 3
    assert _seqs() == [4, 5, 6]
    assert journal.verify().ok
    assert journal.prune(T0) == 0


def test_entry_just_under_two_years_is_kept(db: pw.SqliteDatabase) -> None:
    j = Journal()
    append(j, NOW_MS - int(journal.RETENTION_S * 1000) + 1000, 1)
    set_meta("acked_seq", "1")
    assert journal.prune(T0) == 0
    assert journal.prune(T0 + 2) == 1


def test_chain_continues_after_prune_and_restart(db: pw.SqliteDatabase) -> None:
    j = Journal()
    append(j, NOW_MS - 3 * YEAR_MS, 4)
    set_meta("acked_seq", "4")
    assert journal.prune(T0) == 4
    assert _seqs() == []
    assert journal.verify().ok
    j = Journal()  # as after a restart, with nothing left but the pruned head
    (seq,) = append(j, NOW_MS, 1)
    assert seq == 5
    assert journal.verify().ok
    sql(db, "UPDATE entry SET discount_minor = 7 WHERE seq = 5")
    assert journal.verify().first_bad_seq == 5


def test_prune_never_skips_over_recent_evidence(db: pw.SqliteDatabase) -> None:
    # A Pi without a real-time clock can boot at 1970 and journal a clock_untrusted refusal
    # with that time. Pruning must not take that as a reason to drop last year's entries.
    j = Journal()
    append(j, NOW_MS - 3 * YEAR_MS, 1)  # seq 1: old
    append(j, NOW_MS - YEAR_MS, 1)  # seq 2: one year old, must stay
    append(j, 0, 1, accepted=False, reason="clock_untrusted")  # seq 3: "1970"
    append(j, NOW_MS, 1)  # seq 4
    set_meta("acked_seq", "4")
    assert journal.prune(T0) == 1
    assert _seqs() == [2, 3, 4]
    assert journal.verify().ok
