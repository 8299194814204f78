"""Power cuts: the daemon is SIGKILLed at random moments while scans arrive on its fifo and
from a serial barcode scanner (simulated on a pseudo-terminal, through the real pyserial
driver), and POS tills open, apply and commit checkouts; it is started again. Every answer
a caller got is in the journal exactly once, no coupon is redeemed twice, the chain
verifies and the terminal takes coupons again.

On a till, systemd's Restart=on-failure (systemd/redeem.service) brings the daemon back
after a crash; here PID 1 is not systemd, so the harness restarts it the same way (same
command, same config). That the unit restarts it is shown only by the unit's settings
(tests/test_systemd.py), not by this test."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from coupons.reasons import Reason
from kiosk_ui import tills
from tests.conftest import World
from tests.ptys import Pty
from tests.reliability.harness import (
    PIPE,
    SCANNER,
    SOAK,
    DaemonProc,
    Pos,
    cli_verify,
    fifo_gone,
    prepare,
    read_journal,
    serial_of,
    verify_chain,
    write_config,
)

ROUNDS = 50 if SOAK else 5
FIFO_PER_ROUND = 8
SCANNER_PER_ROUND = 4
POS_PER_ROUND = 4
# + the fresh coupon after each restart
PER_ROUND = FIFO_PER_ROUND + SCANNER_PER_ROUND + POS_PER_ROUND + 1


@dataclass
class PosSale:
    """One POS checkout of one coupon and what the till heard back."""

    code: str
    n: int
    checkout: str | None = None
    hold_seq: int | None = None  # the apply answered: accepted, journal entry
    commit_seq: int | None = None  # the commit answered: accepted, journal entry
    commit_sent: bool = False


@dataclass
class Ledgerbook:
    """What callers were told, over all rounds."""

    pos: list[PosSale] = field(default_factory=list)
    told_accepted: dict[int, str] = field(default_factory=dict)  # journal seq -> kind
    rescans: int = 0
    unknown_pos: int = 0


def caller(errors: list[BaseException], target: Any, *args: Any) -> threading.Thread:
    """A caller thread whose failures (a wrong answer before the cut) reach the test."""

    def run() -> None:
        try:
            target(*args)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def feed_slowly(daemon: DaemonProc, codes: list[str], rng: random.Random) -> None:
    for code in codes:
        try:
            daemon.feed(code)
        except OSError as exc:
            assert fifo_gone(exc), exc
            return
        time.sleep(rng.uniform(0.0, 0.02))


def scan_slowly(daemon: DaemonProc, codes: list[str], rng: random.Random) -> None:
    """A cashier at the serial scanner; scans after the cut go nowhere (no beep)."""
    for code in codes:
        daemon.scan_line(code)
        time.sleep(rng.uniform(0.0, 0.03))


def sell(pos: Pos, sales: list[PosSale], tag: str) -> None:
    """Open, apply, commit; stops at the first request the power cut interrupts."""
    try:
        for sale in sales:
            opened = pos.open(f"{tag}-open-{sale.n}")
            assert opened.status_code == 201, opened.text
            sale.checkout = opened.json()["checkout_id"]
            applied = pos.apply(sale.checkout, sale.code, f"{tag}-apply-{sale.n}")
            assert applied.status_code == 200, applied.text
            decision = applied.json()["decision"]
            assert decision["accepted"], decision
            sale.hold_seq = decision["journal_seq"]
            sale.commit_sent = True
            committed = pos.commit(sale.checkout, f"{tag}-commit-{sale.n}")
            assert committed.status_code == 200, committed.text
            sale.commit_seq = committed.json()["journal_seq"]
    except requests.RequestException:
        return


def test_sigkill_at_random_moments_loses_no_answer_and_redeems_nothing_twice(
    world: World, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    why = f"(seed {seed}: REDEEM_SEED={seed} replays the kill times)"
    pool = prepare(world, ROUNDS * PER_ROUND + 1)
    token = tills.issue(world.data, "till-1")
    fifo = tmp_path / "scan.fifo"
    scanner = Pty(tmp_path / "ttyACM-scanner")
    cfg = write_config(tmp_path / "redeem.toml", world.data, fifo, scanner=scanner.path)
    daemon = DaemonProc(world.data, cfg, fifo, tmp_path / "logs", scanner=scanner).start()
    book = Ledgerbook()
    started = time.monotonic()
    try:
        daemon.wait_ready()
        for rnd in range(ROUNDS):
            fifo_codes = [pool.pop() for _ in range(FIFO_PER_ROUND)]
            scanner_codes = [pool.pop() for _ in range(SCANNER_PER_ROUND)]
            sales = [PosSale(pool.pop(), i) for i in range(POS_PER_ROUND)]
            book.pos += sales
            daemon.new_sale()
            assert daemon.url is not None
            pos = Pos(daemon.url, token, timeout=5)
            errors: list[BaseException] = []
            threads = [
                caller(errors, feed_slowly, daemon, fifo_codes, random.Random(rng.random())),
                caller(errors, scan_slowly, daemon, scanner_codes, random.Random(rng.random())),
                caller(errors, sell, pos, sales, f"r{rnd}"),
            ]
            time.sleep(rng.uniform(0.0, 0.25))
            daemon.kill()  # the power cut
            for t in threads:
                t.join(10)
            assert not errors, f"a caller failed before the cut: {errors[0]!r} {why}"
            # What systemd's Restart=on-failure does on a till (see the module docstring).
            daemon.start()
            daemon.wait_ready()
            daemon.new_sale()  # the sale in progress lived in memory: the cashier starts again
            pos = Pos(daemon.url or "", token)
            recover_pos(pos, world.data, sales, f"r{rnd}", book)
            collect_fifo_answers(daemon, book)
            check(world, book, why)
            rescan_unanswered(daemon, fifo_codes, book, why, PIPE)
            rescan_unanswered(daemon, scanner_codes, book, why, SCANNER)
            fresh = daemon.scan(pool.pop())
            assert fresh["accepted"], f"no coupon accepted after restart {rnd} {why}: {fresh}"
            collect_fifo_answers(daemon, book)
            check(world, book, why)
    finally:
        if daemon.alive():
            daemon.stop()
        scanner.close()
    assert cli_verify(world.data)["ok"], why
    scanned = sum(1 for r in daemon.all_records() if r.get("scan_source") == SCANNER)
    assert scanned, "no scan came through the serial scanner"
    told = Counter(book.told_accepted.values())
    print(
        f"\npower cut: {ROUNDS} rounds in {time.monotonic() - started:.1f} s {why}; "
        f"answers checked: {dict(told)}; unanswered scans rescanned: {book.rescans}; "
        f"POS sales whose answer was lost: {book.unknown_pos}"
    )


def recover_pos(pos: Pos, data: Path, sales: list[PosSale], tag: str, book: Ledgerbook) -> None:
    """The till retries what it got no answer to: a commit with the same Idempotency-Key
    (the engine's journal answers it after a restart). A checkout whose apply got no answer
    is committed too: the checkout is stored, so it is found after the restart, with no
    coupon if the hold never reached the journal."""
    for sale in sales:
        if sale.checkout is None or sale.commit_seq is not None:
            if sale.commit_seq is not None:
                book.told_accepted[sale.commit_seq] = "commit"
                assert sale.hold_seq is not None
                book.told_accepted[sale.hold_seq] = "hold"
            continue
        if sale.hold_seq is None:
            book.unknown_pos += 1
        else:
            book.told_accepted[sale.hold_seq] = "hold"
        key = f"{tag}-commit-{sale.n}" if sale.commit_sent else f"{tag}-recommit-{sale.n}"
        retry = pos.commit(sale.checkout, key)
        assert retry.status_code == 200, retry.text
        body = retry.json()
        if not body["coupons"]:
            # The apply never reached the journal: nothing was held, so nothing is
            # redeemed, and the till sees an empty list (it would apply the coupon again).
            assert sale.hold_seq is None, "a held coupon was lost"
            continue
        assert body["accepted"] and [c["serial"] for c in body["coupons"]] == [
            serial_of(sale.code)
        ], body
        sale.commit_seq = body["journal_seq"]
        book.told_accepted[body["journal_seq"]] = "commit"
        if sale.hold_seq is None:  # the hold did land: find its entry for the checks
            entries, _, _ = read_journal(data)
            sale.hold_seq = next(
                e["seq"]
                for e in entries
                if e["kind"] == "hold" and e["accepted"] and e["checkout_id"] == sale.checkout
            )
            book.told_accepted[sale.hold_seq] = "hold"


def collect_fifo_answers(daemon: DaemonProc, book: Ledgerbook) -> None:
    """What the cashier saw for fifo and scanner scans: the daemon's ACCEPTED log lines
    (written after the journal commit, before the display is told) of every run so far."""
    for rec in daemon.all_records():
        if rec.get("scan_source") in (PIPE, SCANNER) and rec["msg"].startswith("ACCEPTED"):
            book.told_accepted[int(rec["journal_seq"])] = "redeem"


def rescan_unanswered(
    daemon: DaemonProc, codes: list[str], book: Ledgerbook, why: str, source: str
) -> None:
    """A coupon whose scan got no answer is scanned again on the same input, as the cashier
    would: accepted if the cut lost it, refused as already used if it had been journaled."""
    entries, _, _ = read_journal(daemon.data)
    by_serial = {e["serial"]: e for e in entries if e["kind"] == "redeem" and e["accepted"]}
    told = _told_serials(entries, book)
    for code in codes:
        serial = serial_of(code)
        if serial in told:
            continue
        book.rescans += 1
        decision = daemon.scan(code, source=source)
        if serial in by_serial:
            assert decision["reason"] == Reason.ALREADY_REDEEMED.value, (why, decision)
        else:
            assert decision["accepted"], (why, decision)


def _told_serials(entries: list[dict[str, Any]], book: Ledgerbook) -> set[str]:
    by_seq = {e["seq"]: e for e in entries}
    return {by_seq[s]["serial"] for s in book.told_accepted if s in by_seq}


def check(world: World, book: Ledgerbook, why: str) -> None:
    entries, uses, meta = read_journal(world.data)
    problem = verify_chain(entries, meta)
    assert problem is None, f"{problem} {why}"
    by_seq = {e["seq"]: e for e in entries}
    for seq, kind in book.told_accepted.items():
        entry = by_seq.get(seq)
        assert entry is not None, f"answered entry {seq} ({kind}) is not in the journal {why}"
        assert entry["kind"] == kind and entry["accepted"], (entry, why)
    taken = Counter(
        e["serial"] for e in entries if e["accepted"] and e["kind"] in ("redeem", "hold")
    )
    twice = {s: n for s, n in taken.items() if n > 1}
    assert not twice, f"coupons redeemed more than once: {twice} {why}"
    counting = Counter(u["serial"] for u in uses if u["counts"])
    assert all(n == 1 for n in counting.values()), (counting, why)
    for sale in book.pos:  # a committed checkout is one hold and one commit, no more
        if sale.commit_seq is not None:
            assert sale.checkout is not None
            commits = [
                e for e in entries if e["kind"] == "commit" and e["checkout_id"] == sale.checkout
            ]
            assert len(commits) == 1, (commits, why)
