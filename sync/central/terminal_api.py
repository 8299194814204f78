"""The central's terminal-facing routes (/v1, signed with device keys) and its readiness probe."""

from __future__ import annotations

import json

import peewee as pw
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from coupons.ledger import store_scope
from coupons.problem import MEDIA_TYPE, Problem
from coupons.rules import InputError
from sync import protocol
from sync.central import flags, metrics, schemas, terminals
from sync.central.context import Svc, json_object
from sync.central.delivery import Ahead, LedgerAnswer, NotReady
from sync.central.ingest import BatchInvalid, flag_refused_batch, ingest, parse_batch
from sync.central.models import TerminalRow
from sync.central.problems import ProblemError, problem

# Unauthenticated: the root public key, so `redeem enroll` can check the installer's
# fingerprint before it spends the one-time code (belongs in sync/protocol.py).
TRUST_ANCHOR = protocol.TRUST_ANCHOR

router = APIRouter()


@router.post(
    protocol.ENROLL,
    tags=["terminal"],
    summary="Enroll a terminal with a one-time code and its device key",
    response_model=schemas.EnrollReply,
    responses=schemas.problems(400, 403, 413),
    openapi_extra=schemas.body("EnrollRequest"),
)
async def enroll(request: Request, svc: Svc) -> Response:
    doc = json_object(await request.body())
    code, key = doc.get("code"), doc.get("device_key")
    if not isinstance(code, str) or not 1 <= len(code) <= 64:
        raise ProblemError(400, "bad-request", "'code' must be the enrollment code")
    try:
        device_key = bytes.fromhex(key) if isinstance(key, str) else b""
    except ValueError:
        device_key = b""
    if len(device_key) != 32:
        raise ProblemError(400, "bad-request", "'device_key' must be 64 hex digits (Ed25519)")
    try:
        got = await svc.db(terminals.enroll, svc.central, code, device_key)
    except terminals.EnrollRefused as exc:
        raise ProblemError(403, "enroll-code", str(exc)) from None
    anchor = await run_in_threadpool(lambda: svc.central.anchor)
    return JSONResponse(
        {
            "terminal": got.terminal,
            "store": got.store,
            "trust_anchor": json.loads(anchor.to_json()),
            "fingerprint": anchor.fingerprint,
        }
    )


@router.get(
    TRUST_ANCHOR,
    tags=["terminal"],
    summary="The root public key terminals trust, to check before spending a code",
    response_model=schemas.TrustAnchorReply,
)
async def trust_anchor(svc: Svc) -> Response:
    # Public by nature (terminals hold it; the installer's fingerprint is printed from
    # it): `redeem enroll` compares it before spending the one-time code.
    anchor = await run_in_threadpool(lambda: svc.central.anchor)
    return JSONResponse(
        {"trust_anchor": json.loads(anchor.to_json()), "fingerprint": anchor.fingerprint}
    )


@router.get(
    protocol.LEDGER,
    tags=["terminal"],
    summary="The ledger after a version: deltas, or a snapshot when far behind",
    responses=schemas.LEDGER_RESPONSES,
    openapi_extra=schemas.signed(),
)
async def get_ledger(
    request: Request,
    svc: Svc,
    since: int = Query(0, ge=0, le=2**31 - 1, description="the version the terminal has"),
    scope: str | None = Query(
        None, max_length=300, description="the scope asked for: store:<the terminal's store>"
    ),
) -> Response:
    row, _ = await svc.signed(request)
    own = store_scope(row.store)
    if scope is not None and scope != own:
        raise ProblemError(
            403, "wrong-scope", f"this terminal belongs to {own} and may not read {scope}"
        )

    def work() -> LedgerAnswer:
        if row.ledger_version != since:
            TerminalRow.update(ledger_version=since).where(TerminalRow.id == row.id).execute()
        return svc.delivery.answer(own, since, request.headers)

    try:
        ans = await svc.db(work)
    except Ahead as exc:
        metrics.count_pull(409, None)
        raise ProblemError(409, "ledger-ahead", str(exc)) from None
    except NotReady as exc:
        metrics.count_pull(503, None)
        return problem(503, "ledger-not-ready", str(exc), request.url.path, **{"Retry-After": "2"})
    metrics.count_pull(ans.status, ans.headers.get("X-Ledger-Kind"))
    if ans.status == 416:
        return problem(416, "range", "range not satisfiable", request.url.path, **ans.headers)
    media = ans.headers.pop("Content-Type", None)
    return Response(ans.body, status_code=ans.status, headers=ans.headers, media_type=media)


@router.post(
    protocol.JOURNAL,
    tags=["terminal"],
    summary="Upload journal entries (idempotent, keyed by seq)",
    response_model=schemas.JournalReply,
    responses=schemas.problems(400, 401, 403, 413, 422),
    openapi_extra={**schemas.signed(), **schemas.body("JournalBatch")},
)
async def post_journal(request: Request, svc: Svc) -> Response:
    row, body = await svc.signed(request)
    try:
        entries = parse_batch(body)
    except BatchInvalid as exc:
        await svc.db(flag_refused_batch, svc.central, row.id, body, exc)
        raise
    reply = await svc.db(ingest, svc.central, row.id, entries)
    return JSONResponse(reply.to_dict())


@router.get(
    protocol.FLAGS,
    tags=["terminal"],
    summary="Central decisions on the fraud flags of the terminal's store",
    response_model=schemas.FlagDecisions,
    responses=schemas.problems(400, 401, 403),
    openapi_extra=schemas.signed(),
)
async def get_flags(
    request: Request,
    svc: Svc,
    since: int = Query(0, ge=0, le=2**62, description="the last decision id seen"),
) -> Response:
    row, _ = await svc.signed(request)
    answer = await svc.db(flags.updates_for_store, row.store, since)
    metrics.count_round()  # the last request of a till's round (sync/client.py)
    return JSONResponse(answer)


@router.post(
    protocol.CHECK,
    tags=["terminal"],
    summary="Check a coupon online with the terminal's own rules (records nothing)",
    responses=schemas.problems(400, 401, 403, 413),
    openapi_extra=schemas.signed(),
)
async def post_check(request: Request, svc: Svc) -> Response:
    row, body = await svc.signed(request)
    try:
        answer = await svc.db(lambda: svc.online.check(row.store, json.loads(body)))
    except RecursionError:
        return problem(400, "bad-check", "the body is nested too deeply", request.url.path)
    except (ValueError, InputError) as exc:
        return problem(400, "bad-check", str(exc), request.url.path)
    return JSONResponse(answer)


@router.get(
    "/healthz",
    tags=["ops"],
    summary="Readiness: the database answers and the central can sign and publish",
    responses={503: {"description": "not ready; `problems` says why"}},
)
async def health(svc: Svc) -> Response:
    def work() -> tuple[int, list[str]]:
        latest = svc.central.latest()
        return (latest.version if latest else 0), svc.central.health_problems()

    try:
        version, problems = await svc.db(work)
    except pw.PeeweeException as exc:
        version, problems = 0, [f"the database does not answer: {exc}".strip()]
    if not problems:
        return JSONResponse({"ok": True, "version": version})
    # A central that cannot sign still answers terminals from what it published, but no
    # new version can be made: monitoring must see it as not ready.
    doc = Problem(
        503,
        "not-ready",
        "; ".join(problems),
        instance="/healthz",
        extra={"ok": False, "version": version, "problems": problems},
    )
    return JSONResponse(doc.to_dict(), status_code=503, media_type=MEDIA_TYPE)


__all__ = ["TRUST_ANCHOR", "router"]
