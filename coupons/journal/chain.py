"""The hash chain: what an entry's hash covers, appending entries, and the stored head."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import peewee as pw

from coupons.journal.meta import CLOCK_RESET_SEQ, PRUNED_HASH, PRUNED_SEQ, get_meta
from coupons.journal.schema import Entry, database_proxy, db_errors, insert_sql

GENESIS_HASH = "0" * 64
HASHED_FIELDS = (
    "seq",
    "at_ms",
    "kind",
    "op_id",
    "checkout_id",
    "accepted",
    "reason",
    "campaign",
    "serial",
    "customer",
    "discount_minor",
    "currency",
    "cashier",
    "source",
    "detail",
    "prev_hash",
)

# The exact encoders json.dumps would build for these arguments, built once: the entry hash
# and the stored detail must stay byte-for-byte what they were (existing journals verify).
_canon_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_detail_json = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def entry_hash(fields: dict[str, Any]) -> str:
    canon = _canon_json([fields[k] for k in HASHED_FIELDS])
    return hashlib.sha256(canon.encode()).hexdigest()


_ENTRY_SQL = insert_sql(Entry, (*HASHED_FIELDS, "hash"))
_ENTRY_KEYS = frozenset(Entry._meta.fields)


@dataclass(frozen=True, slots=True, kw_only=True)
class NewEntry:
    """One journal entry as its writer states it: every Entry column but the chain's own
    (seq, prev_hash and hash, which Journal.write adds). Keyword-only, in HASHED_FIELDS
    order, so that no two same-typed columns can trade places at a call site."""

    at_ms: int
    kind: str
    op_id: str | None = None
    checkout_id: str | None = None
    accepted: bool = False
    reason: str
    campaign: str | None = None
    serial: str | None = None
    customer: str | None = None
    discount_minor: int = 0
    currency: str | None = None
    cashier: str | None = None
    source: str | None = None
    detail: Mapping[str, Any] | None = None


# The columns append() hands to NewEntry by name (at_ms, which it requires, aside).
_NEW_ENTRY_KEYS = tuple(f.name for f in dataclasses.fields(NewEntry) if f.name != "at_ms")


class Journal:
    """Appends hash-chained entries. Call inside a transaction owned by the one writer."""

    def __init__(self) -> None:
        last = Entry.select().order_by(Entry.seq.desc()).first()
        if last is not None:
            self.head_seq, self.head_hash = last.seq, last.hash
        else:
            self.head_seq = int(get_meta(PRUNED_SEQ, "0") or 0)
            self.head_hash = get_meta(PRUNED_HASH, GENESIS_HASH) or GENESIS_HASH
        # The latest time any entry was stamped with since a manager last reset clock trust:
        # entries a wrong clock stamped earlier must not lower it (one scan at start-up).
        since = int(get_meta(CLOCK_RESET_SEQ, "0") or 0)
        latest = Entry.select(pw.fn.MAX(Entry.at_ms)).where(Entry.seq >= since).scalar()
        self.last_at_ms = int(latest or 0)

    def append(self, **fields: Any) -> int:
        """write() for fields given as keywords (tests and tools that copy rows): fields
        are Entry's (seq, prev_hash and hash are the chain's own, whatever is passed), a
        misspelt one is refused. Returns its seq."""
        unknown = fields.keys() - _ENTRY_KEYS
        if unknown:
            raise KeyError(sorted(unknown)[0])
        # .get() for every column, as before the record: one left out is stored as NULL,
        # which the table refuses where it must not be.
        given: dict[str, Any] = {k: fields.get(k) for k in _NEW_ENTRY_KEYS}
        return self.write(NewEntry(at_ms=fields["at_ms"], **given))

    def write(self, entry: NewEntry) -> int:
        """Journal one entry; returns its seq. One list serves as the hashed values (in
        HASHED_FIELDS order) and, with the hash, as the row written through the connection."""
        seq: int = self.head_seq + 1
        at_ms = int(entry.at_ms)
        values: list[Any] = [
            seq,
            at_ms,
            entry.kind,
            entry.op_id,
            entry.checkout_id,
            bool(entry.accepted),
            entry.reason,
            entry.campaign,
            entry.serial,
            entry.customer,
            entry.discount_minor or 0,
            entry.currency,
            entry.cashier,
            entry.source,
            _detail_json(entry.detail or {}),
            self.head_hash,
        ]
        digest = hashlib.sha256(_canon_json(values).encode()).hexdigest()
        values.append(digest)
        with db_errors:
            database_proxy.obj.connection().execute(_ENTRY_SQL, values)
        self.head_seq, self.head_hash = seq, digest
        if at_ms > self.last_at_ms:
            self.last_at_ms = at_ms
        return seq


def stored_head() -> tuple[int, str]:
    """The newest stored entry's (seq, hash); where pruning left the chain when none is."""
    last = Entry.select(Entry.seq, Entry.hash).order_by(Entry.seq.desc()).first()
    if last is not None:
        return int(last.seq), str(last.hash)
    pruned = int(get_meta(PRUNED_SEQ, "0") or 0)
    return pruned, get_meta(PRUNED_HASH, GENESIS_HASH) or GENESIS_HASH
