"""The kiosk on the network (kiosk_ui/guard.py): the daemon's own web server on loopback
refuses a forged Host, a cross-site Origin/Referer, a form post without its CSRF token and
a client address outside [kiosk] allowed_clients (connecting from 127.0.0.2); a config
that binds a non-loopback address needs allow_network and allowed_clients, and warns."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from coupons.clock import FixedClock
from kiosk_ui import tills
from kiosk_ui.app import create_app
from terminal.daemon import config as config_mod
from terminal.daemon.runner import Daemon
from tests.conftest import T0, World
from tests.postgres import free_port
from tests.test_daemon import REPO, prepare, write_config
from tests.test_kiosk_pages import Kiosk, client, serve

SIM = '\n[[input]]\nname = "sim"\nkind = "fake"\n'
# 127.0.0.3 is let in by the list; 127.0.0.2 is not (only 127.0.0.1 and ::1 always are).
KIOSK = 'host = "127.0.0.1"\nhostnames = ["till3.local"]\nallowed_clients = ["127.0.0.3/32"]\n'
BASKET = {"currency": "CNY", "total_minor": 12800}


@pytest.fixture
def kiosk(world: World, tmp_path: Path) -> Iterator[Kiosk]:
    body = f"\n[kiosk]\n{KIOSK}port = {free_port()}\n" + SIM
    with serve(world, tmp_path, body) as k:
        yield k


def from_address(kiosk: Kiosk, address: str) -> httpx.Client:
    """A client whose connections leave from `address` (another loopback address)."""
    return httpx.Client(base_url=kiosk.url, transport=httpx.HTTPTransport(local_address=address))


def token_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrftoken" value="([^"]+)"', page.text)
    assert found, "the page's form carries no CSRF token"
    return found.group(1)


def total(kiosk: Kiosk) -> int | None:
    basket = kiosk.daemon.till.basket
    return basket.total_minor if basket else None


def test_a_forged_host_is_refused(kiosk: Kiosk) -> None:
    port = kiosk.url.rsplit(":", 1)[1]
    with httpx.Client(base_url=kiosk.url) as c:
        page = c.get("/", headers={"Host": f"rebound.example:{port}"})
        assert page.status_code == 400 and 'id="refused"' in page.text
        assert "does not answer to that name" in page.text
        api = c.post("/api/v1/checkouts", json={"basket": BASKET}, headers={"Host": "evil"})
        assert api.status_code == 400
        assert api.headers["content-type"] == "application/problem+json"
        assert api.json()["code"] == "host-not-allowed"
        for name in (f"127.0.0.1:{port}", f"localhost:{port}", f"till3.local:{port}"):
            assert c.get("/", headers={"Host": name}).status_code == 200, name


def test_a_post_from_another_site_is_refused(kiosk: Kiosk, world: World) -> None:
    with client(kiosk.url) as c:
        for header in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/x"}):
            r = c.post("/basket", data={"total": "99.00"}, headers=header)
            assert r.status_code == 403 and "another web page" in r.text, header
            assert total(kiosk) is None
        own = c.post("/basket", data={"total": "99.00"}, headers={"Origin": kiosk.url})
        assert own.status_code == 303 and total(kiosk) == 9900
    # The POS API: a till's server-to-server call (no Origin) works; a browser page of
    # another site sending the till's token does not.
    bearer = {"Authorization": f"Bearer {tills.issue(world.data, 'till1')}"}
    with httpx.Client(base_url=kiosk.url) as c:
        body = {"basket": BASKET}
        foreign = {**bearer, "Origin": "http://evil.example", "Idempotency-Key": "k1"}
        r = c.post("/api/v1/checkouts", json=body, headers=foreign)
        assert r.status_code == 403 and r.json()["code"] == "cross-site-request"
        ok = c.post("/api/v1/checkouts", json=body, headers={**bearer, "Idempotency-Key": "k2"})
        assert ok.status_code == 201, ok.text


def test_a_form_post_needs_its_csrf_token(kiosk: Kiosk) -> None:
    with httpx.Client(base_url=kiosk.url) as c:
        bare = c.post("/basket", data={"total": "12.00"})  # no cookie, no token
        assert bare.status_code == 403 and "This form has expired" in bare.text
        page = c.get("/")  # the browser's way: load the page, post its form
        token = token_of(page)
        wrong = c.post("/basket", data={"total": "12.00", "csrftoken": token[:-2] + "xx"})
        assert wrong.status_code == 403 and total(kiosk) is None
        right = c.post("/basket", data={"total": "12.00", "csrftoken": token})
        assert right.status_code == 303 and total(kiosk) == 1200
        login = c.get("/manager")  # every POST form on every page carries it
        assert login.text.count('name="csrftoken"') == login.text.count('method="post"') >= 1


def test_cashier_actions_from_a_client_outside_the_list_get_403(kiosk: Kiosk) -> None:
    with client(kiosk.url) as ours:  # 127.0.0.1: the Pi's own kiosk browser
        token = ours.cookies["csrftoken"]
    published = kiosk.daemon.published_count
    with from_address(kiosk, "127.0.0.2") as outsider:
        outsider.cookies.set("csrftoken", token)  # even with a valid token
        for path, data in (("/basket", {"total": "50.00"}), ("/void", {})):
            r = outsider.post(path, data={**data, "csrftoken": token})
            assert r.status_code == 403 and "allowed_clients" in r.text, path
        assert outsider.get("/").status_code == 403
    assert total(kiosk) is None and kiosk.daemon.published_count == published
    with from_address(kiosk, "127.0.0.3") as listed:
        listed.cookies.set("csrftoken", token)
        r = listed.post("/basket", data={"total": "50.00", "csrftoken": token})
        assert r.status_code == 303 and total(kiosk) == 5000


def test_a_network_address_needs_allow_network_and_clients(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text('[kiosk]\nhost = "0.0.0.0"\nport = 8080\n')
    with pytest.raises(config_mod.ConfigError) as err:
        config_mod.load(path)
    assert f"{path}:2: kiosk.host" in str(err.value) and "allow_network" in str(err.value)
    path.write_text('[kiosk]\nhost = "192.168.1.20"\nallow_network = true\n')
    with pytest.raises(config_mod.ConfigError) as err:
        config_mod.load(path)
    assert f"{path}" in str(err.value) and "kiosk.allowed_clients" in str(err.value)
    path.write_text('[kiosk]\nallowed_clients = ["192.168.1.0/33"]\n')
    with pytest.raises(config_mod.ConfigError, match=r":2: kiosk.allowed_clients"):
        config_mod.load(path)


def test_serving_the_network_warns_and_lets_only_listed_clients_in(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Shown in process (no socket on a network address here): the app as the daemon
    builds it for host 0.0.0.0, asked with the Host and client address a LAN would give."""
    prepare(world, 1)
    network = (
        '\n[kiosk]\nhost = "0.0.0.0"\nport = 8080\nenabled = false\nallow_network = true\n'
        'hostnames = ["192.168.1.20"]\nallowed_clients = ["192.168.1.0/24"]\n'
    )
    cfg = config_mod.load(write_config(tmp_path / "d.toml", world.data, network + SIM))
    daemon = Daemon(cfg, FixedClock(T0))
    daemon.start()
    try:
        with caplog.at_level(logging.WARNING, logger="kiosk_ui.app"):
            app = create_app(daemon)
        assert any(
            "serves the network on 0.0.0.0:8080" in r.getMessage()
            and "192.168.1.0/24" in r.getMessage()
            for r in caplog.records
        )
        lan = "http://192.168.1.20:8080"
        with TestClient(app, base_url=lan, client=("192.168.1.7", 40000)) as till:
            assert till.get("/").status_code == 200
        with TestClient(app, base_url=lan, client=("10.0.0.9", 40000)) as stranger:
            assert stranger.get("/").status_code == 403
            assert stranger.post("/basket", data={"total": "1.00"}).status_code == 403
        with TestClient(app, base_url="http://0.0.0.0:8080", client=("192.168.1.7", 1)) as c:
            assert c.get("/").status_code == 400  # the wildcard is no name to be reached by
    finally:
        daemon.stop()


def test_the_daemon_does_not_start_without_its_kiosk(world: World, tmp_path: Path) -> None:
    """Enabled but unable to listen (the port is taken): `redeem run` stops with the reason
    (exit 2, which systemd does not restart) instead of running without its cashier
    screen and POS API; before, it logged an error and ran on."""
    prepare(world, 1)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        body = f'\n[kiosk]\nhost = "127.0.0.1"\nport = {port}\n' + SIM
        path = write_config(tmp_path / "d.toml", world.data, body)
        run = subprocess.run(
            [sys.executable, "-m", "terminal.cli", "run", "--config", str(path)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
    assert run.returncode == 2, run.stderr
    assert f"{path}: kiosk: the kiosk cannot serve on 127.0.0.1:{port}" in run.stderr
    assert "in use" in run.stderr and "Traceback" not in run.stderr


def test_the_kiosk_answers_without_nagles_delay() -> None:
    """Each answer leaves in one go: the connections the kiosk accepts have Nagle off, and
    say IPPROTO_TCP, which is what asyncio (so uvicorn) needs before it turns Nagle off
    itself. Without it a kept-alive POS connection waited 40 ms for each answer's body
    (bench/pos_api.py: an apply's p50 51.9 ms before, 7.1 ms after)."""
    from kiosk_ui.app import listen_tcp

    with listen_tcp("127.0.0.1", 0) as listener:
        with socket.create_connection(listener.getsockname()[:2]):
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.proto == socket.IPPROTO_TCP
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
