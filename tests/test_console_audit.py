"""The console's audit log on the real central (loopback, SQLite): a campaign paused in
the console appears newest first with who, what and the keys it changed; the filters by
actor, action and days (and a backwards range refused at the form); a hundred entries a
page; the CSV export of the filtered entries, formula-safe; a marketer, who lacks
audit.read, is refused and not shown the link."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator

import pytest

from coupons.clock import FixedClock
from sync.central import users
from sync.central.console import audit_pages
from tests.central_server import Running, running_central
from tests.conftest import T0
from tests.test_console import PASSWORD, login, token

TODAY = "2026-11-25"  # T0 is noon UTC


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_central("sqlite", tmp_path_factory.mktemp("audit"), FixedClock(T0)) as c:
        with c.central.session():
            for name, role in (("mia", "marketer"), ("abe", "auditor"), ("lou", "admin")):
                users.add_user(c.central, "test", name, role, PASSWORD)
            c.central.add_campaign(
                {"id": "SPRING", "name": "Spring", "kind": "fixed", "currency": "CNY"}
                | {"amount_minor": 1000}
            )
        s, _ = login(c, "mia")
        page = s.get(c.url + "/campaigns", timeout=10)
        r = s.post(c.url + "/campaigns/SPRING/pause", data={"csrftoken": token(page.text)})
        assert r.status_code == 200 and r.url.endswith("/campaigns")
        yield c


def _rows(html: str) -> list[tuple[str, str, str, str, str]]:
    """(id, actor, action, target, change) of each entry shown, in the page's order."""
    out = []
    for eid, row in re.findall(r'<tr id="audit-(\d+)">(.*?)</tr>', html, re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        text = [re.sub(r"<[^>]+>", "", c).strip() for c in cells]
        out.append((eid, text[1], text[2], text[3], text[4]))
    return out


def test_a_pause_done_in_the_console_shows_with_what_it_changed(central: Running) -> None:
    s, r = login(central, "abe")
    assert 'id="nav-audit"' in r.text
    r = s.get(central.url + "/audit", timeout=10)
    assert r.status_code == 200
    rows = _rows(r.text)
    ids = [int(x[0]) for x in rows]
    assert ids == sorted(ids, reverse=True)  # newest first
    [pause] = [x for x in rows if x[2] == "campaign.pause"]
    assert pause[1] == "user:mia" and pause[3] == "SPRING"
    assert "status: active → paused" in pause[4]
    assert f"{TODAY}T12:00:00Z" in r.text


def test_filters_by_actor_action_and_days(central: Running) -> None:
    s, _ = login(central, "lou")

    def actions(query: str) -> list[str]:
        r = s.get(central.url + "/audit?" + query, timeout=10)
        assert r.status_code == 200, r.text
        return [x[2] for x in _rows(r.text)]

    assert actions("action=campaign.pause") == ["campaign.pause"]
    assert set(actions("actor=user:mia")) == {"console.login", "campaign.pause"}
    assert set(actions("actor=test")) == {"user.add"}
    assert actions(f"from={TODAY}&to={TODAY}") and not actions("from=2026-11-26")
    assert not actions("to=2026-11-24")
    r = s.get(central.url + "/audit?actor=nobody", timeout=10)
    assert "No audit entries match these filters." in r.text
    for query, words in (
        ("from=2026-11-26&to=2026-11-25", "The range runs backwards"),
        ("from=yesterday", "A date is written as YYYY-MM-DD"),
        ("page=0", "The page must be a whole number"),
    ):
        r = s.get(central.url + "/audit?" + query, timeout=10)
        assert r.status_code == 400 and words in r.text and 'id="error"' in r.text, query


def test_a_hundred_a_page(central: Running) -> None:
    with central.central.session():
        for i in range(150):
            users.audit(central.central, "test:bulk", "bulk.test", f"item:{i}")
    s, _ = login(central, "abe")
    first = s.get(central.url + "/audit?action=bulk.test", timeout=10)
    rows = _rows(first.text)
    assert len(rows) == audit_pages.PAGE and rows[0][3] == "item:149"
    assert "150" in first.text and 'id="older"' in first.text and 'id="newer"' not in first.text
    older = re.search(r'id="older" href="([^"]+)"', first.text)
    assert older
    second = s.get(central.url + older.group(1).replace("&amp;", "&"), timeout=10)
    rest = _rows(second.text)
    assert len(rest) == 50 and rest[-1][3] == "item:0" and 'id="newer"' in second.text


def test_csv_export_of_the_filtered_entries(central: Running) -> None:
    with central.central.session():
        users.audit(central.central, "test:csv", "csv.test", '=HYPERLINK("x")', None, {"a": 1})
    s, _ = login(central, "abe")
    r = s.get(central.url + "/audit.csv?action=campaign.pause", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert 'filename="audit-' in r.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == list(users.AUDIT_COLUMNS)
    [pause] = rows[1:]
    assert pause[2:5] == ["user:mia", "campaign.pause", "SPRING"]
    assert '"status": "paused"' in pause[6] and '"status": "active"' in pause[5]
    r = s.get(central.url + "/audit.csv?actor=test:csv", timeout=10)
    [row] = list(csv.reader(io.StringIO(r.text)))[1:]
    assert row[4] == '\'=HYPERLINK("x")'  # neutralised: opens as text
    everything = s.get(central.url + "/audit.csv", timeout=10).text
    assert everything.count("bulk.test") >= 150  # the CSV is not paged


def test_a_marketer_lacks_audit_read(central: Running) -> None:
    s, r = login(central, "mia")
    assert 'id="nav-audit"' not in r.text and 'id="nav-report"' in r.text
    for path in ("/audit", "/audit.csv"):
        r = s.get(central.url + path, timeout=10)
        assert r.status_code == 403 and "Your role may not do this" in r.text


def test_the_audit_log_in_chinese(central: Running) -> None:
    s, _ = login(central, "abe")
    r = s.get(central.url + "/audit?lang=zh_CN", timeout=10)
    assert "审计日志" in r.text and "操作人" in r.text


def test_a_change_is_shown_as_the_keys_it_changed() -> None:
    assert audit_pages.changes({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": "x"}) == [
        {"key": "b", "before": "2", "after": "3"},
        {"key": "c", "before": None, "after": "x"},
    ]
    assert audit_pages.changes(None, {"revoked": True}) == [
        {"key": "revoked", "before": None, "after": "true"}
    ]
    assert audit_pages.changes(None, None) == []
