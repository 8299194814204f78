"""The fleet page shows what tills report of themselves (sync/till_status.py) on the real
central (loopback, SQLite): a real till's sync client reports its journal head, ledger
version, clock offset, device health and app version, and the page shows its backlog, the
ledger's age, the offset, the health and the version; a till from before the report (no
header) still syncs and shows "-"; a malformed, oversized or badly signed report is
ignored and counted and never fails the request; the terminals list and text say the same."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator

import pytest
import requests

from coupons import cose
from coupons.clock import FixedClock
from sync import protocol, till_status
from sync.central import display, terminals, users
from sync.central.models import TerminalRow
from sync.client import Direct, SyncClient
from sync.http import CentralLink, Link
from tests.central_server import Device, Running, Till, running_central
from tests.conftest import T0, basket
from tests.test_console import PASSWORD, login

INPUTS = {"camera": "ok", "nfc": "down", "scanner": "ok"}


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_central("sqlite", tmp_path_factory.mktemp("fleet"), FixedClock(T0)) as c:
        with c.central.session():
            users.add_user(c.central, "test", "ops", "auditor", PASSWORD)
            c.central.add_campaign(
                {"id": "FLEET", "kind": "fixed", "currency": "CNY", "amount_minor": 500}
            )
        yield c


def _cells(page: str, terminal: str) -> dict[str, str]:
    """The fleet row of a terminal: its cells' text by class (unescaped), and under
    "class:NAME" each cell's whole class attribute."""
    row = re.search(rf'<tr class="([^"]*)" id="terminal-{terminal}">(.*?)</tr>', page, re.S)
    assert row, f"no row for {terminal}"
    out = {"row": row.group(1)}
    for cls, value in re.findall(r'<td class="([^"]+)">(.*?)</td>', row.group(2), re.S):
        name = [c for c in cls.split() if c != "num"][0]
        text = html.unescape(re.sub(r"<[^>]+>", " ", value))
        out[name] = " ".join(text.split())
        out[f"class:{name}"] = cls
    return out


def _fleet(central: Running) -> str:
    s, _ = login(central, "ops")  # an auditor reads the fleet
    r = s.get(central.url + "/fleet", timeout=10)
    assert r.status_code == 200
    return r.text


def _client(till: Till, clock: FixedClock) -> SyncClient:
    """The till's own sync client, its link on `clock`."""
    assert till.engine is not None
    link = CentralLink(Link(till.running.url), till.device.key, till.terminal, clock)
    return SyncClient(till.data, link, Direct(till.engine), inputs=lambda: INPUTS)


def test_a_tills_report_reaches_the_fleet_page(central: Running) -> None:
    till = central.till("F1")
    [a, b, c] = central.central.issue("FLEET", 3)
    shared = central.clock  # the central's and the till engine's
    assert isinstance(shared, FixedClock)
    ahead = FixedClock(T0 + 12.5)  # the till's link runs 12.5 s ahead of the central
    with till.opened() as engine:
        client = _client(till, ahead)
        assert client.run_round().ok
        central.publish()
        assert client.run_round().ok  # a second round: the version it now holds
        version = engine.ledger.version
        page = _fleet(central)
        cells = _cells(page, till.terminal)
        assert cells["backlog"] == "0" and cells["ledger"] == str(version)
        assert cells["clock"] == "+12.5 s"  # the till runs ahead of the central
        assert cells["health"] == "down (nfc)" and "warn" in cells["class:health"]
        assert cells["app"] == till_status.app_version() and cells["app"] not in ("", "-")
        assert cells["ledger-age"] == "just now"

        # Three sales written, not uploaded yet: the till talks to the central (its ledger
        # pull, as the rest of a round whose journal upload has not got through yet).
        for coupon in (a, b, c):
            assert engine.redeem(coupon.token or "", basket(5000)).accepted
        for clock in (shared, ahead):
            clock.advance(3 * 3600)
        try:
            client.report_status()
            client.pull_flags()
            cells = _cells(_fleet(central), till.terminal)
            assert cells["backlog"] == "3"
            assert cells["ledger-age"] == "3 h ago"  # central now minus its publication
            assert re.search(r'id="store-F1"[^>]*>.*?class="num backlog">3<', _fleet(central), re.S)
            # The next full round uploads them: nothing left behind.
            assert client.run_round().ok
            assert _cells(_fleet(central), till.terminal)["backlog"] == "0"
        finally:
            for clock in (shared, ahead):
                clock.advance(-3 * 3600)

    # The admin API's listing and `redeem-central terminals` say the same.
    with central.central.session():
        [doc] = [t for t in terminals.list_terminals(central.central) if t["store"] == "F1"]
    # Measured off the central's answers: within half a round trip of the true 12.5 s.
    assert doc["clock_ms"] is not None and 12_000 <= doc["clock_ms"] <= 13_000
    assert doc["backlog"] == 0 and doc["health"] == "down"
    assert doc["unwell"] == ["nfc"] and doc["ledger_version"] == version
    out = central.cli("terminals", now=str(int(T0) + 60))
    [line] = [x for x in out.stdout.splitlines() if x.startswith(till.terminal + " ")]
    assert "+12.5 s" in line and "down (nfc)" in line and str(doc["app_version"]) in line
    assert "ledger age" in out.stdout.splitlines()[0]


def test_an_old_till_without_the_report_still_syncs_and_shows_dashes(central: Running) -> None:
    old = central.device("F2")  # signs as tills always have: no status header
    assert old.ledger(0).status_code == 200
    assert old.get(f"{protocol.FLAGS}?since=0").status_code == 200
    cells = _cells(_fleet(central), old.terminal)
    for name in ("backlog", "clock", "health", "app"):
        assert cells[name] == "-", name
    assert "F2" in _fleet(central)


def _signed_status(
    device: Device, path: str, status: str, key: cose.SigningKey | None = None
) -> dict[str, str]:
    """Headers of a GET from `device` carrying `status`, its signature made with `key`."""
    signed = protocol.sign_headers(device.key, device.terminal, "GET", path, b"", T0)
    return signed | till_status.status_headers(key or device.key, signed, "GET", path, status)


def test_garbage_reports_are_ignored_and_counted_never_failing_sync(central: Running) -> None:
    device = central.device("F3")
    path = f"{protocol.FLAGS}?since=0"
    good = "head=4;ledger=1;clock_ms=-250;health=ok;app=9.9.9"
    r = requests.get(central.url + path, headers=_signed_status(device, path, good), timeout=10)
    assert r.status_code == 200
    cells = _cells(_fleet(central), device.terminal)
    assert cells["backlog"] == "4" and cells["clock"] == "-0.2 s" and cells["health"] == "ok"

    bad_reports = [
        "head=lots",  # not a number
        "head=1;head=2",  # twice
        "health=fine",  # not a state
        "unwell=" + ",".join(f"in{i}" for i in range(9)),  # too many
        "app=" + "9" * 40,  # too long a version
        "head=1;" + "x=y;" * 80,  # past the size bound
        "no pairs at all",
        "clock_ms=99999999999999999",  # out of range
    ]
    for text in bad_reports:
        headers = _signed_status(device, path, text)
        r = requests.get(central.url + path, headers=headers, timeout=10)
        assert r.status_code == 200, text
    # A well-formed report signed by another key, or with no signature at all.
    forged = _signed_status(device, path, "head=999;health=down", cose.SigningKey.generate())
    assert requests.get(central.url + path, headers=forged, timeout=10).status_code == 200
    unsigned = protocol.sign_headers(device.key, device.terminal, "GET", path, b"", T0)
    unsigned[till_status.HEADER_STATUS] = "head=999"
    assert requests.get(central.url + path, headers=unsigned, timeout=10).status_code == 200

    page = _fleet(central)
    cells = _cells(page, device.terminal)
    assert cells["backlog"] == "4" and cells["health"].startswith("ok")  # unchanged
    assert f"status reports ignored: {len(bad_reports) + 2}" in cells["health"]
    with central.central.session():
        row = TerminalRow.get_by_id(device.terminal)
    assert row.status_ignored == len(bad_reports) + 2 and row.journal_head == 4
    # Unknown keys are a newer till's: skipped, the rest stored.
    newer = _signed_status(device, path, "head=6;mood=sunny")
    assert requests.get(central.url + path, headers=newer, timeout=10).status_code == 200
    assert _cells(_fleet(central), device.terminal)["backlog"] == "6"
    doc = json.loads(central.cli("terminals", "--json").stdout)
    [mine] = [t for t in doc["terminals"] if t["terminal"] == device.terminal]
    assert mine["status_ignored"] == len(bad_reports) + 2 and mine["backlog"] == 6


def test_the_header_format_round_trips_and_stays_within_its_bound() -> None:
    status = till_status.TillStatus(12, 3, -40, "degraded", ("camera", "nfc"), "0.1.0")
    text = till_status.format_status(status)
    assert text == "head=12;ledger=3;clock_ms=-40;health=degraded;unwell=camera,nfc;app=0.1.0"
    assert till_status.parse_status(text) == status
    many = {f"input-{i}": "down" for i in range(20)}
    worst, unwell = till_status.worst_health(many)
    assert worst == "down" and len(unwell) == till_status.MAX_UNWELL
    long = till_status.report(10**15, 2**40, -(10**10), many)  # clamped, never refused
    assert len(long) <= till_status.MAX_STATUS_CHARS and "clock_ms" not in long
    assert display.clock(-0) == "+0.0 s" and display.clock(None) == "-"
