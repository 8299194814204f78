"""The daemon: strict config, scans through the one engine worker, the standalone sale,
the control socket, signals (SIGTERM within 5 s with nothing lost, SIGHUP reload),
systemd notify/watchdog and the input restart budget. Real processes and sockets."""

from __future__ import annotations

import array
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from coupons import journal, setup
from coupons.clock import FixedClock
from coupons.journal import Entry
from coupons.reasons import Reason
from coupons.rules import Basket
from terminal.daemon import config as config_mod
from terminal.daemon import control
from terminal.daemon.runner import Daemon
from tests.conftest import T0, World
from tests.postgres import free_port
from tests.ptys import Pty

REPO = Path(__file__).resolve().parent.parent


def prepare(world: World, n: int = 3) -> list[str]:
    """A terminal with a ledger and n fresh coupons; the world's own engine is closed so a
    daemon can own the journal."""
    world.campaign(
        id="SPEND100", kind="threshold", amount_minor=2000, min_spend_minor=10000, stacking="any"
    )
    tokens = world.issue("SPEND100", n)
    world.sync_ledger()
    world.engine.db.close()
    return tokens


def write_config(path: Path, data: Path, body: str = "") -> Path:
    """A daemon config; its kiosk listens on a free port unless `body` says otherwise (two
    test daemons, or a demo, must never fight over 8080; port 0 is refused in a config)."""
    if "[kiosk]" not in body:
        body += f'\n[kiosk]\nhost = "127.0.0.1"\nport = {free_port()}\n'
    path.write_text(f'[terminal]\ndata = "{data}"\n\n[log]\nformat = "json"\n{body}')
    return path


def fifo_input(fifo: Path, name: str = "pipe") -> str:
    return f'\n[[input]]\nname = "{name}"\nkind = "fake"\nfifo = "{fifo}"\n'


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("body", "where", "words"),
    [
        ('[terminal]\nmode = "online"\n', ":2: terminal.mode", "standalone"),
        ('[terminal]\nlang = "en"\ncolour = 3\n', ":3: terminal.colour", "unknown option"),
        ('[kiosk]\nport = "80"\n', ":2: kiosk.port", "expected int"),
        ("[printer]\nx = 1\n", ":1: printer", "unknown section"),
        ('[[input]]\nname = "a"\nkind = "laser"\n', ":3: input[0].kind", "unknown input kind"),
        (
            '[[input]]\nname = "a"\nkind = "fake"\n\n[[input]]\nname = "b"\nkind = "fake"\n'
            "interval_s = -1\n",
            ":8: input[1].interval_s",
            "negative",
        ),
        (
            '[[input]]\nname = "a"\nkind = "fake"\n[[input]]\nname = "a"\nkind = "fake"\n',
            ":5: input[1].name",
            "used twice",
        ),
        (
            '[[output]]\nname = "pole"\nkind = "log"\n\n[[output]]\nname = "pole"\nkind = "log"\n',
            ":6: output[1].name",
            "'pole' is used twice",
        ),
        # There is no input stall timeout (a scanner is rightly quiet for hours).
        ("[watchdog]\nstall_s = 10\n", ":2: watchdog.stall_s", "unknown option"),
        ("[watchdog]\nengine_stall_s = 0\n", ":2: watchdog.engine_stall_s", "positive"),
        ('[log]\nlevel = "LOUD"\n', ":2: log.level", "must be one of"),
        # Out-of-range ports and non-finite or negative durations (TOML has nan and inf):
        # refused by the check, not found out when the kiosk silently does not listen.
        ("[kiosk]\nport = 0\n", ":2: kiosk.port", "from 1 to 65535, not 0"),
        ("[kiosk]\nport = 99999\n", ":2: kiosk.port", "from 1 to 65535, not 99999"),
        ("[sync]\ninterval_s = nan\n", ":2: sync.interval_s", "finite number, not nan"),
        ("[watchdog]\n\nwindow_s = inf\n", ":3: watchdog.window_s", "finite number, not inf"),
        ("[terminal]\nvoid_window_s = -inf\n", ":2: terminal.void_window_s", "not -inf"),
        ("[terminal]\nvoid_window_s = -5\n", ":2: terminal.void_window_s", "must not be negative"),
        (
            '[[input]]\nname = "a"\nkind = "fake"\ninterval_s = nan\n',
            ":4: input[0].interval_s",
            "finite number, not nan",
        ),
        ("[sync]\nmax_backoff_s = -1.5\n", ":2: sync.max_backoff_s", "must not be negative"),
        ("[terminal\n", ":1: syntax", ""),
    ],
)
def test_config_errors_name_the_key_and_line(
    tmp_path: Path, body: str, where: str, words: str
) -> None:
    path = tmp_path / "d.toml"
    path.write_text(body)
    with pytest.raises(config_mod.ConfigError) as err:
        config_mod.load(path)
    assert f"{path}{where}" in str(err.value) and words in str(err.value)


def test_config_check_command_reports_ok_and_errors(tmp_path: Path) -> None:
    good = write_config(tmp_path / "good.toml", tmp_path / "t", fifo_input(tmp_path / "f"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[sync]\ninterval = 5\n")
    ok = subprocess.run(
        [sys.executable, "-m", "terminal.cli", "config", "check", str(good)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    no = subprocess.run(
        [sys.executable, "-m", "terminal.cli", "config", "check", str(bad)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert ok.returncode == 0 and "pipe (fake)" in ok.stdout
    assert no.returncode == 2 and f"{bad}:2: sync.interval" in no.stderr
    assert "Traceback" not in no.stderr


def test_config_check_json_for_scripts(tmp_path: Path) -> None:
    good = write_config(
        tmp_path / "good.toml",
        tmp_path / "t",
        fifo_input(tmp_path / "f") + '\n[[output]]\nname = "pole"\nkind = "log"\n',
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("[sync]\ninterval = 5\n")
    ok, no = (
        subprocess.run(
            [sys.executable, "-m", "terminal.cli", "config", "check", str(f), "--json"],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        for f in (good, bad)
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {
        "file": str(good),
        "ok": True,
        "data": str(tmp_path / "t"),
        "inputs": [{"name": "pipe", "kind": "fake", "enabled": True}],
        "outputs": [{"name": "pole", "kind": "log", "enabled": True}],
    }
    assert no.returncode == 2
    refused = json.loads(no.stdout)
    assert refused["ok"] is False and refused["line"] == 2 and refused["key"] == "sync.interval"
    assert f"{bad}:2: sync.interval" in refused["error"]


def test_scan_test_json_prints_each_scan_and_a_summary(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDEEM_")}
    pty = Pty(tmp_path / "ttyACM0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "terminal.cli", "scan-test", "--serial", str(pty.path)]
        + ["--count", "1", "--seconds", "15", "--json"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The port is flushed when the command opens it, so keep scanning until it has one.
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            pty.write(b"CPN1:SCAN-TEST\r\n")
            time.sleep(0.2)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
        pty.close()
    assert proc.returncode == 0, err
    *scans, summary = [json.loads(line) for line in out.splitlines()]
    assert [(s["source"], s["kind"], s["text"]) for s in scans] == [
        ("scan-test", "serial", "CPN1:SCAN-TEST")
    ]
    assert scans[0]["payload_hex"] == b"CPN1:SCAN-TEST".hex()
    assert summary["scans"] == 1 and summary["health"]["state"] in ("ok", "stopped")


# ---------------------------------------------------------------- in process


def test_scans_become_decisions_and_a_sale_takes_pending_coupons(
    world: World, tmp_path: Path
) -> None:
    a, b, _ = prepare(world)
    cfg = config_mod.load(write_config(tmp_path / "d.toml", world.data, fifo_input(tmp_path / "f")))
    daemon = Daemon(cfg, FixedClock(T0))
    daemon.start()
    try:
        (pipe,) = daemon.inputs
        pipe.feed(a)  # before the cashier keyed in the total: waits for it
        pipe.feed("6901234567892")  # a product barcode: not a coupon, ignored
        wait_for(lambda: daemon.published_count == 2)
        first = daemon.recent[0].decision
        assert first is not None and first.reason is Reason.NEEDS_TOTAL
        assert daemon.recent[1].decision is None and daemon.ignored == 1
        (applied,) = daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 12800}))
        assert applied.accepted and applied.discount_minor == 2000
        pipe.feed(a)  # the same coupon again in the same sale
        pipe.feed(b)  # a second coupon of the same campaign: one per basket
        wait_for(lambda: daemon.published_count == 5)
        reasons = [p.decision.reason for p in list(daemon.recent)[3:] if p.decision]
        assert reasons == [Reason.ALREADY_APPLIED, Reason.NOT_STACKABLE]
    finally:
        daemon.stop()
    world.reopen()
    accepted = Entry.select().where(Entry.accepted & (Entry.kind == "redeem")).count()
    assert accepted == 1 and journal.verify().ok


def wait_for(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def write_scans(fifo: Path, *payloads: str, timeout: float = 15.0) -> None:
    """Scans into a fake input's fifo, returning once the daemon has read them all (the
    pipe holds no unread byte), so a signal sent next finds them in flight, not in the
    kernel's buffer. The daemon makes the fifo from its input thread: wait for it first."""
    wait_for(fifo.is_fifo, timeout)
    fd = os.open(fifo, os.O_WRONLY)  # blocks until the daemon's reader has it open
    try:
        os.write(fd, "".join(p + "\n" for p in payloads).encode())
        unread = array.array("i", [0])

        def drained() -> bool:
            fcntl.ioctl(fd, termios.FIONREAD, unread)
            return unread[0] == 0

        wait_for(drained, timeout)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- as a process


class Running:
    """A `redeem run` subprocess. Its output is read all the time by a thread: a daemon
    logging a thousand decisions would otherwise fill the pipe (64 KB) and stop, mid-sale,
    on its next log line (it did, in tests/test_store_peers.py)."""

    def __init__(self, cfg: Path, env: dict[str, str] | None = None) -> None:
        full = {**os.environ, "REDEEM_NOW": str(T0), "PYTHONPATH": str(REPO), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "terminal.cli", "run", "--config", str(cfg)],
            cwd=REPO,
            env=full,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._out: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._out.append(line)

    def output(self, timeout: float = 10) -> str:
        """Everything the daemon wrote, once it has exited."""
        self.proc.wait(timeout)
        self._reader.join(timeout)
        return "".join(self._out)

    def wait_ready(self, data: Path) -> None:
        wait_for(lambda: (data / "control.sock").exists() and self.proc.poll() is None, 15)

    def terminate(self) -> tuple[int, float, str]:
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)
        elapsed = time.monotonic() - start
        return self.proc.returncode, elapsed, self.output()


def test_sigterm_stops_within_5s_and_loses_no_scan_in_flight(world: World, tmp_path: Path) -> None:
    tokens = prepare(world, 30)
    fifos = [tmp_path / f"scan{i}.fifo" for i in range(3)]
    cfg = write_config(
        tmp_path / "d.toml",
        world.data,
        "".join(fifo_input(f, f"till-{i}") for i, f in enumerate(fifos)),
    )
    run = Running(cfg)
    run.wait_ready(world.data)
    control.request(
        world.data, {"op": "basket", "basket": {"currency": "CNY", "total_minor": 12800}}
    )
    for i, fifo in enumerate(fifos):  # 30 scans over three inputs, then SIGTERM at once
        write_scans(fifo, *tokens[i::3])
    code, _, out = run.terminate()
    assert code == 0, out
    # The daemon's own account: every part stopped inside its one shutdown deadline.
    assert '"msg": "stopped in ' in out and "still running" not in out, out[-2000:]
    world.reopen()
    decided = Entry.select().where(Entry.kind == "redeem").count()
    logged = out.count('"msg": "ACCEPTED') + out.count('"msg": "REFUSED')
    assert decided == logged == 30, out[-2000:]
    accepted = Entry.select().where(Entry.accepted & (Entry.kind == "redeem")).count()
    assert accepted == out.count('"msg": "ACCEPTED') >= 1
    assert journal.verify().ok


def test_sighup_reloads_inputs_and_status_shows_them(world: World, tmp_path: Path) -> None:
    prepare(world)
    cfg = write_config(tmp_path / "d.toml", world.data, fifo_input(tmp_path / "a", "first"))
    run = Running(cfg)
    run.wait_ready(world.data)
    assert set(control.request(world.data, {"op": "status"})["inputs"]) == {"first"}
    write_config(
        cfg, world.data, fifo_input(tmp_path / "a", "first") + fifo_input(tmp_path / "b", "second")
    )
    run.proc.send_signal(signal.SIGHUP)
    wait_for(
        lambda: set(control.request(world.data, {"op": "status"})["inputs"]) == {"first", "second"}
    )
    cfg.write_text("[terminal\n")  # a broken config on reload keeps the running one
    run.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert control.request(world.data, {"op": "status"})["healthy"]
    code, _, out = run.terminate()
    assert code == 0 and "reload refused" in out


def test_sighup_applies_the_log_level_and_warns_about_a_kiosk_change(
    world: World, tmp_path: Path
) -> None:
    prepare(world)
    fifo = tmp_path / "scan.fifo"

    def config(level: str, port: int, name: str) -> str:
        return (
            f'[terminal]\ndata = "{world.data}"\n\n[log]\nformat = "json"\nlevel = "{level}"\n'
            f"\n[kiosk]\nenabled = false\nport = {port}\n" + fifo_input(fifo, name)
        )

    def decisions() -> int:
        return int(control.request(world.data, {"op": "status"})["decisions"])

    cfg = tmp_path / "d.toml"
    cfg.write_text(config("INFO", 8080, "first"))
    run = Running(cfg)
    run.wait_ready(world.data)
    write_scans(fifo, "6901234567892")  # a product barcode: an INFO line, "ignored a scan"
    wait_for(lambda: decisions() == 1)
    cfg.write_text(config("WARNING", 8081, "second"))
    run.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: set(control.request(world.data, {"op": "status"})["inputs"]) == {"second"})
    write_scans(fifo, "6901234567892")
    wait_for(lambda: decisions() == 2)
    code, _, out = run.terminate()
    assert code == 0, out
    assert out.count("ignored a scan") == 1, out  # the second one is below WARNING now
    assert "reload: [kiosk] changed (127.0.0.1:8080 disabled -> 127.0.0.1:8081 disabled)" in out


def test_systemd_hears_ready_watchdog_and_stopping(world: World, tmp_path: Path) -> None:
    prepare(world)
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(10)
        cfg = write_config(tmp_path / "d.toml", world.data, fifo_input(tmp_path / "f"))
        run = Running(cfg, {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"})
        messages = []
        while not any("WATCHDOG=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        code, _, _ = run.terminate()
        while not any("STOPPING=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
    assert messages[0].startswith("READY=1")
    assert code == 0


def test_an_input_that_keeps_failing_exhausts_the_budget_and_exits(
    world: World, tmp_path: Path
) -> None:
    prepare(world)
    broken = tmp_path / "missing-dir" / "scan.fifo"  # the fake input dies at once
    cfg = write_config(
        tmp_path / "d.toml", world.data, fifo_input(broken) + "\n[watchdog]\nrestart_budget = 2\n"
    )
    run = Running(cfg)
    code = run.proc.wait(timeout=20)
    out = run.output()
    assert code == 3
    assert out.count("restarting input pipe") == 2 and "giving up" in out


def test_status_without_a_daemon_is_a_clear_error(tmp_path: Path) -> None:
    setup.init(tmp_path / "t", write_anchor(tmp_path), "S1", "T1")
    proc = subprocess.run(
        [sys.executable, "-m", "terminal.cli", "status", "--data", str(tmp_path / "t")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 2 and "is `redeem run` running?" in proc.stderr


def write_anchor(tmp_path: Path) -> Path:
    from coupons import cose
    from coupons.keys import TrustAnchor

    path = tmp_path / "anchor.json"
    path.write_text(TrustAnchor(cose.SigningKey.generate().public).to_json())
    return path


def test_a_driver_that_cannot_load_is_a_health_warning_not_a_crash(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from drivers import registry

    (token, *_) = prepare(world)
    # As when libzbar is missing: the family's module fails to import.
    monkeypatch.setitem(
        registry.FAMILIES,
        "broken",
        registry.Family("drivers.fake:FakeOptions", "drivers.no_such_module:Driver"),
    )
    cfg = config_mod.load(
        write_config(
            tmp_path / "d.toml",
            world.data,
            fifo_input(tmp_path / "f") + '\n[[input]]\nname = "cam"\nkind = "broken"\n',
        )
    )
    daemon = Daemon(cfg, FixedClock(T0))
    daemon.start()
    try:
        health = daemon.health()
        assert health["cam"]["state"] == "down" and "could not load" in health["cam"]["detail"]
        assert daemon.healthy()  # a warning, not a reason for systemd to restart us
        daemon.supervise_once()  # a driver that cannot load is not restarted in a loop
        assert daemon.exit_code == 0
        daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 12800}))
        daemon.inputs[0].feed(token)
        wait_for(lambda: daemon.published_count == 1)
        assert daemon.recent[0].decision and daemon.recent[0].decision.accepted
    finally:
        daemon.stop()
