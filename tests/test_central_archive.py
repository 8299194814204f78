"""Retention at the central (sync/central/archive.py): a real till's journal, uploaded
over HTTP, archived two years on; the archive verified offline by `redeem-central
archive-verify`; newer entries and the evidence of undecided flags stay in the database; a
tampered archive is named; a run stopped between writing and pruning is finished by the
next, with the same files and no entry twice."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from coupons.clock import FixedClock
from sync.central import archive, flags
from sync.central.models import FlagRow, JournalRow
from tests.central_server import BACKENDS, ROOT, Running, running_central
from tests.conftest import T0, basket

DAY_S = 24 * 3600


@pytest.fixture(params=BACKENDS)
def central(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Running]:
    with running_central(request.param, tmp_path, FixedClock(T0)) as c:
        c.central.add_campaign(
            {"id": "A1", "kind": "fixed", "currency": "CNY", "amount_minor": 300}
        )
        yield c


@dataclass
class History:
    terminal: str
    old: list[dict[str, Any]]  # stamped at T0
    new: list[dict[str, Any]]  # stamped two years later
    open_evidence: set[int]  # seqs an open flag points at
    cut_ms: int


def _history(c: Running) -> History:
    """A till redeems, replays two coupons (two flags: one resolved, one left open) and
    uploads; two years and a day later it redeems again and uploads; the archive runs a
    day after that."""
    assert isinstance(c.clock, FixedClock)
    till = c.till()
    tokens = [i.token or "" for i in c.central.issue("A1", 3)]
    with till.opened() as engine:
        till.pull()
        for t in tokens[:3]:
            assert engine.redeem(t, basket(2000)).accepted
        assert not engine.redeem(tokens[0], basket(2000)).accepted  # replay: a flag entry
        for t in tokens[:2]:
            assert engine.redeem(t, basket(2000)).accepted is False
        old = till.rows()
    assert till.push()["acked_seq"] == old[-1]["seq"]
    with c.central.session():
        mine = list(FlagRow.select().where(FlagRow.terminal == till.terminal).order_by(FlagRow.seq))
        assert len(mine) == 3 and all(f.status == "open" for f in mine)
        for f in mine[1:]:  # decided: their entries may leave the database
            flags.decide(c.central, f.id, "resolved", "cashier error")
        first = mine[0]
        about = json.loads(first.detail)["about_seq"]
    c.clock.advance(731 * DAY_S)
    late = c.central.issue("A1", 1)[0].token or ""  # a coupon of that time (tokens expire)
    with till.opened() as engine:
        till.pull()
        assert engine.redeem(late, basket(2000)).accepted
        new = till.rows(old[-1]["seq"] + 1)
    assert new and till.push(new[0]["seq"])["acked_seq"] == new[-1]["seq"]
    c.clock.advance(DAY_S)
    cut_ms = archive.cutoff_ms(c.central.now(), None, None)
    assert all(r["at_ms"] < cut_ms for r in old) and all(r["at_ms"] >= cut_ms for r in new)
    return History(till.terminal, old, new, {int(first.seq), about}, cut_ms)


def _stored(c: Running, terminal: str) -> dict[int, str]:
    with c.central.session():
        rows = JournalRow.select(JournalRow.seq, JournalRow.hash).where(
            JournalRow.terminal == terminal
        )
        return {int(r.seq): str(r.hash) for r in rows}


def _archived(out: Path) -> list[dict[str, Any]]:
    rows = []
    for item in archive.read_manifest(out):
        rows += archive.decode((out / item.path).read_bytes(), item.path)
    return rows


def _tree(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _verify_cli(out: Path) -> subprocess.CompletedProcess[str]:
    """Offline: no data directory, no database, only the archive."""
    return subprocess.run(
        [sys.executable, "-m", "sync.central.cli", "archive-verify", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_archive_two_years_on_keeps_newer_and_flagged_entries(
    central: Running, tmp_path: Path
) -> None:
    h = _history(central)
    out = tmp_path / "archive"
    with central.central.session():
        result = archive.archive(central.central, out, h.cut_ms)
    archived_seqs = [r["seq"] for r in h.old if r["seq"] not in h.open_evidence]
    assert result.pruned == len(archived_seqs) and result.held == len(h.open_evidence)

    # The database keeps the newer entries and the open flag's evidence, nothing else.
    kept = _stored(central, h.terminal)
    assert set(kept) == h.open_evidence | {r["seq"] for r in h.new}
    # The archive holds every other old entry once, exactly as the till wrote it.
    by_seq = {r["seq"]: r for r in h.old}
    rows = _archived(out)
    assert [r["seq"] for r in rows] == archived_seqs
    assert rows == [by_seq[s] for s in archived_seqs]
    manifest = archive.read_manifest(out)
    assert {i.terminal for i in manifest} == {h.terminal}
    assert manifest[0].chain_before == "0" * 64  # this terminal's chain from its start

    summary = archive.verify_archive(out)
    assert summary["entries"] == len(archived_seqs)
    gaps = summary["terminals"][h.terminal]["gaps"]
    assert {s for a, b in gaps for s in range(a, b + 1)} <= h.open_evidence
    done = _verify_cli(out)
    assert done.returncode == 0, done.stderr
    assert f"{len(archived_seqs)} entries" in done.stdout and "every hash" in done.stdout

    # Once the flag is decided its entries go too, into a file that closes the gap.
    with central.central.session():
        for f in FlagRow.select().where(FlagRow.status == "open"):
            flags.decide(central.central, f.id, "resolved", None)
        again = archive.archive(central.central, out, h.cut_ms)
    assert again.pruned == len(h.open_evidence) and again.held == 0
    assert set(_stored(central, h.terminal)) == {r["seq"] for r in h.new}
    assert _archived(out) == h.old
    summary = archive.verify_archive(out)
    assert summary["terminals"][h.terminal]["gaps"] == []
    assert summary["terminals"][h.terminal]["chain_after"] == h.old[-1]["hash"]
    assert h.new[0]["prev_hash"] == h.old[-1]["hash"]  # the database continues the archive


def test_tampering_is_named_by_archive_verify(central: Running, tmp_path: Path) -> None:
    h = _history(central)
    out = tmp_path / "archive"
    with central.central.session():
        archive.archive(central.central, out, h.cut_ms)
    item = archive.read_manifest(out)[0]

    flipped = tmp_path / "flipped"
    shutil.copytree(out, flipped)
    raw = bytearray((flipped / item.path).read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (flipped / item.path).write_bytes(bytes(raw))
    bad = _verify_cli(flipped)
    assert bad.returncode == 1 and item.path in bad.stderr, bad.stderr

    # Rewritten with a changed amount and the manifest's SHA-256 made to fit: the entry
    # hash still names the entry.
    forged = tmp_path / "forged"
    shutil.copytree(out, forged)
    rows = archive.decode((forged / item.path).read_bytes(), item.path)
    rows[1]["discount_minor"] = 1
    data = archive.encode(rows)
    (forged / item.path).write_bytes(data)
    doc = json.loads((forged / archive.MANIFEST).read_text())
    doc["files"][0]["sha256"] = hashlib.sha256(data).hexdigest()
    (forged / archive.MANIFEST).write_text(json.dumps(doc))
    bad = _verify_cli(forged)
    assert bad.returncode == 1
    assert f"{item.path}: entry {rows[1]['seq']}: its hash does not match" in bad.stderr

    # A file dropped from the manifest is named too (an unfinished run, or a hidden one).
    dropped = tmp_path / "dropped"
    shutil.copytree(out, dropped)
    doc = json.loads((dropped / archive.MANIFEST).read_text())
    doc["files"] = doc["files"][1:]
    (dropped / archive.MANIFEST).write_text(json.dumps(doc))
    bad = _verify_cli(dropped)
    assert bad.returncode == 1 and f"{item.path}: not listed" in bad.stderr
    assert _verify_cli(out).returncode == 0


class Crash(Exception):
    pass


@pytest.mark.parametrize("stage", ["written", "listed"])
def test_a_run_stopped_before_pruning_is_finished_by_the_next(
    central: Running, tmp_path: Path, stage: str
) -> None:
    h = _history(central)
    before = _stored(central, h.terminal)
    out = tmp_path / "archive"

    def fault(at: str) -> None:
        if at == stage:
            raise Crash(at)

    with central.central.session(), pytest.raises(Crash):
        archive.archive(central.central, out, h.cut_ms, fault=fault)
    assert _stored(central, h.terminal) == before  # nothing pruned
    crashed = _tree(out)
    assert any(k.startswith(archive.ENTRIES) for k in crashed)
    assert (archive.MANIFEST in crashed) == (stage == "listed")

    with central.central.session():
        rerun = archive.archive(central.central, out, h.cut_ms)
    after = _tree(out)
    # The same files, byte for byte; the manifest the crashed run wrote (if it did).
    assert {k: v for k, v in after.items() if k != archive.MANIFEST} == {
        k: v for k, v in crashed.items() if k != archive.MANIFEST
    }
    if stage == "listed":
        assert after[archive.MANIFEST] == crashed[archive.MANIFEST]
        assert rerun.files == [] and rerun.resumed == rerun.pruned > 0
    else:
        assert rerun.files and rerun.resumed == 0
    seqs = [r["seq"] for r in _archived(out)]
    assert len(seqs) == len(set(seqs))  # no entry twice
    assert set(_stored(central, h.terminal)) == h.open_evidence | {r["seq"] for r in h.new}
    assert archive.verify_archive(out)["entries"] == len(seqs)

    with central.central.session():
        third = archive.archive(central.central, out, h.cut_ms)
    assert third.files == [] and third.pruned == 0 and _tree(out) == after


def test_cli_dry_run_and_the_two_year_floor(central: Running, tmp_path: Path) -> None:
    h = _history(central)
    out = tmp_path / "archive"
    now = datetime.fromtimestamp(central.central.now(), UTC).isoformat()
    dry = central.cli("archive", "--out", str(out), "--dry-run", "--json", now=now)
    assert dry.returncode == 0, dry.stderr
    doc = json.loads(dry.stdout)
    assert doc["entries"] == len(h.old) - len(h.open_evidence) and doc["pruned"] == 0
    assert not out.exists() and len(_stored(central, h.terminal)) == len(h.old) + len(h.new)

    young = central.cli("archive", "--out", str(out), "--older-than-days", "30", now=now)
    assert young.returncode == 2 and "kept two years" in young.stderr
    real = central.cli("archive", "--out", str(out), now=now)
    assert real.returncode == 0, real.stderr
    assert f"deleted from the database: {doc['entries']}" in real.stdout
    assert set(_stored(central, h.terminal)) == h.open_evidence | {r["seq"] for r in h.new}
    # What the files hold decompresses with plain gzip, one JSON entry per line.
    item = archive.read_manifest(out)[0]
    lines = gzip.decompress((out / item.path).read_bytes()).decode().splitlines()
    assert json.loads(lines[0])["seq"] == item.first_seq
