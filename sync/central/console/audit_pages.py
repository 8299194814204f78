"""The console's audit log (permission audit.read): the append-only entries newest first,
a hundred a page, filtered by actor, action and a range of days, each change shown as the
keys it changed; and the same entries, all of them, as a formula-safe CSV."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from coupons.i18n import N_
from sync.central import display, users
from sync.central.console import pages
from sync.central.console.report_data import BACKWARDS, DAY_S, RangeError, epoch_s, parse_day
from sync.central.console.session import Viewer
from sync.central.context import services
from sync.central.models import AuditRow

router = APIRouter(include_in_schema=False)
PAGE = 100
CSV_BATCH = 5000
MAX_SHOWN_CHARS = 120  # a value longer than this is cut on the page (the CSV has it whole)

UI_STRINGS = (
    N_("Audit log"),
    N_("Actor"),
    N_("Action"),
    N_("Target"),
    N_("Change"),
    N_("any"),
    N_("No audit entries match these filters."),
    N_("Page"),
    N_("of"),
    N_("Newer"),
    N_("Older"),
    N_("entries"),
    N_("Every change, newest first; times in UTC by the central's clock."),
)
BAD_PAGE = N_("The page must be a whole number from 1.")
BAD_FILTER = N_("An actor or action has at most 255 characters.")


@dataclass(frozen=True)
class Filters:
    actor: str = ""
    action: str = ""
    first: dt.date | None = None
    last: dt.date | None = None

    def where(self) -> Any:
        cond: Any = AuditRow.id > 0
        if self.actor:
            cond &= AuditRow.actor == self.actor
        if self.action:
            cond &= AuditRow.action == self.action
        if self.first is not None:
            cond &= AuditRow.at >= epoch_s(self.first)
        if self.last is not None:
            cond &= AuditRow.at < epoch_s(self.last) + DAY_S
        return cond

    def query(self) -> dict[str, str]:
        """The filters as query parameters (for the page links and the CSV link)."""
        found = {
            "actor": self.actor,
            "action": self.action,
            "from": self.first.isoformat() if self.first else "",
            "to": self.last.isoformat() if self.last else "",
        }
        return {k: v for k, v in found.items() if v}


def filters(q: Mapping[str, str]) -> Filters:
    """The filters asked for, or RangeError with the sentence for the form."""
    actor, action = q.get("actor", "").strip(), q.get("action", "").strip()
    if len(actor) > 255 or len(action) > 255:
        raise RangeError(BAD_FILTER)
    first, last = parse_day(q.get("from")), parse_day(q.get("to"))
    if first and last and first > last:
        raise RangeError(BACKWARDS)
    return Filters(actor, action, first, last)


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 1] + "…"


class Change(TypedDict):
    key: str
    before: str | None  # None: the key was not there
    after: str | None


def changes(before: object, after: object) -> list[Change]:
    """What an entry changed, key by key: for two documents the keys whose values differ
    (added and removed ones too); otherwise the whole value before and after."""
    if isinstance(before, dict) and isinstance(after, dict):
        keys = sorted(set(before) | set(after))
        return [
            {
                "key": str(k),
                "before": _short(before[k]) if k in before else None,
                "after": _short(after[k]) if k in after else None,
            }
            for k in keys
            if before.get(k, ...) != after.get(k, ...)
        ]
    if before is None and isinstance(after, dict):
        return [{"key": str(k), "before": None, "after": _short(v)} for k, v in after.items()]
    if before is None and after is None:
        return []
    return [
        {
            "key": "",
            "before": None if before is None else _short(before),
            "after": None if after is None else _short(after),
        }
    ]


class Shown(TypedDict):
    doc: users.AuditDoc
    at: str
    changes: list[Change]


def page_of(f: Filters, page: int) -> tuple[list[Shown], int, list[str]]:
    """One page of entries (newest first), how many match, and the actions there are."""
    query = AuditRow.select().where(f.where())
    total = query.count()
    rows = query.order_by(AuditRow.id.desc()).offset((page - 1) * PAGE).limit(PAGE)
    shown: list[Shown] = []
    for row in rows:
        doc = users.audit_doc(row)
        at = display.iso(doc["at"]) or ""
        shown.append({"doc": doc, "at": at, "changes": changes(doc["before"], doc["after"])})
    actions: Any = AuditRow.select(AuditRow.action).distinct().order_by(AuditRow.action)
    return shown, total, [a for (a,) in actions.tuples()]


async def _viewer(request: Request) -> Viewer | Response:
    viewer = await pages.viewer_or_login(request)
    if isinstance(viewer, Response):
        return viewer
    if not users.allowed(viewer.role, "audit.read"):
        # A read refused is not a change: no audit entry (as the admin API).
        return await pages.message(request, viewer, 403, pages.NOT_ALLOWED, "permission")
    return viewer


@router.get("/audit")
async def audit_page(request: Request) -> Response:
    viewer = await _viewer(request)
    if isinstance(viewer, Response):
        return viewer
    q = request.query_params
    try:
        f = filters(q)
    except RangeError as exc:
        return await _render(request, viewer, 400, Filters(), q, error=str(exc))
    raw = q.get("page", "1").strip()
    if not raw.isdigit() or not 1 <= int(raw) <= 10**7:
        return await _render(request, viewer, 400, f, q, error=BAD_PAGE)
    page = int(raw)
    svc = services(request)
    shown, total, actions = await svc.db(page_of, f, page)
    last_page = max(1, -(-total // PAGE))
    return await _render(
        request,
        viewer,
        200,
        f,
        q,
        entries=shown,
        total=total,
        actions=actions,
        page=page,
        last_page=last_page,
    )


async def _render(
    request: Request,
    viewer: Viewer,
    status: int,
    f: Filters,
    q: Mapping[str, str],
    **ctx: object,
) -> Response:
    asked = {k: q.get(k, "") for k in ("actor", "action", "from", "to")}
    return await pages.render(
        request, "audit.html", viewer, status, asked=asked, query=f.query(), **ctx
    )


def _csv(rows: list[list[str | int | float]]) -> str:
    """Rows already made safe (users.audit_csv_row) as CSV text."""
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


def _batch(f: Filters, before_id: int | None) -> list[list[str | int | float]]:
    query = AuditRow.select().where(f.where())
    if before_id is not None:
        query = query.where(AuditRow.id < before_id)
    rows = query.order_by(AuditRow.id.desc()).limit(CSV_BATCH)
    return [users.audit_csv_row(users.audit_doc(r)) for r in rows]


@router.get("/audit.csv")
async def audit_csv(request: Request) -> Response:
    viewer = await _viewer(request)
    if isinstance(viewer, Response):
        return viewer
    try:
        f = filters(request.query_params)
    except RangeError as exc:
        return await pages.message(request, viewer, 400, str(exc), "bad-filter")
    svc = services(request)

    async def body() -> AsyncIterator[str]:
        yield _csv([list(users.AUDIT_COLUMNS)])
        before: int | None = None
        while batch := await svc.db(_batch, f, before):
            yield _csv(batch)
            before = int(batch[-1][0])

    stamp = display.iso(svc.central.now()) or ""
    name = f"audit-{stamp[:10]}.csv"
    return StreamingResponse(
        body(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
