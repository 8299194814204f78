"""The store group on the kiosk (issue 16): the manager page's card and /metrics read the
daemon's peers_status(), and a daemon without peers shows neither."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from tests.conftest import T0, World
from tests.test_kiosk_pages import Kiosk, client, login, serve

STATUS: Mapping[str, object] = {
    "enabled": True,
    "terminal": "S1-001",
    "listen": "127.0.0.11:7311",
    "bound_ms": 150,
    "peers": [
        {
            "terminal": "S1-002",
            "address": "127.0.0.12:7311",
            "up": True,
            "revoked": False,
            "last_exchange": int(T0 * 1000) - 2000,
            "rtt_ms": 1.234,
        },
        {
            "terminal": "S1-003",
            "address": None,
            "up": False,
            "revoked": False,
            "last_exchange": None,
            "rtt_ms": None,
        },
        {
            "terminal": "S1-004",
            "address": "127.0.0.14:7311",
            "up": False,
            "revoked": True,
            "last_exchange": None,
            "rtt_ms": None,
        },
    ],
    "claims": {"granted": 12, "held": 3, "no_peers": 1, "yielded": 0},
    "conflicts": 1,
    "dropped": {"forged": 2, "garbage": 5, "oversized": 0},
    "latency": {
        "buckets": [[0.005, 10], [0.015, 14], [0.15, 15], ["+Inf", 16]],
        "sum_s": 0.25,
        "count": 16,
    },
    "held": 4,
    "digest": "ab" * 16,
}


@pytest.fixture
def kiosk(world: World, tmp_path: Path) -> Iterator[Kiosk]:
    with serve(world, tmp_path, '\n[[input]]\nname = "sim"\nkind = "fake"\n') as k:
        yield k


def test_the_manager_page_shows_the_store_group(kiosk: Kiosk) -> None:
    # The status as sync/peers' service reports it, at the daemon's edge.
    kiosk.daemon.peers_status = lambda: STATUS  # type: ignore[attr-defined]
    with client(kiosk.url) as c:
        login(c)
        page = c.get("/manager").text
        assert 'id="peers"' in page and "Store group" in page
        assert 'id="peers-up">1 / 3<' in page
        assert 'id="peer-S1-002"' in page and "answering" in page and "1.2 ms" in page
        assert 'class="down" id="peer-S1-003"' in page and "not answering" in page
        assert 'class="revoked" id="peer-S1-004"' in page and "withdrawn" in page
        zh = c.get("/manager?lang=zh_CN").text
        assert "本店收银台" in zh and "在线" in zh and "已停用" in zh


def test_metrics_expose_the_peer_counters(kiosk: Kiosk) -> None:
    kiosk.daemon.peers_status = lambda: STATUS  # type: ignore[attr-defined]
    text = httpx.get(kiosk.url + "/metrics").text
    for line in (
        'redeem_peer_claims_total{outcome="granted"} 12.0',
        'redeem_peer_claims_total{outcome="held"} 3.0',
        "redeem_peer_conflicts_total 1.0",
        'redeem_peer_messages_dropped_total{why="forged"} 2.0',
        'redeem_peer_up{peer="S1-002"} 1.0',
        'redeem_peer_up{peer="S1-003"} 0.0',
        'redeem_peer_claim_seconds_bucket{le="0.015"} 14.0',
        'redeem_peer_claim_seconds_bucket{le="+Inf"} 16.0',
        "redeem_peer_claim_seconds_count 16.0",
        "redeem_peer_claim_seconds_sum 0.25",
    ):
        assert line in text, line


def test_a_daemon_without_peers_shows_no_store_group(kiosk: Kiosk) -> None:
    # The daemon as it is (no [peers] section: either no peers_status() yet, or one that
    # says disabled), then one whose status cannot be read: no card, no peer metrics, and
    # neither the page nor the scrape fails.
    def broken() -> Mapping[str, object]:
        raise RuntimeError("peers stopped")

    with client(kiosk.url) as c:
        login(c)
        for status in (None, broken):
            if status is not None:
                kiosk.daemon.peers_status = status  # type: ignore[attr-defined]
            page = c.get("/manager")
            assert page.status_code == 200 and 'id="peers"' not in page.text
            metrics = httpx.get(kiosk.url + "/metrics").text
            assert "redeem_device_up" in metrics and "redeem_peer_" not in metrics


def test_the_store_group_health_line_is_in_the_managers_language(kiosk: Kiosk) -> None:
    from ports.scan import Health
    from terminal.daemon.peers import PEERS_UP

    inputs = kiosk.daemon.health
    line = Health("degraded", PEERS_UP, words={"up": 1, "listed": 2}).to_dict()
    assert line["detail"] == "1 of 2 peers up"  # what logs, the CLI and the central read
    kiosk.daemon.health = lambda: {**inputs(), "peers": line}  # type: ignore[method-assign]
    with client(kiosk.url) as c:
        login(c)
        assert "1 of 2 peers up" in c.get("/manager").text
        assert "2 台收银台中 1 台在线" in c.get("/manager?lang=zh_CN").text
