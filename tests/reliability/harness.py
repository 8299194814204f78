"""Shared pieces of the reliability suite: a terminal data directory with a ledger and
fresh coupons, the daemon as a real process (spawn, SIGKILL, restart), scans through its
fifo and through a serial scanner simulated on a pseudo-terminal, the POS API over
loopback, and the journal read the way an auditor would."""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from coupons import journal, setup, tokens
from coupons.clock import FixedClock
from coupons.decision import serial_hex
from coupons.ledger import Policy
from drivers.scanner.pty import Pty
from sync.central.store import Central
from tests.conftest import T0, World
from tests.master_key import KEY as MASTER_KEY
from tests.postgres import free_port

REPO = Path(__file__).resolve().parents[2]
# `make soak` sets REDEEM_SOAK=1: the full rounds; anything but empty or "0" counts.
SOAK = os.environ.get("REDEEM_SOAK", "") not in ("", "0")
# Both fuzzers draw from this seed (REDEEM_FUZZ_SEED replays a run).
FUZZ_SEED = int(os.environ.get("REDEEM_FUZZ_SEED", "20261127"))
# The ledger's policy for the suite: no burst detection, since every scan of a run happens
# at the same pinned instant and would look like a burst.
QUIET = Policy(burst_per_terminal=0, burst_per_cashier=0, burst_per_coupon=0)


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll until cond() is truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.01)


# ---------------------------------------------------------------- a terminal


def build_world(root: Path, data: Path, clock: FixedClock) -> World:
    """tests/conftest.py's World with the terminal's data directory where a test wants it
    (on a small tmpfs, say); the central stays under root."""
    central = Central.init(root / "central", clock.now, master_key=MASTER_KEY)
    setup.init(data, root / "central" / "trust-anchor.json", "S1", "T1")
    return World(clock, central, data, setup.open_engine(data, clock))


def prepare(world: World, n: int, policy: Policy = QUIET) -> list[str]:
    """A ledger with one campaign (1.00 off, any number per basket, stacks with anything)
    and n fresh coupons; the world's engine is closed so that a daemon owns the journal."""
    world.central.set_policy(policy)
    world.campaign(id="ONE", kind="fixed", amount_minor=100, stacking="any", per_basket=100_000)
    coupons = world.issue("ONE", n)
    world.sync_ledger()
    world.engine.db.close()
    world.central.db.close()
    return coupons


def serial_of(token: str) -> str:
    return serial_hex(tokens.parse(token).claims.serial)


# ---------------------------------------------------------------- the daemon


PIPE = "pipe"  # the fifo input's name: a scan's source in decisions and log lines
SCANNER = "scanner"  # the serial scanner input's name


def write_config(
    path: Path, data: Path, fifo: Path, kiosk: bool = True, scanner: Path | None = None
) -> Path:
    """The daemon's config: the fifo input, and a serial scanner at `scanner` (the link to
    a Pty, as udev's /dev/serial/by-id/... is) when given."""
    serial = (
        f'\n[[input]]\nname = "{SCANNER}"\nkind = "serial"\nport = "{scanner}"\n'
        # Back soon after a restart (pyserial flushes what the port held when it opens).
        "reconnect_min_s = 0.05\nreconnect_max_s = 0.2\n"
        if scanner is not None
        else ""
    )
    path.write_text(
        f'[terminal]\ndata = "{data}"\n\n[log]\nformat = "json"\n\n'
        # A free port (the config check refuses port 0); a disabled kiosk keeps the default.
        + (
            f'[kiosk]\nhost = "127.0.0.1"\nport = {free_port()}\n\n'
            if kiosk
            else "[kiosk]\nenabled = false\n\n"
        )
        + f'[[input]]\nname = "{PIPE}"\nkind = "fake"\nfifo = "{fifo}"\n'
        + serial
    )
    return path


@dataclass
class DaemonProc:
    """`redeem run` as systemd runs it; every start logs to its own file (outside the data
    directory, which may be full or read-only)."""

    data: Path
    config: Path
    fifo: Path
    logs: Path
    env: dict[str, str] = field(default_factory=dict)
    scanner: Pty | None = None  # the device side of the serial scanner input, if configured
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    url: str | None = None

    def start(self) -> DaemonProc:
        self.starts += 1
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "REDEEM_NOW": str(T0), "PYTHONPATH": str(REPO), **self.env}
        with open(self.log_path(self.starts), "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "terminal.cli", "run", "--config", str(self.config)],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def log_path(self, n: int) -> Path:
        return self.logs / f"daemon-{n}.log"

    def output(self, n: int | None = None) -> str:
        return self.log_path(n or self.starts).read_text(errors="replace")

    def records(self, n: int | None = None) -> list[dict[str, Any]]:
        """The JSON log lines of one start (the last by default)."""
        out = []
        for line in self.output(n).splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:  # the line a SIGKILL cut short
                    pass
        return out

    def all_records(self) -> list[dict[str, Any]]:
        return [r for n in range(1, self.starts + 1) for r in self.records(n)]

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Up when start-up logged its last step (the kiosk, if enabled, said its address)."""

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode}:\n{self.output()[-3000:]}"
                )
            # The last step of start-up is logged; the control socket answers earlier.
            return any(" running: ledger v" in r["msg"] for r in self.records())

        wait_for(ready, timeout, "daemon ready")
        if self.scanner is not None:  # the serial port opens in its own thread
            wait_for(self._scanner_reading, timeout, "scanner port open")
        kiosk = [r for r in self.records() if r["msg"].startswith("kiosk on ")]
        self.url = kiosk[0]["msg"].removeprefix("kiosk on ") if kiosk else None

    def _scanner_reading(self) -> bool:
        health = self.control({"op": "status"})["inputs"].get(SCANNER, {})
        return str(health.get("detail", "")).startswith("reading ")

    def kill(self) -> None:
        """A power cut, as far as this process is concerned."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ------------------------------------------------------------ talking to it

    def control(self, req: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        from terminal.daemon import control

        return control.request(self.data, req, timeout)

    def new_sale(self, total_minor: int = 10**9) -> None:
        reply = self.control(
            {"op": "basket", "basket": {"currency": "CNY", "total_minor": total_minor}}
        )
        assert reply["ok"], reply

    def published(self) -> int:
        return int(self.control({"op": "decisions", "after": 1 << 62})["count"])

    def feed(self, *payloads: str) -> None:
        """Write scans to the fifo; raises OSError when no daemon is reading it."""
        fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, "".join(p + "\n" for p in payloads).encode())
        finally:
            os.close(fd)

    def scan_line(self, payload: str) -> None:
        """What a serial scanner sends for one barcode: the payload and its CR. Never fails:
        with no daemon reading, the line waits in the pty and is flushed at the next open,
        as a scan made while the till is off is lost."""
        assert self.scanner is not None, "no scanner configured"
        self.scanner.write(payload.encode() + b"\r")

    def scan(self, payload: str, timeout: float = 10.0, source: str = PIPE) -> dict[str, Any]:
        """One scan through the fifo (or the serial scanner) and the decision the daemon
        published for it (what the cashier's screen shows)."""
        after = self.published()
        if source == SCANNER:
            self.scan_line(payload)
        else:
            self.feed(payload)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.control({"op": "decisions", "after": after, "wait_s": 1.0})
            for pub in reply["decisions"]:
                if pub["source"] == source:
                    return dict(pub["decision"])
        raise AssertionError(f"no decision for a scan within {timeout} s")


def fifo_gone(exc: OSError) -> bool:
    """The daemon is not reading its fifo (killed): no reader, or the reader went away."""
    return exc.errno in (errno.ENXIO, errno.EPIPE)


class Pos:
    """A till's POS software over the loopback API, with its own bearer token."""

    def __init__(self, url: str, token: str, timeout: float = 10.0) -> None:
        self.url = url + "/api/v1"
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def post(self, path: str, key: str, body: dict[str, Any] | None = None) -> requests.Response:
        return self.http.post(
            self.url + path, json=body, headers={"Idempotency-Key": key}, timeout=self.timeout
        )

    def open(self, key: str, total_minor: int = 10**9) -> requests.Response:
        return self.post(
            "/checkouts", key, {"basket": {"currency": "CNY", "total_minor": total_minor}}
        )

    def apply(self, checkout: str, code: str, key: str) -> requests.Response:
        return self.post(f"/checkouts/{checkout}/coupons", key, {"code": code})

    def commit(self, checkout: str, key: str) -> requests.Response:
        return self.post(f"/checkouts/{checkout}/commit", key)


# ---------------------------------------------------------------- the journal


def read_journal(data: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
    """Entries, coupon uses and Meta of a terminal, read-only: safe beside a running daemon
    and leaves a crashed one's WAL as it found it (a read-only connection never
    checkpoints)."""
    conn = sqlite3.connect(f"file:{data / 'journal.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        with conn:  # one read transaction: one consistent snapshot
            entries = [dict(r) for r in conn.execute('SELECT * FROM "entry" ORDER BY seq')]
            uses = [dict(r) for r in conn.execute('SELECT * FROM "use" ORDER BY id')]
            meta = {r["key"]: r["value"] for r in conn.execute('SELECT * FROM "meta"')}
    finally:
        conn.close()
    return entries, uses, meta


def verify_chain(entries: list[dict[str, Any]], meta: dict[str, str]) -> str | None:
    """journal.verify() over rows read elsewhere: None when the chain is intact."""
    expect = int(meta.get("pruned_seq", "0")) + 1
    prev = meta.get("pruned_hash", journal.GENESIS_HASH)
    for row in entries:
        if row["seq"] != expect:
            return f"entry {expect} is missing (next stored is {row['seq']})"
        fields = {**row, "accepted": bool(row["accepted"])}
        if row["prev_hash"] != prev or journal.entry_hash(fields) != row["hash"]:
            return f"entry {row['seq']} does not verify"
        prev, expect = row["hash"], expect + 1
    return None


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`redeem ...` as a manager types it."""
    full = {**os.environ, "REDEEM_NOW": str(T0), "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "terminal.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=full,
        timeout=60,
    )


def cli_verify(data: Path) -> dict[str, Any]:
    proc = cli("journal", "verify", "--data", str(data), "--json")
    assert proc.returncode in (0, 1), proc.stderr
    return dict(json.loads(proc.stdout))
