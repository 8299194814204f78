"""Who may talk to the kiosk: the client's address, the Host it names and, on a request
that changes something, the site it came from (Origin/Referer); and CSRF tokens on forms."""

from __future__ import annotations

import html
import ipaddress
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from asgi_csrf import asgi_csrf
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coupons import netallow
from coupons.i18n import N_, normalize_lang, translate
from kiosk_ui import api
from kiosk_ui.daemon_port import KioskConfig

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
CSRF_FIELD = "csrftoken"  # the form field; htmx sends the same token as x-csrftoken
CSRF_KEY_FILE = "kiosk_csrf.key"

CLIENT_REFUSED = N_(
    "This device may not use the kiosk: ask whoever installed the terminal to add its"
    " address to allowed_clients."
)
HOST_REFUSED = N_(
    "The kiosk does not answer to that name: use the address whoever installed the"
    " terminal gave you."
)
ORIGIN_REFUSED = N_("Refused: the request came from another web page, not this kiosk.")
CSRF_REFUSED = N_("This form has expired: reload the page and try again.")
BACK = N_("Back to the cashier screen")


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or name) only ever reaches this machine."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host of a Host header, without port or IPv6 brackets, lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _origin(url: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None  # "null" (a sandboxed page), garbage
    return parts.scheme.lower(), parts.hostname.lower(), port


class Policy:
    """The [kiosk] section's answer to: may this request in, and if not, why."""

    def __init__(self, kiosk: KioskConfig) -> None:
        self.hosts = {"localhost", *(h.lower().rstrip(".") for h in kiosk.hostnames)}
        bound = host_name(kiosk.host)
        if bound not in ("0.0.0.0", "::", ""):  # all interfaces: no name in itself
            self.hosts.add(bound)
        self.nets = netallow.networks(kiosk.allowed_clients)

    def client_ok(self, address: str | None) -> bool:
        """The Pi's own kiosk browser and a local till (loopback) always; others by the
        [kiosk] allowed_clients list."""
        return netallow.allowed(address, self.nets)

    def host_ok(self, header: str | None) -> bool:
        if not header:
            return False
        name = host_name(header).rstrip(".")
        if name in self.hosts:
            return True
        try:  # a loopback address as the name cannot be a DNS-rebinding name
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    @staticmethod
    def same_site(scheme: str, host: str, origin: str | None, referer: str | None) -> bool:
        """A state-changing request's Origin (else Referer) must be the kiosk's own origin;
        with neither (a till's server-to-server call, an old browser) it passes here and
        the bearer token or the CSRF token decides."""
        claimed = origin if origin is not None else referer
        if claimed is None:
            return True
        own = _origin(f"{scheme}://{host}")
        return own is not None and _origin(claimed) == own

    def refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        """(status, problem code, message) for a request that may not in, else None."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        client = scope.get("client")
        if not self.client_ok(client[0] if client else None):
            return 403, "client-not-allowed", CLIENT_REFUSED
        host = headers.get("host")
        if not self.host_ok(host):
            return 400, "host-not-allowed", HOST_REFUSED
        if scope["method"] not in SAFE_METHODS and not self.same_site(
            scope.get("scheme", "http"), host or "", headers.get("origin"), headers.get("referer")
        ):
            return 403, "cross-site-request", ORIGIN_REFUSED
        return None


def refused(request: Request, status: int, code: str, message: str, lang: str) -> Response:
    """problem+json under /api/v1 (the till's software reads it); a page a person can read
    anywhere else."""
    if api.under_api(request.url.path):
        problem = api.Problem(status, code, code.replace("-", " "), message=message)
        return problem.response(request.url.path, lang)
    page_lang = normalize_lang(request.cookies.get("lang") or lang)
    text = html.escape(translate(message, page_lang))
    back = html.escape(translate(BACK, page_lang))
    body = (
        f'<!doctype html><html lang="{"zh-CN" if page_lang == "zh_CN" else "en"}"><head>'
        '<meta charset="utf-8"><title>edge-redeem</title>'
        '<link rel="stylesheet" href="/static/kiosk.css"></head><body><main class="login">'
        f'<div class="banner fault" id="refused" data-code="{code}">{text}</div>'
        f'<p><a href="/">{back}</a></p></main></body></html>'
    )
    return HTMLResponse(body, status_code=status)


class NetworkGuard:
    """ASGI middleware in front of everything (pages, /api/v1, /metrics, /static)."""

    def __init__(self, app: ASGIApp, policy: Policy, lang: Callable[[], str]) -> None:
        self.app, self.policy, self.lang = app, policy, lang

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        why = self.policy.refusal(scope)
        if why is None:
            await self.app(scope, receive, send)
            return
        status, code, message = why
        client = scope.get("client")
        log.warning(
            "kiosk refused %s %s from %s (Host %r): %s",
            scope["method"],
            scope["path"],
            client[0] if client else "?",
            dict(scope["headers"]).get(b"host", b"").decode("latin-1"),
            code,
        )
        request = Request(scope)
        await refused(request, status, code, message, self.lang())(scope, receive, send)


class _Everything:
    """asgi-csrf's `always_protect` is a container of paths; every page path is in it, so a
    cookie-less cross-site form post (the cashier screen has no login) is checked too."""

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and not api.under_api(path)


class Csrf:
    """asgi-csrf (double-submit: a signed token in a cookie and in each form's hidden
    `csrftoken` field or htmx's x-csrftoken header). /api/v1 is left out: tills send a
    bearer token and no cookie, so there is nothing to forge."""

    def __init__(self, app: ASGIApp, secret: str, lang: Callable[[], str]) -> None:
        async def failed(scope: Scope, send: Send, message_id: object) -> None:
            request = Request(scope)
            log.warning(
                "kiosk refused %s %s: CSRF token %s",
                scope["method"],
                scope["path"],
                getattr(message_id, "name", message_id),
            )
            response = refused(request, 403, "csrf-token", CSRF_REFUSED, lang())

            async def nothing() -> Message:
                return {"type": "http.disconnect"}

            await response(scope, nothing, send)

        self.app: ASGIApp = asgi_csrf(
            app,
            signing_secret=secret,
            always_protect=_Everything(),
            skip_if_scope=lambda scope: api.under_api(scope["path"]),
            cookie_samesite="Strict",
            send_csrf_failed=failed,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def csrf_token(request: Request) -> str:
    """The token a form carries; '' where no Csrf middleware runs (a bare router)."""
    make = request.scope.get("csrftoken")
    return str(make()) if callable(make) else ""


def csrf_secret(data: Path) -> str:
    """The signing key of the CSRF cookie, kept in the data directory: a kiosk page left
    open across a daemon restart still submits (a new key each start would refuse it)."""
    path = data / CSRF_KEY_FILE
    try:
        key = path.read_text(encoding="ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        key = ""
    if key:  # an empty or damaged file (a power cut while writing) gets a new key
        return key
    key = secrets.token_urlsafe(48)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return key
