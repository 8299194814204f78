"""The console's overview pages: the dashboard at / (open flags by kind, campaigns,
quiet terminals); the fleet's lines (fleet, used by fleet_pages.py too)."""

from __future__ import annotations

from collections import Counter
from typing import TypedDict

from fastapi import APIRouter, Request
from fastapi.responses import Response

from sync.central import flags, report, terminals
from sync.central.campaigns import ARCHIVED, CampaignSummary
from sync.central.console import pages
from sync.central.context import services
from sync.central.store import Central

router = APIRouter(include_in_schema=False)


class TerminalLine(TypedDict):
    doc: terminals.TerminalDoc
    state: str  # revoked | quiet | in service


def _state(t: terminals.TerminalDoc, now_s: int) -> str:
    if t["revoked"]:
        return "revoked"
    last = t["last_upload"]
    # As the report counts quiet: no journal batch stored for STALE_AFTER_S.
    return "quiet" if last is None or last < now_s - report.STALE_AFTER_S else "in service"


def fleet(central: Central) -> list[TerminalLine]:
    now_s = int(central.now())
    return [{"doc": t, "state": _state(t, now_s)} for t in terminals.list_terminals(central)]


class Overview(TypedDict):
    open_flags: list[tuple[str, int]]
    campaigns: list[CampaignSummary]
    quiet: list[TerminalLine]


def overview(central: Central) -> Overview:
    kinds = Counter(f["kind"] for f in flags.list_flags(status="open", limit=100_000))
    return {
        "open_flags": sorted(kinds.items()),
        "campaigns": [s for s in central.list_campaigns() if s.status != ARCHIVED],
        "quiet": [t for t in fleet(central) if t["state"] == "quiet"],
    }


@router.get("/")
async def dashboard(request: Request) -> Response:
    viewer = await pages.viewer_or_login(request)
    if isinstance(viewer, Response):
        return viewer
    svc = services(request)
    found = await svc.db(overview, svc.central)
    return await pages.render(request, "dashboard.html", viewer, **found)
