"""The fraud desk's one-click actions on the real central (loopback, SQLite), on flags two
real tills raised by redeeming one coupon offline at two stores: revoke the serial (the
next ledger refuses it at a till), deny-list the customer or the NFC tag the evidence
names (the next ledger refuses that customer's or tag's other coupons, the serial stays
unrevoked), resolve only with a note, buttons only where the evidence has what they need,
and an auditor refused (403, audited) on every action with nothing changed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from coupons.clock import FixedClock
from coupons.engine import Context
from coupons.reasons import Reason
from sync import protocol
from sync.central import flags, users
from sync.central.console import flag_pages
from sync.central.models import DenyRow, FlagRow, SerialMark, db_serial
from sync.central.store import Issued
from tests.central_server import Running, running_central
from tests.conftest import T0, basket
from tests.test_central_reconcile import _offline_redeem
from tests.test_console import PASSWORD, entries, login, token

CUSTOMER = "c0ffee77" * 4  # a 16-byte customer reference, as tokens carry


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_central("sqlite", tmp_path_factory.mktemp("desk"), FixedClock(T0)) as c:
        with c.central.session():
            for name, role in (("ana", "analyst"), ("abe", "auditor")):
                users.add_user(c.central, "test", name, role, PASSWORD)
        yield c


def _double(central: Running, cid: str, **offline: Any) -> tuple[int, list[Issued]]:
    """A campaign whose first coupon two tills (S1, S2) redeem offline and upload: the
    double redemption's flag id, and the campaign's coupons (the first one used)."""
    c = central.central
    c.add_campaign({"id": cid, "kind": "fixed", "currency": "CNY", "amount_minor": 800})
    customer = offline.pop("customer", None)
    coupons = c.issue(cid, 2, customer=bytes.fromhex(customer) if customer else None)
    kw = {"customer": {"ref": customer}} if customer else {}
    tills = [central.till(store) for store in ("S1", "S2")]
    uploads = []
    for till in tills:  # both offline: neither can know of the other's use
        d, rows = _offline_redeem(till, coupons[0].token or "", **kw, **offline)
        assert d.accepted
        uploads.append((till, rows))
    for till, rows in uploads:
        assert till.device.push(rows)["problem"] is None
    with c.session():
        [flag] = flags.list_flags(kind=flags.DOUBLE_REDEMPTION, campaign=cid)
    return flag["id"], coupons


def _act(
    s: requests.Session, central: Running, flag_id: int, action: str, **form: str
) -> requests.Response:
    page = s.get(central.url + f"/flags/{flag_id}", timeout=10)
    data = {"csrftoken": token(page.text), "back": "flag", **form}
    return s.post(central.url + f"/flags/{flag_id}/{action}", data=data, timeout=10)


def _state(central: Running, flag_id: int) -> str:
    with central.central.session():
        return str(FlagRow.get_by_id(flag_id).status)


def _last(central: Running, action: str, flag_id: int) -> users.AuditDoc:
    with central.central.session():
        found = [e for e in entries(action) if e["target"] == f"flag:{flag_id}"]
    assert found, action
    return found[-1]


def test_revoking_the_serial_reaches_the_tills_with_the_next_ledger(central: Running) -> None:
    flag_id, coupons = _double(central, "REV")
    serial = f"{coupons[0].serial:016x}"
    s, _ = login(central, "ana")
    page = s.get(central.url + f"/flags/{flag_id}", timeout=10).text
    assert re.search(rf'id="revoke-serial"[^>]*>Revoke serial <code>{serial}</code>', page)
    # Neither a customer nor a tag in this evidence: no such button, and the page says why.
    assert 'id="deny-customer-' not in page and 'id="deny-tag-' not in page
    assert 'id="no-holder"' in page

    r = _act(s, central, flag_id, "revoke-serial", note="cloned QR at two stores")
    assert r.status_code == 200 and r.url.endswith(f"/flags/{flag_id}")
    assert 'id="flag-status">revoked' in r.text and "cloned QR at two stores" in r.text
    entry = _last(central, "flag.revoke-serial", flag_id)
    assert entry["actor"] == "user:ana"
    assert isinstance(entry["before"], dict) and entry["before"]["status"] == "open"
    assert isinstance(entry["after"], dict) and entry["after"]["status"] == "revoked"
    with central.central.session():  # the serial only: nobody was deny-listed
        assert not list(DenyRow.select())
    # The queue's state filter knows the new state.
    queue = s.get(central.url + "/flags?state=revoked", timeout=10).text
    assert f'id="flag-{flag_id}"' in queue

    # The next ledger: a till that never saw the coupon refuses it as revoked, and the
    # stores involved read the decision.
    third = central.till("S3")
    with third.opened() as engine:
        third.pull()
        assert coupons[0].serial in engine.ledger.revoked
        d = engine.redeem(coupons[0].token or "", basket(5000))
        assert not d.accepted and d.reason is Reason.REVOKED
        assert engine.redeem(coupons[1].token or "", basket(5000)).accepted  # only that one
    s1 = central.device("S1")
    decisions = s1.get(f"{protocol.FLAGS}?since=0").json()["decisions"]
    assert [(x["flag"], x["status"]) for x in decisions if x["flag"] == flag_id] == [
        (flag_id, "revoked")
    ]


def test_deny_listing_the_customer_refuses_their_other_coupons(central: Running) -> None:
    flag_id, coupons = _double(central, "DENYC", customer=CUSTOMER)
    s, _ = login(central, "ana")
    page = s.get(central.url + f"/flags/{flag_id}", timeout=10).text
    assert re.search(rf'id="deny-customer-1"[^>]*>Deny-list customer <code>{CUSTOMER}</code>', page)
    assert 'id="no-holder"' not in page

    # Only what the evidence names: another value is refused with its reason, nothing done.
    r = _act(s, central, flag_id, "deny-customer", value="ab" * 16)
    assert r.status_code == 409 and 'id="error"' in r.text and "names no customer" in r.text
    assert _state(central, flag_id) == "open"
    with central.central.session():
        assert not list(DenyRow.select().where(DenyRow.value == "ab" * 16))

    r = _act(s, central, flag_id, "deny-customer", value=CUSTOMER)
    assert r.status_code == 200 and 'id="flag-status">deny_listed' in r.text
    assert _state(central, flag_id) == "deny_listed"
    entry = _last(central, "flag.deny-customer", flag_id)
    assert isinstance(entry["after"], dict) and f"customer {CUSTOMER}" in str(entry["after"])
    with central.central.session():
        assert DenyRow.get_or_none((DenyRow.kind == "customer") & (DenyRow.value == CUSTOMER))
        revoked = SerialMark.select().where(
            (SerialMark.serial == db_serial(coupons[0].serial)) & (SerialMark.kind == "revoked")
        )
        assert not list(revoked)  # deny-listing the customer is not revoking the coupon

    third = central.till("S3")
    with third.opened() as engine:
        third.pull()
        assert CUSTOMER in engine.ledger.deny_customers
        d = engine.redeem(coupons[1].token or "", basket(5000, ref=CUSTOMER))
        assert not d.accepted and d.reason is Reason.SUSPECTED_FRAUD


def test_deny_listing_the_tag(central: Running) -> None:
    tag = bytes.fromhex("04c1c2c3c4c5c6")
    flag_id, coupons = _double(central, "DENYT", ctx=Context(tag_uid=tag))
    s, _ = login(central, "ana")
    page = s.get(central.url + f"/flags/{flag_id}", timeout=10).text
    assert re.search(rf'id="deny-tag-1"[^>]*>Deny-list tag <code>{tag.hex()}</code>', page)
    assert 'id="deny-customer-' not in page  # no customer in this evidence
    r = _act(s, central, flag_id, "deny-tag", value=tag.hex())
    assert r.status_code == 200 and _state(central, flag_id) == "deny_listed"
    assert _last(central, "flag.deny-tag", flag_id)["actor"] == "user:ana"
    third = central.till("S3")
    with third.opened() as engine:
        third.pull()
        assert tag in engine.ledger.deny_tags
        d = engine.redeem(coupons[1].token or "", basket(5000), Context(tag_uid=tag))
        assert not d.accepted and d.reason is Reason.SUSPECTED_FRAUD


def test_resolving_needs_a_note_and_a_flag_without_a_serial_has_nothing_to_revoke(
    central: Running,
) -> None:
    with central.central.session():
        flags.raise_flag(
            central.central,
            "desk-chain",
            flags.JOURNAL_CHAIN,
            "central",
            store="S9",
            terminal="S9-001",
            seq=7,
        )
        [flag] = flags.list_flags(kind=flags.JOURNAL_CHAIN, store="S9")
    flag_id = flag["id"]
    s, _ = login(central, "ana")
    page = s.get(central.url + f"/flags/{flag_id}", timeout=10).text
    assert 'id="no-serial"' in page and 'id="revoke-serial"' not in page
    r = _act(s, central, flag_id, "revoke-serial")
    assert r.status_code == 409 and "names no coupon serial" in r.text
    r = _act(s, central, flag_id, "resolve")
    assert r.status_code == 400 and "Write a note to resolve a flag" in r.text
    assert _state(central, flag_id) == "open"
    r = _act(s, central, flag_id, "resolve", note="the till's SD card was replaced")
    assert r.status_code == 200 and _state(central, flag_id) == "resolved"


def test_an_auditor_is_refused_every_action(central: Running) -> None:
    with central.central.session():
        flags.raise_flag(
            central.central, "desk-audit", "replay", "test", store="S1", serial="1b", tag="04" * 7
        )
        [flag] = [f for f in flags.list_flags(kind="replay") if f["serial"] == "1b"]
    flag_id = flag["id"]
    s, _ = login(central, "abe")
    for action in flag_pages.ACTIONS:
        value = "04" * 7 if action == "deny-tag" else ""
        r = _act(s, central, flag_id, action, note="x", value=value)
        assert r.status_code == 403 and 'data-code="permission"' in r.text, action
    assert _state(central, flag_id) == "open"
    with central.central.session():
        refused = [e for e in entries("refused") if e["actor"] == "user:abe"]
        assert not list(DenyRow.select().where(DenyRow.value == "04" * 7))
    assert [e["target"] for e in refused] == [
        f"POST /flags/{flag_id}/{action}" for action in flag_pages.ACTIONS
    ]
