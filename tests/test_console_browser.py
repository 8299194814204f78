"""The head-office console in Debian's Chromium, headless, at 1366x768: log in, see the
campaigns table, pause a campaign and see it paused. Screenshots go to test-artifacts/ as
the kiosk's browser tests do."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coupons.clock import FixedClock
from sync.central import users
from tests.central_server import Running, running_central
from tests.conftest import T0

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "correct horse battery staple"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"
)


@pytest.fixture
def central(tmp_path: Path) -> Iterator[Running]:
    with running_central("sqlite", tmp_path, FixedClock(T0)) as c:
        with c.central.session():
            users.add_user(c.central, "test", "mia", "marketer", PASSWORD)
            for cid, name in (("SPRING", "Spring sale"), ("VIP", "VIP evening")):
                c.central.add_campaign(
                    {
                        "id": cid,
                        "name": name,
                        "kind": "fixed",
                        "currency": "CNY",
                        "amount_minor": 1000,
                        "budget_minor": 500_000,
                    }  # fmt: skip
                )
            c.central.issue("SPRING", 5)
        yield c


@pytest.fixture
def page(central: Running) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        ctx = browser.new_context(viewport={"width": 1366, "height": 768}, base_url=central.url)
        pg = ctx.new_page()
        pg.set_default_timeout(5000)
        yield pg
        ctx.close()
        browser.close()


def shot(page: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(path, ARTIFACTS / path.name)


def test_log_in_and_pause_a_campaign(page: Any, central: Running, tmp_path: Path) -> None:
    page.goto("/")
    page.wait_for_url("**/login")
    page.fill("#name", "mia")
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.locator("#campaigns").wait_for()
    assert page.locator("#viewer").inner_text() == "mia"
    shot(page, tmp_path, "console-dashboard")
    page.click("nav >> text=Campaigns")
    row = page.locator("#campaign-SPRING")
    assert "active" in row.inner_text() and "Spring sale" in row.inner_text()
    table = page.locator("#campaigns").bounding_box()
    assert table is not None and table["x"] + table["width"] <= 1366  # no sideways scrolling
    page.click("#pause-SPRING")
    page.locator("#resume-SPRING").wait_for()
    assert "paused" in page.locator("#campaign-SPRING .status").inner_text()
    assert "active" in page.locator("#campaign-VIP .status").inner_text()
    shot(page, tmp_path, "console-campaign-paused")
    with central.central.session():
        assert central.central.campaign_summary("SPRING").status == "paused"
