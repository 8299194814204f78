"""The head-office console: server-rendered pages on the central itself (docs/central.md,
"The console"), one router per page group, templates and assets in this package."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from sync.central.console import (
    audit_pages,
    auth,
    campaign_form,
    campaign_pages,
    campaigns,
    dashboard,
    flag_pages,
    fleet_pages,
    issuing_pages,
    report_pages,
)

STATIC = Path(__file__).parent / "static"
ROUTERS = (
    auth.router,
    dashboard.router,
    campaign_form.router,  # before campaigns: /campaigns/new is not a campaign's id
    campaign_pages.router,  # before campaigns: /campaigns/{id}/edit is not a lifecycle step
    campaigns.router,
    flag_pages.router,
    fleet_pages.router,
    report_pages.router,
    audit_pages.router,
    issuing_pages.router,
)


def install(app: FastAPI) -> None:
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="console-static")


__all__ = ["install"]
