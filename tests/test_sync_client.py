"""The terminal's sync client: signed requests, backoff, the device key, the clock-offset
policy, and rounds against the real central on loopback (uvicorn, SQLite) with faults:
500s, hangs, resets, truncated answers. Nothing lost, nothing applied twice."""

from __future__ import annotations

import http.server
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sync import protocol
from sync.client import Backoff, Direct, SyncClient
from sync.device import ensure_device_key, read_device_key
from sync.http import CentralLink, Link, SyncError
from terminal import cose
from terminal.clock import FixedClock
from terminal.journal import get_meta
from terminal.reasons import Reason
from tests.conftest import T0, World, basket

# ---------------------------------------------------------------- no central needed


class _Echo(http.server.BaseHTTPRequestHandler):
    """Checks each request's signature as the central does and answers with the verdict."""

    public_key: bytes = b""
    server_time: float = T0

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            signed = protocol.check_signature(
                self.headers, self.command, self.path, body, self.public_key, self.server_time
            )
            status, text = 200, f'{{"terminal": "{signed.terminal}"}}'
        except protocol.AuthError as exc:
            status, text = exc.status, f'{{"detail": "{exc.detail}"}}'
        payload = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header(protocol.HEADER_SERVER_TIME, f"{self.server_time:.3f}")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo() -> Iterator[tuple[str, type[_Echo]]]:
    handler = type("Handler", (_Echo,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_requests_are_signed_as_the_protocol_says_and_the_clock_offset_is_measured(
    echo: tuple[str, type[_Echo]],
) -> None:
    url, handler = echo
    key = cose.SigningKey.generate()
    handler.public_key = key.public
    handler.server_time = T0 + 42.0
    link = CentralLink(Link(url), key, "T-9", FixedClock(T0))
    got = link.get_json(protocol.LEDGER, params={"since": 7, "x": "a b"}).json()
    assert got == {"terminal": "T-9"}
    link.post_json(protocol.JOURNAL, {"entries": [{"seq": 1}]})
    assert link.best is not None and abs(link.best.offset_s - 42.0) < 1.0
    # Another terminal's key: the central refuses, and the error says so.
    other = CentralLink(Link(url), cose.SigningKey.generate(), "T-9", FixedClock(T0 + 42))
    with pytest.raises(SyncError) as err:
        other.get_json(protocol.FLAGS)
    assert err.value.status == 401 and "signature does not verify" in err.value.message


def test_a_clock_outside_the_replay_window_is_corrected_from_the_central_answer(
    echo: tuple[str, type[_Echo]],
) -> None:
    url, handler = echo
    key = cose.SigningKey.generate()
    handler.public_key = key.public
    handler.server_time = T0 + 3600  # our clock is an hour behind the central's
    link = CentralLink(Link(url), key, "T-9", FixedClock(T0))
    assert link.get_json(protocol.FLAGS).json() == {"terminal": "T-9"}
    assert link.best is not None and abs(link.best.offset_s - 3600) < 1.0


def test_plain_http_is_refused_off_loopback() -> None:
    with pytest.raises(SyncError, match="use https"):
        CentralLink(Link("http://central.example"), None, None, FixedClock(T0))
    CentralLink(Link("https://central.example"), None, None, FixedClock(T0)).close()


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    b = Backoff(base_s=2.0, cap_s=30.0, seed=5)
    assert b.next_delay(60.0) == 60.0  # no failure: the interval
    ceilings = []
    for _ in range(8):
        b.record(False)
        ceilings.append(b.ceiling())
        delays = [b.next_delay(60.0) for _ in range(200)]
        assert all(0.0 <= d <= b.ceiling() for d in delays)
        assert max(delays) > b.ceiling() * 0.8  # jitter spans the whole range
    assert ceilings == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]
    b.record(True)
    assert b.next_delay(60.0) == 60.0


def test_device_key_is_owner_only_and_the_systemd_credential_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    key, path, created = ensure_device_key(tmp_path / "t")
    assert created and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_device_key(tmp_path / "t").public == key.public
    again, _, created = ensure_device_key(tmp_path / "t")
    assert not created and again.public == key.public
    creds = tmp_path / "creds"
    creds.mkdir()
    given = cose.SigningKey.generate()
    (creds / "device-key").write_text(given.seed.hex())
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_device_key(tmp_path / "t").public == given.public


# ---------------------------------------------------------------- clock-offset policy


def test_a_large_clock_offset_refuses_coupons_until_a_sync_measures_it_back(
    world: World,
) -> None:
    world.campaign(id="C1", kind="fixed", amount_minor=500)
    a, b = world.issue("C1", 2)
    world.sync_ledger()
    limit = world.engine.ledger.policy.max_clock_offset_s
    assert limit == 300
    assert not world.engine.record_clock_offset(-(limit + 100.0), 0.01)  # ours runs ahead
    d = world.engine.redeem(a, basket(5000))
    assert d.reason == Reason.CLOCK_UNTRUSTED and "off the central" in d.detail
    # Survives a restart: the last measurement is in Meta.
    world.reopen()
    assert world.engine.redeem(a, basket(5000)).reason == Reason.CLOCK_UNTRUSTED
    assert world.engine.record_clock_offset(1.5, 0.01)
    assert world.engine.redeem(b, basket(5000)).accepted
    flags = [e for e in _entries() if e["reason"] == "clock_offset"]
    assert [f["accepted"] for f in flags] == [False, True]


def _entries() -> list[dict[str, object]]:
    from terminal.journal import rows

    return list(rows())


# ---------------------------------------------------------------- a hanging central


@pytest.fixture
def hanging() -> Iterator[str]:
    """A TCP server that accepts and never answers."""
    srv = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    srv.close()
    for c in held:
        c.close()


def test_a_central_that_never_answers_fails_the_round_quickly_and_loses_nothing(
    world: World, hanging: str, tmp_path: Path
) -> None:
    world.campaign(id="C1", kind="fixed", amount_minor=500)
    (a,) = world.issue("C1", 1)
    world.sync_ledger()
    assert world.engine.redeem(a, basket(5000)).accepted
    head = world.engine.journal.head_seq
    link = CentralLink(
        Link(hanging, read_timeout_s=0.3, retries=0),
        cose.SigningKey.generate(),
        "T1",
        world.clock,
    )
    t0 = time.monotonic()
    result = SyncClient(world.data, link, Direct(world.engine)).run_round()
    assert time.monotonic() - t0 < 3.0
    assert not result.ok and result.error_kind == "timeout"
    assert "did not answer within 0.3 s" in (result.error or "")
    assert get_meta("acked_seq", "0") == "0"
    assert result.journal["backlog"] == head


def test_the_daemon_stops_within_its_budget_while_a_round_hangs(
    world: World, hanging: str, tmp_path: Path
) -> None:
    from terminal.daemon import config as config_mod
    from terminal.daemon.runner import Daemon

    ensure_device_key(world.data)
    world.engine.db.close()
    cfg_path = tmp_path / "d.toml"
    cfg_path.write_text(
        f'[terminal]\ndata = "{world.data}"\n\n[sync]\ncentral = "{hanging}"\n'
        "interval_s = 1\nread_timeout_s = 30\n"
    )
    daemon = Daemon(config_mod.load(cfg_path), world.clock)
    daemon.start()
    try:
        assert daemon.sync is not None
        deadline = time.monotonic() + 5
        while daemon.sync.status()["next_round_in_s"] != 0.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the first round is now waiting on the central
        assert daemon.status()["sync"]["running"]
    finally:
        t0 = time.monotonic()
        daemon.stop()
        took = time.monotonic() - t0
    assert took < 2.0
