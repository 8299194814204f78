"""The online check (POST /v1/check): the very checks and rules engine a terminal runs
offline (coupons.checks), over the central's newest ledger, so online and offline can
never disagree. For tills that are online and want a second opinion, and for measuring
what offline saves (bench/sync.py)."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

from coupons import fraud, sun
from coupons.checks import Checks
from coupons.decision import Context, Decision, Refuse
from coupons.ledger import LedgerState
from coupons.reasons import Reason
from coupons.rules import Basket
from sync.central.store import Central


@dataclass
class _Ledger:
    state: LedgerState


@dataclass
class _Head:
    last_at_ms: int = 0


@dataclass
class _Clock:
    central: Central

    def now(self) -> float:
        return float(self.central.now())


class OnlineChecker(Checks):
    """Checks for one store. Usage counted by the central lives in the ledger it publishes
    (redeemed serials, campaign usage), exactly what terminals see."""

    def __init__(self, central: Central, store: str, state: LedgerState) -> None:
        self.ledger_store = _Ledger(state)  # type: ignore[assignment]
        self.clock = _Clock(central)
        self.store = store
        self.terminal = "central"
        self.journal = _Head()  # type: ignore[assignment]
        self.bursts = fraud.BurstDetector()
        self._trusted_s = 0.0
        self.clock_offset_s = None  # the central's clock is the reference
        self.own_usage = {}  # the central's totals are the whole truth
        self.serial_uses = Counter()
        self.customer_uses = Counter()
        self.campaign_count = Counter()
        self.campaign_minor = Counter()

    def check(self, code: str, basket: Basket) -> Decision:
        if sun.looks_like_sun(code):
            # A SUN tag's read counter lives on the tills that saw it; the central cannot
            # judge a replay, so it does not pretend to.
            return Decision(False, Reason.MALFORMED, detail="SUN tags are checked offline")
        try:
            decision, _, _, _ = self._decide(
                code, basket, Context(source="online"), self.clock.now(), []
            )
        except Refuse as r:
            return self._refusal(r, basket)
        return decision


class Online:
    """One checker per store, rebuilt when a new ledger version is published."""

    def __init__(self, central: Central) -> None:
        self.central = central
        self._lock = threading.Lock()
        self._version = -1
        self._state = LedgerState()
        self._checkers: dict[str, OnlineChecker] = {}

    def check(self, store: str, doc: object) -> dict[str, object]:
        if not isinstance(doc, dict) or not isinstance(doc.get("code"), str):
            raise ValueError('body must be {"code": str, "basket": {...}}')
        basket = Basket.from_dict(doc.get("basket"))
        latest = self.central.latest()
        version = latest.version if latest else 0
        with self._lock:
            if version != self._version:
                self._state = self.central.state()
                self._version, self._checkers = version, {}
            checker = self._checkers.get(store)
            if checker is None:
                checker = self._checkers[store] = OnlineChecker(self.central, store, self._state)
        return checker.check(doc["code"], basket).to_dict(str(doc.get("lang", "en")))
