"""Peer datagrams: a COSE_Sign1 signed with the device key over canonical CBOR, at most
`max_datagram` bytes, read with a strict schema (docs/store-peers.md)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2

from coupons import cose
from coupons.claims import ClaimKey

VERSION = 1
MAX_DATAGRAM = 1200  # under the IPv6 minimum MTU (1280) less headers: never fragmented
MAX_KEYS = 8
NONCE_LEN = 16
ID_LEN = 8
TERMINAL_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
KINDS = ("serial", "customer", "budget")
TYPES = ("claim", "grant", "held", "release", "used", "unused", "hello", "sync", "events")
EVENT_TYPES = ("used", "unused")


class WireError(ValueError):
    """A datagram dropped; `why` is the counter it goes to."""

    def __init__(self, why: str, message: str) -> None:
        super().__init__(message)
        self.why = why


@dataclass(frozen=True)
class Message:
    t: str
    sender: str
    to: str
    store: str
    at_ms: int
    nonce: bytes
    body: Mapping[str, Any]


def key_to_wire(key: ClaimKey) -> list[object]:
    return [key.kind, key.campaign, key.subject, key.slot, key.limit]


def key_from_wire(obj: object) -> ClaimKey:
    if not (isinstance(obj, list) and len(obj) == 5):
        raise WireError("garbage", "a key is an array of five")
    kind, campaign, subject, slot, limit = obj
    if kind not in KINDS or not isinstance(campaign, str) or not isinstance(subject, str):
        raise WireError("garbage", "bad key kind, campaign or subject")
    if len(campaign) > 128 or len(subject) > 256:
        raise WireError("garbage", "key fields too long")
    if not (_is_int(slot) and _is_int(limit) and 1 <= slot <= limit):
        raise WireError("garbage", "bad key slot or limit")
    return ClaimKey(kind, campaign, subject, slot, limit)


def keys_from_wire(obj: object) -> tuple[ClaimKey, ...]:
    if not (isinstance(obj, list) and 1 <= len(obj) <= MAX_KEYS):
        raise WireError("garbage", f"keys must be 1 to {MAX_KEYS}")
    return tuple(key_from_wire(k) for k in obj)


def new_nonce() -> bytes:
    return os.urandom(NONCE_LEN)


def new_claim_id() -> bytes:
    return os.urandom(ID_LEN)


def encode(
    key: cose.SigningKey,
    t: str,
    sender: str,
    to: str,
    store: str,
    at_ms: int,
    fields: Mapping[str, object],
    max_size: int = MAX_DATAGRAM,
) -> bytes:
    """One signed datagram; raises WireError("oversized") rather than send what a peer drops."""
    doc = {"v": VERSION, "t": t, "from": sender, "to": to, "store": store, "at": at_ms}
    doc["n"] = new_nonce()
    doc.update(fields)
    data = key.sign1(cbor2.dumps(doc, canonical=True))
    if len(data) > max_size:
        raise WireError("oversized", f"{t} message of {len(data)} bytes")
    return data


def parse(data: bytes) -> cose.Sign1:
    try:
        return cose.parse_sign1(data)
    except cose.CoseError as exc:
        raise WireError("garbage", str(exc)) from None


def read_body(msg: cose.Sign1) -> Message:
    """The signed payload, after the signature was checked: strict CBOR and schema."""
    try:
        doc = cose.loads_strict(msg.payload, "peer message")
    except cose.CoseError as exc:
        raise WireError("garbage", str(exc)) from None
    if not isinstance(doc, dict) or doc.get("v") != VERSION or doc.get("t") not in TYPES:
        raise WireError("garbage", "not a version-1 peer message")
    sender, to, store, at, nonce = (doc.get(k) for k in ("from", "to", "store", "at", "n"))
    if not (isinstance(sender, str) and TERMINAL_RE.fullmatch(sender)):
        raise WireError("garbage", "bad sender")
    if not (isinstance(to, str) and (to == "*" or TERMINAL_RE.fullmatch(to))):
        raise WireError("garbage", "bad recipient")
    if not (isinstance(store, str) and _is_int(at) and isinstance(nonce, bytes)):
        raise WireError("garbage", "bad store, time or nonce")
    if len(nonce) != NONCE_LEN:
        raise WireError("garbage", "bad nonce")
    t = str(doc["t"])
    _CHECKS[t](doc)
    return Message(t, sender, to, store, at if isinstance(at, int) else 0, nonce, doc)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _need_id(doc: Mapping[str, Any], name: str) -> None:
    v = doc.get(name)
    if not (isinstance(v, bytes) and len(v) == ID_LEN):
        raise WireError("garbage", f"bad {name}")


def _need_count(doc: Mapping[str, Any], name: str, low: int = 0) -> None:
    v = doc.get(name)
    if not (isinstance(v, int) and not isinstance(v, bool) and low <= v < 2**62):
        raise WireError("garbage", f"bad {name}")


def _check_claim(doc: Mapping[str, Any]) -> None:
    _need_id(doc, "id")
    prio = doc.get("prio")
    if not (isinstance(prio, list) and len(prio) == 2 and _is_int(prio[0])):
        raise WireError("garbage", "bad prio")
    if not (isinstance(prio[1], str) and prio[1] == doc.get("from")):
        raise WireError("garbage", "prio names another terminal")
    keys_from_wire(doc.get("keys"))


def _check_held(doc: Mapping[str, Any]) -> None:
    _need_id(doc, "re")
    holder = doc.get("holder")
    if not (isinstance(holder, str) and TERMINAL_RE.fullmatch(holder)):
        raise WireError("garbage", "bad holder")
    key_from_wire(doc.get("key"))


def _check_re(doc: Mapping[str, Any]) -> None:
    _need_id(doc, "re")


def _check_event(doc: Mapping[str, Any]) -> None:
    _need_count(doc, "pseq", 1)
    keys_from_wire(doc.get("keys"))
    seq = doc.get("seq")
    if seq is not None and not _is_int(seq):
        raise WireError("garbage", "bad seq")


def _check_hello(doc: Mapping[str, Any]) -> None:
    _need_count(doc, "pseq")
    up = doc.get("up")
    if not (isinstance(up, list) and len(up) <= 64 and all(isinstance(u, str) for u in up)):
        raise WireError("garbage", "bad up list")


def _check_sync(doc: Mapping[str, Any]) -> None:
    _need_count(doc, "since")


def _check_events(doc: Mapping[str, Any]) -> None:
    events = doc.get("ev")
    if not (isinstance(events, list) and len(events) <= 64):
        raise WireError("garbage", "bad events")
    for ev in events:
        event_from_wire(ev)


def event_from_wire(ev: object) -> tuple[int, str, tuple[ClaimKey, ...], int | None, int]:
    """[pseq, type, keys, seq, at_ms] of the sender's own outbox."""
    if not (isinstance(ev, list) and len(ev) == 5):
        raise WireError("garbage", "an event is an array of five")
    pseq, t, keys, seq, at = ev
    if not (_is_int(pseq) and pseq >= 1 and t in EVENT_TYPES and _is_int(at)):
        raise WireError("garbage", "bad event")
    if seq is not None and not _is_int(seq):
        raise WireError("garbage", "bad event seq")
    return int(pseq), str(t), keys_from_wire(keys), seq, int(at)


def event_to_wire(
    pseq: int, t: str, keys: Sequence[ClaimKey], seq: int | None, at: int
) -> list[object]:
    return [pseq, t, [key_to_wire(k) for k in keys], seq, at]


_CHECKS = {
    "claim": _check_claim,
    "grant": _check_re,
    "held": _check_held,
    "release": _check_re,
    "used": _check_event,
    "unused": _check_event,
    "hello": _check_hello,
    "sync": _check_sync,
    "events": _check_events,
}


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ValueError(f"{text!r} is not host:port")
    return host.strip("[]"), int(port)


def parse_book(entries: Sequence[str]) -> dict[str, tuple[str, int]]:
    """["S1-002@192.168.1.12:7311", ...] -> {terminal: (host, port)}."""
    book = {}
    for entry in entries:
        terminal, sep, addr = entry.partition("@")
        if not sep or not TERMINAL_RE.fullmatch(terminal):
            raise ValueError(f"{entry!r} is not terminal@host:port")
        book[terminal] = parse_address(addr)
    return book
