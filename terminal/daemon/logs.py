"""Logging for the daemon: JSON lines under systemd (journald keeps the fields), plain
text on a terminal; raw device traffic on its own logger, off unless asked for."""

from __future__ import annotations

import logging
import sys

from coupons.logjson import configure

TRAFFIC_LOGGER = "edge_redeem.traffic"


def setup(fmt: str = "auto", level: str = "INFO", device_traffic: bool = False) -> None:
    configure(fmt, level, sys.stdout)
    logging.getLogger(TRAFFIC_LOGGER).setLevel(logging.DEBUG if device_traffic else logging.WARNING)


__all__ = ["TRAFFIC_LOGGER", "setup"]
