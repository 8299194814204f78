"""The terminal's sync client: signed requests, backoff, the device key, the clock-offset
policy, and rounds against the real central on loopback (uvicorn in a thread, SQLite):
enrollment (`redeem enroll`), journal push, ledger pull (ETag, ranges), flag decisions, and
faults between them (500s, hangs, resets, truncated answers). Nothing lost, nothing applied
twice, and the next round succeeds."""

from __future__ import annotations

import gzip
import http.server
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coupons import cose, setup
from coupons.clock import FixedClock
from coupons.engine import Engine
from coupons.journal import RETENTION_S, Entry, get_meta, rows, set_meta
from coupons.keys import TrustAnchor
from coupons.reasons import Reason
from coupons.rules import Basket
from coupons.sync_state import flag_decisions
from sync import protocol
from sync.central.flags import decide
from sync.central.models import FlagRow, JournalRow
from sync.central.store import Central
from sync.central.terminals import list_terminals
from sync.client import Backoff, Direct, RoundResult, SyncClient, open_link, run_once
from sync.device import ensure_device_key, read_device_key
from sync.enroll import EnrollError, enroll
from sync.http import CentralLink, Link, SyncError
from terminal.daemon import config as config_mod
from terminal.daemon.runner import SHUTDOWN_S, Daemon
from tests.central_server import Device, Running, running_central
from tests.conftest import T0, World, basket
from tests.faultproxy import FaultProxy

REPO = Path(__file__).resolve().parent.parent

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


def _daemon(tmp_path: Path, data: Path, clock: FixedClock, central: str, sync: str) -> Daemon:
    """The real daemon (no inputs) on a terminal data directory, syncing with `central`."""
    path = tmp_path / "d.toml"
    path.write_text(f'[terminal]\ndata = "{data}"\n\n[sync]\ncentral = "{central}"\n{sync}\n')
    daemon = Daemon(config_mod.load(path), clock)
    daemon.start()
    return daemon


def test_the_daemon_stops_within_its_budget_while_a_round_hangs(
    world: World, hanging: str, tmp_path: Path
) -> None:
    ensure_device_key(world.data)
    world.engine.db.close()
    daemon = _daemon(
        tmp_path, world.data, world.clock, hanging, "interval_s = 1\nread_timeout_s = 30"
    )
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
    assert took < SHUTDOWN_S  # not the 30 s read timeout


# ---------------------------------------------------------------- against the real central


@dataclass
class SyncedTill:
    running: Running
    clock: FixedClock  # the terminal's; the central has its own
    data: Path
    engine: Engine
    tokens: list[str]

    def round(self, url: str | None = None, read_timeout_s: float = 20.0) -> RoundResult:
        """One round, after the publisher's tick: what changed at the central before it
        (not what the round's own upload changes) is in the ledger it pulls."""
        self.running.publish()
        link = open_link(self.data, self.engine, central=url, read_timeout_s=read_timeout_s)
        return run_once(self.data, self.engine, link)

    def redeem(self, n: int) -> None:
        for token in self.tokens[:n]:
            assert self.engine.redeem(token, basket(5000)).accepted
        del self.tokens[:n]

    def hashes_at_central(self) -> list[str]:
        return [
            r.hash
            for r in JournalRow.select()
            .where(JournalRow.terminal == self.engine.terminal)
            .order_by(JournalRow.seq)
        ]

    def stored(self) -> list[int]:
        """The seqs the central holds for this terminal, in order."""
        return [
            r.seq
            for r in JournalRow.select(JournalRow.seq)
            .where(JournalRow.terminal == self.engine.terminal)
            .order_by(JournalRow.seq)
        ]


def _issue(c: Central, campaign: str, n: int) -> list[str]:
    return [i.token or "" for i in c.issue(campaign, n)]


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    with running_central("sqlite", tmp_path, FixedClock(T0)) as r:
        r.central.add_campaign(
            {"id": "C1", "kind": "fixed", "currency": "CNY", "amount_minor": 500}
        )
        yield r


@pytest.fixture
def till(running: Running, tmp_path: Path) -> Iterator[SyncedTill]:
    clock = FixedClock(T0)
    data = tmp_path / "till"
    done = enroll(
        data,
        running.url,
        running.enroll_code("S1"),
        clock,
        fingerprint=running.central.anchor.fingerprint,
    )
    assert done.first_round is not None and done.first_round.ok, done.first_round
    engine = setup.open_engine(data, clock)
    t = SyncedTill(running, clock, data, engine, _issue(running.central, "C1", 8))
    # The coupons were issued after the first pull: bring the ledger that lists them.
    assert t.round().ok
    yield t
    t.engine.db.close()


def _redeem_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("REDEEM_")}
    base.pop("CREDENTIALS_DIRECTORY", None)
    return subprocess.run(
        [sys.executable, "-m", "terminal.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**base, "REDEEM_NOW": str(T0), **(env or {})},
        timeout=60,
    )


def test_enroll_checks_the_fingerprint_and_pulls_the_first_ledger(
    running: Running, tmp_path: Path
) -> None:
    anchor = running.central.anchor
    data = tmp_path / "t1"
    ok = _redeem_cli(
        "enroll", "--data", str(data), "--central", running.url,
        "--code", running.enroll_code("S1"), "--store", "S1",
        "--fingerprint", anchor.fingerprint.lower().replace(":", " "),
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "enrolled as terminal S1-" in ok.stdout and "it matches" in ok.stdout
    assert "sync OK" in ok.stdout and "TRUST ON FIRST USE" not in ok.stdout
    assert stat.S_IMODE(os.stat(data / "device.key").st_mode) == 0o600
    status = _redeem_cli("ledger", "status", "--data", str(data), "--json")
    assert json.loads(status.stdout)["version"] >= 1

    # A wrong fingerprint: refused before the central spends the code or registers the
    # key, and the data directory is left as it was.
    bad = tmp_path / "t2"
    wrong = "SHA256:" + ":".join(["0000"] * 8)
    before = list_terminals(running.central)
    code = running.enroll_code("S1")
    no = _redeem_cli(
        "enroll", "--data", str(bad), "--central", running.url,
        "--code", code, "--fingerprint", wrong,
    )  # fmt: skip
    assert no.returncode == 2 and "does not match" in no.stderr, no.stderr
    assert not (bad / "terminal.json").exists() and not (bad / "device.key").exists()
    # No orphan terminal at the central (compared by id and key: the first till's ledger
    # figures move, as an enrollment publishes its store's tills at the next tick).
    ids = [(t["terminal"], t["fingerprint"]) for t in list_terminals(running.central)]
    assert ids == [(t["terminal"], t["fingerprint"]) for t in before]
    # ... so the installer can still use that code once they have the right fingerprint.
    done = enroll(bad, running.url, code, FixedClock(T0), fingerprint=anchor.fingerprint,
                  first_sync=False)  # fmt: skip
    assert done.terminal not in {t["terminal"] for t in before}
    shutil.rmtree(bad)

    # Another store's code when --store says S1: refused too.
    other = _redeem_cli(
        "enroll", "--data", str(bad), "--central", running.url,
        "--code", running.enroll_code("S2"), "--store", "S1", "--no-sync",
    )  # fmt: skip
    assert other.returncode == 2 and "store S2, not S1" in other.stderr


def test_enroll_checks_a_trust_anchor_file(running: Running, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger-anchor.json"
    stranger.write_text(TrustAnchor(cose.SigningKey.generate().public).to_json())
    code = running.enroll_code("S1")
    with pytest.raises(EnrollError, match="is not the one in"):
        enroll(tmp_path / "t4", running.url, code, FixedClock(T0),
               anchor_file=stranger, first_sync=False)  # fmt: skip
    assert not (tmp_path / "t4" / "terminal.json").exists()
    assert list_terminals(running.central) == []  # checked before the code was spent
    done = enroll(tmp_path / "t4", running.url, code, FixedClock(T0),
                  anchor_file=running.data / "trust-anchor.json", first_sync=False)  # fmt: skip
    assert done.pinned == "trust-anchor" and done.first_round is None


def test_enroll_without_a_fingerprint_trusts_on_first_use_and_says_so(
    running: Running, tmp_path: Path
) -> None:
    data = tmp_path / "t3"
    out = _redeem_cli(
        "enroll", "--data", str(data), "--central", running.url,
        "--code", running.enroll_code("S1"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "TRUST ON FIRST USE" in out.stdout
    assert running.central.anchor.fingerprint in out.stdout
    pinned = json.loads((data / "trust-anchor.json").read_text())
    assert pinned["root_public_key"] == running.central.anchor.public_key.hex()


def test_sync_once_uploads_the_journal_and_resending_is_harmless(till: SyncedTill) -> None:
    till.redeem(3)
    result = till.round()
    assert result.ok, result.error
    head = till.engine.journal.head_seq
    assert result.journal["acked_seq"] == head and result.journal["backlog"] == 0
    assert get_meta("acked_seq") == str(head)
    assert till.stored() == list(range(1, head + 1))

    # The acknowledgment was lost (say, the answer never arrived): everything is sent again,
    # the central stores nothing twice, and the mark comes back.
    set_meta("acked_seq", "0")
    again = till.round()
    # The round may also have pulled the ledger the upload led to: one `ledger` entry more,
    # the only one the central had not stored.
    now_head = till.engine.journal.head_seq
    assert now_head - head in (0, 1)
    assert again.ok and again.journal["sent"] == now_head
    assert again.journal["accepted"] == now_head - head
    assert till.stored() == list(range(1, now_head + 1))
    assert get_meta("acked_seq") == str(now_head)

    # Status without a daemon, from the command line.
    till.engine.db.close()
    out = _redeem_cli("sync", "status", "--data", str(till.data), "--json")
    doc = json.loads(out.stdout)
    assert doc["backlog"] == 0 and doc["last_success"] is not None and not doc["running"]
    till.engine = setup.open_engine(till.data, till.clock)


def test_a_revocation_reaches_the_till_and_an_unchanged_ledger_is_a_304(till: SyncedTill) -> None:
    c = till.running.central
    [issued] = c.issue("C1", 1)
    assert till.round().ok  # the ledger that lists it
    before = till.engine.ledger.version
    c.mark([issued.serial], "revoked")
    result = till.round()
    assert result.ok and result.ledger["to"] > before and result.ledger["applied"]
    d = till.engine.redeem(issued.token or "", basket(5000))
    assert d.reason == Reason.REVOKED
    # Nothing new since: the ETag of the last download makes it a 304, no body.
    same = till.round()
    assert same.ok and same.ledger["status"] == 304 and same.ledger["not_modified"]


def test_an_interrupted_ledger_download_resumes_where_it_stopped(till: SyncedTill) -> None:
    c = till.running.central
    for i in range(3):  # something worth compressing and resuming
        c.add_campaign({"id": f"R{i}", "kind": "fixed", "currency": "CNY", "amount_minor": 100})
        c.issue(f"R{i}", 300, codes=True)
    since = till.engine.ledger.version
    till.running.publish()
    dev = Device(till.running.url, till.running.clock, read_device_key(till.data))
    dev.terminal = till.engine.terminal
    full = dev.ledger(since, **{"Accept-Encoding": "gzip"})
    assert full.status_code == 200 and full.headers["Content-Encoding"] == "gzip"
    raw = gzip.compress(full.content, compresslevel=6, mtime=0)  # the bytes on the wire
    # What a download cut off halfway leaves behind.
    work = till.data / "sync"
    work.mkdir(exist_ok=True)
    (work / "ledger.partial").write_bytes(raw[: len(raw) // 2])
    (work / "ledger.partial.json").write_text(
        json.dumps({"since": since, "etag": full.headers["ETag"], "encoding": "gzip"})
    )
    result = till.round()
    assert result.ok, result.error
    assert result.ledger["status"] == 206 and result.ledger["resumed_at"] == len(raw) // 2
    assert {"R0", "R1", "R2"} <= set(till.engine.ledger.campaigns)
    assert not (work / "ledger.partial").exists()


def test_flag_decisions_made_at_the_central_reach_the_till(till: SyncedTill) -> None:
    token = till.tokens[0]
    till.redeem(1)
    assert not till.engine.redeem(token, basket(5000)).accepted  # a second use: a flag
    assert till.round().ok
    flag = FlagRow.select().where(FlagRow.terminal == till.engine.terminal).first()
    assert flag is not None
    decide(till.running.central, flag.id, "acknowledged", "seen by the area manager")
    result = till.round()
    assert result.ok and result.flags["received"] == 1
    [shown] = flag_decisions(till.engine)  # what the manager's screen lists, newest first
    assert shown["kind"] == flag.kind and shown["decision"] == "acknowledged"
    assert shown["note"] == "seen by the area manager" and shown["at"] == int(T0)
    assert shown["serial"] == flag.serial and shown["campaign"] == "C1"
    assert shown["this_terminal"] and shown["terminal"] == till.engine.terminal
    assert till.round().flags["received"] == 0


def _verify_cli(data: Path) -> subprocess.CompletedProcess[str]:
    return _redeem_cli("journal", "verify", "--data", str(data))


def _local_seqs() -> list[int]:
    return [r["seq"] for r in rows()]


def test_a_round_prunes_acknowledged_entries_older_than_two_years(till: SyncedTill) -> None:
    till.redeem(3)
    assert till.round().ok
    old = _local_seqs()
    assert old and get_meta("acked_seq") == str(old[-1])
    # Two years and a day later (both clocks), a new ledger version: the round acknowledges
    # its `ledger` entry and drops what is acknowledged and past the retention.
    later = RETENTION_S + 24 * 3600
    till.clock.advance(later)
    till.running.clock.advance(later)  # type: ignore[attr-defined]
    till.running.central.add_campaign(
        {"id": "C2", "kind": "fixed", "currency": "CNY", "amount_minor": 100}
    )
    result = till.round()
    assert result.ok, result.error
    kept = _local_seqs()
    assert kept and kept[0] > old[-1]  # the old ones are gone, the new entry stays
    assert all(r["at_ms"] >= (till.clock.now() - RETENTION_S) * 1000 for r in rows())
    assert till.stored()[: len(old)] == old  # the central still holds every entry
    verified = _verify_cli(till.data)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    till.tokens = _issue(till.running.central, "C2", 1)  # the old ones have expired
    till.redeem(1)
    assert till.round().ok  # uploads continue after the pruned part
    assert _local_seqs()[0] == kept[0]


def test_entries_the_central_has_not_acknowledged_are_never_pruned(till: SyncedTill) -> None:
    acked = int(get_meta("acked_seq") or 0)
    till.redeem(3)
    head = till.engine.journal.head_seq
    # The central refuses the last entry (altered on the SD card): it stays unacknowledged.
    Entry.update(discount_minor=1).where(Entry.seq == head).execute()
    later = RETENTION_S + 24 * 3600
    till.clock.advance(later)
    till.running.clock.advance(later)  # type: ignore[attr-defined]
    result = till.round()
    assert not result.ok and "altered" in (result.error or "")
    assert get_meta("acked_seq") == str(head - 1)
    # Everything old and acknowledged went; the refused entry, old as it is, did not.
    assert _local_seqs() == [head] and acked < head - 1


@pytest.mark.parametrize("fault", ["http500", "hang", "reset", "truncate", "drop"])
def test_a_faulty_central_fails_the_round_cleanly_and_the_next_round_succeeds(
    till: SyncedTill, fault: str
) -> None:
    host, port = till.running.url.removeprefix("http://").split(":")
    proxy = FaultProxy((host, int(port))).start()
    try:
        till.redeem(2)
        head = till.engine.journal.head_seq
        proxy.mode = fault
        bad = till.round(proxy.url, read_timeout_s=0.5)
        assert not bad.ok and bad.error
        assert bad.error_kind in {"server", "timeout", "network", "protocol"}
        if fault == "http500":
            assert "500" in bad.error
        if fault == "hang":
            assert "did not answer within 0.5 s" in bad.error
        acked = int(get_meta("acked_seq") or 0)
        assert acked <= head  # only what the central confirmed
        proxy.mode = "pass"
        good = till.round(proxy.url)
        assert good.ok, good.error
        assert till.stored() == list(range(1, till.engine.journal.head_seq + 1))
        assert good.journal["backlog"] == 0
    finally:
        proxy.stop()
    assert till.hashes_at_central() == [r["hash"] for r in rows()]


def test_rounds_through_flapping_wifi_lose_nothing_and_store_nothing_twice(
    till: SyncedTill,
) -> None:
    host, port = till.running.url.removeprefix("http://").split(":")
    proxy = FaultProxy((host, int(port)), seed=7).start()
    proxy.mode, proxy.fault_rate, proxy.delay_s = "random", 0.5, 0.2
    outcomes = []
    try:
        for _ in range(8):
            till.redeem(1)
            outcomes.append(till.round(proxy.url, read_timeout_s=0.4).ok)
        proxy.mode = "pass"
        assert till.round(proxy.url).ok
    finally:
        proxy.stop()
    assert False in outcomes  # the faults did hit some rounds
    assert till.hashes_at_central() == [r["hash"] for r in rows()]
    assert get_meta("acked_seq") == str(till.engine.journal.head_seq)


def test_a_central_clock_far_off_makes_the_till_refuse_coupons_until_it_is_back(
    till: SyncedTill,
) -> None:
    central_clock = till.running.clock
    assert isinstance(central_clock, FixedClock)
    central_clock.advance(-3600)  # our clock now runs an hour ahead of the central's
    result = till.round()
    assert result.ok, result.error  # signed with the central's time after its 401
    assert result.clock is not None and not result.clock["ok"]
    assert result.clock["offset_s"] == pytest.approx(-3600, abs=5)
    d = till.engine.redeem(till.tokens[0], basket(5000))
    assert d.reason == Reason.CLOCK_UNTRUSTED
    central_clock.advance(3600)
    back = till.round()
    assert back.ok and back.clock is not None and back.clock["ok"]
    assert back.clock["offset_s"] == pytest.approx(0, abs=5)
    till.redeem(1)
    crossings = [(e["accepted"], e["source"]) for e in rows() if e["reason"] == "clock_offset"]
    assert crossings == [(False, "sync"), (True, "sync")]


def test_the_daemon_syncs_while_it_redeems_and_answers_sync_commands(
    till: SyncedTill, tmp_path: Path
) -> None:
    till.redeem(2)
    till.engine.db.close()
    fifo = tmp_path / "scan.fifo"
    pipe = f'\n[[input]]\nname = "pipe"\nkind = "fake"\nfifo = "{fifo}"\n'
    daemon = _daemon(tmp_path, till.data, till.clock, till.running.url, "interval_s = 0.1" + pipe)
    try:
        assert daemon.sync is not None
        # Scans and sync rounds interleave; the engine worker is the journal's one user.
        (scanner,) = daemon.inputs
        for n, token in enumerate(till.tokens[:5], start=1):
            daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 5000}))
            scanner.feed(token)
            _wait(lambda n=n: daemon.published_count == n)
            time.sleep(0.3)  # the first round starts 1 s after start-up
        assert [bool(p.decision and p.decision.accepted) for p in daemon.recent] == [True] * 5
        loop = daemon.sync
        # Rounds go on every 0.1 s: a second one follows the first whatever the machine's
        # load, and leaves nothing behind.
        _wait(
            lambda: (
                loop.rounds >= 2
                and loop.status()["backlog"] == 0
                and bool(loop.last and loop.last.ok)
            ),
            timeout=30,
        )
        once = _redeem_cli("sync", "--once", "--data", str(till.data))
        assert once.returncode == 0 and "run by the daemon" in once.stdout, once.stderr
        status = _redeem_cli("sync", "status", "--data", str(till.data), "--json")
        doc = json.loads(status.stdout)
        assert doc["running"] and doc["central"] == till.running.url and doc["backlog"] == 0
        assert daemon.status()["sync"]["backlog"] == 0
    finally:
        t0 = time.monotonic()
        daemon.stop()
        assert time.monotonic() - t0 < SHUTDOWN_S
        till.engine = setup.open_engine(till.data, till.clock)
    assert till.hashes_at_central() == [r["hash"] for r in rows()]
    assert till.engine.journal.head_seq > 2 * 3  # the daemon's redemptions are among them


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# ---------------------------------------------------------------- HTTPS with a pinned CA


def _ca_and_leaf(tmp: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a certificate it signs for 127.0.0.1: (ca.pem, cert.pem, key.pem)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: Any, ca: bool
    ) -> x509.Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            b = b.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return b.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert(f"{name} CA", ca_key, f"{name} CA", ca_key, True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = cert("127.0.0.1", leaf_key, f"{name} CA", ca_key, False)
    pem = serialization.Encoding.PEM
    paths = tmp / f"{name}-ca.pem", tmp / f"{name}-cert.pem", tmp / f"{name}-key.pem"
    paths[0].write_bytes(ca_cert.public_bytes(pem))
    paths[1].write_bytes(leaf.public_bytes(pem))
    paths[2].write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def test_https_with_the_pinned_ca_works_and_another_ca_is_refused(
    running: Running, tmp_path: Path
) -> None:
    import uvicorn

    from sync.central.app import create_app

    ca, cert, key = _ca_and_leaf(tmp_path, "central")
    other_ca, _, _ = _ca_and_leaf(tmp_path, "other")
    config = uvicorn.Config(
        create_app(running.central),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="off",
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    url = f"https://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    clock = FixedClock(T0)
    data = tmp_path / "tls-till"
    try:
        # Without the CA the certificate is not trusted: nothing is enrolled.
        with pytest.raises(EnrollError, match="TLS check failed"):
            enroll(data, url, running.enroll_code("S1"), clock)
        done = enroll(data, url, running.enroll_code("S1"), clock, ca=ca)
        assert done.first_round is not None and done.first_round.ok
        assert (data / "central-ca.pem").read_bytes() == ca.read_bytes()
        engine = setup.open_engine(data, clock)
        try:
            assert run_once(data, engine).ok  # the CA pinned at enrollment is used
            wrong = open_link(data, engine, central=url, ca=str(other_ca))
            result = run_once(data, engine, wrong)
            assert not result.ok and result.error_kind == "refused"
            assert "TLS check failed: certificate verify failed" in (result.error or "")
        finally:
            engine.db.close()
    finally:
        server.should_exit = True
        thread.join(10)


def test_after_a_sync_the_till_does_not_count_its_own_uses_twice_against_a_budget(
    till: SyncedTill,
) -> None:
    till.running.central.add_campaign(
        {
            "id": "B3",
            "kind": "fixed",
            "currency": "CNY",
            "amount_minor": 100,
            "budget_count": 3,
            "stacking": "any",
        }
    )
    coupons = _issue(till.running.central, "B3", 4)
    assert till.round().ok  # the ledger that lists B3
    for token in coupons[:2]:
        assert till.engine.redeem(token, basket(5000)).accepted
    assert till.round().ok  # uploads our 2 uses
    assert till.round().ok  # after the publisher's tick, the ledger's usage counts them
    assert till.engine.ledger.usage.get("B3", (0, 0))[0] == 2
    third = till.engine.redeem(coupons[2], basket(5000))
    fourth = till.engine.redeem(coupons[3], basket(5000))
    assert third.accepted, third  # 2 used + this one = 3: within the budget
    assert fourth.reason.value == "budget_exhausted"


def test_an_older_journal_put_back_after_a_sync_is_refused(till: SyncedTill) -> None:
    """Someone restores last week's journal.db (it still has coupons unused that were used
    since): its own acknowledged mark is older too, but the copy the sync client keeps
    beside it is not, so the terminal refuses to redeem on it."""
    till.redeem(1)
    assert till.round().ok
    till.engine.db.close()
    old = (till.data / "journal.db").read_bytes()  # closed cleanly: no -wal to carry
    till.engine = setup.open_engine(till.data, till.clock)
    till.redeem(2)
    assert till.round().ok
    acked = setup.acknowledged_elsewhere(till.data)
    assert acked == till.engine.journal.head_seq
    till.engine.db.close()
    (till.data / "journal.db").write_bytes(old)
    with pytest.raises(setup.DataUnusable, match=f"central acknowledged entries up to {acked}"):
        setup.open_engine(till.data, till.clock)
