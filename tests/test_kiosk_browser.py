"""The kiosk in Debian's Chromium, headless: a simulated scan shows on the cashier screen
within a second over SSE, a refusal shows its reason, the manager logs in, wrong PINs lock
out, a fraud flag is acknowledged, the language switches, and a typed code is keyed in on
the on-screen keypad. Screenshots at 800x480 and 1024x600; the decision and the keypad are
never cut off at either size."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coupons.reasons import Reason
from coupons.rules import Basket
from tests.conftest import World
from tests.test_kiosk_pages import PIN, Kiosk, kiosk, publish_to  # noqa: F401  (the fixture)

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

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, kiosk: Kiosk) -> Iterator[Any]:  # noqa: F811
    ctx = browser.new_context(viewport={"width": 800, "height": 480}, base_url=kiosk.url)
    pg = ctx.new_page()
    pg.set_default_timeout(5000)
    yield pg
    ctx.close()


def shot(page: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(path, ARTIFACTS / path.name)


def open_sale(page: Any, kiosk: Kiosk) -> None:  # noqa: F811
    """A sale of 128.00 and the cashier screen open on it, its live feed connected."""
    kiosk.daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 12800}))
    page.goto("/")
    page.locator("#decision.idle").wait_for()
    time.sleep(0.3)  # let the EventSource connect


def test_scan_shows_accept_live_and_refusal_reason(
    page: Any,
    kiosk: Kiosk,  # noqa: F811
    tmp_path: Path,
) -> None:
    open_sale(page, kiosk)
    start = time.monotonic()
    kiosk.feed(kiosk.tokens[0])
    page.locator("#decision.ok").wait_for(timeout=1000)
    assert time.monotonic() - start < 1.0
    assert "CN¥20.00" in page.locator("#decision").inner_text()
    page.locator("#sale li").wait_for(timeout=2000)  # the sale's coupon list follows
    shot(page, tmp_path, "cashier-accepted")

    kiosk.feed(kiosk.tokens[0])  # the same coupon again: already on this sale, not refused
    page.locator("#decision.same").wait_for(timeout=1000)
    text = page.locator("#decision").inner_text()
    assert Reason.ALREADY_APPLIED.message("en") in text  # the POS API's sentence too
    shot(page, tmp_path, "cashier-refused")


def test_the_cashier_takes_back_the_last_coupon(
    page: Any,
    kiosk: Kiosk,  # noqa: F811
    tmp_path: Path,
) -> None:
    open_sale(page, kiosk)
    kiosk.feed(kiosk.tokens[2])
    page.locator("#decision.ok").wait_for(timeout=2000)
    page.locator("#void").click(timeout=2000)  # the button arrives with the sale panel
    page.locator("#decision.void").wait_for(timeout=2000)
    assert "Coupon taken back" in page.locator("#decision").inner_text()
    page.locator("#sale li").wait_for(state="detached", timeout=2000)
    assert page.locator("#void").count() == 0
    shot(page, tmp_path, "cashier-voided")


def test_keypad_entry_and_total(page: Any, kiosk: Kiosk, tmp_path: Path) -> None:  # noqa: F811
    page.goto("/")
    page.fill("#total", "128")
    page.click("#set-total")
    page.wait_for_url("**/")
    assert "CN¥128.00" in page.locator("#sale-total").inner_text()
    page.click(".keypad .key[data-key='1']")
    assert page.input_value("#code") == "1"
    page.fill("#code", kiosk.tokens[1])
    page.click("#check")
    page.locator("#decision.ok").wait_for(timeout=2000)
    shot(page, tmp_path, "cashier-keypad")


def test_language_switch(page: Any, tmp_path: Path) -> None:
    page.goto("/")
    page.click("#lang-zh")
    page.wait_for_url("**lang=zh_CN")
    assert "可以扫下一张券了" in page.content()
    page.goto("/manager")  # the choice is kept in a cookie
    assert "店长密码" in page.content()
    shot(page, tmp_path, "manager-login-zh")
    page.click("#lang-en")
    assert "Manager PIN" in page.content()


def test_manager_login_and_acknowledge_a_flag(
    page: Any,
    kiosk: Kiosk,  # noqa: F811
    tmp_path: Path,
) -> None:
    flag = kiosk.daemon.worker.call(lambda e: e.reset_clock_trust("m1"))
    assert flag.accepted
    page.goto("/manager")
    page.fill("#pin", PIN)
    page.click("#login")
    page.locator("#flags .flag").first.wait_for()
    shot(page, tmp_path, "manager-dashboard")
    item = page.locator("#flags .flag").first
    assert "clock_reset" in item.inner_text() and "open" in item.inner_text()
    item.locator("input[name=note]").fill("checked the NTP server")
    item.locator("button[value=acknowledge]").click()
    page.wait_for_url("**/manager#flags")
    item = page.locator("#flags .flag").first
    assert "acknowledged" in item.inner_text() and "checked the NTP server" in item.inner_text()
    shot(page, tmp_path, "manager-flag-acknowledged")


def test_wrong_pins_lock_out(page: Any, tmp_path: Path) -> None:
    page.goto("/manager")
    for _ in range(4):
        page.fill("#pin", "9999")
        page.click("#login")
        assert "Wrong PIN." in page.locator("#login-error").inner_text()
    page.fill("#pin", "9998")
    page.click("#login")
    assert "Too many wrong PINs" in page.locator("#login-error").inner_text()
    page.fill("#pin", PIN)
    page.click("#login")
    assert "Too many wrong PINs" in page.locator("#login-error").inner_text()
    assert page.locator("#logout").count() == 0
    shot(page, tmp_path, "manager-locked-out")


# What must never be cut off on the cashier screen: the answer, the code entry and the total.
MUST_SHOW = ("#decision", "#code", "#check", ".keypad", "#total", "#set-total")


def assert_inside(page: Any, width: int, height: int) -> None:
    for selector in MUST_SHOW:
        box = page.locator(selector).bounding_box()
        assert box is not None, f"{selector} is not shown"
        assert box["x"] >= 0 and box["y"] >= 0, selector
        right, bottom = box["x"] + box["width"], box["y"] + box["height"]
        assert right <= width and bottom <= height, f"{selector} cut off at {width}x{height}"


def test_a_typed_code_keyed_in_on_the_keypad(
    page: Any,
    kiosk: Kiosk,  # noqa: F811
    world: World,
    tmp_path: Path,
) -> None:
    world.campaign(id="TYPED", name="Typed fifteen", amount_minor=1500, stacking="any")
    (code,) = world.issue("TYPED", codes=True)
    publish_to(kiosk.daemon, world)
    open_sale(page, kiosk)
    page.click(".keypad .key[data-key='7']")
    page.click(".keypad .key[data-key='clear']")
    assert page.input_value("#code") == ""
    page.click(".keypad .key[data-key='Q']")
    page.click(".keypad .key[data-key='back']")
    for ch in code:  # e.g. K7QM-3XHP-ZC9D: letters, digits and dashes, all by touch
        page.click(f".keypad .key[data-key='{ch}']")
    assert page.input_value("#code") == code
    page.click("#check")
    page.locator("#decision.ok").wait_for(timeout=2000)
    assert "CN¥15.00" in page.locator("#decision").inner_text()
    page.locator("#best").wait_for(timeout=2000)
    assert page.input_value("#code") == ""  # ready for the next coupon
    assert_inside(page, 800, 480)
    shot(page, tmp_path, "cashier-typed-code")


def test_the_cashier_screen_at_1024x600(
    browser: Any,
    kiosk: Kiosk,  # noqa: F811
    tmp_path: Path,
) -> None:
    ctx = browser.new_context(viewport={"width": 1024, "height": 600}, base_url=kiosk.url)
    try:
        pg = ctx.new_page()
        pg.set_default_timeout(5000)
        open_sale(pg, kiosk)
        assert_inside(pg, 1024, 600)
        kiosk.feed(kiosk.tokens[0])
        pg.locator("#decision.ok").wait_for(timeout=2000)
        pg.locator("#best").wait_for(timeout=2000)  # the sale panel grew: still all shown
        assert_inside(pg, 1024, 600)
        shot(pg, tmp_path, "cashier-1024x600")
        pg.goto("/manager")
        pg.fill("#pin", PIN)
        pg.click("#login")
        pg.locator("#stat-today").wait_for()
        shot(pg, tmp_path, "manager-1024x600")
    finally:
        ctx.close()
