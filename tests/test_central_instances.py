"""Several `redeem-central serve` processes on one database (PostgreSQL, and SQLite on one
file): a terminal may talk to any of them, concurrent uploads of the same coupon through
different instances still raise exactly one double-redemption flag, journals are stored
exactly once, and every instance serves the same ledger bytes (a download resumes on
another instance)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from coupons import ledger
from coupons.clock import SystemClock
from coupons.ledger import LedgerState, read_file
from sync import protocol
from sync.central.models import FlagRow, JournalRow, VersionRow
from sync.central.store import Central
from tests import postgres
from tests.central_server import BACKENDS, Device, Running, Till, database_for, serve_process
from tests.conftest import basket
from tests.master_key import KEY as MASTER_KEY


@pytest.fixture(scope="module", params=BACKENDS)
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Running, str, str]]:
    work = tmp_path_factory.mktemp("pair")
    database = database_for(request.param, "pair")
    clock = SystemClock()
    central = Central.init(work / "central", clock.now, database, master_key=MASTER_KEY)
    a, url_a = serve_process(work / "central", database)
    b, url_b = serve_process(work / "central", database)
    try:
        yield Running(central, url_a, clock, work / "central", database, work), url_a, url_b
    finally:
        for proc in (a, b):
            proc.terminate()
        for proc in (a, b):
            try:
                proc.wait(10)
            except Exception:
                proc.kill()
        central.close()
        if database:
            postgres.drop_database(database)


def _on(dev: Device, url: str) -> Device:
    return replace(dev, url=url, session=requests.Session())


def test_a_terminal_can_use_any_instance(pair: tuple[Running, str, str]) -> None:
    running, url_a, url_b = pair
    dev = running.device()  # enrolled through A
    via_b = _on(dev, url_b)
    r = via_b.ledger(0)
    assert r.status_code == 200 and read_file(r.content)
    assert _on(dev, url_a).ledger(0).headers["ETag"] == r.headers["ETag"]
    code = running.enroll_code()
    spent = requests.post(
        url_b + protocol.ENROLL, json={"code": code, "device_key": "ab" * 32}, timeout=30
    )
    assert spent.status_code == 200
    again = requests.post(
        url_a + protocol.ENROLL, json={"code": code, "device_key": "cd" * 32}, timeout=30
    )
    assert again.status_code == 403  # spent at B, refused at A


def test_concurrent_uploads_through_two_instances(pair: tuple[Running, str, str]) -> None:
    running, url_a, url_b = pair
    c = running.central
    c.add_campaign({"id": "MI1", "kind": "fixed", "currency": "CNY", "amount_minor": 100})
    shared = c.issue("MI1", 1)[0]
    tills = [running.till(f"S{i}") for i in range(6)]
    uploads: list[tuple[Till, list[dict[str, Any]]]] = []
    for i, till in enumerate(tills):
        own = c.issue("MI1", 20)
        with till.opened() as engine:
            till.pull()
            for coupon in own[:10]:
                assert engine.redeem(coupon.token or "", basket(1000)).accepted
            if i < 2:  # two tills, offline, take the same coupon
                assert engine.redeem(shared.token or "", basket(1000)).accepted
            for coupon in own[10:]:
                assert engine.redeem(coupon.token or "", basket(1000)).accepted
            uploads.append((till, till.rows()))

    barrier = threading.Barrier(len(tills))
    errors: list[BaseException] = []

    def upload(i: int, till: Till, rows: list[dict[str, Any]]) -> None:
        try:
            # Alternate instances, batches of 7, each sent twice (a lost reply, retried).
            barrier.wait(10)
            for n, start in enumerate(range(0, len(rows), 7)):
                dev = _on(till.device, (url_a, url_b)[(i + n) % 2])
                for _ in range(2):
                    reply = dev.push(rows[start : start + 7])
                    assert reply["problem"] is None and reply["gaps"] == []
            assert reply["acked_seq"] == rows[-1]["seq"]
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [
        threading.Thread(target=upload, args=(i, t, rows)) for i, (t, rows) in enumerate(uploads)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    running.publish()  # the leading instance's publisher catches up

    with c.session():
        for till, rows in uploads:
            stored = JournalRow.select().where(JournalRow.terminal == till.terminal).count()
            assert stored == len(rows)
        doubles = FlagRow.select().where(
            (FlagRow.kind == "double_redemption") & (FlagRow.campaign == "MI1")
        )
        assert doubles.count() == 1
        versions = [v.version for v in VersionRow.select().order_by(VersionRow.version)]
    assert versions == list(range(1, len(versions) + 1))

    # Every version chains onto the one before, whichever instance published it.
    state = LedgerState()
    for raw in c.deltas(0):
        state, _ = ledger.apply(c.anchor, state, raw)
    assert shared.serial in state.redeemed
    assert state.usage["MI1"] == (6 * 20 + 2, (6 * 20 + 2) * 100)


def test_a_snapshot_download_resumes_on_the_other_instance(
    pair: tuple[Running, str, str], tmp_path: Path
) -> None:
    running, url_a, url_b = pair
    marked = [5 * 10**12] + [secrets.randbits(64) for _ in range(3000)]  # no runs: 24 kB
    running.central.mark(marked, "revoked")
    dev = running.device()
    ident = {"Accept-Encoding": "identity"}
    first = _on(dev, url_a).ledger(0, Range="bytes=0-4999", **ident)
    assert first.status_code == 206
    rest = _on(dev, url_b).ledger(
        0, Range="bytes=5000-", **{"If-Range": first.headers["ETag"]}, **ident
    )
    assert rest.status_code == 206
    whole = first.content + rest.content
    assert whole == _on(dev, url_b).ledger(0, **ident).content
    first_update, *after = read_file(whole)  # the newest snapshot, then any later deltas
    state, kind = ledger.apply(running.central.anchor, LedgerState(), first_update)
    for update in after:
        state, _ = ledger.apply(running.central.anchor, state, update)
    assert kind == "snapshot" and 5 * 10**12 in state.revoked


def _self_signed(where: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "central.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = where / "central.pem", where / "central.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_serve_https_with_the_central_certificate(tmp_path: Path) -> None:
    Central.init(tmp_path / "central", master_key=MASTER_KEY).close()
    cert, key = _self_signed(tmp_path)
    proc, url = serve_process(tmp_path / "central", None, tls=(cert, key))
    try:
        assert url.startswith("https://")
        with requests.Session() as session:
            ok = session.get(url + "/healthz", verify=str(cert), timeout=10)
            assert ok.status_code == 200 and protocol.HEADER_SERVER_TIME in ok.headers
            ok.close()
        with requests.Session() as session, pytest.raises(requests.exceptions.SSLError):
            session.get(url + "/healthz", timeout=10)  # not signed by a CA we trust
    finally:
        proc.kill()  # uvicorn lets a closed TLS connection run out its graceful shutdown
        proc.wait(10)


def test_sigterm_stops_the_central_cleanly(tmp_path: Path) -> None:
    Central.init(tmp_path / "central", SystemClock().now, master_key=MASTER_KEY).close()
    proc, url = serve_process(tmp_path / "central", None)
    assert requests.get(url + "/healthz", timeout=5).status_code == 200
    proc.terminate()
    assert proc.wait(15) == 0  # exit 0, as systemd and the demo expect of a clean stop
    assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
