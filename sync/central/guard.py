"""The central's outermost middleware: X-Server-Time, the body size limit, a problem for a crash."""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coupons.problem import MEDIA_TYPE
from sync import protocol
from sync.central.problems import problem_body
from sync.central.store import Central

log = logging.getLogger(__name__)


class _TooLarge(Exception):
    """Raised from receive() to stop the app reading a body past the limit mid-stream."""


class Guard:
    """Outermost middleware: X-Server-Time on every response, the body size limit (413
    before reading a too-long body), and a problem+json 500 instead of a traceback."""

    def __init__(self, app: ASGIApp, central: Central, max_body: int) -> None:
        self.app = app
        self.central = central
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_timed(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() != protocol.HEADER_SERVER_TIME.lower().encode()
                ]
                headers.append(
                    (protocol.HEADER_SERVER_TIME.encode(), f"{self.central.now():.3f}".encode())
                )
                message = {**message, "headers": headers}
            await send(message)

        length = dict(scope.get("headers", [])).get(b"content-length")
        try:
            too_long = length is not None and int(length) > self.max_body
        except ValueError:
            too_long = False
        if too_long:
            await self._send(send_timed, 413, "too-large", f"bodies are at most {self.max_body} B")
            return
        seen = 0

        async def receive_limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, receive_limited, send_timed)
        except _TooLarge:
            if not started:
                await self._send(
                    send_timed, 413, "too-large", f"bodies are at most {self.max_body} B"
                )
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await self._send(send_timed, 500, "internal", "the central failed; try again")

    @staticmethod
    async def _send(send: Send, status: int, code: str, detail: str) -> None:
        body = problem_body(status, code, detail)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


__all__ = ["Guard"]
