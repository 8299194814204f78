"""Storage faults under the journal: a full disk and a read-only file system refuse coupons
with storage_failure (fail closed) and corrupt nothing; the next coupon after the fault is
gone is accepted. A start on a full disk is told apart from damage and exits for a retry.
A torn WAL tail loses only the transaction being written; damage in the middle of the WAL
or in the database file stops the terminal from redeeming, with a clear error."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from coupons import journal, setup
from coupons.clock import FixedClock
from coupons.reasons import Reason
from coupons.rules import Basket
from kiosk_ui import tills
from tests.conftest import T0, World
from tests.reliability.conftest import Mount, remount
from tests.reliability.harness import (
    DaemonProc,
    Pos,
    build_world,
    cli,
    cli_verify,
    prepare,
    read_journal,
    serial_of,
    verify_chain,
    write_config,
)

STORAGE_SENTENCE = Reason.STORAGE_FAILURE.message("en")
BASKET = Basket.from_dict({"currency": "CNY", "total_minor": 10**9})


def fill(directory: Path) -> Path:
    """Write a filler file until the file system says no space is left."""
    path = directory / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as exc:
        assert exc.errno == 28, exc  # ENOSPC
    try:  # the last few blocks
        while True:
            os.write(fd, b"\0" * 512)
    except OSError:
        pass
    os.close(fd)
    return path


def daemon_on(tmp_path: Path, data: Path, kiosk: bool = True) -> DaemonProc:
    fifo = tmp_path / "scan.fifo"  # outside the data directory: it is not what fails
    cfg = write_config(tmp_path / "redeem.toml", data, fifo, kiosk)
    return DaemonProc(data, cfg, fifo, tmp_path / "logs")


def accepted_serials(data: Path, kinds: tuple[str, ...] = ("redeem",)) -> list[str]:
    """The accepted coupons in the journal, in order, once its hash chain verifies."""
    entries, _, meta = read_journal(data)
    assert verify_chain(entries, meta) is None
    return [e["serial"] for e in entries if e["accepted"] and e["kind"] in kinds]


def redeems_and_remembers(daemon: DaemonProc, fresh: str, used: str) -> None:
    """After a recovery: a new sale takes a fresh coupon and still refuses a used one."""
    daemon.new_sale()
    assert daemon.scan(fresh)["accepted"]
    assert daemon.scan(used)["reason"] == Reason.ALREADY_REDEEMED.value


def test_a_full_disk_refuses_with_storage_failure_and_corrupts_nothing(
    tmp_path: Path, tmpfs: Mount
) -> None:
    mnt = tmpfs("2m")
    world = build_world(tmp_path, mnt / "terminal", FixedClock(T0))
    a, b, c = prepare(world, 3)
    token = tills.issue(world.data, "till-1")
    daemon = daemon_on(tmp_path, world.data).start()
    try:
        daemon.wait_ready()
        daemon.new_sale()
        assert daemon.scan(a)["accepted"]
        assert daemon.url is not None
        pos = Pos(daemon.url, token)
        checkout = pos.open("open-1").json()["checkout_id"]  # in memory: no disk needed
        filler = fill(mnt)

        refused = daemon.scan(b)
        assert not refused["accepted"]
        assert refused["reason"] == Reason.STORAGE_FAILURE.value
        assert refused["message"] == STORAGE_SENTENCE  # what the cashier's screen shows
        log = daemon.output()
        assert f"REFUSED from pipe: storage_failure 0 ({STORAGE_SENTENCE})" in log
        assert "journal write failed, refusing" in log
        applied = pos.apply(checkout, c, "apply-1")  # the POS till hears the same
        assert applied.status_code == 503, applied.text
        assert applied.json()["reason"] == Reason.STORAGE_FAILURE.value
        assert applied.json()["message"] == STORAGE_SENTENCE
        assert daemon.alive() and daemon.control({"op": "status"})["ok"]
        entries, uses, meta = read_journal(world.data)
        assert verify_chain(entries, meta) is None
        assert [e["serial"] for e in entries if e["kind"] == "redeem"] == [serial_of(a)]

        filler.unlink()
        again = daemon.scan(b)
        assert again["accepted"], again
        applied = pos.apply(checkout, c, "apply-2")
        assert applied.status_code == 200 and applied.json()["decision"]["accepted"]
        assert pos.commit(checkout, "commit-1").status_code == 200
    finally:
        assert daemon.stop() == 0, daemon.output()[-3000:]
    accepted = accepted_serials(world.data, ("redeem", "hold"))
    assert sorted(accepted) == sorted(serial_of(t) for t in (a, b, c))
    assert cli_verify(world.data)["ok"]


def test_a_read_only_file_system_refuses_and_the_terminal_recovers(
    tmp_path: Path, tmpfs: Mount
) -> None:
    """Linux will not remount a file system read-only while a process holds a file on it
    open for writing (the daemon always holds journal.db): only the kernel does that, on
    an I/O error. So the journal goes read-only between two runs, as after such an error
    and a reboot: the daemon must not accept a coupon on it."""
    mnt = tmpfs("2m")
    world = build_world(tmp_path, mnt / "terminal", FixedClock(T0))
    a, b = prepare(world, 2)
    daemon = daemon_on(tmp_path, world.data, kiosk=False).start()
    daemon.wait_ready()
    daemon.new_sale()
    assert daemon.scan(a)["accepted"]
    busy = remount(mnt, "ro")
    assert busy.returncode != 0 and "busy" in busy.stderr  # documented above
    assert daemon.stop() == 0

    assert remount(mnt, "ro").returncode == 0
    try:
        # It stops at start-up with one clear sentence, before it opens a control socket or
        # an input: no coupon is taken that cannot be journaled. Exit 2 tells systemd not to
        # restart it (RestartPreventExitStatus=2): a read-only card needs a person.
        daemon.start()
        assert daemon.proc is not None
        code = daemon.proc.wait(30)
        out = daemon.output()
        assert code == 2 and "Read-only file system: the journal cannot record" in out, out
        assert "Traceback" not in out and "ACCEPTED" not in out
    finally:
        if daemon.alive():
            daemon.kill()
        assert remount(mnt, "rw").returncode == 0

    daemon.start()
    try:
        daemon.wait_ready()
        redeems_and_remembers(daemon, b, a)
    finally:
        assert daemon.stop() == 0
    assert accepted_serials(world.data) == [serial_of(a), serial_of(b)]


def waiting_for_space(daemon: DaemonProc, said: str) -> None:
    """Until the daemon's log says `said`; it must still be running (waiting, not exited)."""
    assert daemon.proc is not None
    deadline = time.monotonic() + 30
    while said not in daemon.output():
        assert daemon.proc.poll() is None, daemon.output()[-3000:]
        assert time.monotonic() < deadline, daemon.output()[-3000:]
        time.sleep(0.05)


def test_a_start_on_a_full_disk_is_not_called_damage_and_waits_for_space(
    tmp_path: Path, tmpfs: Mount
) -> None:
    """A clean stop removes the -wal and -shm files; on a full disk SQLite cannot create
    them again (an I/O error, not SQLITE_FULL). That used to read "journal.db is damaged"
    with exit 2, which systemd never restarts: the till stayed down after space returned.
    Now the daemon says "disk full", serves nothing, and opens the journal once space is
    freed, without a restart; a `redeem` command exits 75 (EX_TEMPFAIL)."""
    mnt = tmpfs("2m")
    world = build_world(tmp_path, mnt / "terminal", FixedClock(T0))
    a, b = prepare(world, 2)
    daemon = daemon_on(tmp_path, world.data, kiosk=False)
    with open(daemon.config, "a") as cfg:
        cfg.write("\n[watchdog]\ndisk_full_retry_s = 0.2\n")
    daemon.start()
    try:
        daemon.wait_ready()
        daemon.new_sale()
        assert daemon.scan(a)["accepted"]
    finally:
        assert daemon.stop() == 0
    assert not (world.data / "journal.db-wal").exists()
    before = (world.data / "journal.db").read_bytes()
    filler = fill(mnt)

    daemon.start()
    waiting_for_space(daemon, "trying again every")
    time.sleep(1.0)  # several retries on the full disk
    out = daemon.output()
    assert daemon.proc.poll() is None  # waiting, not exited into systemd's start limit
    assert f"disk full: {world.data} has " in out and "nothing is damaged" in out, out
    assert out.count("disk full:") == 1  # said once, not every retry
    assert "damaged (" not in out and "Traceback" not in out and "ACCEPTED" not in out
    assert not (world.data / "control.sock").exists()  # nothing served meanwhile
    verify = cli("journal", "verify", "--data", str(world.data))
    assert verify.returncode == 75 and "disk full" in verify.stderr, verify.stderr
    assert (world.data / "journal.db").read_bytes() == before  # nothing written, nothing torn

    filler.unlink()
    try:
        daemon.wait_ready()  # the same process: no restart needed
        assert daemon.starts == 2 and "space is back" in daemon.output()
        redeems_and_remembers(daemon, b, a)
    finally:
        assert daemon.stop() == 0
    assert accepted_serials(world.data) == [serial_of(a), serial_of(b)]
    assert cli_verify(world.data)["ok"]


def test_a_daemon_waiting_for_space_stops_at_once_on_sigterm(tmp_path: Path, tmpfs: Mount) -> None:
    mnt = tmpfs("2m")
    world = build_world(tmp_path, mnt / "terminal", FixedClock(T0))
    prepare(world, 1)
    filler = fill(mnt)
    daemon = daemon_on(tmp_path, world.data, kiosk=False).start()
    waiting_for_space(daemon, "trying again every 10 s")
    assert daemon.stop() == 0
    assert "stopped while waiting for disk space" in daemon.output()
    filler.unlink()


# ---------------------------------------------------------------- WAL and database file

FRAME = 24 + 4096  # WAL frame header + one page (the journal's page size)


def _crashed_copy(world: World, tmp_path: Path, n: int) -> tuple[Path, list[str]]:
    """n coupons redeemed one transaction each, then the data directory as a power cut
    would leave it: journal.db plus a WAL never checkpointed (copied while still open).
    The head mark is the one from before the last transaction: the tests tear that one,
    i.e. the cut came while it was written, before its commit returned and its mark."""
    coupons = prepare(world, n + 1)
    engine = setup.open_engine(world.data, world.clock)
    for code in coupons[: n - 1]:
        assert engine.redeem(code, BASKET).accepted
    mark = (world.data / journal.MARK_NAME).read_bytes()
    assert engine.redeem(coupons[n - 1], BASKET).accepted
    copy = tmp_path / "after-cut"
    shutil.copytree(world.data, copy, ignore=shutil.ignore_patterns("*-shm"))
    (copy / journal.MARK_NAME).write_bytes(mark)
    engine.db.close()
    assert (copy / "journal.db-wal").stat().st_size > FRAME
    return copy, coupons


def test_a_torn_wal_tail_loses_only_the_last_transaction(world: World, tmp_path: Path) -> None:
    data, coupons = _crashed_copy(world, tmp_path, 4)
    wal = data / "journal.db-wal"
    # The last frame cut short, as a power cut during its write leaves it. synchronous=FULL
    # fsyncs the WAL before a commit returns, so that redemption's answer never reached the
    # cashier; SQLite's frame checksums drop it at recovery.
    os.truncate(wal, wal.stat().st_size - FRAME // 2)
    engine = setup.open_engine(data, world.clock)
    try:
        result = journal.verify()
        assert result.ok, result.problem
        redeemed = [e.serial for e in journal.Entry.select().where(journal.Entry.kind == "redeem")]
        assert redeemed == [serial_of(c) for c in coupons[:3]]  # 1-3 intact, 4 gone
        assert engine.redeem(coupons[0], BASKET).reason is Reason.ALREADY_REDEEMED
        assert engine.redeem(coupons[3], BASKET).accepted  # its answer was never given
        assert engine.redeem(coupons[4], BASKET).accepted
        assert journal.verify().ok
    finally:
        engine.db.close()


def test_garbage_in_the_last_wal_frame_is_dropped_not_trusted(world: World, tmp_path: Path) -> None:
    data, coupons = _crashed_copy(world, tmp_path, 3)
    wal = data / "journal.db-wal"
    with open(wal, "r+b") as fh:  # bit rot inside the last frame's page
        fh.seek(wal.stat().st_size - 1000)
        fh.write(b"\xa5" * 64)
    engine = setup.open_engine(data, world.clock)
    try:
        assert journal.verify().ok
        redeemed = [e.serial for e in journal.Entry.select().where(journal.Entry.kind == "redeem")]
        assert redeemed == [serial_of(c) for c in coupons[:2]]
    finally:
        engine.db.close()


def test_damage_in_the_middle_of_the_wal_stops_the_terminal(world: World, tmp_path: Path) -> None:
    """Bit rot in an early WAL frame: SQLite's recovery would stop there and drop every
    later committed redemption without a word, and those coupons could be redeemed again.
    The terminal refuses to open such a journal instead, and leaves the WAL as it was."""
    data, coupons = _crashed_copy(world, tmp_path, 6)
    wal = data / "journal.db-wal"
    assert (wal.stat().st_size - 32) // FRAME >= 8
    with open(wal, "r+b") as fh:  # inside the second frame's page
        fh.seek(32 + FRAME + 24 + 1000)
        fh.write(b"\xa5" * 64)
    damaged = wal.read_bytes()

    # What plain SQLite makes of it (a read-only look at a copy): the later sales are gone.
    look = tmp_path / "look"
    shutil.copytree(data, look)
    entries, _, _ = read_journal(look)
    assert len([e for e in entries if e["kind"] == "redeem"]) < 6

    with pytest.raises(setup.DataUnusable) as caught:
        setup.open_engine(data, world.clock)
    sentence = str(caught.value)
    assert f"{wal} is damaged at frame 2 of " in sentence, sentence
    assert "committed transactions after it would be silently dropped" in sentence
    assert wal.read_bytes() == damaged  # the evidence is left for whoever restores it
    verify = cli("journal", "verify", "--data", str(data))
    assert verify.returncode == 2 and "would be silently dropped" in verify.stderr
    sale = tmp_path / "basket.json"
    sale.write_text('{"currency": "CNY", "total_minor": 100000}')
    redeem = cli("redeem", coupons[5], "--basket", str(sale), "--data", str(data))
    assert redeem.returncode == 2 and "ACCEPTED" not in redeem.stdout


def test_a_last_transaction_torn_out_of_order_is_still_only_a_torn_tail(
    world: World, tmp_path: Path
) -> None:
    """A card may persist the frames of the transaction being written in any order before
    its fsync: an early frame of it lost while its commit frame landed. That transaction's
    answer was never given; it must be dropped as a torn tail, not stop the terminal."""
    data, coupons = _crashed_copy(world, tmp_path, 4)
    wal = data / "journal.db-wal"
    raw = wal.read_bytes()
    frames = (len(raw) - 32) // FRAME
    commits = [
        i for i in range(frames) if raw[32 + i * FRAME + 4 : 32 + i * FRAME + 8] != b"\0" * 4
    ]
    first_of_last = commits[-2] + 1
    assert commits[-1] > first_of_last  # the last transaction has more than its commit frame
    with open(wal, "r+b") as fh:
        fh.seek(32 + first_of_last * FRAME + 24 + 100)
        fh.write(b"\xa5" * 64)
    engine = setup.open_engine(data, world.clock)
    try:
        assert journal.verify().ok
        redeemed = [e.serial for e in journal.Entry.select().where(journal.Entry.kind == "redeem")]
        assert redeemed == [serial_of(c) for c in coupons[:3]]
        assert engine.redeem(coupons[3], BASKET).accepted
    finally:
        engine.db.close()


@pytest.mark.parametrize("where", ["header", "pages"])
def test_a_damaged_database_file_stops_the_terminal_with_a_clear_error(
    world: World, tmp_path: Path, where: str
) -> None:
    coupons = prepare(world, 40)
    engine = setup.open_engine(world.data, world.clock)
    for code in coupons:
        assert engine.redeem(code, BASKET).accepted
    engine.db.close()  # a clean stop: everything checkpointed into journal.db
    db = world.data / "journal.db"
    size = db.stat().st_size
    assert size >= 8 * 4096
    with open(db, "r+b") as fh:
        if where == "header":
            fh.write(b"not a database " * 7)
        else:  # bit rot in the middle of the file, the header intact
            fh.seek(size // 2)
            fh.write(bytes(range(256)) * 48)  # three pages
    with pytest.raises(setup.NotInitialised, match="journal.db is damaged"):
        setup.open_engine(world.data, world.clock)

    fifo = tmp_path / "scan.fifo"
    cfg = write_config(tmp_path / "redeem.toml", world.data, fifo, kiosk=False)
    daemon = DaemonProc(world.data, cfg, fifo, tmp_path / "logs").start()
    assert daemon.proc is not None
    code = daemon.proc.wait(30)
    out = daemon.output()
    assert code == 2 and "journal.db is damaged" in out, out[-3000:]
    assert "Traceback" not in out and not (world.data / "control.sock").exists()
    verify = cli("journal", "verify", "--data", str(world.data))
    assert verify.returncode == 2 and "journal.db is damaged" in verify.stderr


# ---------------------------------------------------------------- a second writer


def test_a_command_writing_beside_the_daemon_neither_breaks_it_nor_doubles_a_coupon(
    world: World, tmp_path: Path
) -> None:
    """`redeem redeem` (or `clock reset`, `ledger import`) run while the daemon runs writes
    the journal from another process. The daemon used to keep its stale head and fail every
    later scan with storage_failure until restarted; it must reload and count that use."""
    a, b, c = prepare(world, 3)
    daemon = daemon_on(tmp_path, world.data, kiosk=False).start()
    try:
        daemon.wait_ready()
        daemon.new_sale()
        assert daemon.scan(a)["accepted"]
        basket = tmp_path / "basket.json"
        basket.write_text('{"currency": "CNY", "total_minor": 100000}')
        beside = cli("redeem", b, "--basket", str(basket), "--data", str(world.data))
        assert beside.returncode == 0 and "ACCEPTED" in beside.stdout, beside.stderr
        assert daemon.scan(b)["reason"] == Reason.ALREADY_REDEEMED.value
        assert daemon.scan(c)["accepted"]
    finally:
        assert daemon.stop() == 0
    assert accepted_serials(world.data) == [serial_of(a), serial_of(b), serial_of(c)]
