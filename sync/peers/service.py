"""PeerService: the Claimer that asks the other tills of the store before a single-use
coupon is accepted, and answers their claims (docs/store-peers.md)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from coupons import cose
from coupons.claims import ClaimKey, ClaimOutcome, ClaimResult, PeerRecord
from coupons.clock import Clock, SystemClock
from sync.peers import responder, wire
from sync.peers.limits import Buckets, Histogram, SeenCache, Throttle
from sync.peers.store import PeerStore, digest

log = logging.getLogger(__name__)
Submit = Callable[[Callable[[Any], Any]], Any]
DROPS = (
    "garbage", "oversized", "forged", "replayed", "stale", "unknown", "revoked",
    "rate_limited", "out_of_order",
)  # fmt: skip


@dataclass(frozen=True)
class PeerSettings:
    terminal: str
    store: str
    listen: tuple[str, int] = ("0.0.0.0", 7311)  # noqa: S104 (the store LAN; signed messages)
    addresses: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    bound_ms: int = 150
    hello_interval_s: float = 2.0
    down_after_s: float = 6.0
    replay_window_s: float = 60.0
    rate_per_s: float = 100.0
    max_datagram: int = wire.MAX_DATAGRAM
    discovery: bool = False
    synchronous: str = "FULL"


@dataclass
class _Round:
    id: bytes
    keys: tuple[ClaimKey, ...]
    targets: frozenset[str]
    up: frozenset[str]
    answered: set[str] = field(default_factory=set)
    granted: set[str] = field(default_factory=set)
    held: tuple[str, ClaimKey] | None = None
    yielded: tuple[str, ClaimKey] | None = None  # a peer with an earlier claim came first

    def done(self) -> bool:
        return self.held is not None or self.yielded is not None or self.up <= self.answered


class PeerService:
    """Threads: peers-rx (datagrams) and peers-tick (hellos, liveness, journal mirror).
    claim() runs on the engine worker. One lock guards peers.db and the rounds."""

    def __init__(
        self,
        settings: PeerSettings,
        key: cose.SigningKey,
        db_path: Path | str,
        *,
        members: Mapping[str, bytes] | None = None,
        revoked: Sequence[str] = (),
        engine: Any = None,
        submit: Submit | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.cfg = settings
        self.me = settings.terminal
        self.key = key
        self.engine, self.submit = engine, submit
        self.clock: Clock = clock or getattr(engine, "clock", None) or SystemClock()
        self._explicit = dict(members) if members is not None else None
        self._revoked_explicit = frozenset(revoked)
        self._members: dict[str, tuple[bytes, bool]] = {}
        self._by_kid: dict[bytes, list[str]] = {}
        self._members_version: object = object()
        self.book: dict[str, tuple[str, int]] = {
            t: a for t, a in settings.addresses.items() if t != self.me
        }
        self.store = PeerStore(db_path, settings.synchronous)
        self._cond = threading.Condition()
        self.rounds: dict[bytes, _Round] = {}
        self._settling: dict[bytes, tuple[ClaimKey, ...]] = {}
        self._seen_at: dict[str, float] = {}
        # Claims a crash cut short, whose `release` each peer is still owed: sent again the
        # first time that peer is heard from (it may have been down when we restarted).
        self._owed: dict[str, list[bytes]] = {}
        self._rtt: dict[str, float] = {}
        self._last_exchange: dict[str, int] = {}
        self.dropped = dict.fromkeys(DROPS, 0)
        self.claims = {"granted": 0, "held": 0, "no_peers": 0, "yielded": 0}
        self.conflicts = 0
        self.latency = Histogram()
        self.flags: list[tuple[str, dict[str, object]]] = []
        burst = max(1.0, 2 * settings.rate_per_s)
        self._ip_buckets = Buckets(4 * settings.rate_per_s, 2 * burst)
        self._peer_buckets = Buckets(settings.rate_per_s, burst)
        self._seen = SeenCache(settings.replay_window_s)
        self._flag_throttle = Throttle()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self.sock: socket.socket | None = None
        self.discovery: Any = None
        self._hello_due = 0.0

    # lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        dropped = self._recover()
        fam = socket.AF_INET6 if ":" in self.cfg.listen[0] else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        self.sock.bind(self.cfg.listen)
        self.sock.settimeout(0.2)
        if self.cfg.discovery:
            # zeroconf is optional: imported only here
            from sync.peers.discovery import start as start_discovery

            self.discovery = start_discovery(self)
        for name, run in (("peers-rx", self._rx_loop), ("peers-tick", self._tick_loop)):
            t = threading.Thread(target=run, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        with self._cond:
            for cid in dropped:
                self._broadcast("release", {"re": cid})
            if dropped:
                self._owed = {t: list(dropped) for t in self.members() if t != self.me}

    @property
    def address(self) -> tuple[str, int]:
        assert self.sock is not None
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def stop(self) -> None:
        """After this, claim() answers NO_PEERS at once: the drain never waits."""
        self._stopped.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(5)
        self._threads.clear()
        if self.discovery is not None:
            self.discovery.close()
            self.discovery = None
        self._flush_mirror()
        if self.sock is not None:
            self.sock.close()
        with self._cond:
            self.store.close()

    def _recover(self) -> list[bytes]:
        """A round cut short by a crash gave nothing away: its pending rows go, and the
        claim ids are returned for a `release` to the peers that may have granted them. A
        `won` claim stays when the sale committed before the crash (the journal's live uses
        say so) and goes otherwise; live uses missing here are added."""
        with self._cond:
            dropped = self.store.drop_unfinished(self.me)
        live = self._engine_call(lambda e: e.live_claim_keys())
        if not isinstance(live, list | tuple | set | frozenset):
            return dropped
        live_keys = [k for k in live if isinstance(k, ClaimKey)]
        with self._cond:
            dropped += self.store.drop_unsold(self.me, live_keys)
            self.store.seed(self.me, live_keys, self.now_ms())
        return dropped

    def _engine_call(self, job: Callable[[Any], Any]) -> Any:
        if self.submit is None:
            return None
        try:
            return self.submit(job).result(10)
        except Exception as exc:  # an engine without the peer jobs: nothing to seed
            log.info("peers: engine job failed: %s", exc)
            return None

    # membership ----------------------------------------------------------------------
    def members(self) -> dict[str, tuple[bytes, bool]]:
        """terminal id -> (public key, revoked): the explicit map, or the ledger's tills."""
        if self._explicit is not None:
            version: object = "explicit"
            source: Mapping[str, Any] = self._explicit
        else:
            ledger = getattr(self.engine, "ledger", None)
            version = getattr(ledger, "version", None)
            source = getattr(ledger, "tills", None) or {}
        if version != self._members_version:
            members = {t: _till(v, t in self._revoked_explicit) for t, v in source.items()}
            members = {t: m for t, m in members.items() if len(m[0]) == 32}
            by_kid: dict[bytes, list[str]] = {}
            for t, (pub, _) in members.items():
                by_kid.setdefault(cose.key_id(pub), []).append(t)
            # Whole maps swapped in: the rx thread reads them without the lock.
            self._members, self._by_kid = members, by_kid
            self._members_version = version
        return self._members

    def _targets(self) -> list[str]:
        m = self.members()
        return sorted(t for t in self.book if t != self.me and t in m and not m[t][1])

    def _is_up(self, peer: str, now: float | None = None) -> bool:
        seen = self._seen_at.get(peer)
        now = time.monotonic() if now is None else now
        return seen is not None and now - seen < self.cfg.down_after_s

    def now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    # sending -------------------------------------------------------------------------
    def send(self, to: str, t: str, fields: Mapping[str, object]) -> bool:
        addr = self.book.get(to)
        if addr is None or self.sock is None or self._stopped.is_set():
            return False
        try:
            data = wire.encode(
                self.key, t, self.me, to, self.cfg.store, self.now_ms(), fields,
                self.cfg.max_datagram,
            )  # fmt: skip
            self.sock.sendto(data, addr)
        except (OSError, wire.WireError) as exc:
            log.debug("peers: cannot send %s to %s: %s", t, to, exc)
            return False
        return True

    def _broadcast(self, t: str, fields: Mapping[str, object]) -> None:
        for peer in self._targets():
            self.send(peer, t, fields)

    # the Claimer port ----------------------------------------------------------------
    def claim(self, keys: Sequence[ClaimKey], deadline: float) -> ClaimResult:
        """Never raises; waits at most until `deadline` (monotonic), and only for peers that
        are up."""
        t0 = time.monotonic()
        try:
            todo = tuple(keys)
            while True:
                result = self._claim(todo, deadline, t0)
                k = result.key
                if result.outcome is not ClaimOutcome.HELD or k is None or k.kind == "serial":
                    return result
                if k.slot >= k.limit or time.monotonic() >= deadline:
                    return result
                # A counter (per customer, a budget count): that slot is taken, try the next.
                todo = tuple(replace(x, slot=k.slot + 1) if x == k else x for x in todo)
        except Exception:
            log.exception("peers: claim failed; deciding alone")
            return ClaimResult(ClaimOutcome.NO_PEERS, elapsed_s=time.monotonic() - t0)

    def _claim(self, keys: tuple[ClaimKey, ...], deadline: float, t0: float) -> ClaimResult:
        if not keys or self._stopped.is_set():
            return ClaimResult(ClaimOutcome.NO_PEERS)
        with self._cond:
            local = self._local_holder(keys)
            if local is not None:
                self.claims["held"] += 1
                return self._result(ClaimOutcome.HELD, b"", t0, local, 0)
            targets = self._targets()
            if not targets:
                self.claims["no_peers"] += 1
                return self._result(ClaimOutcome.NO_PEERS, b"", t0, None, 0)
            cid, now = wire.new_claim_id(), self.now_ms()
            self.store.put(keys, self.me, "pending", cid, now, now)
            up = frozenset(t for t in targets if self._is_up(t, t0))
            rnd = _Round(cid, keys, frozenset(targets), up)
            self.rounds[cid] = rnd
            fields = {
                "id": cid,
                "prio": [now, self.me],
                "keys": [wire.key_to_wire(k) for k in keys],
            }
            sent_at = time.monotonic()
            for peer in targets:
                self.send(peer, "claim", fields)
            resend_at, resent = t0 + max(0.0, deadline - t0) / 3, False
            while not rnd.done() and not self._stopped.is_set():
                now_s = time.monotonic()
                if now_s >= deadline:
                    break
                if not resent and now_s >= resend_at:
                    resent = True
                    for peer in rnd.targets - rnd.answered:
                        self.send(peer, "claim", fields)
                self._cond.wait((deadline if resent else min(deadline, resend_at)) - now_s)
            del self.rounds[cid]
            for peer in rnd.answered:
                self._rtt[peer] = (time.monotonic() - sent_at) * 1000
            return self._finish(rnd, t0)

    def _local_holder(self, keys: Sequence[ClaimKey]) -> tuple[str, ClaimKey] | None:
        """A key a peer used, or one we granted to a peer and it has not given back; for a
        counter, also a slot we hold ourselves (the next claim must take another)."""
        for k in keys:
            for row in self.store.rows(k):
                if row.holder != self.me and row.state in ("used", "granted"):
                    return row.holder, row.key
                if row.holder == self.me and k.kind != "serial" and row.state in ("won", "held"):
                    return row.holder, row.key
        return None

    def _finish(self, rnd: _Round, t0: float) -> ClaimResult:
        states = self.store.states_of(rnd.id, self.me)
        if rnd.held is not None or "yielded" in states or not states:
            self.store.delete_claim(rnd.id, self.me, ("pending", "yielded"))
            # To every peer asked, not only those whose grant is in: a grant still on its
            # way would otherwise stick there, and the coupon stay refused at every till.
            for peer in rnd.targets:
                self.send(peer, "release", {"re": rnd.id})
            yielded = rnd.held is None
            self.claims["yielded" if yielded else "held"] += 1
            holder = rnd.held or rnd.yielded or ("?", rnd.keys[0])
            return self._result(ClaimOutcome.HELD, rnd.id, t0, holder, len(rnd.targets), rnd)
        self.store.set_state(rnd.id, self.me, "won", only="pending")
        self._settling[rnd.id] = rnd.keys
        outcome = ClaimOutcome.GRANTED if rnd.up or rnd.answered else ClaimOutcome.NO_PEERS
        self.claims["granted" if outcome is ClaimOutcome.GRANTED else "no_peers"] += 1
        return self._result(outcome, rnd.id, t0, None, len(rnd.targets), rnd)

    def _result(
        self,
        outcome: ClaimOutcome,
        cid: bytes,
        t0: float,
        held: tuple[str, ClaimKey] | None,
        asked: int,
        rnd: _Round | None = None,
    ) -> ClaimResult:
        elapsed = time.monotonic() - t0
        if asked:
            self.latency.observe(elapsed)
        answered = rnd.answered if rnd else set()
        return ClaimResult(
            outcome,
            claim_id=cid,
            holder=held[0] if held else None,
            key=held[1] if held else None,
            asked=asked,
            answered=len(answered),
            unreachable=tuple(sorted(rnd.targets - answered)) if rnd else (),
            elapsed_s=elapsed,
        )

    def settle(self, result: ClaimResult, accepted: bool, seq: int | None) -> None:
        cid = result.claim_id
        if not cid or self._stopped.is_set():
            return
        try:
            with self._cond:
                keys = self._settling.pop(cid, ())
                if not keys:
                    return
                if not accepted:
                    self.store.delete_claim(cid, self.me, ("won",))
                    self._broadcast("release", {"re": cid})
                    return
                self.store.set_state(cid, self.me, "held", only="won")
                now = self.now_ms()
                pseq = self.store.append("used", keys, seq, now)
                recs = [PeerRecord(now, "won", self.me, k, cid.hex(), pseq) for k in keys]
                self.store.mirror(recs)
                wkeys = [wire.key_to_wire(k) for k in keys]
                self._broadcast("used", {"pseq": pseq, "keys": wkeys, "seq": seq})
        except Exception:
            log.exception("peers: settle failed")

    def release(self, keys: Sequence[ClaimKey]) -> None:
        """A use stopped counting (a release, a void, a refund): the peers forget it."""
        if not keys or self._stopped.is_set():
            return
        try:
            with self._cond:
                # The counter slots the same claim took go with the serial (a void gives
                # the customer's use and the budget's back too).
                keys = self.store.with_claim_mates(keys, self.me, ("held", "won"))
                if not self.store.delete_keys(keys, self.me, ("held", "won")):
                    return
                pseq = self.store.append("unused", keys, None, self.now_ms())
                wkeys = [wire.key_to_wire(k) for k in keys]
                self._broadcast("unused", {"pseq": pseq, "keys": wkeys, "seq": None})
        except Exception:
            log.exception("peers: release failed")

    # receiving -----------------------------------------------------------------------
    def _rx_loop(self) -> None:
        assert self.sock is not None
        while not self._stopped.is_set():
            try:
                data, addr = self.sock.recvfrom(self.cfg.max_datagram + 1)
            except TimeoutError:
                continue
            except OSError:
                if self._stopped.is_set():
                    return
                continue
            try:
                self.receive(data, str(addr[0]))
            except wire.WireError as exc:
                self._drop(exc.why, str(addr[0]), str(exc))
            except Exception:
                log.exception("peers: a datagram from %s broke its handler", addr[0])

    def _drop(self, why: str, source: str, detail: str) -> None:
        with self._cond:
            self.dropped[why] = self.dropped.get(why, 0) + 1
        log.debug("peers: dropped (%s) from %s: %s", why, source, detail)

    def receive(self, data: bytes, source: str) -> None:
        """The checks, in order; each failure raises WireError(why) and counts it."""
        now = time.monotonic()
        if len(data) > self.cfg.max_datagram:
            raise wire.WireError("oversized", f"{len(data)} bytes")
        if not self._ip_buckets.take(source, now):
            raise wire.WireError("rate_limited", "source address over its rate")
        signed = wire.parse(data)
        members = self.members()
        candidates = self._by_kid.get(signed.kid, [])
        if not candidates:
            raise wire.WireError("unknown", f"kid {signed.kid.hex()} is no till of ours")
        sender = next((t for t in candidates if cose.verify_sign1(signed, members[t][0])), None)
        if sender is None:
            self.flag("peer_forged", candidates[0], {"from": source})
            raise wire.WireError("forged", "bad signature")
        if members[sender][1]:
            self.flag("peer_revoked", sender, {"from": source})
            raise wire.WireError("revoked", f"{sender} is revoked")
        msg = wire.read_body(signed)
        if msg.sender != sender or msg.store != self.cfg.store or msg.to not in ("*", self.me):
            self.flag("peer_forged", sender, {"from": source, "claimed": msg.sender})
            raise wire.WireError("forged", "sender, store or recipient do not match")
        if abs(msg.at_ms - self.now_ms()) > self.cfg.replay_window_s * 1000:
            raise wire.WireError("stale", f"at {msg.at_ms} is outside the replay window")
        with self._cond:
            fresh = self._seen.add(sender, msg.nonce, now)
        if not fresh:
            self.flag("peer_replayed", sender, {"from": source, "t": msg.t})
            raise wire.WireError("replayed", "nonce seen before")
        if not self._peer_buckets.take(sender, now):
            self.flag("peer_flood", sender, {"from": source})
            raise wire.WireError("rate_limited", f"{sender} over its rate")
        with self._cond:
            self._seen_at[sender] = now
            for cid in self._owed.pop(sender, ()):
                self.send(sender, "release", {"re": cid})
            self._last_exchange[sender] = self.now_ms()
            responder.HANDLERS[msg.t](self, msg)
            self._cond.notify_all()

    def flag(self, kind: str, sender: str, detail: dict[str, object]) -> None:
        if not self._flag_throttle.allow(kind, sender, time.monotonic()):
            return
        detail = {"peer": sender, **detail}
        with self._cond:
            self.flags.append((kind, detail))
            del self.flags[:-100]
        if kind == "peer_conflict":
            self.conflicts += 1
        if self.submit is not None:
            try:
                self.submit(lambda e: e.flag_peer(kind, detail))
            except Exception as exc:
                log.warning("peers: cannot flag %s: %s", kind, exc)

    # the tick: hellos, liveness, the journal mirror ----------------------------------
    def _tick_loop(self) -> None:
        while not self._stopped.wait(0.25):
            try:
                self.tick()
            except Exception:
                log.exception("peers: tick failed")

    def tick(self) -> None:
        now = time.monotonic()
        if now >= self._hello_due:
            self._hello_due = now + self.cfg.hello_interval_s
            with self._cond:
                up = [t for t in self._targets() if self._is_up(t, now)]
                fields = {"pseq": self.store.head(), "up": up}
                self._broadcast("hello", fields)
                self._seen.purge(now)
        self._flush_mirror()

    def _flush_mirror(self) -> None:
        """Peer records go to the journal at least once (duplicates are harmless)."""
        if self.submit is None or self.engine is None or not hasattr(self.engine, "record_peer"):
            return
        with self._cond:
            batch = self.store.unmirrored()
        if not batch:
            return
        recs = [r for _, r in batch]
        try:
            self.submit(lambda e: e.record_peer(recs)).result(10)
        except Exception as exc:
            log.warning("peers: journaling %d peer records failed: %s", len(recs), exc)
            return
        with self._cond:
            self.store.mirrored(batch[-1][0])

    # what the kiosk reads ------------------------------------------------------------
    def held_keys(self) -> list[str]:
        with self._cond:
            return self.store.held_set(self.me)

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._cond:
            members = self.members()
            held = self.store.held_set(self.me)
            peers = [
                {
                    "terminal": t,
                    "address": _addr(self.book[t]) if t in self.book else None,
                    "up": self._is_up(t, now),
                    "revoked": members[t][1],
                    "last_exchange": self._last_exchange.get(t),
                    "rtt_ms": round(self._rtt[t], 3) if t in self._rtt else None,
                }
                for t in sorted(members)
                if t != self.me
            ]
            return {
                "enabled": True,
                "terminal": self.me,
                "listen": _addr(self.address) if self.sock else None,
                "bound_ms": self.cfg.bound_ms,
                "peers": peers,
                "claims": dict(self.claims),
                "conflicts": self.conflicts,
                "dropped": dict(self.dropped),
                "latency": self.latency.to_json(),
                "held": len(held),
                "digest": digest(held),
            }

    @classmethod
    def create(cls, section: Any, data: Path, submit: Submit, engine: Any) -> PeerService | None:
        """The daemon's service from its [peers] section, started; None (with the reason
        logged) without a device key."""
        from sync.device import DeviceKeyError, read_device_key

        try:
            key = read_device_key(data)
        except DeviceKeyError as exc:
            log.warning("peers: off, no device key: %s", exc)
            return None
        if not getattr(getattr(engine, "ledger", None), "tills", None):
            # Membership is read again at each ledger version: the peers start answering
            # once a ledger that lists this store's tills arrives.
            log.warning("peers: no tills in the ledger yet; deciding alone until there are")
        settings = PeerSettings(
            terminal=engine.terminal,
            store=engine.store,
            listen=wire.parse_address(section.listen),
            addresses=wire.parse_book(section.addresses),
            bound_ms=int(section.claim_bound_ms),
            hello_interval_s=float(section.hello_interval_s),
            down_after_s=float(section.down_after_s),
            replay_window_s=float(section.replay_window_s),
            rate_per_s=float(section.rate_per_s),
            max_datagram=int(section.max_datagram),
            discovery=bool(section.discovery),
        )
        service = cls(settings, key, data / "peers.db", engine=engine, submit=submit)
        service.start()
        return service


def _till(value: Any, revoked: bool) -> tuple[bytes, bool]:
    """A ledger till (TillKey, or a {"key", "revoked"} map) or a bare public key."""
    if isinstance(value, bytes):
        return value, revoked
    if isinstance(value, Mapping):
        return bytes(value.get("key", b"")), revoked or bool(value.get("revoked"))
    pub = getattr(value, "public_key", b"")
    return bytes(pub), revoked or bool(getattr(value, "revoked", False))


def _addr(a: tuple[str, int]) -> str:
    return f"{a[0]}:{a[1]}"
