"""The end of the journal: entries deleted from the end leave a hash chain that still links
up, so `redeem journal verify` holds it against what is known to have been written (the
central's acknowledged mark, answered operation ids, coupon uses that count), and the
terminal refuses to redeem on a journal that lost its last entries."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from coupons import journal, setup
from coupons.reasons import Reason
from tests.conftest import World, basket
from tests.reliability.harness import cli

YEAR_S = 365 * 24 * 3600


def _redeemed(world: World, n: int, op_ids: bool = False) -> list[str]:
    """n coupons of one campaign redeemed (with operation ids op-0, op-1, ... or, as the
    `redeem redeem` command does, without); the engine closed, as a till that was stopped
    (or a copy of its data directory)."""
    world.campaign(id="TEN", stacking="any")
    coupons = world.issue("TEN", n + 1)
    world.sync_ledger()
    for i, code in enumerate(coupons[:n]):
        op = f"op-{i}" if op_ids else None
        assert world.engine.redeem(code, basket(5000), op_id=op).accepted
    world.engine.db.close()
    return coupons


def _sql(data: Path, *statements: str) -> None:
    """Edits made with the sqlite3 shell on a copy of the till's card."""
    conn = sqlite3.connect(data / "journal.db")
    with conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()


def _last_seq(data: Path) -> int:
    conn = sqlite3.connect(data / "journal.db")
    (seq,) = conn.execute("SELECT MAX(seq) FROM entry").fetchone()
    conn.close()
    return int(seq)


def _verify(data: Path) -> tuple[int, str]:
    proc = cli("journal", "verify", "--data", str(data))
    return proc.returncode, proc.stdout + proc.stderr


def test_deleting_the_last_entry_is_named_and_stops_redeeming(world: World) -> None:
    coupons = _redeemed(world, 3)
    last = _last_seq(world.data)
    assert _verify(world.data) == (0, f"journal OK: {last} entries, chain intact\n")

    _sql(world.data, f"DELETE FROM entry WHERE seq = {last}")  # the newest redemption

    code, out = _verify(world.data)
    assert code == 1, out
    assert f"journal TAMPERED: entries after {last - 1} are missing (the committed use" in out
    opened = journal.open_database(world.data / "journal.db")
    try:
        result = journal.verify()
    finally:
        opened.close()
    assert not result.ok and result.first_bad_seq == last
    # The till does not redeem on it: the next redemption would take the lost number.
    with pytest.raises(setup.DataUnusable, match=f"entries after {last - 1} are missing"):
        setup.open_engine(world.data, world.clock)
    sale = world.data.parent / "basket.json"
    sale.write_text('{"currency": "CNY", "total_minor": 5000}')
    redeem = cli("redeem", coupons[2], "--basket", str(sale), "--data", str(world.data))
    assert redeem.returncode == 2
    assert "has lost its last entries" in redeem.stderr, redeem.stderr
    assert "ACCEPTED" not in redeem.stdout


def test_a_deleted_redemption_is_found_through_its_coupon_use(world: World) -> None:
    """Deleting its answered operation id too still leaves the sale in the coupon uses."""
    _redeemed(world, 3, op_ids=True)
    last = _last_seq(world.data)
    _sql(world.data, f"DELETE FROM entry WHERE seq = {last}", "DELETE FROM operation")
    code, out = _verify(world.data)
    assert code == 1, out
    assert f"entries after {last - 1} are missing (the committed use of coupon" in out
    with pytest.raises(setup.DataUnusable, match="has no entry"):
        setup.open_engine(world.data, world.clock)


def test_an_older_use_without_its_entry_is_named(world: World) -> None:
    """A use rewritten by hand (or an entry deleted and the newest use too): verify looks
    at every use that counts, not only the newest."""
    _redeemed(world, 3)
    _sql(world.data, "UPDATE \"use\" SET serial = '00' || serial WHERE id = 1")
    code, out = _verify(world.data)
    assert code == 1, out
    assert "the committed use of coupon 00" in out and "has no journal entry" in out


def test_an_answered_operation_past_the_end_is_named(world: World) -> None:
    _redeemed(world, 2, op_ids=True)
    last = _last_seq(world.data)
    _sql(world.data, f"DELETE FROM entry WHERE seq = {last}", 'DELETE FROM "use" WHERE id = 2')
    code, out = _verify(world.data)
    assert code == 1, out
    assert f"entries after {last - 1} are missing (operation op-1 was answered" in out
    with pytest.raises(setup.DataUnusable, match="operation op-1 was answered"):
        setup.open_engine(world.data, world.clock)


def test_a_journal_below_the_central_acknowledged_mark_is_refused(world: World) -> None:
    """Entries the central acknowledged are gone (an older copy of journal.db whose mark
    was edited, or a mark kept outside journal.db): the central already holds entries this
    journal no longer has, and new ones would take their numbers."""
    coupons = _redeemed(world, 2)
    last = _last_seq(world.data)
    _sql(world.data, f"INSERT OR REPLACE INTO meta (key, value) VALUES ('acked_seq', '{last + 3}')")
    with pytest.raises(
        setup.DataUnusable,
        match=f"entries after {last} are missing \\(the central acknowledged entries up to "
        f"{last + 3}\\)",
    ):
        setup.open_engine(world.data, world.clock)
    code, out = _verify(world.data)
    assert code == 1 and f"entries after {last} are missing" in out, out

    # The copy the sync client keeps outside journal.db counts the same: an older journal.db
    # put back in place brings its own older mark, not this one.
    _sql(world.data, "DELETE FROM meta WHERE key = 'acked_seq'")
    assert setup.open_engine(world.data, world.clock).redeem(coupons[2], basket(5000)).accepted
    journal.database_proxy.obj.close()
    setup.keep_acknowledged_copy(world.data, last + 10)
    with pytest.raises(setup.DataUnusable, match="the central acknowledged entries up to"):
        setup.open_engine(world.data, world.clock)


def test_pruned_entries_do_not_orphan_old_uses(world: World) -> None:
    """Entries older than two years that the central holds are pruned; the coupon uses they
    made stay (the coupon is still used) and are not taken for missing entries."""
    coupons = _redeemed(world, 2)
    engine = world.reopen()
    head = engine.journal.head_seq
    journal.set_meta("acked_seq", str(head))
    assert journal.prune(world.clock.now() + 3 * YEAR_S) == head
    assert journal.Entry.select().count() == 0 and journal.Use.select().count() == 2
    assert journal.verify().ok
    engine = world.reopen()  # and the terminal starts on it
    assert engine.redeem(coupons[0], basket(5000)).reason is Reason.ALREADY_REDEEMED
    assert journal.verify().ok
    engine.db.close()
    assert _verify(world.data)[0] == 0
