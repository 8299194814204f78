"""The store-peers test rig itself (issue 16): the UDP fault proxy passes, drops, delays and
duplicates datagrams on loopback, captures them and injects any bytes; the harness enrolls
four tills of one store whose ledgers list all four tills' device keys."""

from __future__ import annotations

import socket
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from coupons import setup
from coupons.clock import FixedClock
from coupons.ledger import TillKey, store_scope
from tests.conftest import T0
from tests.peers_harness import build_store
from tests.udpproxy import UdpFaultProxy, wait_for


@pytest.fixture
def upstream() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.12", 0))
    sock.settimeout(2)
    yield sock
    sock.close()


def _received(sock: socket.socket, quiet_s: float = 0.3) -> list[bytes]:
    """What arrived until the socket stayed quiet for `quiet_s`."""
    out, timeout = [], sock.gettimeout()
    sock.settimeout(quiet_s)
    try:
        while True:
            out.append(sock.recvfrom(65_535)[0])
    except TimeoutError:
        return out
    finally:
        sock.settimeout(timeout)


def test_the_udp_proxy_passes_drops_delays_and_duplicates(upstream: socket.socket) -> None:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sender, UdpFaultProxy(upstream.getsockname()) as proxy:
        sender.sendto(b"one", proxy.address)
        assert upstream.recvfrom(100)[0] == b"one"
        proxy.set_mode("drop")
        sender.sendto(b"lost", proxy.address)
        assert wait_for(lambda: proxy.counts["drop"] == 1)
        proxy.set_mode("dup")
        sender.sendto(b"twice", proxy.address)
        assert _received(upstream) == [b"twice", b"twice"]  # and "lost" never came
        proxy.set_mode("delay")
        proxy.delay_s = 0.05
        sender.sendto(b"late", proxy.address)
        assert upstream.recvfrom(100)[0] == b"late"
        proxy.inject(b"\xff garbage")
        assert upstream.recvfrom(100)[0] == b"\xff garbage"
        assert proxy.captured == [b"one", b"lost", b"twice", b"late"]
        with pytest.raises(ValueError, match="unknown mode"):
            proxy.set_mode("block")
        # It forwards from the sender's own address, and drops one sender on demand.
        proxy.set_mode("pass")
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with other:
            other.bind(("127.0.0.13", 0))
            other.sendto(b"from 13", proxy.address)
            data, (src, _) = upstream.recvfrom(100)
            assert (data, src) == (b"from 13", "127.0.0.13")
            proxy.drop_from.add("127.0.0.13")
            other.sendto(b"cut off", proxy.address)
            sender.sendto(b"still here", proxy.address)
            assert _received(upstream) == [b"still here"]


def test_the_harness_enrolls_four_tills_whose_ledgers_list_each_other(tmp_path: Path) -> None:
    store = build_store(tmp_path, coupons=3, revoked=1)
    try:
        ids = [t.terminal for t in store.tills]
        assert ids == ["S1-001", "S1-002", "S1-003", "S1-004"]
        want = {t.terminal: TillKey(t.public_key, False) for t in store.tills}
        [stolen] = store.revoked
        want[stolen.terminal] = TillKey(stolen.public_key, True)  # listed, as revoked
        for till in store.tills:
            engine = setup.open_engine(till.data, FixedClock(T0))
            try:
                assert engine.ledger.scope == store_scope("S1")
                assert engine.ledger.tills == want
                assert "ONCE" in engine.ledger.campaigns
            finally:
                engine.db.close()
            assert till.cfg is not None
            peers = tomllib.loads(till.cfg.read_text())["peers"]
            assert peers["listen"] == f"{till.host}:{till.port}"
            book = {a.split("@")[0]: a.split("@")[1] for a in peers["addresses"]}
            assert set(book) == set(ids) - {till.terminal}  # the others (never the revoked)
            assert all(book[o.terminal] == o.proxy.hostport for o in store.tills if o != till)
        assert len(set(store.coupons)) == 3
    finally:
        store.stop()
