"""The daemon's local web app: the cashier screen and manager dashboard (pages), the POS
integration API (/api/v1) and /metrics, served by uvicorn on the [kiosk] address (loopback
unless an installer says otherwise). Every asset ships in the package. /openapi.json
describes the POS API only: the pages are the kiosk's own forms, not a contract."""

from __future__ import annotations

import importlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from kiosk_ui import api

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def create_app(daemon: Any) -> FastAPI:
    app = FastAPI(
        title="edge-redeem terminal POS API",
        version=api.API_VERSION,
        description="Tills hold, commit, release and reverse coupons for their checkouts "
        "(docs/pos-api.md).",
        docs_url=None,
        redoc_url=None,
    )
    for name in ("api", "metrics", "pages"):  # each exposes router(daemon)
        module = importlib.import_module(f"kiosk_ui.{name}")
        # The pages are HTML forms for the kiosk's own screen: not in the published API.
        app.include_router(module.router(daemon), include_in_schema=name != "pages")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_problem_handlers(app, lambda: str(daemon.cfg.terminal.lang))
    return app


def add_problem_handlers(app: FastAPI, lang: Any) -> None:
    """Errors that never reach a POS route (no such route, wrong method, a fault outside
    one) are problem+json under /api/v1 too; the pages keep FastAPI's own answers."""

    async def on_http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):  # registered for HTTPException only
            raise exc
        if not api.under_api(request.url.path):
            return await http_exception_handler(request, exc)
        problem = api.http_problem(exc.status_code, exc.detail, exc.headers)
        return problem.response(request.url.path, lang())

    async def on_fault(request: Request, exc: Exception) -> Response:
        # Starlette logs the traceback and re-raises after this answer is sent.
        if not api.under_api(request.url.path):
            return PlainTextResponse("Internal Server Error", status_code=500)
        problem = api.Problem(500, "internal-error", "the terminal could not answer")
        return problem.response(request.url.path, lang())

    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_fault)


class KioskServer:
    """uvicorn in a thread; stops with the daemon."""

    def __init__(self, daemon: Any, host: str, port: int) -> None:
        config = uvicorn.Config(
            create_app(daemon),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,  # open live feeds must not hold up a shutdown
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="kiosk", daemon=True)
        self.host = host

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and self.thread.is_alive():
            if time.monotonic() > deadline:
                raise RuntimeError("the kiosk web server did not start")
            time.sleep(0.02)
        if not self.thread.is_alive():
            raise RuntimeError("the kiosk web server could not start (is the port in use?)")
        sock = self.server.servers[0].sockets[0].getsockname()
        self.url = f"http://{sock[0]}:{sock[1]}"
        log.info("kiosk on %s", self.url)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(3.0)
