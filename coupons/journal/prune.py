"""Pruning entries past the retention period once the central has acknowledged them."""

from __future__ import annotations

import peewee as pw

from coupons.journal.meta import ACKED_SEQ, PRUNED_HASH, PRUNED_SEQ, get_meta, set_meta
from coupons.journal.schema import Entry, database_proxy

RETENTION_S = 2 * 366 * 24 * 3600


def prune(now_s: float) -> int:
    """Drop entries older than the retention period that the central has acknowledged."""
    acked = int(get_meta(ACKED_SEQ, "0") or 0)
    cutoff_ms = int((now_s - RETENTION_S) * 1000)
    # Only the leading run of old entries: one stamped by a wrong clock (a Pi booting at 1970)
    # must not carry younger entries before it away.
    young = Entry.select(pw.fn.MIN(Entry.seq)).where(Entry.at_ms >= cutoff_ms).scalar()
    bound = acked if young is None else min(acked, young - 1)
    last = (
        Entry.select()
        .where((Entry.seq <= bound) & (Entry.at_ms < cutoff_ms))
        .order_by(Entry.seq.desc())
        .first()
    )
    if last is None:
        return 0
    db = database_proxy.obj
    with db.atomic():
        set_meta(PRUNED_SEQ, str(last.seq))
        set_meta(PRUNED_HASH, last.hash)
        return int(Entry.delete().where(Entry.seq <= last.seq).execute())
