"""The tamper-evident journal, one module per job; what other packages use is re-exported here.

Every attempt and state change, hash-chained, committed durably (SQLite WAL,
synchronous=FULL) before a decision is returned, with the coupon-use and idempotency tables
the engine keeps in the same transaction."""

from __future__ import annotations

from coupons.journal.chain import (
    GENESIS_HASH,
    HASHED_FIELDS,
    Journal,
    NewEntry,
    entry_hash,
    stored_head,
)
from coupons.journal.database import JournalFull, JournalUnavailable, open_database
from coupons.journal.export import CSV_FIELDS, EXPORT_FIELDS, export, rows
from coupons.journal.mark import (
    ACCEPT_NEEDS_CONFIRM,
    LOSS_ACCEPTED,
    LOSS_ACCEPTED_SAID,
    MARK_NAME,
    NOT_BEHIND,
    Behind,
    Mark,
    accept_loss,
    behind_mark,
    mark_path,
    read_mark,
    write_mark,
)
from coupons.journal.meta import get_meta, set_meta
from coupons.journal.prune import RETENTION_S, prune
from coupons.journal.schema import Entry, Operation, PosCheckout, TagCounter, Use, database_proxy
from coupons.journal.uses import (
    LIVE_USES,
    NewUse,
    UseStatus,
    checkout_uses,
    insert_operation,
    insert_use,
    operation_answer,
    raise_tag_counter,
    tag_counter,
)
from coupons.journal.verify import VerifyResult, tail_problem, verify
from coupons.journal.wal import wal_problem

# Its name before the split (tests/reliability/test_wal_loss.py reads it).

__all__ = [
    "ACCEPT_NEEDS_CONFIRM",
    "CSV_FIELDS",
    "EXPORT_FIELDS",
    "GENESIS_HASH",
    "HASHED_FIELDS",
    "LIVE_USES",
    "LOSS_ACCEPTED",
    "LOSS_ACCEPTED_SAID",
    "MARK_NAME",
    "NOT_BEHIND",
    "RETENTION_S",
    "Behind",
    "Entry",
    "Journal",
    "JournalFull",
    "JournalUnavailable",
    "Mark",
    "NewEntry",
    "NewUse",
    "Operation",
    "PosCheckout",
    "TagCounter",
    "Use",
    "UseStatus",
    "VerifyResult",
    "accept_loss",
    "behind_mark",
    "checkout_uses",
    "database_proxy",
    "entry_hash",
    "export",
    "get_meta",
    "insert_operation",
    "insert_use",
    "mark_path",
    "open_database",
    "operation_answer",
    "prune",
    "raise_tag_counter",
    "read_mark",
    "rows",
    "set_meta",
    "stored_head",
    "tag_counter",
    "tail_problem",
    "verify",
    "wal_problem",
    "write_mark",
]
