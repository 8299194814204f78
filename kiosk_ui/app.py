"""The daemon's local web app: the cashier screen and manager dashboard (pages), the POS
integration API (/api/v1) and /metrics, served by uvicorn on the [kiosk] address (loopback
unless an installer says otherwise). Every asset ships in the package. /openapi.json
describes the POS API only: the pages are the kiosk's own forms, not a contract. Every
request passes kiosk_ui/guard.py first (client address, Host, Origin; CSRF on the pages)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from kiosk_ui import api, cashier, guard, manager_pages, metrics
from kiosk_ui.daemon_port import DaemonPort

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def create_app(daemon: DaemonPort) -> FastAPI:
    app = FastAPI(
        title="edge-redeem terminal POS API",
        version=api.API_VERSION,
        description="Tills hold, commit, release and reverse coupons for their checkouts "
        "(docs/pos-api.md).",
        docs_url=None,
        redoc_url=None,
    )
    app.state.daemon = daemon  # what kiosk_ui.daemon_port.get_daemon hands the routes
    api.setup(app, daemon)
    app.include_router(api.router)
    # Each module's per-app state (and its decision listener, in this order) on app.state.
    for module in (metrics, cashier, manager_pages):
        module.setup(app, daemon)
    app.include_router(metrics.router)
    # The pages are HTML forms for the kiosk's own screen: not in the published API.
    app.include_router(cashier.router, include_in_schema=False)
    app.include_router(manager_pages.router, include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def lang() -> str:
        return str(daemon.cfg.terminal.lang)

    add_problem_handlers(app, lang)
    kiosk = daemon.cfg.kiosk
    secret = guard.csrf_secret(Path(daemon.cfg.terminal.data))
    app.add_middleware(guard.Csrf, secret=secret, lang=lang)
    app.add_middleware(guard.NetworkGuard, policy=guard.Policy(kiosk), lang=lang)  # outermost
    if not guard.is_loopback(kiosk.host):
        log.warning(
            "kiosk serves the network on %s:%s (allow_network = true): clients let in: "
            "127.0.0.1, ::1, %s; host names: %s",
            kiosk.host,
            kiosk.port,
            ", ".join(kiosk.allowed_clients),
            ", ".join(kiosk.hostnames) or "(none but the address)",
        )
    return app


def add_problem_handlers(app: FastAPI, lang: Callable[[], str]) -> None:
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


def listen_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket whose connections send without Nagle's delay.

    socket.create_server() makes a socket with protocol 0, and asyncio turns Nagle off only
    on sockets that say IPPROTO_TCP: uvicorn then wrote each response's headers and body in
    two segments, the body waiting for the client's delayed ACK, 40 ms on every answer of a
    kept-alive connection (a POS apply: p50 51.9 ms instead of 7.1, bench/pos_api.py). Here
    the protocol is named and TCP_NODELAY is set on the listener too (accepted sockets
    inherit it on Linux)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    return sock


class KioskServer:
    """uvicorn in a thread; stops with the daemon."""

    def __init__(self, daemon: DaemonPort, host: str, port: int) -> None:
        config = uvicorn.Config(
            create_app(daemon),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            # The client address is the socket's peer: an X-Forwarded-For from a local
            # process must not pick the address the allow-list sees.
            proxy_headers=False,
            timeout_graceful_shutdown=1,  # open live feeds must not hold up a shutdown
        )
        self.server = uvicorn.Server(config)
        # Bound here, not in uvicorn's thread: a port in use or an address this machine
        # does not have is an OSError the daemon reports (and stops on), not a thread that
        # quietly dies.
        self.sock = listen_tcp(host.strip("[]"), port)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="kiosk", daemon=True
        )
        self.host = host

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and self.thread.is_alive():
            if time.monotonic() > deadline:
                raise RuntimeError("the kiosk web server did not start")
            time.sleep(0.02)
        if not self.thread.is_alive():
            self.sock.close()
            raise RuntimeError("the kiosk web server could not start")
        sock = self.server.servers[0].sockets[0].getsockname()
        self.url = f"http://{sock[0]}:{sock[1]}"
        log.info("kiosk on %s", self.url)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(3.0)
        self.sock.close()
