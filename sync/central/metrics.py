"""/metrics at the central, Prometheus text format: what this process counted (request
latency by route, journal entries, sync rounds, ledger pulls, versions and publish lag),
what the database says at scrape (open flags by kind, ledger scopes), and the instance."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import peewee as pw
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coupons import netallow
from coupons.problem import MEDIA_TYPE, Problem
from sync import protocol
from sync.central.models import FlagRow, ScopeRow
from sync.central.publisher import Tick
from sync.central.store import Central

log = logging.getLogger(__name__)
PATH = "/metrics"
PREFIX = "edge_redeem_central"
REQUEST_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Issue 13 wants publish lag under two sync intervals (2 x 60 s): buckets up to past that.
LAG_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# A route label for a request no route took (404, or refused before routing: 413): raw
# paths would give a series per scanner probe.
NO_ROUTE = "other"
PROXIED = (b"forwarded", b"x-forwarded-for")

# Counted in this process and summed over instances by Prometheus; not registered anywhere
# until setup() puts them in an app's registry (several apps in one test process share them).
REQUESTS = Histogram(
    f"{PREFIX}_request_duration_seconds",
    "requests answered, by route template and status class",
    ["route", "status"],
    buckets=REQUEST_BUCKETS_S,
    registry=None,
)
ENTRIES = Counter(
    f"{PREFIX}_journal_entries",
    "journal entries uploaded: accepted (stored) or refused (not stored, of a batch that held"
    " an altered entry or a broken chain)",
    ["result"],
    registry=None,
)
ROUNDS = Counter(
    f"{PREFIX}_sync_rounds",
    "till sync rounds that reached their last request (GET /v1/flags)",
    registry=None,
)
PULLS = Counter(
    f"{PREFIX}_ledger_pulls",
    "ledger pulls by answer: status and kind (snapshot, delta, none)",
    ["status", "kind"],
    registry=None,
)
VERSIONS = Counter(
    f"{PREFIX}_versions_published",
    "ledger versions this instance published (all scopes)",
    registry=None,
)
LAG = Histogram(
    f"{PREFIX}_publish_lag_seconds",
    "how long a change can have waited for the publisher: from the start of the tick before"
    " to the end of the tick whose versions carry it (observed per publishing tick)",
    buckets=LAG_BUCKETS_S,
    registry=None,
)
# How long a leading publisher's tick took (chain-wide version, every scope, compaction):
# the part of the lag that grows with the number of stores, and CPU taken from requests.
TICK_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TICKS = Histogram(
    f"{PREFIX}_publish_tick_seconds",
    "how long each tick of this instance's publisher took while it led",
    buckets=TICK_BUCKETS_S,
    registry=None,
)
STATUSES = Counter(
    f"{PREFIX}_till_status_reports",
    "till status reports (X-Redeem-Status) on signed requests: ok, or why one was ignored"
    " (size, syntax, value, signature)",
    ["result"],
    registry=None,
)
COUNTED = (REQUESTS, ENTRIES, ROUNDS, PULLS, VERSIONS, LAG, TICKS, STATUSES)
for _result in ("accepted", "refused"):
    ENTRIES.labels(_result)  # both series from the start: a rate over a missing one is empty


def count_ingest(accepted: int, refused: int) -> None:
    """One journal batch: entries stored, and entries refused with it."""
    ENTRIES.labels("accepted").inc(accepted)
    ENTRIES.labels("refused").inc(refused)


def count_round() -> None:
    ROUNDS.inc()


def count_status(result: str) -> None:
    """One till status report: stored or unchanged ("ok"), or why it was ignored."""
    STATUSES.labels(result).inc()


def count_pull(status: int, kind: str | None) -> None:
    """One ledger pull's answer: 200/206 with X-Ledger-Kind, 304, 204, 409 (ahead), 416."""
    PULLS.labels(str(status), kind or "none").inc()


def observe_tick(tick: Tick) -> None:
    """One tick of this instance's publisher (publisher.py calls it). A change waits at most
    from the start of the tick before to the end of this one: that bound is the lag
    observed, once per tick that published anything."""
    if tick.leader:
        TICKS.observe(max(0.0, tick.seconds))
    published = (tick.chain_version is not None) + tick.scope_versions
    if published:
        VERSIONS.inc(published)
        LAG.observe(max(0.0, tick.lag_bound_s))


class RequestTimer:
    """ASGI middleware: every response's latency under its route's template (/admin/v1/flags/
    {flag_id}, not the id) and status class."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if nothing inside answers

        async def send_seen(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_seen)
        finally:
            # The router writes the matched route into this same scope on its way in.
            route = getattr(scope.get("route"), "path", None)
            template = route if isinstance(route, str) else NO_ROUTE
            REQUESTS.labels(template, f"{status // 100}xx").observe(time.perf_counter() - started)


class DatabaseCollector(Collector):
    """Gauges read from the database at scrape, the same on every instance. A database that
    does not answer leaves them out rather than failing the whole scrape."""

    def __init__(self, central: Central) -> None:
        self.central = central

    def describe(self) -> list[Metric]:
        return []  # no query when registered, only when scraped

    def collect(self) -> Iterator[Metric]:
        try:
            with self.central.session():
                query: Any = (
                    FlagRow.select(FlagRow.kind, pw.fn.COUNT(FlagRow.id))
                    .where(FlagRow.status == "open")
                    .group_by(FlagRow.kind)
                    .tuples()
                )
                open_kinds: list[tuple[str, int]] = list(query)
                scopes = ScopeRow.select().count()  # one ledger per store
        except pw.PeeweeException:
            log.warning("metrics: the database did not answer", exc_info=True)
            return
        flags = GaugeMetricFamily(
            f"{PREFIX}_open_flags", "fraud flags nobody has decided yet, by kind", labels=["kind"]
        )
        for kind, n in sorted(open_kinds):
            flags.add_metric([str(kind)], float(n))
        yield flags
        yield GaugeMetricFamily(f"{PREFIX}_ledger_scopes", "ledger scopes published", scopes)


def default_instance() -> str:
    """hostname:pid: tells instances behind one load balancer apart, and restarts too."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _version() -> str:
    try:
        return metadata.version("edge-redeem")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


@dataclass(frozen=True)
class Scrape:
    """An app's registry and who may read it."""

    central: Central
    registry: CollectorRegistry
    nets: Sequence[netallow.Network]

    def refusal(self, scope: Scope) -> str | None:
        # Through a proxy the peer is the proxy, not who asked (and a server told to trust
        # forwarded headers would take the client's word for its address): refuse rather
        # than let whoever reaches the load balancer read what only monitoring should.
        if any(name in PROXIED for name, _ in scope["headers"]):
            return "/metrics is not served through a proxy: scrape each instance directly"
        client = scope.get("client")
        if not netallow.allowed(client[0] if client else None, self.nets):
            return "this address may not read /metrics (redeem-central serve --metrics-allow)"
        return None

    def render(self) -> bytes:
        with self.central.session():
            return generate_latest(self.registry)


def setup(app: FastAPI, central: Central, instance: str, allow: Sequence[str] = ()) -> None:
    """The app's registry (this process's counters, the database gauges, the instance) and
    its allow-list (networks besides loopback); ValueError names a bad network."""
    nets = netallow.networks(allow)
    registry = CollectorRegistry()
    for metric in COUNTED:
        registry.register(metric)
    registry.register(DatabaseCollector(central))
    # process_cpu_seconds_total and friends: CPU and memory per instance.
    ProcessCollector(registry=registry)
    Info(f"{PREFIX}_instance", "this central instance", registry=registry).info(
        {"instance": instance, "version": _version(), "protocol": protocol.VERSION}
    )
    app.state.metrics = Scrape(central, registry, nets)


router = APIRouter()


@router.get(PATH, include_in_schema=False)
async def metrics(request: Request) -> Response:
    scrape = request.app.state.metrics
    if not isinstance(scrape, Scrape):
        raise TypeError("the app was not made by sync.central.app.create_app")
    why = scrape.refusal(request.scope)
    if why is not None:
        client = request.client.host if request.client else "?"
        log.warning("metrics refused to %s: %s", client, why)
        doc = Problem(403, "metrics-not-allowed", why, instance=PATH)
        return JSONResponse(doc.to_dict(), status_code=403, media_type=MEDIA_TYPE)
    body = await run_in_threadpool(scrape.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


__all__ = [
    "PATH",
    "RequestTimer",
    "count_ingest",
    "count_pull",
    "count_round",
    "default_instance",
    "observe_tick",
    "router",
    "setup",
]
