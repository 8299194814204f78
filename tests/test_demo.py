"""`python -m demo.run` (what `make demo` runs): the central, two enrolled tills, the real
daemon with camera, NFC and serial scanner, a day with an offline period in which the same
coupon is redeemed at both tills, caught at sync; and Ctrl-C stops everything cleanly."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres import free_port

ROOT = Path(__file__).resolve().parent.parent


def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDEEM_", "DEMO_"))}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def leftovers(cwd: Path) -> list[str]:
    """Processes still running with the demo's directory on their command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(cwd) in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


class Waiting:
    """The demo run without --no-wait, started beside the other one (the two overlap: most
    of a run is waiting on a camera and on processes, not CPU), in its own process group
    as a shell runs a foreground job."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "demo.run"]
            + ["--kiosk-port", str(free_port()), "--central-port", str(free_port())],
            cwd=cwd,
            env=demo_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.seen):
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "".join(self.seen)
            self.seen.append(line)

    def rest(self) -> str:
        while (line := self.lines.get(timeout=5)) is not None:
            self.seen.append(line)
        return "".join(self.seen)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.CompletedProcess[str], Path, Waiting]]:
    waiting = Waiting(tmp_path_factory.mktemp("demo-wait"))
    try:
        cwd = tmp_path_factory.mktemp("demo")
        (cwd / "demo-out").mkdir()
        (cwd / "demo-out" / "stale-file").write_text("from an earlier run")
        proc = subprocess.run(
            [sys.executable, "-m", "demo.run", "--no-wait"]
            + ["--kiosk-port", str(free_port()), "--central-port", str(free_port())],
            cwd=cwd,
            env=demo_env(),
            capture_output=True,
            text=True,
            timeout=300,  # a hang guard only
            check=False,
        )
        yield proc, cwd, waiting
    finally:
        waiting.kill()


@pytest.fixture(scope="module")
def demo(
    runs: tuple[subprocess.CompletedProcess[str], Path, Waiting],
) -> tuple[subprocess.CompletedProcess[str], Path]:
    return runs[0], runs[1]


def step(out: str, label: str) -> str:
    """The story line whose label contains `label`."""
    lines = [line for line in out.splitlines() if label in line]
    assert lines, f"no step {label!r} in:\n{out}"
    return lines[0]


def test_demo_exits_zero_without_errors(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, cwd = demo
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not leftovers(cwd)
    # The demo prints how long its day took (a figure, not a test: speed is for bench/).
    assert re.search(r"elapsed: ([\d.]+) s", proc.stdout)


def test_demo_prints_the_kiosk_url_and_the_manager_pin(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    out = demo[0].stdout
    assert re.search(r"Kiosk \(terminal A\):\s+http://127\.0\.0\.1:\d+/", out)
    assert re.search(r"Manager PIN:\s+\d{6}\b", out)
    assert "Press Ctrl-C" not in out  # --no-wait


def test_demo_prints_the_console_address_and_login(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    line = step(demo[0].stdout, "console: ")
    assert re.search(
        r"console: http://127\.0\.0\.1:\d+/ \(log in as admin, password \S{12,}\)", line
    )


def test_demo_day_ends_in_the_console(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """The console's report, fraud desk and fleet, read through the login form as head
    office would, show the day the demo played: its redemptions, the double redemption
    caught at sync, and both tills."""
    out, cwd = demo[0].stdout, demo[1]
    today = step(out, "    today: ")
    redeemed = re.search(r"today: (\d+) redemptions, (.+) off, (\d+) refused", today)
    assert redeemed and int(redeemed.group(1)) >= 5, today
    assert re.search(r"\d+\.\d\d", redeemed.group(2)), today  # money in major units
    assert "double_redemption" in step(out, "    fraud desk: ")
    assert re.search(r"fleet: 3 terminals \(\S+, \S+, \S+\)", step(out, "    fleet: "))
    kept = cwd / "demo-out" / "console"
    for page in ("report", "flags", "fleet"):
        assert 'id="viewer"' in (kept / f"{page}.html").read_text(encoding="utf-8")
        assert (kept / f"{page}.png").stat().st_size > 10_000  # a screenshot, not a blank


def test_demo_morning_uses_every_input_and_the_pos_api(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    out = demo[0].stdout
    assert "ACCEPTED  -¥20.00" in step(out, "A camera  SPEND100 on a phone")
    assert "ACCEPTED  -¥30.00" in step(out, "A camera  PCT15 on paper")  # capped at 30
    assert "not a coupon (a web link), ignored" in out
    assert "ACCEPTED  -¥10.00" in step(out, "A nfc     NEW10 card tapped")
    assert "ACCEPTED  -¥20.00" in step(out, "A serial  SPEND100 flyer")
    assert '"This coupon is not genuine' in step(out, "FORGED SPEND100")
    assert "HELD      -¥30.00" in step(out, "A pos-api checkout ¥236.00")
    assert "PAID      -¥30.00" in step(out, "A pos-api payment done")
    assert "ACCEPTED  -¥20.00" in step(out, "B cli     SPEND100 at the second till")


def test_demo_shows_a_gift_a_minimum_spend_flash_hours_and_the_best_combination(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    out = demo[0].stdout
    assert "HELD      -¥30.00" in step(out, "A pos-api checkout ¥300.00: apply PCT15")
    assert "+ gift GIFT-TOTE-01" in step(out, "A pos-api checkout ¥300.00: apply TOTE200")
    best = step(out, "best combination of the coupons held")
    assert "PCT15 + TOTE200 = -¥30.00 (worth ¥59.00 with the gift)" in best
    assert "REFUSED   below_minimum" in step(out, "TOTE200 (free tote over ¥200), ¥150.00")
    assert "ACCEPTED  -¥0.00 + gift GIFT-TOTE-01" in step(out, "the same TOTE200, now")
    flash = step(out, "FLASH coupon outside its flash-sale hours")
    assert "REFUSED   outside_hours" in flash
    assert "certain days or hours" in flash
    assert "REFUSED   already_redeemed" in step(out, "the SPEND100 from step 1 (used at A)")


def test_the_double_redemption_offline_is_caught_at_sync(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    out = demo[0].stdout
    assert "exited 0" in step(out, "the central goes away")  # a clean stop
    assert "FAILED (network)" in step(out, "offline      sync A")
    assert "ACCEPTED" in step(out, "A serial  SPEND100 coupon X")
    assert "ACCEPTED" in step(out, "B cli     the SAME coupon X")
    # C is in A's store group: offline, it asks A and refuses what A has just taken.
    assert "ACCEPTED" in step(out, "A serial  SPEND100 coupon Z")
    refused_at_c = step(out, "C pos-api the SAME coupon Z")
    assert "REFUSED   already_redeemed" in refused_at_c
    assert re.search(r"already used at till \S+-001\.", refused_at_c), refused_at_c
    assert "FRAUD FLAG double_redemption of coupon X" in out
    assert "REFUSED   already_redeemed" in step(out, "coupon X a third time")
    assert "REFUSED   already_redeemed" in step(out, "coupon Y (used offline at B)")
    assert "REFUSED   already_redeemed" in step(out, "coupon X again at the second till")


def test_the_summary_comes_from_the_central_and_the_tills(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    out = demo[0].stdout
    assert re.search(r"terminal A SH-PD-001-001: 9 redemptions, ¥180\.00 off", out)
    assert re.search(r"terminal B SH-PD-001-002: 4 redemptions, ¥60\.00 off", out)
    assert "refused at A: already_redeemed x2, bad_signature x1" in out
    assert "refused at B: already_redeemed x2, below_minimum x1, outside_hours x1" in out
    assert "refused at C: already_redeemed x1" in out  # coupon Z, which A holds
    flags = step(out, "fraud flags at the central")
    assert "double_redemption x1" in flags and "forged_token x1" in flags
    assert re.search(r"sync A: backlog 0, .* clock ok", out)
    assert re.search(r"sync B: backlog 0, .* clock ok", out)
    assert re.search(r"sync C: backlog 0, .* clock ok", out)
    assert re.search(r"daemon \(pid \d+\) exited 0", out)
    assert re.search(r"daemon-c \(pid \d+\) exited 0", out)


def test_demo_writes_its_artefacts_under_the_working_directory(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, cwd = demo
    out = cwd / "demo-out"
    assert not (out / "stale-file").exists()  # wiped at start
    assert len((out / "coupons" / "SPEND100" / "tokens.txt").read_text().splitlines()) == 6
    assert list((out / "coupons" / "SPEND100").glob("*.png"))
    assert (out / "video" / "counter.avi").stat().st_size > 0  # what the camera played
    assert (out / "central" / "trust-anchor.json").exists()
    assert (out / "terminal-a" / "manager.json").exists()
    assert not (out / "scanner").exists()  # the pty is closed


def test_ctrl_c_while_waiting_stops_everything_cleanly(
    runs: tuple[subprocess.CompletedProcess[str], Path, Waiting],
) -> None:
    waiting = runs[2]
    waiting.until("Press Ctrl-C to stop", timeout=90)
    os.killpg(waiting.proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    started = time.monotonic()
    assert waiting.proc.wait(timeout=10) == 0, waiting.rest()
    took = time.monotonic() - started
    out = waiting.rest()
    assert took < 10
    assert "Traceback" not in out
    assert "SIGINT: stopping" in out
    assert re.search(r"Manager PIN:\s+\d{6}\b", out)
    assert re.search(r"daemon \(pid \d+\) exited 0", out)
    assert "NFC tag emulator stopped" in out
    pids = [int(p) for p in re.findall(r"(?:central|daemon) (\d+)", out)]
    assert len(pids) == 3  # the central, the daemon, the central again after the outage
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids), pids
    assert not leftovers(waiting.cwd)


def test_the_flash_hours_move_away_from_the_time_the_demo_runs() -> None:
    from datetime import UTC, datetime

    from demo.run import hours_away_from

    hours = ["10:00-11:00", "20:00-21:00"]
    at_2am_shanghai = datetime(2026, 11, 27, 18, 30, tzinfo=UTC)
    assert hours_away_from(at_2am_shanghai, hours, "Asia/Shanghai") == hours
    at_8pm_shanghai = datetime(2026, 11, 27, 12, 30, tzinfo=UTC)
    moved = hours_away_from(at_8pm_shanghai, hours, "Asia/Shanghai")
    assert moved == ["13:00-14:00", "23:00-00:00"]
