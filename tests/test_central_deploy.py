"""The reference deployment run for real: nginx with deploy/nginx/edge-redeem-central.conf in
front of two `redeem-central serve` processes on one PostgreSQL database, and a fleet of
tills syncing through it with signed requests (the till's own CentralLink, its retries
included). The instance leading the publisher is killed with SIGKILL mid-run: the tills
carry on through the other one, the central holds every journal entry exactly once, and
every till's ledger reaches the newest version of its store's scope.

nginx is Debian's package, which `make test` installs (the Makefile's `nginx` target): when
it is missing this test fails, it does not skip."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import peewee as pw
import pytest
import requests

from coupons import cose, ledger
from coupons.clock import SystemClock
from coupons.journal import GENESIS_HASH
from coupons.keys import TrustAnchor
from sync import protocol
from sync.central import terminals
from sync.central.models import JournalRow, ScopeRow
from sync.central.store import Central
from sync.http import CentralLink, Link, SyncError
from tests import master_key, postgres
from tests.central_server import (
    ROOT,
    Drained,
    Running,
    chain,
    database_for,
    serve_process,
    stderr_of,
)

CONF = ROOT / "deploy" / "nginx" / "edge-redeem-central.conf"
STORES = ["S1", "S2", "S3", "S4"]
TILLS_PER_STORE = 3
ROUNDS = 12
BATCH = 5  # journal entries a till uploads each round
KILL_AFTER = 0.35  # of all rounds done: the leader dies with most of the run still to come


def nginx_binary() -> str:
    """Debian installs it in /usr/sbin, which a user's PATH may not hold."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        pytest.fail(
            "nginx is not installed: the central's reference deployment is tested with it. "
            "`make nginx` (or `apt-get install nginx`) installs Debian's package.",
            pytrace=False,
        )
    return found


def render(conf: str, port: int, instances: list[int]) -> str:
    """The shipped file as the test runs it: plain HTTP on 127.0.0.1:`port` (the ssl_ lines
    out), one upstream line per instance port with the shipped parameters. Nothing else
    changes."""
    out: list[str] = []
    listened = listed = False
    for line in conf.splitlines(keepends=True):
        text = line.strip()
        indent = line[: len(line) - len(line.lstrip())]
        if text.startswith("ssl_"):
            continue
        if text.startswith("listen "):
            if not listened:
                out.append(f"{indent}listen 127.0.0.1:{port};\n")
                listened = True
            continue
        upstream = re.fullmatch(r"server 127\.0\.0\.1:\d+(.*);", text)
        if upstream:
            if not listed:
                out += [f"{indent}server 127.0.0.1:{p}{upstream.group(1)};\n" for p in instances]
                listed = True
            continue
        out.append(line)
    assert listened and listed, "the shipped file has no listen or no upstream server line"
    return "".join(out)


@dataclass(frozen=True)
class Logged:
    """One line of the test's access log (log_format `deploy` below)."""

    method: str
    uri: str
    status: int
    upstreams: list[str]  # every instance nginx tried, in order

    @classmethod
    def parse(cls, line: str) -> Logged:
        head, addr, _, _, _ = line.split('"')
        method, uri, status = head.split()
        return cls(method, uri, int(status), [a.strip() for a in addr.split(",") if a.strip()])


def main_conf(prefix: Path, body: str) -> str:
    """nginx.conf around the http-context file, everything it writes under `prefix`."""
    user = "user root root;\n" if os.geteuid() == 0 else ""  # workers must reach `prefix`
    temp = "\n".join(
        f"    {name}_temp_path {prefix / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes 1;
events {{
    worker_connections 512;
}}
http {{
{temp}
    log_format deploy '$request_method $uri $status "$upstream_addr" "$upstream_status"';
    access_log {prefix / "access.log"} deploy;
{body}
}}
"""


@contextmanager
def nginx(work: Path, instances: list[int]) -> Iterator[tuple[str, Path, Drained]]:
    """nginx in the foreground on a free port of 127.0.0.1: (its URL, access log, stderr)."""
    binary = nginx_binary()
    prefix = work / "nginx"
    prefix.mkdir()
    port = postgres.free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(main_conf(prefix, render(CONF.read_text(), port, instances)))
    proc = subprocess.Popen(
        [binary, "-p", str(prefix), "-c", str(conf), "-g",
         f"daemon off; pid {prefix / 'nginx.pid'}; error_log stderr;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    drain = Drained(proc.stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start:\n{drain.tail()}")
            time.sleep(0.05)
        yield url, prefix / "access.log", drain
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful: lets the access log be written out
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class Instance:
    proc: subprocess.Popen[str]
    url: str
    drain: Drained

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def versions_signed(self) -> float:
        """What /metrics (scraped directly, never through nginx) says it signed."""
        text = requests.get(self.url + "/metrics", timeout=5).text
        m = re.search(r"^edge_redeem_central_versions_published_total (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0


@dataclass
class Till:
    """A terminal as the sync client drives it: the real signed link (urllib3 retries of
    5xx and failed connections included), a hash-chained journal uploaded in batches that
    are sent again until acknowledged, and its store's ledger verified update by update."""

    link: CentralLink
    store: str
    anchor: TrustAnchor
    coupons: list[tuple[str, int]]
    state: ledger.LedgerState = field(default_factory=ledger.LedgerState)
    sent: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    rounds_ok: list[float] = field(default_factory=list)  # when each round ended
    failures: list[str] = field(default_factory=list)

    @property
    def terminal(self) -> str:
        assert self.link.terminal is not None
        return self.link.terminal

    def batch(self, n: int) -> list[dict[str, Any]]:
        """Round n's redemptions, chained after what the till journaled before; the same
        rows until they are acknowledged (a failed upload is sent again, as it stands)."""
        if not self.pending:
            start = n * BATCH + 1
            assert len(self.sent) == start - 1
            prev = self.sent[-1]["hash"] if self.sent else GENESIS_HASH
            now_ms = int(time.time() * 1000)
            self.pending = chain(
                *(
                    {
                        "kind": "redeem",
                        "reason": "ok",
                        "campaign": cid,
                        "serial": f"{serial:016x}",
                        "checkout_id": f"{self.terminal}-{start + i}",
                        "discount_minor": 100,
                        "currency": "CNY",
                        "at_ms": now_ms + i,
                    }
                    for i, (cid, serial) in enumerate(self.coupons[start - 1 : start - 1 + BATCH])
                ),
                start=start,
                prev=prev,
            )
        return self.pending

    def upload(self, n: int) -> None:
        """Round n's batch, unless an earlier try of this round had it acknowledged."""
        if len(self.sent) >= (n + 1) * BATCH:
            return
        batch = self.batch(n)
        doc = self.link.post_json(protocol.JOURNAL, {"entries": batch}).json()
        assert isinstance(doc, dict), doc
        assert doc["problem"] is None and doc["gaps"] == [], doc
        assert doc["acked_seq"] == batch[-1]["seq"], doc
        self.sent += batch
        self.pending = []

    def pull(self) -> int:
        """GET its scope after the version it holds; every update verified and applied as
        the till's ledger store does (signature, chain, scope). The answer's status."""
        answer = self.link.request(
            "GET",
            protocol.LEDGER,
            params={"since": self.state.version, "scope": ledger.store_scope(self.store)},
            headers={"Accept": protocol.LEDGER_MEDIA_TYPE},
        )
        if answer.status == 200:
            for raw in ledger.read_file(answer.body):
                self.state, _ = ledger.apply(self.anchor, self.state, raw, self.store)
        else:
            assert answer.status in (204, 304), answer.status
        return answer.status

    def run(self, rng: random.Random) -> None:
        """ROUNDS rounds of upload then pull. A round that fails is tried again, as the
        daemon's next round would, at most twice."""
        for n in range(ROUNDS):
            for attempt in range(3):
                try:
                    self.upload(n)
                    self.pull()
                    break
                except SyncError as exc:
                    self.failures.append(f"{exc.kind}: {exc.message}")
                    if attempt == 2:
                        raise
                    time.sleep(0.5)
            self.rounds_ok.append(time.monotonic())
            time.sleep(rng.uniform(0.05, 0.25))  # tills do not sync in lockstep


def enroll(url: str, central: Central, store: str, anchor: TrustAnchor) -> Till:
    """Enrollment through nginx (a POST it never retries: the code is spent on first use)."""
    key = cose.SigningKey.generate()
    code, _ = terminals.new_enroll_code(central, store, 600)
    r = requests.post(
        url + protocol.ENROLL, json={"code": code, "device_key": key.public.hex()}, timeout=30
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["store"] == store
    link = CentralLink(Link(url), key, doc["terminal"], SystemClock())
    return Till(link, store, anchor, [])


def test_nginx_accepts_the_shipped_config(tmp_path: Path) -> None:
    """`nginx -t` on the file as shipped (TLS included), only the certificate paths pointed at
    a throwaway certificate, inside an http block as Debian's nginx.conf includes it."""
    binary = nginx_binary()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=central.example.com",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    text = CONF.read_text()
    text = text.replace("/etc/edge-redeem-central/tls/fullchain.pem", str(cert))
    text = text.replace("/etc/edge-redeem-central/tls/privkey.pem", str(key))
    conf = tmp_path / "nginx.conf"
    conf.write_text(main_conf(tmp_path, text))
    result = subprocess.run(
        [binary, "-t", "-p", str(tmp_path), "-c", str(conf), "-g",
         f"pid {tmp_path / 'nginx.pid'}; error_log stderr;"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_render_changes_only_the_address_tls_and_ports() -> None:
    shipped = CONF.read_text()
    rendered = render(shipped, 18000, [18001, 18002, 18003])
    assert re.findall(r"^\s*listen (.*);", rendered, re.M) == ["127.0.0.1:18000"]
    assert not re.findall(r"^\s*ssl_", rendered, re.M)
    assert re.findall(r"server 127\.0\.0\.1:(\d+) max_fails=2 fail_timeout=10s;", rendered) == [
        "18001",
        "18002",
        "18003",
    ]

    def kept(text: str) -> list[str]:
        return [
            ln.strip()
            for ln in text.splitlines()
            if ln.strip() and not re.match(r"\s*(listen|ssl_|server 127)", ln)
        ]

    assert kept(rendered) == kept(shipped)


def test_fleet_through_nginx_survives_an_instance_killed(tmp_path: Path) -> None:
    started = time.monotonic()
    nginx_binary()  # fails at once, before any set-up, when nginx is missing
    database = database_for("postgresql", "deploy")
    assert database is not None
    data = tmp_path / "central"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDEEM_")}
    init = subprocess.run(
        [sys.executable, "-m", "sync.central.cli", "init", "--data", str(data),
         "--database", database],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
        env={**env, **master_key.env(tmp_path)},
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    central = Central(data, database=database, master_key=master_key.KEY)
    instances: list[Instance] = []
    try:
        # A chain-wide campaign (every store's ledger carries its redeemed serials) and one
        # of each store's own (only that store's ledger does).
        fixed = {"kind": "fixed", "currency": "CNY", "amount_minor": 100, "stacking": "any"}
        central.add_campaign({"id": "CHAIN", **fixed})
        for store in STORES:
            central.add_campaign({"id": f"ST-{store}", **fixed, "stores": [store]})
        for name in ("a", "b"):
            proc, url = serve_process(data, database, {"REDEEM_CENTRAL_INSTANCE_ID": name})
            instances.append(Instance(proc, url, stderr_of(proc)))
        running = Running(central, instances[0].url, SystemClock(), data, database, tmp_path)
        running.wait_published()  # every store's scope exists before its tills pull
        anchor = TrustAnchor.load(data / "trust-anchor.json")

        with nginx(tmp_path, [i.port for i in instances]) as (url, access_log, nginx_err):
            tills = [
                enroll(url, central, s, anchor) for s in STORES for _ in range(TILLS_PER_STORE)
            ]
            per_till = ROUNDS * BATCH
            for till in tills:
                half = per_till // 2
                own = central.issue(f"ST-{till.store}", per_till - half)
                shared = central.issue("CHAIN", half)
                till.coupons = [("CHAIN", c.serial) for c in shared] + [
                    (f"ST-{till.store}", c.serial) for c in own
                ]
                random.Random(till.terminal).shuffle(till.coupons)

            errors: list[str] = []

            def drive(till: Till, seed: int) -> None:
                try:
                    till.run(random.Random(seed))
                except BaseException as exc:  # reported in the test's thread
                    errors.append("".join(traceback.format_exception(exc)))

            threads = [
                threading.Thread(target=drive, args=(t, n), daemon=True)
                for n, t in enumerate(tills)
            ]
            t0 = time.monotonic()
            for th in threads:
                th.start()
            total = ROUNDS * len(tills)
            while sum(len(t.rounds_ok) for t in tills) < total * KILL_AFTER:
                assert any(th.is_alive() for th in threads), errors
                time.sleep(0.01)
            # The leader dies: the publisher must move to the other instance too.
            signed = {i.port: i.versions_signed() for i in instances}
            victim = max(instances, key=lambda i: signed[i.port])
            survivor = next(i for i in instances if i is not victim)
            victim.proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            done_before = sum(len(t.rounds_ok) for t in tills)
            for th in threads:
                th.join(60)
            fleet_s = time.monotonic() - t0
            assert not errors, "\n".join(errors)
            assert victim.proc.wait(10) == -signal.SIGKILL

            # Every round of every till succeeded, those after the kill through the survivor.
            assert all(len(t.rounds_ok) == ROUNDS for t in tills)
            after = sum(1 for t in tills for at in t.rounds_ok if at > killed_at)
            assert after >= total * 0.5, (after, total)  # the kill came mid-run
            failures = [f for t in tills for f in t.failures]
            assert all(len(t.failures) <= 1 for t in tills), failures

            # The survivor took over publishing: every scope catches up, and every till's
            # ledger reaches the newest version of its scope, through nginx.
            running.wait_published()
            for till in tills:
                while till.pull() == 200:
                    pass
            assert signed[victim.port] > 0 and survivor.versions_signed() > signed[survivor.port]
            newest = {r.scope: (r.version, bytes(r.chain)) for r in ScopeRow.select()}
            for till in tills:
                scope = ledger.store_scope(till.store)
                assert (till.state.scope, till.state.version, till.state.chain) == (
                    scope,
                    *newest[scope],
                ), till.terminal
            # What each till's ledger holds: every serial redeemed at its store, and the
            # chain-wide campaign's serials redeemed anywhere.
            for till in tills:
                for other in tills:
                    for e in other.sent:
                        if e["campaign"] == "CHAIN" or other.store == till.store:
                            assert int(e["serial"], 16) in till.state.redeemed, (till, e)

            # Every journal entry exactly once.
            rows = list(
                JournalRow.select(
                    JournalRow.terminal,
                    pw.fn.COUNT(pw.SQL("*")),
                    pw.fn.COUNT(pw.fn.DISTINCT(JournalRow.seq)),
                    pw.fn.MAX(JournalRow.seq),
                )
                .group_by(JournalRow.terminal)
                .tuples()
            )
            stored = {term: (n, distinct, top) for term, n, distinct, top in rows}
            assert stored == {t.terminal: (len(t.sent), len(t.sent), len(t.sent)) for t in tills}
            assert all(len(t.sent) == per_till for t in tills)

        # After nginx stopped: what it did with the kill, from its own access log.
        log = [Logged.parse(ln) for ln in access_log.read_text().splitlines()]
        dead = f"127.0.0.1:{victim.port}"
        passed_on = [e for e in log if len(e.upstreams) > 1]
        # The kill was felt (requests on their way to it, or on its idle keep-alive
        # connections) and absorbed: each such request went on to the survivor.
        assert passed_on and all(e.upstreams[-1] != dead for e in passed_on)
        # nginx never handed a till the killed instance's failure (its own 502, 503 or 504):
        # it tried the other one.
        logs = victim.drain.lines + survivor.drain.lines
        assert [e for e in log if e.status in (502, 503, 504)] == [], "\n".join(logs[-20:])
        # The central never answered 500: a deadlock between an upload and the publisher
        # is retried inside the upload (sync/central/ingest.py), and the publisher takes
        # the usage rows in the uploads' order so it rarely happens at all.
        crashed = [ln for ln in logs if "unhandled error on" in ln]
        assert crashed == [], "\n".join(crashed)
        errors_500 = [e for e in log if e.status == 500]
        assert errors_500 == [], "\n".join(logs[-20:])
        retried = ", ".join(sorted({f"{e.method} {e.uri}" for e in passed_on}))
        print(
            f"\nfleet: {len(tills)} tills x {ROUNDS} rounds in {fleet_s:.1f} s "
            f"({total / fleet_s:.0f} rounds/s), {done_before} rounds before the kill, "
            f"{after} after; {len(log)} requests through nginx, "
            f"{sum(dead in e.upstreams for e in log)} of them tried the killed instance, "
            f"{len(passed_on)} passed on to the survivor ({retried}); round-level retries "
            f"{len(failures)}; central 500s (deadlocks) {len(errors_500)}; "
            f"test {time.monotonic() - started:.1f} s\n"
            + "\n".join(failures + nginx_err.lines[-6:])
        )
    finally:
        for inst in instances:
            if inst.proc.poll() is None:
                inst.proc.terminate()
        for inst in instances:
            try:
                inst.proc.wait(15)
            except subprocess.TimeoutExpired:
                inst.proc.kill()
                inst.proc.wait(10)
        central.close()
        postgres.drop_database(database)
