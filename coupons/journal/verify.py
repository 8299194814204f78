"""Verifying the journal: the chain walked, and its end held against what it is known to hold."""

from __future__ import annotations

from dataclasses import dataclass

from coupons.journal.chain import GENESIS_HASH, entry_hash, stored_head
from coupons.journal.mark import behind_mark
from coupons.journal.meta import ACKED_SEQ, PRUNED_HASH, PRUNED_SEQ, get_meta
from coupons.journal.schema import Entry, Operation, Use, database_proxy
from coupons.journal.uses import LIVE_USES

# Where the newest coupon use's entry is looked for first (entries from the end).
RECENT_ENTRIES = 5000


@dataclass
class VerifyResult:
    ok: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str | None = None
    missing: int | None = None  # entries committed that the journal no longer holds


def verify(acknowledged: int = 0, lang: str = "en") -> VerifyResult:
    """Walk the chain; name the first entry that was edited, removed, inserted or moved.
    Then the end: entries deleted from the end leave a chain that links up, so it is held
    against what is known to have been written: the head mark kept beside journal.db, the
    central's acknowledged mark (`acknowledged` adds one kept outside this file), every
    operation id answered and every coupon use that counts."""
    with database_proxy.obj.atomic():  # one snapshot, also beside a writing daemon
        result = _walk()
        if not result.ok:
            return result
        problem = tail_problem(acknowledged) or _answered_problem() or _uses_problem()
        # After those, which name their own evidence; this one counts what is missing.
        behind = None if problem else behind_mark()
        if behind is not None:
            first = behind.head + 1 if behind.missing else behind.mark.seq
            return VerifyResult(False, result.entries, first, behind.sentence(lang), behind.missing)
    if problem:
        return VerifyResult(False, result.entries, problem[0], problem[1])
    return result


def _walk() -> VerifyResult:
    expect_seq = int(get_meta(PRUNED_SEQ, "0") or 0) + 1
    prev = get_meta(PRUNED_HASH, GENESIS_HASH) or GENESIS_HASH
    count = 0
    for row in Entry.select().order_by(Entry.seq).dicts().iterator():
        count += 1
        if row["seq"] != expect_seq:
            return VerifyResult(
                False,
                count,
                expect_seq,
                f"entry {expect_seq} is missing (next stored is {row['seq']})",
            )
        if row["prev_hash"] != prev:
            return VerifyResult(
                False,
                count,
                row["seq"],
                f"entry {row['seq']} does not follow entry {row['seq'] - 1}",
            )
        if entry_hash(row) != row["hash"]:
            return VerifyResult(False, count, row["seq"], f"entry {row['seq']} was altered")
        prev = row["hash"]
        expect_seq += 1
    return VerifyResult(True, count)


def tail_problem(acknowledged: int = 0) -> tuple[int, str] | None:
    """(first missing seq, sentence) when the chain ends before an entry it is known to have
    had: the central acknowledged more (the larger of the mark in Meta and `acknowledged`),
    the newest operation id was answered with a later entry, or the newest coupon use has
    no entry (it is written with its accepted entry, in one transaction). A few indexed
    reads: cheap enough for every start-up. No head record is kept beside the entries:
    writing one with each entry adds a page to every redemption's commit, the hot path
    that already misses its goal (bench/durable.py)."""
    seq, _ = stored_head()
    acked = max(int(get_meta(ACKED_SEQ, "0") or 0), acknowledged)
    if acked > seq:
        return seq + 1, (
            f"entries after {seq} are missing (the central acknowledged entries up to {acked})"
        )
    db = database_proxy.obj
    op = db.execute_sql(
        f'SELECT "op_id", "seq" FROM "{Operation._meta.table_name}" ORDER BY rowid DESC LIMIT 1'  # noqa: S608
    ).fetchone()
    if op is not None and op[1] > seq:
        return seq + 1, (
            f"entries after {seq} are missing (operation {op[0]} was answered with entry {op[1]})"
        )
    use = db.execute_sql(
        f'SELECT "serial", "checkout_id", "status" FROM "{Use._meta.table_name}" '  # noqa: S608
        'ORDER BY "id" DESC LIMIT 1'
    ).fetchone()
    if use is None or _entry_of_use(use[0], use[1], seq - RECENT_ENTRIES):
        return None
    if _entry_of_use(use[0], use[1], None):
        return None
    pruned = int(get_meta(PRUNED_SEQ, "0") or 0) > 0
    if pruned and not Entry.select().where(Entry.accepted & Entry.serial.is_null(False)).exists():
        return None  # every redemption's entry is older than two years and was pruned
    return seq + 1, (
        f"entries after {seq} are missing (the {use[2]} use of coupon {use[0]} in checkout "
        f"{use[1]} has no entry)"
    )


def _entry_of_use(serial: str, checkout_id: str, after_seq: int | None) -> bool:
    """Is there an accepted entry that made this use (after after_seq, or anywhere)?"""
    which = (Entry.checkout_id == checkout_id) & (Entry.serial == serial) & Entry.accepted
    if after_seq is not None:
        which &= Entry.seq > after_seq
    return bool(Entry.select(Entry.seq).where(which).exists())


def _answered_problem() -> tuple[int, str] | None:
    """An operation id answered with an entry past the end of the chain."""
    seq, _ = stored_head()
    row = (
        Operation.select(Operation.op_id, Operation.seq)
        .where(Operation.seq > seq)
        .order_by(Operation.seq.desc())
        .first()
    )
    if row is None:
        return None
    return seq + 1, (
        f"entries after {seq} are missing (operation {row.op_id} was answered with entry {row.seq})"
    )


def _uses_problem() -> tuple[int, str] | None:
    """A held or committed coupon use (it counts against limits) without the accepted entry
    that made it. Once entries were pruned, uses older than the oldest kept entry may have
    lost theirs legitimately: only a use newer than one whose entry is there is a problem."""
    seq, _ = stored_head()
    use, entry = Use._meta.table_name, Entry._meta.table_name
    # Names from the models' metadata, never from input. The join, not a correlated
    # EXISTS: entry has no index on checkout_id, SQLite builds one for the join.
    uses = database_proxy.obj.execute_sql(
        f'SELECT u."serial", u."checkout_id", u."status", e."serial" IS NOT NULL '  # noqa: S608
        f'FROM "{use}" u LEFT JOIN (SELECT DISTINCT "checkout_id", "serial" FROM "{entry}" '
        'WHERE "accepted" AND "serial" IS NOT NULL) e '
        'ON e."checkout_id" = u."checkout_id" AND e."serial" = u."serial" ORDER BY u."id"'
    )
    pruned = int(get_meta(PRUNED_SEQ, "0") or 0) > 0
    seen_present = not pruned
    for serial, checkout, status, present in uses:
        if present:
            seen_present = True
        elif seen_present and status in LIVE_USES:
            return seq + 1, (
                f"the {status} use of coupon {serial} (checkout {checkout}) has no journal "
                f"entry: entries after {seq} are missing, or the use was added outside the "
                "journal"
            )
    return None
