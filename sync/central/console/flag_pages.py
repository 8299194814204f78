"""The console's fraud desk: the queue of flags with its filters, a flag's evidence at
/flags/{id}, and its one-click actions (permission flags.decide, each audited with the
viewer as actor): acknowledge, resolve with a note, revoke the serial, deny-list a customer
or an NFC tag the evidence names."""

from __future__ import annotations

from typing import NamedTuple

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from coupons.i18n import N_
from sync.central import flags, users
from sync.central.console import flag_evidence, pages
from sync.central.console.session import Viewer
from sync.central.context import services
from sync.central.models import FlagRow
from sync.central.store import Central, CentralError

router = APIRouter(include_in_schema=False)


class Action(NamedTuple):
    status: str  # the flag's state after it (flags.STATUSES)
    audit: str  # the audit log's action
    holder: str | None = None  # what the form's `value` names: "customer" or "tag"


ACTIONS = {
    "acknowledge": Action("acknowledged", "flag.decide"),
    "resolve": Action("resolved", "flag.decide"),
    "revoke-serial": Action("revoked", "flag.revoke-serial"),
    "deny-customer": Action("deny_listed", "flag.deny-customer", "customer"),
    "deny-tag": Action("deny_listed", "flag.deny-tag", "tag"),
    # Everything at once (the admin API's deny_listed); older pages posted it.
    "deny-list": Action("deny_listed", "flag.decide"),
}
MAX_NOTE_CHARS = 2000  # as the admin API
MAX_VALUE_CHARS = 200  # a customer reference or a tag UID
NOTE_NEEDED = N_("Write a note to resolve a flag: what was found or done.")
FLAG_STRINGS = (
    N_("Revoke serial"),
    N_("Deny-list customer"),
    N_("Deny-list tag"),
    N_("Deny-list…"),
    N_("Take out of circulation"),
    N_("Tills refuse it from their next ledger."),
    N_("This flag names no coupon serial to revoke."),
    N_("The evidence names no customer or NFC tag to deny-list."),
    N_("NFC tag"),
)


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


def _decide(
    central: Central,
    actor: str,
    flag_id: int,
    action: Action,
    note: str | None,
    value: str | None,
) -> None:
    with central.writing():
        row = FlagRow.get_or_none(FlagRow.id == flag_id)
        before = flags.flag_doc(row) if row is not None else None
        holder = (action.holder, value or "") if action.holder else None
        after = flags.decide(central, flag_id, action.status, note, holder)
        users.audit(central, actor, action.audit, f"flag:{flag_id}", before, after)


def _text(value: object, limit: int) -> str:
    return value.strip()[:limit].replace("\x00", "") if isinstance(value, str) else ""


@router.post("/flags/{flag_id}/{action}")
async def flag_action(request: Request, flag_id: int, action: str) -> Response:
    checked = await pages.acting(request, "flags.decide")
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    if action not in ACTIONS or not 0 < flag_id < 2**62:
        return await pages.message(request, viewer, 404, pages.NOT_FOUND, "not-found")
    back_to_flag = form.get("back") == "flag"
    note = _text(form.get("note"), MAX_NOTE_CHARS)
    if action == "resolve" and not note:
        if back_to_flag:
            return await _evidence_page(request, viewer, flag_id, 400, NOTE_NEEDED)
        return await _list(request, viewer, 400, NOTE_NEEDED)
    value = _text(form.get("value"), MAX_VALUE_CHARS)
    svc = services(request)
    try:
        await svc.db(
            _decide, svc.central, viewer.actor, flag_id, ACTIONS[action], note or None, value
        )
    except LookupError:
        return await pages.message(request, viewer, 404, pages.NOT_FOUND, "not-found")
    except CentralError as exc:
        # e.g. revoking a flag that names no serial: the reason, where the button was (the
        # flag's own page or the queue).
        if back_to_flag:
            return await _evidence_page(request, viewer, flag_id, 409, str(exc))
        return await _list(request, viewer, 409, str(exc))
    target = f"/flags/{flag_id}" if back_to_flag else "/flags"
    return RedirectResponse(target, status_code=303)
