"""The central does not take a till's word for money (issue 11): at the real central on
loopback, uploaded redemptions it cannot believe are stored as evidence, flagged
`implausible_entry` naming the terminal, and never counted; genuine ones still count; each
claim of docs/security-model.md "With a stolen device key" is shown here."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from coupons import cose, ledger, sun
from coupons.clock import FixedClock
from coupons.keys import PURPOSE_LEDGER, TrustAnchor, make_cert
from coupons.reasons import Reason
from sync import protocol
from sync.central.models import CampaignUsage, JournalRow
from tests.central_server import BACKENDS, Device, Running, chain, running_central
from tests.conftest import T0, basket

ATTACK = {
    "kind": "redeem",
    "accepted": True,
    "reason": "ok",
    "campaign": "BUDG",
    "serial": "0123456789abcdef",
    "discount_minor": -1000000,
}


@pytest.fixture(scope="module", params=BACKENDS)
def central(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    with running_central(request.param, tmp_path_factory.mktemp("trust"), FixedClock(T0)) as c:
        yield c


def _campaign(central: Running, cid: str, **doc: Any) -> str:
    central.central.add_campaign(
        {"id": cid, "kind": "fixed", "currency": "CNY", "amount_minor": 1000, **doc}
    )
    return cid


def _serial(central: Running, cid: str) -> str:
    [coupon] = central.central.issue(cid, 1)
    return f"{coupon.serial:016x}"


def _lettered_serial(central: Running, cid: str) -> str:
    """An issued serial with a letter in it (a-f): one of only digits (issued now and
    then, its random part being hex) is the same in upper case, and the case then failed."""
    serial = _serial(central, cid)
    while serial.isdigit():
        serial = _serial(central, cid)
    return serial


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


def _implausible(central: Running, dev: Device) -> list[dict[str, Any]]:
    return [f for f in _flags(central, kind="implausible_entry") if f["terminal"] == dev.terminal]


def _report(central: Running, cid: str) -> dict[str, Any]:
    r = requests.get(
        central.url + protocol.ADMIN_PREFIX + "/report",
        headers={"Authorization": f"Bearer {central.admin_token()}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    found = [c for c in r.json()["by_campaign"] if c["campaign"] == cid]
    return found[0] if found else {"redemptions": 0, "discount_minor": 0}


def _usage(central: Running, cid: str) -> tuple[int, int]:
    with central.central.session():
        row = CampaignUsage.get_or_none(CampaignUsage.campaign == cid)
        return (int(row.count), int(row.minor)) if row else (0, 0)


def _stored(central: Running, dev: Device) -> list[int]:
    with central.central.session():
        rows = JournalRow.select(JournalRow.seq).where(JournalRow.terminal == dev.terminal)
        return sorted(int(r.seq) for r in rows)


def _redeem(cid: str, serial: str, discount: int, **more: Any) -> dict[str, Any]:
    return {
        "kind": "redeem",
        "reason": "ok",
        "campaign": cid,
        "serial": serial,
        "discount_minor": discount,
        "currency": "CNY",
        **more,
    }


def test_the_negative_discount_attack_is_flagged_and_moves_no_budget(central: Running) -> None:
    cid = _campaign(central, "BUDG", budget_minor=2000)
    a, b, c = central.central.issue(cid, 3)
    honest, other = central.till("S1"), central.till("S2")
    with honest.opened() as engine:
        honest.pull()
        assert engine.redeem(a.token or "", basket(5000)).accepted
        assert engine.redeem(b.token or "", basket(5000)).accepted
        assert honest.push()["problem"] is None
    report = _report(central, cid)
    assert _usage(central, cid) == (2, 2000)

    thief = central.device("S3")
    reply = thief.push(chain(ATTACK))
    # Stored (acknowledged: the chain goes on) as evidence, and nothing counted.
    assert reply["problem"] is None and reply["acked_seq"] == 1 and reply["usage"] == {}
    assert _stored(central, thief) == [1]
    [flag] = _implausible(central, thief)
    assert flag["seq"] == 1 and flag["store"] == "S3" and flag["status"] == "open"
    assert thief.terminal in flag["detail"]["detail"]
    assert flag["detail"]["discount_minor"] == -1000000
    assert _usage(central, cid) == (2, 2000)
    assert _report(central, cid) == report

    # Another till's budget check still refuses past the budget.
    with other.opened() as engine:
        other.pull()
        assert engine.ledger.usage[cid] == (2, 2000)
        d = engine.redeem(c.token or "", basket(5000))
        assert not d.accepted and d.reason == Reason.BUDGET_EXHAUSTED


def _cases(central: Running) -> list[tuple[str, str, dict[str, Any]]]:
    """(case, campaign whose usage must not move, entry)."""
    fixed = _campaign(central, "TF1")
    pct = _campaign(central, "TP1", kind="percent", percent=10)
    capped = _campaign(central, "TP2", kind="percent", percent=10, cap_minor=300)
    elsewhere = _campaign(central, "TS9", stores=["S9"])
    other = _campaign(central, "TF2")
    return [
        ("not issued for it", fixed, _redeem(fixed, _serial(central, other), 500)),
        ("never issued", fixed, _redeem(fixed, "00000000deadbeef", 500)),
        ("unknown campaign", "NOPE", _redeem("NOPE", _serial(central, fixed), 500)),
        ("other store", elsewhere, _redeem(elsewhere, _serial(central, elsewhere), 500)),
        ("over the amount", fixed, _redeem(fixed, _serial(central, fixed), 1001)),
        ("negative", fixed, _redeem(fixed, _serial(central, fixed), -1)),
        (
            "over the percent",
            pct,
            _redeem(pct, _serial(central, pct), 501, detail='{"basket_minor": 5000}'),
        ),
        ("over the cap", capped, _redeem(capped, _serial(central, capped), 301)),
        ("uncapped, no basket", pct, _redeem(pct, _serial(central, pct), 1)),
        (
            "NaN basket",
            pct,
            _redeem(pct, _serial(central, pct), 1, detail='{"basket_minor": NaN}'),
        ),
        (
            "negative basket",
            pct,
            _redeem(pct, _serial(central, pct), 0, detail='{"basket_minor": -5000}'),
        ),
        ("other currency", fixed, _redeem(fixed, _serial(central, fixed), 500, currency="USD")),
        # int(text, 16) reads this as the issued serial; a till writes lowercase hex only
        ("upper-case serial", fixed, _redeem(fixed, _lettered_serial(central, fixed).upper(), 500)),
    ]


def test_each_implausible_entry_is_flagged_stored_and_not_counted(central: Running) -> None:
    for case, cid, entry in _cases(central):
        dev = central.device("S1")
        reply = dev.push(chain(entry))
        assert reply["problem"] is None and reply["acked_seq"] == 1, case
        [flag] = _implausible(central, dev)
        assert flag["seq"] == 1 and dev.terminal in flag["detail"]["detail"], case
        assert _stored(central, dev) == [1], case
        assert _usage(central, cid) == (0, 0), case
        assert _report(central, cid)["redemptions"] == 0, case


def test_a_nan_discount_is_refused_and_flagged_naming_the_terminal(central: Running) -> None:
    cid = _campaign(central, "TN1")
    [entry] = chain(_redeem(cid, _serial(central, cid), 0))
    body = json.dumps({"entries": [{**entry, "discount_minor": float("nan")}]}).encode()
    dev = central.device("S1")
    r = dev.request("POST", protocol.JOURNAL, body, {"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["code"] == "implausible-entry"
    assert "not a whole number" in r.json()["detail"]
    [flag] = _implausible(central, dev)
    assert dev.terminal in flag["detail"]["detail"] and "NaN" in flag["detail"]["body"]
    assert _stored(central, dev) == [] and _usage(central, cid) == (0, 0)


def test_genuine_uses_still_count_percent_and_pos_commits_too(central: Running) -> None:
    pct = _campaign(central, "GP1", kind="percent", percent=15)
    fixed = _campaign(central, "GF1")
    p1, p2 = central.central.issue(pct, 2)
    [f1] = central.central.issue(fixed, 1)
    till = central.till("S1")
    with till.opened() as engine:
        till.pull()
        assert engine.redeem(p1.token or "", basket(5000)).discount_minor == 750
        assert engine.hold("sale-1", p2.token or "", basket(4000)).accepted
        assert engine.commit("sale-1").accepted  # the commit row carries no basket: the hold's
        assert engine.redeem(f1.token or "", basket(5000)).accepted
        assert till.push()["problem"] is None
    assert _implausible(central, till.device) == []
    assert _usage(central, pct) == (2, 750 + 600)
    assert _usage(central, fixed) == (1, 1000)
    assert _report(central, pct)["redemptions"] == 2


def test_refunds_undo_only_what_the_central_counted(central: Running) -> None:
    cid = _campaign(central, "RF1")
    serial = _serial(central, cid)
    honest = central.till("S1")
    [coupon] = central.central.issue(cid, 1)
    with honest.opened() as engine:
        honest.pull()
        d = engine.redeem(coupon.token or "", basket(5000))
        assert d.accepted
        honest.push()
    assert _usage(central, cid) == (1, 1000)
    thief = central.device("S1")
    entries = chain(
        _redeem(cid, serial, -50_000, checkout_id="x1"),  # flagged, not counted
        {"kind": "reverse", "reason": "ok", "campaign": cid, "serial": serial, "checkout_id": "x1"},
        # Another till's sale: a reverse is matched against this terminal's own uses only.
        {
            "kind": "reverse",
            "reason": "ok",
            "campaign": cid,
            "serial": f"{coupon.serial:016x}",
            "checkout_id": d.checkout_id,
        },
    )
    assert thief.push(entries)["problem"] is None
    assert [f["seq"] for f in _implausible(central, thief)] == [1]
    assert _usage(central, cid) == (1, 1000)
    # The honest till's own refund still gives the use back.
    with honest.opened() as engine:
        assert engine.reverse(d.checkout_id or "").accepted
        assert honest.push()["problem"] is None
    assert _usage(central, cid) == (0, 0)


# ---------------------------------------------------------------- security-model claims


def test_stolen_key_can_count_a_plausible_use_once_per_coupon(central: Running) -> None:
    """Can: a made-up use of a coupon the central issued, within what the campaign gives,
    counts; a second use of the same coupon is a double_redemption flag."""
    cid = _campaign(central, "SK1")
    serial = _serial(central, cid)
    thief = central.device("S1")
    assert thief.push(chain(_redeem(cid, serial, 1000)))["usage"] == {cid: [1, 1000]}
    second = central.device("S2")
    second.push(chain(_redeem(cid, serial, 1000)))
    [flag] = [f for f in _flags(central, kind="double_redemption") if f["serial"] == serial]
    assert flag["terminal"] == second.terminal
    assert _implausible(central, thief) == []


def test_stolen_key_can_mark_a_known_coupon_used(central: Running) -> None:
    """Can: an implausible use of a real coupon marks it used on the next ledger (no use is
    counted), so a thief who knows a serial can spoil that coupon."""
    cid = _campaign(central, "SK2")
    serial = _serial(central, cid)
    thief = central.device("S1")
    thief.push(chain(_redeem(cid, serial, 99_999)))
    assert len(_implausible(central, thief)) == 1 and _usage(central, cid) == (0, 0)
    with central.central.session():
        central.publish()
        assert int(serial, 16) in central.central.state().redeemed


def test_stolen_key_can_count_made_up_sun_tag_uses_within_the_campaign(central: Running) -> None:
    """Can: SUN-tag campaigns have no list of issued serials; a made-up tag's use within what
    the campaign gives counts. A use naming a tag whose serial does not fit is flagged."""
    cid = _campaign(central, "SK3")
    central.central.set_sun_key(cid, bytes(16))
    uid = bytes.fromhex("04a1b2c3d4e5f6")
    serial = f"{sun.serial_for(cid, uid):016x}"
    thief = central.device("S1")
    tag = json.dumps({"tag": uid.hex()})
    reply = thief.push(
        chain(
            _redeem(cid, serial, 1000, detail=tag),
            _redeem(cid, "00000000000000aa", 1000, detail=tag),
        )
    )
    assert reply["usage"] == {cid: [1, 1000]}
    assert [f["seq"] for f in _implausible(central, thief)] == [2]


def test_stolen_key_can_pull_the_ledger_but_not_pass_for_another_till(central: Running) -> None:
    """Can read the ledger; cannot sign for another terminal; nothing after revocation."""
    thief, victim = central.device("S1"), central.device("S2")
    assert thief.ledger(0).status_code == 200
    forged = thief.post_json(protocol.JOURNAL, {"entries": []}, terminal=victim.terminal)
    assert forged.status_code == 401
    central.cli("revoke-terminal", "--terminal", thief.terminal)
    assert thief.ledger(0).status_code == 403
    assert thief.post_json(protocol.JOURNAL, {"entries": []}).status_code == 403


def test_stolen_key_cannot_rewrite_what_was_uploaded(central: Running) -> None:
    """Cannot: an entry already received sent again with other content is refused and
    flagged journal_altered."""
    cid = _campaign(central, "SK4")
    thief = central.device("S1")
    entries = chain(_redeem(cid, _serial(central, cid), 1000))
    thief.push(entries)
    altered = chain(_redeem(cid, entries[0]["serial"], 1))
    reply = thief.push(altered)
    assert reply["problem"] and _usage(central, cid) == (1, 1000)
    flags = _flags(central, kind="journal_altered")
    assert [f["seq"] for f in flags if f["terminal"] == thief.terminal] == [1]


# ---------------------------------------------------------------- till side


def test_a_till_clamps_a_negative_ledger_usage_at_zero() -> None:
    """A ledger from a central that believed a negative discount (as before issue 11) does
    not give the budget back at the till: its usage reads as zero, never below."""
    root, key = cose.SigningKey.generate(), cose.SigningKey.generate()
    cert = make_cert(root, key, PURPOSE_LEDGER, int(T0) - 60, int(T0) + 3600)
    anchor = TrustAnchor(root.public)
    snap = ledger.snapshot_body(ledger.LedgerState(version=1, issued_at=int(T0)))
    snap["usage"] = {"NEG": [-3, -1_000_000], "POS": [2, 500]}
    state, _ = ledger.apply(anchor, ledger.LedgerState(), ledger.sign_update(key, cert, snap))
    assert state.usage == {"NEG": (0, 0), "POS": (2, 500)}
    delta = {
        "type": "delta",
        "version": 2,
        "prev": state.chain,
        "issued_at": int(T0),
        "usage": {"POS": [1, -7]},
    }
    state, _ = ledger.apply(anchor, state, ledger.sign_update(key, cert, delta))
    assert state.usage["POS"] == (1, 0)
