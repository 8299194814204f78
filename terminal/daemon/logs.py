"""Logging for the daemon: JSON lines under systemd (journald keeps the fields), plain
text on a terminal; raw device traffic on its own logger, off unless asked for."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

TRAFFIC_LOGGER = "edge_redeem.traffic"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("scan_source", "reason", "journal_seq", "input"):
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup(fmt: str = "auto", level: str = "INFO", device_traffic: bool = False) -> None:
    if fmt == "auto":
        fmt = "json" if os.environ.get("JOURNAL_STREAM") else "text"
    handler = logging.StreamHandler(sys.stdout)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        formatter.converter = time.localtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger(TRAFFIC_LOGGER).setLevel(logging.DEBUG if device_traffic else logging.WARNING)
