"""The one decision channel: `Published` decisions, numbered in the order published, and
the Daemon's part that publishes them to outputs and listeners and answers what was
published (after a number, awaiting a manager's override)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from coupons.clock import Clock
from coupons.decision import Decision
from coupons.reasons import Reason
from drivers.scan import Scan
from terminal.daemon import config as config_mod
from terminal.daemon import feedback

# The decision lines keep the logger they were always logged under: journal filters and
# log dashboards select "terminal.daemon.runner".
log = logging.getLogger("terminal.daemon.runner")


@dataclass
class Published:
    number: int  # 1, 2, 3... in the order decisions were published since start
    source: str  # the input's name, "kiosk" (the cashier screen) or "pos:<till>"
    kind: str  # the input's kind (camera, nfc, keyboard...), "void" or "pos"
    decision: Decision | None  # None: not a coupon, ignored
    at: float
    latency_s: float  # from the frame (or read) being available to the decision committed
    scan: Scan | None = None  # what was scanned, decided again on a manager's override

    def to_dict(self, lang: str = "en") -> dict[str, object]:
        return {
            "number": self.number,
            "at": self.at,
            "source": self.source,
            "kind": self.kind,
            "latency_ms": round(self.latency_s * 1000, 3),
            "ignored": self.decision is None,
            "decision": self.decision.to_dict(lang) if self.decision else None,
        }


class DecisionChannel:
    """Mixed into Daemon, which sets these in its __init__: kept apart so the decision
    bookkeeping reads on its own, without the lifecycle around it."""

    cfg: config_mod.Config
    clock: Clock
    outputs: list[feedback.Output]
    recent: deque[Published]
    published_count: int
    listeners: list[Callable[[Published], None]]
    ignored: int
    _publish_lock: threading.Lock

    def _publish_scan(self, scan: Scan, decision: Decision | None, arrived: float) -> None:
        self.publish(decision, scan.source, scan.kind, arrived, scan)

    def publish(
        self,
        decision: Decision | None,
        source: str,
        kind: str,
        arrived: float,
        scan: Scan | None = None,
    ) -> None:
        """The one decision channel: every decision, from a scan, the cashier screen or the
        POS API, reaches the outputs, the kiosk's live feed, /metrics and the control
        socket from here, numbered in the order published. Called on the worker thread
        (or its future's callback), so decisions are published in the order made.
        `arrived` is when the input was available (monotonic), for the latency."""
        latency = time.monotonic() - arrived
        with self._publish_lock:
            self.published_count += 1
            pub = Published(
                self.published_count, source, kind, decision, self.clock.now(), latency, scan
            )
            self.recent.append(pub)
        if decision is None:
            self.ignored += 1
            log.info("ignored a scan from %s: not a coupon", source)
            return
        lang = self.cfg.terminal.lang
        log.info(
            "%s from %s: %s %s (%s)",
            "ACCEPTED" if decision.accepted else "REFUSED",
            source,
            decision.reason.value,
            decision.discount_minor,
            decision.reason.message(lang),
            extra={
                "scan_source": source,
                "reason": decision.reason.value,
                "journal_seq": decision.journal_seq,
            },
        )
        for out in self.outputs:
            out.show(decision)
        for listener in list(self.listeners):
            try:
                listener(pub)
            except Exception:
                log.exception("decision listener failed")

    def awaiting_override(self) -> list[Published]:
        """Coupons refused for a stale ledger that a manager may still approve: the newest
        refusal of each coupon, unless that coupon was decided again since."""
        with self._publish_lock:
            recent = list(self.recent)
        out: dict[str, Published] = {}
        for pub in recent:
            d = pub.decision
            if d is None or d.serial is None:
                continue
            out.pop(d.serial, None)
            # Only a scan can be decided again (a POS till applies its coupon itself).
            if d.reason == Reason.LEDGER_STALE and pub.scan is not None:
                out[d.serial] = pub
        return sorted(out.values(), key=lambda p: -p.number)

    def published_after(self, number: int) -> list[Published]:
        with self._publish_lock:
            return [p for p in self.recent if p.number > number]
