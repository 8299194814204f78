"""POST /v1/check: the central checks a coupon with the terminal's own checks and rules
over its newest ledger, so a till asking online gets the answer it would give offline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coupons import base45, tokens
from coupons.clock import FixedClock
from sync import protocol
from tests.central_server import Running, running_central
from tests.conftest import T0, basket


@pytest.fixture
def central(tmp_path: Path) -> Iterator[Running]:
    with running_central("sqlite", tmp_path, FixedClock(T0)) as c:
        yield c


def forged(token: str) -> str:
    raw = bytearray(base45.decode(token[len(tokens.PREFIX) :]))
    raw[-1] ^= 0x01  # the last byte of the signature
    return tokens.PREFIX + base45.encode(bytes(raw))


def test_online_and_offline_give_the_same_answers(central: Running) -> None:
    c = central.central
    c.add_campaign(
        {
            "id": "SPEND100",
            "kind": "threshold",
            "currency": "CNY",
            "amount_minor": 2000,
            "min_spend_minor": 10000,
            "stacking": "any",
        }
    )
    good, revoked = (i.token or "" for i in c.issue("SPEND100", 2))
    c.mark([tokens.parse(revoked).claims.serial], "revoked")
    c.publish()
    till = central.till()
    cases: list[tuple[str, dict[str, Any]]] = [
        (good, {"currency": "CNY", "total_minor": 12800}),
        (good, {"currency": "CNY", "total_minor": 5000}),
        (revoked, {"currency": "CNY", "total_minor": 12800}),
        (forged(good), {"currency": "CNY", "total_minor": 12800}),
        ("CPN1:NOT-A-TOKEN", {"currency": "CNY", "total_minor": 12800}),
    ]
    with till.opened() as engine:
        till.pull()
        for code, doc in cases:
            offline = engine.check(
                code, basket(**doc) if "lines" in doc else basket(doc["total_minor"])
            )
            r = till.device.post_json(protocol.CHECK, {"code": code, "basket": doc})
            assert r.status_code == 200, r.text
            online = r.json()
            assert (online["accepted"], online["reason"], online["discount_minor"]) == (
                offline.accepted,
                offline.reason.value,
                offline.discount_minor,
            ), code
    reasons = [
        till.device.post_json(protocol.CHECK, {"code": code, "basket": doc}).json()["reason"]
        for code, doc in cases
    ]
    assert reasons == ["ok", "below_minimum", "revoked", "bad_signature", "malformed"]


def test_the_online_check_needs_a_signed_request_and_a_readable_body(central: Running) -> None:
    till = central.till()
    unsigned = central.session.post(central.url + protocol.CHECK, json={"code": "x"}, timeout=10)
    assert unsigned.status_code == 401
    bad = till.device.post_json(protocol.CHECK, {"code": "x", "basket": {"currency": 5}})
    assert bad.status_code == 400 and "basket" in bad.json()["detail"]
