"""Conformance of a central to the terminal-facing protocol (docs/sync-protocol.md), run
against any central:

    REDEEM_CONFORMANCE_URL=https://central.example:8700 \\
    REDEEM_CONFORMANCE_CODES=CODE1,CODE2 .venv/bin/pytest tests/test_central_conformance.py

(two unused enrollment codes of one store; REQUESTS_CA_BUNDLE names a private CA). The
journal entries it uploads are `ledger` entries, which no central counts as redemptions.
Without REDEEM_CONFORMANCE_URL it checks the reference central on loopback."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from coupons import cose, ledger
from coupons.clock import SystemClock
from coupons.journal import entry_hash
from coupons.keys import TrustAnchor
from coupons.ledger import LedgerState, read_file
from sync import protocol
from sync.central.publisher import Publisher
from tests.central_server import Device, chain, running_central

ENV_URL = "REDEEM_CONFORMANCE_URL"
ENV_CODES = "REDEEM_CONFORMANCE_CODES"


@dataclass
class Target:
    url: str
    code: Callable[[], str]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    url = os.environ.get(ENV_URL)
    if url:
        codes = [c.strip() for c in os.environ.get(ENV_CODES, "").split(",") if c.strip()]
        if len(codes) < 2:
            pytest.fail(f"{ENV_CODES} must hold two unused enrollment codes")
        yield Target(url.rstrip("/"), codes.pop)
        return
    with running_central("sqlite", tmp_path_factory.mktemp("conformance"), SystemClock()) as c:
        # As a deployment runs it: the publisher ticking on its own, not called by the test.
        c.publisher = Publisher(c.central, interval_s=0.2)
        c.publisher.start()
        try:
            yield Target(c.url, c.enroll_code)
        finally:
            c.publisher.stop()


@dataclass
class Enrolled:
    device: Device
    anchor: TrustAnchor
    code: str


@pytest.fixture(scope="module")
def enrolled(target: Target) -> Enrolled:
    code = target.code()
    key = cose.SigningKey.generate()
    r = requests.post(
        target.url + protocol.ENROLL,
        json={"code": code, "device_key": key.public.hex()},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert isinstance(doc["terminal"], str) and doc["terminal"]
    assert isinstance(doc["store"], str) and doc["store"]
    anchor = TrustAnchor(bytes.fromhex(doc["trust_anchor"]["root_public_key"]))
    assert doc["fingerprint"] == anchor.fingerprint
    return Enrolled(Device(target.url, _Clock(), key, doc["terminal"], doc["store"]), anchor, code)


class _Clock:
    def now(self) -> float:
        return time.time()


def _problem(r: requests.Response, *statuses: int) -> None:
    assert r.status_code in statuses, (r.status_code, r.text)
    assert r.headers.get("Content-Type", "").startswith("application/problem+json"), r.headers
    assert r.json()["status"] == r.status_code


def test_every_answer_carries_the_server_time(target: Target, enrolled: Enrolled) -> None:
    before = time.time()
    answers = [
        enrolled.device.ledger(0),
        requests.get(target.url + protocol.LEDGER, timeout=30),
        requests.post(target.url + protocol.ENROLL, data=b"{", timeout=30),
    ]
    for r in answers:
        at = float(r.headers[protocol.HEADER_SERVER_TIME])
        assert abs(at - before) < protocol.REPLAY_WINDOW_S, "the central's clock is far off"


def test_a_spent_or_unknown_code_is_refused(target: Target, enrolled: Enrolled) -> None:
    for code in (enrolled.code, "NOT-A-REAL-CODE-0000"):
        r = requests.post(
            target.url + protocol.ENROLL,
            json={"code": code, "device_key": cose.SigningKey.generate().public.hex()},
            timeout=30,
        )
        _problem(r, 401, 403)
    _problem(requests.post(target.url + protocol.ENROLL, data=b"{", timeout=30), 400)


def test_unsigned_forged_unknown_and_stale_requests_are_refused(enrolled: Enrolled) -> None:
    dev = enrolled.device
    path = f"{protocol.LEDGER}?since=0"
    _problem(requests.get(dev.url + path, timeout=30), 401)
    _problem(dev.get(path, key=cose.SigningKey.generate()), 401)
    _problem(dev.get(path, terminal=dev.terminal + "-x"), 401)
    _problem(dev.get(path, at=time.time() - protocol.REPLAY_WINDOW_S - 60), 401)
    _problem(dev.request("POST", protocol.JOURNAL, b'{"entries": []}', at=time.time() - 3600), 401)


def test_the_ledger_verifies_against_the_trust_anchor(enrolled: Enrolled) -> None:
    dev = enrolled.device
    deadline = time.monotonic() + 30
    first = dev.ledger(0, **{"Accept-Encoding": "identity"})
    while first.status_code == 503 and time.monotonic() < deadline:
        # A store enrolled moments ago: its ledger comes with the publisher's next tick.
        assert first.json()["code"] == "ledger-not-ready" and first.headers["Retry-After"]
        time.sleep(0.2)
        first = dev.ledger(0, **{"Accept-Encoding": "identity"})
    assert first.status_code == 200
    assert first.headers["Content-Type"].startswith(protocol.LEDGER_MEDIA_TYPE)
    state = LedgerState()
    for raw in read_file(first.content):
        state, _ = ledger.apply(enrolled.anchor, state, raw)
    assert state.version >= 1
    etag = first.headers["ETag"]
    current = dev.ledger(state.version, **{"If-None-Match": etag})
    assert current.status_code in (204, 304) or (
        current.status_code == 200 and read_file(current.content)  # published meanwhile
    )
    if len(first.content) > 2:
        half = len(first.content) // 2
        ident = {"Accept-Encoding": "identity"}
        a = dev.ledger(0, Range=f"bytes=0-{half - 1}", **{"If-Range": etag}, **ident)
        b = dev.ledger(0, Range=f"bytes={half}-", **{"If-Range": etag}, **ident)
        if a.status_code == b.status_code == 206:  # else a new version came out in between
            assert a.content + b.content == first.content


def _entries(n: int) -> list[dict[str, Any]]:
    now_ms = int(time.time() * 1000)
    return chain(
        *(
            {
                "at_ms": now_ms,
                "source": "conformance",
                "detail": json.dumps({"version": seq}, separators=(",", ":")),
            }
            for seq in range(1, n + 1)
        )
    )


def test_journal_upload(target: Target, enrolled: Enrolled) -> None:
    # A terminal of its own, so the chain starts at entry 1.
    key = cose.SigningKey.generate()
    r = requests.post(
        target.url + protocol.ENROLL,
        json={"code": target.code(), "device_key": key.public.hex()},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    dev = Device(target.url, _Clock(), key, r.json()["terminal"], r.json()["store"])
    rows = _entries(6)

    def push(entries: list[dict[str, Any]]) -> dict[str, Any]:
        reply = dev.push(entries)
        assert set(reply) >= {"acked_seq", "accepted", "gaps", "problem"}
        return reply

    early = push(rows[2:5])
    assert early["acked_seq"] == 0 and early["gaps"] and early["gaps"][0][0] == 1
    assert push(rows[:2])["acked_seq"] == 2
    full = push(rows[:5])
    assert (full["acked_seq"], full["accepted"], full["problem"]) == (5, 3, None)
    again = push(rows[:5])  # idempotent
    assert (again["acked_seq"], again["accepted"], again["problem"]) == (5, 0, None)

    altered = dict(rows[5], discount_minor=1)  # hash no longer matches
    bad = push([altered])
    assert bad["acked_seq"] == 5 and bad["problem"]
    spliced = dict(rows[5], prev_hash="0" * 63 + "1")
    spliced["hash"] = entry_hash(spliced)  # consistent, but does not follow entry 5
    bad = push([spliced])
    assert bad["acked_seq"] == 5 and bad["problem"]
    rewritten = dict(rows[1], source="rewritten")
    rewritten["hash"] = entry_hash(rewritten)  # entry 2 again, but not the one received
    bad = push([rewritten])
    assert bad["acked_seq"] == 5 and bad["problem"]

    good = push(rows[5:])
    assert (good["acked_seq"], good["accepted"], good["problem"]) == (6, 1, None)
    r = dev.request("POST", protocol.JOURNAL, b'{"entries": [')
    _problem(r, 400)
    r = dev.post_json(protocol.JOURNAL, {"entries": [{"seq": "one"}]})
    _problem(r, 400, 422)


def test_flag_decisions_answer(enrolled: Enrolled) -> None:
    r = enrolled.device.get(f"{protocol.FLAGS}?since=0")
    assert r.status_code == 200
    doc = r.json()
    assert isinstance(doc["decisions"], list) and isinstance(doc["next"], int)


def test_reference_central_serves_openapi(target: Target) -> None:
    r = requests.get(target.url + "/openapi.json", timeout=30)
    if r.status_code == 404 and os.environ.get(ENV_URL):
        pytest.skip("this central publishes no OpenAPI document")
    spec = r.json()
    assert {protocol.ENROLL, protocol.LEDGER, protocol.JOURNAL, protocol.FLAGS} <= set(
        spec["paths"]
    )
