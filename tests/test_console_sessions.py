"""Console sessions end when they should, copies of the cookie included: logging out, a
password reset and disabling the user each end every session of that user (the cookie is
signed, so only the user's session epoch can take it back)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from coupons.clock import FixedClock
from sync.central import keyvault, users
from sync.central.app import create_app
from sync.central.console import session
from sync.central.models import Setting
from sync.central.store import Central
from tests import master_key
from tests.central_server import Running, Thread, running_central
from tests.conftest import T0
from tests.test_console import PASSWORD, login, token


@pytest.fixture
def central(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_central("sqlite", tmp_path_factory.mktemp("sessions"), FixedClock(T0)) as c:
        with c.central.session():
            users.add_user(c.central, "test", "lou", "admin", PASSWORD)
        yield c


def _copy(s: requests.Session) -> requests.Session:
    """A second holder of the same cookie (a copied cookie, another tab)."""
    other = requests.Session()
    other.cookies.update(s.cookies)
    return other


def _in(central: Running, s: requests.Session) -> bool:
    r = s.get(central.url + "/", timeout=10, allow_redirects=False)
    return r.status_code == 200


def test_logging_out_ends_a_copied_cookie_too(central: Running) -> None:
    s, r = login(central, "lou")
    assert r.status_code == 200 and _in(central, s)
    copy = _copy(s)
    page = s.get(central.url + "/", timeout=10)
    out = s.post(
        central.url + "/logout", data={"csrftoken": token(page.text)}, timeout=10,
        allow_redirects=False,
    )  # fmt: skip
    assert out.status_code == 303
    assert not _in(central, copy)  # the copy no longer opens the console


def test_a_password_reset_and_disabling_end_every_session(central: Running) -> None:
    s, _ = login(central, "lou")
    assert _in(central, s)
    with central.central.session():
        users.reset_password(central.central, "test", "lou", PASSWORD + "-new")
    assert not _in(central, s)
    s2, r = login(central, "lou", PASSWORD + "-new")
    assert r.status_code == 200 and _in(central, s2)
    with central.central.session():
        users.disable_user(central.central, "test", "lou")
    assert not _in(central, s2)


def test_the_cookie_key_is_sealed_and_every_instance_shares_it(central: Running) -> None:
    """The signing key is in the database only sealed under the master key (a copy of the
    database cannot forge a session), a plain key an older release stored is dropped, and
    a second instance over the same database accepts the first one's cookie."""
    with central.central.session():
        Setting.insert(key=session.PLAIN_SECRET_SETTING, value="old plain key").execute()
    s, r = login(central, "lou")
    assert r.status_code == 200
    with central.central.session():
        assert Setting.get_or_none(Setting.key == session.PLAIN_SECRET_SETTING) is None
        sealed = bytes.fromhex(str(Setting.get(Setting.key == session.SECRET_SETTING).value))
    with pytest.raises(keyvault.VaultError):
        keyvault.Vault(bytes(32)).open(session.SECRET_KID, session.SECRET_PURPOSE, sealed)
    other = Central(central.data, central.clock.now, central.database, master_key=master_key.KEY)
    server = Thread(create_app(other, publish_interval_s=None))
    try:
        again = s.get(server.url + "/", timeout=10, allow_redirects=False)
        assert again.status_code == 200 and "lou" in again.text
    finally:
        server.stop()
        other.close()
