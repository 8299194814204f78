"""`python -m demo.run` (what `make demo` runs) tells the whole story and exits 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    cwd = tmp_path_factory.mktemp("demo")
    (cwd / "demo-out").mkdir()
    (cwd / "demo-out" / "stale-file").write_text("from an earlier run")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDEEM_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "demo.run"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc, cwd


def step(out: str, label: str) -> str:
    """The story line whose label contains `label`."""
    lines = [line for line in out.splitlines() if label in line]
    assert lines, f"no step {label!r} in:\n{out}"
    return lines[0]


def test_demo_exits_zero_without_errors(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, _ = demo
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_demo_story_accepts_and_refuses_for_the_right_reasons(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    out = demo[0].stdout
    assert re.search(r"SPEND100 on a ¥128.00 .*ACCEPTED\s+-¥20.00", out)
    assert "REFUSED   below_minimum" in step(out, "SPEND100 on a ¥86.00")
    assert "ACCEPTED  -¥30.00" in step(out, "PCT15 on ¥400.00")  # capped at 30
    assert "ACCEPTED  -¥30.00" in step(out, "FLASH in the 10:00-11:00 hour")
    assert "REFUSED   not_for_customer" in step(out, "NEW10 shown by a gold member")
    assert "ACCEPTED  -¥10.00" in step(out, "NEW10 shown by a first-time shopper")
    assert "gift GIFT-TOTE-01" in step(out, "TOTE200 on a ¥236.00")
    assert "REFUSED   bad_signature" in step(out, "one character changed")
    assert "REFUSED   bad_signature" in step(out, "attacker's key")
    assert "REFUSED   already_redeemed" in step(out, "REPLAY")
    assert "PCT15 + SPEND100 + TOTE200 = -¥50.00" in step(out, "best of 4 coupons")
    assert "FLASH left out (not_stackable)" in step(out, "best of 4 coupons")
    assert "PAID      -¥50.00" in step(out, "POS-1001 paid")
    assert "RELEASED" in step(out, "POS-1002 shopper walks away")
    assert "ACCEPTED  -¥18.00" in step(out, "the released PCT15 coupon")
    assert "ACCEPTED  -¥20.00" in step(out, "typed flyer code")
    assert "REFUSED   outside_hours" in step(out, "FLASH at 15:30")
    assert "这张券已经用过了。" in step(out, "--lang zh_CN")
    assert "hash chain intact" in step(out, "journal verify")
    assert "10 coupons redeemed, ¥178.00 off, 2 gift(s); 6 refused" in step(out, "total")
    assert re.search(r"fraud flags: forged_token x2, replay x1", out)
    assert "今日核销 10 张券，共优惠 ¥178.00" in out
    assert "中文" in out and "这张券不是正规发放的，不能使用。" in out


def test_demo_live_part_runs_the_real_daemon_with_camera_and_nfc(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    out = demo[0].stdout
    assert "ACCEPTED  -¥20.00  [counter-camera" in step(out, "camera: SPEND100 on a phone")
    assert "ACCEPTED  -¥30.00  [counter-camera" in step(out, "camera: PCT15 on paper")
    assert "not a coupon (a web link), ignored" in out
    assert "REFUSED   already_redeemed" in step(out, "SPEND100 phone again")
    assert "REFUSED   bad_signature" in step(out, "a forged SPEND100")
    assert "ACCEPTED  -¥10.00  [nfc-reader" in step(out, "NEW10 card tapped")
    assert re.search(r"SIGTERM: the daemon stopped in [0-4]\.\d\d s with exit code 0", out)
    assert "after the live part: 32 entries, hash chain intact" in out


def test_demo_writes_its_artefacts_under_the_working_directory(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, cwd = demo
    out = cwd / "demo-out"
    assert not (out / "stale-file").exists()  # wiped at start
    assert len((out / "coupons" / "SPEND100" / "tokens.txt").read_text().splitlines()) == 3
    assert list((out / "coupons" / "SPEND100").glob("*.png"))
    assert (out / "ledger.cbor").stat().st_size > 0
    assert (out / "journal.jsonl").read_text().count("\n") >= 20
    assert (out / "journal.csv").read_text().startswith("seq,")
