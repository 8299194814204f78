"""systemd's watchdog and a hung engine: while one engine job is stuck (a stalled SD-card
write on a quiet till) the daemon stops pinging WATCHDOG=1, so systemd restarts it; the
pings resume once the job finishes. A real daemon, worker and notify socket."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from coupons.clock import FixedClock
from coupons.engine import Engine
from coupons.reasons import Reason
from terminal.daemon import config as config_mod
from terminal.daemon.notify import Notifier
from terminal.daemon.runner import Daemon
from tests.conftest import T0, World
from tests.test_daemon import fifo_input, prepare, wait_for, write_config


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify.sock"))
        sock.settimeout(5)
        yield sock


def heard(sock: socket.socket) -> list[str]:
    """Every datagram systemd has been sent so far (without waiting for more)."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(5)


def test_watchdog_pings_stop_while_an_engine_job_hangs_and_resume_after(
    world: World, tmp_path: Path, notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    (token, *_) = prepare(world)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # as systemd's WatchdogSec=2 sets it
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    body = (
        fifo_input(tmp_path / "f")
        + "\n[kiosk]\nenabled = false\n\n[watchdog]\nengine_stall_s = 0.2\n"
    )
    cfg = config_mod.load(write_config(tmp_path / "d.toml", world.data, body))
    daemon = Daemon(cfg, FixedClock(T0), Notifier(notify_socket.getsockname()))
    release = threading.Event()
    daemon.start()
    try:
        assert daemon.worker is not None
        assert notify_socket.recv(4096).decode().startswith("READY=1")
        daemon.supervise_once()
        assert heard(notify_socket) == ["WATCHDOG=1"]

        def stalled_write(engine: Engine) -> bool:  # an SD card that stops answering
            return release.wait(30)

        blocked = daemon.worker.submit(stalled_write)
        daemon.inputs[0].feed(token)  # a coupon scanned meanwhile waits behind it
        wait_for(lambda: not daemon.healthy())
        for _ in range(3):  # the supervisor's ticks while the job hangs
            daemon.supervise_once()
        assert heard(notify_socket) == []
        assert daemon.status()["healthy"] is False  # what `redeem status` shows

        release.set()
        assert blocked.result(5) is True
        wait_for(lambda: daemon.published_count == 1)  # the waiting coupon, not lost
        first = daemon.recent[0].decision
        assert first is not None and first.reason is Reason.NEEDS_TOTAL
        daemon.supervise_once()
        assert heard(notify_socket) == ["WATCHDOG=1"]
        assert daemon.status()["healthy"] is True
    finally:
        release.set()
        daemon.stop()
