"""The console's issuing (issue 14, item 4): the jobs with their progress, a form that starts
one (permission coupons.issue; the job runs in the background, issuing_runner.py), a job's
page whose progress bar polls a fragment (htmx), and its files once done: coupons.csv, the
PDF sheets and one coupon's PNG (permission read; every download is in the audit log, as the
files hold bearer values)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from coupons.i18n import N_
from sync.central import campaigns, issuing, users
from sync.central.console import pages
from sync.central.console.session import Viewer
from sync.central.context import services
from sync.central.issuing_runner import job_dir
from sync.central.keyring import CentralError
from sync.central.models import IssueJob
from sync.central.store import Central

router = APIRouter(include_in_schema=False)

FIELDS = ("campaign", "count", "kind", "pdf")
KIND_NAMES = {"token": N_("QR tokens (signed, checked offline)"), "code": N_("typed codes")}
LABELS = {
    "campaign": N_("Campaign"),
    "count": N_("Number of coupons"),
    "kind": N_("Kind"),
    "pdf": N_("Printable PDF sheets"),
}
# The words the issuing templates show through _(...), marked for the catalog tests.
UI_STRINGS = (
    N_("Issuing"),
    N_("Start issuing"),
    N_("No active campaign"),
    N_("Issuance jobs"),
    N_("Issuance job"),
    N_("All issuance jobs"),
    N_("No issuance jobs yet."),
    N_("Job"),
    N_("Progress"),
    N_("Started by"),
    N_("Created"),
    N_("Finished"),
    N_("Files"),
    N_("Download"),
    N_("One coupon's QR code (PNG)"),
    N_("First coupons:"),
    N_("Rendering the PDF sheets..."),
    N_("queued"),
    N_("running"),
    N_("done"),
    N_("failed"),
)
NO_CAMPAIGN = N_("Choose an active campaign: a paused or ended one issues no coupons.")
BAD_COUNT = N_("The number of coupons must be a whole number from 1 to 10,000,000.")
BAD_KIND = N_("The kind must be QR tokens or typed codes.")
NOT_DONE = N_("This job has not finished: its files are offered once it is done.")
NO_FILE = N_("This file is not on this instance: ask the operator for the job's folder.")
SHEET_RE = re.compile(r"sheets-\d{4}\.pdf")
SERIAL_RE = re.compile(r"[0-9a-f]{16}")
MAX_JOB_ID = 2**62
SAMPLE = 10  # coupons listed on a finished job's page, each with its PNG link
LISTED = 200  # jobs on the list page, newest first


class FieldError(Exception):
    def __init__(self, field: str, text: str) -> None:
        super().__init__(text)
        self.field = field
        self.text = text


def _issuable() -> list[tuple[str, str]]:
    """(id, name) of the campaigns the form offers: the active ones."""
    return [
        (s.campaign.id, s.campaign.name or s.campaign.id)
        for s in campaigns.summaries()
        if s.status == campaigns.ACTIVE
    ]


def _checked(values: Mapping[str, str]) -> tuple[str, int, str, bool]:
    cid = values["campaign"].strip()
    if cid not in {c for c, _ in _issuable()}:
        raise FieldError("campaign", NO_CAMPAIGN)
    text = values["count"].strip().replace(",", "")
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= issuing.COUNT_MAX:
        raise FieldError("count", BAD_COUNT)
    kind = values["kind"]
    if kind not in issuing.KINDS:
        raise FieldError("kind", BAD_KIND)
    return cid, int(text), kind, values["pdf"] in ("1", "on", "yes")


def _start(central: Central, actor: str, values: Mapping[str, str]) -> issuing.JobView:
    """The job, queued, in one transaction with its folder and its audit entry; a refusal
    is audited (an attempted change) and creates nothing."""
    try:
        with central.writing():
            cid, count, kind, pdf = _checked(values)
            job = issuing.create_job(central, cid, count, kind, central.data, actor, pdf=pdf)
            out = job_dir(central, job.id)
            IssueJob.update(out_dir=str(out.resolve())).where(IssueJob.id == job.id).execute()
            job = issuing.get_job(job.id)
            users.audit(central, actor, "issue_job.start", f"campaign:{cid}", None, job.to_dict())
    except (FieldError, CentralError) as exc:
        field = exc.field if isinstance(exc, FieldError) else "campaign"
        refused = {"field": field, "error": str(exc), "form": dict(values)}
        users.audit(central, actor, "refused", "POST /issuing", None, refused)
        if isinstance(exc, FieldError):
            raise
        raise FieldError("campaign", NO_CAMPAIGN) from exc  # e.g. ended since the check
    return job


async def _list(
    request: Request,
    viewer: Viewer,
    status: int,
    values: Mapping[str, str],
    errors: dict[str, str],
) -> Response:
    svc = services(request)
    jobs = await svc.db(issuing.list_jobs)
    offered = await svc.db(_issuable)
    return await pages.render(
        request, "issuing.html", viewer, status,
        jobs=jobs[::-1][:LISTED], campaigns=offered, kinds=KIND_NAMES, labels=LABELS,
        values=values, errors=errors, may_issue=users.allowed(viewer.role, "coupons.issue"),
    )  # fmt: skip


@router.get("/issuing")
async def issuing_page(request: Request) -> Response:
    viewer = await pages.viewer_or_login(request)
    if isinstance(viewer, Response):
        return viewer
    return await _list(request, viewer, 200, {"kind": "token", "pdf": "1"}, {})


@router.post("/issuing")
async def start_job(request: Request) -> Response:
    checked = await pages.acting(request, "coupons.issue")
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    values = {f: str(form.get(f, "")) for f in FIELDS}
    svc = services(request)
    try:
        job = await svc.db(_start, svc.central, viewer.actor, values)
    except FieldError as exc:
        return await _list(request, viewer, 400, values, {exc.field: exc.text})
    runner = getattr(request.app.state, "issuing_runner", None)
    if runner is not None:
        runner.wake()
    return RedirectResponse(f"/issuing/{job.id}", status_code=303)


def _job(job_id: int) -> tuple[issuing.JobView, list[str], list[str]] | None:
    """The job, its sheet files and the first serials, or None when there is no such job."""
    if not 0 < job_id < MAX_JOB_ID:
        return None
    try:
        job = issuing.get_job(job_id)
    except CentralError:
        return None
    out = Path(job.out_dir)
    if job.state != issuing.DONE or not (out / issuing.CSV_NAME).exists():
        return job, [], []
    sheets = sorted(p.name for p in out.glob("sheets-*.pdf"))
    serials: list[str] = []
    with (out / issuing.CSV_NAME).open(encoding="utf-8") as f:
        next(f)
        for line in f:
            serials.append(line.split(",", 1)[0])
            if len(serials) == SAMPLE:
                break
    return job, sheets, serials


async def _job_view(request: Request, template: str, job_id: int) -> Response:
    viewer = await pages.viewer_or_login(request)
    if isinstance(viewer, Response):
        return viewer
    svc = services(request)
    found = await svc.db(_job, job_id)
    if found is None:
        return await pages.message(request, viewer, 404, pages.NOT_FOUND, "not-found")
    job, sheets, serials = found
    return await pages.render(
        request, template, viewer, 200, job=job, sheets=sheets, serials=serials,
        finished=job.state in (issuing.DONE, issuing.FAILED),
    )  # fmt: skip


@router.get("/issuing/{job_id}")
async def job_page(request: Request, job_id: int) -> Response:
    return await _job_view(request, "issue_job.html", job_id)


@router.get("/issuing/{job_id}/progress")
async def job_progress(request: Request, job_id: int) -> Response:
    """The progress fragment the job's page swaps in every second until the job ends."""
    return await _job_view(request, "_issue_progress.html", job_id)


def _download(central: Central, actor: str, job_id: int, name: str) -> Path | str:
    """The path of a finished job's file, with the download on the record; else the
    sentence saying why there is none."""
    found = _job(job_id)
    if found is None:
        return pages.NOT_FOUND
    if found[0].state != issuing.DONE:
        return NOT_DONE
    path = Path(found[0].out_dir) / name
    if not path.is_file():
        return NO_FILE
    users.audit(central, actor, "issue_job.download", f"job:{job_id}", None, {"file": name})
    return path


async def _file(request: Request, job_id: int, name: str, media: str) -> Response:
    viewer = await pages.viewer_or_login(request)
    if isinstance(viewer, Response):
        return viewer
    if not users.allowed(viewer.role, "read"):
        return await pages.message(request, viewer, 403, pages.NOT_ALLOWED, "permission")
    svc = services(request)
    path = await svc.db(_download, svc.central, viewer.actor, job_id, name)
    if isinstance(path, str):
        return await pages.message(request, viewer, 404, path, "not-found")
    return FileResponse(path, media_type=media, filename=f"job-{job_id}-{name}")


@router.get("/issuing/{job_id}/coupons.csv")
async def job_csv(request: Request, job_id: int) -> Response:
    return await _file(request, job_id, issuing.CSV_NAME, "text/csv; charset=utf-8")


@router.get("/issuing/{job_id}/sheets/{name}")
async def job_sheets(request: Request, job_id: int, name: str) -> Response:
    if not SHEET_RE.fullmatch(name):  # a file name, never a path
        viewer = await pages.viewer_or_login(request)
        if isinstance(viewer, Response):
            return viewer
        return await pages.message(request, viewer, 404, pages.NOT_FOUND, "not-found")
    return await _file(request, job_id, name, "application/pdf")


def _png(central: Central, actor: str, job_id: int, serial: str) -> bytes | None:
    found = _job(job_id)
    if found is None or found[0].state != issuing.DONE or not SERIAL_RE.fullmatch(serial):
        return None
    try:
        png = issuing.coupon_png(Path(found[0].out_dir), serial)
    except (CentralError, OSError):
        return None
    target = f"job:{job_id}"
    users.audit(central, actor, "issue_job.download", target, None, {"png": serial})
    return png


@router.get("/issuing/{job_id}/png/{serial}")
async def job_png(request: Request, job_id: int, serial: str) -> Response:
    viewer = await pages.viewer_or_login(request)
    if isinstance(viewer, Response):
        return viewer
    if not users.allowed(viewer.role, "read"):
        return await pages.message(request, viewer, 403, pages.NOT_ALLOWED, "permission")
    svc = services(request)
    png = await svc.db(_png, svc.central, viewer.actor, job_id, serial.strip().lower())
    if png is None:
        return await pages.message(request, viewer, 404, pages.NOT_FOUND, "not-found")
    headers = {"Content-Disposition": f'attachment; filename="coupon-{serial.lower()}.png"'}
    return Response(png, media_type="image/png", headers=headers)


@router.get("/issuing/{job_id}/png")
async def job_png_asked(request: Request, job_id: int) -> Response:
    """The PNG form's target (a GET form cannot build the path itself)."""
    serial = request.query_params.get("serial", "").strip().lower()
    shown = serial if SERIAL_RE.fullmatch(serial) else "-"  # anything else: the 404 page
    return RedirectResponse(f"/issuing/{job_id}/png/{shown}", status_code=303)
