"""The chain check's own words and figures, as `redeem journal verify` (and its --json) hands
them to an auditor: which entry does not follow which, which is missing, `ok` false (not
null) and how many entries were read. Written to kill mutants `make mutate` found."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import peewee as pw
import pytest

from coupons import journal
from coupons.journal import Journal
from tests.conftest import T0

NOW_MS = int(T0 * 1000)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[pw.SqliteDatabase]:
    database = journal.open_database(tmp_path / "journal.db")
    j = Journal()
    with database.atomic():
        for i in range(6):
            j.append(at_ms=NOW_MS + i, kind="redeem", accepted=True, reason="ok")
    assert journal.verify().ok
    yield database
    database.close()


def test_a_relinked_entry_is_named_with_the_one_it_should_follow(db: pw.SqliteDatabase) -> None:
    db.execute_sql("UPDATE entry SET prev_hash = ? WHERE seq = 4", ("0" * 64,))
    result = journal.verify()
    assert result.ok is False and result.first_bad_seq == 4 and result.entries == 4
    assert result.problem == "entry 4 does not follow entry 3"


def test_a_deleted_entry_is_named_with_the_next_one_stored(db: pw.SqliteDatabase) -> None:
    db.execute_sql("DELETE FROM entry WHERE seq = 3")
    result = journal.verify()
    assert result.ok is False and result.first_bad_seq == 3 and result.entries == 3
    assert result.problem == "entry 3 is missing (next stored is 4)"


def test_an_edited_entry_is_named_as_altered(db: pw.SqliteDatabase) -> None:
    db.execute_sql("UPDATE entry SET discount_minor = 99999 WHERE seq = 3")
    result = journal.verify()
    assert result.ok is False and result.first_bad_seq == 3 and result.entries == 3
    assert result.problem == "entry 3 was altered"


def test_every_field_given_to_append_is_what_the_journal_keeps(db: pw.SqliteDatabase) -> None:
    """Flags and clock resets go through append(): an export (and the central) reads back
    exactly what was given, and a misspelt field is refused, not silently dropped."""
    given = {
        "at_ms": NOW_MS + 99,
        "kind": "clock_reset",
        "op_id": "op-7",
        "checkout_id": "co-7",
        "accepted": True,
        "reason": "ok",
        "campaign": "TEN",
        "serial": "00000000000000ff",
        "customer": "c0ffee",
        "discount_minor": 1200,
        "currency": "CNY",
        "cashier": "amy",
        "source": "camera",
        "detail": {"about_seq": 3, "note": "满减"},
    }
    with db.atomic():
        seq = Journal().append(**given)
    row = next(r for r in journal.rows() if r["seq"] == seq)
    kept = {k: row[k] for k in given}
    kept["detail"] = json.loads(kept["detail"])
    assert kept == given
    assert journal.verify().ok
    with pytest.raises(KeyError, match="cashierr"), db.atomic():
        Journal().append(at_ms=NOW_MS, kind="flag", cashierr="amy")
