"""The terminal <-> central wire contract, shared by the reference central and the sync
client (and documented in docs/sync-protocol.md for retailers' own backends).

Transport: HTTPS (HTTP on loopback for tests), JSON bodies except the ledger (CBOR).
Every terminal request is signed with the terminal's Ed25519 device key:

    X-Terminal:        terminal id (from enrollment)
    X-Timestamp:       Unix seconds when signed
    X-Content-SHA256:  hex SHA-256 of the request body (of b"" for GET)
    X-Signature:       hex Ed25519 signature over signing_string(...)

The central refuses a request whose timestamp is outside REPLAY_WINDOW_S of its clock,
whose signature does not verify with the enrolled key, or whose terminal is unknown or
revoked (401/403 with a problem+json body). Every response carries X-Server-Time (Unix
seconds, float) so the terminal can measure its clock offset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias, TypedDict

from coupons import cose
from coupons.journal.export import ExportRow

VERSION = "v1"
PREFIX = f"/{VERSION}"
ENROLL = f"{PREFIX}/enroll"  # POST {"code", "device_key" (hex)} -> EnrollReply
LEDGER = f"{PREFIX}/ledger"  # GET ?since=N -> ledger file (CBOR): deltas after N or a snapshot
JOURNAL = f"{PREFIX}/journal"  # POST {"entries": [...]} -> JournalReply
FLAGS = f"{PREFIX}/flags"  # GET ?since=<update id> -> central decisions on fraud flags
CHECK = f"{PREFIX}/check"  # POST {"code", "basket"} -> a decision, records nothing (online)
TRUST_ANCHOR = f"{PREFIX}/trust-anchor"  # GET, unsigned -> the root public key, for pinning
ADMIN_PREFIX = "/admin/v1"  # admin endpoints: bearer token, never a device key

LEDGER_MEDIA_TYPE = "application/vnd.edge-redeem.ledger+cbor"
HEADER_TERMINAL = "X-Terminal"
HEADER_TIMESTAMP = "X-Timestamp"
HEADER_DIGEST = "X-Content-SHA256"
HEADER_SIGNATURE = "X-Signature"
HEADER_SERVER_TIME = "X-Server-Time"
REPLAY_WINDOW_S = 300
MAX_BATCH = 5000  # journal entries per POST
SNAPSHOT_AFTER = 50  # a terminal this many versions behind gets a snapshot, not deltas


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def signing_string(
    method: str,
    path_qs: str,
    timestamp: str,
    terminal: str,
    digest: str,
) -> bytes:
    """What the device key signs: method, path with query, time, terminal, body digest."""
    return "\n".join(
        ["EDGE-REDEEM-V1", method.upper(), path_qs, timestamp, terminal, digest]
    ).encode()


def sign_headers(
    key: cose.SigningKey, terminal: str, method: str, path_qs: str, body: bytes, now: float
) -> dict[str, str]:
    ts = str(int(now))
    digest = body_digest(body)
    sig = key.sign(signing_string(method, path_qs, ts, terminal, digest))
    return {
        HEADER_TERMINAL: terminal,
        HEADER_TIMESTAMP: ts,
        HEADER_DIGEST: digest,
        HEADER_SIGNATURE: sig.hex(),
    }


class AuthError(Exception):
    """A request that must be refused; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class SignedRequest:
    terminal: str
    timestamp: int


def check_signature(
    headers: Mapping[str, str],
    method: str,
    path_qs: str,
    body: bytes,
    public_key: bytes | None,
    now: float,
) -> SignedRequest:
    """Verify a terminal request; `public_key` is None when the terminal is unknown."""
    terminal = headers.get(HEADER_TERMINAL, "")
    ts = headers.get(HEADER_TIMESTAMP, "")
    digest = headers.get(HEADER_DIGEST, "")
    sig = headers.get(HEADER_SIGNATURE, "")
    if not (terminal and ts and digest and sig):
        raise AuthError(401, "request is not signed")
    if public_key is None:
        raise AuthError(401, f"unknown terminal {terminal}")
    try:
        when = int(ts)
        signature = bytes.fromhex(sig)
    except ValueError:
        raise AuthError(401, "malformed signature headers") from None
    if abs(now - when) > REPLAY_WINDOW_S:
        raise AuthError(401, f"timestamp {when} outside the {REPLAY_WINDOW_S} s window")
    if body_digest(body) != digest:
        raise AuthError(401, "body digest does not match")
    if not cose.verify(
        public_key, signing_string(method, path_qs, ts, terminal, digest), signature
    ):
        raise AuthError(401, "signature does not verify")
    return SignedRequest(terminal, when)


# One journal entry on the wire is exactly what `redeem journal export` writes, and the
# central checks it field by field (coupons.journal.EXPORT_FIELDS, in that order).
EntryDoc: TypeAlias = ExportRow


class JournalReplyDoc(TypedDict):
    """The central's answer to a journal upload (described below)."""

    acked_seq: int
    accepted: int
    gaps: list[list[int]]
    problem: str | None
    usage: dict[str, list[int]]


# Journal upload (POST /v1/journal), JSON:
#   request  {"entries": [<journal export row>...]}  rows in seq order, as `redeem journal
#            export` writes them (coupons.journal.EXPORT_FIELDS), starting anywhere at or
#            below the central's high-water mark + 1
#   reply    {"acked_seq": N,        everything up to N is stored (the terminal may prune)
#             "accepted": K,         new entries stored by this request
#             "gaps": [[a, b], ...], seq ranges the central is missing: resend from a
#             "problem": str | null} why entries were refused (broken chain, altered entry)
# Sending a batch twice changes nothing; entries at or below acked_seq are compared with
# what is stored, and a differing one is refused and raises a fraud flag.
# The reply also carries "usage": {campaign: [count, minor]}: this terminal's uses that the
# central counted. The ledger's `usage` map is the total over all terminals, these included.
#
# Ledger pull (GET /v1/ledger?since=N), signed; answers:
#   200  a ledger file (LEDGER_MEDIA_TYPE): the deltas after N, or a snapshot when N is 0 or
#        more than SNAPSHOT_AFTER versions behind. X-Ledger-Kind: delta | snapshot,
#        X-Ledger-Version: the latest version (where the file brings the terminal).
#   204  N is the latest version (ETag as below, no body)
#   304  If-None-Match names the latest version ("<version>-<chain>" prefix of an ETag)
#   206  Range: a single bytes= range of the representation the ETag names (gzip when
#        Accept-Encoding allows it, so ranges count compressed bytes); If-Range with the
#        ETag resumes, a stale If-Range gets the whole new body (200)
#   416  the range starts past the end;  409  N is newer than anything published
# ETag: "<version>-<first 32 hex digits of the chain hash>-<s | d<N>>[-gz]". A version's
# bytes never change (its snapshot is signed once), on any instance.
#
# Flag decisions (GET /v1/flags?since=<decision id>), signed: decisions on the flags of the
# terminal's store, oldest first:
#   {"decisions": [{"id", "flag", "kind", "terminal", "seq", "serial", "status", "note",
#                   "at"}, ...],
#    "next": <id to send as since next time>}
#
# Errors are problem+json (RFC 9457) with a "code" member: 400 malformed-json/bad-request,
# 401 unauthorized, 403 forbidden (revoked) or enroll-code, 409 ledger-ahead, 413 too-large
# or batch-too-large, 422 invalid-batch.
