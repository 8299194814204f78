"""/metrics in Prometheus text format, from its own registry: decisions by reason and scan
latency (a daemon listener), sync backlog, ledger age, device up/down and the store group's
claims, drops and peers (read at scrape)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from kiosk_ui import daemon_port
from kiosk_ui.daemon_port import DaemonPort, Published

log = logging.getLogger(__name__)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
router = APIRouter()


class DaemonCollector(Collector):
    """Gauges read from the daemon when scraped; a part that cannot answer is left out
    rather than failing the whole scrape."""

    def __init__(self, daemon: DaemonPort) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        daemon = self.daemon
        try:
            backlog = daemon.sync_status(brief=True).get("backlog")
        except Exception:
            log.warning("metrics: sync status unavailable", exc_info=True)
            backlog = None
        if isinstance(backlog, int | float):
            yield GaugeMetricFamily(
                "redeem_sync_backlog", "journal entries not yet pushed to the central", backlog
            )
        try:
            age = daemon_port.worker(daemon).call(lambda engine: engine.ledger_age_s(), 2.0)
        except Exception:
            log.warning("metrics: ledger age unavailable", exc_info=True)
            age = None
        if age is not None:
            yield GaugeMetricFamily(
                "redeem_ledger_age_seconds", "seconds since the ledger in use was issued", age
            )
        up = GaugeMetricFamily(
            "redeem_device_up", "1 when an input is working (ok or degraded)", labels=["input"]
        )
        for name, health in daemon.health().items():
            up.add_metric([name], 0.0 if health.get("state") in ("down", "stopped") else 1.0)
        yield up
        try:
            peers = daemon_port.peers_status(daemon)
            group = list(peer_metrics(peers)) if peers.get("enabled") else []
        except Exception:
            log.warning("metrics: store peers status unavailable", exc_info=True)
            group = []
        yield from group


def _counts(doc: object) -> list[tuple[str, float]]:
    """A status's {label: n} as sorted (label, n) pairs, anything not a number left out."""
    if not isinstance(doc, Mapping):
        return []
    return sorted(
        (str(k), float(v))
        for k, v in doc.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    )


def peer_metrics(peers: Mapping[str, object]) -> Iterator[Metric]:
    """The store group's figures from Daemon.peers_status() (kiosk_ui/daemon_port.py)."""
    claims = CounterMetricFamily(
        "redeem_peer_claims",
        "claims this till made on its store's peers, by outcome",
        labels=["outcome"],
    )
    for outcome, n in _counts(peers.get("claims")):
        claims.add_metric([outcome], n)
    yield claims
    conflicts = peers.get("conflicts")
    yield CounterMetricFamily(
        "redeem_peer_conflicts",
        "a peer said held after this till had accepted (both accepted)",
        value=float(conflicts) if isinstance(conflicts, int | float) else 0.0,
    )
    dropped = CounterMetricFamily(
        "redeem_peer_messages_dropped", "peer datagrams dropped, by why", labels=["why"]
    )
    for why, n in _counts(peers.get("dropped")):
        dropped.add_metric([why], n)
    yield dropped
    up = GaugeMetricFamily(
        "redeem_peer_up", "1 when a peer till was heard from lately", labels=["peer"]
    )
    listed = peers.get("peers")
    for p in listed if isinstance(listed, list) else []:
        if isinstance(p, Mapping) and p.get("terminal"):
            up.add_metric([str(p["terminal"])], 1.0 if p.get("up") else 0.0)
    yield up
    latency = peers.get("latency")
    if isinstance(latency, Mapping) and isinstance(latency.get("buckets"), list):
        buckets = [
            (str(le) if le != "+Inf" else "+Inf", float(n))
            for le, n in latency["buckets"]
            if isinstance(n, int | float)
        ]
        if not buckets or buckets[-1][0] != "+Inf":
            count = latency.get("count")
            buckets.append(("+Inf", float(count) if isinstance(count, int | float) else 0.0))
        total = latency.get("sum_s")
        yield HistogramMetricFamily(
            "redeem_peer_claim_seconds",
            "a claim's round on the store's peers",
            buckets=buckets,
            sum_value=float(total) if isinstance(total, int | float) else 0.0,
        )


def setup(app: FastAPI, daemon: DaemonPort) -> None:
    """The app's registry over a started Daemon; registers its decision listener."""
    registry = CollectorRegistry(auto_describe=True)
    decisions = Counter(
        "redeem_decisions",
        "coupon decisions published, by reason",
        ["reason", "accepted"],
        registry=registry,
    )
    latency = Histogram(
        "redeem_scan_latency_seconds",
        "from a scan being available to its decision committed",
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    registry.register(DaemonCollector(daemon))

    def on_publish(pub: Published) -> None:
        if pub.decision is None:
            return
        decisions.labels(pub.decision.reason.value, str(pub.decision.accepted).lower()).inc()
        latency.observe(pub.latency_s)

    daemon.listeners.append(on_publish)
    app.state.metrics = registry


def get_registry(request: Request) -> CollectorRegistry:
    registry: CollectorRegistry = request.app.state.metrics
    return registry


@router.get("/metrics", include_in_schema=False)
def metrics(registry: Annotated[CollectorRegistry, Depends(get_registry)]) -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
