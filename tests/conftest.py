"""Shared fixtures: a real central data directory and a real terminal on tmp_path, with one
settable clock so tests control time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coupons import setup
from coupons.clock import FixedClock
from coupons.engine import Engine
from coupons.ledger import ledger_file
from coupons.rules import Basket
from sync.central.store import Central
from tests.master_key import KEY as MASTER_KEY

# Wednesday 2026-11-25 12:00 UTC: inside ordinary opening hours.
T0 = 1795_608_000.0


def basket(
    total_minor: int | None = None,
    currency: str = "CNY",
    lines: list[dict[str, Any]] | None = None,
    **customer: Any,
) -> Basket:
    doc: dict[str, Any] = {"currency": currency}
    if lines is not None:
        doc["lines"] = lines
    else:
        doc["total_minor"] = total_minor
    if customer:
        doc["customer"] = customer
    return Basket.from_dict(doc)


@dataclass
class World:
    """One central and one terminal sharing a clock."""

    clock: FixedClock
    central: Central
    data: Path
    engine: Engine

    def campaign(self, **doc: Any) -> str:
        doc.setdefault("currency", "CNY")
        doc.setdefault("kind", "fixed")
        if doc["kind"] in ("fixed", "threshold"):
            doc.setdefault("amount_minor", 1000)
        if doc["kind"] == "threshold":
            doc.setdefault("min_spend_minor", 10000)
        return self.central.add_campaign(doc).id

    def issue(self, campaign: str, count: int = 1, **kw: Any) -> list[str]:
        return [i.token or i.code or "" for i in self.central.issue(campaign, count, **kw)]

    def sync_ledger(self) -> None:
        """Publish a new version at the central and import it at the terminal."""
        before = self.engine.ledger.version
        self.central.publish()
        result = self.engine.import_ledger(ledger_file(self.central.deltas(before)))
        assert not result.refused, result.refused

    def reopen(self) -> Engine:
        """A fresh engine on the same data directory, as after a restart."""
        self.engine.db.close()
        self.engine = setup.open_engine(self.data, self.clock)
        return self.engine


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def world(tmp_path: Path, clock: FixedClock) -> Iterator[World]:
    central = Central.init(tmp_path / "central", clock.now, master_key=MASTER_KEY)
    data = tmp_path / "terminal"
    setup.init(data, tmp_path / "central" / "trust-anchor.json", "S1", "T1")
    engine = setup.open_engine(data, clock)
    w = World(clock, central, data, engine)
    yield w
    w.engine.db.close()
    central.db.close()


def write_json(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc))
    return path
