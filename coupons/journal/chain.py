"""The hash chain: what an entry's hash covers, appending entries, and the stored head."""

from __future__ import annotations

import hashlib
import json
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
        """Journal one entry; fields are Entry's (seq, prev_hash and hash are the chain's
        own, whatever is passed). Returns its seq."""
        unknown = fields.keys() - _ENTRY_KEYS
        if unknown:
            raise KeyError(sorted(unknown)[0])
        return self.write(
            fields["at_ms"],
            fields.get("kind"),
            fields.get("op_id"),
            fields.get("checkout_id"),
            fields.get("accepted"),
            fields.get("reason"),
            fields.get("campaign"),
            fields.get("serial"),
            fields.get("customer"),
            fields.get("discount_minor"),
            fields.get("currency"),
            fields.get("cashier"),
            fields.get("source"),
            fields.get("detail"),
        )

    def write(
        self,
        at_ms: int,
        kind: str | None,
        op_id: str | None,
        checkout_id: str | None,
        accepted: bool | None,
        reason: str | None,
        campaign: str | None,
        serial: str | None,
        customer: str | None,
        discount_minor: int | None,
        currency: str | None,
        cashier: str | None,
        source: str | None,
        detail: dict[str, Any] | None,
    ) -> int:
        """append() with the fields in HASHED_FIELDS order: one list serves as the hashed
        values and, with the hash, as the row written through the connection."""
        seq: int = self.head_seq + 1
        at_ms = int(at_ms)
        values: list[Any] = [
            seq,
            at_ms,
            kind,
            op_id,
            checkout_id,
            bool(accepted),
            reason,
            campaign,
            serial,
            customer,
            discount_minor or 0,
            currency,
            cashier,
            source,
            _detail_json(detail or {}),
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
