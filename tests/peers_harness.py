"""Store peers as real processes (issue 16): four enrolled tills of store S1, each holding
the store's ledger (which lists all four tills' device keys), each a `redeem run` daemon on
its own loopback address 127.0.0.1{i}, with the peers' UDP traffic going through one
UdpFaultProxy per till. The central is never served: the store is offline, as in an
outage, and the tills have only each other.

    store = build_store(tmp_path, coupons=50)
    store.start()                      # needs [peers] in the daemon config (sync.peers)
    a, b = store.tills[:2]
    a.apply(store.coupons[0])          # a fresh checkout, then the coupon: the decision
    store.tills[3].proxy.set_mode("drop")   # till 4 partitioned (both ways)
    store.stop()

Routing is by address book: each till's `[peers] addresses` lists the other tills' proxies,
so the proxy in front of a till sees everything sent to it, and blocking it cuts that till
off both ways (its answers go to the others' proxies, but nothing reaches it)."""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from coupons import setup
from coupons.clock import FixedClock
from coupons.ledger import Policy, store_scope
from kiosk_ui import tills as pos_tills
from sync.central import terminals
from sync.central.delivery import Delivery
from sync.central.publisher import Publisher
from sync.central.store import Central
from sync.device import ensure_device_key
from tests.conftest import T0
from tests.master_key import KEY as MASTER_KEY
from tests.postgres import free_port
from tests.test_daemon import Running, write_config
from tests.udpproxy import UdpFaultProxy

STORE = "S1"
BASKET = {"currency": "CNY", "total_minor": 12800}
CLAIM_BOUND_MS = 150


def free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Till:
    """One till daemon of the store: its data directory, device key, addresses and POS
    token, and the proxy that stands in front of its peer port."""

    terminal: str  # as enrollment named it: S1-001 ...
    data: Path
    public_key: bytes
    host: str  # 127.0.0.1{i}: its own loopback address
    port: int  # its peer (UDP) port
    proxy: UdpFaultProxy
    kiosk_port: int
    token: str = ""
    cfg: Path | None = None
    run: Running | None = None
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))

    @property
    def listen(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.kiosk_port}"

    def start(self) -> None:
        assert self.cfg is not None
        self.run = Running(self.cfg)
        self.run.wait_ready(self.data)

    def kill(self) -> None:
        """SIGKILL: no shutdown, as a power cut."""
        if self.run is not None:
            self.run.proc.kill()
            self.run.output()
            self.run = None

    def stop(self) -> str:
        out = ""
        if self.run is not None and self.run.proc.poll() is None:
            _, _, out = self.run.terminate()
        self.run = None
        return out

    def post(self, path: str, body: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", "Idempotency-Key": uuid.uuid4().hex}
        return self.client.post(self.url + path, json=body, headers=headers)

    def apply(self, code: str, basket: Any = None) -> dict[str, Any]:
        """A new checkout (one per try: a sale stacks coupons), then the coupon; returns
        the decision (accepted, reason, used_at, ...)."""
        r = self.post("/api/v1/checkouts", {"basket": basket or BASKET})
        assert r.status_code == 201, r.text
        cid = r.json()["checkout_id"]
        r = self.post(f"/api/v1/checkouts/{cid}/coupons", {"code": code})
        assert r.status_code in (200, 409), r.text
        decision: dict[str, Any] = r.json()["decision"] if r.status_code == 200 else r.json()
        return decision


@dataclass
class Store:
    central: Central
    tills: list[Till]
    coupons: list[str]
    ledger: bytes  # the store's ledger file, as every till imported it
    revoked: list[Till] = field(default_factory=list)  # listed as revoked; never started

    def by_id(self, terminal: str) -> Till:
        return next(t for t in self.tills if t.terminal == terminal)

    def partition(self, till: Till) -> None:
        """Cut `till` off from the others, both ways (its port blocked at its proxy, and
        what it sends dropped at theirs)."""
        till.proxy.set_mode("drop")
        for other in self.tills:
            if other is not till:
                other.proxy.drop_from.add(till.host)

    def heal(self, till: Till) -> None:
        till.proxy.set_mode("pass")
        for other in self.tills:
            other.proxy.drop_from.discard(till.host)

    def start(self) -> None:
        for t in self.tills:
            t.start()

    def stop(self) -> None:
        for t in self.tills:
            t.stop()
            t.client.close()
        for t in self.tills:
            t.proxy.stop()
        self.central.db.close()


def peers_config(till: Till, others: list[Till], extra: str = "") -> str:
    """The till's `[peers]` section: its own address, and the others' through their
    proxies (own id skipped by the daemon, so one list could serve the whole store)."""
    book = ", ".join(f'"{o.terminal}@{o.proxy.hostport}"' for o in others)
    return (
        f'\n[peers]\nenabled = true\nlisten = "{till.listen}"\naddresses = [{book}]\n'
        f"discovery = false\nclaim_bound_ms = {CLAIM_BOUND_MS}\n{extra}"
    )


def build_store(
    tmp: Path,
    n: int = 4,
    coupons: int = 10,
    campaign: dict[str, Any] | None = None,
    codes: bool = False,
    revoked: int = 0,
    peers_extra: str = "",
    policy: Policy | None = None,
) -> Store:
    """The central makes a campaign and its coupons (typed codes with `codes`: no signing
    cost for thousands) and enrolls n tills of S1, then `revoked` more that it revokes at
    once (their data directories hold their keys: a stolen till); each of the n tills gets
    the store's ledger (listing all of them), a POS token and a daemon config with [peers].
    Nothing is started: `Store.start()` runs the daemons."""
    clock = FixedClock(T0)
    central = Central.init(tmp / "central", clock.now, master_key=MASTER_KEY)
    if policy is not None:  # e.g. no velocity limits, for a thousand sales at one instant
        central.set_policy(policy)
    doc = {"id": "ONCE", "currency": "CNY", "kind": "fixed", "amount_minor": 1000}
    central.add_campaign({**doc, **(campaign or {})})
    issued = [i.token or i.code or "" for i in central.issue("ONCE", coupons, codes=codes)]
    tills: list[Till] = []
    for i in range(1, n + revoked + 1):
        data = tmp / f"till{i}"
        key, *_ = ensure_device_key(data)
        code, _ = terminals.new_enroll_code(central, STORE)
        enrolled = terminals.enroll(central, code, key.public)
        setup.init_enrolled(data, central.anchor, STORE, enrolled.terminal)
        host = f"127.0.0.1{i}"
        port = free_udp_port(host)
        proxy = UdpFaultProxy((host, port)).start()
        tills.append(Till(enrolled.terminal, data, key.public, host, port, proxy, free_port()))
    for gone in tills[n:]:
        terminals.revoke_terminal(central, gone.terminal)
        gone.proxy.stop()
    revoked_tills, tills = tills[n:], tills[:n]
    Publisher(central).tick()
    answer = Delivery(central).answer(store_scope(STORE), 0, {})
    assert answer.status == 200, answer.status
    for t in tills:
        engine = setup.open_engine(t.data, clock)
        try:
            result = engine.import_ledger(answer.body)
            assert result.applied and not result.refused, result.refused
        finally:
            engine.db.close()
        t.token = pos_tills.issue(t.data, "till-1")
        others = [o for o in tills if o is not t]
        kiosk = f'\n[kiosk]\nhost = "127.0.0.1"\nport = {t.kiosk_port}\n'
        t.cfg = write_config(
            t.data / "daemon.toml", t.data, kiosk + peers_config(t, others, peers_extra)
        )
    return Store(central, tills, issued, answer.body, revoked_tills)
