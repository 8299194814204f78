"""The central's /metrics (sync/central/metrics.py) and JSON logs, on the real central on
loopback: a till's signed sync rounds move the counters and its replay shows as an open
flag; a client outside the allow-list, or one behind a proxy, gets 403; `redeem-central
serve` logs JSON lines that carry its instance id."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import httpx
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from coupons.clock import FixedClock
from sync import protocol
from sync.central.app import create_app
from sync.central.store import Central
from sync.client import Direct, SyncClient
from sync.http import CentralLink, Link
from tests import master_key
from tests.central_server import BACKENDS, Running, Thread, chain, running_central, serve_process
from tests.conftest import T0, basket

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
P = "edge_redeem_central_"


def scrape(url: str) -> Samples:
    r = requests.get(url + "/metrics", timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(params=BACKENDS)
def central(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Running]:
    with running_central(request.param, tmp_path, FixedClock(T0)) as c:
        c.central.add_campaign(
            {"id": "M1", "kind": "fixed", "currency": "CNY", "amount_minor": 300}
        )
        yield c


def test_a_sync_round_moves_the_counters_and_a_replay_shows_as_an_open_flag(
    central: Running,
) -> None:
    before = scrape(central.url)
    tokens = [i.token or "" for i in central.central.issue("M1", 2)]
    till = central.till()
    with till.opened() as engine:
        link = CentralLink(Link(central.url), till.device.key, till.terminal, central.clock)
        client = SyncClient(till.data, link, Direct(engine))
        first = client.run_round()  # the ledger from nothing: a snapshot
        assert first.ok, first.error
        for t in tokens:
            assert engine.redeem(t, basket(2000)).accepted
        assert not engine.redeem(tokens[0], basket(2000)).accepted  # a replay, and its flag
        second = client.run_round()  # the sales go up
        assert second.ok, second.error
        central.publish()  # the publisher's tick: a version carrying them
        third = client.run_round()  # which comes back as a delta
        assert third.ok, third.error
        link.close()
    after = scrape(central.url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved(P + "sync_rounds_total") == 3
    assert moved(P + "journal_entries_total", result="accepted") >= 4  # 2 sales, replay, flag
    assert moved(P + "journal_entries_total", result="refused") == 0
    assert moved(P + "ledger_pulls_total", status="200", kind="snapshot") == 1
    assert moved(P + "ledger_pulls_total", status="200", kind="delta") == 1
    # The tick after the upload that redeemed two serials published versions, its lag bound
    # observed.
    assert moved(P + "versions_published_total") >= 1
    assert moved(P + "publish_lag_seconds_count") >= 1
    assert moved(P + "request_duration_seconds_count", route=protocol.LEDGER, status="2xx") == 2
    # The second round's pull came before the tick: nothing new yet, a 304.
    assert moved(P + "request_duration_seconds_count", route=protocol.LEDGER, status="3xx") == 1
    assert moved(P + "request_duration_seconds_count", route=protocol.JOURNAL, status="2xx") >= 1
    assert value(after, P + "open_flags", kind="replay") == 1
    assert value(after, P + "ledger_scopes") == 1
    assert info(after) == {
        "instance": f"{socket.gethostname()}:{os.getpid()}",  # the server runs in this process
        "version": metadata.version("edge-redeem"),
        "protocol": protocol.VERSION,
    }


def info(samples: Samples) -> dict[str, str]:
    """The labels of edge_redeem_central_instance_info."""
    found = [dict(labels) for name, labels in samples if name == P + "instance_info"]
    assert len(found) == 1, found
    return found[0]


def test_refused_entries_and_route_templates_not_raw_paths(central: Running) -> None:
    before = scrape(central.url)
    device = central.device()
    entries = chain({}, {}, {})
    entries[1]["detail"] = '{"altered": true}'  # its hash no longer matches its content
    reply = device.push(entries)
    assert reply["accepted"] == 1 and reply["problem"]
    token = central.admin_token()
    r = requests.post(
        central.url + protocol.ADMIN_PREFIX + "/flags/424242",
        json={"status": "resolved"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert r.status_code == 404
    assert requests.get(central.url + "/no/such/path/7", timeout=30).status_code == 404
    after = scrape(central.url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved(P + "journal_entries_total", result="accepted") == 1
    assert moved(P + "journal_entries_total", result="refused") == 2
    assert value(after, P + "open_flags", kind="journal_altered") == 1
    count = P + "request_duration_seconds_count"
    assert moved(count, route=protocol.ADMIN_PREFIX + "/flags/{flag_id}", status="4xx") == 1
    assert moved(count, route="other", status="4xx") == 1
    assert not [labels for name, labels in after if "424242" in str(labels) or "/7" in str(labels)]


def test_metrics_only_for_loopback_and_the_networks_allowed(central: Running) -> None:
    # 127.0.0.2 is not loopback to the allow-list (only 127.0.0.1 and ::1 are); 127.0.0.3 is
    # listed for this app.
    server = Thread(create_app(central.central, metrics_allow=["127.0.0.3/32"]))
    try:
        for url in (central.url, server.url):
            with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as out:
                r = out.get(url + "/metrics")
            assert r.status_code == 403, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] == "metrics-not-allowed"
            # The rest of the central answers that address as before.
            with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as out:
                assert out.get(url + "/healthz").status_code == 200
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3")) as listed:
            assert listed.get(server.url + "/metrics").status_code == 200
            assert listed.get(central.url + "/metrics").status_code == 403  # not listed there
        # Through a proxy the peer address is the proxy's: refused even from loopback.
        proxied = requests.get(
            central.url + "/metrics", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=30
        )
        assert proxied.status_code == 403 and "proxy" in proxied.json()["detail"]
    finally:
        server.stop()


def test_serve_logs_json_lines_with_its_instance_id(tmp_path: Path) -> None:
    Central.init(tmp_path / "central", master_key=master_key.KEY).close()
    env = {"REDEEM_CENTRAL_LOG_LEVEL": "info", "REDEEM_CENTRAL_INSTANCE_ID": "central-b:7"}
    proc, url = serve_process(tmp_path / "central", None, env=env)
    try:
        assert requests.get(url + "/healthz", timeout=10).status_code == 200
        samples = scrape(url)
        refused = requests.get(url + "/metrics", headers={"Forwarded": "for=x"}, timeout=10)
        assert refused.status_code == 403
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
    assert info(samples)["instance"] == "central-b:7"
    assert proc.stderr is not None
    lines = [line for line in proc.stderr.read().splitlines() if line.strip()]
    docs = [json.loads(line) for line in lines]  # every line is one JSON object
    assert docs and all(d["instance"] == "central-b:7" for d in docs)
    assert all({"ts", "level", "logger", "msg"} <= set(d) for d in docs)
    assert any(d["logger"] == "uvicorn.access" and "/healthz" in d["msg"] for d in docs)
    assert any(d["logger"] == "sync.central.metrics" and d["level"] == "WARNING" for d in docs), (
        "our own loggers go through the same handler"
    )


def test_a_bad_metrics_network_is_refused_at_start(central: Running) -> None:
    r = central.cli("serve", "--metrics-allow", "10.0.0.0/33", "--port", "0")
    assert r.returncode == 2 and "--metrics-allow '10.0.0.0/33'" in r.stderr
