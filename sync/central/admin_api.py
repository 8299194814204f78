"""The central's admin routes (/admin/v1, bearer tokens): flags, terminals, codes, reports."""

from __future__ import annotations

from enum import Enum
from typing import TypedDict

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from sync import protocol
from sync.central import flags, report, schemas, terminals
from sync.central.context import Svc, json_object
from sync.central.problems import ProblemError
from sync.central.store import CentralError

# Each route calls svc.require_admin itself rather than the router carrying it as a
# dependency: FastAPI runs dependencies before it checks parameters, and a bad query has
# always been a 400 whatever the token.
router = APIRouter(prefix=protocol.ADMIN_PREFIX)


class AdminDoc(TypedDict):
    tags: list[str | Enum]
    responses: dict[int | str, dict[str, object]]
    openapi_extra: dict[str, object]


def admin_doc(*codes: int, body: str | None = None) -> AdminDoc:
    """Route arguments of an admin endpoint: its tag, the bearer scheme, its problems."""
    extra: dict[str, object] = {"security": [{schemas.ADMIN_SCHEME: []}]}
    if body:
        extra.update(schemas.body(body))
    return {
        "tags": ["admin"],
        "responses": schemas.problems(*sorted({401, *codes})),
        "openapi_extra": extra,
    }


@router.get("/flags", summary="List fraud flags", **admin_doc(400))
async def admin_flags(
    request: Request,
    svc: Svc,
    status: str | None = Query(None, pattern="^(open|acknowledged|resolved|deny_listed)$"),
    kind: str | None = Query(None, pattern="^[A-Za-z0-9_.-]{1,64}$"),
    store: str | None = Query(None, pattern="^[A-Za-z0-9_.-]{1,64}$"),
    after: int = Query(0, ge=0, le=2**62),
    limit: int = Query(500, ge=1, le=5000),
) -> Response:
    await svc.require_admin(request)
    items = await svc.db(flags.list_flags, status, kind, store, limit, after)
    return JSONResponse({"flags": items})


@router.post(
    "/flags/{flag_id}",
    summary="Decide a flag: acknowledged, resolved or deny_listed, with a note",
    **admin_doc(400, 404, body="FlagDecision"),
)
async def admin_decide(request: Request, svc: Svc, flag_id: int) -> Response:
    await svc.require_admin(request)
    doc = json_object(await request.body())
    status, note = doc.get("status"), doc.get("note")
    if not isinstance(status, str):
        raise ProblemError(400, "bad-request", "'status' is required")
    if note is not None and (not isinstance(note, str) or len(note) > 2000 or "\x00" in note):
        raise ProblemError(400, "bad-request", "'note' must be text of at most 2000 characters")
    if not 0 < flag_id < 2**62:
        raise ProblemError(404, "not-found", f"no flag {flag_id}")
    try:
        return JSONResponse(await svc.db(flags.decide, svc.central, flag_id, status, note))
    except LookupError as exc:
        raise ProblemError(404, "not-found", str(exc)) from None
    except CentralError as exc:
        raise ProblemError(400, "bad-request", str(exc)) from None


@router.get("/terminals", summary="Enrolled terminals", **admin_doc())
async def admin_terminals(request: Request, svc: Svc) -> Response:
    await svc.require_admin(request)
    return JSONResponse({"terminals": await svc.db(terminals.list_terminals, svc.central)})


@router.post("/terminals/{terminal}/revoke", summary="Revoke a terminal", **admin_doc(404))
async def admin_revoke(request: Request, svc: Svc, terminal: str) -> Response:
    await svc.require_admin(request)
    if not terminals.TERMINAL_RE.fullmatch(terminal):
        raise ProblemError(404, "not-found", f"no terminal {terminal}")
    try:
        await svc.db(terminals.revoke_terminal, svc.central, terminal)
    except CentralError as exc:
        raise ProblemError(404, "not-found", str(exc)) from None
    return JSONResponse({"revoked": terminal})


@router.post(
    "/enroll-codes",
    summary="Make a one-time enrollment code for a store",
    **admin_doc(400, body="EnrollCodeRequest"),
)
async def admin_enroll_code(request: Request, svc: Svc) -> Response:
    await svc.require_admin(request)
    doc = json_object(await request.body())
    store, ttl = doc.get("store"), doc.get("ttl", terminals.DEFAULT_TTL_S)
    if not isinstance(store, str) or type(ttl) is not int:
        raise ProblemError(400, "bad-request", "'store' (text) and 'ttl' (seconds) expected")
    try:
        code, expires = await svc.db(terminals.new_enroll_code, svc.central, store, ttl)
    except CentralError as exc:
        raise ProblemError(400, "bad-request", str(exc)) from None
    return JSONResponse({"code": code, "store": store, "expires_at": expires})


@router.get("/report", summary="The report `redeem-central report` prints", **admin_doc())
async def admin_report(request: Request, svc: Svc) -> Response:
    await svc.require_admin(request)
    return JSONResponse(await svc.db(report.build, svc.central))


@router.post(
    "/publish",
    summary="Publish what changed now, without waiting for the publisher's next tick",
    **admin_doc(),
)
async def admin_publish(request: Request, svc: Svc) -> Response:
    """An operator's "publish now": wakes this instance's publisher thread, which publishes
    at once if it leads (else the leading instance keeps its interval). The request itself
    signs nothing: requests never publish."""
    await svc.require_admin(request)
    woken = svc.publisher is not None and svc.publisher.thread is not None
    if woken and svc.publisher is not None:
        svc.publisher.wake()
    latest = await svc.db(svc.central.latest)
    return JSONResponse({"woken": woken, "version": latest.version if latest else 0})


__all__ = ["admin_doc", "router"]
