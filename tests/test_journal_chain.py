"""The chain check's own words and figures, as `redeem journal verify` (and its --json) hands
them to an auditor: which entry does not follow which, which is missing, `ok` false (not
null) and how many entries were read. Written to kill mutants `make mutate` found."""

from __future__ import annotations

import dataclasses
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


def test_entries_written_from_records_keep_the_bytes_and_hashes_of_before(
    tmp_path: Path,
) -> None:
    """The hash chain covers the stored bytes: entries written through NewEntry (and through
    append's keywords) must hash as the same entries did when write() took its columns
    positionally, or every journal written before would stop verifying. The digests below
    were computed by that earlier code."""
    database = journal.open_database(tmp_path / "journal.db")
    j = Journal()
    with database.atomic():
        j.write(
            journal.NewEntry(
                at_ms=1795608000123,
                kind="redeem",
                op_id="op-1",
                checkout_id="co-1",
                accepted=True,
                reason="ok",
                campaign="TEN",
                serial="00000000000000ff",
                customer="c0ffee",
                discount_minor=1200,
                currency="CNY",
                cashier="amy",
                source="camera",
                detail={
                    "detail": "",
                    "gift": None,
                    "basket_minor": 5000,
                    "tag": "04a1",
                    "override": None,
                },
            )
        )
        j.append(
            at_ms=1795608000124,
            kind="flag",
            accepted=False,
            reason="replay",
            serial="00000000000000ff",
            campaign="TEN",
            source="camera",
            detail={"detail": "满减 ✓", "about_seq": 1},
        )
        j.write(journal.NewEntry(at_ms=1795608000125, kind="expire", reason="hold_expired"))
    stored = [(r["seq"], r["detail"], r["hash"]) for r in journal.rows()]
    database.close()
    assert stored == [
        (
            1,
            '{"basket_minor":5000,"detail":"","gift":null,"override":null,"tag":"04a1"}',
            "3583b6c0f7df1b483b13059eac9ef0b33b5cfc3e4ae9b4828315b4067c208992",
        ),
        (
            2,
            '{"about_seq":1,"detail":"满减 ✓"}',
            "b9560c7afb97c0c24f6f80b2d56a11237e7a3e07b3ee930bdf30757db87e9f48",
        ),
        (3, "{}", "0425ee23aecb9dee85f6de707fc43d78b15fe47bdc1472a54ff97579b00f0079"),
    ]


def test_a_new_entry_names_every_column_but_the_chains_own() -> None:
    named = {f.name for f in dataclasses.fields(journal.NewEntry)}
    assert named | {"seq", "prev_hash", "hash"} == set(journal.Entry._meta.fields)
    assert tuple(f for f in journal.HASHED_FIELDS if f in named) == tuple(
        f.name for f in dataclasses.fields(journal.NewEntry)
    )
