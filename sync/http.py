"""The terminal's HTTP link to the central: one requests.Session with timeouts, urllib3
Retry for the idempotent requests, an optional pinned CA bundle, every request signed with
the device key (sync/protocol.py), and the clock offset read off each answer."""

from __future__ import annotations

import ipaddress
import json
import logging
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from coupons import cose
from coupons.clock import Clock
from sync import protocol, till_status

log = logging.getLogger(__name__)


class SyncErrorKind(StrEnum):
    """Why a sync request or round failed, for the status line, the kept status and the
    metrics (the values are what those have always said: they compare equal to the text)."""

    NETWORK = "network"  # no connection, reset
    TIMEOUT = "timeout"
    SERVER = "server"  # 5xx, or gave up after retries
    REFUSED = "refused"  # 4xx: the central said no (or this terminal cannot ask)
    PROTOCOL = "protocol"  # an answer we cannot use: truncated, malformed, too large
    STOPPED = "stopped"  # the terminal is shutting down
    INTERNAL = "internal"  # not a SyncError: the daemon's round failed on a bug


class SyncError(Exception):
    """A sync request or round that failed; `kind` sorts the cause (SyncErrorKind)."""

    def __init__(self, kind: SyncErrorKind, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Link:
    """Where the central is and how to reach it."""

    central: str  # base URL: https://central.example/ (http only on loopback)
    ca: str | None = None  # PEM bundle to pin the central's CA; None: the system's
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 20.0  # longest silence while waiting for or reading an answer
    retries: int = 2  # urllib3 retries of one idempotent request (connect, read, 5xx)
    # The longest answer read into memory (JSON replies, error pages): a central or proxy
    # that sends an endless body is cut off here. The ledger download streams to disk and
    # has its own bound (sync/ledger_pull.py).
    max_answer_bytes: int = 8 * 1024 * 1024

    def check(self) -> None:
        parts = urlsplit(self.central)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise SyncError(
                SyncErrorKind.REFUSED, f"central URL {self.central!r} is not an http(s) URL"
            )
        if parts.scheme == "http" and not _loopback(parts.hostname):
            raise SyncError(
                SyncErrorKind.REFUSED,
                f"central URL {self.central} is plain http: use https (http only on loopback)",
            )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Answer:
    """One answer: status, headers, and (unless streamed) the body already read."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    response: requests.Response  # for streamed bodies (ledger download)

    def json(self) -> object:
        """The body as parsed JSON, for the caller to check (never trusted as a shape)."""
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise SyncError(SyncErrorKind.PROTOCOL, f"answer is not JSON: {exc}") from None


@dataclass(frozen=True)
class Offset:
    """Central time minus ours, from one answer; the true value lies within +-uncertainty."""

    offset_s: float
    uncertainty_s: float  # half the round trip


class CentralLink:
    """Signed requests to one central. Thread-safe enough for one round at a time; `close`
    may be called from another thread to abandon a round on shutdown."""

    def __init__(
        self,
        link: Link,
        key: cose.SigningKey | None,
        terminal: str | None,
        clock: Clock,
        retry: bool = True,
    ) -> None:
        link.check()
        self.link = link
        self.key = key
        self.terminal = terminal
        self.clock = clock
        self.base = link.central.rstrip("/")
        self.session = requests.Session()
        # Proxies from the environment apply (a store behind an HTTPS proxy); nothing else.
        self.session.headers["User-Agent"] = "edge-redeem-terminal"
        if retry:
            methods = frozenset({"GET", "POST"})  # POST only for the journal: idempotent
            self.retry = Retry(
                total=link.retries,
                connect=link.retries,
                read=min(1, link.retries),  # a hanging central: one more wait, not more
                status=link.retries,
                backoff_factor=0.2,
                backoff_max=2.0,
                status_forcelist=(500, 502, 503, 504),
                allowed_methods=methods,
                raise_on_status=False,  # the last answer comes back; we name it
                respect_retry_after_header=False,  # a round stays short; the loop backs off
            )
        else:
            self.retry = Retry(total=0, connect=0, read=0, status=0, raise_on_status=False)
        adapter = HTTPAdapter(max_retries=self.retry, pool_maxsize=2)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.best: Offset | None = None  # the tightest offset measured since reset_offset()
        self._correction_s = 0.0  # added to our clock when signing after a 401 for time
        # The till's report (sync/till_status.py) that signed requests carry, set by the
        # sync client before each request; None: none is sent (as by tills before it).
        self.status: str | None = None
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()
        self.session.close()

    def reset_offset(self) -> None:
        self.best = None

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        signed: bool = True,
    ) -> Answer:
        """Send one request; raise SyncError for a network fault or a 4xx/5xx answer
        (except 304, 206 and 416, which callers read). A 401 for our timestamp is retried
        once with the clock corrected by the offset that answer showed."""
        answer = self._send(method, path, params, body, headers, stream, signed)
        if answer.status == 401 and signed and self.best is not None:
            fix = self.best.offset_s
            if abs(fix - self._correction_s) > protocol.REPLAY_WINDOW_S / 2:
                log.warning("central refused our timestamp; signing with its time (%+.0f s)", fix)
                self._correction_s = fix
                answer = self._send(method, path, params, body, headers, stream, signed)
        if answer.status >= 400 and answer.status != 416:
            raise _refusal(method, path, answer)
        return answer

    def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str | int] | None,
        body: bytes,
        headers: Mapping[str, str] | None,
        stream: bool,
        signed: bool,
    ) -> Answer:
        if self._closed.is_set():
            raise SyncError(SyncErrorKind.STOPPED, "sync stopped")
        req = requests.Request(
            method, self.base + path, params=dict(params or {}), headers=dict(headers or {})
        )
        if body:
            req.data = body
        prepared = self.session.prepare_request(req)
        if signed:
            if self.key is None or self.terminal is None:
                raise SyncError(
                    SyncErrorKind.REFUSED, "this terminal is not enrolled (no device key)"
                )
            # What the central sees: the path and query as sent, relative to the host.
            path_qs = prepared.path_url
            signature = protocol.sign_headers(
                self.key,
                self.terminal,
                method,
                path_qs,
                body,
                self.clock.now() + self._correction_s,
            )
            prepared.headers.update(signature)
            if self.status:
                prepared.headers.update(
                    till_status.status_headers(self.key, signature, method, path_qs, self.status)
                )
        where = f"{method} {path}"
        verify: bool | str = self.link.ca or True
        # Always streamed: a body we keep is read by _read_capped, never unbounded.
        settings = self.session.merge_environment_settings(
            prepared.url or self.base, {}, True, verify, None
        )
        wall = self.clock.now()
        t0 = time.monotonic()
        try:
            resp = self.session.send(
                prepared,
                timeout=(self.link.connect_timeout_s, self.link.read_timeout_s),
                allow_redirects=False,
                **settings,
            )
            rtt = time.monotonic() - t0
            self._measure(resp, wall, rtt)
            data = (
                b""
                if stream and resp.status_code < 400
                else _read_capped(resp, self.link.max_answer_bytes, where)
            )
        except SyncError:
            raise
        except requests.exceptions.RequestException as exc:
            raise _network_error(where, exc, self.link) from None
        except Exception as exc:  # urllib3 under requests can still raise its own on reads
            if self._closed.is_set():
                raise SyncError(SyncErrorKind.STOPPED, "sync stopped") from None
            raise SyncError(
                SyncErrorKind.PROTOCOL, f"{where}: {type(exc).__name__}: {exc}"
            ) from None
        return Answer(resp.status_code, resp.headers, data, resp)

    def _measure(self, resp: requests.Response, wall: float, rtt: float) -> None:
        raw = resp.headers.get(protocol.HEADER_SERVER_TIME)
        if raw is None:
            return
        try:
            server = float(raw)
        except ValueError:
            return
        # The central stamped its answer somewhere inside our round trip: the middle is the
        # best guess, half the round trip the error bound.
        measured = Offset(server - (wall + rtt / 2), rtt / 2)
        if self.best is None or measured.uncertainty_s <= self.best.uncertainty_s:
            self.best = measured

    def get_json(self, path: str, params: Mapping[str, str | int] | None = None) -> Answer:
        return self.request("GET", path, params=params, headers={"Accept": "application/json"})

    def post_json(self, path: str, doc: Mapping[str, object], signed: bool = True) -> Answer:
        body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        return self.request(
            "POST",
            path,
            body=body,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            signed=signed,
        )


def _read_capped(resp: requests.Response, limit: int, where: str) -> bytes:
    """The whole (decoded) body, or SyncError at the first byte past `limit`."""
    buf = bytearray()
    for chunk in resp.iter_content(64 * 1024):
        buf += chunk
        if len(buf) > limit:
            resp.close()  # drop the connection: the rest of the body is never read
            raise SyncError(
                SyncErrorKind.PROTOCOL,
                f"{where}: the answer is larger than {limit / 2**20:g} MiB; not read further",
                resp.status_code,
            )
    data = bytes(buf)
    resp._content = data  # as if read by requests itself: resp.content/.json() still work
    return data


def _refusal(method: str, path: str, answer: Answer) -> SyncError:
    detail = ""
    try:
        doc = json.loads(answer.body or b"{}")
        if isinstance(doc, dict):
            detail = str(doc.get("detail") or doc.get("title") or "")
    except ValueError:
        detail = answer.body[:200].decode("utf-8", "replace").strip()
    reason = getattr(answer.response, "reason", "") or ""
    text = f"central answered {answer.status} {reason}".rstrip() + f" to {method} {path}"
    if detail:
        text += f": {detail}"
    kind = SyncErrorKind.SERVER if answer.status >= 500 else SyncErrorKind.REFUSED
    return SyncError(kind, text, answer.status)


def _network_error(where: str, exc: requests.exceptions.RequestException, link: Link) -> SyncError:
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return SyncError(
            SyncErrorKind.TIMEOUT,
            f"{where}: no connection to {link.central} within {link.connect_timeout_s:g} s",
        )
    reason = getattr(exc.args[0] if exc.args else None, "reason", None)
    if isinstance(exc, requests.exceptions.ReadTimeout) or isinstance(
        reason, urllib3.exceptions.ReadTimeoutError
    ):
        return SyncError(
            SyncErrorKind.TIMEOUT,
            f"{where}: the central did not answer within {link.read_timeout_s:g} s",
        )
    if isinstance(exc, requests.exceptions.SSLError):
        return SyncError(SyncErrorKind.REFUSED, f"{where}: TLS check failed: {_tls_reason(exc)}")
    if isinstance(exc, requests.exceptions.RetryError):
        return SyncError(SyncErrorKind.SERVER, f"{where}: gave up after retries: {exc}")
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError,)):
        return SyncError(SyncErrorKind.PROTOCOL, f"{where}: the answer was cut off ({exc})")
    if isinstance(exc, requests.exceptions.ContentDecodingError):
        return SyncError(
            SyncErrorKind.PROTOCOL, f"{where}: the answer could not be decoded ({exc})"
        )
    if isinstance(exc, requests.exceptions.ConnectionError):
        return SyncError(SyncErrorKind.NETWORK, f"{where}: connection failed ({_short(exc)})")
    return SyncError(SyncErrorKind.NETWORK, f"{where}: {type(exc).__name__}: {exc}")


def _tls_reason(exc: Exception) -> str:
    """'certificate verify failed: unable to get local issuer certificate' and the like."""
    cur: object = exc
    for _ in range(6):
        if isinstance(cur, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {cur.verify_message}"
        nxt = getattr(cur, "reason", None)
        if nxt is None and isinstance(cur, BaseException) and cur.args:
            nxt = cur.args[0]
        if not isinstance(nxt, BaseException):
            break
        cur = nxt
    return str(cur)[:200]


def _short(exc: Exception) -> str:
    """The innermost reason of a requests/urllib3 connection error, not the whole chain."""
    cur: object = exc.args[0] if exc.args else exc
    cur = getattr(cur, "reason", cur)  # MaxRetryError: what the last attempt ran into
    if isinstance(cur, urllib3.exceptions.ProtocolError) and len(cur.args) > 1:
        return f"{str(cur.args[0]).rstrip('.').lower()}: {cur.args[1]}"
    if isinstance(cur, urllib3.exceptions.NewConnectionError):
        return str(cur).rsplit(": ", 1)[-1]
    return str(cur)[:200]
