"""Admin side of the real central (SQLite and PostgreSQL): bearer tokens, deciding fraud
flags (the decision reaches the store's terminals; deny-listing reaches every till through
the ledger), and the report a retailer reads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from sync import protocol
from terminal.clock import FixedClock
from terminal.decision import Context
from terminal.reasons import Reason
from tests.central_server import BACKENDS, Running, running_central
from tests.conftest import T0, basket

A = protocol.ADMIN_PREFIX


@pytest.fixture(scope="module", params=BACKENDS)
def central(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    with running_central(request.param, tmp_path_factory.mktemp("admin"), FixedClock(T0)) as c:
        yield c


def _admin(central: Running, method: str, path: str, token: str | None, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, central.url + A + path, headers=headers, timeout=30, **kw)


def test_admin_endpoints_need_a_token(central: Running) -> None:
    for method, path in (("GET", "/flags"), ("POST", "/flags/1"), ("GET", "/report")):
        r = _admin(central, method, path, None, json={"status": "resolved"})
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert r.headers["Content-Type"].startswith("application/problem+json")
        assert _admin(central, method, path, "era_guess").status_code == 401
    # A device signature is not an admin credential either.
    dev = central.device()
    assert dev.get(A + "/flags").status_code == 401

    made = central.cli("admin-token", "--label", "ops", "--json")
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)["token"]
    assert _admin(central, "GET", "/flags", token).status_code == 200


def test_decisions_flow_back_and_deny_listing_reaches_every_till(central: Running) -> None:
    c = central.central
    c.add_campaign({"id": "AD1", "kind": "fixed", "currency": "CNY", "amount_minor": 500})
    customer = "badc0de1"
    coupons = c.issue("AD1", 3, customer=bytes.fromhex(customer))
    tag = bytes.fromhex("04aabbccddeeff")
    till, elsewhere = central.till("S4"), central.till("S5")
    token = central.admin_token()
    with till.opened() as engine:
        till.pull()
        b = basket(5000, ref=customer)
        assert engine.redeem(coupons[0].token or "", b, Context(tag_uid=tag)).accepted
        assert not engine.redeem(coupons[0].token or "", b, Context(tag_uid=tag)).accepted
        till.push()
    flags = _admin(central, "GET", "/flags", token, params={"store": "S4"}).json()["flags"]
    [flag] = [f for f in flags if f["terminal"] == till.terminal and f["kind"] == "replay"]

    bad = _admin(central, "POST", f"/flags/{flag['id']}", token, json={"status": "gone"})
    assert bad.status_code == 400
    assert (
        _admin(central, "POST", "/flags/999999", token, json={"status": "resolved"}).status_code
        == 404
    )
    assert _admin(central, "POST", f"/flags/{flag['id']}", token, data=b"{").status_code == 400

    seen = till.device.get(f"{protocol.FLAGS}?since=0").json()
    start = seen["next"]
    r = _admin(
        central,
        "POST",
        f"/flags/{flag['id']}",
        token,
        json={"status": "acknowledged", "note": "looking into it"},
    )
    assert r.status_code == 200 and r.json()["status"] == "acknowledged"
    r = _admin(
        central,
        "POST",
        f"/flags/{flag['id']}",
        token,
        json={"status": "deny_listed", "note": "cloned tag"},
    )
    assert r.status_code == 200 and r.json()["status"] == "deny_listed"

    # The store's terminals see the decisions in order; another store's do not.
    got = till.device.get(f"{protocol.FLAGS}?since={start}").json()
    assert [(d["flag"], d["status"], d["note"]) for d in got["decisions"]] == [
        (flag["id"], "acknowledged", "looking into it"),
        (flag["id"], "deny_listed", "cloned tag"),
    ]
    assert till.device.get(f"{protocol.FLAGS}?since={got['next']}").json()["decisions"] == []
    assert elsewhere.device.get(f"{protocol.FLAGS}?since=0").json()["decisions"] == []
    open_now = _admin(central, "GET", "/flags", token, params={"status": "open"}).json()
    assert flag["id"] not in [f["id"] for f in open_now["flags"]]

    # Deny-listed: the tag and the customer are refused at a till in another store.
    with elsewhere.opened() as engine:
        elsewhere.pull()
        assert tag in engine.ledger.deny_tags and customer in engine.ledger.deny_customers
        b = basket(5000, ref=customer)
        d = engine.redeem(coupons[1].token or "", b)
        assert d.reason == Reason.SUSPECTED_FRAUD


def test_report_json(central: Running) -> None:
    c = central.central
    c.add_campaign({"id": "RP1", "kind": "fixed", "currency": "CNY", "amount_minor": 250})
    coupons = c.issue("RP1", 4)
    quiet = central.device("S8")  # enrolled, then never heard of again
    till = central.till("S6")
    with till.opened() as engine:
        till.pull()
        for coupon in coupons[:3]:
            assert engine.redeem(coupon.token or "", basket(5000)).accepted
        till.push()
    later = str(T0 + 3 * 24 * 3600)  # the till keeps syncing; the other one stays quiet
    till.device.clock.advance(3 * 24 * 3600)  # type: ignore[attr-defined]
    assert till.device.ledger(0).status_code == 200
    r = central.cli("report", "--json", now=later)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    [camp] = [x for x in doc["by_campaign"] if x["campaign"] == "RP1"]
    assert camp["redemptions"] == 3 and camp["discount_minor"] == 750
    assert camp["issued"] == 4 and camp["redemption_rate"] == 0.75 and camp["currency"] == "CNY"
    [store] = [x for x in doc["by_store"] if x["store"] == "S6"]
    assert store["redemptions"] == 3 and store["discount_minor"] == 750
    [term] = [x for x in doc["by_terminal"] if x["terminal"] == till.terminal]
    assert term["redemptions"] == 3 and term["store"] == "S6"
    stale = {s["terminal"] for s in doc["stale_terminals"]}
    assert quiet.terminal in stale and till.terminal not in stale
    assert all(f["status"] == "open" for f in doc["open_flags"])
    assert doc["totals"]["open_flags"] == len(doc["open_flags"])
    text = central.cli("report", now=later)
    assert text.returncode == 0 and "RP1" in text.stdout and quiet.terminal in text.stdout
    via_api = _admin(central, "GET", "/report", central.admin_token())
    assert via_api.status_code == 200 and via_api.json()["totals"]["issued"] >= 4
