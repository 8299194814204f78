"""Printable coupon sheets (fpdf2): 3 x 8 coupons per A4 page, each with its QR code (a
PNG from segno), the campaign's name, value, expiry and terms, and the serial. A job's
sheets are rendered on every core, one PDF file per PAGES_PER_FILE pages (fpdf2 cannot
merge documents, and one file per worker is what lets the workers run side by side).
Text that Latin-1 holds prints in the PDF core fonts; other text (a Chinese campaign name)
in a Unicode TrueType font embedded as a subset (UNICODE_FONTS, Debian's
fonts-wqy-microhei first); without one such sheets fail with a sentence saying so."""

from __future__ import annotations

import io
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import segno
from fpdf import FPDF

from coupons.rules import Campaign
from sync.central.keyring import CentralError

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
# Unicode fonts fpdf2 embeds (TrueType outlines; a .ttc's first face), the first found used.
UNICODE_FONTS = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",  # fonts-wqy-microhei (the Makefile's)
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",  # fonts-wqy-zenhei
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",  # fonts-droid-fallback
)
UNICODE_FAMILY = "unicode"


class SheetFontMissing(CentralError):
    """The campaign's text needs a Unicode font and none is installed."""


@dataclass(frozen=True)
class SheetText:
    """What every coupon of a campaign says, besides its own serial."""

    name: str
    value: str
    expires: str
    terms: str


def sheet_text(campaign: Campaign, expires: int) -> SheetText:
    # Here, not at the top: a spawned sheet worker imports this module, and the command
    # line's modules would cost it an argon2 hash (sync.central.users) at every start.
    from sync.central.campaign_cli import gives

    stores = ", ".join(sorted(campaign.stores)) or "all stores"
    return SheetText(
        name=campaign.name or campaign.id,
        value=gives(campaign),
        expires="valid until " + datetime.fromtimestamp(expires, UTC).date().isoformat(),
        terms=f"One use. Redeemable at {stores}. Not exchangeable for cash.",
    )


def _latin1_only(text: SheetText) -> bool:
    try:
        "".join((text.name, text.value, text.expires, text.terms)).encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def font_for(text: SheetText) -> str | None:
    """The Unicode font file the sheets of `text` need: None when the core fonts print it."""
    if _latin1_only(text):
        return None
    for path in UNICODE_FONTS:
        if os.path.isfile(path):
            return path
    raise SheetFontMissing(
        "this campaign's name or terms need a Unicode font for PDF sheets and none is "
        "installed: install fonts-wqy-microhei (apt-get), then resume the job"
    )


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
    for family, style, size, lines in layout:
        pdf.set_font(family, style, size)
        for line in lines:
            pdf.text(tx, ty, line)
            ty += size * 0.42  # points to millimetres, with a little leading
    pdf.set_font("Courier", "", 7)
    pdf.text(tx, y + CELL_H_MM - 3, serial)


Layout = list[tuple[str, str, float, list[str]]]  # (family, style, size, lines)


def _layout(pdf: FPDF, text: SheetText, unicode_font: bool) -> Layout:
    """The campaign's text broken into lines once per file: every coupon says the same, and
    fpdf2's line breaking is the slow part of a coupon."""
    width = CELL_W_MM - QR_MM - 5
    # The Unicode font has no bold face: its name is a point larger instead.
    family, bold, name_size = (UNICODE_FAMILY, "", 9.0) if unicode_font else ("Helvetica", "B", 8.0)
    out: Layout = []
    for style, size, words in (
        (bold, name_size, text.name),
        ("", 7.0, text.value),
        ("", 7.0, text.expires),
        ("", 5.5, text.terms),
    ):
        pdf.set_font(family, style, size)
        lines = pdf.multi_cell(width, 3, words, dry_run=True, output="LINES")
        assert isinstance(lines, list)  # output="LINES" gives the lines alone
        out.append((family, style, size, [str(line) for line in lines]))
    return out


def render_file(
    path: str, text: SheetText, coupons: list[tuple[str, str]], font: str | None = None
) -> int:
    """Write one PDF of (serial, QR payload) coupons, the campaign's text in the Unicode
    font file `font` when given (font_for); returns its page count."""
    pdf = FPDF(format="A4", unit="mm")
    pdf.set_auto_page_break(False)
    pdf.set_margins(0, 0)
    if font is not None:
        pdf.add_font(UNICODE_FAMILY, "", font)
    layout: Layout = []
    for at, (serial, payload) in enumerate(coupons):
        slot = at % PER_PAGE
        if slot == 0:
            pdf.add_page()
            layout = layout or _layout(pdf, text, font is not None)  # measured on a page
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
    font = font_for(text)  # before any work: a missing font fails the sheets at once
    per_file = PER_PAGE * pages_per_file
    batches = [coupons[at : at + per_file] for at in range(0, len(coupons), per_file)]
    paths = [out / f"sheets-{n + 1:04d}.pdf" for n in range(len(batches))]
    for old in out.glob("sheets-*.pdf"):
        old.unlink()  # a re-render of a job that had more files leaves none behind
    workers = min(workers or os.cpu_count() or 1, len(batches))
    if workers <= 1:
        for path, batch in zip(paths, batches, strict=True):
            render_file(str(path), text, batch, font)
        return paths
    # Forked where this is the process's only thread (the command line: the quickest
    # start), spawned in `serve`, which renders from its jobs thread: a fork of a threaded
    # process can inherit a lock that another thread held.
    method = "fork" if threading.active_count() == 1 else "spawn"
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [
            pool.submit(render_file, str(path), text, batch, font)
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
