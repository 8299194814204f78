"""`redeem scan-test --camera FILE` as an installer runs it on a recorded video: it shows what
the file holds and ends when the file ends, instead of waiting out --seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.camera_media import coupon_text, put, qr, scene, write_video

ROOT = Path(__file__).resolve().parent.parent
COUPON = coupon_text(7)


@pytest.fixture(scope="module")
def short_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One second at 30 fps: nothing, a coupon held up for half a second, nothing."""
    bg = scene(3)
    shown = put(bg, qr(COUPON, 5), 320, 240)
    frames = [bg] * 8 + [shown] * 15 + [bg] * 7
    return write_video(tmp_path_factory.mktemp("media") / "counter.avi", frames)


def scan_test(*args: str) -> subprocess.CompletedProcess[str]:
    # --seconds far beyond the test's own timeout: only the end of the file can end it.
    return subprocess.run(
        [sys.executable, "-m", "terminal.cli", "scan-test", *args, "--seconds", "3600"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )


def test_scan_test_ends_when_the_file_ends(short_video: Path) -> None:
    out = scan_test("--camera", str(short_video))
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stdout.splitlines()
    assert any(f"'{COUPON}'" in line for line in lines), out.stdout
    assert f"{short_video}: end of file; not waiting out --seconds" in lines
    assert lines[-1] == "1 scan(s); input health: stopped stopped: end of file"


def test_scan_test_json_says_the_input_ended(short_video: Path) -> None:
    out = scan_test("--camera", str(short_video), "--json")
    assert out.returncode == 0, out.stderr
    *scans, summary = (json.loads(line) for line in out.stdout.splitlines())
    assert [s["text"] for s in scans] == [COUPON]
    assert summary["ended"] is True and summary["scans"] == 1
    assert summary["health"]["detail"] == "stopped: end of file"
