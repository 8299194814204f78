"""Head office's whole day in the console, in Debian's Chromium at 1366x768, against a real
`redeem-central serve` process (its publisher and issuing runner running) on loopback, with
real tills: a marketer creates a campaign in the form and issues 1,000 coupons, watching the
progress bar finish; the PDF's first page is rendered (pdftoppm) and a QR on it decodes to a
token a till accepts; tills at two stores redeem it offline; an analyst finds the double
redemption on the fraud desk and revokes the serial from the flag; after the tills sync the
coupon is refused; the report shows the redemptions; an auditor cannot change anything (403)
and sees every action above in the audit log. Screenshots of each step go to test-artifacts/."""

from __future__ import annotations

import csv
import io
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest
from pyzbar import pyzbar

from coupons.clock import SystemClock
from sync.central import users
from sync.central.store import Central
from tests.central_server import Running, serve_process
from tests.conftest import basket
from tests.master_key import KEY
from tests.test_central_reconcile import _offline_redeem
from tests.test_console_browser import ARGS, CHROMIUM, PASSWORD, shot

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"
)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Running]:
    clock = SystemClock()  # the serve process runs on the real clock; so do the tills
    central = Central.init(tmp_path / "central", clock.now, master_key=KEY)
    with central.session():
        for name, role in (("mia", "marketer"), ("ana", "analyst"), ("abe", "auditor")):
            users.add_user(central, "test", name, role, PASSWORD)
    proc, url = serve_process(tmp_path / "central", None)
    try:
        yield Running(central, url, clock, tmp_path / "central", None, tmp_path)
    finally:
        proc.terminate()
        proc.wait(15)
        central.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def log_in(browser: Any, url: str, name: str) -> Any:
    ctx = browser.new_context(
        viewport={"width": 1366, "height": 768}, base_url=url, accept_downloads=True
    )
    page = ctx.new_page()
    page.set_default_timeout(10_000)
    page.goto("/login")
    page.fill("#name", name)
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.locator("#viewer").wait_for()
    assert page.locator("#viewer").inner_text() == name
    return page


def download(page: Any, selector: str, to: Path) -> Path:
    with page.expect_download() as info:
        page.click(selector)
    info.value.save_as(str(to))
    return to


def qr_tokens_on_page_one(pdf: Path) -> list[str]:
    subprocess.run(
        ["pdftoppm", "-r", "200", "-f", "1", "-l", "1", "-png", str(pdf), str(pdf.with_suffix(""))],
        check=True,
        timeout=60,
    )
    [png] = sorted(pdf.parent.glob(pdf.stem + "*.png"))
    image = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    return [s.data.decode() for s in pyzbar.decode(image)]


def test_head_office_day(browser: Any, served: Running, tmp_path: Path) -> None:
    # A marketer creates the campaign in the form.
    mia = log_in(browser, served.url, "mia")
    mia.goto("/campaigns/new")
    mia.fill("#f-id", "JOURNEY")
    mia.fill("#f-name", "Journey: 20 off")
    mia.select_option("#f-kind", "fixed")
    mia.fill("#f-currency", "CNY")
    mia.fill("#f-amount", "20.00")
    mia.fill("#f-budget_money", "100000.00")
    mia.click("#save")
    mia.locator("#campaign-JOURNEY").wait_for()
    assert "active" in mia.locator("#campaign-JOURNEY .status").inner_text()
    shot(mia, tmp_path, "journey-1-campaign-created")

    # ... issues 1,000 coupons with PDF sheets and watches the progress bar finish.
    mia.goto("/issuing")
    mia.select_option("#f-campaign", "JOURNEY")
    mia.fill("#f-count", "1000")
    mia.check("input[name=kind][value=token]")
    mia.check("#f-pdf")
    mia.click("#start")
    mia.locator("#job-bar").wait_for()
    mia.locator("#job-state[data-state=done]").wait_for(timeout=180_000)
    bar = mia.locator("#job-bar")
    assert bar.get_attribute("value") == bar.get_attribute("max") == "1000"
    shot(mia, tmp_path, "journey-2-issued")
    rows = list(csv.DictReader(io.StringIO(download(mia, "#csv", tmp_path / "c.csv").read_text())))
    assert len(rows) == 1000 and len({r["serial"] for r in rows}) == 1000
    pdf = download(mia, "a.sheet >> nth=0", tmp_path / "sheets.pdf")
    assert pdf.read_bytes().startswith(b"%PDF")
    on_page = qr_tokens_on_page_one(pdf)
    tokens = {r["token"]: r["serial"] for r in rows}
    assert on_page and all(t in tokens for t in on_page)
    token = on_page[0]

    # Tills at two stores redeem it while the network is down, then upload.
    t1, t2 = served.till("S1"), served.till("S2")
    d1, rows1 = _offline_redeem(t1, token)
    d2, rows2 = _offline_redeem(t2, token)
    assert d1.accepted and d2.accepted  # both offline: neither could know
    assert t1.device.push(rows1)["problem"] is None
    assert t2.device.push(rows2)["problem"] is None

    # An analyst finds the double redemption on the fraud desk and revokes the serial.
    ana = log_in(browser, served.url, "ana")
    ana.goto("/flags?kind=double_redemption")
    row = ana.locator("#flags tbody tr", has_text=tokens[token])
    row.locator("a").first.click()
    assert t1.terminal in ana.locator("#flag-terminals").inner_text()
    assert t2.terminal in ana.locator("#flag-terminals").inner_text()
    shot(ana, tmp_path, "journey-3-flag-evidence")
    ana.click("#revoke-serial")
    ana.locator("#flag-status", has_text="revoked").wait_for()
    shot(ana, tmp_path, "journey-4-revoked")

    # After the tills sync, the coupon is refused at either store.
    served.wait_published()
    with t1.opened() as engine:
        t1.pull()
        again = engine.redeem(token, basket(5000))
    assert not again.accepted and again.reason == "revoked", again

    # The report shows the day's two redemptions of this campaign.
    ana.goto("/report")
    campaign_row = ana.locator("#by-campaign tr[data-key=JOURNEY]")
    assert campaign_row.locator(".redemptions").inner_text() == "2"
    shot(ana, tmp_path, "journey-5-report")

    # An auditor changes nothing and sees every action above in the audit log.
    abe = log_in(browser, served.url, "abe")
    abe.goto("/campaigns")
    abe.click("#pause-JOURNEY")
    assert "Your role may not do this" in abe.locator("main").inner_text()
    abe.goto("/campaigns")
    assert "active" in abe.locator("#campaign-JOURNEY .status").inner_text()
    abe.goto("/audit")
    log = abe.locator("main").inner_text()
    for action in ("campaign.add", "issue_job.start", "issue_job.download", "flag.revoke-serial",
                   "refused"):  # fmt: skip
        assert action in log, action
    shot(abe, tmp_path, "journey-6-audit")
