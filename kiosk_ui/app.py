"""The daemon's local web app: the cashier screen and manager dashboard (pages), the POS
integration API (/api/v1) and /metrics, served by uvicorn on the [kiosk] address (loopback
unless an installer says otherwise). Every asset ships in the package."""

from __future__ import annotations

import importlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def create_app(daemon: Any) -> FastAPI:
    app = FastAPI(title="edge-redeem terminal", docs_url=None, redoc_url=None)
    for name in ("api", "metrics", "pages"):  # each exposes router(daemon)
        module = importlib.import_module(f"kiosk_ui.{name}")
        app.include_router(module.router(daemon))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


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
