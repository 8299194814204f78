"""The daemon's local control socket (<data>/control.sock, owner-only): JSON lines for
`redeem status`, `redeem till`, `redeem watch` and `redeem sync`. The kiosk talks to the
daemon in process; this is for installers, the ops team and scripted tills on the same
device."""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coupons.rules import Basket, InputError

if TYPE_CHECKING:
    from terminal.daemon.runner import Daemon

log = logging.getLogger(__name__)
MAX_REQUEST = 256 * 1024


def socket_path(data: Path) -> Path:
    return data / "control.sock"


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST)
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            reply = self.server.control.dispatch(request)
        except (ValueError, InputError) as exc:
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:  # the socket must never take the daemon down
            log.exception("control request failed")
            reply = {"ok": False, "error": f"internal error: {exc}"}
        self.wfile.write(json.dumps(reply, ensure_ascii=False, default=str).encode() + b"\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    control: Control


class Control:
    def __init__(self, daemon: Daemon, path: Path) -> None:
        self.daemon = daemon
        self.path = path
        self._server: _Server | None = None
        self._changed = threading.Condition()
        daemon.listeners.append(lambda _: self._notify())

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def start(self) -> None:
        # Bound and listening under a temporary name, then renamed: a client that sees
        # control.sock can connect at once (no window between bind and listen).
        staging = self.path.with_name(self.path.name + ".new")
        staging.unlink(missing_ok=True)
        old = os.umask(0o177)
        try:
            self._server = _Server(str(staging), _Handler)
        finally:
            os.umask(old)
        os.replace(staging, self.path)
        self._server.control = self
        threading.Thread(target=self._server.serve_forever, name="control", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._notify()
        self.path.unlink(missing_ok=True)

    def dispatch(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        d = self.daemon
        lang = req.get("lang") or d.cfg.terminal.lang
        if op == "status":
            return {"ok": True, **d.status()}
        if op == "basket":
            doc = req.get("basket")
            basket = Basket.from_dict(doc) if doc is not None else None
            decisions = d.set_basket(basket)
            return {"ok": True, "decisions": [x.to_dict(lang) for x in decisions]}
        if op == "decisions":
            after = int(req.get("after", 0))
            wait = min(float(req.get("wait_s", 0)), 30.0)
            deadline = time.monotonic() + wait
            with self._changed:
                while d.published_count <= after and time.monotonic() < deadline:
                    self._changed.wait(deadline - time.monotonic())
            return {
                "ok": True,
                "count": d.published_count,
                "decisions": [p.to_dict(lang) for p in d.published_after(after)],
            }
        if op == "sync":
            if req.get("run"):
                if d.sync is None:
                    raise ValueError("sync is off: no [sync] central in the daemon's config")
                result = d.sync.run_round()
                return {"ok": True, "round": result.to_dict(), "status": d.sync_status()}
            return {"ok": True, "status": d.sync_status()}
        if op == "peers":
            keys = d.peers.held_keys() if d.peers is not None else []
            return {"ok": True, **d.peers_status(), "keys": keys}
        raise ValueError(f"unknown op {op!r} (status, basket, decisions, sync, peers)")


def request(data: Path, req: dict[str, Any], timeout: float = 35.0) -> dict[str, Any]:
    """Client side: one request, one reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(socket_path(data)))
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply = json.loads(buf)
    if not isinstance(reply, dict):
        raise ValueError("bad reply from the daemon")
    return reply
