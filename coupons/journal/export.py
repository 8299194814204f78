"""Exporting entries: JSON lines (the machine and upload format) or CSV for spreadsheets."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import TextIO, TypedDict, cast

from coupons import csvsafe
from coupons.journal.chain import HASHED_FIELDS
from coupons.journal.schema import Entry

EXPORT_FIELDS = (*HASHED_FIELDS, "hash")  # what an export row (and an upload) carries


class ExportRow(TypedDict):
    """One journal entry as an export carries it: the EXPORT_FIELDS, typed as stored."""

    seq: int
    at_ms: int
    kind: str
    op_id: str | None
    checkout_id: str | None
    accepted: bool
    reason: str
    campaign: str | None
    serial: str | None
    customer: str | None
    discount_minor: int
    currency: str | None
    cashier: str | None
    source: str | None
    detail: str
    prev_hash: str
    hash: str


def rows(since_ms: int | None = None, until_ms: int | None = None) -> Iterator[ExportRow]:
    query = Entry.select().order_by(Entry.seq)
    if since_ms is not None:
        query = query.where(Entry.at_ms >= since_ms)
    if until_ms is not None:
        query = query.where(Entry.at_ms < until_ms)
    for row in query.dicts().iterator():
        yield cast(ExportRow, {k: row[k] for k in EXPORT_FIELDS})


CSV_FIELDS = tuple("at" if k == "at_ms" else k for k in EXPORT_FIELDS)


def export(fmt: str, out: TextIO, since_ms: int | None = None, until_ms: int | None = None) -> int:
    n = 0
    if fmt == "csv":
        # For spreadsheets: `at` (ISO 8601 with offset) instead of at_ms, formulas
        # neutralised (coupons/csvsafe.py); JSON lines stay the machine format.
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows(since_ms, until_ms):
            cells: dict[str, object] = {**row, "at": csvsafe.iso_time(row["at_ms"])}
            writer.writerow({k: csvsafe.cell(cells[k]) for k in CSV_FIELDS})
            n += 1
    else:
        for row in rows(since_ms, until_ms):
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
