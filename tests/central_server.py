"""The real central on loopback for tests: a backend (SQLite in the data directory, or a
fresh database on the test PostgreSQL cluster), uvicorn serving create_app() in a thread on
127.0.0.1 at a free port, devices that sign their requests, and tills (real terminal
engines) that enroll, pull the ledger and upload their journal over HTTP.

A process holds one terminal journal open at a time (the journal's models share one proxy):
open a Till with `with till.opened():`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn

from coupons import cose, journal, setup
from coupons.clock import Clock, FixedClock
from coupons.engine import Engine
from coupons.ledger_store import ImportResult
from sync import protocol
from sync.central import metrics, scopes
from sync.central.app import create_app
from sync.central.publisher import Publisher, Tick
from sync.central.store import Central
from tests import master_key, postgres

BACKENDS = ["sqlite", "postgresql"]
ROOT = Path(__file__).resolve().parent.parent


def database_for(backend: str, label: str) -> str | None:
    """None for SQLite; else a new database's URL (skips when PostgreSQL is unavailable and
    not required)."""
    if backend == "sqlite":
        return None
    try:
        return postgres.create_database(label)
    except postgres.Unavailable as exc:
        if postgres.required():
            raise
        pytest.skip(str(exc))


class Thread:
    """uvicorn in a thread, on 127.0.0.1 at a free port."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        self.port = int(self.server.servers[0].sockets[0].getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@dataclass
class Device:
    """A terminal's device key and id; makes signed requests."""

    url: str
    clock: Clock
    key: cose.SigningKey
    terminal: str = ""
    store: str = ""
    session: requests.Session = field(default_factory=requests.Session)

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        at: float | None = None,
        key: cose.SigningKey | None = None,
        terminal: str | None = None,
    ) -> requests.Response:
        signed = protocol.sign_headers(
            key or self.key,
            self.terminal if terminal is None else terminal,
            method,
            path,
            body,
            self.clock.now() if at is None else at,
        )
        return self.session.request(
            method,
            self.url + path,
            data=body,
            headers={**signed, **(headers or {})},
            timeout=30,
        )

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.request("GET", path, **kw)

    def post_json(self, path: str, doc: Any, **kw: Any) -> requests.Response:
        return self.request(
            "POST",
            path,
            json.dumps(doc).encode(),
            headers={"Content-Type": "application/json"},
            **kw,
        )

    def push(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        r = self.post_json(protocol.JOURNAL, {"entries": entries})
        assert r.status_code == 200, r.text
        reply: dict[str, Any] = r.json()
        return reply

    def ledger(self, since: int, **headers: str) -> requests.Response:
        return self.get(f"{protocol.LEDGER}?since={since}", headers=headers)


@dataclass
class Running:
    central: Central
    url: str
    clock: Clock
    data: Path
    database: str | None
    work: Path
    session: requests.Session = field(default_factory=requests.Session)
    publisher: Publisher | None = None

    def publish(self) -> Tick:
        """One tick of the central's publisher, as the leading instance makes every
        interval: what changed since reaches every store's ledger."""
        if self.publisher is None:
            self.publisher = Publisher(self.central, on_tick=metrics.observe_tick)
        with self.central.session():
            tick = self.publisher.tick()
            if not tick.leader:  # a `serve` process leads: wait for its tick instead
                self.wait_published()
        return tick

    def wait_published(self, timeout_s: float = 20.0) -> None:
        """Until the leading instance has published everything changed so far."""
        deadline = time.monotonic() + timeout_s
        while True:
            latest = self.central.latest()
            if (
                latest is not None
                and not self.central.changed()
                and not scopes.behind(int(latest.version))
            ):
                return
            assert time.monotonic() < deadline, "the publisher did not catch up in time"
            time.sleep(0.05)

    def enroll_code(self, store: str = "S1", ttl: int = 3600) -> str:
        from sync.central.terminals import new_enroll_code

        code = new_enroll_code(self.central, store, ttl)[0]
        self.publish()  # the store's ledger exists from the publisher's next tick
        return code

    def device(self, store: str = "S1") -> Device:
        key = cose.SigningKey.generate()
        r = self.session.post(
            self.url + protocol.ENROLL,
            json={"code": self.enroll_code(store), "device_key": key.public.hex()},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        doc = r.json()
        return Device(self.url, self.clock, key, doc["terminal"], doc["store"])

    def till(self, store: str = "S1") -> Till:
        return Till(self, self.device(store))

    def admin_token(self) -> str:
        from sync.central.terminals import new_admin_token

        return new_admin_token(self.central, "tests")

    def cli(
        self, *args: str, now: str | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`redeem-central` against this central's data directory and database (`stdin`:
        what it reads, e.g. a password)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDEEM_")}
        env.update(master_key.env(self.work))
        if now:
            env["REDEEM_NOW"] = now
        extra = ["--database", self.database] if self.database else []
        return subprocess.run(
            [sys.executable, "-m", "sync.central.cli", *args, "--data", str(self.data), *extra],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
            input=stdin,
        )


class Till:
    """A real terminal (its own data directory and engine) enrolled at the central."""

    def __init__(self, running: Running, device: Device) -> None:
        self.running = running
        self.device = device
        self.data = running.work / f"till-{device.terminal}"
        setup.init(self.data, running.data / "trust-anchor.json", device.store, device.terminal)
        self.engine: Engine | None = None

    @contextmanager
    def opened(self) -> Iterator[Engine]:
        self.engine = setup.open_engine(self.data, self.running.clock)
        try:
            yield self.engine
        finally:
            self.engine.db.close()
            self.engine = None

    @property
    def terminal(self) -> str:
        return self.device.terminal

    def pull(self) -> ImportResult | None:
        """GET the ledger after the engine's version and import it (None when current)."""
        assert self.engine is not None
        self.running.publish()
        r = self.device.ledger(self.engine.ledger.version)
        assert r.status_code in (200, 204), r.text
        if r.status_code == 204:
            return None
        result = self.engine.import_ledger(r.content)
        assert not result.refused, result.refused
        return result

    def rows(self, start: int = 1) -> list[dict[str, Any]]:
        return [r for r in journal.rows() if r["seq"] >= start]

    def push(self, start: int = 1) -> dict[str, Any]:
        return self.device.push(self.rows(start))


@contextmanager
def running_central(backend: str, work: Path, clock: Clock | None = None) -> Iterator[Running]:
    from tests.conftest import T0

    clock = clock or FixedClock(T0)
    database = database_for(backend, work.name)
    central = Central.init(work / "central", clock.now, database, master_key=master_key.KEY)
    server = Thread(create_app(central))
    try:
        yield Running(central, server.url, clock, work / "central", database, work)
    finally:
        server.stop()
        central.close()
        if database:
            postgres.drop_database(database)


class Drained:
    """A child's pipe read all the time by a thread, so a chatty process never blocks on a
    full pipe (64 KB; the till daemons did, tests/test_daemon.py `Running`). `read()` waits
    for the end of the stream, as the pipe's own would; `lines` and `tail()` show what came
    so far."""

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        for line in self._pipe:
            self.lines.append(line.rstrip())

    def read(self) -> str:
        self._thread.join(30)
        return "".join(line + "\n" for line in self.lines)

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.lines[-n:])

    def close(self) -> None:
        self._pipe.close()


def stderr_of(proc: Any) -> Drained:
    """The drained stderr of a process `serve_process` started."""
    assert isinstance(proc.stderr, Drained)
    return proc.stderr


def serve_process(
    data: Path,
    database: str | None,
    env: dict[str, str] | None = None,
    tls: tuple[Path, Path] | None = None,
) -> Any:
    """`redeem-central serve` as its own process on a free port (HTTPS with a (cert, key)
    pair); returns (process, url)."""
    port = postgres.free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("REDEEM_")}
    cmd = [sys.executable, "-m", "sync.central.cli", "serve", "--data", str(data)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    if database:
        cmd += ["--database", database]
    if tls:
        cmd += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={
            **base,
            **master_key.env(data.parent),
            "REDEEM_CENTRAL_LOG_LEVEL": "warning",
            # Tests wait on the publisher: a short interval keeps them quick.
            "REDEEM_CENTRAL_PUBLISH_INTERVAL_S": "0.2",
            **(env or {}),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stderr = Drained(proc.stderr)  # type: ignore[assignment]
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    verify: Any = str(tls[0]) if tls else True
    deadline = time.monotonic() + 20
    while True:
        try:
            if requests.get(url + "/healthz", timeout=1, verify=verify).status_code == 200:
                return proc, url
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"redeem-central serve did not start: {proc.communicate()[1]}")
        time.sleep(0.05)


def chain(
    *entries: dict[str, Any], start: int = 1, prev: str | None = None
) -> list[dict[str, Any]]:
    """Journal rows with these fields (the rest defaulted), numbered from `start` and
    hash-chained as a terminal writes them."""
    from coupons.journal import GENESIS_HASH, entry_hash

    prev = prev or GENESIS_HASH
    out = []
    for seq, fields in enumerate(entries, start=start):
        e: dict[str, Any] = {
            "seq": seq,
            "at_ms": 1_795_608_000_000 + seq,
            "kind": "ledger",
            "op_id": None,
            "checkout_id": None,
            "accepted": True,
            "reason": "applied",
            "campaign": None,
            "serial": None,
            "customer": None,
            "discount_minor": 0,
            "currency": None,
            "cashier": None,
            "source": "tests",
            "detail": "{}",
            **fields,
            "prev_hash": prev,
        }
        e["hash"] = entry_hash(e)
        prev = e["hash"]
        out.append(e)
    return out
