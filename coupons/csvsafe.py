"""CSV cells a spreadsheet opens safely: formulas neutralised, ISO 8601 times, true/false."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

# What makes Excel, LibreOffice or Google Sheets read a cell as a formula (OWASP's CSV
# injection list), plus the apostrophe itself, so that "drop one leading apostrophe" undoes
# the neutralising exactly and an export can still be checked against the journal's hashes.
# Not defusedcsv: it leaves tab and CR alone and rewrites "|" inside the cell.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def neutralise(text: str) -> str:
    """A text cell as a spreadsheet must show it: as text, never run."""
    return "'" + text if text.startswith(FORMULA_START) else text


def restore(cell: str) -> str:
    """The text `neutralise` was given (for reading an export back)."""
    return cell[1:] if cell.startswith("'") else cell


def iso_time(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 in the device's own time zone, with its offset and
    to the millisecond (2026-11-25T12:00:00.000+08:00), so it converts back exactly."""
    return (EPOCH + timedelta(milliseconds=ms)).astimezone().isoformat(timespec="milliseconds")


def cell(value: object) -> str | int | float:
    """One value as a CSV cell: numbers stay numbers (a refund's -1000 is not text to
    neutralise), booleans true/false, None empty, everything else neutralised text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return value
    return neutralise(str(value))
