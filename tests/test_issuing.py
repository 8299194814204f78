"""Issuing at scale (issue 14, item 4): jobs in chunks, resumed without duplicates, and
their CSV, PDF sheets and PNGs."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from pyzbar import pyzbar

from coupons import cose
from coupons.keys import PURPOSE_ISSUER
from coupons.ledger import store_scope
from coupons.tokens import parse
from sync.central import issuing
from sync.central.delivery import Delivery
from sync.central.models import AuditRow, CouponRow, IssueJob, from_db_serial
from sync.central.publisher import Publisher
from sync.central.store import Central
from sync.central.terminals import new_enroll_code
from tests import master_key
from tests.conftest import World, basket


def _issuer_keys(world: World) -> dict[bytes, bytes]:
    key, _ = world.central._active(PURPOSE_ISSUER)  # the active issuer key signed them
    return {key.kid: key.public}


def _till_accepts(world: World, token: str) -> bool:
    new_enroll_code(world.central, "S1")
    Publisher(world.central).tick()
    answer = Delivery(world.central).answer(store_scope("S1"), 0, {})
    assert world.engine.import_ledger(answer.body).applied
    return world.engine.redeem(token, basket(5000)).accepted


def test_a_large_token_job_issues_unique_serials_whose_tokens_verify(
    world: World, tmp_path: Path
) -> None:
    cid = world.campaign(id="BIG", name="Big day")
    job = issuing.create_job(world.central, cid, 25_000, "token", tmp_path / "out", "test")
    seen: list[int] = []
    done = issuing.run_job(world.central, job.id, lambda d, n: seen.append(d))
    assert done.state == "done" and done.done_count == 25_000
    assert seen == [10_000, 20_000, 25_000]
    rows = issuing.read_csv(tmp_path / "out")
    assert len(rows) == 25_000 and len({s for s, _, _ in rows}) == 25_000
    assert CouponRow.select().where(CouponRow.campaign == cid).count() == 25_000
    keys = _issuer_keys(world)
    for serial, token, code in rows:
        tok = parse(token)
        assert code == "" and f"{tok.claims.serial:016x}" == serial
        assert cose.verify_sign1(tok.message, keys[tok.message.kid])
    assert _till_accepts(world, rows[12_345][1])


class Stop(Exception):
    pass


def test_a_job_stopped_after_two_chunks_resumes_without_duplicates(
    world: World, tmp_path: Path
) -> None:
    cid = world.campaign(id="HALT")
    out = tmp_path / "out"
    job = issuing.create_job(world.central, cid, 5_500, "code", out, "test", chunk=1_000)

    def stop_after_two(done: int, count: int) -> None:
        if done >= 2_000:
            raise Stop

    with pytest.raises(Stop):
        issuing.run_job(world.central, job.id, stop_after_two)
    stopped = issuing.get_job(job.id)
    assert stopped.state == "failed" and stopped.done_count == 2_000
    # A chunk whose commit never happened left a part behind (as a crash mid-chunk would).
    (out / "part-000002.csv.tmp").write_text("not,committed,x\n")
    resumed = issuing.run_job(world.central, job.id)
    assert resumed.state == "done" and resumed.done_count == 5_500
    rows = issuing.read_csv(out)
    serials = [s for s, _, _ in rows]
    assert len(rows) == 5_500 and len(set(serials)) == 5_500
    assert CouponRow.select().where(CouponRow.campaign == cid).count() == 5_500
    assert {int(s, 16) for s in serials} == {  # stored two's-complement past 2**63
        from_db_serial(r.serial) for r in CouponRow.select().where(CouponRow.campaign == cid)
    }
    assert all(re.fullmatch(r"[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}", c) for _, _, c in rows)
    assert [j.id for j in issuing.list_jobs()] == [job.id]


def test_the_csv_has_its_columns_and_no_formula(world: World, tmp_path: Path) -> None:
    cid = world.campaign(id="CSV")
    job = issuing.create_job(world.central, cid, 50, "token", tmp_path, "test")
    issuing.run_job(world.central, job.id)
    with (tmp_path / "coupons.csv").open(newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["serial", "token", "code"]
        cells = [c for row in reader for c in row]
    assert len(cells) == 150
    assert not any(c.startswith(("=", "+", "-", "@", "\t", "\r")) for c in cells)
    assert issuing.coupon_png(tmp_path, issuing.read_csv(tmp_path)[0][0]).startswith(b"\x89PNG")


def test_bad_jobs_are_refused(world: World, tmp_path: Path) -> None:
    cid = world.campaign(id="BAD")
    for count, kind in ((0, "token"), (issuing.COUNT_MAX + 1, "token"), (5, "nfc")):
        with pytest.raises(issuing.CentralError):
            issuing.create_job(world.central, cid, count, kind, tmp_path, "test")
    assert IssueJob.select().count() == 0


def test_a_pdf_of_30_coupons_has_two_pages_and_its_qr_redeems(world: World, tmp_path: Path) -> None:
    cid = world.campaign(id="PDF", name="Spring sale", amount_minor=10_000)
    job = issuing.create_job(world.central, cid, 30, "token", tmp_path, "test", pdf=True)
    issuing.run_job(world.central, job.id)
    [pdf] = sorted(tmp_path.glob("sheets-*.pdf"))
    assert len(re.findall(rb"/Type\s*/Page\b", pdf.read_bytes())) == 2
    subprocess.run(
        ["pdftoppm", "-r", "200", "-f", "1", "-l", "1", "-png", str(pdf), str(tmp_path / "p")],
        check=True,
    )
    [png] = tmp_path.glob("p*.png")
    found = pyzbar.decode(cv2.imread(str(png), cv2.IMREAD_GRAYSCALE))
    tokens = {f.data.decode() for f in found}
    assert len(tokens) == 24  # every coupon on page one reads
    text = subprocess.run(
        ["pdftotext", str(pdf), "-"], check=True, capture_output=True, text=True
    ).stdout
    assert "Spring sale" in text and "CNY 100.00 off" in text
    assert re.search(r"valid until \d{4}-\d{2}-\d{2}", text)
    serials = {s for s, _, _ in issuing.read_csv(tmp_path)}
    assert any(s in text for s in serials)
    assert _till_accepts(world, sorted(tokens)[0])


# ---------------------------------------------------------------- the command line


def _cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDEEM_")}
    env.update(master_key.env(data.parent / "master-key"))
    proc = subprocess.run(
        [sys.executable, "-m", "sync.central.cli", "issue-job", *args, "--data", str(data)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc


def test_cli_starts_lists_resumes_and_audits_a_job(world: World, tmp_path: Path) -> None:
    cid = world.campaign(id="CLI", name="Till test")
    stopped = issuing.create_job(world.central, cid, 30, "token", tmp_path / "old", "test")
    data = world.central.data
    world.central.close()
    out = tmp_path / "new"
    proc = _cli(data, "start", "--campaign", cid, "--count", "30", "--pdf", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "30 coupon(s) for CLI" in proc.stdout and "sheets-0001.pdf" in proc.stdout
    assert len(issuing.read_csv(out)) == 30
    listed = _cli(data, "list", "--json")
    states = {j["id"]: j["state"] for j in json.loads(listed.stdout)["jobs"]}
    assert states == {stopped.id: "queued", stopped.id + 1: "done"}
    assert _cli(data, "resume", "--id", str(stopped.id)).returncode == 0
    serial = issuing.read_csv(out)[0][0]
    png = tmp_path / "one.png"
    assert _cli(data, "png", "--id", "2", "--serial", serial, "--file", str(png)).returncode == 0
    assert png.read_bytes().startswith(b"\x89PNG")
    refused = _cli(data, "start", "--campaign", cid, "--count", "0", "--out", str(out))
    assert refused.returncode == 2 and "count must be between 1 and" in refused.stderr
    c = Central(data, master_key=master_key.KEY)
    try:
        actions = [r.action for r in AuditRow.select().order_by(AuditRow.id)]
    finally:
        c.close()
    assert actions == ["issue_job.start", "issue_job.resume"]
