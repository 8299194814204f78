"""A lost or damaged WAL on a till that never synced: the WAL deleted, cut to its header,
its salt flipped, or an older journal.db put back, each after a SIGKILL and after a clean
stop. Every round loses committed redemptions, and every round is refused at start-up and
by verify, naming how many entries are missing. And plain power cuts (a SIGKILL at a
random moment, the mark's last writes lost or torn, as a power cut can leave a file
written without fsync) never raise that alarm.

The writer is a real process (forked from the test, so a round costs milliseconds, not a
daemon start) that opens the terminal's journal and redeems; it is SIGKILLed with the
journal open, or closes it as the daemon's clean stop does. A clean stop checkpoints the
WAL into journal.db and deletes it: nothing is left to lose. So the clean-stop rounds keep
a reader (a backup or an export running) on an older snapshot during the stop, which
leaves the committed transactions in the WAL alone, as SQLite must."""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from coupons import journal, setup
from coupons.clock import FixedClock
from coupons.rules import Basket
from tests.conftest import World
from tests.reliability.harness import SOAK, cli, prepare

ROUNDS = 50 if SOAK else 3
PLAIN_ROUNDS = 50 if SOAK else 5
PER_ROUND = 3  # redemptions a writer makes in a round
BASKET = Basket.from_dict({"currency": "CNY", "total_minor": 10**9})
DAMAGES = ("wal deleted", "wal cut to header", "wal salt flipped", "older journal.db")


def fork_writer(data: Path, clock: FixedClock, codes: list[str], stop: bool) -> tuple[int, int]:
    """A process that redeems `codes` one commit each, writing one byte per answer to a
    pipe; then it closes the journal and exits (stop) or waits for its SIGKILL. Returns
    (pid, read end of the pipe)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(r)
            engine = setup.open_engine(data, clock)
            for code in codes:
                os.write(w, b"A" if engine.redeem(code, BASKET).accepted else b"R")
            if stop:
                engine.db.close()
                status = 0
            else:
                os.write(w, b".")
                time.sleep(120)
        finally:
            os._exit(status)
    os.close(w)
    return pid, r


def read_answers(fd: int, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = os.read(fd, n - len(got))
        assert chunk, f"the writer died after {got!r}"
        got += chunk
    return got


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


@contextmanager
def reader_on_old_snapshot(data: Path) -> Iterator[None]:
    """A read-only connection inside a read transaction (an export, a backup): while it
    lasts, no checkpoint may move newer pages into journal.db."""
    conn = sqlite3.connect(f"file:{data / 'journal.db'}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.execute('SELECT count(*) FROM "entry"').fetchone()
        yield
    finally:
        conn.close()


def head_of(data: Path) -> int:
    setup.open_journal(data)
    try:
        return journal.stored_head()[0]
    finally:
        journal.database_proxy.obj.close()


def damage(data: Path, how: str, older: Path) -> None:
    wal = data / "journal.db-wal"
    if how == "older journal.db":
        shutil.copyfile(older, data / "journal.db")
        wal.unlink(missing_ok=True)
        (data / "journal.db-shm").unlink(missing_ok=True)
        return
    assert wal.stat().st_size > 32, "no WAL left to damage"
    if how == "wal deleted":
        wal.unlink()
    elif how == "wal cut to header":
        os.truncate(wal, 32)
    else:
        with open(wal, "r+b") as fh:  # one byte of the salt in the WAL header
            fh.seek(16)
            byte = fh.read(1)
            fh.seek(16)
            fh.write(bytes([byte[0] ^ 0x5A]))


@pytest.mark.parametrize("stop", ["sigkill", "clean stop"])
@pytest.mark.parametrize("how", DAMAGES)
def test_every_lost_wal_or_older_journal_is_refused_with_the_count_missing(
    world: World, tmp_path: Path, how: str, stop: str
) -> None:
    codes = prepare(world, PER_ROUND)
    template = tmp_path / "template"
    shutil.copytree(world.data, template)
    detected = 0
    for rnd in range(ROUNDS):
        data = tmp_path / f"round-{rnd}"
        shutil.copytree(template, data)
        older = tmp_path / f"older-{rnd}.db"
        shutil.copyfile(data / "journal.db", older)
        before = head_of(data)
        if stop == "sigkill":
            pid, fd = fork_writer(data, world.clock, codes, stop=False)
            assert read_answers(fd, PER_ROUND + 1) == b"A" * PER_ROUND + b"."
            kill(pid)
        else:
            with reader_on_old_snapshot(data):
                pid, fd = fork_writer(data, world.clock, codes, stop=True)
                assert read_answers(fd, PER_ROUND) == b"A" * PER_ROUND
                assert os.waitpid(pid, 0)[1] == 0
        os.close(fd)
        committed = journal.read_mark(data / journal.MARK_NAME)
        assert committed is not None and committed.seq >= before + PER_ROUND
        damage(data, how, older)

        kept = head_of(data)
        missing = committed.seq - kept
        assert missing >= PER_ROUND, (how, stop, rnd, "the damage lost nothing")
        with pytest.raises(setup.DataUnusable) as refused:
            setup.open_engine(data, world.clock)  # the daemon's start and every command
        sentence = str(refused.value)
        assert (
            f"The journal ends at entry {kept} but this till had committed entry "
            f"{committed.seq}: {missing} entries are missing" in sentence
        ), sentence
        setup.open_journal(data)
        result = journal.verify()
        journal.database_proxy.obj.close()
        assert not result.ok and result.missing == missing, result
        if rnd == 0:  # the manager's command, as typed
            verify = cli("journal", "verify", "--data", str(data))
            assert verify.returncode == 1 and f"{missing} entries are missing" in verify.stdout
        detected += 1
        shutil.rmtree(data)
    print(f"\n{how} after {stop}: {detected}/{ROUNDS} rounds detected")
    assert detected == ROUNDS


def test_plain_power_cuts_raise_no_false_alarm(world: World, tmp_path: Path, seed: int) -> None:
    """SIGKILL at a random moment of a run of redemptions (between commits or inside one),
    and in some rounds the mark as a power cut may leave it: its last writes lost (an
    older copy) or one of its two slots torn. The journal is never behind its mark: the
    till opens, verify is OK, every answered coupon stays used and a fresh one redeems."""
    rng = random.Random(seed)
    why = f"(seed {seed}: REDEEM_SEED={seed} replays it)"
    many = 8
    codes = prepare(world, many + 1)
    data = world.data
    mark = data / journal.MARK_NAME
    used: list[str] = []
    alarms = 0
    for rnd in range(PLAIN_ROUNDS):
        batch = codes[:many] if rnd == 0 else [c for c in codes[:many] if c not in used]
        pid, fd = fork_writer(data, world.clock, batch, stop=False)
        told = read_answers(fd, rng.randrange(len(batch) + 1)) if batch else b""
        earlier = mark.read_bytes()
        time.sleep(rng.uniform(0.0, 0.01))  # the cut: between two commits or inside one
        kill(pid)
        os.close(fd)
        assert set(told) <= {ord("A")}, told
        used += batch[: len(told)]
        fate = rng.choice(("kept", "lost writes", "torn slot"))
        if fate == "lost writes":
            mark.write_bytes(earlier)
        elif fate == "torn slot":
            with open(mark, "r+b") as fh:
                fh.seek(rng.choice((0, 512)) + rng.randrange(60))
                fh.write(b"\0" * 20)
        try:
            engine = setup.open_engine(data, world.clock)
        except setup.DataUnusable as exc:
            alarms += 1
            raise AssertionError(f"false alarm in round {rnd} ({fate}): {exc} {why}") from None
        try:
            assert journal.verify().ok, why
            for code in used:
                assert not engine.redeem(code, BASKET).accepted, (code, why)
        finally:
            engine.db.close()
        used = sorted(set(used) | _redeemed(data, codes))
    engine = setup.open_engine(data, world.clock)
    try:
        assert engine.redeem(codes[many], BASKET).accepted
    finally:
        engine.db.close()
    print(f"\nplain power cuts: {PLAIN_ROUNDS} rounds, {alarms} false alarms {why}")


def _redeemed(data: Path, codes: list[str]) -> set[str]:
    """The coupons of `codes` the journal holds as redeemed (answered or not)."""
    from tests.reliability.harness import read_journal, serial_of

    serials = {e["serial"] for e in read_journal(data)[0] if e["accepted"]}
    return {c for c in codes if serial_of(c) in serials}
