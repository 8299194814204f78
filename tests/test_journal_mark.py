"""The journal's head mark kept beside journal.db: a lost WAL or an older journal.db put
back on a till that never synced is refused with how many entries are missing, by the
daemon and by `redeem journal verify`; the coupons stay used until a manager decides, and
that decision is journaled."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from coupons import journal, setup
from coupons.reasons import Reason
from coupons.rules import Basket
from tests.conftest import World
from tests.reliability.harness import (
    DaemonProc,
    cli,
    cli_verify,
    prepare,
    read_journal,
    serial_of,
    write_config,
)

BASKET = Basket.from_dict({"currency": "CNY", "total_minor": 10**9})


def daemon_on(tmp_path: Path, data: Path) -> DaemonProc:
    fifo = tmp_path / "scan.fifo"
    cfg = write_config(tmp_path / "redeem.toml", data, fifo, kiosk=False)
    return DaemonProc(data, cfg, fifo, tmp_path / "logs")


def test_a_lost_wal_after_sigkill_is_refused_until_a_manager_decides(
    world: World, tmp_path: Path
) -> None:
    a, b, c, d = prepare(world, 4)
    daemon = daemon_on(tmp_path, world.data).start()
    try:
        daemon.wait_ready()
        daemon.new_sale()
        for code in (a, b, c):
            assert daemon.scan(code)["accepted"]
        head = max(e["seq"] for e in read_journal(world.data)[0])
    finally:
        daemon.kill()  # a crash: the unsynced redemptions live in the WAL only
    wal = world.data / "journal.db-wal"
    assert wal.stat().st_size > 32
    wal.unlink()
    (world.data / "journal.db-shm").unlink(missing_ok=True)
    kept = max((e["seq"] for e in read_journal(world.data)[0]), default=0)
    missing = head - kept
    assert missing >= 3  # the three redemptions at least

    sentence = (
        f"The journal ends at entry {kept} but this till had committed entry {head}: "
        f"{missing} entries are missing (journal.db-wal lost or an older journal.db put back). "
        "Do not redeem coupons on this till; see the runbook step 'Journal behind its mark'."
    )
    verify = cli_verify(world.data)
    assert not verify["ok"] and verify["missing"] == missing
    assert verify["problem"] == sentence
    plain = cli("journal", "verify", "--data", str(world.data))
    assert plain.returncode != 0 and sentence in plain.stdout
    zh = cli("journal", "verify", "--data", str(world.data), "--lang", "zh_CN")
    assert zh.returncode != 0 and f"缺少 {missing} 条" in zh.stdout

    # The daemon stops at start-up with that sentence and exit 2 (systemd does not loop).
    daemon.start()
    assert daemon.proc is not None
    assert daemon.proc.wait(30) == 2
    out = daemon.output()
    assert sentence in out and "Traceback" not in out and "ACCEPTED" not in out
    # Nor does a one-off command redeem the lost coupon again.
    sale = tmp_path / "basket.json"
    sale.write_text('{"currency": "CNY", "total_minor": 100000}')
    again = cli("redeem", a, "--basket", str(sale), "--data", str(world.data))
    assert again.returncode == 2 and "ACCEPTED" not in again.stdout
    assert sentence in again.stderr

    # The manager's decision: refused without --confirm, then journaled.
    unsure = cli("journal", "accept-loss", "--manager", "m-7", "--data", str(world.data))
    assert unsure.returncode == 2 and "add --confirm" in unsure.stderr
    decided = cli(
        "journal", "accept-loss", "--manager", "m-7", "--confirm", "--data", str(world.data)
    )
    assert decided.returncode == 0, decided.stderr
    entries, _, _ = read_journal(world.data)
    flag = entries[-1]
    assert flag["kind"] == "flag" and flag["reason"] == journal.LOSS_ACCEPTED
    assert f'"missing":{missing}' in flag["detail"] and '"manager":"m-7"' in flag["detail"]
    assert cli_verify(world.data)["ok"]

    daemon.start()
    try:
        daemon.wait_ready()
        daemon.new_sale()
        assert daemon.scan(d)["accepted"]
    finally:
        assert daemon.stop() == 0
    assert cli_verify(world.data)["ok"]
    twice = cli(
        "journal", "accept-loss", "--manager", "m-7", "--confirm", "--data", str(world.data)
    )
    assert twice.returncode == 1 and "not behind its mark" in twice.stdout


def test_an_older_journal_put_back_after_a_clean_stop_is_refused(
    world: World, tmp_path: Path
) -> None:
    a, b = prepare(world, 2)
    engine = setup.open_engine(world.data, world.clock)
    assert engine.redeem(a, BASKET).accepted
    engine.db.close()
    older = tmp_path / "journal.db.old"
    shutil.copyfile(world.data / "journal.db", older)
    engine = setup.open_engine(world.data, world.clock)
    assert engine.redeem(b, BASKET).accepted
    head = engine.journal.head_seq
    engine.db.close()
    shutil.copyfile(older, world.data / "journal.db")

    with pytest.raises(setup.DataUnusable, match=r"entries are missing") as caught:
        setup.open_engine(world.data, world.clock)
    assert f"had committed entry {head}: 1 entries are missing" in str(caught.value)
    assert cli_verify(world.data)["missing"] == 1


def test_a_mark_behind_the_journal_is_no_alarm(world: World, tmp_path: Path) -> None:
    """The mark is written without fsync: a power cut can lose its last writes (or tear
    one). The journal ahead of its mark is normal and the till redeems."""
    a, b, c = prepare(world, 3)
    engine = setup.open_engine(world.data, world.clock)
    assert engine.redeem(a, BASKET).accepted
    mark = journal.mark_path()
    stale = mark.read_bytes()
    assert engine.redeem(b, BASKET).accepted
    engine.db.close()
    mark.write_bytes(stale)  # the last mark write never reached the card
    engine = setup.open_engine(world.data, world.clock)
    assert journal.verify().ok
    assert engine.redeem(c, BASKET).accepted
    assert engine.redeem(a, BASKET).reason is Reason.ALREADY_REDEEMED
    engine.db.close()
    with open(mark, "r+b") as fh:  # a torn write: one slot is garbage
        fh.write(b"\0" * 40)
    engine = setup.open_engine(world.data, world.clock)
    try:
        assert journal.verify().ok
        assert journal.read_mark(mark) is not None  # the other slot still counts
    finally:
        engine.db.close()


def test_another_journal_under_the_marks_number_is_refused(world: World, tmp_path: Path) -> None:
    """journal.db swapped for another copy that reached the same entry number: the hash
    at the mark's number is not the one committed."""
    a, b, c = prepare(world, 3)
    engine = setup.open_engine(world.data, world.clock)
    assert engine.redeem(a, BASKET).accepted
    engine.db.close()
    older = tmp_path / "journal.db.old"
    shutil.copyfile(world.data / "journal.db", older)
    mark_before = journal.mark_path(engine.db).read_bytes()
    engine = setup.open_engine(world.data, world.clock)
    assert engine.redeem(b, BASKET).accepted
    engine.db.close()
    mark = (world.data / journal.MARK_NAME).read_bytes()
    # The older copy, written on by a till without the mark, to the same number.
    shutil.copyfile(older, world.data / "journal.db")
    (world.data / journal.MARK_NAME).write_bytes(mark_before)
    engine = setup.open_engine(world.data, world.clock)
    assert engine.redeem(c, BASKET).accepted
    engine.db.close()
    (world.data / journal.MARK_NAME).write_bytes(mark)
    with pytest.raises(setup.DataUnusable, match="is not the one this till committed"):
        setup.open_engine(world.data, world.clock)
    assert serial_of(b) not in {e["serial"] for e in read_journal(world.data)[0]}
