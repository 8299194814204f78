"""The console's campaigns: the list with status and figures (archived ones only when asked
for), and pause, resume, end and archive (permission campaigns.write, each audited with
the viewer as actor)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from coupons.i18n import N_
from sync.central import campaigns, users
from sync.central.campaigns import CampaignSummary
from sync.central.console import pages
from sync.central.console.campaign_form import refused_attempt
from sync.central.console.session import Viewer
from sync.central.context import services
from sync.central.store import Central, CentralError

router = APIRouter(include_in_schema=False)
STEPS = ("pause", "resume", "end", "archive")
NOT_ENDED = N_("Only an ended campaign can be archived: end it first.")


@router.get("/campaigns")
async def campaigns_page(request: Request) -> Response:
    viewer = await pages.viewer_or_login(request)
    if isinstance(viewer, Response):
        return viewer
    return await _list(request, viewer, 200, None)


def _listed(central: Central, archived: bool) -> tuple[list[CampaignSummary], int, set[str]]:
    """The campaigns shown, how many archived ones are hidden, and which may be archived."""
    found = central.list_campaigns()
    shown = found if archived else [s for s in found if s.status != campaigns.ARCHIVED]
    now = central.now()
    archivable = {s.campaign.id for s in shown if campaigns.can_archive(s.status, s.campaign, now)}
    return shown, len(found) - len(shown), archivable


async def _list(request: Request, viewer: Viewer, status: int, error: str | None) -> Response:
    svc = services(request)
    archived = request.query_params.get("archived") == "1"
    shown, hidden, archivable = await svc.db(_listed, svc.central, archived)
    return await pages.render(
        request, "campaigns.html", viewer, status,
        campaigns=shown, hidden=hidden, archived=archived, archivable=archivable, error=error,
    )  # fmt: skip


def _step(central: Central, actor: str, cid: str, step: str) -> CampaignSummary:
    act = {
        "pause": central.pause_campaign,
        "resume": central.resume_campaign,
        "end": central.end_campaign,
        "archive": central.archive_campaign,
    }[step]
    with central.writing():
        before = central.campaign_summary(cid)
        if (
            step == "archive"
            and not campaigns.can_archive(before.status, before.campaign, central.now())
            and before.status != campaigns.ARCHIVED
        ):
            raise CentralError(NOT_ENDED)
        after = act(cid)
        users.audit(central, actor, f"campaign.{step}", cid, before.to_dict(), after.to_dict())
    return after


@router.post("/campaigns/{cid}/{step}")
async def campaign_step(request: Request, cid: str, step: str) -> Response:
    checked = await pages.acting(request, "campaigns.write")
    if isinstance(checked, Response):
        return checked
    viewer, _ = checked
    if step not in STEPS:
        return await pages.message(request, viewer, 404, pages.NOT_FOUND, "not-found")
    svc = services(request)
    try:
        await svc.db(_step, svc.central, viewer.actor, cid, step)
    except CentralError as exc:
        # The lifecycle's own sentence (e.g. an ended campaign cannot resume), at the list;
        # the attempt is audited.
        refused = {"": str(exc)}
        await svc.db(
            refused_attempt, svc.central, viewer.actor, f"campaign.{step}", cid, None, refused
        )
        return await _list(request, viewer, 409, str(exc))
    return RedirectResponse("/campaigns", status_code=303)
