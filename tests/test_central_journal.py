"""Journal upload to the real central on loopback (SQLite and PostgreSQL), with a real
terminal's journal: batches keyed by seq, acknowledged high-water mark, resending harmless,
gaps named, altered entries and broken chains refused and flagged, bad batches refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from coupons.clock import FixedClock
from coupons.journal import entry_hash
from sync import protocol
from sync.central.models import JournalRow
from tests.central_server import BACKENDS, Running, Till, chain, running_central
from tests.conftest import T0, basket


@pytest.fixture(scope="module", params=BACKENDS)
def central(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    with running_central(request.param, tmp_path_factory.mktemp("journal"), FixedClock(T0)) as c:
        c.central.add_campaign(
            {"id": "J1", "kind": "fixed", "currency": "CNY", "amount_minor": 300}
        )
        yield c


def _sales(central: Running, till: Till, n: int) -> list[dict[str, Any]]:
    """n redemptions (and a refused replay) at a real till; its journal rows."""
    tokens = [i.token or "" for i in central.central.issue("J1", n)]
    with till.opened() as engine:
        till.pull()
        for t in tokens:
            assert engine.redeem(t, basket(2000)).accepted
        assert not engine.redeem(tokens[0], basket(2000)).accepted  # a replay, and its flag
        return till.rows()


def _stored(central: Running, terminal: str) -> list[tuple[int, str]]:
    with central.central.session():
        rows = JournalRow.select(JournalRow.seq, JournalRow.hash).where(
            JournalRow.terminal == terminal
        )
        return sorted((int(r.seq), str(r.hash)) for r in rows)


def _flags(central: Running, token: str, **params: str) -> list[dict[str, Any]]:
    import requests

    r = requests.get(
        central.url + protocol.ADMIN_PREFIX + "/flags",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["flags"]
    return items


def test_upload_is_acknowledged_and_resending_changes_nothing(central: Running) -> None:
    till = central.till()
    rows = _sales(central, till, 4)
    reply = till.device.push(rows)
    head = rows[-1]["seq"]
    assert reply["acked_seq"] == head and reply["accepted"] == len(rows)
    assert reply["gaps"] == [] and reply["problem"] is None
    assert reply["usage"] == {"J1": [4, 1200]}
    assert _stored(central, till.terminal) == [(r["seq"], r["hash"]) for r in rows]

    again = till.device.push(rows)  # the reply was lost; the terminal sends it all again
    assert again["acked_seq"] == head and again["accepted"] == 0 and again["problem"] is None
    overlap = till.device.push(rows[2:])
    assert overlap["accepted"] == 0
    assert _stored(central, till.terminal) == [(r["seq"], r["hash"]) for r in rows]
    assert till.device.push([])["acked_seq"] == head

    # The terminal's replay flag arrived with the journal, as a flag at the central.
    token = central.admin_token()
    mine = [f for f in _flags(central, token) if f["terminal"] == till.terminal]
    assert [f["kind"] for f in mine] == ["replay"]
    assert mine[0]["source"] == "terminal" and mine[0]["status"] == "open"


def test_a_gap_is_named_and_filled_by_resending(central: Running) -> None:
    till = central.till()
    rows = _sales(central, till, 5)
    early = till.device.push(rows[4:])  # entries 1-4 were lost on the way
    assert early["acked_seq"] == 0 and early["accepted"] == 0
    assert early["gaps"] == [[1, 4]]
    first = till.device.push(rows[:2])
    assert first["acked_seq"] == 2 and first["gaps"] == []
    holey = till.device.push(rows[:2] + rows[3:])  # entry 3 missing inside a batch
    assert holey["acked_seq"] == 2 and holey["gaps"] == [[3, 3]]
    rest = till.device.push(rows[2:])
    assert rest["acked_seq"] == rows[-1]["seq"] and rest["accepted"] == len(rows) - 2
    assert len(_stored(central, till.terminal)) == len(rows)


def test_an_altered_entry_is_refused_and_flagged(central: Running) -> None:
    till = central.till()
    rows = _sales(central, till, 3)
    forged = [dict(r) for r in rows]
    forged[2]["discount_minor"] = 1  # hash left as it was: the content no longer matches
    reply = till.device.push(forged)
    assert reply["acked_seq"] == 2 and reply["accepted"] == 2
    assert "entry 3 was altered" in reply["problem"]
    assert till.device.push(forged[2:])["acked_seq"] == 2  # refused every time
    token = central.admin_token()
    flagged = _flags(central, token, kind="journal_altered")
    mine = [f for f in flagged if f["terminal"] == till.terminal]
    assert len(mine) == 1 and mine[0]["seq"] == 3  # raised once, not per resend
    # The genuine entries still go through.
    assert till.device.push(rows[2:])["acked_seq"] == rows[-1]["seq"]

    # An entry already received that comes back different is refused as well.
    changed = dict(rows[0], cashier="mallory")
    changed["hash"] = entry_hash(changed)
    again = till.device.push([changed])
    assert "differs" in again["problem"] and again["acked_seq"] == rows[-1]["seq"]
    assert _stored(central, till.terminal)[0] == (rows[0]["seq"], rows[0]["hash"])


def test_a_broken_chain_is_refused(central: Running) -> None:
    till = central.till()
    rows = _sales(central, till, 3)
    assert till.device.push(rows[:2])["acked_seq"] == 2
    # A consistent entry 3 (its hash matches) that does not follow the stored entry 2: a
    # journal rebuilt or spliced after the fact.
    spliced = dict(rows[2], prev_hash="ab" * 32)
    spliced["hash"] = entry_hash(spliced)
    reply = till.device.push([spliced] + rows[3:])
    assert reply["acked_seq"] == 2 and "broken hash chain" in reply["problem"]
    token = central.admin_token()
    assert any(
        f["terminal"] == till.terminal for f in _flags(central, token, kind="journal_chain_broken")
    )


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{", 400),
        (b"\xff", 400),
        (b"[]", 422),
        (b'{"entries": {}}', 422),
        (b'{"entries": [1]}', 422),
        (b'{"entries": [{"seq": 1}]}', 422),
    ],
)
def test_bad_batches_are_refused_not_500(central: Running, body: bytes, status: int) -> None:
    dev = central.device()
    r = dev.request("POST", protocol.JOURNAL, body)
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/problem+json")


def test_wrong_types_oversized_and_out_of_order_batches(central: Running) -> None:
    till = central.till()
    rows = _sales(central, till, 2)

    def bad(**change: Any) -> int:
        entry = {**rows[0], **change}
        return int(till.device.post_json(protocol.JOURNAL, {"entries": [entry]}).status_code)

    assert bad(seq="1") == 422
    assert bad(accepted=1) == 422
    assert bad(seq=True) == 422
    assert bad(discount_minor=2**70) == 422
    assert bad(hash="XYZ") == 422
    assert bad(cashier="a\x00b") == 422
    assert bad(detail="x" * 100_000) == 422
    r = till.device.post_json(protocol.JOURNAL, {"entries": [rows[1], rows[0]]})
    assert r.status_code == 422
    many = {"entries": [rows[0]] * (protocol.MAX_BATCH + 1)}
    assert till.device.post_json(protocol.JOURNAL, many).status_code == 413
    huge = json.dumps({"entries": [], "pad": "x" * (9 * 1024 * 1024)}).encode()
    assert till.device.request("POST", protocol.JOURNAL, huge).status_code == 413
    # A surrogate that is valid JSON but not Unicode text is refused, not a crash.
    text = json.dumps({"entries": [{**rows[0], "cashier": "\ud800"}]}).encode()
    assert till.device.request("POST", protocol.JOURNAL, text).status_code == 422
    # Nothing of that was stored.
    assert _stored(central, till.terminal) == []


def test_long_texts_and_unknown_campaigns_are_stored(central: Running) -> None:
    """Whatever a terminal's journal holds within the limits is taken, on PostgreSQL too."""
    long = "x" * 1024
    entries = chain(
        {
            "kind": "redeem",
            "reason": "ok",
            "campaign": long,
            "serial": "00000000000000ff",
            "customer": long,
            "checkout_id": long,
            "op_id": long,
            "cashier": "收银员 1",
            "discount_minor": 100,
            "detail": json.dumps({"tag": "04" * 400}),
        },
        {"kind": "flag", "accepted": False, "reason": long, "detail": '{"about_seq": 1}'},
        {"kind": "reverse", "reason": "ok", "serial": "00000000000000ff", "checkout_id": long},
    )
    dev = central.device()
    reply = dev.push(entries)
    assert reply["problem"] is None and reply["acked_seq"] == 3
    token = central.admin_token()
    mine = [f for f in _flags(central, token) if f["terminal"] == dev.terminal]
    [flag] = [f for f in mine if f["source"] == "terminal"]
    assert flag["kind"] == long and flag["customer"] == long
    # The redemption of a campaign the central never heard of is kept, flagged, not counted.
    assert [f["seq"] for f in mine if f["kind"] == "implausible_entry"] == [1]
