"""Admin side of the real central (SQLite and PostgreSQL): bearer tokens, deciding fraud
flags (the decision reaches the terminals of every store the flag involves; deny-listing
reaches every till through the ledger), the report a retailer reads, and issuing coupons
bound to an NFC tag from the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from coupons.clock import FixedClock
from coupons.decision import Context
from coupons.reasons import Reason
from sync import protocol
from tests.central_server import BACKENDS, Running, chain, running_central
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


def test_a_decision_on_a_cross_store_double_redemption_reaches_both_stores(
    central: Running,
) -> None:
    c = central.central
    c.add_campaign({"id": "XS1", "kind": "fixed", "currency": "CNY", "amount_minor": 300})
    [coupon] = c.issue("XS1", 1)
    serial = f"{coupon.serial:016x}"
    first, second, bystander = central.device("SA"), central.device("SB"), central.device("SC")
    use = {"kind": "redeem", "reason": "ok", "campaign": "XS1", "serial": serial,
           "discount_minor": 300, "currency": "CNY"}  # fmt: skip
    # Both tills offline, each took the coupon; their journals arrive later.
    assert first.push(chain(use))["acked_seq"] == 1
    assert second.push(chain(use))["acked_seq"] == 1
    token = central.admin_token()
    found = _admin(central, "GET", "/flags", token, params={"kind": "double_redemption"})
    [flag] = [f for f in found.json()["flags"] if f["serial"] == serial]
    assert flag["detail"]["stores"] == ["SA", "SB"]
    marks = {d.terminal: d.get(f"{protocol.FLAGS}?since=0").json()["next"] for d in (first, second)}
    r = _admin(central, "POST", f"/flags/{flag['id']}", token,
               json={"status": "resolved", "note": "refunded at SB"})  # fmt: skip
    assert r.status_code == 200
    for device in (first, second):
        got = device.get(f"{protocol.FLAGS}?since={marks[device.terminal]}").json()["decisions"]
        mine = [d for d in got if d["flag"] == flag["id"]]
        assert [(d["status"], d["note"], d["serial"], d["campaign"]) for d in mine] == [
            ("resolved", "refunded at SB", serial, "XS1")
        ]
    others = bystander.get(f"{protocol.FLAGS}?since=0").json()["decisions"]
    assert flag["id"] not in [d["flag"] for d in others]


def test_issue_binds_coupons_to_an_nfc_tag(central: Running) -> None:
    central.central.add_campaign(
        {"id": "NFC1", "kind": "fixed", "currency": "CNY", "amount_minor": 200}
    )
    out = central.work / "nfc-issue"
    r = central.cli("issue", "--campaign", "NFC1", "--count", "2", "--out", str(out),
                    "--no-qr", "--tag-uid", "04:A1:B2:C3:D4:E5:F6", "--json",
                    now=str(central.clock.now()))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tag_uid"] == "04a1b2c3d4e5f6"
    tokens = (out / "tokens.txt").read_text().splitlines()
    till = central.till("S9")
    with till.opened() as engine:
        till.pull()
        copied = engine.redeem(tokens[0], basket(5000), Context(tag_uid=bytes.fromhex("04" * 7)))
        assert not copied.accepted and copied.reason == Reason.TAG_MISMATCH
        good = engine.redeem(
            tokens[1], basket(5000), Context(tag_uid=bytes.fromhex("04a1b2c3d4e5f6"))
        )
        assert good.accepted
    bad = central.cli("issue", "--campaign", "NFC1", "--out", str(out), "--tag-uid", "04zz")
    assert bad.returncode == 2 and "--tag-uid" in bad.stderr
    short = central.cli("issue", "--campaign", "NFC1", "--out", str(out), "--tag-uid", "0411")
    assert short.returncode == 2 and "4, 7 or 10 bytes" in short.stderr


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
    # Three days on, the till keeps uploading; another one only asks (ledger, online
    # checks) while its uploads are refused: it has not synced either.
    asking = central.device("S8")
    assert asking.push(chain({}))["acked_seq"] == 1
    central.clock.advance(3 * 24 * 3600)  # type: ignore[attr-defined]
    later = str(central.clock.now())
    with till.opened() as engine:
        assert not engine.redeem("not a coupon", basket(5000)).accepted  # journaled too
        assert till.push()["accepted"] == 1
    assert asking.ledger(0).status_code == 200
    assert asking.post_json(protocol.CHECK, {"code": "nothing", "basket": {}}).status_code in (
        200,
        400,
    )
    refused = asking.push(chain({"reason": "rewritten"}, {})[1:])  # a broken chain
    assert refused["accepted"] == 0 and refused["problem"]
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
    stale = {s["terminal"]: s for s in doc["stale_terminals"]}
    assert quiet.terminal in stale and till.terminal not in stale
    assert asking.terminal in stale and stale[asking.terminal]["quiet_s"] == 3 * 24 * 3600
    assert all(f["status"] == "open" for f in doc["open_flags"])
    assert doc["totals"]["open_flags"] == len(doc["open_flags"])
    text = central.cli("report", now=later)
    assert text.returncode == 0 and "RP1" in text.stdout and quiet.terminal in text.stdout
    via_api = _admin(central, "GET", "/report", central.admin_token())
    assert via_api.status_code == 200 and via_api.json()["totals"]["issued"] >= 4
