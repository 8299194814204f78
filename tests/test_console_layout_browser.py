"""Every console page (each link of the top navigation, found in the page, so a new page is
covered the day it is linked) in Debian's Chromium at 1366x768, on a tablet in landscape
(1024x768) and in portrait (768x1024), in English and in Chinese: the page never scrolls
sideways (a wide table scrolls inside its own box), the navigation is all on screen, and
every button is at least 32 px tall (a finger, not a mouse pointer)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from coupons.clock import FixedClock
from sync.central import users
from tests.central_server import Running, running_central
from tests.conftest import T0
from tests.test_console_browser import ARGS, CHROMIUM, PASSWORD, shot

SIZES = ((1366, 768), (1024, 768), (768, 1024))

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"
)


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_central("sqlite", tmp_path_factory.mktemp("layout"), FixedClock(T0)) as c:
        with c.central.session():
            users.add_user(c.central, "test", "lou", "admin", PASSWORD)
            c.central.add_campaign(
                {"id": "SPRING", "name": "Spring sale with a rather long name for a table",
                 "kind": "threshold", "currency": "CNY", "amount_minor": 2000,
                 "min_spend_minor": 10000, "budget_minor": 500_000}
            )  # fmt: skip
            c.central.issue("SPRING", 3)
        c.device("S1")
        yield c


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def overflow(page: Any) -> dict[str, Any]:
    return dict(
        page.evaluate(
            """() => ({
                scroll: document.scrollingElement.scrollWidth,
                width: window.innerWidth,
                nav: [...document.querySelectorAll('header.top a, header.top button')]
                    .filter(e => { const r = e.getBoundingClientRect();
                                   return r.right > window.innerWidth + 1 || r.width === 0; })
                    .map(e => e.textContent.trim()),
                small: [...document.querySelectorAll('main button, header button')]
                    .filter(e => e.offsetParent !== null && e.getBoundingClientRect().height < 32)
                    .map(e => e.textContent.trim()),
            })"""
        )
    )


@pytest.mark.parametrize("lang", ["en", "zh_CN"])
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_no_page_scrolls_sideways(
    browser: Any, central: Running, tmp_path: Any, width: int, height: int, lang: str
) -> None:
    ctx = browser.new_context(viewport={"width": width, "height": height}, base_url=central.url)
    page = ctx.new_page()
    page.set_default_timeout(5000)
    try:
        page.goto(f"/login?lang={lang}")
        page.fill("#name", "lou")
        page.fill("#password", PASSWORD)
        page.click("#login")
        page.locator("#viewer").wait_for()
        links = page.eval_on_selector_all("header.top nav a", "els => els.map(e => e.pathname)")
        assert len(links) >= 4, links
        for path in links:
            page.goto(path)
            found = overflow(page)
            where = f"{path} at {width}x{height} ({lang})"
            assert found["scroll"] <= found["width"], f"{where} scrolls sideways: {found}"
            assert not found["nav"], f"{where}: navigation off screen: {found['nav']}"
            assert not found["small"], f"{where}: buttons under 32 px: {found['small']}"
            name = path.strip("/") or "dashboard"
            shot(page, tmp_path, f"console-{name}-{width}x{height}-{lang}")
    finally:
        ctx.close()
