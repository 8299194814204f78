"""Store peers over real UDP on 127.0.0.x: signed datagrams, the claim rule, partitions and
restarts, with in-process PeerServices (sync/peers, docs/store-peers.md)."""

from __future__ import annotations

import socket
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import cbor2
import pytest

from coupons import cose
from coupons.claims import NO_PEERS, ClaimKey, ClaimOutcome, ClaimResult
from sync.peers import wire
from sync.peers.service import PeerService, PeerSettings
from sync.peers.wire import parse_book

BOUND_S = 0.15


def eventually(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


class Group:
    def __init__(self, tmp: Path, n: int, revoked: tuple[str, ...] = ()) -> None:
        self.tmp = tmp
        self.keys = [cose.SigningKey.generate() for _ in range(n)]
        self.ids = [f"S1-{i + 1:03d}" for i in range(n)]
        self.members = {t: k.public for t, k in zip(self.ids, self.keys, strict=True)}
        self.revoked = revoked
        self.svcs = [self.open(i) for i in range(n)]
        self.link()

    def open(self, i: int, port: int = 0) -> PeerService:
        settings = PeerSettings(
            self.ids[i], "S1", (f"127.0.0.{11 + i}", port), bound_ms=150,
            hello_interval_s=0.2, down_after_s=1.0,
        )  # fmt: skip
        svc = PeerService(
            settings, self.keys[i], self.tmp / f"{self.ids[i]}.db",
            members=self.members, revoked=self.revoked,
        )  # fmt: skip
        svc.start()
        return svc

    def link(self) -> None:
        for s in self.svcs:
            for o in self.svcs:
                if o is not s:
                    s.book[o.me] = o.address
        for s in self.svcs:
            if s.me not in self.revoked:
                eventually(lambda s=s: all(p["up"] or p["revoked"] for p in s.status()["peers"]))

    def close(self) -> None:
        for s in self.svcs:
            s.stop()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Group]:
    g = Group(tmp_path, 2)
    yield g
    g.close()


def serial(subject: str) -> ClaimKey:
    return ClaimKey("serial", "C1", subject)


def claim(svc: PeerService, key: ClaimKey) -> ClaimResult:
    return svc.claim([key], time.monotonic() + BOUND_S)


def test_no_peers_port_is_inert() -> None:
    r = NO_PEERS.claim([serial("x")], time.monotonic() + 1)
    assert r.outcome is ClaimOutcome.NO_PEERS
    NO_PEERS.settle(r, True, 1)
    NO_PEERS.release([serial("x")])


def test_book_parsing() -> None:
    assert parse_book(["S1-002@127.0.0.12:7311"]) == {"S1-002": ("127.0.0.12", 7311)}
    for bad in ("127.0.0.12:7311", "S1-002@127.0.0.12", "S1 2@h:1"):
        with pytest.raises(ValueError):
            parse_book([bad])


def test_second_claim_a_second_later_is_held_naming_the_first(pair: Group) -> None:
    a, b = pair.svcs
    first = claim(a, serial("s1"))
    assert first.outcome is ClaimOutcome.GRANTED and first.answered == 1
    a.settle(first, True, 7)
    time.sleep(1.0)
    second = claim(b, serial("s1"))
    assert second.outcome is ClaimOutcome.HELD
    assert second.holder == a.me and second.key == serial("s1")
    assert claim(b, serial("other")).outcome is ClaimOutcome.GRANTED


def test_a_counter_takes_the_next_free_slot(pair: Group) -> None:
    a, b = pair.svcs
    first = ClaimKey("customer", "C1", "cust-9", slot=1, limit=2)
    r = claim(a, first)
    a.settle(r, True, 1)
    eventually(lambda: len(b.held_keys()) == 1)
    r = claim(b, first)  # slot 1 is a's: b gets slot 2
    assert r.outcome is ClaimOutcome.GRANTED
    b.settle(r, True, 1)
    eventually(lambda: len(a.held_keys()) == 2)
    r = claim(b, first)
    assert r.outcome is ClaimOutcome.HELD and r.key is not None and r.key.slot == 2


def test_a_counter_slot_a_till_used_is_not_granted_to_it_again(pair: Group) -> None:
    """A till that lost its own record of a customer's use (its peers.db gone) claims the
    same slot again: the peer that saw the use says it is held by the claimant itself, and
    the claim walks on to the next slot instead of counting one use twice."""
    a, b = pair.svcs
    slot1 = ClaimKey("customer", "C1", "cust-7", slot=1, limit=2)
    r = claim(a, slot1)
    a.settle(r, True, 1)
    eventually(lambda: len(b.held_keys()) == 1)
    with a._cond:
        a.store.delete_keys([slot1], a.me, ("held",))
    r = claim(a, slot1)
    assert r.outcome is ClaimOutcome.GRANTED
    slot2 = ClaimKey("customer", "C1", "cust-7", slot=2, limit=2)
    assert [row.state for row in a.store.rows(slot2) if row.holder == a.me] == ["won"]
    a.settle(r, True, 2)
    r = claim(a, slot1)  # both slots used: the customer's limit is reached
    assert r.outcome is ClaimOutcome.HELD and r.key == slot2 and r.holder == a.me


def test_a_void_gives_back_the_counter_slots_of_its_claim(pair: Group) -> None:
    a, b = pair.svcs
    cust = ClaimKey("customer", "C1", "cust-8", slot=1, limit=1)
    r = a.claim([serial("v1"), cust], time.monotonic() + BOUND_S)
    a.settle(r, True, 1)
    eventually(lambda: len(b.held_keys()) == 2)
    assert claim(b, cust).outcome is ClaimOutcome.HELD
    a.release([serial("v1")])  # the sale was voided: the engine names the serial
    eventually(lambda: b.held_keys() == [])
    assert claim(b, cust).outcome is ClaimOutcome.GRANTED


def test_a_refused_sale_gives_its_grants_back(pair: Group) -> None:
    a, b = pair.svcs
    r = claim(a, serial("s2"))
    assert r.outcome is ClaimOutcome.GRANTED
    assert claim(b, serial("s2")).outcome is ClaimOutcome.HELD  # b granted it to a
    a.settle(r, False, None)
    eventually(lambda: claim(b, serial("s2")).outcome is ClaimOutcome.GRANTED)


def test_simultaneous_claims_grant_at_most_one(pair: Group) -> None:
    a, b = pair.svcs
    outcomes: dict[tuple[str, str], int] = {}
    for n in range(200):
        key = serial(f"race-{n}")
        gate = threading.Barrier(2)
        results: dict[str, ClaimResult] = {}

        def run(
            svc: PeerService,
            key: ClaimKey = key,
            gate: threading.Barrier = gate,
            results: dict[str, ClaimResult] = results,
        ) -> None:
            gate.wait()
            results[svc.me] = claim(svc, key)

        threads = [threading.Thread(target=run, args=(s,)) for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = (results[a.me].outcome.value, results[b.me].outcome.value)
        outcomes[got] = outcomes.get(got, 0) + 1
        assert got.count("granted") <= 1, (n, got)
        for svc in (a, b):
            res = results[svc.me]
            svc.settle(res, res.outcome is ClaimOutcome.GRANTED, n)
    print("200 simultaneous rounds (a, b):", outcomes)
    assert sum(v for k, v in outcomes.items() if "granted" in k) >= 150  # mostly one wins


def test_an_unreachable_peer_never_delays_beyond_the_bound(pair: Group) -> None:
    a, b = pair.svcs
    b.stop()  # still "up" in a's view until down_after_s passes
    t0 = time.monotonic()
    r = claim(a, serial("u1"))
    took = time.monotonic() - t0
    print(f"claim with a silent peer that was up: {took * 1000:.1f} ms (bound 150 ms)")
    assert r.outcome is ClaimOutcome.GRANTED and r.unreachable == (b.me,)
    assert took < BOUND_S + 1.0
    eventually(lambda: not a.status()["peers"][0]["up"])
    t0 = time.monotonic()
    r = claim(a, serial("u2"))
    took = time.monotonic() - t0
    print(f"claim once the peer is down: {took * 1000:.1f} ms")
    assert r.outcome is ClaimOutcome.NO_PEERS and took < BOUND_S + 1.0
    pair.svcs = [a]


def test_after_a_partition_heals_both_hold_the_same_set(pair: Group) -> None:
    a, b = pair.svcs
    real = dict(a.book), dict(b.book)
    a.book[b.me] = b.book[a.me] = ("127.0.0.99", 9)  # both ways: nothing arrives
    eventually(lambda: not a.status()["peers"][0]["up"] and not b.status()["peers"][0]["up"])
    ra, rb = claim(a, serial("p1")), claim(b, serial("p2"))
    assert ra.outcome is rb.outcome is ClaimOutcome.NO_PEERS
    a.settle(ra, True, 1)
    b.settle(rb, True, 1)
    rb2 = claim(b, serial("p1"))  # b cannot know: the central reconciles this case
    b.settle(rb2, True, 2)
    assert a.status()["digest"] != b.status()["digest"]
    a.book.update(real[0])
    b.book.update(real[1])
    eventually(lambda: a.status()["digest"] == b.status()["digest"])
    assert a.held_keys() == b.held_keys()
    assert len(a.held_keys()) == 3, a.held_keys()
    assert a.status()["conflicts"] >= 1 or b.status()["conflicts"] >= 1
    assert claim(b, serial("p1")).outcome is ClaimOutcome.HELD


def test_grants_survive_a_restart(pair: Group) -> None:
    a, b = pair.svcs
    r = claim(b, serial("r1"))
    assert r.outcome is ClaimOutcome.GRANTED  # a durably granted r1 to b
    used = claim(b, serial("r2"))
    b.settle(used, True, 3)
    eventually(lambda: len(a.held_keys()) == 1)
    port = a.address[1]
    a.stop()
    a2 = pair.svcs[0] = pair.open(0, port)
    for key in ("r1", "r2"):
        again = a2.claim([serial(key)], time.monotonic() + BOUND_S)
        assert again.outcome is ClaimOutcome.HELD and again.holder == b.me, key


def test_a_release_lost_while_a_peer_was_down_is_sent_when_it_is_back(pair: Group) -> None:
    """A restarts with a claim a crash cut short (b granted it) while b is down too: the
    release A sends at start is lost. It is sent again when b is next heard from, so b
    does not hold the coupon for A for ever."""
    a, b = pair.svcs
    key = serial("lost")
    r = claim(a, key)
    assert r.outcome is ClaimOutcome.GRANTED  # b durably granted it
    with a._cond:
        a.store.set_state(r.claim_id, a.me, "pending")  # as if A died inside the round
    port_a, port_b = a.address[1], b.address[1]
    a.stop()
    b.stop()
    a = pair.svcs[0] = pair.open(0, port_a)  # its release at start reaches nobody
    b = pair.svcs[1] = pair.open(1, port_b)
    assert claim(b, key).outcome is ClaimOutcome.HELD  # b still holds it for A
    b.book[a.me], a.book[b.me] = a.address, b.address
    eventually(lambda: claim(b, key).outcome is ClaimOutcome.GRANTED)


# hostile datagrams -------------------------------------------------------------------
def craft(key: cose.SigningKey, sender: str, **over: object) -> bytes:
    doc: dict[str, object] = {
        "v": 1, "t": "hello", "from": sender, "to": "*", "store": "S1",
        "at": int(time.time() * 1000), "n": wire.new_nonce(), "pseq": 0, "up": [],
    }  # fmt: skip
    doc.update(over)
    return key.sign1(cbor2.dumps(doc, canonical=True))


def test_hostile_datagrams_are_dropped_and_counted(tmp_path: Path) -> None:
    g = Group(tmp_path, 3, revoked=("S1-003",))
    try:
        a = g.svcs[0]
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.bind(("127.0.0.50", 0))
        kb, kc = g.keys[1], g.keys[2]
        good = craft(kb, "S1-002")
        tampered = good[:-1] + bytes([good[-1] ^ 1])
        cases = {
            "garbage": [b"\x00not cbor", cbor2.dumps([1, 2, 3])],
            "oversized": [b"x" * 1300],
            "unknown": [craft(cose.SigningKey.generate(), "S1-009")],
            "forged": [
                tampered,
                craft(kb, "S1-001"),  # b's key speaking as a
                craft(kb, "S1-002", store="S2"),
                craft(kb, "S1-002", to="S1-777"),
            ],
            "stale": [craft(kb, "S1-002", at=int(time.time() * 1000) - 3_600_000)],
            "replayed": [good, good],
            "revoked": [craft(kc, "S1-003")],
        }
        before = dict(a.status()["dropped"])
        for datagrams in cases.values():
            for d in datagrams:
                tx.sendto(d, a.address)
        want = {"garbage": 2, "oversized": 1, "unknown": 1, "forged": 4, "stale": 1}
        want |= {"replayed": 1, "revoked": 1}

        def counted() -> bool:
            got = a.status()["dropped"]
            return all(got[k] - before[k] >= n for k, n in want.items())

        eventually(counted)
        kinds = {k for k, _ in a.flags}
        assert {"peer_forged", "peer_replayed", "peer_revoked"} <= kinds
        # The decision is unchanged: the good peer still answers, the revoked one is no target.
        r = claim(a, serial("h1"))
        assert r.outcome is ClaimOutcome.GRANTED and r.asked == 1
        tx.close()
    finally:
        g.close()


def test_a_use_out_of_order_is_not_applied_but_asked_for_again(pair: Group) -> None:
    """A `used` whose number skips ahead of what we have from that peer is dropped and
    counted (`out_of_order`), and the peer's outbox is synced from where we are: what its
    real events say is what we hold, not the stray message."""
    a, b = pair.svcs
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.53", 0))
    stray = {"pseq": 5, "keys": [["serial", "C1", "ooo", 1, 1]], "seq": 9}
    at = int(time.time() * 1000)
    tx.sendto(wire.encode(pair.keys[1], "used", b.me, a.me, "S1", at, stray), a.address)
    eventually(lambda: a.status()["dropped"]["out_of_order"] == 1)
    r = claim(b, serial("real"))  # b's own first use: its outbox's event 1
    b.settle(r, True, 1)
    eventually(lambda: a.held_keys() == b.held_keys() and len(a.held_keys()) == 1)
    assert "ooo" not in " ".join(a.held_keys())
    tx.close()


def test_a_flood_is_rate_limited(tmp_path: Path) -> None:
    g = Group(tmp_path, 2)
    try:
        a, kb = g.svcs[0], g.keys[1]
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.bind(("127.0.0.51", 0))
        for _ in range(600):
            tx.sendto(craft(kb, "S1-002"), a.address)
        eventually(lambda: a.status()["dropped"]["rate_limited"] > 0)
        assert any(k == "peer_flood" for k, _ in a.flags)
        tx.close()
    finally:
        g.close()


def test_claims_left_in_flight_are_capped_below_the_rate(tmp_path: Path) -> None:
    """Claims at 25 a second (a quarter of the rate) that are never used nor released: after
    MAX_GRANTS_IN_FLIGHT the claimant is a flood, however slowly it sends. (S1-002's own
    service is stopped: the key is a stolen one, and a live S1-002 would give back grants
    for claims it never made.)"""
    from sync.peers.responder import MAX_GRANTS_IN_FLIGHT

    g = Group(tmp_path, 2)
    try:
        a, kb = g.svcs[0], g.keys[1]
        g.svcs[1].stop()
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.bind(("127.0.0.52", 0))
        for n in range(MAX_GRANTS_IN_FLIGHT + 8):
            claim_fields = {
                "id": wire.new_claim_id(),
                "prio": [int(time.time() * 1000), "S1-002"],
                "keys": [["serial", "C1", f"slow-{n}", 1, 1]],
            }
            at = int(time.time() * 1000)
            datagram = wire.encode(kb, "claim", "S1-002", "S1-001", "S1", at, claim_fields)
            tx.sendto(datagram, a.address)
            time.sleep(0.04)
        eventually(lambda: a.status()["dropped"]["rate_limited"] >= 8)
        assert any(k == "peer_flood" for k, _ in a.flags)
        with a._cond:
            assert a.store.grants_in_flight("S1-002", 0) == MAX_GRANTS_IN_FLIGHT
        tx.close()
    finally:
        g.close()


def test_oversized_messages_are_not_sent() -> None:
    key = cose.SigningKey.generate()
    with pytest.raises(wire.WireError) as err:
        wire.encode(key, "sync", "S1-001", "*", "S1", 0, {"pad": b"x" * 2000})
    assert err.value.why == "oversized"


# the daemon's [peers] section ----------------------------------------------------------
def test_peers_section_is_validated(tmp_path: Path) -> None:
    from terminal.daemon import config

    path = tmp_path / "redeem.toml"
    good = (
        '[peers]\nenabled = true\nlisten = "127.0.0.1:7311"\n'
        'addresses = ["S1-002@127.0.0.12:7311"]\n'
    )
    cfg = config.parse(tomllib.loads(good), path, good)
    assert cfg.peers.enabled and cfg.peers.addresses == ["S1-002@127.0.0.12:7311"]
    assert cfg.peers.claim_bound_ms == 150 and not config.Config(path).peers.enabled
    for bad, key in (
        ('[peers]\naddresses = ["127.0.0.12:7311"]\n', "peers.addresses"),
        ('[peers]\nlisten = "nowhere"\n', "peers.listen"),
        ("[peers]\ndown_after_s = 1\nhello_interval_s = 2\n", "peers.down_after_s"),
        ("[peers]\nmax_datagram = 9000\n", "peers.max_datagram"),
        ('[[input]]\nname = "peers"\nkind = "fake"\n', "input[0].name"),
    ):
        with pytest.raises(config.ConfigError) as err:
            config.parse(tomllib.loads(bad), path, bad)
        assert err.value.key == key, bad


def test_the_daemon_runs_its_peer_service(tmp_path: Path) -> None:
    from coupons import setup
    from coupons.clock import SystemClock
    from coupons.keys import TrustAnchor
    from sync.device import ensure_device_key
    from terminal.daemon import config, control
    from terminal.daemon.runner import Daemon

    data = tmp_path / "t"
    anchor = tmp_path / "anchor.json"
    anchor.write_text(TrustAnchor(cose.SigningKey.generate().public).to_json())
    setup.init(data, anchor, "S1", "T1")
    ensure_device_key(data)
    text = (
        f'[terminal]\ndata = "{data}"\n[kiosk]\nenabled = false\n'
        '[peers]\nenabled = true\nlisten = "127.0.0.21:0"\ndiscovery = false\n'
        'addresses = ["T2@127.0.0.22:7311"]\n'
    )
    cfg = config.parse(tomllib.loads(text), tmp_path / "d.toml", text)
    daemon = Daemon(cfg, SystemClock())
    daemon.start()
    try:
        assert daemon.peers is not None and daemon.engine is not None
        assert getattr(daemon.engine, "claimer") is daemon.peers  # noqa: B009
        status = daemon.status()["peers"]
        assert status["enabled"] is True and status["terminal"] == "T1"
        line = daemon.health()["peers"]  # no tills listed in the ledger yet
        assert line["state"] == "degraded" and "no tills" in str(line["detail"])
        assert daemon.healthy()  # decides alone: nothing for the watchdog
        reply = control.request(data, {"op": "peers"})
        assert reply["ok"] and reply["keys"] == [] and reply["dropped"]["garbage"] == 0
    finally:
        daemon.stop()
    assert daemon.peers is None


# discovery ------------------------------------------------------------------------------
def test_discovery_adds_only_listed_tills_of_our_store(pair: Group) -> None:
    """What mDNS announces goes through the same filter as any hint: another store's till,
    a till the ledger does not list and one the config already names are left out. (No
    multicast here: the tests send nothing beyond 127.0.0.0/8, so the announcements are
    zeroconf's own ServiceInfo records handed to the browser's callback.)"""
    import zeroconf

    from sync.peers import discovery

    a, b = pair.svcs
    a.book.pop(b.me)

    def announced(terminal: str, store: str, host: str) -> zeroconf.ServiceInfo:
        return zeroconf.ServiceInfo(
            discovery.SERVICE_TYPE,
            f"{terminal}.{discovery.SERVICE_TYPE}",
            addresses=[socket.inet_aton(host)],
            port=7311,
            properties={"v": "1", "store": store, "terminal": terminal},
        )

    records = {
        "other-store": announced("S2-001", "S2", "127.0.0.61"),
        "unlisted": announced("S1-099", "S1", "127.0.0.62"),
        "ours": announced(b.me, "S1", "127.0.0.63"),
    }

    class Network:  # the outermost edge: what a Zeroconf would have read off the LAN
        def get_service_info(self, _type: str, name: str, timeout: int) -> object:
            return records[name]

    found = discovery.Discovery.__new__(discovery.Discovery)
    found._zc_mod, found.service, found.configured = zeroconf, a, set()
    added = zeroconf.ServiceStateChange.Added
    for name in records:
        found._changed(Network(), discovery.SERVICE_TYPE, name, added)
    assert a.book == {b.me: ("127.0.0.63", 7311)}
    found.configured = {b.me}  # an address in the config wins over an announcement
    records["ours"] = announced(b.me, "S1", "127.0.0.64")
    found._changed(Network(), discovery.SERVICE_TYPE, "ours", added)
    assert a.book[b.me] == ("127.0.0.63", 7311)
