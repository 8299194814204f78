"""What a person reads at the central (issue 14, item 7): `redeem-central report` in major
units with the currency, ISO 8601 times, every campaign (those that issued nothing too) and
each open flag; `redeem-central terminals` with ISO times and ages; and deny-listing from a
flag, a double redemption first, which revokes the coupon at every till."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from coupons.clock import FixedClock
from coupons.decision import Context
from coupons.reasons import Reason
from sync import protocol
from sync.central import display, report
from tests.central_server import BACKENDS, Running, chain, running_central
from tests.conftest import T0, basket

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.fixture(scope="module", params=BACKENDS)
def central(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    with running_central(request.param, tmp_path_factory.mktemp("rtext"), FixedClock(T0)) as c:
        yield c


def _admin(central: Running, method: str, path: str, **kw: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {central.admin_token()}"}
    url = central.url + protocol.ADMIN_PREFIX + path
    return requests.request(method, url, headers=headers, timeout=30, **kw)


def _use(cid: str, serial: str, minor: int, **fields: Any) -> dict[str, Any]:
    return {"kind": "redeem", "reason": "ok", "campaign": cid, "serial": serial,
            "discount_minor": minor, "currency": "CNY", **fields}  # fmt: skip


def _flag(central: Running, kind: str, **match: Any) -> dict[str, Any]:
    found = _admin(central, "GET", "/flags", params={"kind": kind}).json()["flags"]
    [flag] = [f for f in found if all(f[k] == v for k, v in match.items())]
    doc: dict[str, Any] = flag
    return doc


def test_money_times_and_ages_read_as_a_person_says_them() -> None:
    assert display.money(10000, "CNY") == "CNY 100.00"
    assert display.money(123456, "CNY") == "CNY 1,234.56"
    assert display.money(500, "JPY") == "JPY 500"  # no minor unit
    assert display.money(1500, "KWD") == "KWD 1.500"  # three
    assert display.money(0, None) == "-"
    assert display.iso(1_795_608_000) == "2026-11-25T12:00:00Z"
    assert display.iso(1_795_608_000, display.zone("Asia/Shanghai")) == "2026-11-25T20:00:00+08:00"
    assert display.iso(None) is None
    assert [display.ago(s) for s in (2, 42, 180, 7200, 3 * 86400, -90, None)] == [
        "just now", "42 s ago", "3 min ago", "2 h ago", "3 d ago", "1 min ahead", "never"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="Mars/Olympus"):
        display.zone("Mars/Olympus")


def test_the_text_report_shows_major_units_every_campaign_and_each_flag(central: Running) -> None:
    c = central.central
    c.add_campaign({"id": "BIG", "kind": "fixed", "currency": "CNY", "amount_minor": 10000})
    c.add_campaign({"id": "IDLE", "name": "Nothing yet", "kind": "fixed", "currency": "CNY",
                    "amount_minor": 100})  # fmt: skip
    one, two = (f"{i.serial:016x}" for i in c.issue("BIG", 2))
    sa, sb = central.device("RA"), central.device("RB")
    assert sa.push(chain(_use("BIG", one, 10000), _use("BIG", two, 10000)))["acked_seq"] == 2
    assert sb.push(chain(_use("BIG", one, 10000)))["acked_seq"] == 1  # the same coupon again
    flag = _flag(central, "double_redemption", serial=one)

    doc = report.build(c)
    text = report.text(doc)
    [big] = [line for line in text.splitlines() if line.split()[:1] == ["BIG"]]
    assert big.split() == ["BIG", "2", "3", "0", "CNY", "300.00", "100.0%"]
    [idle] = [line for line in text.splitlines() if line.split()[:1] == ["IDLE"]]
    assert idle.split() == ["IDLE", "Nothing", "yet", "0", "0", "0", "-", "-"]
    [rb] = [line for line in text.splitlines() if line.split()[:1] == ["RB"]]
    assert rb.split() == ["RB", "1", "0", "CNY", "100.00"]
    assert not {"10000", "20000", "30000"} & set(text.split())  # no bare minor units
    assert "double_redemption 1" in text
    [row] = [line for line in text.splitlines() if line.split()[:1] == [str(flag["id"])]]
    assert row.split()[:5] == [str(flag["id"]), "double_redemption", one, "RA,RB", sb.terminal]
    assert ISO_UTC.fullmatch(row.split()[5]) and row.endswith("just now")
    assert ISO_UTC.search(text.splitlines()[0])

    # The JSON keeps integer minor units and adds the text beside them.
    [line] = [x for x in doc["by_campaign"] if x["campaign"] == "BIG"]
    assert line["discount_minor"] == 30000 and line["discount_text"] == "CNY 300.00"
    [idle_doc] = [x for x in doc["by_campaign"] if x["campaign"] == "IDLE"]
    assert idle_doc["issued"] == 0 and idle_doc["redemption_rate"] is None
    assert doc["generated_at_iso"] == display.iso(doc["generated_at"])

    # The command line prints the same, in the zone asked for; an unknown zone is a usage
    # error naming the option.
    later = str(T0 + 2 * 3600)
    out = central.cli("report", "--tz", "Asia/Shanghai", now=later)
    assert out.returncode == 0, out.stderr
    assert "CNY 300.00" in out.stdout and "IDLE" in out.stdout and "+08:00" in out.stdout
    assert "2 h ago" in out.stdout
    bad = central.cli("report", "--tz", "Mars/Olympus")
    assert bad.returncode == 2 and "--tz" in bad.stderr
    as_json = json.loads(central.cli("report", "--json").stdout)
    assert [x["discount_minor"] for x in as_json["by_campaign"] if x["campaign"] == "BIG"] == [
        30000
    ]


def test_terminals_show_iso_times_ages_and_the_ledger_version(central: Running) -> None:
    till = central.till("TT")
    with till.opened() as engine:
        till.pull()
        till.push()
        till.pull()  # asks for what follows its version: the central learns the version
        version = engine.ledger.version
    later = int(T0) + 180
    out = central.cli("terminals", now=str(later))
    assert out.returncode == 0, out.stderr
    [row] = [line for line in out.stdout.splitlines() if line.startswith(till.terminal + " ")]
    assert f"v{version}" in row and "active" in row
    assert f"{display.iso(T0)} (3 min ago)" in row  # last sync and last seen
    assert out.stdout.splitlines()[0].split()[:4] == ["terminal", "store", "state", "ledger"]
    doc = json.loads(central.cli("terminals", "--json").stdout)
    [mine] = [t for t in doc["terminals"] if t["terminal"] == till.terminal]
    assert mine["last_upload"] == int(T0) and mine["last_upload_iso"] == display.iso(T0)
    assert isinstance(mine["enrolled_at"], int) and ISO_UTC.fullmatch(mine["enrolled_at_iso"])
    shanghai = central.cli("terminals", "--tz", "Asia/Shanghai", now=str(later))
    assert "+08:00 (3 min ago)" in shanghai.stdout


def test_deny_listing_a_double_redemption_revokes_the_coupon_at_every_till(
    central: Running,
) -> None:
    c = central.central
    c.add_campaign({"id": "DD", "kind": "fixed", "currency": "CNY", "amount_minor": 500})
    customer, tag = "c0ffee01", bytes.fromhex("04aabbccddee01")
    bound, other = c.issue("DD", 2, customer=bytes.fromhex(customer))
    [loose] = c.issue("DD", 1)
    first = central.till("DA")
    with first.opened() as engine:
        first.pull()
        mine = basket(5000, ref=customer)
        assert engine.redeem(bound.token or "", mine, Context(tag_uid=tag)).accepted
        assert engine.redeem(loose.token or "", basket(5000)).accepted
        first.push()
    # The second use of each, at another store while both were offline.
    elsewhere = central.device("DB")
    seen = {"customer": customer, "detail": json.dumps({"tag": tag.hex()})}
    elsewhere.push(chain(_use("DD", f"{bound.serial:016x}", 500, **seen),
                         _use("DD", f"{loose.serial:016x}", 500)))  # fmt: skip

    flag = _flag(central, "double_redemption", serial=f"{bound.serial:016x}")
    assert flag["customer"] is None and flag["tag"] is None  # it names only the serial
    r = _admin(central, "POST", f"/flags/{flag['id']}", json={"status": "deny_listed"})
    assert r.status_code == 200, r.text
    done = r.json()["done"]
    assert done[:3] == [
        f"revoked coupon {bound.serial:016x}: every till refuses it from its next ledger",
        f"deny-listed NFC tag {tag.hex()}",
        f"deny-listed customer {customer}",
    ]
    assert r.json()["status"] == "deny_listed" and "DA, DB" in done[3]
    loose_flag = _flag(central, "double_redemption", serial=f"{loose.serial:016x}")
    r = _admin(central, "POST", f"/flags/{loose_flag['id']}", json={"status": "deny_listed"})
    assert r.status_code == 200 and len(r.json()["done"]) == 2  # the serial only

    # After the publisher's next tick (Till.pull runs one) every till refuses them.
    third = central.till("DC")
    for till in (first, third):
        with till.opened() as engine:
            till.pull()
            assert bound.serial in engine.ledger.revoked and loose.serial in engine.ledger.revoked
            assert engine.redeem(loose.token or "", basket(5000)).reason == Reason.REVOKED
            assert tag in engine.ledger.deny_tags and customer in engine.ledger.deny_customers
            # Another coupon of that customer's, presented by them.
            refused = engine.redeem(other.token or "", basket(5000, ref=customer))
            assert refused.reason == Reason.SUSPECTED_FRAUD


def test_deny_listing_other_kinds_acts_or_says_what_to_do_instead(central: Running) -> None:
    c = central.central
    c.add_campaign({"id": "OK1", "kind": "fixed", "currency": "CNY", "amount_minor": 500,
                    "budget_count": 1})  # fmt: skip
    a, b = c.issue("OK1", 2)
    dev = central.device("DK")
    # Claims 999.99 off a 5.00 coupon: stored, not counted, flagged implausible.
    too_much = _use("OK1", f"{a.serial:016x}", 99999, customer="beef0001")
    dev.push(chain(too_much, _use("OK1", f"{b.serial:016x}", 500)))
    other = central.device("DL")
    other.push(chain(_use("OK1", f"{a.serial:016x}", 500)))
    implausible = _flag(central, "implausible_entry", terminal=dev.terminal)
    r = _admin(central, "POST", f"/flags/{implausible['id']}", json={"status": "deny_listed"})
    assert r.status_code == 200, r.text
    assert r.json()["done"][:2] == [
        f"revoked coupon {a.serial:016x}: every till refuses it from its next ledger",
        "deny-listed customer beef0001",
    ]
    budget = _flag(central, "budget_exceeded", campaign="OK1")
    r = _admin(central, "POST", f"/flags/{budget['id']}", json={"status": "deny_listed"})
    assert r.status_code == 400 and "end the campaign" in r.json()["detail"]
    assert _flag(central, "budget_exceeded", campaign="OK1")["status"] == "open"  # unchanged
    # A journal rewritten after upload names only its terminal: revoke that instead.
    dev.push(chain({"reason": "rewritten"}, {})[1:])
    [broken] = [
        f
        for f in _admin(central, "GET", "/flags").json()["flags"]
        if f["terminal"] == dev.terminal and f["kind"].startswith("journal_")
    ]
    r = _admin(central, "POST", f"/flags/{broken['id']}", json={"status": "deny_listed"})
    assert r.status_code == 400 and f"revoke-terminal --terminal {dev.terminal}" in r.text
