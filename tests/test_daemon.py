"""The daemon: strict config, scans through the one engine worker, the standalone sale,
the control socket, signals (SIGTERM within 5 s with nothing lost, SIGHUP reload),
systemd notify/watchdog and the input restart budget. Real processes and sockets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from terminal import journal, setup
from terminal.clock import FixedClock
from terminal.daemon import config as config_mod
from terminal.daemon import control
from terminal.daemon.runner import Daemon
from terminal.journal import Entry
from terminal.reasons import Reason
from terminal.rules import Basket
from tests.conftest import T0, World

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
        assert reasons == [Reason.ALREADY_REDEEMED, Reason.NOT_STACKABLE]
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


# ---------------------------------------------------------------- as a process


class Running:
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

    def wait_ready(self, data: Path) -> None:
        wait_for(lambda: (data / "control.sock").exists() and self.proc.poll() is None, 15)

    def terminate(self) -> tuple[int, float, str]:
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=10)
        return self.proc.returncode, time.monotonic() - start, out


def test_sigterm_stops_within_5s_and_loses_no_scan_in_flight(world: World, tmp_path: Path) -> None:
    tokens = prepare(world, 30)
    fifo = tmp_path / "scan.fifo"
    cfg = write_config(tmp_path / "d.toml", world.data, fifo_input(fifo))
    run = Running(cfg)
    run.wait_ready(world.data)
    control.request(
        world.data, {"op": "basket", "basket": {"currency": "CNY", "total_minor": 12800}}
    )
    with open(fifo, "w") as pipe:  # 30 scans, then SIGTERM at once
        pipe.write("".join(t + "\n" for t in tokens))
    time.sleep(0.3)
    code, took, out = run.terminate()
    assert code == 0, out
    assert took < 5.0
    world.reopen()
    decided = Entry.select().where(Entry.kind == "redeem").count()
    logged = out.count('"msg": "ACCEPTED') + out.count('"msg": "REFUSED')
    assert decided == logged == 30, out[-2000:]
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
    out = run.proc.stdout.read() if run.proc.stdout else ""
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
    from terminal import cose
    from terminal.keys import TrustAnchor

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
