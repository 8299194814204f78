"""The cashier screen in Debian's Chromium against the real daemon and its kiosk: every state
of a sale (idle, total keyed, accepted, refused, already on this sale, back to idle) fits
800x480 and 1024x600 in English and Chinese without scrolling, with 48x48 px touch targets,
amounts on one line, and a mark beside each colour; the screen goes back to idle on a till's
commit or cancel, on a new total and after `[kiosk] idle_after_s`; the sound cue plays when
switched on and never holds the screen up when it cannot. Screenshots of every state go to
./test-artifacts/."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coupons.rules import Basket
from kiosk_ui import tills
from terminal.daemon import config as config_mod
from tests.conftest import T0, World
from tests.test_daemon import REPO, free_port, write_config
from tests.test_kiosk_browser import (  # noqa: F401  (the browser fixture)
    CHROMIUM,
    assert_inside,
    browser,
    shot,
)
from tests.test_kiosk_pages import Kiosk, kiosk, publish_to, serve  # noqa: F401  (the fixture)

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"
)
SIZES = [(800, 480), (1024, 600)]
SIM = '\n[[input]]\nname = "sim"\nkind = "fake"\n'
# Marks the page when its live feed is connected, so a test feeds a scan only once the
# screen can hear it (no sleeping on a guess).
LIVE = (
    'document.addEventListener("htmx:sseOpen", () => {'
    ' document.documentElement.dataset.live = "1"; });'
)

# What a cashier would notice on one screen, measured in the page: scrolling, small touch
# targets, amounts broken over two lines.
MEASURE = """() => {
  const se = document.scrollingElement;
  const targets = [...document.querySelectorAll(
    "main.cashier button, main.cashier input:not([type=hidden]), #sound")]
    .filter(e => e.offsetParent !== null)
    .map(e => { const r = e.getBoundingClientRect();
                return [e.id || e.dataset.key || e.textContent.trim(), r.width, r.height]; });
  const amounts = [...document.querySelectorAll(".amount")].map(a => {
    const r = a.getBoundingClientRect();
    return [a.textContent, a.getClientRects().length, r.height,
            parseFloat(getComputedStyle(a).fontSize)];
  });
  return {height: se.scrollHeight, width: se.scrollWidth, innerHeight, innerWidth,
          targets, amounts};
}"""


def check_screen(page: Any, width: int, height: int) -> dict[str, Any]:
    m: dict[str, Any] = page.evaluate(MEASURE)
    assert m["height"] <= m["innerHeight"], f"scrolls down at {width}x{height}: {m['height']}"
    assert m["width"] <= m["innerWidth"], f"scrolls sideways at {width}x{height}: {m['width']}"
    small = [t for t in m["targets"] if t[1] < 48 or t[2] < 48]
    assert not small, f"touch targets under 48x48 px: {small}"
    for text, lines, box, font in m["amounts"]:
        assert lines == 1 and box < 2 * font, f"amount {text!r} over {lines} lines"
    assert_inside(page, width, height)
    return m


def amount_of(page: Any, selector: str) -> str:
    """The amount shown by `selector`: on one line and holding its digits (whatever the
    currency's spelling in that language)."""
    el = page.locator(selector)
    assert "amount" in (el.get_attribute("class") or "")
    assert el.evaluate("a => a.getClientRects().length") == 1
    return str(el.inner_text())


def open_screen(browser: Any, kiosk: Kiosk, width: int, height: int, lang: str = "en") -> Any:  # noqa: F811
    ctx = browser.new_context(viewport={"width": width, "height": height}, base_url=kiosk.url)
    ctx.add_init_script(LIVE)
    page = ctx.new_page()
    page.set_default_timeout(5000)
    page.goto(f"/?lang={lang}")
    live(page)
    return page


def live(page: Any) -> None:
    page.wait_for_function("document.documentElement.dataset.live === '1'")


def key_total(page: Any, total: str) -> None:
    page.fill("#total", total)
    page.click("#set-total")
    page.wait_for_load_state()
    live(page)


def big_refusal(kiosk: Kiosk, world: World) -> str:  # noqa: F811
    """A coupon refused on a 128.00 sale (its minimum is 500.00) whose campaign carries the
    longest panel there is: its name, and conditions of every sort."""
    world.campaign(
        id="BIG",
        name="Spend 500 get 80 (members)",
        kind="threshold",
        amount_minor=8000,
        min_spend_minor=50000,
        stacking="exclusive",
        valid_until=int(T0) + 30 * 86400,
        new_customers_only=True,
    )
    (token,) = world.issue("BIG")
    publish_to(kiosk.daemon, world)
    return token


@needs_chromium
@pytest.mark.parametrize("lang", ["en", "zh_CN"])
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_every_state_of_a_sale_fits_the_screen(
    browser: Any,  # noqa: F811
    kiosk: Kiosk,  # noqa: F811
    world: World,
    tmp_path: Path,
    width: int,
    height: int,
    lang: str,
) -> None:
    refused = big_refusal(kiosk, world)
    page = open_screen(browser, kiosk, width, height, lang)
    try:

        def state(n: int, name: str) -> None:
            check_screen(page, width, height)
            shot(page, tmp_path, f"cashier-{width}x{height}-{lang}-{n}-{name}")

        page.locator("#decision.idle").wait_for()
        state(1, "idle")

        key_total(page, "128")
        assert "128.00" in amount_of(page, "#sale-total")
        page.locator("#decision.idle").wait_for()
        state(2, "total-keyed")

        kiosk.feed(kiosk.tokens[0])
        page.locator("#decision.ok").wait_for()
        page.locator("#best").wait_for()  # the sale panel follows
        assert page.locator("#decision .mark").inner_text() == "✓"
        assert "20.00" in amount_of(page, "#decision-amount")
        state(3, "accepted")

        kiosk.feed(refused)
        page.locator("#decision.no").wait_for()
        assert page.locator("#decision .mark").inner_text() == "✗"
        assert page.locator("#decision .conditions").inner_text()
        state(4, "refused")

        kiosk.feed(kiosk.tokens[0])  # the same coupon again, in the same sale
        page.locator("#decision.same").wait_for()
        state(5, "already-on-this-sale")

        key_total(page, "99")  # the next sale
        page.locator("#decision.idle").wait_for()
        assert page.locator("#decision.no, #decision.ok, #decision.same").count() == 0
        assert "99.00" in amount_of(page, "#sale-total")
        state(6, "back-to-idle")
    finally:
        page.context.close()


def pos(kiosk: Kiosk, world: World) -> httpx.Client:  # noqa: F811
    bearer = f"Bearer {tills.issue(world.data, 'till1')}"
    return httpx.Client(base_url=kiosk.url + "/api/v1", headers={"Authorization": bearer})


def checkout(c: httpx.Client, key: str) -> str:
    body = {"basket": {"currency": "CNY", "total_minor": 12800}}
    r = c.post("/checkouts", json=body, headers={"Idempotency-Key": key})
    assert r.status_code == 201, r.text
    return str(r.json()["checkout_id"])


def step(c: httpx.Client, path: str, key: str, body: object = None) -> httpx.Response:
    return c.post(path, json=body, headers={"Idempotency-Key": key})


@needs_chromium
def test_a_tills_commit_and_cancel_return_the_screen_to_idle(
    browser: Any,  # noqa: F811
    kiosk: Kiosk,  # noqa: F811
    world: World,
    tmp_path: Path,
) -> None:
    page = open_screen(browser, kiosk, 800, 480)
    try:
        with pos(kiosk, world) as c:
            paid = checkout(c, "open-1")
            r = step(c, f"/checkouts/{paid}/coupons", "apply-1", {"code": kiosk.tokens[0]})
            assert r.json()["decision"]["accepted"], r.text
            page.locator("#decision.ok").wait_for()
            assert step(c, f"/checkouts/{paid}/commit", "commit-1").status_code == 200
            page.locator("#decision.idle").wait_for()
            shot(page, tmp_path, "cashier-pos-committed")

            cancelled = checkout(c, "open-2")
            r = step(c, f"/checkouts/{cancelled}/coupons", "apply-2", {"code": kiosk.tokens[0]})
            assert not r.json()["decision"]["accepted"], r.text  # used by the first sale
            page.locator("#decision.no").wait_for()
            assert step(c, f"/checkouts/{cancelled}/release", "release-2").status_code == 200
            page.locator("#decision.idle").wait_for()
        page.reload()  # and it stays idle: the refusal belonged to a sale that ended
        page.locator("#decision.idle").wait_for()
    finally:
        page.context.close()


@needs_chromium
def test_the_screen_goes_idle_a_while_after_the_last_decision(
    browser: Any,  # noqa: F811
    kiosk: Kiosk,  # noqa: F811
    tmp_path: Path,
) -> None:
    kiosk.daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 5000}))
    page = open_screen(browser, kiosk, 800, 480)
    try:
        kiosk.feed(kiosk.tokens[0])  # below its 100.00 minimum: refused
        page.locator("#decision.no").wait_for()
        idle_after = kiosk.daemon.cfg.kiosk.idle_after_s
        clock = kiosk.daemon.clock
        clock.advance(idle_after - 1)  # type: ignore[attr-defined]
        page.reload()
        live(page)
        page.locator("#decision.no").wait_for()  # still the cashier's to read out
        clock.advance(2)  # type: ignore[attr-defined]
        page.locator("#decision.idle").wait_for()  # live, without a reload
        shot(page, tmp_path, "cashier-idle-after-timeout")
    finally:
        page.context.close()


@needs_chromium
def test_a_new_sale_from_the_till_command_clears_the_last_refusal(
    browser: Any,  # noqa: F811
    kiosk: Kiosk,  # noqa: F811
) -> None:
    kiosk.daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 5000}))
    page = open_screen(browser, kiosk, 1024, 600)
    try:
        kiosk.feed(kiosk.tokens[0])
        page.locator("#decision.no").wait_for()
        # `redeem till` (the control socket) starts the next sale behind the screen's back.
        kiosk.daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 20000}))
        page.locator("#decision.idle").wait_for()
        page.locator("#sale-total", has_text="200.00").wait_for()
    finally:
        page.context.close()


@pytest.fixture
def loud_kiosk(world: World, tmp_path: Path) -> Iterator[Kiosk]:
    body = f'\n[kiosk]\nhost = "127.0.0.1"\nport = {free_port()}\nsound = true\n' + SIM
    with serve(world, tmp_path, body) as k:
        yield k


@needs_chromium
def test_the_sound_cue_plays_when_configured(
    browser: Any,  # noqa: F811
    loud_kiosk: Kiosk,
) -> None:
    loud_kiosk.daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 12800}))
    page = open_screen(browser, loud_kiosk, 800, 480)
    try:
        assert page.get_attribute("#sound", "aria-pressed") == "true"
        loud_kiosk.feed(loud_kiosk.tokens[0])
        page.locator("#decision.ok").wait_for()
        page.wait_for_function("document.getElementById('sound').dataset.played === 'ok'")
        page.click("#sound")  # the cashier turns it off: this browser keeps the choice
        assert page.get_attribute("#sound", "aria-pressed") == "false"
        page.reload()
        assert page.get_attribute("#sound", "aria-pressed") == "false"
    finally:
        page.context.close()


@needs_chromium
def test_a_sound_that_cannot_play_never_holds_the_screen_up(
    browser: Any,  # noqa: F811
    kiosk: Kiosk,  # noqa: F811
) -> None:
    kiosk.daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 12800}))
    ctx = browser.new_context(viewport={"width": 800, "height": 480}, base_url=kiosk.url)
    # The one faked edge: a browser whose audio device is missing.
    ctx.add_init_script(
        "window.AudioContext = function () { throw new Error('no audio device'); };" + LIVE
    )
    page = ctx.new_page()
    page.set_default_timeout(5000)
    try:
        page.goto("/")
        live(page)
        assert page.get_attribute("#sound", "aria-pressed") == "false"  # off by default
        page.click("#sound")
        assert page.get_attribute("#sound", "aria-pressed") == "true"
        kiosk.feed(kiosk.tokens[0])
        page.locator("#decision.ok").wait_for()
        assert page.get_attribute("#sound", "data-played") == "failed"
        kiosk.feed(kiosk.tokens[0])  # and the next decision still shows
        page.locator("#decision.same").wait_for()
    finally:
        ctx.close()


def test_a_reconnecting_screen_is_not_sent_an_old_decision(kiosk: Kiosk) -> None:  # noqa: F811
    """A browser that reconnects names the last decision it got (Last-Event-ID): the stream
    does not send it again (a screen gone idle stays idle, the cue does not sound twice)."""
    kiosk.daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 12800}))
    kiosk.feed(kiosk.tokens[0])
    deadline = time.monotonic() + 5
    while kiosk.daemon.published_count < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    number = kiosk.daemon.published_count

    def first_event(headers: dict[str, str]) -> str:
        with httpx.Client(base_url=kiosk.url, timeout=5) as c:
            with c.stream("GET", "/events", headers=headers) as r:
                for line in r.iter_lines():
                    if line.startswith("event:") or line.startswith(": keep-alive"):
                        return line
        return ""

    assert first_event({}) == "event: decision"  # a screen that has seen nothing
    assert first_event({"Last-Event-ID": str(number)}) == ": keep-alive"


@pytest.mark.parametrize(("value", "words"), [("0", "more than 0 seconds"), ("-5", "negative")])
def test_config_check_refuses_an_idle_timeout_of_zero_or_less(
    tmp_path: Path, value: str, words: str
) -> None:
    path = write_config(tmp_path / "d.toml", tmp_path / "t", f"\n[kiosk]\nidle_after_s = {value}\n")
    with pytest.raises(config_mod.ConfigError) as err:
        config_mod.load(path)
    assert f"{path}:8: kiosk.idle_after_s" in str(err.value) and words in str(err.value)
    check = subprocess.run(
        [sys.executable, "-m", "terminal.cli", "config", "check", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert check.returncode != 0 and "kiosk.idle_after_s" in check.stdout + check.stderr


@needs_chromium
@pytest.mark.parametrize("lang", ["en", "zh_CN"])
def test_a_long_sale_scrolls_its_coupon_list_not_the_page(
    browser: Any,  # noqa: F811
    kiosk: Kiosk,  # noqa: F811
    world: World,
    tmp_path: Path,
    lang: str,
) -> None:
    codes = []
    for i in range(8):
        world.campaign(id=f"S{i}", name=f"Store coupon {i}", amount_minor=500, stacking="any")
        codes += world.issue(f"S{i}")
    publish_to(kiosk.daemon, world)
    kiosk.daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 50000}))
    page = open_screen(browser, kiosk, 800, 480, lang)
    try:
        for code in codes:
            kiosk.feed(code)
        page.locator("#sale li").nth(len(codes) - 1).wait_for()
        page.locator("#best").wait_for()
        check_screen(page, 800, 480)
        assert page.locator("#void").is_visible()
        box = page.locator("#void").bounding_box()
        assert box is not None and box["y"] + box["height"] <= 480
        # The newest coupon is in view at the bottom of the list.
        page.wait_for_function(
            """n => { const items = document.querySelectorAll("#sale li");
                      const list = document.querySelector("#sale ul");
                      return items.length === n && items[n - 1].getBoundingClientRect().bottom
                             <= list.getBoundingClientRect().bottom + 1; }""",
            arg=len(codes),
        )
        shot(page, tmp_path, f"cashier-800x480-{lang}-long-sale")
    finally:
        page.context.close()
