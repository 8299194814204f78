"""Issuing from the console (issue 14, item 4) on a real `redeem-central serve` (loopback,
SQLite): a marketer starts a job, its progress fragment is polled to the end, the CSV, PDF
and PNG are downloaded and read back (tokens verify, a QR on page one decodes); a job
interrupted (SIGKILL, or left running part way) is finished by a fresh serve without a
duplicate; bad input is refused at its field; an auditor cannot start a job; a Chinese
campaign name prints in the PDF."""

from __future__ import annotations

import csv
import io
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import requests
from pyzbar import pyzbar

from coupons import cose
from coupons.clock import SystemClock
from coupons.keys import PURPOSE_ISSUER
from coupons.tokens import parse
from sync.central import campaigns, issuing, users
from sync.central.issuing_runner import JobRunner, job_dir
from sync.central.models import AuditRow, CouponRow, IssueJob, from_db_serial
from sync.central.store import Central
from tests.central_server import serve_process
from tests.master_key import KEY

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Central, str]]:
    work = tmp_path_factory.mktemp("issuing")
    central = Central.init(work / "central", SystemClock().now, master_key=KEY)
    with central.session():
        for name, role in (("mia", "marketer"), ("abe", "auditor")):
            users.add_user(central, "test", name, role, PASSWORD)
        for cid, name in (("SPRING", "Spring sale"), ("CNY", "春季大促"), ("NAP", "Nap"),
                          ("OVER", "Over")):  # fmt: skip
            central.add_campaign({"id": cid, "name": name, "kind": "fixed", "currency": "CNY",
                                  "amount_minor": 2000})  # fmt: skip
        campaigns.pause(central, "NAP")
        campaigns.end(central, "OVER")
    proc, url = serve_process(work / "central", None)
    try:
        yield central, url
    finally:
        proc.terminate()
        proc.wait(15)
        central.close()


def _csrf(html: str) -> str:
    found = re.search(r'name="csrftoken" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def login(url: str, name: str) -> requests.Session:
    s = requests.Session()
    form = s.get(url + "/login", timeout=10)
    r = s.post(
        url + "/login",
        data={"name": name, "password": PASSWORD, "csrftoken": _csrf(form.text)},
        timeout=30,
    )
    assert r.status_code == 200 and "/issuing" in r.text, r.text
    return s


def start(s: requests.Session, url: str, **fields: str) -> requests.Response:
    page = s.get(url + "/issuing", timeout=10)
    form = {"campaign": "SPRING", "count": "10", "kind": "token", **fields}
    return s.post(
        url + "/issuing",
        data={**form, "csrftoken": _csrf(page.text)},
        allow_redirects=False,
        timeout=30,
    )


def wait_done(s: requests.Session, url: str, job_id: int, timeout_s: float = 240) -> str:
    """Poll the job's progress fragment, as its page does, until the job has ended."""
    deadline = time.monotonic() + timeout_s
    seen: list[int] = []
    while True:
        r = s.get(f"{url}/issuing/{job_id}/progress", timeout=10)
        assert r.status_code == 200
        state = re.search(r'data-state="(\w+)"', r.text)
        done = re.search(r'id="job-bar" max="(\d+)" value="(\d+)"', r.text)
        assert state and done, r.text
        seen.append(int(done.group(2)))
        if state.group(1) in ("done", "failed"):
            assert seen == sorted(seen)  # the bar never goes back
            return r.text
        assert 'hx-get="/issuing/' in r.text  # still running: the fragment polls on
        assert time.monotonic() < deadline, f"job {job_id} is still {state.group(1)}"
        time.sleep(0.2)


def job_id_of(r: requests.Response) -> int:
    assert r.status_code == 303, r.text
    found = re.fullmatch(r"/issuing/(\d+)", r.headers["location"])
    assert found
    return int(found.group(1))


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def qr_tokens(pdf: bytes, tmp: Path) -> set[str]:
    (tmp / "p.pdf").write_bytes(pdf)
    subprocess.run(
        ["pdftoppm", "-r", "200", "-f", "1", "-l", "1", "-png", str(tmp / "p.pdf"), str(tmp / "p")],
        check=True,
    )
    [png] = tmp.glob("p*.png")
    return {f.data.decode() for f in pyzbar.decode(cv2.imread(str(png), cv2.IMREAD_GRAYSCALE))}


def actions(central: Central, action: str) -> list[AuditRow]:
    with central.session():
        return list(AuditRow.select().where(AuditRow.action == action).order_by(AuditRow.id))


def test_a_marketer_issues_2500_with_pdf_and_downloads_csv_pdf_and_png(
    served: tuple[Central, str], tmp_path: Path
) -> None:
    central, url = served
    s = login(url, "mia")
    page = s.get(url + "/issuing", timeout=10).text
    offered = set(re.findall(r'<option value="(\w+)"', page))
    assert offered == {"SPRING", "CNY"}  # the paused and the ended campaign are not offered
    job_id = job_id_of(start(s, url, count="2,500", pdf="1"))
    job_page = s.get(f"{url}/issuing/{job_id}", timeout=10).text
    assert '<script src="/static/htmx.min.js"' in job_page
    assert s.get(url + "/static/htmx.min.js", timeout=10).text.startswith("var htmx=")
    fragment = wait_done(s, url, job_id)
    assert 'data-state="done"' in fragment and "hx-get" not in fragment  # polling stops
    assert 'value="2500"' in fragment

    listed = rows_of(s.get(f"{url}/issuing/{job_id}/coupons.csv", timeout=30).text)
    assert len(listed) == 2500 and len({r["serial"] for r in listed}) == 2500
    key, _ = central._active(PURPOSE_ISSUER)
    for row in listed:
        tok = parse(row["token"])
        assert f"{tok.claims.serial:016x}" == row["serial"] and tok.claims.campaign == "SPRING"
        assert cose.verify_sign1(tok.message, key.public)
    with central.session():
        assert CouponRow.select().where(CouponRow.campaign == "SPRING").count() == 2500

    sheets = re.findall(rf'href="/issuing/{job_id}/sheets/(sheets-\d{{4}}\.pdf)"', fragment)
    assert sheets == ["sheets-0001.pdf", "sheets-0002.pdf", "sheets-0003.pdf"]  # 1,200 a file
    pdf = s.get(f"{url}/issuing/{job_id}/sheets/{sheets[0]}", timeout=30)
    assert pdf.headers["content-type"] == "application/pdf"
    on_page_one = qr_tokens(pdf.content, tmp_path)
    assert len(on_page_one) == 24 and on_page_one <= {r["token"] for r in listed}

    serial = listed[7]["serial"]
    png = s.get(f"{url}/issuing/{job_id}/png/{serial}", timeout=30)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    image = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert [f.data.decode() for f in pyzbar.decode(image)] == [listed[7]["token"]]
    asked = s.get(f"{url}/issuing/{job_id}/png", params={"serial": serial.upper()}, timeout=30)
    assert asked.content == png.content
    assert s.get(f"{url}/issuing/{job_id}/png/{'0' * 16}", timeout=10).status_code == 404
    assert s.get(f"{url}/issuing/{job_id}/sheets/..%2Fcentral.db", timeout=10).status_code == 404

    [started] = [e for e in actions(central, "issue_job.start") if e.target == "campaign:SPRING"]
    assert started.actor == "user:mia"
    downloads = [e.after for e in actions(central, "issue_job.download") if "mia" in e.actor]
    assert any("coupons.csv" in d for d in downloads) and any(serial in d for d in downloads)
    assert any("sheets-0001.pdf" in d for d in downloads)
    with central.session():
        out = Path(IssueJob.get_by_id(job_id).out_dir)
    assert out == job_dir(central, job_id).resolve()  # under the data directory
    listing = s.get(url + "/issuing", timeout=10).text
    assert '<progress max="2500" value="2500">' in listing


def test_bad_input_is_refused_at_its_field_and_nothing_is_created(
    served: tuple[Central, str],
) -> None:
    central, url = served
    s = login(url, "mia")
    with central.session():
        before = IssueJob.select().count()
    refused_before = len(actions(central, "refused"))
    for fields, field, text in (
        ({"count": "0"}, "count", "from 1 to 10,000,000"),
        ({"count": str(issuing.COUNT_MAX + 1)}, "count", "from 1 to 10,000,000"),
        ({"count": "ten"}, "count", "from 1 to 10,000,000"),
        ({"campaign": "NAP"}, "campaign", "paused or ended"),
        ({"campaign": "OVER"}, "campaign", "paused or ended"),
        ({"kind": "nfc"}, "kind", "QR tokens or typed codes"),
    ):
        r = start(s, url, **fields)
        assert r.status_code == 400, fields
        found = re.search(rf'<p class="error" id="e-{field}" role="alert">([^<]*)</p>', r.text)
        assert found and text in found.group(1), (fields, r.text)
    with central.session():
        assert IssueJob.select().count() == before
    assert len(actions(central, "refused")) == refused_before + 6
    zh = s.get(url + "/issuing?lang=zh_CN", timeout=10)
    r = start(s, url, count="0")
    assert "券数量必须是 1 到 10,000,000 之间的整数" in r.text
    s.get(url + "/issuing?lang=en", timeout=10)
    assert zh.status_code == 200 and "发券" in zh.text


def test_an_auditor_reads_the_jobs_but_cannot_start_one(served: tuple[Central, str]) -> None:
    central, url = served
    s = login(url, "abe")
    page = s.get(url + "/issuing", timeout=10)
    assert page.status_code == 200 and 'id="issue-form"' not in page.text
    with central.session():
        before = IssueJob.select().count()
    r = s.post(
        url + "/issuing",
        data={"campaign": "SPRING", "count": "5", "kind": "token", "csrftoken": _csrf(page.text)},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 403
    with central.session():
        assert IssueJob.select().count() == before
    assert any(
        "abe" in e.actor and e.target == "POST /issuing" for e in actions(central, "refused")
    )


def test_a_chinese_campaign_name_prints_in_the_pdf(
    served: tuple[Central, str], tmp_path: Path
) -> None:
    _, url = served
    s = login(url, "mia")
    job_id = job_id_of(start(s, url, campaign="CNY", count="30", pdf="1"))
    fragment = wait_done(s, url, job_id)
    assert 'data-state="done"' in fragment, fragment
    pdf = s.get(f"{url}/issuing/{job_id}/sheets/sheets-0001.pdf", timeout=30).content
    (tmp_path / "cny.pdf").write_bytes(pdf)
    text = subprocess.run(
        ["pdftotext", str(tmp_path / "cny.pdf"), "-"], check=True, capture_output=True, text=True
    ).stdout
    assert "春季大促" in text and "CNY 20.00 off" in text


def test_a_failed_job_shows_its_reason_and_offers_no_files(served: tuple[Central, str]) -> None:
    central, url = served
    with central.session(), central.writing():  # failed before any runner could see it
        job = issuing.create_job(central, "SPRING", 5, "token", job_dir(central, 999), "test")
        IssueJob.update(state=issuing.FAILED, error="SheetFontMissing: install a font").where(
            IssueJob.id == job.id
        ).execute()
    s = login(url, "abe")
    fragment = wait_done(s, url, job.id)
    assert 'data-state="failed"' in fragment and "SheetFontMissing: install a font" in fragment
    assert 'id="csv"' not in fragment
    r = s.get(f"{url}/issuing/{job.id}/coupons.csv", timeout=10)
    assert r.status_code == 404 and "has not finished" in r.text


# ---------------------------------------------------------------- restarts
# Last: each test here opens its own Central, which binds the models to its database.


def _finished_by_a_fresh_serve(central: Central, job_id: int) -> issuing.JobView:
    """Start `serve` on the central's data and wait (in the database) for the job to end."""
    proc, _ = serve_process(central.data, None)
    try:
        deadline = time.monotonic() + 240
        while True:
            with central.session():
                job = issuing.get_job(job_id)
            if job.state in (issuing.DONE, issuing.FAILED):
                return job
            assert time.monotonic() < deadline, f"job {job_id} is still {job.state}"
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(15)


def _check_exact(central: Central, job: issuing.JobView, cid: str) -> None:
    assert job.state == issuing.DONE and job.done_count == job.count, job
    rows = issuing.read_csv(Path(job.out_dir))
    serials = [s for s, _, _ in rows]
    assert len(rows) == job.count == len(set(serials))
    with central.session():
        stored = {
            from_db_serial(r.serial) for r in CouponRow.select().where(CouponRow.campaign == cid)
        }
    assert stored == {int(s, 16) for s in serials}  # count rows exactly, the CSV's


@pytest.fixture()
def fresh(tmp_path: Path) -> Iterator[Central]:
    central = Central.init(tmp_path / "central", SystemClock().now, master_key=KEY)
    with central.session():
        central.add_campaign({"id": "BIG", "name": "Big", "kind": "fixed", "currency": "CNY",
                              "amount_minor": 500})  # fmt: skip
    yield central
    central.close()


class Stop(Exception):
    pass


def test_a_job_left_running_part_way_is_finished_by_a_fresh_serve(fresh: Central) -> None:
    central = fresh

    def stop_after_three(done: int, count: int) -> None:
        if done >= 3_000:
            raise Stop

    with central.session():
        job = issuing.create_job(central, "BIG", 7_500, "code", job_dir(central, 1), "test",
                                 chunk=1_000)  # fmt: skip
        with pytest.raises(Stop):
            issuing.run_job(central, job.id, stop_after_three)
        # As an instance that died mid-job leaves it: running, three chunks committed.
        IssueJob.update(state=issuing.RUNNING, error=None).where(IssueJob.id == job.id).execute()
    done = _finished_by_a_fresh_serve(central, job.id)
    _check_exact(central, done, "BIG")


def test_a_serve_killed_mid_job_is_resumed_by_the_next_without_duplicates(
    fresh: Central,
) -> None:
    central = fresh
    with central.session():
        job = issuing.create_job(central, "BIG", 40_000, "code", job_dir(central, 1), "test",
                                 chunk=1_000)  # fmt: skip
    proc, _ = serve_process(central.data, None)
    try:
        deadline = time.monotonic() + 120
        while True:  # kill it once some chunks are committed (the job is under way)
            with central.session():
                seen: Any = issuing.get_job(job.id)
            if seen.done_count > 0 or seen.state == issuing.DONE:
                break
            assert time.monotonic() < deadline, "the runner never started the job"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(15)
    done = _finished_by_a_fresh_serve(central, job.id)
    _check_exact(central, done, "BIG")


def test_a_runner_that_loses_a_chunk_to_another_process_leaves_the_job_to_it(
    fresh: Central,
) -> None:
    """Two processes on one job (a CLI `issue-job resume` while serve runs it): the one
    whose chunk lost does not mark the job failed, and the serve runner finishes it."""
    central = fresh
    with central.session():
        job = issuing.create_job(central, "BIG", 3_000, "code", job_dir(central, 1), "test",
                                 chunk=1_000)  # fmt: skip
        salt = bytes.fromhex(central._get("plain_salt") or "")

        def another_process_moves_on(done: int, count: int) -> None:
            if done == 1_000:
                issuing._run_chunk(central, IssueJob.get_by_id(job.id), salt, 1)

        with pytest.raises(issuing.RunElsewhere):
            issuing.run_job(central, job.id, another_process_moves_on)
        left = issuing.get_job(job.id)
        assert left.state == issuing.RUNNING and left.done_count == 2_000
        runner = JobRunner(central)
        assert runner.run_pending() == 1
        runner.leadership.release()
        _check_exact(central, issuing.get_job(job.id), "BIG")
