"""The console's campaigns: the list with status and figures, and pause, resume and end
(permission campaigns.write, each audited with the viewer as actor)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from sync.central import users
from sync.central.campaigns import CampaignSummary
from sync.central.console import pages
from sync.central.console.session import Viewer
from sync.central.context import services
from sync.central.store import Central, CentralError

router = APIRouter(include_in_schema=False)
STEPS = ("pause", "resume", "end")


@router.get("/campaigns")
async def campaigns_page(request: Request) -> Response:
    viewer = await pages.viewer_or_login(request)
    if isinstance(viewer, Response):
        return viewer
    return await _list(request, viewer, 200, None)


async def _list(request: Request, viewer: Viewer, status: int, error: str | None) -> Response:
    svc = services(request)
    found = await svc.db(svc.central.list_campaigns)
    return await pages.render(
        request, "campaigns.html", viewer, status, campaigns=found, error=error
    )


def _step(central: Central, actor: str, cid: str, step: str) -> CampaignSummary:
    act = {
        "pause": central.pause_campaign,
        "resume": central.resume_campaign,
        "end": central.end_campaign,
    }[step]
    with central.writing():
        before = central.campaign_summary(cid).to_dict()
        after = act(cid)
        users.audit(central, actor, f"campaign.{step}", cid, before, after.to_dict())
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
        # The lifecycle's own sentence (e.g. an ended campaign cannot resume), at the list.
        return await _list(request, viewer, 409, str(exc))
    return RedirectResponse("/campaigns", status_code=303)
