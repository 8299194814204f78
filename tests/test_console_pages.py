"""The console's fraud desk and fleet on the real central (loopback, SQLite): the evidence
page of a real double redemption (two tills redeem one coupon offline and upload), the
queue's filters (and bad ones), an enroll code made in the console that a till enrolls
with, revoking a terminal (its next signed request is refused), an analyst refused (403,
audited), and the pages in Chinese."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import requests

from coupons import cose
from coupons.clock import FixedClock
from sync import protocol
from sync.central import users
from sync.central.models import TerminalRow
from tests.central_server import Device, Running, running_central
from tests.conftest import T0
from tests.test_central_reconcile import _offline_redeem
from tests.test_console import PASSWORD, entries, login, token


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_central("sqlite", tmp_path_factory.mktemp("pages"), FixedClock(T0)) as c:
        with c.central.session():
            for name, role in (("lou", "admin"), ("ana", "analyst")):
                users.add_user(c.central, "test", name, role, PASSWORD)
        yield c


@pytest.fixture(scope="module")
def double(central: Running) -> tuple[int, str, list[str]]:
    """A real double redemption: flag id, serial (hex) and the two tills' terminal ids."""
    c = central.central
    c.add_campaign({"id": "TWICE", "kind": "fixed", "currency": "CNY", "amount_minor": 1000})
    [coupon] = c.issue("TWICE", 1)
    t1, t2 = central.till("S1"), central.till("S2")
    d1, rows1 = _offline_redeem(t1, coupon.token or "")
    d2, rows2 = _offline_redeem(t2, coupon.token or "")
    assert d1.accepted and d2.accepted
    assert t1.device.push(rows1)["problem"] is None
    assert t2.device.push(rows2)["problem"] is None
    s, _ = login(central, "ana")
    page = s.get(central.url + "/flags?kind=double_redemption", timeout=10)
    [flag_id] = re.findall(r'id="flag-(\d+)"', page.text)
    return int(flag_id), f"{coupon.serial:016x}", [t1.terminal, t2.terminal]


def test_evidence_of_a_double_redemption(
    central: Running, double: tuple[int, str, list[str]]
) -> None:
    flag_id, serial, tills = double
    s, _ = login(central, "ana")
    r = s.get(central.url + f"/flags/{flag_id}", timeout=10)
    assert r.status_code == 200
    assert serial in r.text and "double_redemption" in r.text
    for terminal in tills:  # each side: its entry with terminal, store, seq, time, amount
        row = re.search(rf'<tr id="entry-{terminal}-(\d+)"[^>]*>(.*?)</tr>', r.text, re.S)
        assert row, terminal
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(2), re.S)
        assert terminal in cells[0] and cells[1] == terminal.split("-")[0]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", cells[3])
        assert cells[7] == "CNY 10.00" and "accepted" in cells[5]
    assert 'id="flag-total">CNY 20.00<' in r.text
    assert 'id="flag-stores">S1, S2<' in r.text
    # Acting from the evidence page comes back to it, audited.
    r = s.post(
        central.url + f"/flags/{flag_id}/acknowledge",
        data={"csrftoken": token(r.text), "note": "rang both stores", "back": "flag"},
        timeout=10,
    )
    assert r.status_code == 200 and r.url.endswith(f"/flags/{flag_id}")
    assert "rang both stores" in r.text and 'id="flag-status">acknowledged' in r.text
    with central.central.session():
        assert [e for e in entries("flag.decide") if e["target"] == f"flag:{flag_id}"]
    assert s.get(central.url + "/flags/999999", timeout=10).status_code == 404


def test_queue_filters_and_bad_ones(central: Running, double: tuple[int, str, list[str]]) -> None:
    flag_id, _, _ = double
    s, _ = login(central, "ana")

    def shown(query: str) -> bool:
        r = s.get(central.url + "/flags?state=acknowledged&" + query, timeout=10)
        assert r.status_code == 200, r.text
        return f'id="flag-{flag_id}"' in r.text

    assert shown("kind=double_redemption&store=S2&campaign=TWICE")
    assert (
        not shown("store=S9") and not shown("campaign=OTHER") and not shown("kind=budget_exceeded")
    )
    assert not shown("older_than_h=1")
    assert (
        "No flags match these filters." in s.get(central.url + "/flags?store=S9", timeout=10).text
    )
    for query, words in (
        ("kind=DROP%20TABLE", "The kind must be"),
        ("store=a%2Fb", "The store must be"),
        ("campaign=%3Cscript%3E", "The campaign must be"),
        ("state=bogus", "The state must be"),
        ("older_than_h=-1", "Older than must be"),
        ("older_than_h=soon", "Older than must be"),
    ):
        r = s.get(central.url + "/flags?" + query, timeout=10)
        assert r.status_code == 400 and words in r.text and 'id="error"' in r.text, query
        assert "<script>" not in r.text


def test_admin_makes_an_enroll_code_a_till_enrolls_then_is_revoked(central: Running) -> None:
    s, r = login(central, "lou")
    page = s.get(central.url + "/fleet", timeout=10)
    r = s.post(
        central.url + "/fleet/enroll-code",
        data={"csrftoken": token(page.text), "store": "S7", "ttl": "3600"},
        timeout=10,
    )
    assert r.status_code == 200
    found = re.search(r'id="enroll-code">([A-Z0-9-]+)<', r.text)
    assert found and "<svg" in r.text and 'class="qr"' in r.text
    code = found.group(1)
    with central.central.session():
        [made] = [e for e in entries("enroll-code.make") if e["actor"] == "user:lou"]
    assert made["target"] == "store:S7" and code not in str(made)  # never the code itself

    key = cose.SigningKey.generate()
    enrolled = requests.post(
        central.url + protocol.ENROLL,
        json={"code": code, "device_key": key.public.hex()},
        timeout=30,
    )
    assert enrolled.status_code == 200, enrolled.text
    doc = enrolled.json()
    assert doc["store"] == "S7"
    device = Device(central.url, central.clock, key, doc["terminal"], doc["store"])
    assert device.ledger(0).status_code != 403

    fleet = s.get(central.url + "/fleet", timeout=10)
    assert f'id="terminal-{device.terminal}"' in fleet.text
    assert f'<tr class="quiet" id="terminal-{device.terminal}"' in fleet.text  # never synced
    # The confirmation must be the terminal's id: a bare click changes nothing.
    r = s.post(
        central.url + f"/fleet/{device.terminal}/revoke",
        data={"csrftoken": token(fleet.text), "confirm": "yes"},
        timeout=10,
    )
    assert r.status_code == 400 and "type its id" in r.text
    with central.central.session():
        assert not TerminalRow.get_by_id(device.terminal).revoked
    r = s.post(
        central.url + f"/fleet/{device.terminal}/revoke",
        data={"csrftoken": token(fleet.text), "confirm": device.terminal},
        timeout=10,
    )
    assert r.status_code == 200 and r.url.endswith("/fleet")
    assert f'<tr class="revoked" id="terminal-{device.terminal}"' in r.text
    assert device.ledger(0).status_code == 403
    with central.central.session():
        [entry] = [e for e in entries("terminal.revoke") if e["actor"] == "user:lou"]
    assert entry["target"] == f"terminal:{device.terminal}"
    assert entry["before"] == {"revoked": False} and entry["after"] == {"revoked": True}


def test_bad_enroll_code_form(central: Running) -> None:
    s, _ = login(central, "lou")
    page = s.get(central.url + "/fleet", timeout=10)
    for data in ({"store": "a/b", "ttl": "3600"}, {"store": "S1", "ttl": "0"}, {"store": "S1"}):
        r = s.post(
            central.url + "/fleet/enroll-code",
            data={"csrftoken": token(page.text), **data},
            timeout=10,
        )
        assert r.status_code == 400 and "An enroll code needs a store" in r.text, data
        assert 'id="enroll-code"' not in r.text


def test_analyst_may_not_manage_terminals(central: Running) -> None:
    with central.central.session():
        victim = TerminalRow.select().where(~TerminalRow.revoked).first()
    assert victim is not None
    s, _ = login(central, "ana")
    page = s.get(central.url + "/fleet", timeout=10)
    for path, data in (
        ("/fleet/enroll-code", {"store": "S1", "ttl": "3600"}),
        (f"/fleet/{victim.id}/revoke", {"confirm": victim.id}),
    ):
        r = s.post(central.url + path, data={"csrftoken": token(page.text), **data}, timeout=10)
        assert r.status_code == 403 and 'data-code="permission"' in r.text
    with central.central.session():
        refused = [e for e in entries("refused") if e["actor"] == "user:ana"]
        assert not TerminalRow.get_by_id(victim.id).revoked
    assert [e["target"] for e in refused] == [
        "POST /fleet/enroll-code",
        f"POST /fleet/{victim.id}/revoke",
    ]
    assert all(
        isinstance(e["after"], dict) and e["after"]["permission"] == "terminals.manage"
        for e in refused
    )


def test_chinese_pages(central: Running, double: tuple[int, str, list[str]]) -> None:
    flag_id, _, _ = double
    s, _ = login(central, "lou")
    r = s.get(central.url + f"/flags/{flag_id}?lang=zh_CN", timeout=10)
    assert "日志条目" in r.text and "折扣合计" in r.text
    r = s.get(central.url + "/flags?older_than_h=x", timeout=10)
    assert r.status_code == 400 and "整数小时" in r.text
    r = s.get(central.url + "/fleet", timeout=10)
    assert "生成注册码" in r.text and "静默" in r.text
