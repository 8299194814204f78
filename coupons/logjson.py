"""Logging set-up shared by the till daemon and the central: JSON lines (one object a
record, what journald and a log shipper keep as fields) or plain text for a person."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from typing import TextIO

FORMATS = ("auto", "json", "text")
# Attributes a caller may pass with `extra=` that become fields of their own.
EXTRA_FIELDS = ("scan_source", "reason", "journal_seq", "input")


class JsonFormatter(logging.Formatter):
    """One JSON object a line; `fields` (e.g. the central's instance id) go on every line."""

    def __init__(self, fields: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **self.fields,
        }
        for key in EXTRA_FIELDS:
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def configure(
    fmt: str, level: str, stream: TextIO, fields: Mapping[str, str] | None = None
) -> None:
    """One handler on the root logger: JSON lines, or text; "auto" is JSON under systemd
    (journald sets JOURNAL_STREAM) and text on a terminal."""
    if fmt == "auto":
        fmt = "json" if os.environ.get("JOURNAL_STREAM") else "text"
    handler = logging.StreamHandler(stream)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(fields))
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        formatter.converter = time.localtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


__all__ = ["EXTRA_FIELDS", "FORMATS", "JsonFormatter", "configure"]
