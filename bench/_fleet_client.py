"""The tills of bench/fleet.py, run in a process of their own: each till signs its requests
with its own device key and syncs as sync/client.py does (POST /v1/journal with its new
hash-chained entries, GET /v1/ledger with If-None-Match, GET /v1/flags), every sync
interval with jitter, over persistent HTTP/1.1 connections (http.client, one per worker
thread and instance). Light on purpose: no engine, no ledger parsing (the version comes
from X-Ledger-Version), so the central's instances keep the CPU.

    python bench/_fleet_client.py PLAN.json INDEX OUT.json   (bench/fleet.py starts it)
"""

from __future__ import annotations

import hashlib
import heapq
import http.client
import json
import math
import random
import secrets
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from coupons import cose  # noqa: E402
from coupons.journal import GENESIS_HASH, HASHED_FIELDS, entry_hash  # noqa: E402
from sync import protocol  # noqa: E402

ATTEMPTS = 4  # a request is tried this often before the round counts as failed
BACKOFF_S = (0.1, 0.3, 0.9)
REFUSAL_REASONS = ("already_redeemed", "expired", "wrong_store", "below_minimum")
BASKET_MINOR = 12_800


def device_seed(terminal: str) -> bytes:
    """A till's device key seed, derived from its id: the set-up writes the public keys
    and the client processes make the same keys without passing secrets around."""
    return hashlib.sha256(b"edge-redeem fleet bench device:" + terminal.encode()).digest()


class TillPlan(TypedDict):
    terminal: str
    store: str
    since: int  # the scope version the till holds when the run starts
    wallets: list[list[object]]  # [campaign, first serial, count, discount_minor]
    partner: int  # index (in this plan) of a till of another store sharing a campaign


class Plan(TypedDict):
    urls: list[str]
    t0_wall: float  # when the first rounds may start (time.time())
    run_s: float  # real seconds of the run
    interval_s: float  # real seconds between a till's rounds (60 simulated / compression)
    jitter: float  # +- this share of the interval
    entries_per_round: float  # mean new journal entries per round (Poisson)
    refusal_share: float
    double_share: float  # share of redemptions also redeemed offline at the partner's store
    workers: int
    tills: list[TillPlan]


@dataclass
class Wallet:
    campaign: str
    next_serial: int
    left: int
    discount_minor: int


@dataclass
class Till:
    terminal: str
    store: str
    key: cose.SigningKey
    since: int
    wallets: list[Wallet]
    partner: int
    seq: int = 0
    head: str = GENESIS_HASH
    pending: list[dict[str, object]] = field(default_factory=list)  # not acknowledged yet
    etag: str | None = None
    etag_since: int = -1
    flags_since: str = "0"
    doubles: list[tuple[str, int, int]] = field(default_factory=list)  # from the partner
    used: list[int] = field(default_factory=list)  # serials redeemed here (for refusals)


class Failed(Exception):
    """A request that failed after ATTEMPTS tries."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Stats:
    rounds: int = 0
    failed: int = 0
    retries: int = 0
    entries_sent: int = 0
    entries_accepted: int = 0
    redemptions: int = 0
    refusals: int = 0
    doubles: int = 0
    ledger_bytes: int = 0
    pulls: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    latency_s: list[float] = field(default_factory=list)
    late_s: list[float] = field(default_factory=list)
    requests: int = 0
    reconnects: int = 0  # idle keep-alive connections the server had closed


class Link:
    """One worker thread's persistent connections, one per instance."""

    def __init__(self, urls: list[str]) -> None:
        self.targets = [(urlparse(u).hostname or "127.0.0.1", urlparse(u).port or 80) for u in urls]
        self.conns: list[http.client.HTTPConnection | None] = [None] * len(urls)
        self.reconnects = 0

    def call(
        self, which: int, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> Answer:
        conn = self.conns[which]
        reused = conn is not None
        if conn is None:
            host, port = self.targets[which]
            conn = http.client.HTTPConnection(host, port, timeout=120)
            self.conns[which] = conn
        try:
            conn.request(method, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            conn.close()
            self.conns[which] = None
            if not reused:
                raise
            # The server closed an idle keep-alive connection (uvicorn after 5 s): send
            # again on a new one, as urllib3 and browsers do; not a retry of the request.
            self.reconnects += 1
            return self.call(which, method, path, body, headers)
        except (OSError, http.client.HTTPException):
            conn.close()
            self.conns[which] = None
            raise
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)


class Fleet:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.tills = [
            Till(
                t["terminal"],
                t["store"],
                cose.SigningKey(device_seed(t["terminal"])),
                t["since"],
                [
                    Wallet(str(c), int(str(s)), int(str(n)), int(str(d)))
                    for c, s, n, d in t["wallets"]
                ],
                t["partner"],
            )
            for t in plan["tills"]
        ]
        self.stats = Stats()
        self.lock = threading.Lock()  # stats, the schedule, the partners' doubles
        self.cond = threading.Condition(self.lock)
        # monotonic time of t0_wall in this process
        self.t0 = time.monotonic() + (plan["t0_wall"] - time.time())
        self.end = self.t0 + plan["run_s"]
        rng = random.Random(
            zlib.crc32(plan["tills"][0]["terminal"].encode()) if plan["tills"] else 0
        )
        self.schedule = [
            (self.t0 + rng.uniform(0, plan["interval_s"]), i) for i in range(len(self.tills))
        ]
        heapq.heapify(self.schedule)
        self.stop = False

    # ---------------------------------------------------------------- scheduling

    def next_due(self) -> tuple[float, int] | None:
        with self.cond:
            while True:
                if self.stop or not self.schedule:
                    return None
                due, i = self.schedule[0]
                now = time.monotonic()
                # At the end no round starts, however far behind the schedule is: a saturated
                # central leaves rounds overdue, and draining them would outlast the run.
                if now >= self.end:
                    self.stop = True
                    self.cond.notify_all()
                    return None
                if due <= now:
                    heapq.heappop(self.schedule)
                    return due, i
                self.cond.wait(max(0.001, min(due - now, 1.0)))

    def worker(self, n: int) -> None:
        link = Link(self.plan["urls"])
        rng = random.Random(n * 7919 + 13)
        rr = n
        while True:
            got = self.next_due()
            if got is None:
                self.count("reconnects", link.reconnects)
                return
            due, i = got
            till = self.tills[i]
            started = time.monotonic()
            rr += 1
            which = rr % len(self.plan["urls"])
            try:
                self.round(link, which, till, rng)
                ok, why = True, ""
            except Failed as exc:
                ok, why = False, str(exc)
            ended = time.monotonic()
            interval = self.plan["interval_s"]
            jitter = self.plan["jitter"]
            nxt = ended + interval * rng.uniform(1 - jitter, 1 + jitter)
            with self.cond:
                s = self.stats
                if ok:
                    s.rounds += 1
                    s.latency_s.append(ended - started)
                    s.late_s.append(max(0.0, started - due))
                else:
                    s.failed += 1
                    s.errors[why] = s.errors.get(why, 0) + 1
                heapq.heappush(self.schedule, (nxt, i))
                self.cond.notify()

    # ---------------------------------------------------------------- one round

    def request(
        self,
        link: Link,
        which: int,
        till: Till,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> Answer:
        last = ""
        for attempt in range(ATTEMPTS):
            signed = protocol.sign_headers(till.key, till.terminal, method, path, body, time.time())
            try:
                ans = link.call(which, method, path, body, {**signed, **(headers or {})})
                self.count("requests")
                if ans.status < 500 and ans.status != 429:
                    return ans
                last = f"{method} {path.split('?')[0]} {ans.status}"
            except (OSError, http.client.HTTPException) as exc:
                last = f"{method} {path.split('?')[0]} {type(exc).__name__}"
            if attempt < ATTEMPTS - 1:
                self.count("retries")
                time.sleep(BACKOFF_S[attempt])
                which = (which + 1) % len(link.targets)  # another instance, as a balancer would
        raise Failed(last)

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self.stats, name, getattr(self.stats, name) + n)

    def round(self, link: Link, which: int, till: Till, rng: random.Random) -> None:
        self.new_entries(till, rng)
        if till.pending:
            self.push(link, which, till)
        self.pull_ledger(link, which, till)
        ans = self.request(link, which, till, "GET", f"{protocol.FLAGS}?since={till.flags_since}")
        if ans.status != 200:
            raise Failed(f"GET /v1/flags {ans.status}")
        doc = json.loads(ans.body)
        if isinstance(doc, dict):
            till.flags_since = str(doc.get("next", doc.get("since", till.flags_since)))

    def push(self, link: Link, which: int, till: Till) -> None:
        batch = till.pending[: protocol.MAX_BATCH]
        body = json.dumps({"entries": batch}).encode()
        ans = self.request(
            link, which, till, "POST", protocol.JOURNAL, body, {"Content-Type": "application/json"}
        )
        if ans.status != 200:
            raise Failed(f"POST /v1/journal {ans.status}")
        reply = json.loads(ans.body)
        acked = int(reply["acked_seq"])
        before = len(till.pending)
        till.pending = [e for e in till.pending if int(str(e["seq"])) > acked]
        with self.lock:
            self.stats.entries_sent += len(batch)
            self.stats.entries_accepted += before - len(till.pending)
        if reply.get("problem"):
            raise Failed("journal refused")

    def pull_ledger(self, link: Link, which: int, till: Till) -> None:
        path = f"{protocol.LEDGER}?since={till.since}&scope=store%3A{till.store}"
        headers = {"Accept": protocol.LEDGER_MEDIA_TYPE, "Accept-Encoding": "gzip"}
        if till.etag and till.etag_since == till.since:
            headers["If-None-Match"] = till.etag
        ans = self.request(link, which, till, "GET", path, headers=headers)
        kind = f"{ans.status} {ans.headers.get('x-ledger-kind', '')}".strip()
        with self.lock:
            self.stats.pulls[kind] = self.stats.pulls.get(kind, 0) + 1
            self.stats.ledger_bytes += len(ans.body)
        if ans.status == 304:
            return
        if ans.status == 204:
            till.etag, till.etag_since = ans.headers.get("etag"), till.since
            return
        if ans.status != 200:
            raise Failed(f"GET /v1/ledger {ans.status}")
        # What the real till would import: deltas (or a snapshot) up to this version.
        till.since = int(ans.headers["x-ledger-version"])
        till.etag, till.etag_since = ans.headers.get("etag"), till.since

    # ---------------------------------------------------------------- the journal

    def new_entries(self, till: Till, rng: random.Random) -> None:
        """What the till journaled since its last round: redemptions of its coupons,
        refusals, and coupons its partner redeemed too (offline, so both accepted)."""
        with self.lock:
            doubles, till.doubles = till.doubles, []
        for cid, serial, discount in doubles:
            self.append(till, cid, serial, True, "ok", discount)
        for _ in range(_poisson(rng, self.plan["entries_per_round"])):
            wallet = rng.choice(till.wallets)
            if rng.random() < self.plan["refusal_share"] or wallet.left == 0:
                serial = rng.choice(till.used) if till.used else wallet.next_serial
                self.append(till, wallet.campaign, serial, False, rng.choice(REFUSAL_REASONS), 0)
                continue
            serial = wallet.next_serial
            wallet.next_serial += 1
            wallet.left -= 1
            till.used.append(serial)
            self.append(till, wallet.campaign, serial, True, "ok", wallet.discount_minor)
            if rng.random() < self.plan["double_share"]:
                partner = self.tills[till.partner]
                with self.lock:
                    partner.doubles.append((wallet.campaign, serial, wallet.discount_minor))
                    self.stats.doubles += 1

    def append(
        self, till: Till, cid: str, serial: int, accepted: bool, reason: str, discount: int
    ) -> None:
        till.seq += 1
        row: dict[str, object] = {
            "seq": till.seq,
            "at_ms": int(time.time() * 1000),
            "kind": "redeem",
            "op_id": None,
            "checkout_id": secrets.token_hex(8),
            "accepted": accepted,
            "reason": reason,
            "campaign": cid,
            "serial": f"{serial:016x}",
            "customer": None,
            "discount_minor": discount,
            "currency": "CNY",
            "cashier": "C01",
            "source": "camera",
            "detail": json.dumps({"detail": "", "gift": None, "basket_minor": BASKET_MINOR}),
            "prev_hash": till.head,
        }
        row["hash"] = entry_hash({k: row[k] for k in HASHED_FIELDS})
        till.head = str(row["hash"])
        till.pending.append(row)
        with self.lock:
            if accepted:
                self.stats.redemptions += 1
            else:
                self.stats.refusals += 1

    # ---------------------------------------------------------------- the run

    def run(self) -> dict[str, object]:
        cpu0 = time.process_time()
        threads = [
            threading.Thread(target=self.worker, args=(n,), daemon=True)
            for n in range(self.plan["workers"])
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        s = self.stats
        return {
            "rounds": s.rounds,
            "failed": s.failed,
            "retries": s.retries,
            "requests": s.requests,
            "reconnects": s.reconnects,
            "entries_sent": s.entries_sent,
            "entries_accepted": s.entries_accepted,
            "unacknowledged": sum(len(t.pending) for t in self.tills),
            "redemptions": s.redemptions,
            "refusals": s.refusals,
            "doubles": s.doubles,
            "ledger_bytes": s.ledger_bytes,
            "pulls": s.pulls,
            "errors": s.errors,
            "latency_s": [round(x, 5) for x in s.latency_s],
            "late_s": [round(x, 4) for x in s.late_s],
            "cpu_s": time.process_time() - cpu0,
        }


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method: fine for the small means of entries per round."""
    if mean <= 0:
        return 0
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def main(argv: list[str]) -> int:
    plan_path, index, out = argv
    plans: list[Plan] = json.loads(Path(plan_path).read_text())
    result = Fleet(plans[int(index)]).run()
    Path(out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
