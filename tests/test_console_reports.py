"""The console's report on the real central (loopback, SQLite): two tills at two stores
redeem coupons of two campaigns on two days (offline, then uploading their journals), and
the page shows those figures by day, store and campaign with the refusals in their
failure categories; the CSV exports (a campaign named =cmd comes out as text); a backwards
or too long range answers 400 at the form; an auditor reads the report and every POST of
the console refuses them with 403."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator

import pytest
import requests
from starlette.routing import Route

from coupons.clock import FixedClock
from sync.central import users
from sync.central.console import ROUTERS, charts
from tests.central_server import Running, Till, running_central
from tests.conftest import T0, basket
from tests.test_console import PASSWORD, login, token

DAY1, DAY2 = "2026-11-25", "2026-11-26"  # T0 is noon UTC on the first


def _redeem(till: Till, codes: list[str]) -> list[str]:
    """The till pulls its ledger, redeems each code offline, then uploads its journal:
    the reasons it gave."""
    with till.opened() as engine:
        till.pull()
        reasons = [engine.redeem(code, basket(5000)).reason.value for code in codes]
        assert till.push()["problem"] is None  # its journal, while it is the open one
    return reasons


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def central(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    # Both backends: the sums by day are integer division in SQL, which each must do alike.
    clock = FixedClock(T0)
    with running_central(request.param, tmp_path_factory.mktemp("reports"), clock) as c:
        with c.central.session():
            for name, role in (("mia", "marketer"), ("abe", "auditor")):
                users.add_user(c.central, "test", name, role, PASSWORD)
            for cid, name, amount in (("SPRING", "Spring", 1000), ("CMD", "=cmd", 500)):
                c.central.add_campaign(
                    {"id": cid, "name": name, "kind": "fixed", "currency": "CNY"}
                    | {"amount_minor": amount}
                )
            spring = [i.token or "" for i in c.central.issue("SPRING", 4)]
            [late] = [i.token or "" for i in c.central.issue("SPRING", 1, validity_s=3600)]
            cmd = [i.token or "" for i in c.central.issue("CMD", 2)]
        t1, t2 = c.till("S1"), c.till("S2")
        # Day 1: S1 redeems one of each campaign, then a used coupon and a non-coupon.
        assert _redeem(t1, [spring[0], cmd[0], spring[0], "<not a coupon>"]) == [
            "ok",
            "ok",
            "already_redeemed",
            "malformed",
        ]
        assert _redeem(t2, [spring[1]]) == ["ok"]
        clock.advance(86400)  # day 2: S2 redeems one of each, and a coupon now expired
        assert _redeem(t2, [cmd[1], spring[2], late]) == ["ok", "ok", "expired"]
        yield c


def _table(html: str, table_id: str) -> dict[str, list[str]]:
    """A table's rows by their first cell: the cells as a person reads them."""
    body = re.search(rf'<table id="{table_id}">(.*?)</table>', html, re.S)
    assert body, table_id
    rows = {}
    for row in re.findall(r"<tr data-key[^>]*>(.*?)</tr>", body.group(1), re.S):
        cells = [
            re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        ]
        rows[cells[0]] = cells[1:]
    return rows


def test_figures_by_day_store_and_campaign(central: Running) -> None:
    s, _ = login(central, "mia")
    r = s.get(central.url + f"/report?from={DAY1}&to={DAY2}", timeout=30)
    assert r.status_code == 200, r.text
    # Redemptions, discount, coupons redeemed, issued, rate (to date: 7 coupons issued).
    assert _table(r.text, "by-day") == {
        DAY1: ["3", "CNY 25.00", "3", "7", "42.9%"],
        DAY2: ["2", "CNY 15.00", "2", "7", "71.4%"],
    }
    assert _table(r.text, "by-store") == {
        "S1": ["2", "CNY 15.00", "2", "7", "28.6%"],
        "S2": ["3", "CNY 25.00", "3", "7", "42.9%"],
    }
    assert _table(r.text, "by-campaign") == {
        "CMD": ["=cmd", "2", "CNY 10.00", "2", "2", "100.0%"],
        "SPRING": ["Spring", "3", "CNY 30.00", "3", "5", "60.0%"],
    }
    assert 'id="total-redemptions">5<' in r.text and 'id="total-discount">CNY 40.00<' in r.text
    # The chart: an inline SVG, a bar per day, with its y axis ticks.
    chart = re.search(r'<figure id="chart-day">(.*?)</figure>', r.text, re.S)
    assert chart and chart.group(1).count('class="bar"') == 2 and "<script" not in r.text
    assert ">11-25<" in chart.group(1) and ">3<" in chart.group(1)
    # One day only; the default range is the last 7 days to today (day 2).
    one = s.get(central.url + f"/report?from={DAY2}&to={DAY2}", timeout=30)
    assert list(_table(one.text, "by-day")) == [DAY2]
    assert _table(one.text, "by-store") == {"S2": ["2", "CNY 15.00", "2", "7", "28.6%"]}
    default = s.get(central.url + "/report", timeout=30)
    assert 'id="to" value="2026-11-26"' in default.text
    assert 'id="from" value="2026-11-20"' in default.text
    assert 'id="total-redemptions">5<' in default.text


def test_refusals_by_failure_category(central: Running) -> None:
    s, _ = login(central, "abe")
    r = s.get(central.url + f"/report?from={DAY1}&to={DAY2}", timeout=30)
    assert r.status_code == 200

    def category(name: str) -> str:
        found = re.search(rf'<tbody id="category-{name}">(.*?)</tbody>', r.text, re.S)
        assert found, name
        return found.group(1)

    assert 'class="num count">1<' in category("expired") and 'id="reason-expired"' in category(
        "expired"
    )
    trust = category("trust")
    assert 'class="num count">2<' in trust
    assert 'id="reason-already_redeemed"' in trust and 'id="reason-malformed"' in trust
    for empty in ("network", "budget", "system"):  # DOMAIN.md's categories, shown at 0
        assert 'class="num count">0<' in category(empty)
    assert 'id="total-refused">3<' in r.text


def _csv(s: requests.Session, url: str) -> tuple[requests.Response, list[list[str]]]:
    r = s.get(url, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    return r, list(csv.reader(io.StringIO(r.text)))


def test_every_table_as_csv_formula_safe(central: Running) -> None:
    s, _ = login(central, "abe")
    base = f"{central.url}/report.csv?from={DAY1}&to={DAY2}&table="
    r, rows = _csv(s, base + "campaign")
    assert f'filename="report-campaign-{DAY1}-to-{DAY2}.csv"' in r.headers["content-disposition"]
    assert rows[0][:3] == ["campaign", "name", "currency"]
    by_id = {row[0]: row for row in rows[1:]}
    assert by_id["CMD"][1] == "'=cmd"  # neutralised: a spreadsheet shows it, never runs it
    assert by_id["SPRING"][3:8] == ["3", "3000", "CNY 30.00", "3", "5"]
    _, days = _csv(s, base + "day")
    assert [(d[0], d[2], d[3]) for d in days[1:]] == [(DAY1, "3", "2500"), (DAY2, "2", "1500")]
    _, stores = _csv(s, base + "store")
    assert [(x[0], x[2]) for x in stores[1:]] == [("S1", "2"), ("S2", "3")]
    _, refused = _csv(s, base + "refusals")
    assert sorted((x[0], x[2], x[3]) for x in refused[1:]) == [
        ("expired", "expired", "1"),
        ("trust", "already_redeemed", "1"),
        ("trust", "malformed", "1"),
    ]
    assert s.get(base + "bogus", timeout=10).status_code == 400


@pytest.mark.parametrize(
    ("query", "words"),
    [
        (f"from={DAY2}&to={DAY1}", "The range runs backwards"),
        (f"from=2025-01-01&to={DAY2}", "at most 366 days"),
        ("from=2026-13-01", "A date is written as YYYY-MM-DD"),
        ("to=%3Cscript%3E", "A date is written as YYYY-MM-DD"),
    ],
)
def test_a_bad_range_is_refused_at_the_form(central: Running, query: str, words: str) -> None:
    s, _ = login(central, "mia")
    r = s.get(central.url + "/report?" + query, timeout=10)
    assert r.status_code == 400 and words in r.text
    assert re.search(r'<form[^>]*id="range".*id="error".*</form>', r.text, re.S)
    assert 'id="by-day"' not in r.text and "<script>" not in r.text
    assert s.get(central.url + "/report.csv?table=day&" + query, timeout=10).status_code == 400


def test_the_report_in_chinese(central: Running) -> None:
    s, _ = login(central, "mia")
    r = s.get(central.url + f"/report?from={DAY2}&to={DAY1}&lang=zh_CN", timeout=10)
    assert r.status_code == 400 and "日期范围颠倒了" in r.text
    r = s.get(central.url + f"/report?from={DAY1}&to={DAY2}", timeout=10)
    assert "报表" in r.text and "按类别的拒绝" in r.text and "已过期或当时不可用" in r.text


def _console_posts() -> list[str]:
    """Every POST route of the console that changes something (all but logging in and out
    and the campaign preview, which saves nothing), its parameters filled."""
    paths = []
    for router in ROUTERS:
        for route in router.routes:
            if isinstance(route, Route) and "POST" in (route.methods or ()):
                if route.path not in ("/login", "/logout", "/campaigns/preview"):
                    paths.append(
                        re.sub(
                            r"\{(\w+)\}",
                            lambda m: {"step": "pause", "action": "acknowledge"}.get(
                                m.group(1), "1"
                            ),
                            route.path,
                        )
                    )
    return paths


def test_an_auditor_reads_everything_and_every_post_is_refused(central: Running) -> None:
    s, r = login(central, "abe")
    for path in ("/report", "/audit", "/campaigns", "/flags", "/fleet"):
        assert s.get(central.url + path, timeout=10).status_code == 200, path
    page = s.get(central.url + "/campaigns", timeout=10)
    posts = _console_posts()
    assert "/campaigns/1/pause" in posts and len(posts) >= 4
    for path in posts:
        r = s.post(central.url + path, data={"csrftoken": token(page.text)}, timeout=10)
        assert r.status_code == 403, (path, r.status_code)
        assert "Your role may not do this" in r.text
    with central.central.session():
        refused = [e for e in users.audit_log(limit=5000) if e["action"] == "refused"]
    assert {e["target"] for e in refused if e["actor"] == "user:abe"} >= {
        f"POST {p}" for p in posts
    }


def test_nice_axis_steps() -> None:
    assert [charts.nice_step(n) for n in (1, 5, 6, 11, 30, 99, 4000)] == [1, 1, 2, 5, 10, 20, 1000]


def test_every_refusal_reason_has_one_category() -> None:
    from coupons import refusals
    from coupons.reasons import Reason

    held = [r for _, (_, codes) in refusals.CATEGORIES.items() for r in codes]
    assert len(held) == len(set(held)) and set(held) == set(Reason) - {Reason.OK}
    assert list(refusals.CATEGORIES)[:4] == ["network", "expired", "budget", "system"]
    assert refusals.category("a_reason_from_a_newer_till") == refusals.OTHER
