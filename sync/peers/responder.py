"""The answering side of the peer protocol: what a till does with each message type, under
the service's lock (docs/store-peers.md, "Responder")."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from coupons.claims import ClaimKey, PeerRecord
from sync.peers import wire

if TYPE_CHECKING:
    from sync.peers.service import PeerService

log = logging.getLogger(__name__)
EVENTS_PER_BATCH = 16


# Claims one peer may have in flight here (granted, neither used nor released) within the
# replay window. A till rings up one sale at a time and settles each claim in milliseconds;
# a flood is over this whatever pace this till's disk takes the claims in (each grant is
# fsynced, so a slow disk paces a flood under the per-peer rate).
MAX_GRANTS_IN_FLIGHT = 32


def on_claim(svc: PeerService, msg: wire.Message) -> None:
    cid, keys = bytes(msg.body["id"]), wire.keys_from_wire(msg.body["keys"])
    prio = (int(msg.body["prio"][0]), msg.sender)
    since = svc.now_ms() - int(svc.cfg.replay_window_s * 1000)
    if svc.store.grants_in_flight(msg.sender, since) >= MAX_GRANTS_IN_FLIGHT:
        svc.dropped["rate_limited"] += 1
        svc.flag("peer_flood", msg.sender, {"in_flight": MAX_GRANTS_IN_FLIGHT})
        return
    for k in keys:
        for row in svc.store.rows(k):
            mine = row.holder == svc.me
            if (
                (mine and row.state in ("won", "held"))
                or (mine and row.state == "pending" and (row.prio_ms, svc.me) < prio)
                or (not mine and row.holder != msg.sender and row.state in ("used", "granted"))
                # A counter slot the claimant itself used: after a restart it no longer
                # knows its own slots (only serials are seeded from its journal), and
                # granting it again would count one use twice. Held by itself, it walks on.
                or (row.holder == msg.sender and row.state == "used" and k.kind != "serial")
            ):
                svc.send(msg.sender, "held", _held(cid, row.holder, k))
                return
    for k in keys:  # no key is ours or another's: earlier claims of ours give way
        for row in svc.store.rows(k):
            if row.holder == svc.me and row.state == "pending":
                svc.store.set_state(row.claim_id, svc.me, "yielded", only="pending")
                rnd = svc.rounds.get(row.claim_id)
                if rnd is not None:
                    rnd.yielded = (msg.sender, k)
    now = svc.now_ms()
    # Durable before it is said: a grant survives a crash of this till (the SIGKILL test).
    svc.store.put(keys, msg.sender, "granted", cid, prio[0], now, durable=True)
    svc.send(msg.sender, "grant", {"re": cid})
    svc.store.mirror(PeerRecord(now, "granted", msg.sender, k, cid.hex()) for k in keys)


def on_grant(svc: PeerService, msg: wire.Message) -> None:
    cid = bytes(msg.body["re"])
    rnd = svc.rounds.get(cid)
    if rnd is not None and msg.sender in rnd.targets:
        rnd.answered.add(msg.sender)
        rnd.granted.add(msg.sender)
    elif rnd is None and not svc.store.states_of(cid, svc.me) & {"won", "held"}:
        # A grant for a claim we gave up (refused, or a resend that crossed our release):
        # give it back, or that peer would hold the coupon for us forever.
        svc.send(msg.sender, "release", {"re": cid})


def on_held(svc: PeerService, msg: wire.Message) -> None:
    cid = bytes(msg.body["re"])
    holder, key = str(msg.body["holder"]), wire.key_from_wire(msg.body["key"])
    rnd = svc.rounds.get(cid)
    if rnd is not None:
        rnd.answered.add(msg.sender)
        rnd.held = rnd.held or (holder, key)
        return
    if svc.store.states_of(cid, svc.me) & {"won", "held"}:
        # Too late: we accepted already (the peer was beyond the bound).
        now = svc.now_ms()
        svc.store.mirror([PeerRecord(now, "late_held", holder, key, cid.hex())])
        svc.flag("peer_conflict", msg.sender, {"holder": holder, "key": show(key)})


def on_release(svc: PeerService, msg: wire.Message) -> None:
    svc.store.delete_claim(bytes(msg.body["re"]), msg.sender, ("granted",))


def on_used(svc: PeerService, msg: wire.Message) -> None:
    b = msg.body
    keys = wire.keys_from_wire(b["keys"])
    _event(svc, msg.sender, int(b["pseq"]), msg.t, keys, b.get("seq"), msg.at_ms)


def _event(
    svc: PeerService, peer: str, pseq: int, t: str, keys: Sequence[ClaimKey], seq: object, at: int
) -> bool:
    """Apply one event of a peer's outbox in order; False at a gap (a sync follows)."""
    last = svc.store.last_pseq(peer)
    if pseq <= last:
        return True  # a duplicate: already applied
    if pseq > last + 1:
        svc.dropped["out_of_order"] += 1
        svc.send(peer, "sync", {"since": last})
        return False
    if t == "used":
        clash = [k for k in keys for r in svc.store.rows(k) if r.holder == svc.me]
        svc.store.put(keys, peer, "used", b"", at, at)
        what = "peer_used"
        if clash:  # both of us used it: the partition case; the central reconciles
            svc.flag("peer_conflict", peer, {"key": show(clash[0]), "pseq": pseq})
    else:
        svc.store.delete_keys(keys, peer, ("used", "granted"))
        what = "peer_released"
    now = svc.now_ms()
    svc.store.mirror(PeerRecord(now, what, peer, k, "", pseq) for k in keys)
    svc.store.set_last_pseq(peer, pseq)
    return True


def on_hello(svc: PeerService, msg: wire.Message) -> None:
    head, last = int(msg.body["pseq"]), svc.store.last_pseq(msg.sender)
    if head < last:  # the peer lost its peers.db: follow its new numbering
        log.warning("peers: %s restarted its outbox at %d (we had %d)", msg.sender, head, last)
        svc.store.set_last_pseq(msg.sender, head)
    elif head > last:
        svc.send(msg.sender, "sync", {"since": last})


def on_sync(svc: PeerService, msg: wire.Message) -> None:
    events = svc.store.events(int(msg.body["since"]), EVENTS_PER_BATCH)
    while events:
        if _send_events(svc, msg.sender, events):
            return
        events = events[: len(events) // 2]  # too big for one datagram: fewer


def _send_events(svc: PeerService, peer: str, events: list[list[object]]) -> bool:
    addr = svc.book.get(peer)
    if addr is None or svc.sock is None:
        return True
    try:
        data = wire.encode(
            svc.key, "events", svc.me, peer, svc.cfg.store, svc.now_ms(),
            {"ev": events}, svc.cfg.max_datagram,
        )  # fmt: skip
    except wire.WireError:
        return len(events) <= 1  # one event that does not fit: skip rather than loop
    try:
        svc.sock.sendto(data, addr)
    except OSError:
        pass
    return True


def on_events(svc: PeerService, msg: wire.Message) -> None:
    for ev in msg.body["ev"]:
        pseq, t, keys, seq, at = wire.event_from_wire(ev)
        if not _event(svc, msg.sender, pseq, t, keys, seq, at):
            return
    if msg.body["ev"]:  # maybe more: ask from where we are now
        svc.send(msg.sender, "sync", {"since": svc.store.last_pseq(msg.sender)})


HANDLERS: dict[str, Callable[[PeerService, wire.Message], None]] = {
    "claim": on_claim,
    "grant": on_grant,
    "held": on_held,
    "release": on_release,
    "used": on_used,
    "unused": on_used,
    "hello": on_hello,
    "sync": on_sync,
    "events": on_events,
}


def _held(cid: bytes, holder: str, key: ClaimKey) -> dict[str, object]:
    return {"re": cid, "holder": holder, "key": wire.key_to_wire(key)}


def show(key: ClaimKey) -> str:
    return f"{key.kind}:{key.campaign}:{key.subject}#{key.slot}"
