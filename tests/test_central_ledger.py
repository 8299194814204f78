"""Ledger distribution from the real central on loopback (SQLite and PostgreSQL): a snapshot
for a new terminal, deltas after its version, 204/304 when it is current, a snapshot again
when it is far behind, gzip, and resuming a big snapshot with byte ranges; what arrives
is imported by a real terminal engine."""

from __future__ import annotations

import gzip
import secrets
from collections.abc import Iterator

import pytest
import requests

from coupons.clock import FixedClock
from coupons.ledger import read_file
from coupons.reasons import Reason
from sync import protocol
from sync.central import scopes
from tests.central_server import BACKENDS, Running, running_central
from tests.conftest import T0, basket


@pytest.fixture(scope="module", params=BACKENDS)
def central(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    with running_central(request.param, tmp_path_factory.mktemp("ledger"), FixedClock(T0)) as c:
        yield c


def test_new_terminal_gets_a_snapshot_then_deltas_then_nothing(central: Running) -> None:
    c = central.central
    c.add_campaign({"id": "L1", "kind": "fixed", "currency": "CNY", "amount_minor": 500})
    till = central.till()
    with till.opened() as engine:
        first = till.device.ledger(0)
        assert first.status_code == 200, first.text
        assert first.headers["X-Ledger-Kind"] == "snapshot"
        assert first.headers["Content-Type"] == protocol.LEDGER_MEDIA_TYPE
        assert engine.import_ledger(first.content).applied
        version = engine.ledger.version
        assert "L1" in engine.ledger.campaigns

        # Nothing new: 204 for the plain question, 304 for the conditional one.
        current = till.device.ledger(version)
        assert current.status_code == 204 and current.content == b""
        etag = first.headers["ETag"]
        assert till.device.ledger(version, **{"If-None-Match": etag}).status_code == 304

        # A campaign added at the central reaches the till at its next pull, as a delta.
        c.add_campaign({"id": "L2", "kind": "fixed", "currency": "CNY", "amount_minor": 700})
        [token] = [i.token for i in c.issue("L2", 1)]
        central.publish()  # the publisher's next tick
        delta = till.device.ledger(version, **{"If-None-Match": etag})
        assert delta.status_code == 200 and delta.headers["X-Ledger-Kind"] == "delta"
        assert int(delta.headers["X-Ledger-Version"]) == version + 1
        assert delta.headers["ETag"] != etag
        engine.import_ledger(delta.content)
        assert engine.ledger.version == version + 1
        d = engine.redeem(token or "", basket(5000))
        assert d.accepted and d.discount_minor == 700

        # A revocation too: the till refuses the coupon after the pull.
        [other] = c.issue("L2", 1)
        c.mark([other.serial], "revoked")
        assert till.pull() is not None
        assert engine.redeem(other.token or "", basket(5000)).reason == Reason.REVOKED


def test_far_behind_gets_a_snapshot_and_ahead_is_a_conflict(central: Running) -> None:
    dev = central.device()
    till = central.till()
    with till.opened() as engine:
        till.pull()
        start = engine.ledger.version
        for n in range(protocol.SNAPSHOT_AFTER + 1):  # one change a tick: a version each
            central.central.mark([10**9 + n], "revoked")
            central.publish()
        behind = dev.ledger(start)
        assert behind.status_code == 200 and behind.headers["X-Ledger-Kind"] == "snapshot"
        updates = read_file(behind.content)
        latest = int(behind.headers["X-Ledger-Version"])
        assert latest == start + protocol.SNAPSHOT_AFTER + 1
        # The newest snapshot and the few deltas after it, never the whole run of deltas.
        assert len(updates) <= latest % scopes.SNAPSHOT_EVERY + 1 < protocol.SNAPSHOT_AFTER
        assert engine.import_ledger(behind.content).applied
        assert engine.ledger.version == latest
        near = dev.ledger(latest - 3)
        assert near.headers["X-Ledger-Kind"] == "delta" and len(read_file(near.content)) == 3
    ahead = dev.ledger(latest + 5)
    assert ahead.status_code == 409 and ahead.json()["code"] == "ledger-ahead"
    assert dev.get(f"{protocol.LEDGER}?since=-1").status_code == 400
    assert dev.get(f"{protocol.LEDGER}?since=x").status_code == 400


def test_gzip_and_a_snapshot_download_resumed_with_ranges(central: Running) -> None:
    c = central.central
    # 32 kB of random serials (no run compresses them): worth resuming.
    c.mark([secrets.randbits(64) for _ in range(4000)], "revoked")
    dev = central.device()
    ident = {"Accept-Encoding": "identity"}
    plain = dev.ledger(0, **ident)
    assert plain.status_code == 200 and "Content-Encoding" not in plain.headers
    full = plain.content
    assert len(full) > 32_000

    zipped = dev.ledger(0, **{"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert zipped.headers["ETag"] != plain.headers["ETag"]
    assert int(zipped.headers["Content-Length"]) < len(full)  # sent compressed
    assert zipped.content == full  # requests decoded it

    etag = plain.headers["ETag"]
    head = dev.ledger(0, Range="bytes=0-9999", **ident)
    assert head.status_code == 206
    assert head.headers["Content-Range"] == f"bytes 0-9999/{len(full)}"
    tail = dev.ledger(0, Range="bytes=10000-", **{"If-Range": etag}, **ident)
    assert tail.status_code == 206 and head.content + tail.content == full

    # The bytes of a version stay the same: a later download fits the earlier one.
    again = dev.ledger(0, Range="bytes=10000-", **ident)
    assert again.content == tail.content

    # Once a newer version exists, If-Range sends the whole new body instead of a piece.
    c.mark([10**12 + 5000], "revoked")
    central.publish()
    stale = dev.ledger(0, Range="bytes=10000-", **{"If-Range": etag}, **ident)
    assert stale.status_code == 200 and read_file(stale.content)
    unsatisfiable = dev.ledger(0, Range=f"bytes={10**9}-", **ident)
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["Content-Range"].startswith("bytes */")


def test_gzip_ranges_are_of_the_compressed_bytes(central: Running) -> None:
    dev = central.device()
    whole = dev.ledger(0, **{"Accept-Encoding": "identity"}).content
    path = f"{protocol.LEDGER}?since=0"

    def sent(rng: str) -> requests.Response:
        signed = protocol.sign_headers(dev.key, dev.terminal, "GET", path, b"", dev.clock.now())
        headers = {**signed, "Accept-Encoding": "gzip", "Range": rng}
        return requests.get(central.url + path, headers=headers, stream=True, timeout=30)

    first, rest = sent("bytes=0-99"), sent("bytes=100-")
    assert first.status_code == rest.status_code == 206
    assert first.headers["Content-Encoding"] == "gzip"
    body = first.raw.read(decode_content=False) + rest.raw.read(decode_content=False)
    assert gzip.decompress(body) == whole


def test_a_till_asking_for_another_stores_scope_gets_403(central: Running) -> None:
    dev = central.device("S1")
    central.device("S2")  # S2 has a ledger of its own
    own = dev.get(f"{protocol.LEDGER}?since=0&scope=store:S1")
    assert own.status_code == 200
    other = dev.get(f"{protocol.LEDGER}?since=0&scope=store:S2")
    assert other.status_code == 403 and other.json()["code"] == "wrong-scope"
    assert "store:S2" in other.json()["detail"]
    chain_wide = dev.get(f"{protocol.LEDGER}?since=0&scope=")
    assert chain_wide.status_code == 403  # the chain-wide ledger is never served to a till
