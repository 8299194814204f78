"""Enrollment and signed requests against the real central on loopback, on SQLite and
PostgreSQL: one-time codes, the trust anchor, refusing unknown, revoked, badly signed and
stale requests, bad bodies, problem+json and X-Server-Time on every answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from coupons import cose
from coupons.clock import FixedClock
from sync import protocol
from tests.central_server import BACKENDS, Device, Running, running_central
from tests.conftest import T0


@pytest.fixture(scope="module", params=BACKENDS)
def central(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    with running_central(request.param, tmp_path_factory.mktemp("enroll"), FixedClock(T0)) as c:
        yield c


def _enroll(central: Running, code: str, key: cose.SigningKey) -> requests.Response:
    return requests.post(
        central.url + protocol.ENROLL,
        json={"code": code, "device_key": key.public.hex()},
        timeout=30,
    )


def _is_problem(r: requests.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert protocol.HEADER_SERVER_TIME in r.headers
    doc: dict[str, object] = r.json()
    assert doc["status"] == status and doc["detail"] and str(doc["type"]).startswith("urn:")
    return doc


def test_a_code_enrolls_one_terminal_once(central: Running) -> None:
    code = central.enroll_code("S7")
    key = cose.SigningKey.generate()
    r = _enroll(central, code.lower().replace("-", " "), key)  # as a person might type it
    assert r.status_code == 200, r.text
    doc = r.json()
    anchor = central.central.anchor
    assert doc["store"] == "S7" and doc["terminal"].startswith("S7-")
    assert doc["fingerprint"] == anchor.fingerprint
    assert doc["trust_anchor"]["root_public_key"] == anchor.public_key.hex()
    assert float(r.headers[protocol.HEADER_SERVER_TIME]) == pytest.approx(T0, abs=3600)

    again = _enroll(central, code, cose.SigningKey.generate())
    assert _is_problem(again, 403)["code"] == "enroll-code"
    # The enrolled key signs requests from now on.
    dev = Device(central.url, central.clock, key, doc["terminal"], doc["store"])
    assert dev.ledger(0).status_code == 200


def test_the_trust_anchor_is_public_and_the_one_enrollment_hands_out(central: Running) -> None:
    r = requests.get(central.url + "/v1/trust-anchor", timeout=30)  # no code, no signature
    assert r.status_code == 200, r.text
    doc = r.json()
    enrolled = _enroll(central, central.enroll_code("S7"), cose.SigningKey.generate()).json()
    assert doc["trust_anchor"] == enrolled["trust_anchor"]
    assert doc["fingerprint"] == enrolled["fingerprint"] == central.central.anchor.fingerprint


def test_an_expired_or_unknown_code_is_refused(central: Running) -> None:
    code = central.enroll_code("S1", ttl=60)
    assert isinstance(central.clock, FixedClock)
    central.clock.advance(61)
    _is_problem(_enroll(central, code, cose.SigningKey.generate()), 403)
    _is_problem(_enroll(central, "AAAA-BBBB-CCCC-DDDD", cose.SigningKey.generate()), 403)


def test_bad_enrollment_bodies_are_400_not_500(central: Running) -> None:
    url = central.url + protocol.ENROLL
    for body in (b"{", b"[]", b'{"code": 5}', b'{"code": "X", "device_key": "zz"}', b"\xff\xfe"):
        r = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=30)
        _is_problem(r, 400)
    r = requests.post(url, data=b"{" + b" " * (9 * 1024 * 1024) + b"}", timeout=30)
    _is_problem(r, 413)


def test_unsigned_unknown_badly_signed_and_stale_requests_are_refused(central: Running) -> None:
    dev = central.device("S2")
    path = f"{protocol.LEDGER}?since=0"
    assert dev.get(path).status_code == 200
    _is_problem(requests.get(central.url + path, timeout=30), 401)
    _is_problem(dev.get(path, terminal="S2-999"), 401)
    _is_problem(dev.get(path, key=cose.SigningKey.generate()), 401)
    _is_problem(dev.get(path, at=central.clock.now() - protocol.REPLAY_WINDOW_S - 5), 401)
    _is_problem(dev.get(path, at=central.clock.now() + protocol.REPLAY_WINDOW_S + 5), 401)
    # The signature covers the query and the body: another `since` or body is refused.
    signed = protocol.sign_headers(dev.key, dev.terminal, "GET", path, b"", central.clock.now())
    r = requests.get(f"{central.url}{protocol.LEDGER}?since=1", headers=signed, timeout=30)
    _is_problem(r, 401)
    body = json.dumps({"entries": []}).encode()
    signed = protocol.sign_headers(
        dev.key, dev.terminal, "POST", protocol.JOURNAL, body, central.clock.now()
    )
    r = requests.post(central.url + protocol.JOURNAL, data=body + b" ", headers=signed, timeout=30)
    _is_problem(r, 401)


def test_cli_codes_terminals_and_revocation(central: Running) -> None:
    made = central.cli("enroll-code", "--store", "S9", "--ttl", "600", "--json", now=str(T0))
    assert made.returncode == 0, made.stderr
    code = json.loads(made.stdout)["code"]
    key = cose.SigningKey.generate()
    enrolled = _enroll(central, code, key)
    assert enrolled.status_code == 200, enrolled.text
    dev = Device(central.url, central.clock, key, enrolled.json()["terminal"], "S9")
    central.publish()  # the publisher's tick makes store S9's ledger
    assert dev.ledger(0).status_code == 200

    listed = central.cli("terminals", "--json")
    assert listed.returncode == 0, listed.stderr
    mine = [t for t in json.loads(listed.stdout)["terminals"] if t["terminal"] == dev.terminal]
    assert mine and mine[0]["store"] == "S9" and not mine[0]["revoked"]
    assert mine[0]["ledger_version"] == 0  # it asked for the ledger after version 0

    revoked = central.cli("revoke-terminal", "--terminal", dev.terminal)
    assert revoked.returncode == 0, revoked.stderr
    assert _is_problem(dev.ledger(0), 403)["code"] == "forbidden"
    _is_problem(dev.post_json(protocol.JOURNAL, {"entries": []}), 403)
    missing = central.cli("revoke-terminal", "--terminal", "S9-404")
    assert missing.returncode == 2 and "no terminal" in missing.stderr


def test_unknown_paths_and_methods_are_problems(central: Running) -> None:
    _is_problem(requests.get(central.url + "/v1/nothing", timeout=30), 404)
    _is_problem(requests.delete(central.url + protocol.JOURNAL, timeout=30), 405)


def test_openapi_describes_the_terminal_endpoints(central: Running) -> None:
    spec = requests.get(central.url + "/openapi.json", timeout=30).json()
    paths = spec["paths"]
    for path in (
        protocol.ENROLL,
        protocol.LEDGER,
        protocol.JOURNAL,
        protocol.FLAGS,
        protocol.CHECK,
    ):
        assert path in paths
    journal_post = paths[protocol.JOURNAL]["post"]
    ref = journal_post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schemas = spec["components"]["schemas"]
    assert ref.endswith("/JournalBatch") and "JournalEntry" in schemas
    assert set(schemas["JournalEntry"]["properties"]) >= {"seq", "prev_hash", "hash", "detail"}
    assert set(schemas["JournalReply"]["properties"]) >= {"acked_seq", "accepted", "gaps"}
    headers = {p["name"] for p in journal_post["parameters"] if p["in"] == "header"}
    assert protocol.HEADER_SIGNATURE in headers
    assert (
        protocol.LEDGER_MEDIA_TYPE in paths[protocol.LEDGER]["get"]["responses"]["200"]["content"]
    )
    enroll_ref = paths[protocol.ENROLL]["post"]["requestBody"]["content"]["application/json"]
    assert enroll_ref["schema"]["$ref"].endswith("/EnrollRequest")


def test_data_dir_is_not_a_central(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.central_server import ROOT

    r = subprocess.run(
        [sys.executable, "-m", "sync.central.cli", "serve", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 2 and "not a central data directory" in r.stderr
