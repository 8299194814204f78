"""The central's web tier (FastAPI): terminal-facing /v1 endpoints signed with device keys
(sync/protocol.py, routes in terminal_api.py), admin endpoints under /admin/v1 with bearer
tokens (admin_api.py). Stateless: every answer comes from the database, so several
instances can serve one PostgreSQL database. Errors are problem+json (RFC 9457,
problems.py); every response carries X-Server-Time (guard.py). /metrics (metrics.py) is read
from loopback and the networks allowed. The head-office console (console/) serves its pages
at / and /login."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI

from sync import protocol
from sync.central import admin_api, console, metrics, openapi_doc, problems, terminal_api
from sync.central.context import Services
from sync.central.guard import Guard
from sync.central.issuing_runner import JobRunner
from sync.central.openapi_doc import terminal_openapi
from sync.central.publisher import DEFAULT_INTERVAL_S, Publisher
from sync.central.store import Central
from sync.central.terminal_api import TRUST_ANCHOR

MAX_BODY = 8 * 1024 * 1024  # a full batch of MAX_BATCH entries is about 3.5 MB


def create_app(
    central: Central,
    max_body: int = MAX_BODY,
    publish_interval_s: float | None = DEFAULT_INTERVAL_S,
    *,
    instance: str | None = None,
    metrics_allow: Sequence[str] = (),
) -> FastAPI:
    """The central's ASGI app over one Central (its database and keys). Unless
    `publish_interval_s` is None, the app runs a publisher thread and an issuance jobs runner
    while it serves (one instance at a time leads each: sync/central/publisher.py,
    issuing_runner.py). `instance` names it in /metrics
    (hostname:pid by default), `metrics_allow` lists the networks besides loopback that may
    read /metrics."""
    publisher = (
        Publisher(central, publish_interval_s, on_tick=metrics.observe_tick)
        if publish_interval_s is not None
        else None
    )
    runner = JobRunner(central) if publish_interval_s is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if publisher is not None:
            publisher.start()
        if runner is not None:
            runner.start()
        try:
            yield
        finally:
            if runner is not None:
                runner.stop()
            if publisher is not None:
                publisher.stop()

    app = FastAPI(
        lifespan=lifespan,
        title="edge-redeem central",
        version=protocol.VERSION,
        description="Terminal-facing sync API (signed with device keys; see "
        "docs/sync-protocol.md) and the admin API (bearer tokens).",
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = Services.over(central, publisher)
    app.state.issuing_runner = runner  # the console wakes it when a job is started
    metrics.setup(app, central, instance or metrics.default_instance(), metrics_allow)
    problems.install(app)
    # Terminal routes first: the OpenAPI document lists paths in the order they are added.
    app.include_router(terminal_api.router)
    app.include_router(admin_api.router)
    app.include_router(metrics.router)
    console.install(app)  # the head-office console's pages at / (left out of the OpenAPI document)
    openapi_doc.install(app)
    app.add_middleware(Guard, central=central, max_body=max_body)
    # Outermost, so the latency counts the Guard's answers (413, a crash's 500) too.
    app.add_middleware(metrics.RequestTimer)
    return app


__all__ = ["MAX_BODY", "TRUST_ANCHOR", "create_app", "terminal_openapi"]
