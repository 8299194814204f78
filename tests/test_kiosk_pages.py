"""The kiosk's pages over real HTTP: both languages render, the PIN lock-out holds, a wrong
PIN never logs in, the journal exports as CSV, and every template string is translated."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from coupons import i18n
from coupons import sync_state as sync_status
from coupons.clock import FixedClock
from coupons.ledger import ledger_file
from coupons.reasons import Reason
from coupons.rules import Basket
from kiosk_ui import manager, pages
from sync.client import RoundResult
from terminal.daemon import config as config_mod
from terminal.daemon.runner import Daemon
from tests import camera_media
from tests.conftest import T0, World
from tests.test_daemon import prepare, wait_for, write_config

PIN = "2468"
KIOSK = Path(pages.__file__).parent


@dataclass
class Kiosk:
    url: str
    daemon: Daemon
    tokens: list[str]

    def feed(self, payload: str) -> None:
        (sim,) = self.daemon.inputs
        sim.feed(payload)


@pytest.fixture
def kiosk(world: World, tmp_path: Path) -> Iterator[Kiosk]:
    with serve(world, tmp_path, '\n[[input]]\nname = "sim"\nkind = "fake"\n') as k:
        yield k


@contextlib.contextmanager
def serve(world: World, tmp_path: Path, body: str) -> Iterator[Kiosk]:
    """The daemon with its own kiosk web server (kiosk_ui/app.py: the guard, CSRF, pages,
    API) on a free loopback port."""
    tokens = prepare(world, 4)
    cfg = config_mod.load(write_config(tmp_path / "d.toml", world.data, body))
    daemon = Daemon(cfg, FixedClock(T0))
    daemon.start()
    manager.set_pin(world.data, PIN)
    try:
        yield Kiosk(str(daemon.kiosk.url), daemon, tokens)
    finally:
        daemon.stop()


def client(url: str, **kwargs: Any) -> httpx.Client:
    """An HTTP client that posts like the kiosk's own pages do: it has loaded a page (the
    CSRF cookie) and sends the token as htmx does, in the x-csrftoken header."""
    c = httpx.Client(base_url=url, **kwargs)
    c.cookies.set("csrftoken", httpx.get(url + "/").cookies["csrftoken"])

    def token(request: httpx.Request) -> None:
        if request.method == "POST" and "x-csrftoken" not in request.headers:
            request.headers["x-csrftoken"] = c.cookies.get("csrftoken", "")

    c.event_hooks["request"].append(token)
    return c


def test_pages_render_in_both_languages(kiosk: Kiosk) -> None:
    with client(kiosk.url) as c:
        en = c.get("/")
        assert en.status_code == 200 and "Ready for the next coupon" in en.text
        zh = c.get("/?lang=zh_CN")
        assert "可以扫下一张券了" in zh.text and zh.cookies.get("lang") == "zh_CN"
        again = c.get("/manager")  # the cookie keeps the language
        assert "店长密码" in again.text
        assert c.get("/static/htmx.min.js").status_code == 200
        assert c.get("/static/sse.min.js").status_code == 200


def test_wrong_pin_never_logs_in_and_five_lock_out(kiosk: Kiosk) -> None:
    with client(kiosk.url) as c:
        for _ in range(4):
            r = c.post("/manager/login", data={"pin": "0000"})
            assert r.status_code == 401 and "Wrong PIN." in r.text
            assert pages.COOKIE_SESSION not in c.cookies
        r = c.post("/manager/login", data={"pin": "1111"})
        assert r.status_code == 429 and "Too many wrong PINs" in r.text
        r = c.post("/manager/login", data={"pin": PIN})  # even the right PIN, while locked
        assert r.status_code == 429 and pages.COOKIE_SESSION not in c.cookies
        assert "Manager PIN" in c.get("/manager").text  # still the login page
        assert c.get("/manager/export.csv").status_code == 303


def test_session_cookie_is_checked(kiosk: Kiosk) -> None:
    with client(kiosk.url, cookies={pages.COOKIE_SESSION: "forged"}) as c:
        assert "Manager PIN" in c.get("/manager").text


def test_manager_dashboard_and_csv_export(kiosk: Kiosk) -> None:
    kiosk.daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 12800}))
    kiosk.feed(kiosk.tokens[0])
    kiosk.feed(kiosk.tokens[0])  # refused: already on this sale
    wait_for(lambda: kiosk.daemon.published_count == 2)
    with client(kiosk.url, follow_redirects=True) as c:
        r = c.post("/manager/login", data={"pin": PIN})
        assert r.status_code == 200 and "Acceptance rate" in r.text
        assert "<svg" in r.text and "50%" in r.text  # one of two accepted
        assert "already_applied" in r.text
        csv = c.get("/manager/export.csv", params={"since": "2026-11-25", "until": "2026-11-25"})
        assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
        lines = csv.text.strip().splitlines()
        assert lines[0].startswith("seq,at,kind") and len(lines) >= 3
        empty = c.get("/manager/export.csv", params={"since": "2026-11-20", "until": "2026-11-20"})
        assert len(empty.text.strip().splitlines()) == 1
        assert c.get("/manager/export.csv", params={"since": "yesterday"}).status_code == 400


def test_a_week_without_refusals_says_so(kiosk: Kiosk) -> None:
    kiosk.daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 12800}))
    kiosk.feed(kiosk.tokens[0])
    wait_for(lambda: kiosk.daemon.published_count == 1)
    with client(kiosk.url, follow_redirects=True) as c:
        r = c.post("/manager/login", data={"pin": PIN})
        assert "No coupon was refused in the last 7 days." in r.text
        assert "最近7天没有被拒绝的优惠券。" in c.get("/manager?lang=zh_CN").text


def test_keypad_and_basket_posts_reach_the_daemon(kiosk: Kiosk) -> None:
    with client(kiosk.url) as c:
        assert c.post("/basket", data={"total": "128.00"}).status_code == 303
        assert kiosk.daemon.till.basket is not None
        assert kiosk.daemon.till.basket.total_minor == 12800
        assert c.post("/basket", data={"total": "12x"}).status_code == 400
        r = c.post("/scan", data={"code": kiosk.tokens[1]}, headers={"HX-Request": "true"})
        assert r.status_code == 204
        wait_for(lambda: kiosk.daemon.published_count == 1)
        pub = kiosk.daemon.recent[-1]
        assert pub.scan.source == "keypad" and pub.decision and pub.decision.accepted
        assert "CN¥20.00" in c.get("/fragments/sale").text


def test_pin_hash_is_salted_scrypt(tmp_path: Path) -> None:
    manager.set_pin(tmp_path, "123456")
    text = (tmp_path / manager.PIN_FILE).read_text()
    assert "123456" not in text and '"scrypt"' in text
    assert manager.check_pin(tmp_path, "123456") and not manager.check_pin(tmp_path, "123457")
    with pytest.raises(manager.PinError):
        manager.set_pin(tmp_path, "12")


def test_session_times_out(tmp_path: Path) -> None:
    now = [1000.0]
    manager.set_pin(tmp_path, "1234")
    m = manager.Manager(tmp_path, now=lambda: now[0], session_s=60)
    token = m.login("1234")
    assert token and m.valid(token)
    now[0] += 61
    assert not m.valid(token)


def test_every_template_string_is_marked_and_translated() -> None:
    used: set[str] = set()
    for path in (KIOSK / "templates").glob("*.html"):
        used |= set(re.findall(r'_\("([^"]+)"\)', path.read_text(encoding="utf-8")))
        used |= set(re.findall(r"_\('([^']+)'\)", path.read_text(encoding="utf-8")))
    assert used and used <= i18n.MARKED
    missing = {s for s in pages.UI_STRINGS if i18n.translate(s, "zh_CN") == s}
    assert not missing


def test_sse_stream_sends_a_decision(kiosk: Kiosk) -> None:
    got: list[str] = []
    with client(kiosk.url, timeout=5) as c:
        with c.stream("GET", "/events") as r:
            kiosk.feed(kiosk.tokens[2])  # no total yet: waits for it
            deadline = time.monotonic() + 3
            for line in r.iter_lines():
                got.append(line)
                if "needs_total" in line or time.monotonic() > deadline:
                    break
    assert any("needs_total" in line for line in got)


def test_set_pin_command_registers_and_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="redeem")
    sub = parser.add_subparsers(dest="command", required=True)

    def cmd(parent: Any, name: str, func: Any, help_: str) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = parent.add_parser(name, help=help_)
        sp.add_argument("--data", required=True)
        sp.set_defaults(func=func)
        return sp

    manager.add_commands(sub, cmd)
    args = parser.parse_args(["manager", "set-pin", "--data", str(tmp_path)])
    monkeypatch.setenv("REDEEM_MANAGER_PIN", "97531")
    assert args.func(args) == 0 and manager.check_pin(tmp_path, "97531")
    monkeypatch.setenv("REDEEM_MANAGER_PIN", "12")
    assert args.func(args) == 2 and manager.check_pin(tmp_path, "97531")


def test_stale_ledger_banner(kiosk: Kiosk) -> None:
    with client(kiosk.url) as c:
        assert "out of date" not in c.get("/").text
        kiosk.daemon.clock.advance(25 * 3600)  # type: ignore[attr-defined]
        assert "The coupon ledger is out of date" in c.get("/").text
        assert "优惠券数据已过期" in c.get("/?lang=zh_CN").text


def login(c: httpx.Client) -> None:
    c.post("/manager/login", data={"pin": PIN})
    assert pages.COOKIE_SESSION in c.cookies


def test_the_cashier_takes_back_the_last_coupon_within_the_window(kiosk: Kiosk) -> None:
    kiosk.daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 12800}))
    kiosk.feed(kiosk.tokens[0])
    wait_for(lambda: kiosk.daemon.published_count == 1)
    with client(kiosk.url) as c:
        sale = c.get("/fragments/sale").text
        assert "CN¥20.00" in sale and "Take back last coupon" in sale
        # The decision names the campaign's conditions, in the shopper's language too.
        assert "Minimum spend CN¥100.00" in c.get("/").text
        assert "最低消费 ¥100.00" in httpx.get(kiosk.url + "/?lang=zh_CN").text
        assert c.post("/void", headers={"HX-Request": "true"}).status_code == 204
        page = c.get("/").text
        assert "Coupon taken back" in page and "+\u2060CN¥20.00" in page
        assert 'data-reason="voided"' in page
        sale = c.get("/fragments/sale").text
        assert "CN¥20.00" not in sale and "Take back last coupon" not in sale
        # Nothing left to take back: a second void is refused, and says so.
        c.post("/void", headers={"HX-Request": "true"})
        assert 'data-reason="void_refused"' in c.get("/").text
    # The coupon is free again in the next sale.
    kiosk.daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 12800}))
    kiosk.feed(kiosk.tokens[0])
    wait_for(lambda: kiosk.daemon.published_count == 4)  # scan, void, refused void, scan
    last = kiosk.daemon.recent[-1].decision
    assert last is not None and last.accepted


def test_the_void_button_goes_once_the_window_has_passed(kiosk: Kiosk) -> None:
    kiosk.daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 12800}))
    kiosk.feed(kiosk.tokens[1])
    wait_for(lambda: kiosk.daemon.published_count == 1)
    kiosk.daemon.clock.advance(kiosk.daemon.cfg.terminal.void_window_s + 1)  # type: ignore[attr-defined]
    with client(kiosk.url) as c:
        assert "Take back last coupon" not in c.get("/fragments/sale").text
        c.post("/void", headers={"HX-Request": "true"})
        assert "void_refused" in c.get("/").text
        assert "CN¥20.00" in c.get("/fragments/sale").text  # still applied


def test_a_manager_approves_a_coupon_refused_for_a_stale_ledger(kiosk: Kiosk, world: World) -> None:
    world.campaign(id="BIG", amount_minor=6000, stacking="any")
    (big,) = world.issue("BIG")
    daemon = kiosk.daemon
    before = daemon.worker.call(lambda e: e.ledger.version)  # type: ignore[union-attr]
    world.central.publish()
    update = ledger_file(world.central.deltas(before))
    assert not daemon.worker.call(lambda e: e.import_ledger(update)).refused  # type: ignore[union-attr]
    daemon.clock.advance(73 * 3600)  # type: ignore[attr-defined]
    daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 12800}))
    kiosk.feed(big)
    wait_for(lambda: daemon.published_count == 1)
    with client(kiosk.url, follow_redirects=True) as c:
        cashier = c.get("/").text
        assert 'data-reason="ledger_stale"' in cashier and "Ask a manager to approve" in cashier
        assert c.post("/manager/override/1").url.path == "/manager"  # no session: no approval
        assert daemon.published_count == 1
        login(c)
        page = c.get("/manager").text
        assert 'id="override-1"' in page and "BIG" in page
        r = c.post("/manager/override/1")
        assert r.status_code == 200 and 'id="override-1"' not in r.text
        assert "No coupon is waiting for approval." in r.text
        assert "stale_ledger_override" in r.text  # the approval is a flag to review
        cashier = c.get("/").text
        assert 'data-reason="ok"' in cashier and "CN¥60.00" in cashier
        again = c.post("/manager/override/1")
        assert "no longer waiting for approval" in again.text
        assert daemon.published_count == 2


def test_device_health_shows_what_the_camera_sees(world: World, tmp_path: Path) -> None:
    frame = camera_media.scene(3)
    pattern = camera_media.write_sequence(tmp_path / "frames", [frame] * 3)
    body = f'\n[[input]]\nname = "cam"\nkind = "camera"\nsource = "{pattern}"\n'
    with serve(world, tmp_path, body) as k, client(k.url) as c:
        wait_for(lambda: k.daemon.health()["cam"]["counters"].get("frames", 0) >= 1)
        assert c.get("/manager/snapshot/cam.jpg").status_code == 401  # manager only
        login(c)
        assert 'src="/manager/snapshot/cam.jpg"' in c.get("/manager").text
        r = c.get("/manager/snapshot/cam.jpg")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        seen = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
        assert seen.shape[1] == 320  # shrunk for the dashboard
        small = cv2.resize(frame, (seen.shape[1], seen.shape[0]), interpolation=cv2.INTER_AREA)
        assert np.abs(seen.astype(int) - small.astype(int)).mean() < 8  # the real picture
        assert c.get("/manager/snapshot/nope.jpg").status_code == 404


def test_a_manager_trusts_the_clock_again_after_it_ran_ahead(kiosk: Kiosk) -> None:
    daemon, clock = kiosk.daemon, kiosk.daemon.clock
    clock.advance(30 * 86400)  # type: ignore[attr-defined]  # a bad NTP answer: a month ahead
    daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 12800}))
    kiosk.feed(kiosk.tokens[0])
    wait_for(lambda: daemon.published_count == 1)
    clock.advance(-30 * 86400 + 60)  # type: ignore[attr-defined]  # the right time again
    with client(kiosk.url, follow_redirects=True) as c:
        assert "The clock is not trusted" in c.get("/").text
        login(c)
        page = c.get("/manager").text
        assert 'id="clock-reset"' in page and "2026-11-25 12:01:00 UTC" in page
        done = c.post("/manager/clock/reset").text
        assert "The clock is trusted again." in done and 'id="clock-reset"' not in done
        assert "clock_reset" in done  # the reset is a flag to review
        assert "The clock is not trusted" not in c.get("/").text
    daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 12800}))
    kiosk.feed(kiosk.tokens[1])
    wait_for(lambda: daemon.published_count == 2)
    last = daemon.recent[-1].decision
    assert last is not None and last.accepted


# ---------------------------------------------------------------- audit gaps (kiosk screens)

ZH = {"lang": "zh_CN"}


def zh(c: httpx.Client, path: str) -> str:
    """The page in Simplified Chinese, leaving the client's language as it was."""
    text = c.get(path, params=ZH).text
    c.cookies.delete(pages.COOKIE_LANG)
    return text


@pytest.fixture
def shanghai() -> Iterator[None]:
    """The device set to the store's zone: UTC+8 all year ("CST-8" needs no tz database)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "CST-8"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


def publish_to(daemon: Daemon, world: World) -> None:
    """A new ledger version from the central, imported by the running terminal."""
    before = daemon.worker.call(lambda e: e.ledger.version)  # type: ignore[union-attr]
    world.central.publish()
    update = ledger_file(world.central.deltas(before))
    assert not daemon.worker.call(lambda e: e.import_ledger(update)).refused  # type: ignore[union-attr]


def test_the_sale_panel_shows_the_best_combination(kiosk: Kiosk, world: World) -> None:
    world.campaign(id="TEN", name="Ten off", amount_minor=1000, stacking="any")
    world.campaign(id="THIRTY", name="Thirty off", amount_minor=3000, stacking="any")
    (ten,), (thirty,) = world.issue("TEN"), world.issue("THIRTY")
    daemon = kiosk.daemon
    publish_to(daemon, world)
    daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 12800}))
    kiosk.feed(ten)
    kiosk.feed(thirty)
    wait_for(lambda: daemon.published_count == 2)
    with client(kiosk.url) as c:
        sale = c.get("/fragments/sale").text
        assert "Best combination" in sale and "CN¥40.00" in sale
        assert re.search(r'id="best-pay">CN¥88.00<', sale)
        assert sale.count('class="picked"') == 2 and "Left out" not in sale
        # Head office makes the bigger coupon exclusive: the two no longer combine, and the
        # best is the thirty alone; the ten is left out, saying why.
        world.campaign(id="THIRTY", name="Thirty off", amount_minor=3000, stacking="exclusive")
        publish_to(daemon, world)
        sale = c.get("/fragments/sale").text
        assert re.search(r'id="best-pay">CN¥98.00<', sale)
        picked = re.findall(r'<li class="picked"[^>]*>([^<]*)<', sale)
        assert len(picked) == 1 and "Thirty off" in picked[0]
        left = re.search(r'<li class="left-out"[^>]*>(.*?)</li>', sale)
        assert left and "Ten off" in left.group(1)
        assert Reason.NOT_STACKABLE.message("en") in left.group(1)
        text = zh(c, "/fragments/sale")
        assert "最优组合" in text and "未选用" in text
        assert Reason.NOT_STACKABLE.message("zh_CN") in text


def test_the_cashier_sees_when_the_central_cannot_be_reached(
    world: World, tmp_path: Path, shanghai: None
) -> None:
    # A central is configured but this test terminal is not enrolled: the loop stays off and
    # the status comes from what the last rounds stored, as the sync loop stores it.
    body = '\n[[input]]\nname = "sim"\nkind = "fake"\n\n[sync]\ncentral = "http://127.0.0.1:9"\n'
    with serve(world, tmp_path, body) as k, client(k.url) as c:
        assert "central service" not in c.get("/").text  # no round has failed
        rounds = [
            RoundResult(ok=True, started_at=T0 - 3600),  # 19:00 in the store's zone
            RoundResult(error="connection refused", error_kind="network", started_at=T0 - 60),
        ]
        for result in rounds:
            k.daemon.worker.call(lambda e, r=result: sync_status.record_round(e, r))  # type: ignore[union-attr]
        page = c.get("/").text
        assert "Cannot reach the central service since 2026-11-25 19:00." in page
        assert "自 2026年11月25日 19:00 起无法连接中心服务。" in zh(c, "/")
        # The manager's sync card: local times, the error in words, the offset with a sign.
        k.daemon.worker.call(lambda e: e.record_clock_offset(-2.5))  # type: ignore[union-attr]
        login(c)
        card = c.get("/manager").text
        assert re.search(r'id="last-sync">Last sync: 2026-11-25 19:00<', card)
        assert re.search(r'id="clock-offset">Clock offset: \+2.5 s', card)
        assert re.search(r'id="sync-error"[^>]*>Last error: 2026-11-25 19:59 no connection', card)
        assert "connection refused" in card and "1795" not in card  # no raw epoch
        text = zh(c, "/manager")
        assert "无网络连接" in text and "最近一次错误" in text
        # A refusal is an answer: not the offline banner (the manager's card shows it).
        refused = RoundResult(error="ledger update refused", error_kind="refused", started_at=T0)
        k.daemon.worker.call(lambda e: sync_status.record_round(e, refused))  # type: ignore[union-attr]
        assert "Cannot reach" not in c.get("/").text
        k.daemon.worker.call(lambda e: sync_status.record_round(e, RoundResult(ok=True)))  # type: ignore[union-attr]
        assert "central service" not in c.get("/").text


def test_device_faults_and_flags_are_in_the_managers_language(world: World, tmp_path: Path) -> None:
    body = '\n[[input]]\nname = "cam"\nkind = "camera"\nsource = "/nonexistent/f%03d.png"\n'
    with serve(world, tmp_path, body) as k, client(k.url) as c:
        wait_for(lambda: k.daemon.health()["cam"]["state"] in ("down", "degraded"))
        state = k.daemon.health()["cam"]["state"]
        words = {"down": ("not working", "不工作"), "degraded": ("working badly", "工作不稳定")}
        in_en, in_zh = words[state]
        assert f"A device is not working: cam ({in_en})" in c.get("/").text
        cashier = zh(c, "/")
        assert f"cam ({in_zh})" in cashier and f"({state})" not in cashier
        assert k.daemon.worker.call(lambda e: e.reset_clock_trust("m1")).accepted  # type: ignore[union-attr]
        login(c)
        page = zh(c, "/manager")
        assert re.search(rf'id="device-cam">cam: <b>{in_zh}</b>', page)
        flag = re.search(r'<div class="flag" id="flag-(\d+)">(.*?)</form>', page, re.S)
        assert flag and "<b>店长重新确认了时钟</b>" in flag.group(2)
        assert "(clock_reset" in flag.group(2)  # the code stays, small, for head office
        assert "A manager trusted the clock again" in c.get("/manager", params={"lang": "en"}).text


def test_form_errors_show_in_the_page_in_its_language(kiosk: Kiosk) -> None:
    with client(kiosk.url, cookies={pages.COOKIE_LANG: "zh_CN"}) as c:
        r = c.post("/basket", data={"total": "12x"})
        assert r.status_code == 400 and 'id="code"' in r.text  # the cashier page itself
        assert "这不是有效金额" in r.text and 'value="12x"' in r.text
        assert kiosk.daemon.till.basket is None
        login(c)
        r = c.get("/manager/export.csv", params={"since": "yesterday"})
        assert r.status_code == 400 and "日期格式应为 2026-11-25。" in r.text
        assert 'id="export"' in r.text  # the form is there to correct it
        r = c.post("/manager/flags/1", data={"action": "delete"})
        assert r.status_code == 400 and "请选择" in r.text and 'id="logout"' in r.text
        assert "unknown action" not in r.text and "not an amount" not in r.text


def test_a_review_needs_a_real_flag(kiosk: Kiosk) -> None:
    daemon = kiosk.daemon
    daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 12800}))
    kiosk.feed(kiosk.tokens[0])
    wait_for(lambda: daemon.published_count == 1)
    redeem_seq = daemon.recent[-1].decision.journal_seq  # type: ignore[union-attr]
    assert daemon.worker.call(lambda e: e.reset_clock_trust("m1")).accepted  # type: ignore[union-attr]
    flag_seq = daemon.worker.call(lambda e: e.journal.head_seq)  # type: ignore[union-attr]
    reviews = manager.Reviews(daemon.cfg.terminal.data)
    with client(kiosk.url) as c:
        login(c)
        for seq in (redeem_seq, 999_999):
            r = c.post(f"/manager/flags/{seq}", data={"action": "resolve", "note": "x"})
            assert r.status_code == 404 and "There is no such fraud flag." in r.text
        assert reviews.all() == {}
        r = c.post(f"/manager/flags/{flag_seq}", data={"action": "resolve"})
        assert r.status_code == 303
        assert reviews.all()[str(flag_seq)]["status"] == "resolved"


def test_open_flags_stay_listed_however_old(kiosk: Kiosk) -> None:
    daemon = kiosk.daemon
    assert daemon.worker.call(lambda e: e.reset_clock_trust("m1")).accepted  # type: ignore[union-attr]
    seq = daemon.worker.call(lambda e: e.journal.head_seq)  # type: ignore[union-attr]
    daemon.clock.advance(30 * 86400)  # type: ignore[attr-defined]
    with client(kiosk.url, follow_redirects=True) as c:
        login(c)
        assert f'id="flag-{seq}"' in c.get("/manager").text  # a month old, never reviewed
        page = c.post(f"/manager/flags/{seq}", data={"action": "acknowledge"}).text
        assert f'id="flag-{seq}"' not in page  # reviewed and old: off the list


def test_today_is_the_stores_day_not_utc(kiosk: Kiosk, shanghai: None) -> None:
    daemon = kiosk.daemon
    daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 12800}))
    kiosk.feed(kiosk.tokens[0])  # T0: 12:00 UTC, 20:00 in the store
    wait_for(lambda: daemon.published_count == 1)

    def count(page: str, card: str) -> str:
        m = re.search(rf'id="stat-{card}">.*?Redemptions: <b>(\d+)</b>', page, re.S)
        assert m
        return m.group(1)

    with client(kiosk.url) as c:
        login(c)
        page = c.get("/manager").text
        assert count(page, "today") == "1" and "<title>20: 1</title>" in page
        assert "2026-11-25 20:00:00 CST" in page  # the terminal's time, as a phone shows it
        daemon.clock.advance(5 * 3600)  # type: ignore[attr-defined]  # 01:00 the next day
        page = c.get("/manager").text  # still 2026-11-25 in UTC, but a new day in the store
        assert count(page, "today") == "0" and count(page, "week") == "1"
        assert 'name="since" value="2026-11-26"' in page


def test_the_lock_out_survives_a_restart(tmp_path: Path) -> None:
    wall = [T0]
    manager.set_pin(tmp_path, PIN)

    def boot() -> manager.Manager:  # a power cycle: a new process, the same data directory
        return manager.Manager(tmp_path, wall=lambda: wall[0])

    m = boot()
    for _ in range(3):
        assert m.login("0000") is None
    m = boot()
    assert m.locked_for() == 0
    for _ in range(2):  # the count went on: two more make five
        assert m.login("0000") is None
    assert m.locked_for() > 0
    m = boot()
    assert m.locked_for() > 0 and m.login(PIN) is None  # even the right PIN, after a reboot
    wall[0] += manager.LOCKOUT_S + 1
    m = boot()
    assert m.login(PIN) is not None
    wall[0] -= 1000 * manager.LOCKOUT_S  # a clock set far back cannot stretch a lock-out
    for _ in range(5):
        m.login("0000")
    wall[0] += 1000 * manager.LOCKOUT_S
    assert boot().locked_for() <= manager.LOCKOUT_S


def test_head_office_decisions_show_with_the_flags(kiosk: Kiosk) -> None:
    daemon = kiosk.daemon
    assert daemon.worker.call(lambda e: e.reset_clock_trust("m1")).accepted  # type: ignore[union-attr]
    seq = daemon.worker.call(lambda e: e.journal.head_seq)  # type: ignore[union-attr]
    terminal = daemon.status()["terminal"]
    items = [
        {"id": 1, "flag": 7, "kind": "clock_reset", "terminal": terminal, "seq": seq,
         "serial": None, "status": "acknowledged", "note": None, "at": int(T0)},
        {"id": 2, "flag": 7, "kind": "clock_reset", "terminal": terminal, "seq": seq,
         "serial": None, "status": "resolved", "note": "seen by the area manager",
         "at": int(T0) + 60},
        {"id": 3, "flag": 8, "kind": "double_redemption", "terminal": "T-OTHER", "seq": 12,
         "serial": "00ff", "status": "deny_listed", "note": "cloned tag", "at": int(T0)},
        {"status": "acknowledged"},  # a shape this screen does not know: no crash
    ]  # fmt: skip
    daemon.worker.call(lambda e: sync_status.store_flag_decisions(items, "3"))  # type: ignore[union-attr]
    with client(kiosk.url) as c:
        login(c)
        page = c.get("/manager").text
        mine = re.search(rf'id="central-{seq}">(.*?)</div>', page)
        assert mine and "Head office: <b>resolved</b>" in mine.group(1)
        assert "seen by the area manager" in mine.group(1)
        others = re.search(r'id="central-others">(.*?)</div>', page, re.S)
        assert others and "Coupon redeemed at two terminals" in others.group(1)
        assert "<b>deny-listed</b>" in others.group(1) and "cloned tag" in others.group(1)
        text = zh(c, "/manager")
        assert "总部" in text and "已列入黑名单" in text
