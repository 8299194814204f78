"""The manager's dashboard in Debian's Chromium at 800x480 and 1024x600, in English and
Chinese: with a shopper waiting on an approval, a camera down, an open fraud flag, the
central out of reach and an old ledger, the "Needs attention" summary lists them all, most
urgent first, inside the first screen; each line leads to its detail; chart text draws at
12 px or more. Screenshots go to test-artifacts/."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coupons import sync_state as sync_status
from coupons.ledger import ledger_file
from coupons.rules import Basket
from drivers import registry
from kiosk_ui import charts, manager_pages
from sync.client import RoundResult
from tests.conftest import T0, World
from tests.test_daemon import wait_for
from tests.test_kiosk_browser import CHROMIUM, browser, shot  # noqa: F401  (the fixture)
from tests.test_kiosk_pages import PIN, Kiosk, serve

SIZES = [(800, 480), (1024, 600)]
LANGS = ["en", "zh_CN"]
# The simulated input the coupons come through, an NFC reader whose driver cannot load
# (down), a camera that cannot open its source (retrying: working badly), and a central on
# a port where nothing listens.
BODY = (
    '\n[[input]]\nname = "sim"\nkind = "fake"\n'
    '\n[[input]]\nname = "nfc"\nkind = "broken"\n'
    '\n[[input]]\nname = "cam"\nkind = "camera"\nsource = "/nonexistent/f%03d.png"\n'
    '\n[sync]\ncentral = "http://127.0.0.1:9"\n'
)
WORDS = {
    "en": {
        "head": "Needs attention",
        "overrides": "Coupons waiting for your approval: 1",
        "flags": "Open fraud flags: 1",
        "sync": "Cannot reach the central service since",
        "ledger": "The coupon ledger is out of date",
        "device-down": "Device nfc: not working",
        "device-degraded": "Device cam: working badly",
    },
    "zh_CN": {
        "head": "需要处理",
        "overrides": "等待您放行的优惠券：1 张",
        "flags": "待处理的风险警报：1 条",
        "sync": "起无法连接中心服务",
        "ledger": "优惠券数据已过期",
        "device-down": "设备 nfc：不工作",
        "device-degraded": "设备 cam：工作不稳定",
    },
}
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"
)


def feed(kiosk: Kiosk, payload: str) -> None:
    sim = next(d for d in kiosk.daemon.inputs if d.name == "sim")
    sim.feed(payload)  # type: ignore[attr-defined]


@pytest.fixture
def troubled(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Kiosk]:
    """A till in trouble: two coupons redeemed three days ago, then the central out of
    reach since, the ledger 73 hours old, a big coupon waiting for the manager's approval,
    the NFC reader down, the camera working badly, and the clock trusted again by hand (an
    open fraud flag)."""
    # As when the reader's library is missing: the family's module fails to import.
    broken = registry.Family("drivers.fake:FakeOptions", "drivers.no_such_module:Driver")
    monkeypatch.setitem(registry.FAMILIES, "broken", broken)
    world.campaign(id="BIG", amount_minor=6000, stacking="any")
    (big,) = world.issue("BIG")
    with serve(world, tmp_path, BODY) as k:
        daemon = k.daemon
        before = daemon.worker.call(lambda e: e.ledger.version)  # type: ignore[union-attr]
        world.central.publish()
        update = ledger_file(world.central.deltas(before))
        assert not daemon.worker.call(lambda e: e.import_ledger(update)).refused  # type: ignore[union-attr]
        daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 12800}))
        feed(k, k.tokens[0])
        wait_for(lambda: daemon.published_count == 1)
        daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 12800}))
        feed(k, k.tokens[1])  # in a sale of its own
        wait_for(lambda: daemon.published_count == 2)
        ok = RoundResult(ok=True, started_at=T0)
        daemon.worker.call(lambda e: sync_status.record_round(e, ok))  # type: ignore[union-attr]
        daemon.clock.advance(73 * 3600)  # type: ignore[attr-defined]
        down = RoundResult(error="connection refused", error_kind="network", started_at=T0 + 60)
        daemon.worker.call(lambda e: sync_status.record_round(e, down))  # type: ignore[union-attr]
        daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 12800}))
        feed(k, big)  # refused for the stale ledger: waits for the manager
        wait_for(lambda: daemon.published_count == 3)
        assert daemon.worker.call(lambda e: e.reset_clock_trust("m1")).accepted  # type: ignore[union-attr]
        assert daemon.health()["nfc"]["state"] == "down"
        assert daemon.health()["cam"]["state"] == "degraded"  # never down: it keeps retrying
        yield k


@contextlib.contextmanager
def dashboard(browser: Any, kiosk: Kiosk, size: tuple[int, int], lang: str) -> Iterator[Any]:  # noqa: F811
    """A page at `size`, logged in as the manager, on the dashboard in `lang`."""
    width, height = size
    ctx = browser.new_context(viewport={"width": width, "height": height}, base_url=kiosk.url)
    try:
        page = ctx.new_page()
        page.set_default_timeout(5000)
        page.goto(f"/manager?lang={lang}")
        page.fill("#pin", PIN)
        page.click("#login")
        page.locator("#attention").wait_for()
        yield page
    finally:
        ctx.close()


def inside(page: Any, selector: str, width: int, height: int) -> None:
    """`selector` is drawn whole within the first screen (the page not scrolled)."""
    box = page.locator(selector).bounding_box()
    assert box is not None, f"{selector} is not shown"
    assert box["x"] >= 0 and box["y"] >= 0, selector
    right, bottom = box["x"] + box["width"], box["y"] + box["height"]
    assert right <= width and bottom <= height, f"{selector} cut off at {width}x{height}: {box}"


# Every chart label's size on screen: its font size in SVG units times the SVG's scale (the
# screen matrix: viewBox to CSS px), and the height of the box its glyphs take.
CHART_TEXT = """() => [...document.querySelectorAll('svg.chart text')].map(t => ({
  text: t.textContent,
  px: parseFloat(getComputedStyle(t).fontSize) * t.getScreenCTM().a,
  box: t.getBoundingClientRect().height,
}))"""


@needs_chromium
@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_what_needs_action_is_on_the_first_screen(
    browser: Any,  # noqa: F811
    troubled: Kiosk,
    size: tuple[int, int],
    lang: str,
    tmp_path: Path,
) -> None:
    width, height = size
    words = WORDS[lang]
    with dashboard(browser, troubled, size, lang) as page:
        assert page.evaluate("window.scrollY") == 0
        name = f"manager-attention-{width}x{height}-{lang}"
        shot(page, tmp_path, name)
        assert words["head"] in page.locator("#attention h2").inner_text()
        inside(page, "#attention", width, height)
        links = page.locator("#attention a.attn")
        ranks = [links.nth(i).get_attribute("data-rank") for i in range(links.count())]
        # Most urgent first: a shopper at the till, a reader down; then what can wait.
        assert ranks == [
            "overrides",
            "device-down",
            "flags",
            "sync",
            "device-degraded",
            "ledger",
        ]
        texts = {r: links.nth(i).locator(".what").inner_text() for i, r in enumerate(ranks)}
        for rank in ranks:
            assert words[rank] in texts[rank], (rank, texts[rank])
        for i in range(links.count()):
            inside(page, f"#attention a.attn >> nth={i}", width, height)
            box = links.nth(i).bounding_box()
            assert box["height"] >= 48, "a summary line is a touch target"
        urgent = page.locator("#attention a.attn.urgent")
        assert [urgent.nth(i).get_attribute("data-rank") for i in range(urgent.count())] == [
            "overrides",
            "device-down",
        ]

        # Each line leads to its detail further down.
        targets = {
            "overrides": "#overrides",
            "device-down": "#device-nfc",
            "sync": "#sync",
            "device-degraded": "#device-cam",
            "ledger": "#sync",
        }
        for rank, detail in targets.items():
            link = page.locator(f"#attention a.attn[data-rank='{rank}']")
            assert link.get_attribute("href") == detail
            assert page.locator(detail).count() == 1
        assert page.locator("#override-3").count() == 1
        assert page.locator("#sync-error").count() == 1
        page.locator("#attention a.attn[data-rank='flags']").click()
        flag = page.locator("#flags .flag").first
        assert "clock_reset" in flag.inner_text()
        box = flag.bounding_box()
        assert 0 <= box["y"] < height, "the link scrolls the flag into view"
        shot(page, tmp_path, f"manager-flag-linked-{width}x{height}-{lang}")

        # The charts: every label at 12 CSS px or more at this width.
        page.locator("section.charts").scroll_into_view_if_needed()
        labels = page.evaluate(CHART_TEXT)
        assert len(labels) >= 12 + 7  # hour and day labels at least
        small = [t for t in labels if t["px"] < charts.MIN_PX or t["box"] < charts.MIN_PX]
        assert not small, small
        for svg in page.locator("section.charts > div").all():
            box, chart = svg.bounding_box(), svg.locator("svg.chart").bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= width, "a chart spills"
            assert chart["x"] >= box["x"] and chart["x"] + chart["width"] <= box["x"] + box["width"]
        days = page.locator("section.charts svg.chart").nth(1).locator("text")
        assert "2" in days.all_text_contents(), "the day's two coupons over its bar"
        shot(page, tmp_path, f"manager-charts-{width}x{height}-{lang}")


@needs_chromium
@pytest.mark.parametrize("lang", LANGS)
def test_a_quiet_till_says_nothing_needs_attention(
    browser: Any,  # noqa: F811
    world: World,
    tmp_path: Path,
    lang: str,
) -> None:
    body = '\n[[input]]\nname = "sim"\nkind = "fake"\n'
    with serve(world, tmp_path, body) as k, dashboard(browser, k, (800, 480), lang) as page:
        head = page.locator("#attention h2").inner_text()
        assert head == {"en": "Nothing needs attention.", "zh_CN": "目前没有需要处理的事项。"}[lang]
        assert page.locator("#attention a.attn").count() == 0
        inside(page, "#attention", 800, 480)
        inside(page, "#stat-today", 800, 480)  # room left for today's figures
        shot(page, tmp_path, f"manager-quiet-800x480-{lang}")


def test_the_summary_orders_by_urgency_whatever_comes_first() -> None:
    """Built from the daemon's status: the order of the checks is not the order shown."""
    status: Any = {
        "clock_ok": False,
        "inputs": {
            "nfc": {"state": "degraded"},
            "cam": {"state": "down"},
            "scan": {"state": "stopped"},
            "sim": {"state": "ok"},
        },
        "sync": {"central": "http://c", "last_error": {"kind": "refused"}},
    }
    flags = [{"seq": 9, "review": None}, {"seq": 4, "review": {"status": "acknowledged"}}]
    got = manager_pages.attention(status, True, 2, flags, "en")
    assert [a["rank"] for a in got] == [
        "overrides",
        "clock",
        "device-down",
        "flags",
        "sync",
        "device-degraded",
        "ledger",
    ]
    assert [a["level"] for a in got] == ["urgent"] * 3 + ["warn"] * 4
    assert got[3] == {
        "rank": "flags",
        "level": "warn",
        "text": "Open fraud flags: 1",
        "href": "#flag-9",
    }
    assert got[4]["text"] == "The last sync failed: the central service refused"
    # One line for the readers down, one for those working badly, however many there are.
    devices = [(a["text"], a["href"]) for a in got if a["rank"].startswith("device")]
    assert devices == [
        ("Devices: cam (not working), scan (stopped)", "#device-cam"),
        ("Device nfc: working badly", "#device-nfc"),
    ]
    zh = manager_pages.attention(status, True, 2, flags, "zh_CN")
    assert zh[2]["text"] == "设备：cam (不工作)、scan (已停止)"
    assert manager_pages.attention({"sync": {}}, False, 0, [], "en") == []  # type: ignore[typeddict-item]
