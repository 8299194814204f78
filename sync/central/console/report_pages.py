"""The console's report (docs/central.md, "The console"): redemptions, discount and
redemption rate by day, store and campaign over a range of days, refusals by failure
category, bar charts drawn on the server, and every table as a formula-safe CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence

from fastapi import APIRouter, Request
from fastapi.responses import Response

from coupons import csvsafe
from coupons.i18n import N_, translate
from sync.central.console import charts, pages, report_data
from sync.central.console.report_data import DayRange, Figures, Line, RangeError
from sync.central.console.session import Viewer
from sync.central.context import services

router = APIRouter(include_in_schema=False)

UI_STRINGS = (
    N_("Reports"),
    N_("From"),
    N_("To"),
    N_("Show"),
    N_("Days in UTC, by the central's clock; the last 7 days unless you choose."),
    N_("Redemptions by day"),
    N_("Redemptions by store"),
    N_("By day"),
    N_("By store"),
    N_("By campaign"),
    N_("Day"),
    N_("Discount"),
    N_("Currency"),
    N_("Coupons redeemed"),
    N_("Issued"),
    N_("Redemption rate"),
    N_("Redemption rate to date"),
    N_("Refusals by category"),
    N_("Refusals"),
    N_("Reason code"),
    N_("No refusals."),
    N_("No redemptions in this range."),
    N_("Download CSV"),
    N_("Total"),
    N_("Rate by day: coupons redeemed up to that day / coupons issued up to that day."),
    N_("Rate by store: coupons redeemed there / coupons issued in the campaigns that cover it."),
)
BAD_TABLE = N_("No such table: ask for day, store, campaign or refusals.")

LINE_COLUMNS = (
    "currency",
    "redemptions",
    "discount_minor",
    "discount",
    "coupons_redeemed",
    "issued",
    "redemption_rate",
)


def _line_rows(first: str, lines: Sequence[Line], named: bool = False) -> list[list[object]]:
    head: list[object] = [first, *(["name"] if named else []), *LINE_COLUMNS]
    rows = [head]
    for x in lines:
        rows.append(
            [
                x["key"],
                *([x["name"]] if named else []),
                x["currency"],
                x["redemptions"],
                x["discount_minor"],
                x["discount_text"] if x["currency"] else "",
                x["coupons_redeemed"],
                x["issued"],
                x["rate"],
            ]
        )
    return rows


def _refusal_rows(found: Figures) -> list[list[object]]:
    rows: list[list[object]] = [["category", "category_label", "reason", "count"]]
    for g in found["refusals"]:
        rows += [[g["category"], g["label"], code, n] for code, n in g["reasons"]]
    return rows


TABLES: dict[str, Callable[[Figures], list[list[object]]]] = {
    "day": lambda f: _line_rows("day", f["by_day"]),
    "store": lambda f: _line_rows("store", f["by_store"]),
    "campaign": lambda f: _line_rows("campaign", f["by_campaign"], named=True),
    "refusals": _refusal_rows,
}


def csv_text(rows: Iterable[Sequence[object]]) -> str:
    """Rows as CSV, every cell through csvsafe (a name like =cmd opens as text)."""
    buf = io.StringIO()
    out = csv.writer(buf)
    for row in rows:
        out.writerow([csvsafe.cell(v) for v in row])
    return buf.getvalue()


def _charts(found: Figures, lang: str) -> dict[str, object]:
    per_day: dict[str, int] = {}
    for line in found["by_day"]:
        per_day[line["key"]] = per_day.get(line["key"], 0) + line["redemptions"]
    per_store: dict[str, int] = {}
    for line in found["by_store"]:
        per_store[line["key"]] = per_store.get(line["key"], 0) + line["redemptions"]
    word = translate("Redemptions", lang)
    return {
        "day_chart": charts.bars(
            list(per_day.values()),
            [d[5:] for d in per_day],  # MM-DD under the bars; the tables give the year
            translate("Redemptions by day", lang),
            word,
        ),
        "store_chart": charts.bars(
            list(per_store.values()),
            list(per_store),
            translate("Redemptions by store", lang),
            word,
        )
        if per_store
        else None,
    }


async def _range(request: Request) -> DayRange | str:
    q = request.query_params
    now = services(request).central.now()
    try:
        return report_data.parse_range(q.get("from"), q.get("to"), now)
    except RangeError as exc:
        return str(exc)


@router.get("/report")
async def report_page(request: Request) -> Response:
    viewer = await pages.viewer_or_login(request)
    if isinstance(viewer, Response):
        return viewer
    asked = await _range(request)
    q = request.query_params
    if isinstance(asked, str):  # the message at the form; the days as typed, no figures
        return await _render(request, viewer, 400, q.get("from"), q.get("to"), error=asked)
    svc = services(request)
    found = await svc.db(report_data.figures, asked)
    return await _render(
        request,
        viewer,
        200,
        asked.first.isoformat(),
        asked.last.isoformat(),
        found=found,
        **_charts(found, pages.lang_of(request)),
    )


async def _render(
    request: Request,
    viewer: Viewer,
    status: int,
    first: str | None,
    last: str | None,
    **ctx: object,
) -> Response:
    return await pages.render(
        request, "report.html", viewer, status, first=first or "", last=last or "", **ctx
    )


@router.get("/report.csv")
async def report_csv(request: Request) -> Response:
    viewer = await pages.viewer_or_login(request)
    if isinstance(viewer, Response):
        return viewer
    table = request.query_params.get("table", "")
    if table not in TABLES:
        return await pages.message(request, viewer, 400, BAD_TABLE, "bad-table")
    asked = await _range(request)
    if isinstance(asked, str):
        return await pages.message(request, viewer, 400, asked, "bad-range")
    svc = services(request)
    found = await svc.db(report_data.figures, asked)
    name = f"report-{table}-{asked.first.isoformat()}-to-{asked.last.isoformat()}.csv"
    return Response(
        csv_text(TABLES[table](found)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


__all__ = ["TABLES", "UI_STRINGS", "csv_text", "router"]
