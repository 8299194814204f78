"""Reconciliation at the real central (SQLite and PostgreSQL) of what real tills did while
offline: one single-use coupon redeemed at two terminals becomes a double_redemption flag
and every terminal refuses the coupon after its next ledger pull; refunds free a reusable
coupon again; per-customer limits and budgets exceeded across terminals are flagged; the
ledger carries the campaign usage and, for per-customer limits, each customer's uses, which
other tills enforce after their next pull."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from coupons.clock import FixedClock
from coupons.decision import Context
from coupons.reasons import Reason
from sync import protocol
from sync.client import Direct, SyncClient
from sync.http import CentralLink, Link
from tests.central_server import BACKENDS, Running, Till, running_central
from tests.conftest import T0, basket


@pytest.fixture(scope="module", params=BACKENDS)
def central(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    with running_central(request.param, tmp_path_factory.mktemp("recon"), FixedClock(T0)) as c:
        yield c


def _campaign(central: Running, cid: str, **doc: Any) -> str:
    central.central.add_campaign(
        {"id": cid, "kind": "fixed", "currency": "CNY", "amount_minor": 1000, **doc}
    )
    return cid


def _flags(central: Running, **params: str) -> list[dict[str, Any]]:
    r = requests.get(
        central.url + protocol.ADMIN_PREFIX + "/flags",
        params=params,
        headers={"Authorization": f"Bearer {central.admin_token()}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["flags"]
    return items


def _offline_redeem(till: Till, code: str, **kw: Any) -> Any:
    """Pull the ledger, then redeem with the network gone (nothing is uploaded here)."""
    with till.opened() as engine:
        till.pull()
        d = engine.redeem(code, basket(5000, **kw.pop("customer", {})), **kw)
        rows = till.rows()
    return d, rows


def test_double_redemption_across_terminals_is_flagged_and_refused_everywhere(
    central: Running,
) -> None:
    cid = _campaign(central, "D1")
    [coupon] = central.central.issue(cid, 1)
    t1, t2, t3 = central.till("S1"), central.till("S2"), central.till("S3")
    d1, rows1 = _offline_redeem(t1, coupon.token or "")
    d2, rows2 = _offline_redeem(t2, coupon.token or "")
    assert d1.accepted and d2.accepted  # both were offline: neither could know

    first = t1.device.push(rows1)
    assert first["problem"] is None
    assert not [f for f in _flags(central, kind="double_redemption") if f["campaign"] == cid]
    second = t2.device.push(rows2)
    assert second["problem"] is None and second["accepted"] == len(rows2)

    [flag] = [f for f in _flags(central, kind="double_redemption") if f["campaign"] == cid]
    assert flag["serial"] == f"{coupon.serial:016x}" and flag["store"] == "S2"
    uses = {(u["terminal"], u["seq"]) for u in flag["detail"]["redemptions"]}
    assert uses == {(t1.terminal, d1.journal_seq), (t2.terminal, d2.journal_seq)}
    assert flag["detail"]["stores"] == ["S1", "S2"]

    # The next ledger version lists the serial as redeemed: a third till refuses it, and the
    # delta a till that already has the previous version pulls carries it.
    d3, _ = _offline_redeem(t3, coupon.token or "")
    assert not d3.accepted and d3.reason == Reason.ALREADY_REDEEMED
    with t1.opened() as engine:
        before = engine.ledger.version
        r = t1.device.ledger(before)
        assert r.status_code == 200 and r.headers["X-Ledger-Kind"] == "delta"
        engine.import_ledger(r.content)
        assert coupon.serial in engine.ledger.redeemed

    # Uploading again (a retry) raises nothing new.
    t2.device.push(rows2)
    assert len([f for f in _flags(central, kind="double_redemption") if f["campaign"] == cid]) == 1


def test_a_refund_frees_a_reusable_coupon_everywhere_but_not_a_final_one(
    central: Running,
) -> None:
    reusable = _campaign(central, "F1", reusable_after_refund=True)
    final = _campaign(central, "F2", reusable_after_refund=False)
    [a] = central.central.issue(reusable, 1)
    [b] = central.central.issue(final, 1)
    t1, t2 = central.till(), central.till()
    with t1.opened() as engine:
        t1.pull()
        da = engine.redeem(a.token or "", basket(5000))
        db = engine.redeem(b.token or "", basket(5000))
        assert da.accepted and db.accepted
        t1.push()
    with t2.opened() as engine:
        t2.pull()
        assert engine.check(a.token or "", basket(5000)).reason == Reason.ALREADY_REDEEMED
    with t1.opened() as engine:
        assert engine.reverse(da.checkout_id or "").accepted
        assert engine.reverse(db.checkout_id or "").accepted
        reply = t1.push()
        assert reply["problem"] is None and reply["usage"][reusable] == [0, 0]
        assert reply["usage"][final] == [1, 1000]
    with t2.opened() as engine:
        t2.pull()
        assert engine.redeem(a.token or "", basket(5000)).accepted
        assert engine.check(b.token or "", basket(5000)).reason == Reason.ALREADY_REDEEMED


def test_customer_limits_and_budgets_across_terminals_are_flagged(central: Running) -> None:
    cid = _campaign(central, "B1", uses_per_customer=1, budget_count=2)
    customer = "c0ffee01"
    coupons = central.central.issue(cid, 3, customer=bytes.fromhex(customer))
    tills = [central.till("S1"), central.till("S2"), central.till("S3")]
    uploads = []
    for till, coupon in zip(tills, coupons, strict=True):
        d, rows = _offline_redeem(till, coupon.token or "", customer={"ref": customer})
        assert d.accepted  # each till alone is within the limits
        uploads.append((till, rows))
    for till, rows in uploads:
        assert till.device.push(rows)["problem"] is None

    limits = [f for f in _flags(central, kind="customer_limit_exceeded") if f["campaign"] == cid]
    assert len(limits) == 2 and {f["customer"] for f in limits} == {customer}
    assert {f["terminal"] for f in limits} == {tills[1].terminal, tills[2].terminal}
    budgets = [f for f in _flags(central, kind="budget_exceeded") if f["campaign"] == cid]
    assert [f["terminal"] for f in budgets] == [tills[2].terminal]
    assert budgets[0]["detail"]["count"] == 3

    # The ledger tells every till how much of the campaign was used.
    with tills[0].opened() as engine:
        tills[0].pull()
        assert engine.ledger.usage[cid] == (3, 3000)


def test_a_two_phase_sale_counts_when_committed(central: Running) -> None:
    cid = _campaign(central, "P1", uses_per_customer=5)
    customer = "feed0001"
    [coupon] = central.central.issue(cid, 1, customer=bytes.fromhex(customer))
    till, other = central.till(), central.till()
    with till.opened() as engine:
        till.pull()
        b = basket(5000, ref=customer)
        assert engine.hold("sale-1", coupon.token or "", b).accepted
        held = till.push()
        assert held["usage"].get(cid, [0, 0]) == [0, 0]  # a hold is not a redemption yet
        assert engine.commit("sale-1").accepted
        committed = till.push()
        assert committed["usage"][cid] == [1, 1000]
    with other.opened() as engine:
        other.pull()
        assert engine.check(coupon.token or "", basket(5000, ref=customer)).reason == (
            Reason.ALREADY_REDEEMED
        )
    report = central.cli("report", "--json")
    assert report.returncode == 0, report.stderr
    import json

    doc = json.loads(report.stdout)
    [row] = [r for r in doc["by_campaign"] if r["campaign"] == cid]
    assert row["redemptions"] == 1 and row["issued"] == 1 and row["redemption_rate"] == 1.0


def test_a_flag_from_a_till_carries_the_tag_and_customer_it_was_about(central: Running) -> None:
    cid = _campaign(central, "T1")
    [coupon] = central.central.issue(cid, 1)
    till = central.till()
    tag = bytes.fromhex("04a1b2c3d4e5f6")
    with till.opened() as engine:
        till.pull()
        ctx = Context(tag_uid=tag)
        assert engine.redeem(coupon.token or "", basket(5000), ctx).accepted
        assert not engine.redeem(coupon.token or "", basket(5000), ctx).accepted  # replay
        till.push()
    [flag] = [f for f in _flags(central, kind="replay") if f["terminal"] == till.terminal]
    assert flag["tag"] == tag.hex() and flag["serial"] == f"{coupon.serial:016x}"


def _sync(till: Till) -> None:
    """One sync round of the till (push, pull, record its own usage), as `redeem sync`."""
    assert till.engine is not None
    link = CentralLink(Link(till.running.url), till.device.key, till.terminal, till.running.clock)
    result = SyncClient(till.data, link, Direct(till.engine)).run_round()
    assert result.ok, result.error
    # The publisher's tick, then the next round: what the upload changed comes back.
    till.running.publish()
    result = SyncClient(till.data, link, Direct(till.engine)).run_round()
    assert result.ok, result.error


def test_a_customer_at_the_limit_is_refused_at_another_till_after_sync(central: Running) -> None:
    cid = _campaign(central, "L1", uses_per_customer=1)
    customer = "5eed" * 8  # a 16-byte customer reference, as tokens carry
    first, second = central.central.issue(cid, 2, customer=bytes.fromhex(customer))
    till_a, till_b = central.till("S1"), central.till("S2")
    with till_a.opened() as engine:
        _sync(till_a)
        assert engine.redeem(first.token or "", basket(5000, ref=customer)).accepted
        _sync(till_a)
    with till_b.opened() as engine:
        _sync(till_b)
        assert engine.ledger.customer_usage[(cid, customer)] == 1
        d = engine.redeem(second.token or "", basket(5000, ref=customer))
        assert not d.accepted and d.reason is Reason.CUSTOMER_LIMIT
    # Another customer of the same campaign is not held back.
    other = "ab" * 16
    [theirs] = central.central.issue(cid, 1, customer=bytes.fromhex(other))
    with till_b.opened() as engine:
        assert engine.redeem(theirs.token or "", basket(5000, ref=other)).accepted


def test_a_tills_own_synced_uses_count_once_against_the_customer_limit(central: Running) -> None:
    cid = _campaign(central, "L2", uses_per_customer=2)
    customer = "c0ffee02" * 4
    coupons = central.central.issue(cid, 3, customer=bytes.fromhex(customer))
    till, other = central.till("S1"), central.till("S2")
    with till.opened() as engine:
        _sync(till)
        assert engine.redeem(coupons[0].token or "", basket(5000, ref=customer)).accepted
        _sync(till)  # the ledger now counts this use, and so does the till's own journal
        assert engine.ledger.customer_usage[(cid, customer)] == 1
    with till.opened() as engine:  # after a restart too
        second = engine.redeem(coupons[1].token or "", basket(5000, ref=customer))
        assert second.accepted, second
        third = engine.redeem(coupons[2].token or "", basket(5000, ref=customer))
        assert third.reason is Reason.CUSTOMER_LIMIT
        _sync(till)
        assert engine.ledger.customer_usage[(cid, customer)] == 2
        assert engine.check(coupons[2].token or "", basket(5000, ref=customer)).reason is (
            Reason.CUSTOMER_LIMIT
        )
    with other.opened() as engine:
        _sync(other)
        d = engine.check(coupons[2].token or "", basket(5000, ref=customer))
        assert d.reason is Reason.CUSTOMER_LIMIT


def test_a_refund_frees_the_customers_use_at_every_till(central: Running) -> None:
    cid = _campaign(central, "L3", uses_per_customer=1)
    customer = "0d" * 16
    first, second = central.central.issue(cid, 2, customer=bytes.fromhex(customer))
    till, other = central.till("S1"), central.till("S2")
    with till.opened() as engine:
        _sync(till)
        d = engine.redeem(first.token or "", basket(5000, ref=customer))
        assert d.accepted
        _sync(till)
        assert engine.reverse(d.checkout_id or "").accepted  # refunded: reusable by default
        _sync(till)
        assert (cid, customer) not in engine.ledger.customer_usage
        assert engine.check(second.token or "", basket(5000, ref=customer)).accepted
    with other.opened() as engine:
        _sync(other)
        assert engine.redeem(second.token or "", basket(5000, ref=customer)).accepted
