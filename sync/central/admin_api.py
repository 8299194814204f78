"""The central's admin routes (/admin/v1, bearer tokens with a role): flags, terminals,
codes, reports, the audit log. Each route names the permission it needs (users.PERMISSIONS)
and every change it makes is written to the audit log in the same transaction."""

from __future__ import annotations

from enum import Enum
from typing import TypedDict

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from sync import protocol
from sync.central import flags, report, schemas, terminals, users
from sync.central.context import Svc, json_object
from sync.central.models import FlagRow, TerminalRow
from sync.central.problems import ProblemError
from sync.central.store import Central, CentralError
from sync.central.terminals import Caller

# Each route calls svc.require itself rather than the router carrying it as a
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
        "responses": schemas.problems(*sorted({401, 403, *codes})),
        "openapi_extra": extra,
    }


@router.get("/flags", summary="List fraud flags", **admin_doc(400))
async def admin_flags(
    request: Request,
    svc: Svc,
    status: str | None = Query(None, pattern="^(open|acknowledged|resolved|revoked|deny_listed)$"),
    kind: str | None = Query(None, pattern="^[A-Za-z0-9_.-]{1,64}$"),
    store: str | None = Query(None, pattern="^[A-Za-z0-9_.-]{1,64}$"),
    after: int = Query(0, ge=0, le=2**62),
    limit: int = Query(500, ge=1, le=5000),
) -> Response:
    await svc.require(request, "read")
    items = await svc.db(flags.list_flags, status, kind, store, limit, after)
    return JSONResponse({"flags": items})


@router.post(
    "/flags/{flag_id}",
    summary="Decide a flag: acknowledged, resolved, revoked or deny_listed, with a note",
    **admin_doc(400, 404, body="FlagDecision"),
)
async def admin_decide(request: Request, svc: Svc, flag_id: int) -> Response:
    caller = await svc.require(request, "flags.decide")
    doc = json_object(await request.body())
    status, note = doc.get("status"), doc.get("note")
    if not isinstance(status, str):
        raise ProblemError(400, "bad-request", "'status' is required")
    if note is not None and (not isinstance(note, str) or len(note) > 2000 or "\x00" in note):
        raise ProblemError(400, "bad-request", "'note' must be text of at most 2000 characters")
    if not 0 < flag_id < 2**62:
        raise ProblemError(404, "not-found", f"no flag {flag_id}")
    try:
        decided = await svc.db(_decide, svc.central, caller, flag_id, status, note)
    except LookupError as exc:
        raise ProblemError(404, "not-found", str(exc)) from None
    except CentralError as exc:
        raise ProblemError(400, "bad-request", str(exc)) from None
    return JSONResponse(decided)


def _decide(
    central: Central, caller: Caller, flag_id: int, status: str, note: str | None
) -> flags.FlagDoc:
    with central.writing():
        row = FlagRow.get_or_none(FlagRow.id == flag_id)
        before = flags.flag_doc(row) if row is not None else None
        after = flags.decide(central, flag_id, status, note)
        users.audit(central, caller.actor, "flag.decide", f"flag:{flag_id}", before, after)
    return after


@router.get("/terminals", summary="Enrolled terminals", **admin_doc())
async def admin_terminals(request: Request, svc: Svc) -> Response:
    await svc.require(request, "read")
    return JSONResponse({"terminals": await svc.db(terminals.list_terminals, svc.central)})


@router.post("/terminals/{terminal}/revoke", summary="Revoke a terminal", **admin_doc(404))
async def admin_revoke(request: Request, svc: Svc, terminal: str) -> Response:
    caller = await svc.require(request, "terminals.manage")
    if not terminals.TERMINAL_RE.fullmatch(terminal):
        raise ProblemError(404, "not-found", f"no terminal {terminal}")
    try:
        await svc.db(_revoke_terminal, svc.central, caller, terminal)
    except CentralError as exc:
        raise ProblemError(404, "not-found", str(exc)) from None
    return JSONResponse({"revoked": terminal})


def _revoke_terminal(central: Central, caller: Caller, terminal: str) -> None:
    with central.writing():
        row = TerminalRow.get_or_none(TerminalRow.id == terminal)
        before = {"revoked": bool(row.revoked)} if row is not None else None
        terminals.revoke_terminal(central, terminal)
        after = {"revoked": True}
        users.audit(central, caller.actor, "terminal.revoke", f"terminal:{terminal}", before, after)


@router.post(
    "/enroll-codes",
    summary="Make a one-time enrollment code for a store",
    **admin_doc(400, body="EnrollCodeRequest"),
)
async def admin_enroll_code(request: Request, svc: Svc) -> Response:
    caller = await svc.require(request, "terminals.manage")
    doc = json_object(await request.body())
    store, ttl = doc.get("store"), doc.get("ttl", terminals.DEFAULT_TTL_S)
    if not isinstance(store, str) or type(ttl) is not int:
        raise ProblemError(400, "bad-request", "'store' (text) and 'ttl' (seconds) expected")
    try:
        code, expires = await svc.db(_enroll_code, svc.central, caller, store, ttl)
    except CentralError as exc:
        raise ProblemError(400, "bad-request", str(exc)) from None
    return JSONResponse({"code": code, "store": store, "expires_at": expires})


def _enroll_code(central: Central, caller: Caller, store: str, ttl: int) -> tuple[str, int]:
    with central.writing():
        code, expires = terminals.new_enroll_code(central, store, ttl)
        # Never the code itself: the log is readable by auditors, the code enrolls a till.
        after = {"store": store, "expires_at": expires}
        users.audit(central, caller.actor, "enroll-code.make", f"store:{store}", None, after)
    return code, expires


@router.get("/report", summary="The report `redeem-central report` prints", **admin_doc())
async def admin_report(request: Request, svc: Svc) -> Response:
    await svc.require(request, "read")
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
    caller = await svc.require(request, "ledger.publish")
    woken = svc.publisher is not None and svc.publisher.thread is not None
    if woken and svc.publisher is not None:
        svc.publisher.wake()
    version = await svc.db(_published, svc.central, caller, woken)
    return JSONResponse({"woken": woken, "version": version})


def _published(central: Central, caller: Caller, woken: bool) -> int:
    latest = central.latest()
    version = int(latest.version) if latest else 0
    after = {"woken": woken, "version": version}
    users.audit(central, caller.actor, "ledger.publish-now", "ledger", None, after)
    return version


@router.get("/audit", summary="The audit log, oldest first", **admin_doc(400))
async def admin_audit(
    request: Request,
    svc: Svc,
    since: int | None = Query(None, ge=0, le=2**62, description="from this epoch second"),
    after: int = Query(0, ge=0, le=2**62, description="entries after this id"),
    limit: int = Query(1000, ge=1, le=5000),
) -> Response:
    await svc.require(request, "audit.read")
    return JSONResponse({"entries": await svc.db(users.audit_log, since, after, limit)})


__all__ = ["admin_doc", "router"]
