"""The head-office console on the real central (loopback, SQLite): log in, a wrong
password, the lock-out, an expired session (the central's clock), CSRF, a marketer pausing
a campaign (audited), an auditor refused (403, audited), and the pages in Chinese."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from coupons import i18n
from coupons.clock import FixedClock
from sync.central import flags, users
from sync.central.console import pages, session
from sync.central.store import Central
from tests.central_server import Running, running_central
from tests.conftest import T0

PASSWORD = "correct horse battery staple"
CJK = re.compile(r"[\u4e00-\u9fff]")
TEMPLATES = Path(pages.__file__).parent / "templates"


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_central("sqlite", tmp_path_factory.mktemp("console"), FixedClock(T0)) as c:
        with c.central.session():
            for name, role in (("mia", "marketer"), ("abe", "auditor"), ("lou", "admin")):
                users.add_user(c.central, "test", name, role, PASSWORD)
            c.central.add_campaign(
                {
                    "id": "SPRING",
                    "name": "Spring",
                    "kind": "fixed",
                    "currency": "CNY",
                    "amount_minor": 1000,
                }  # fmt: skip
            )
        yield c


def token(html: str) -> str:
    found = re.search(r'name="csrftoken" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def login(
    central: Running, name: str, password: str = PASSWORD
) -> tuple[requests.Session, requests.Response]:
    s = requests.Session()
    form = s.get(central.url + "/login", timeout=10)
    assert form.status_code == 200
    r = s.post(
        central.url + "/login",
        data={"name": name, "password": password, "csrftoken": token(form.text)},
        timeout=30,
    )
    return s, r


def status(c: Central, cid: str) -> str:
    with c.session():
        return c.campaign_summary(cid).status


def entries(action: str) -> list[users.AuditDoc]:
    return [e for e in users.audit_log(limit=5000) if e["action"] == action]


def test_root_and_pages_redirect_to_login(central: Running) -> None:
    for path in ("/", "/campaigns", "/flags", "/fleet"):
        r = requests.get(central.url + path, timeout=10, allow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    assert requests.get(central.url + "/static/console.css", timeout=10).status_code == 200
    doc = requests.get(central.url + "/v1/openapi.json", timeout=10)
    assert "/login" not in doc.text


def test_login_and_dashboard(central: Running) -> None:
    s, r = login(central, "mia")
    assert r.status_code == 200 and r.url.endswith("/")
    assert 'id="viewer">mia<' in r.text and "SPRING" in r.text
    cookie = next(c for c in s.cookies if c.name == session.COOKIE)
    assert cookie.has_nonstandard_attr("HttpOnly")
    set_cookie = r.history[0].headers["set-cookie"]
    assert "SameSite=strict" in set_cookie or "samesite=strict" in set_cookie.lower()
    for path in ("/campaigns", "/flags", "/fleet"):
        assert s.get(central.url + path, timeout=10).status_code == 200, path


def test_wrong_password_and_lock_out(central: Running) -> None:
    with central.central.session():
        users.add_user(central.central, "test", "lee", "analyst", PASSWORD)
    _, r = login(central, "lee", "not the password at all")
    assert r.status_code == 401 and "Wrong user name or password." in r.text
    assert 'value="lee"' in r.text  # the name stays in its field
    for _ in range(users.MAX_FAILURES - 1):
        login(central, "lee", "not the password at all")
    _, r = login(central, "lee")  # the right password, but locked now
    assert r.status_code == 401 and "locked for 15 minutes" in r.text


def test_session_expires_after_30_idle_minutes(central: Running) -> None:
    s, _ = login(central, "mia")
    clock = central.clock
    assert isinstance(clock, FixedClock)
    clock.advance(session.IDLE_S - 60)
    assert s.get(central.url + "/campaigns", timeout=10).status_code == 200  # refreshes it
    clock.advance(session.IDLE_S - 60)
    assert s.get(central.url + "/campaigns", timeout=10).status_code == 200
    clock.advance(session.IDLE_S + 1)
    r = s.get(central.url + "/campaigns", timeout=10)
    assert r.url.endswith("/login?expired=1")
    assert "Your session has expired: log in again." in r.text


def test_csrf_missing_or_wrong_is_refused_and_changes_nothing(central: Running) -> None:
    s, _ = login(central, "mia")
    for data in ({}, {"csrftoken": "forged"}):
        r = s.post(central.url + "/campaigns/SPRING/pause", data=data, timeout=10)
        assert r.status_code == 403 and 'data-code="csrf-token"' in r.text
    assert status(central.central, "SPRING") == "active"
    # The login form too: without its token nobody is even checked.
    r = requests.post(
        central.url + "/login", data={"name": "mia", "password": PASSWORD}, timeout=10
    )
    assert r.status_code == 403 and session.COOKIE not in r.cookies


def test_marketer_pauses_and_resumes_a_campaign(central: Running) -> None:
    s, r = login(central, "mia")
    page = s.get(central.url + "/campaigns", timeout=10)
    r = s.post(
        central.url + "/campaigns/SPRING/pause", data={"csrftoken": token(page.text)}, timeout=10
    )
    assert r.status_code == 200 and r.url.endswith("/campaigns")
    assert status(central.central, "SPRING") == "paused"
    assert 'id="resume-SPRING"' in r.text
    with central.central.session():
        [entry] = [e for e in entries("campaign.pause") if e["actor"] == "user:mia"]
    assert entry["target"] == "SPRING"
    assert isinstance(entry["before"], dict) and entry["before"]["status"] == "active"
    assert isinstance(entry["after"], dict) and entry["after"]["status"] == "paused"
    r = s.post(
        central.url + "/campaigns/SPRING/resume", data={"csrftoken": token(r.text)}, timeout=10
    )
    assert status(central.central, "SPRING") == "active"


def test_auditor_sees_everything_and_changes_nothing(central: Running) -> None:
    s, _ = login(central, "abe")
    page = s.get(central.url + "/campaigns", timeout=10)
    assert page.status_code == 200 and "SPRING" in page.text
    r = s.post(
        central.url + "/campaigns/SPRING/pause", data={"csrftoken": token(page.text)}, timeout=10
    )
    assert r.status_code == 403 and 'data-code="permission"' in r.text
    assert status(central.central, "SPRING") == "active"
    r = s.post(
        central.url + "/flags/1/acknowledge", data={"csrftoken": token(page.text)}, timeout=10
    )
    assert r.status_code == 403
    with central.central.session():
        refused = [e for e in entries("refused") if e["actor"] == "user:abe"]
    assert [e["target"] for e in refused] == [
        "POST /campaigns/SPRING/pause",
        "POST /flags/1/acknowledge",
    ]


def test_chinese_pages(central: Running) -> None:
    s = requests.Session()
    r = s.get(central.url + "/login", headers={"Accept-Language": "zh-CN,zh;q=0.9"}, timeout=10)
    assert "登录" in r.text and '<html lang="zh-CN">' in r.text
    s, _ = login(central, "mia")
    r = s.get(central.url + "/campaigns?lang=zh_CN", timeout=10)
    assert "总部控制台" in r.text and "进行中" in r.text
    r = s.get(central.url + "/fleet", timeout=10)  # the choice is kept in a cookie
    assert "还没有注册的终端。" in r.text


def test_every_template_string_is_marked_and_translated() -> None:
    used: set[str] = set()
    for path in TEMPLATES.glob("*.html"):
        text = path.read_text(encoding="utf-8")
        used |= set(re.findall(r'_\("([^"]+)"\)', text)) | set(re.findall(r"_\('([^']+)'\)", text))
    assert used and used <= i18n.MARKED
    missing = {m for m in pages.UI_STRINGS if not CJK.search(i18n.translate(m, "zh_CN"))}
    assert not missing


def test_analyst_acknowledges_a_flag_and_the_dashboard_counts_open_ones(central: Running) -> None:
    c = central.central
    with c.session():
        users.add_user(c, "test", "ana", "analyst", PASSWORD)
        flags.raise_flag(c, "console-test", "double_redemption", "test", store="S1", serial="1a")
    s, r = login(central, "ana")
    assert "double_redemption" in r.text  # the dashboard's open flags by kind
    page = s.get(central.url + "/flags", timeout=10)
    [flag_id] = re.findall(r'id="flag-(\d+)"', page.text)
    r = s.post(
        central.url + f"/flags/{flag_id}/acknowledge",
        data={"csrftoken": token(page.text), "note": "called the store"},
        timeout=10,
    )
    assert r.status_code == 200 and f'id="flag-{flag_id}"' not in r.text  # left the open queue
    r = s.get(central.url + "/flags?status=acknowledged", timeout=10)
    assert "called the store" in r.text
    with c.session():
        [entry] = [e for e in entries("flag.decide") if e["actor"] == "user:ana"]
    assert isinstance(entry["after"], dict) and entry["after"]["status"] == "acknowledged"
