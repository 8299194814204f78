"""Journal upload at the central (POST /v1/journal): a terminal's batch is checked (each
entry's hash, the prev_hash chain continuing from what is stored, resent entries unchanged),
stored exactly once, and reconciled across terminals (see reconcile.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import peewee as pw
import psycopg2

from coupons.journal import EXPORT_FIELDS, entry_hash
from sync import protocol
from sync.central import bulk, flags, metrics
from sync.central.models import HEX_DIGITS, JournalRow, TerminalRow, TerminalUsage
from sync.central.reconcile import reconcile
from sync.central.store import Central
from sync.protocol import EntryDoc, JournalReplyDoc

log = logging.getLogger(__name__)

INT_LIMIT = 2**62
MAX_TEXT = 1024
MAX_DETAIL = 64 * 1024
RETRIES = 8
_INT, _BOOL, _STR = int, bool, str
# field: (type, may be null, longest text)
FIELDS: dict[str, tuple[type, bool, int]] = {
    "seq": (_INT, False, 0),
    "at_ms": (_INT, False, 0),
    "kind": (_STR, False, MAX_TEXT),
    "op_id": (_STR, True, MAX_TEXT),
    "checkout_id": (_STR, True, MAX_TEXT),
    "accepted": (_BOOL, False, 0),
    "reason": (_STR, False, MAX_TEXT),
    "campaign": (_STR, True, MAX_TEXT),
    "serial": (_STR, True, MAX_TEXT),
    "customer": (_STR, True, MAX_TEXT),
    "discount_minor": (_INT, False, 0),
    "currency": (_STR, True, MAX_TEXT),
    "cashier": (_STR, True, MAX_TEXT),
    "source": (_STR, True, MAX_TEXT),
    "detail": (_STR, False, MAX_DETAIL),
    "prev_hash": (_STR, False, 64),
    "hash": (_STR, False, 64),
}
IMPLAUSIBLE_CODE = "implausible-entry"
EVIDENCE_CHARS = 4096


class BatchInvalid(ValueError):
    """The request body is not a journal batch: status 400, 413 or 422 with a problem code."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def _check_entry(doc: object, i: int) -> EntryDoc:
    if not isinstance(doc, dict):
        raise BatchInvalid(422, "invalid-batch", f"entries[{i}] is not an object")
    out: dict[str, object] = {}
    for name in EXPORT_FIELDS:
        kind, nullable, longest = FIELDS[name]
        if name not in doc:
            raise BatchInvalid(422, "invalid-batch", f"entries[{i}] has no '{name}'")
        value = doc[name]
        if value is None and nullable:
            out[name] = None
            continue
        if kind is int and type(value) is float:
            # NaN, Infinity or a fraction where money or a count belongs: no till writes
            # that, so the signed batch is evidence (the app flags it), never stored.
            raise BatchInvalid(
                422,
                IMPLAUSIBLE_CODE,
                f"entries[{i}].{name} is {value!r}, not a whole number (amounts are integer "
                "minor units)",
            )
        if type(value) is not kind:  # bool is not an int here, nor an int a bool
            raise BatchInvalid(422, "invalid-batch", f"entries[{i}].{name} has the wrong type")
        if isinstance(value, int) and not -INT_LIMIT <= value <= INT_LIMIT:
            raise BatchInvalid(422, "invalid-batch", f"entries[{i}].{name} is out of range")
        if isinstance(value, str):
            if len(value) > longest or "\x00" in value:
                raise BatchInvalid(422, "invalid-batch", f"entries[{i}].{name} is too long")
            try:
                value.encode()
            except UnicodeEncodeError:
                raise BatchInvalid(
                    422, "invalid-batch", f"entries[{i}].{name} is not valid Unicode"
                ) from None
        out[name] = value
    # Every field is there with the type FIELDS gives it: the shape EntryDoc names.
    entry = cast(EntryDoc, out)
    for text, name in ((entry["prev_hash"], "prev_hash"), (entry["hash"], "hash")):
        if len(text) != 64 or not HEX_DIGITS.issuperset(text):
            raise BatchInvalid(422, "invalid-batch", f"entries[{i}].{name} is not 64 hex digits")
    if entry["seq"] < 1:
        raise BatchInvalid(422, "invalid-batch", f"entries[{i}].seq must be at least 1")
    return entry


def parse_batch(body: bytes) -> list[EntryDoc]:
    """The entries of a POST /v1/journal body, checked for shape (not yet for their hashes)."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise BatchInvalid(400, "malformed-json", "the body is not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise BatchInvalid(422, "invalid-batch", 'the body must be {"entries": [...]}')
    raw = doc["entries"]
    if len(raw) > protocol.MAX_BATCH:
        raise BatchInvalid(
            413, "batch-too-large", f"at most {protocol.MAX_BATCH} entries per request"
        )
    entries = [_check_entry(e, i) for i, e in enumerate(raw)]
    for a, b in zip(entries, entries[1:], strict=False):
        if b["seq"] <= a["seq"]:
            raise BatchInvalid(422, "invalid-batch", "entries must be in ascending seq order")
    return entries


@dataclass
class Reply:
    acked_seq: int
    accepted: int = 0
    gaps: list[list[int]] = field(default_factory=list)
    problem: str | None = None
    usage: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self) -> JournalReplyDoc:
        return {
            "acked_seq": self.acked_seq,
            "accepted": self.accepted,
            "gaps": self.gaps,
            "problem": self.problem,
            "usage": self.usage,
        }


def flag_refused_batch(central: Central, terminal: str, body: bytes, exc: BatchInvalid) -> None:
    """A signed batch refused for an impossible number: flag it against the terminal, with
    the start of the body as evidence (nothing of it is stored or counted)."""
    if exc.code != IMPLAUSIBLE_CODE:
        return
    digest = hashlib.sha256(body).hexdigest()
    term = TerminalRow.get_or_none(TerminalRow.id == terminal)
    flags.raise_flag(
        central,
        f"{flags.IMPLAUSIBLE}:{terminal}:batch:{digest}",
        flags.IMPLAUSIBLE,
        "central",
        store=term.store if term else None,
        terminal=terminal,
        detail={
            "detail": f"terminal {terminal} sent a journal batch the central cannot believe: "
            f"{exc.detail}; refused, nothing counted",
            "why": exc.detail,
            "terminal": terminal,
            "body_sha256": digest,
            "body": body[:EVIDENCE_CHARS].decode("utf-8", "replace"),
        },
    )
    log.warning("implausible batch from %s: %s", terminal, exc.detail)


def _retryable(exc: Exception) -> bool:
    """A PostgreSQL serialization failure or deadlock, or SQLite busy: run it again.
    peewee wraps psycopg2's errors by class name, and a deadlock's class
    (DeadlockDetected, under TransactionRollbackError) is not one it knows: it arrives
    unwrapped, its code on the exception itself."""
    orig = exc.args[0] if exc.args else None
    code = getattr(exc, "pgcode", None) or getattr(orig, "pgcode", None)
    if code in ("40001", "40P01"):
        return True
    return "database is locked" in str(exc)


def ingest(central: Central, terminal: str, entries: list[EntryDoc]) -> Reply:
    """Store and reconcile one batch in one transaction (the terminal's row locked, so two
    instances never interleave one terminal's batches). The publisher carries what changed
    to the tills at its next tick: a request never publishes."""
    for attempt in range(RETRIES):
        try:
            with central.writing():
                term = _lock_terminal(central, terminal)
                reply, changed = _ingest(central, term, entries)
            break
        except (pw.OperationalError, pw.IntegrityError, psycopg2.OperationalError) as exc:
            if attempt == RETRIES - 1 or not _retryable(exc):
                raise
            log.info("ingest for %s retried after %s", terminal, exc)
            time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
    metrics.count_ingest(reply.accepted, len(entries) - reply.accepted if reply.problem else 0)
    reply.usage = {
        u.campaign: [int(u.count), int(u.minor)]
        for u in TerminalUsage.select().where(TerminalUsage.terminal == terminal)
    }
    return reply


def _hash(entry: EntryDoc) -> str:
    return entry_hash(dict(entry))


def _values(entry: Mapping[str, object]) -> tuple[object, ...]:
    """The entry's fields in EXPORT_FIELDS order (the JournalRow columns after terminal)."""
    return tuple(entry[k] for k in EXPORT_FIELDS)


def _lock_terminal(central: Central, terminal: str) -> TerminalRow:
    query = TerminalRow.select().where(TerminalRow.id == terminal)
    if central.postgres:
        query = query.for_update()
    row: TerminalRow = query.get()
    return row


def _refuse(central: Central, term: TerminalRow, entry: EntryDoc, kind: str, problem: str) -> str:
    flags.raise_flag(
        central,
        f"{kind}:{term.id}:{entry['seq']}:{entry['hash']}:{entry['prev_hash']}",
        kind,
        "central",
        store=term.store,
        terminal=term.id,
        seq=entry["seq"],
        campaign=entry["campaign"],
        serial=entry["serial"],
        detail={"detail": problem, "hash": entry["hash"], "prev_hash": entry["prev_hash"]},
    )
    log.warning("journal of %s refused: %s", term.id, problem)
    return problem


def _ingest(central: Central, term: TerminalRow, entries: list[EntryDoc]) -> tuple[Reply, bool]:
    acked, head = int(term.acked_seq), str(term.head_hash)
    reply = Reply(acked)
    old = [e for e in entries if e["seq"] <= acked]
    if old:
        query: Any = (  # rows as (seq, hash) tuples
            JournalRow.select(JournalRow.seq, JournalRow.hash)
            .where(
                (JournalRow.terminal == term.id)
                & (JournalRow.seq >= old[0]["seq"])
                & (JournalRow.seq <= old[-1]["seq"])
            )
            .tuples()
        )
        stored: dict[int, str] = dict(query)
        for e in old:
            if _hash(e) != e["hash"] or stored.get(e["seq"]) != e["hash"]:
                reply.problem = _refuse(
                    central,
                    term,
                    e,
                    flags.JOURNAL_ALTERED,
                    f"entry {e['seq']} differs from the entry {e['seq']} already received",
                )
                return reply, False
    expect, taken = acked + 1, []
    for e in entries[len(old) :]:
        if e["seq"] != expect:
            reply.gaps.append([expect, e["seq"] - 1])
            break
        if _hash(e) != e["hash"]:
            reply.problem = _refuse(
                central,
                term,
                e,
                flags.JOURNAL_ALTERED,
                f"entry {e['seq']} was altered: its hash does not match its content",
            )
            break
        if e["prev_hash"] != head:
            reply.problem = _refuse(
                central,
                term,
                e,
                flags.JOURNAL_CHAIN,
                f"entry {e['seq']} does not follow entry {e['seq'] - 1} (broken hash chain)",
            )
            break
        taken.append(e)
        head = e["hash"]
        expect += 1
    if not taken:
        return reply, False
    bulk.insert(
        central.db,
        JournalRow,
        ("terminal", *EXPORT_FIELDS),
        [(term.id, *_values(e)) for e in taken],
    )
    changed = reconcile(central, term, taken)
    TerminalRow.update(acked_seq=expect - 1, head_hash=head, last_upload=int(central.now())).where(
        TerminalRow.id == term.id
    ).execute()
    reply.acked_seq = expect - 1
    reply.accepted = len(taken)
    return reply, changed
