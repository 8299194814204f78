"""The central's web tier (FastAPI): terminal-facing /v1 endpoints signed with device keys
(sync/protocol.py), admin endpoints under /admin/v1 with bearer tokens. Stateless: every
answer comes from the database, so several instances can serve one PostgreSQL database.
Errors are problem+json (RFC 9457); every response carries X-Server-Time."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import peewee as pw
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coupons.rules import InputError
from sync import protocol
from sync.central import flags, report, schemas, terminals
from sync.central.delivery import Ahead, Delivery
from sync.central.ingest import BatchInvalid, flag_refused_batch, ingest, parse_batch
from sync.central.models import TerminalRow
from sync.central.online import Online
from sync.central.store import Central, CentralError

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024  # a full batch of MAX_BATCH entries is about 3.5 MB
PROBLEM = "application/problem+json"
T = TypeVar("T")
# Unauthenticated: the root public key, so `redeem enroll` can check the installer's
# fingerprint before it spends the one-time code (belongs in sync/protocol.py).
TRUST_ANCHOR = protocol.TRUST_ANCHOR

TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Content too large",
    416: "Range not satisfiable",
    422: "Unprocessable content",
    500: "Internal server error",
    503: "Service unavailable",
}


class Problem(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


class _TooLarge(Exception):
    pass


def problem_body(status: int, code: str, detail: str, instance: str | None = None) -> bytes:
    doc: dict[str, Any] = {
        "type": f"urn:edge-redeem:problem:{code}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance:
        doc["instance"] = instance
    return json.dumps(doc).encode()


def problem(
    status: int, code: str, detail: str, instance: str | None = None, **headers: str
) -> Response:
    return Response(
        problem_body(status, code, detail, instance),
        status_code=status,
        media_type=PROBLEM,
        headers=headers or None,
    )


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
                    (b"content-type", PROBLEM.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _path_qs(request: Request) -> str:
    raw = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string", b"")
    path = raw.decode("latin-1")
    return f"{path}?{query.decode('latin-1')}" if query else path


def create_app(central: Central, max_body: int = MAX_BODY) -> FastAPI:
    """The central's ASGI app over one Central (its database and keys)."""
    app = FastAPI(
        title="edge-redeem central",
        version=protocol.VERSION,
        description="Terminal-facing sync API (signed with device keys; see "
        "docs/sync-protocol.md) and the admin API (bearer tokens).",
        docs_url=None,
        redoc_url=None,
    )
    delivery = Delivery(central)
    online = Online(central)

    async def db(fn: Callable[..., T], *args: Any) -> T:
        def work() -> T:
            with central.session():
                return fn(*args)

        return await run_in_threadpool(work)

    async def signed(request: Request) -> tuple[TerminalRow, bytes]:
        body = await request.body()
        row = await db(
            terminals.authenticate,
            central,
            request.headers,
            request.method,
            _path_qs(request),
            body,
        )
        return row, body

    async def admin(request: Request) -> None:
        if not await db(terminals.admin_allowed, request.headers.get("authorization")):
            raise Problem(401, "admin-token", "a valid admin bearer token is required")

    # ------------------------------------------------------------ errors

    @app.exception_handler(protocol.AuthError)
    async def _auth(request: Request, exc: protocol.AuthError) -> Response:
        code = "forbidden" if exc.status == 403 else "unauthorized"
        return problem(exc.status, code, exc.detail, request.url.path)

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        extra = {"WWW-Authenticate": "Bearer"} if exc.code == "admin-token" else {}
        return problem(exc.status, exc.code, exc.detail, request.url.path, **extra)

    @app.exception_handler(BatchInvalid)
    async def _batch(request: Request, exc: BatchInvalid) -> Response:
        return problem(exc.status, exc.code, exc.detail, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        where = ".".join(str(p) for p in errors[0].get("loc", ())) if errors else ""
        msg = errors[0].get("msg", "invalid") if errors else "invalid"
        return problem(400, "bad-request", f"{where}: {msg}", request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http")
        return problem(exc.status_code, code, str(exc.detail), request.url.path)

    # ------------------------------------------------------------ terminal-facing

    @app.post(
        protocol.ENROLL,
        tags=["terminal"],
        summary="Enroll a terminal with a one-time code and its device key",
        response_model=schemas.EnrollReply,
        responses=schemas.problems(400, 403, 413),
        openapi_extra=schemas.body("EnrollRequest"),
    )
    async def enroll(request: Request) -> Response:
        doc = _json(await request.body())
        code, key = doc.get("code"), doc.get("device_key")
        if not isinstance(code, str) or not 1 <= len(code) <= 64:
            raise Problem(400, "bad-request", "'code' must be the enrollment code")
        try:
            device_key = bytes.fromhex(key) if isinstance(key, str) else b""
        except ValueError:
            device_key = b""
        if len(device_key) != 32:
            raise Problem(400, "bad-request", "'device_key' must be 64 hex digits (Ed25519)")
        try:
            got = await db(terminals.enroll, central, code, device_key)
        except terminals.EnrollRefused as exc:
            raise Problem(403, "enroll-code", str(exc)) from None
        anchor = await run_in_threadpool(lambda: central.anchor)
        return JSONResponse(
            {
                "terminal": got.terminal,
                "store": got.store,
                "trust_anchor": json.loads(anchor.to_json()),
                "fingerprint": anchor.fingerprint,
            }
        )

    @app.get(
        TRUST_ANCHOR,
        tags=["terminal"],
        summary="The root public key terminals trust, to check before spending a code",
        response_model=schemas.TrustAnchorReply,
    )
    async def trust_anchor() -> Response:
        # Public by nature (terminals hold it; the installer's fingerprint is printed from
        # it): `redeem enroll` compares it before spending the one-time code.
        anchor = await run_in_threadpool(lambda: central.anchor)
        return JSONResponse(
            {"trust_anchor": json.loads(anchor.to_json()), "fingerprint": anchor.fingerprint}
        )

    @app.get(
        protocol.LEDGER,
        tags=["terminal"],
        summary="The ledger after a version: deltas, or a snapshot when far behind",
        responses=schemas.LEDGER_RESPONSES,
        openapi_extra=schemas.signed(),
    )
    async def get_ledger(
        request: Request,
        since: int = Query(0, ge=0, le=2**31 - 1, description="the version the terminal has"),
    ) -> Response:
        row, _ = await signed(request)

        def work() -> Any:
            if row.ledger_version != since:
                TerminalRow.update(ledger_version=since).where(TerminalRow.id == row.id).execute()
            return delivery.answer(since, request.headers)

        try:
            ans = await db(work)
        except Ahead as exc:
            raise Problem(409, "ledger-ahead", str(exc)) from None
        if ans.status == 416:
            return problem(416, "range", "range not satisfiable", request.url.path, **ans.headers)
        media = ans.headers.pop("Content-Type", None)
        return Response(ans.body, status_code=ans.status, headers=ans.headers, media_type=media)

    @app.post(
        protocol.JOURNAL,
        tags=["terminal"],
        summary="Upload journal entries (idempotent, keyed by seq)",
        response_model=schemas.JournalReply,
        responses=schemas.problems(400, 401, 403, 413, 422),
        openapi_extra={**schemas.signed(), **schemas.body("JournalBatch")},
    )
    async def post_journal(request: Request) -> Response:
        row, body = await signed(request)
        try:
            entries = parse_batch(body)
        except BatchInvalid as exc:
            await db(flag_refused_batch, central, row.id, body, exc)
            raise
        reply = await db(lambda: ingest(central, row.id, entries))
        return JSONResponse(reply.to_dict())

    @app.get(
        protocol.FLAGS,
        tags=["terminal"],
        summary="Central decisions on the fraud flags of the terminal's store",
        response_model=schemas.FlagDecisions,
        responses=schemas.problems(400, 401, 403),
        openapi_extra=schemas.signed(),
    )
    async def get_flags(
        request: Request,
        since: int = Query(0, ge=0, le=2**62, description="the last decision id seen"),
    ) -> Response:
        row, _ = await signed(request)
        return JSONResponse(await db(flags.updates_for_store, row.store, since))

    @app.post(
        protocol.CHECK,
        tags=["terminal"],
        summary="Check a coupon online with the terminal's own rules (records nothing)",
        responses=schemas.problems(400, 401, 403, 413),
        openapi_extra=schemas.signed(),
    )
    async def post_check(request: Request) -> Response:
        row, body = await signed(request)
        try:
            answer = await db(lambda: online.check(row.store, json.loads(body)))
        except RecursionError:
            return problem(400, "bad-check", "the body is nested too deeply", request.url.path)
        except (ValueError, InputError) as exc:
            return problem(400, "bad-check", str(exc), request.url.path)
        return JSONResponse(answer)

    @app.get(
        "/healthz",
        tags=["ops"],
        summary="Readiness: the database answers and the central can sign and publish",
        responses={503: {"description": "not ready; `problems` says why"}},
    )
    async def health() -> Response:
        def work() -> tuple[int, list[str]]:
            latest = central.latest()
            return (latest.version if latest else 0), central.health_problems()

        try:
            version, problems = await db(work)
        except pw.PeeweeException as exc:
            version, problems = 0, [f"the database does not answer: {exc}".strip()]
        if not problems:
            return JSONResponse({"ok": True, "version": version})
        # A central that cannot sign still answers terminals from what it published, but no
        # new version can be made: monitoring must see it as not ready.
        doc = json.loads(problem_body(503, "not-ready", "; ".join(problems), "/healthz"))
        return JSONResponse(
            {**doc, "ok": False, "version": version, "problems": problems},
            status_code=503,
            media_type=PROBLEM,
        )

    # ------------------------------------------------------------ admin

    A = protocol.ADMIN_PREFIX

    @app.get(f"{A}/flags", summary="List fraud flags", **admin_doc(400))
    async def admin_flags(
        request: Request,
        status: str | None = Query(None, pattern="^(open|acknowledged|resolved|deny_listed)$"),
        kind: str | None = Query(None, pattern="^[A-Za-z0-9_.-]{1,64}$"),
        store: str | None = Query(None, pattern="^[A-Za-z0-9_.-]{1,64}$"),
        after: int = Query(0, ge=0, le=2**62),
        limit: int = Query(500, ge=1, le=5000),
    ) -> Response:
        await admin(request)
        items = await db(flags.list_flags, status, kind, store, limit, after)
        return JSONResponse({"flags": items})

    @app.post(
        f"{A}/flags/{{flag_id}}",
        summary="Decide a flag: acknowledged, resolved or deny_listed, with a note",
        **admin_doc(400, 404, body="FlagDecision"),
    )
    async def admin_decide(request: Request, flag_id: int) -> Response:
        await admin(request)
        doc = _json(await request.body())
        status, note = doc.get("status"), doc.get("note")
        if not isinstance(status, str):
            raise Problem(400, "bad-request", "'status' is required")
        if note is not None and (not isinstance(note, str) or len(note) > 2000 or "\x00" in note):
            raise Problem(400, "bad-request", "'note' must be text of at most 2000 characters")
        if not 0 < flag_id < 2**62:
            raise Problem(404, "not-found", f"no flag {flag_id}")
        try:
            return JSONResponse(await db(flags.decide, central, flag_id, status, note))
        except LookupError as exc:
            raise Problem(404, "not-found", str(exc)) from None
        except CentralError as exc:
            raise Problem(400, "bad-request", str(exc)) from None

    @app.get(f"{A}/terminals", summary="Enrolled terminals", **admin_doc())
    async def admin_terminals(request: Request) -> Response:
        await admin(request)
        return JSONResponse({"terminals": await db(terminals.list_terminals, central)})

    @app.post(f"{A}/terminals/{{terminal}}/revoke", summary="Revoke a terminal", **admin_doc(404))
    async def admin_revoke(request: Request, terminal: str) -> Response:
        await admin(request)
        if not terminals.TERMINAL_RE.fullmatch(terminal):
            raise Problem(404, "not-found", f"no terminal {terminal}")
        try:
            await db(terminals.revoke_terminal, central, terminal)
        except CentralError as exc:
            raise Problem(404, "not-found", str(exc)) from None
        return JSONResponse({"revoked": terminal})

    @app.post(
        f"{A}/enroll-codes",
        summary="Make a one-time enrollment code for a store",
        **admin_doc(400, body="EnrollCodeRequest"),
    )
    async def admin_enroll_code(request: Request) -> Response:
        await admin(request)
        doc = _json(await request.body())
        store, ttl = doc.get("store"), doc.get("ttl", terminals.DEFAULT_TTL_S)
        if not isinstance(store, str) or type(ttl) is not int:
            raise Problem(400, "bad-request", "'store' (text) and 'ttl' (seconds) expected")
        try:
            code, expires = await db(terminals.new_enroll_code, central, store, ttl)
        except CentralError as exc:
            raise Problem(400, "bad-request", str(exc)) from None
        return JSONResponse({"code": code, "store": store, "expires_at": expires})

    @app.get(f"{A}/report", summary="The report `redeem-central report` prints", **admin_doc())
    async def admin_report(request: Request) -> Response:
        await admin(request)
        return JSONResponse(await db(report.build, central))

    @app.post(f"{A}/publish", summary="Publish a new version if anything changed", **admin_doc())
    async def admin_publish(request: Request) -> Response:
        await admin(request)
        version = await db(central.publish_if_changed)
        latest = await db(central.latest)
        return JSONResponse({"published": version, "version": latest.version if latest else 0})

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = spec.setdefault("components", {})
            components.setdefault("schemas", {}).update(schemas.component_schemas())
            components["securitySchemes"] = copy.deepcopy(schemas.SECURITY_SCHEMES)
            _honest_errors(spec)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(Guard, central=central, max_body=max_body)
    return app


def admin_doc(*codes: int, body: str | None = None) -> dict[str, Any]:
    """Route arguments of an admin endpoint: its tag, the bearer scheme, its problems."""
    extra: dict[str, Any] = {"security": [{schemas.ADMIN_SCHEME: []}]}
    if body:
        extra.update(schemas.body(body))
    return {
        "tags": ["admin"],
        "responses": schemas.problems(*sorted({401, *codes})),
        "openapi_extra": extra,
    }


def _honest_errors(spec: dict[str, Any]) -> None:
    """FastAPI documents a 422 HTTPValidationError for every route with parameters; this
    app answers a bad query or path with a 400 problem (the RequestValidationError
    handler), so say that instead."""
    for ops in spec.get("paths", {}).values():
        for op in ops.values():
            responses = op.get("responses", {})
            if "HTTPValidationError" in json.dumps(responses.get("422", {})):
                del responses["422"]
                responses.setdefault("400", schemas.problems(400)[400])
    spec_schemas = spec.get("components", {}).get("schemas", {})
    if "HTTPValidationError" not in json.dumps(spec.get("paths", {})):
        spec_schemas.pop("HTTPValidationError", None)
        spec_schemas.pop("ValidationError", None)


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def terminal_openapi(app: FastAPI) -> dict[str, Any]:
    """The terminal-facing part of the app's OpenAPI document: the routes tagged
    `terminal` and the schemas they reference (docs/openapi-terminal.json)."""
    spec = copy.deepcopy(app.openapi())
    paths: dict[str, Any] = {}
    for path, ops in spec["paths"].items():
        kept = {m: op for m, op in ops.items() if "terminal" in op.get("tags", ())}
        if kept:
            paths[path] = kept
    all_schemas = spec.get("components", {}).get("schemas", {})
    used: set[str] = set()
    _refs(paths, used)
    pending = list(used)
    while pending:  # schemas referencing others
        found: set[str] = set()
        _refs(all_schemas.get(pending.pop(), {}), found)
        pending.extend(found - used)
        used |= found
    return {
        "openapi": spec["openapi"],
        "info": {
            "title": "edge-redeem sync protocol: terminal-facing endpoints",
            "version": spec["info"]["version"],
            "description": "What a terminal says to a central and hears back; signing, "
            "ordering, idempotency and hashing are in docs/sync-protocol.md. Generated by "
            "`redeem-central openapi`.",
        },
        "paths": paths,
        "components": {"schemas": {name: all_schemas[name] for name in sorted(used)}},
    }


def _json(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise Problem(400, "malformed-json", "the body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise Problem(400, "bad-request", "the body must be a JSON object")
    return doc


__all__ = ["TRUST_ANCHOR", "create_app", "terminal_openapi"]
