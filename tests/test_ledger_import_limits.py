"""Oversized ledger input is refused before it is read into memory: `redeem ledger import`
of a 2 GB sparse file, /dev/zero or a FIFO that never ends, and a central (or proxy) that
sends an endless body to the sync client. Clear sentence, no traceback, ledger unchanged."""

from __future__ import annotations

import contextlib
import gzip
import os
import resource
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from coupons import cose
from coupons.clock import FixedClock
from coupons.ledger import ledger_file
from sync.client import Direct, SyncClient
from sync.http import CentralLink, Link, SyncError
from tests import peak_memory
from tests.conftest import T0, World

ROOT = Path(__file__).resolve().parent.parent
RSS_LIMIT_MB = 200  # memory, not speed: a refused file must not be read into it
MIB = 1024 * 1024


def _snapshot(data: Path) -> dict[str, bytes]:
    """Every stored ledger file by name: what "the ledger is unchanged" means on disk."""
    return {p.name: p.read_bytes() for p in sorted((data / "ledger").glob("*"))}


@pytest.fixture
def till(world: World) -> World:
    world.campaign(id="TEN")
    world.sync_ledger()
    assert world.engine.ledger.version == 1
    return world


def import_file(
    data: Path, path: str | Path, *args: str, env_extra: dict[str, str] | None = None
) -> tuple[int, str, float]:
    """`redeem ledger import` in a child process: exit code, stderr, the child's own peak
    RSS (MB, tests/peak_memory.py). The child's address space is capped, so a regression
    fails instead of eating the machine's memory."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3 * 1024 * MIB, 3 * 1024 * MIB))

    env = {k: v for k, v in os.environ.items() if not k.startswith("REDEEM_")}
    env["REDEEM_NOW"] = str(T0)
    env.update(env_extra or {})
    err = data.parent / "import.err"
    report = data.parent / "import.peak"
    report.unlink(missing_ok=True)
    argv = ["ledger", "import", str(path), *args, "--data", str(data)]
    with open(err, "wb") as fh:
        proc = subprocess.Popen(
            peak_memory.command("terminal.cli", argv, report),
            stdout=fh,
            stderr=fh,
            env=env,
            cwd=ROOT,
            preexec_fn=cap,  # noqa: PLW1509 - no threads of ours touch the child
        )
        killer = threading.Timer(60, proc.kill)  # a hang fails the test, it does not stall it
        killer.start()
        try:
            proc.wait()
        finally:
            killer.cancel()
    return proc.returncode, err.read_text(), peak_memory.peak_mb(report)


def assert_refused_unread(till: World, code: int, text: str, rss_mb: float) -> None:
    assert code == 2, text
    assert "Traceback" not in text, text
    assert "larger than 64 MiB" in text and "the ledger is unchanged" in text, text
    assert 0 < rss_mb < RSS_LIMIT_MB, f"peak RSS {rss_mb:.0f} MB"


def test_a_2gb_sparse_file_is_refused_by_its_size(till: World, tmp_path: Path) -> None:
    before = _snapshot(till.data)
    big = tmp_path / "huge.cbor"
    with open(big, "wb") as fh:
        fh.truncate(2 * 1024 * MIB)
    assert_refused_unread(till, *import_file(till.data, big))
    assert _snapshot(till.data) == before
    assert till.reopen().ledger.version == 1


def test_dev_zero_is_refused_after_the_limit(till: World) -> None:
    before = _snapshot(till.data)
    assert_refused_unread(till, *import_file(till.data, "/dev/zero"))
    assert _snapshot(till.data) == before
    assert till.reopen().ledger.version == 1


def test_a_fifo_that_never_ends_is_refused(till: World, tmp_path: Path) -> None:
    before = _snapshot(till.data)
    fifo = tmp_path / "usb.cbor"
    os.mkfifo(fifo)
    stop = threading.Event()

    def write_forever() -> None:
        with contextlib.suppress(BrokenPipeError, OSError), open(fifo, "wb") as fh:
            deadline = time.monotonic() + 60  # bounded even if the reader never stops
            while not stop.is_set() and time.monotonic() < deadline:
                fh.write(b"\x00" * 65536)

    writer = threading.Thread(target=write_forever, daemon=True)
    writer.start()
    try:
        assert_refused_unread(till, *import_file(till.data, fifo))
    finally:
        stop.set()
        writer.join(10)
    assert _snapshot(till.data) == before
    assert till.reopen().ledger.version == 1


def test_the_limit_comes_from_the_flag_or_the_environment(till: World, tmp_path: Path) -> None:
    two_mb = tmp_path / "two.cbor"
    two_mb.write_bytes(b"\x00" * (2 * MIB))
    code, text, _ = import_file(till.data, two_mb, "--max-mb", "1")
    assert code == 2 and "larger than 1 MiB" in text and "Traceback" not in text, text
    code, text, _ = import_file(till.data, two_mb, env_extra={"REDEEM_LEDGER_MAX_MB": "1"})
    assert code == 2 and "larger than 1 MiB" in text, text
    code, text, _ = import_file(till.data, two_mb, env_extra={"REDEEM_LEDGER_MAX_MB": "lots"})
    assert code == 2 and "--max-mb (env REDEEM_LEDGER_MAX_MB) must be a number" in text, text
    # A real ledger file under the limit still imports.
    till.central.publish()
    good = tmp_path / "v2.cbor"
    good.write_bytes(ledger_file(till.central.deltas(1)))
    code, text, _ = import_file(till.data, good, "--max-mb", "1")
    assert code == 0, text
    assert till.reopen().ledger.version == 2


# ---------------------------------------------------------------- the sync client


class Endless(BaseHTTPRequestHandler):
    """A central (or a broken proxy) whose every answer is a body that never ends."""

    gzip = False

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.gzip:
            self.send_header("Content-Encoding", "gzip")
            self.send_header("ETag", '"big"')
        self.end_headers()
        chunk = BOMB if self.gzip else b"0" * 65536
        if self.gzip:  # a small body that unpacks into far more than the limit
            with contextlib.suppress(OSError):
                self.wfile.write(chunk)
            return
        deadline, sent = time.monotonic() + 30, 0
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline and sent < 256 * MIB:  # bounded, stops by itself
                self.wfile.write(chunk)
                sent += len(chunk)

    def log_message(self, *args: object) -> None:
        pass


BOMB = gzip.compress(b"\x00" * (8 * MIB), compresslevel=9)


@contextlib.contextmanager
def endless_central(handler: type[BaseHTTPRequestHandler] = Endless) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_endless_json_answer_is_cut_off() -> None:
    with endless_central() as url:
        link = CentralLink(
            Link(url, max_answer_bytes=MIB, retries=0), None, None, FixedClock(T0), retry=False
        )
        with pytest.raises(SyncError) as err:
            link.request("GET", "/v1/anything", signed=False)
        link.close()
    assert err.value.kind == "protocol"
    assert "larger than 1 MiB" in err.value.message


def _client(world: World, url: str) -> SyncClient:
    link = CentralLink(Link(url, retries=0), cose.SigningKey.generate(), "T1", world.clock)
    client = SyncClient(world.data, link, Direct(world.engine))
    client.max_ledger_bytes = MIB
    return client


def test_an_endless_ledger_download_is_dropped(till: World) -> None:
    before = _snapshot(till.data)
    with endless_central() as url:
        client = _client(till, url)
        with pytest.raises(SyncError) as err:
            client.pull_ledger()
        client.link.close()
    assert "larger than 1 MiB as sent" in err.value.message
    assert "the ledger is unchanged" in err.value.message
    assert not list((till.data / "sync").glob("ledger.partial*"))  # not resumed next round
    assert _snapshot(till.data) == before and till.engine.ledger.version == 1


def test_a_ledger_download_that_unpacks_past_the_limit_is_dropped(till: World) -> None:
    class Bomb(Endless):
        gzip = True

    assert len(BOMB) < MIB  # small as sent
    before = _snapshot(till.data)
    with endless_central(Bomb) as url:
        client = _client(till, url)
        with pytest.raises(SyncError) as err:
            client.pull_ledger()
        client.link.close()
    assert "larger than 1 MiB once decompressed" in err.value.message
    assert not list((till.data / "sync").glob("ledger.partial*"))
    assert _snapshot(till.data) == before and till.engine.ledger.version == 1
