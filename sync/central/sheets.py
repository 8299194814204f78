"""Printable coupon sheets (fpdf2): 3 x 8 coupons per A4 page, each with its QR code (a
PNG from segno), the campaign's name, value, expiry and terms, and the serial. A job's
sheets are rendered on every core, one PDF file per PAGES_PER_FILE pages (fpdf2 cannot
merge documents, and one file per worker is what lets the workers run side by side)."""

from __future__ import annotations

import io
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import segno
from fpdf import FPDF

from coupons.rules import Campaign
from sync.central.campaign_cli import gives

if TYPE_CHECKING:
    from sync.central.issuing import JobView
    from sync.central.store import Central

COLS, ROWS = 3, 8
PER_PAGE = COLS * ROWS
PAGES_PER_FILE = 50  # 1,200 coupons a file: small enough to share out over the cores
PAGE_W_MM, PAGE_H_MM = 210.0, 297.0
MARGIN_MM = 6.0
CELL_W_MM = (PAGE_W_MM - 2 * MARGIN_MM) / COLS
CELL_H_MM = (PAGE_H_MM - 2 * MARGIN_MM) / ROWS
QR_MM = 30.0  # about 0.7 mm a module for a token's QR: a till's camera reads it at 20 cm


@dataclass(frozen=True)
class SheetText:
    """What every coupon of a campaign says, besides its own serial."""

    name: str
    value: str
    expires: str
    terms: str


def sheet_text(campaign: Campaign, expires: int) -> SheetText:
    stores = ", ".join(sorted(campaign.stores)) or "all stores"
    return SheetText(
        name=campaign.name or campaign.id,
        value=gives(campaign),
        expires="valid until " + datetime.fromtimestamp(expires, UTC).date().isoformat(),
        terms=f"One use. Redeemable at {stores}. Not exchangeable for cash.",
    )


def _latin1(text: str) -> str:
    # The core fonts carry Latin-1 only; a name outside it prints with '?' for now.
    return text.encode("latin-1", "replace").decode("latin-1")


def _qr_png(payload: str) -> io.BytesIO:
    buf = io.BytesIO()
    # One pixel a module: the PDF scales it up, and PDF viewers do not smooth images
    # unless asked (/Interpolate), so the modules stay sharp.
    # A fixed mask: choosing the best of eight takes nine tenths of segno's time, and any
    # mask is a valid symbol; pattern 4 keeps these codes as readable as the chosen one
    # (tests/test_issuing.py reads every code on a rendered page).
    segno.make(payload, error="m", micro=False, mask=4).save(buf, kind="png", scale=1, border=4)
    buf.seek(0)
    return buf


def _coupon(pdf: FPDF, x: float, y: float, layout: Layout, serial: str, payload: str) -> None:
    pdf.rect(x, y, CELL_W_MM, CELL_H_MM)  # the cutting line
    pdf.image(_qr_png(payload), x=x + 2, y=y + (CELL_H_MM - QR_MM) / 2, w=QR_MM, h=QR_MM)
    tx = x + QR_MM + 3
    ty = y + 5
    for style, size, lines in layout:
        pdf.set_font("Helvetica", style, size)
        for line in lines:
            pdf.text(tx, ty, line)
            ty += size * 0.42  # points to millimetres, with a little leading
    pdf.set_font("Courier", "", 7)
    pdf.text(tx, y + CELL_H_MM - 3, serial)


Layout = list[tuple[str, float, list[str]]]


def _layout(pdf: FPDF, text: SheetText) -> Layout:
    """The campaign's text broken into lines once per file: every coupon says the same, and
    fpdf2's line breaking is the slow part of a coupon."""
    width = CELL_W_MM - QR_MM - 5
    out: Layout = []
    for style, size, words in (
        ("B", 8.0, text.name),
        ("", 7.0, text.value),
        ("", 7.0, text.expires),
        ("", 5.5, text.terms),
    ):
        pdf.set_font("Helvetica", style, size)
        lines = pdf.multi_cell(width, 3, _latin1(words), dry_run=True, output="LINES")
        assert isinstance(lines, list)  # output="LINES" gives the lines alone
        out.append((style, size, [str(line) for line in lines]))
    return out


def render_file(path: str, text: SheetText, coupons: list[tuple[str, str]]) -> int:
    """Write one PDF of (serial, QR payload) coupons; returns its page count."""
    pdf = FPDF(format="A4", unit="mm")
    pdf.set_auto_page_break(False)
    pdf.set_margins(0, 0)
    layout: Layout = []
    for at, (serial, payload) in enumerate(coupons):
        slot = at % PER_PAGE
        if slot == 0:
            pdf.add_page()
            layout = layout or _layout(pdf, text)  # fpdf2 measures only on a page
        col, row = slot % COLS, slot // COLS
        x, y = MARGIN_MM + col * CELL_W_MM, MARGIN_MM + row * CELL_H_MM
        _coupon(pdf, x, y, layout, serial, payload)
    tmp = path + ".tmp"
    pdf.output(tmp)
    os.replace(tmp, path)
    return int(pdf.page)


def render(
    out: Path,
    text: SheetText,
    coupons: list[tuple[str, str]],
    workers: int | None = None,
    pages_per_file: int = PAGES_PER_FILE,
) -> list[Path]:
    """sheets-0001.pdf, sheets-0002.pdf, ...: every coupon, rendered on `workers`
    processes (every core by default)."""
    per_file = PER_PAGE * pages_per_file
    batches = [coupons[at : at + per_file] for at in range(0, len(coupons), per_file)]
    paths = [out / f"sheets-{n + 1:04d}.pdf" for n in range(len(batches))]
    for old in out.glob("sheets-*.pdf"):
        old.unlink()  # a re-render of a job that had more files leaves none behind
    workers = min(workers or os.cpu_count() or 1, len(batches))
    if workers <= 1:
        for path, batch in zip(paths, batches, strict=True):
            render_file(str(path), text, batch)
        return paths
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(render_file, str(path), text, batch)
            for path, batch in zip(paths, batches, strict=True)
        ]
        for f in futures:
            f.result()  # a failed file fails the job
    return paths


def render_job(central: Central, job: JobView) -> list[Path]:
    from sync.central.issuing import read_csv

    out = Path(job.out_dir)
    row = central.campaign(job.campaign)
    from sync.central.models import IssueJob

    expires = int(IssueJob.get_by_id(job.id).expires)
    coupons = [(s, token or code) for s, token, code in read_csv(out)]
    return render(out, sheet_text(row, expires), coupons)
