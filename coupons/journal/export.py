"""Exporting entries: JSON lines (the machine and upload format) or CSV for spreadsheets."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from coupons import csvsafe
from coupons.journal.chain import HASHED_FIELDS
from coupons.journal.schema import Entry

EXPORT_FIELDS = (*HASHED_FIELDS, "hash")  # what an export row (and an upload) carries


def rows(since_ms: int | None = None, until_ms: int | None = None) -> Iterator[dict[str, Any]]:
    query = Entry.select().order_by(Entry.seq)
    if since_ms is not None:
        query = query.where(Entry.at_ms >= since_ms)
    if until_ms is not None:
        query = query.where(Entry.at_ms < until_ms)
    for row in query.dicts().iterator():
        yield {k: row[k] for k in EXPORT_FIELDS}


CSV_FIELDS = tuple("at" if k == "at_ms" else k for k in EXPORT_FIELDS)


def export(
    fmt: str, out: io.TextIOBase | Any, since_ms: int | None = None, until_ms: int | None = None
) -> int:
    n = 0
    if fmt == "csv":
        # For spreadsheets: `at` (ISO 8601 with offset) instead of at_ms, formulas
        # neutralised (coupons/csvsafe.py); JSON lines stay the machine format.
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows(since_ms, until_ms):
            row["at"] = csvsafe.iso_time(row.pop("at_ms"))
            writer.writerow({k: csvsafe.cell(row[k]) for k in CSV_FIELDS})
            n += 1
    else:
        for row in rows(since_ms, until_ms):
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
