"""The console's fraud desk: the queue of flags with its filters, a flag's evidence at
/flags/{id}, and acknowledge, resolve or deny-list (permission flags.decide, each audited
with the viewer as actor)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from sync.central import flags, users
from sync.central.console import flag_evidence, pages
from sync.central.console.session import Viewer
from sync.central.context import services
from sync.central.models import FlagRow
from sync.central.store import Central, CentralError

router = APIRouter(include_in_schema=False)
ACTIONS = {"acknowledge": "acknowledged", "resolve": "resolved", "deny-list": "deny_listed"}
MAX_NOTE_CHARS = 2000  # as the admin API


@router.get("/flags")
async def flags_page(request: Request) -> Response:
    viewer = await pages.viewer_or_login(request)
    if isinstance(viewer, Response):
        return viewer
    return await _list(request, viewer, 200, None)


async def _list(request: Request, viewer: Viewer, status: int, error: str | None) -> Response:
    params = dict(request.query_params)
    try:
        wanted = flag_evidence.parse_filter(params)
    except flag_evidence.FilterError as exc:
        # The filter named at the top, the default queue under it: nothing is guessed.
        wanted, status, error = flag_evidence.QueueFilter(), 400, str(exc)
    svc = services(request)
    found = await svc.db(flag_evidence.queue, wanted, int(svc.central.now()))
    return await pages.render(
        request,
        "flags.html",
        viewer,
        status,
        flags=found,
        state=wanted.state,
        states=flags.STATUSES,
        filter=wanted,
        asked=params,
        error=error,
    )


@router.get("/flags/{flag_id}")
async def flag_page(request: Request, flag_id: int) -> Response:
    viewer = await pages.viewer_or_login(request)
    if isinstance(viewer, Response):
        return viewer
    return await _evidence_page(request, viewer, flag_id, 200, None)


async def _evidence_page(
    request: Request, viewer: Viewer, flag_id: int, status: int, error: str | None
) -> Response:
    svc = services(request)
    found = await svc.db(flag_evidence.evidence, flag_id) if 0 < flag_id < 2**62 else None
    if found is None:
        return await pages.message(request, viewer, 404, pages.NOT_FOUND, "not-found")
    return await pages.render(request, "flag.html", viewer, status, error=error, **found)


def _decide(central: Central, actor: str, flag_id: int, status: str, note: str | None) -> None:
    with central.writing():
        row = FlagRow.get_or_none(FlagRow.id == flag_id)
        before = flags.flag_doc(row) if row is not None else None
        after = flags.decide(central, flag_id, status, note)
        users.audit(central, actor, "flag.decide", f"flag:{flag_id}", before, after)


@router.post("/flags/{flag_id}/{action}")
async def flag_action(request: Request, flag_id: int, action: str) -> Response:
    checked = await pages.acting(request, "flags.decide")
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    if action not in ACTIONS or not 0 < flag_id < 2**62:
        return await pages.message(request, viewer, 404, pages.NOT_FOUND, "not-found")
    note = form.get("note")
    text = note.strip()[:MAX_NOTE_CHARS].replace("\x00", "") if isinstance(note, str) else ""
    svc = services(request)
    try:
        await svc.db(_decide, svc.central, viewer.actor, flag_id, ACTIONS[action], text or None)
    except LookupError:
        return await pages.message(request, viewer, 404, pages.NOT_FOUND, "not-found")
    except CentralError as exc:
        # e.g. deny-listing a flag about nothing a ledger can refuse: the reason, where the
        # button was (the flag's own page or the queue).
        if form.get("back") == "flag":
            return await _evidence_page(request, viewer, flag_id, 409, str(exc))
        return await _list(request, viewer, 409, str(exc))
    target = f"/flags/{flag_id}" if form.get("back") == "flag" else "/flags"
    return RedirectResponse(target, status_code=303)
