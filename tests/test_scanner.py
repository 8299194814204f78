"""The serial scanner driver through real pyserial on a pseudo-terminal: the test writes what
a scanner would send into the master side and checks the scans that come out."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers import registry
from drivers.scan import DEGRADED, OK, STOPPED, Scan
from drivers.scanner.driver import SerialScannerDriver
from drivers.scanner.options import SerialOptions
from tests.ptys import Pty, wait_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def pty(tmp_path: Path) -> Iterator[Pty]:
    p = Pty(tmp_path / "scanner")
    yield p
    p.close()


class Reader:
    """A started driver and the scans it delivered."""

    def __init__(self, driver: SerialScannerDriver) -> None:
        self.driver = driver
        self.scans: queue.Queue[Scan] = queue.Queue()
        driver.start(self.scans.put)
        wait_for(lambda: driver.health().state == OK)

    def take(self, n: int, timeout: float = 5.0) -> list[Scan]:
        deadline = time.monotonic() + timeout
        return [self.scans.get(timeout=max(0.01, deadline - time.monotonic())) for _ in range(n)]

    def payloads(self, n: int) -> list[bytes]:
        return [s.payload for s in self.take(n)]

    def nothing_more(self, wait: float = 0.3) -> None:
        with pytest.raises(queue.Empty):
            self.scans.get(timeout=wait)

    def counter(self, name: str) -> int:
        return self.driver.health().counters.get(name, 0)


@pytest.fixture
def reader(pty: Pty) -> Iterator[Callable[..., Reader]]:
    started: list[Reader] = []

    def make(**options: Any) -> Reader:
        options.setdefault("reconnect_min_s", 0.05)
        options.setdefault("reconnect_max_s", 0.2)
        opts = registry.options_for("serial", {"port": str(pty.path), **options})
        r = Reader(SerialScannerDriver("front-scanner", opts, time.time))
        started.append(r)
        return r

    yield make
    for r in started:
        r.driver.stop()


def test_any_line_end_by_default_and_meta_names_the_port(pty: Pty, reader: Any) -> None:
    r = reader()
    pty.write(b"CR-ONLY\rLF-ONLY\nCRLF\r\n")
    scans = r.take(3)
    assert [s.payload for s in scans] == [b"CR-ONLY", b"LF-ONLY", b"CRLF"]
    assert scans[0].kind == "serial" and scans[0].source == "front-scanner"
    assert scans[0].meta == {"port": str(pty.path)}
    r.nothing_more()


def test_configured_terminator(pty: Pty, reader: Any) -> None:
    r = reader(terminator="\t")
    pty.write(b"ONE\tTWO\t\r\nTHREE\t")
    assert r.payloads(3) == [b"ONE", b"TWO", b"THREE"]


def test_multi_byte_terminator_split_across_writes(pty: Pty, reader: Any) -> None:
    r = reader(terminator="<EOT>")
    pty.write(b"ABC<EO")
    r.nothing_more(0.2)
    pty.write(b"T>DEF<EOT>")
    assert r.payloads(2) == [b"ABC", b"DEF"]


def test_prefix_suffix_and_aim_identifier_are_stripped(pty: Pty, reader: Any) -> None:
    r = reader(prefix="SHOP7:", suffix="#", aim_id=True)
    pty.write(b"SHOP7:]E04006381333931#\r\n]Q1HELLO QR\r\nNO-AFFIXES\r\n")
    scans = r.take(3)
    assert [s.payload for s in scans] == [b"4006381333931", b"HELLO QR", b"NO-AFFIXES"]
    assert scans[0].meta["symbology"] == "]E0"
    assert scans[1].meta["symbology"] == "]Q1"
    assert "symbology" not in scans[2].meta


def test_aim_prefix_kept_when_not_asked_for(pty: Pty, reader: Any) -> None:
    r = reader()
    pty.write(b"]Q1HELLO\r\n")
    assert r.payloads(1) == [b"]Q1HELLO"]


def test_garbage_passes_as_bytes_and_control_noise_is_dropped(pty: Pty, reader: Any) -> None:
    r = reader()
    pty.write(
        b"\x00\x00\xff\xfeBAD\x80\r\n\x00\x00\x7f\x1b\r\n\x00\x00GOOD\x00\r\nGS1\x1d10ABC\r\n"
    )
    scans = r.take(3)
    assert [s.payload for s in scans] == [b"\xff\xfeBAD\x80", b"GOOD", b"GS1\x1d10ABC"]
    assert scans[0].text() == "\\xff\\xfeBAD\\x80"
    r.nothing_more()


def test_partial_line_waits_for_the_rest(pty: Pty, reader: Any) -> None:
    r = reader()
    pty.write(b"PART")
    r.nothing_more(0.3)
    pty.write(b"IAL-42\r\n")
    assert r.payloads(1) == [b"PARTIAL-42"]


def test_very_long_line_is_discarded_and_the_next_is_fine(pty: Pty, reader: Any) -> None:
    r = reader(max_line=64)
    pty.write(b"X" * 5000 + b"\r\nNEXT\r\n" + b"Y" * 65 + b"\r\nLAST\r\n")
    assert r.payloads(2) == [b"NEXT", b"LAST"]
    assert r.counter("too_long") == 2
    r.nothing_more()


def test_many_lines_fast_none_lost(pty: Pty, reader: Any) -> None:
    r = reader()
    sent = [b"COUPON-%05d" % i for i in range(3000)]
    pty.write(b"".join(line + b"\r\n" for line in sent))
    assert [s.payload for s in r.take(len(sent), timeout=10)] == sent
    assert r.counter("scans") == len(sent)


def test_unplug_then_replug_at_the_same_path_recovers(pty: Pty, reader: Any) -> None:
    r = reader()
    pty.write(b"BEFORE\r\n")
    assert r.payloads(1) == [b"BEFORE"]
    pty.write(b"HALF-A-SC")
    # The driver has read the half line before the cable goes.
    wait_for(lambda: r.driver.health().counters.get("bytes_in") == len(b"BEFORE\r\nHALF-A-SC"))
    pty.unplug()
    # The loss is counted as the port closes, just after the state turns degraded.
    wait_for(lambda: r.driver.health().counters.get("partial_lost") == 1)
    health = r.driver.health()
    assert health.state == DEGRADED and health.detail.startswith("reconnecting")
    assert health.counters["reconnects"] == 1 and health.counters["partial_lost"] == 1
    time.sleep(0.3)  # a few failed re-opens while nothing is there
    assert r.driver.health().state == DEGRADED
    pty.plug()
    wait_for(lambda: r.driver.health().state == OK)
    pty.write(b"AFTER\r\n")
    assert r.payloads(1) == [b"AFTER"]


def test_absent_port_is_degraded_until_it_appears(tmp_path: Path) -> None:
    path = tmp_path / "later"
    opts = SerialOptions(port=str(path), reconnect_min_s=0.05, reconnect_max_s=0.1)
    driver = SerialScannerDriver("s", opts, time.time)
    scans: queue.Queue[Scan] = queue.Queue()
    driver.start(scans.put)
    try:
        wait_for(lambda: driver.health().state == DEGRADED)
        assert "reconnecting" in driver.health().detail
        p = Pty(path)
        wait_for(lambda: driver.health().state == OK)
        p.write(b"HELLO\r\n")
        assert scans.get(timeout=5).payload == b"HELLO"
        p.close()
    finally:
        driver.stop()


@pytest.mark.parametrize("present", [True, False], ids=["reading", "reconnecting"])
def test_stop_is_prompt(present: bool, pty: Pty, tmp_path: Path) -> None:
    # Timeouts far longer than the 1 s allowed: only wake() can make stop this quick.
    port = pty.path if present else tmp_path / "absent"
    opts = SerialOptions(
        port=str(port), read_timeout_s=5.0, reconnect_min_s=5.0, reconnect_max_s=5.0
    )
    driver = SerialScannerDriver("s", opts, time.time)
    driver.start(lambda scan: None)
    wait_for(lambda: driver.health().state == (OK if present else DEGRADED))
    time.sleep(0.1)  # well inside the blocking read / the backoff wait
    t0 = time.monotonic()
    driver.stop()
    assert time.monotonic() - t0 < 1.0
    assert not driver.alive and driver.health().state == STOPPED


def test_second_reader_is_refused_not_sharing_bytes(pty: Pty, reader: Any) -> None:
    r = reader()
    opts = SerialOptions(port=str(pty.path), reconnect_min_s=0.05, reconnect_max_s=0.1)
    other = SerialScannerDriver("other", opts, time.time)
    other.start(lambda scan: None)
    try:
        wait_for(lambda: other.health().state == DEGRADED)
        assert "lock" in other.health().detail
        pty.write(b"ONLY-ONCE\r\n")
        assert r.payloads(1) == [b"ONLY-ONCE"]
    finally:
        other.stop()


@pytest.mark.parametrize(
    "doc, key",
    [
        ({}, "port"),
        ({"port": "/dev/ttyACM0", "parity": "X"}, "parity"),
        ({"port": "/dev/ttyACM0", "terminator": ""}, "terminator"),
        ({"port": "/dev/ttyACM0", "baud": 9600}, "baud"),
    ],
)
def test_bad_options_name_the_key(doc: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=f"'{key}'"):
        registry.options_for("serial", doc)


def test_scan_test_command_prints_the_line(pty: Pty) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDEEM_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "terminal.cli", "scan-test", "--serial", str(pty.path),
         "--count", "1", "--seconds", "15"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # The port is flushed when the command opens it, so keep scanning until it has one.
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            pty.write(b"SCAN-TEST-7\r\n")
            time.sleep(0.2)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "serial: 'SCAN-TEST-7'" in out
    assert "1 scan(s)" in out
    assert "Traceback" not in err
