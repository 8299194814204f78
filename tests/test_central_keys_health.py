"""Keys and readiness at the real central (issue 11): `revoke-key` refuses the root and
ledger keys and changes nothing; /healthz answers 503 with the reason while the central
cannot sign or publish (a key whose sealed copy does not open), 200 again once fixed; head
office sets the burst limits."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from coupons.clock import FixedClock
from coupons.keys import PURPOSE_ISSUER, PURPOSE_LEDGER
from sync.central.models import KeyRow
from tests.central_server import Running, running_central
from tests.conftest import T0


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_central("sqlite", tmp_path_factory.mktemp("keys"), FixedClock(T0)) as c:
        yield c


def _keys(central: Running) -> list[tuple[str, str, bool, bool]]:
    with central.central.session():
        return sorted((r.kid, r.purpose, r.active, r.revoked) for r in KeyRow.select())


def _active(central: Running, purpose: str) -> str:
    with central.central.session():
        return str(KeyRow.get(KeyRow.active & (KeyRow.purpose == purpose)).kid)


def test_revoke_key_refuses_the_ledger_key_and_changes_nothing(central: Running) -> None:
    before, version = _keys(central), central.central.latest()
    kid = _active(central, PURPOSE_LEDGER)
    r = central.cli("revoke-key", "--kid", kid)
    assert r.returncode != 0
    assert f"key {kid} is a ledger key and cannot be revoked; only issuer keys can" in r.stderr
    assert "rotate-key --purpose ledger" in r.stderr
    assert _keys(central) == before
    with central.central.session():
        assert central.central.latest() == version
        assert central.central.publish() > 0  # it can still publish


def test_revoke_key_refuses_the_root_key_and_changes_nothing(central: Running) -> None:
    before = _keys(central)
    kid = json.loads((central.data / "trust-anchor.json").read_text())["kid"]
    r = central.cli("revoke-key", "--kid", kid.upper())
    assert r.returncode != 0
    assert f"key {kid} is the root key" in r.stderr and "cannot be revoked" in r.stderr
    assert _keys(central) == before


def test_revoke_key_still_revokes_an_issuer_key(central: Running) -> None:
    old = _active(central, PURPOSE_ISSUER)
    # At the central's (pinned) time, so the new key's certificate is valid now.
    assert central.cli("rotate-key", "--purpose", "issuer", now=str(int(T0))).returncode == 0
    r = central.cli("revoke-key", "--kid", old)
    assert r.returncode == 0, r.stderr
    assert [k for k in _keys(central) if k[0] == old] == [(old, PURPOSE_ISSUER, False, True)]


@pytest.mark.parametrize("which", ["ledger", "root"])
def test_health_is_503_with_the_reason_while_a_key_does_not_open(
    central: Running, which: str
) -> None:
    assert requests.get(central.url + "/healthz", timeout=30).status_code == 200
    anchor = json.loads((central.data / "trust-anchor.json").read_text())
    name = anchor["kid"] if which == "root" else _active(central, PURPOSE_LEDGER)
    with central.central.session():
        sealed = bytes(KeyRow.get(KeyRow.kid == name).sealed)
        damaged = sealed[:-1] + bytes([sealed[-1] ^ 1])  # one bit of the GCM tag
        KeyRow.update(sealed=damaged).where(KeyRow.kid == name).execute()
    try:
        r = requests.get(central.url + "/healthz", timeout=30)
        assert r.status_code == 503
        doc = r.json()
        assert doc["ok"] is False and doc["code"] == "not-ready"
        assert any(name in p and "does not open" in p for p in doc["problems"]), doc
        what = "cannot certify keys" if which == "root" else "cannot publish"
        assert what in doc["detail"]
    finally:
        with central.central.session():
            KeyRow.update(sealed=sealed).where(KeyRow.kid == name).execute()
    fixed = requests.get(central.url + "/healthz", timeout=30)
    assert fixed.status_code == 200 and fixed.json()["ok"] is True


def test_head_office_sets_the_burst_limits_and_the_ledger_carries_them(
    central: Running,
) -> None:
    r = central.cli(
        "policy", "--set", "burst_per_terminal=7", "--set", "burst_window_s=120", "--json"
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["policy"]["burst_per_terminal"] == 7
    till = central.till("S1")
    with till.opened() as engine:
        till.pull()
        policy = engine.ledger.policy
        assert (policy.burst_per_terminal, policy.burst_window_s) == (7, 120)
        assert policy.burst_per_cashier == 30  # untouched fields keep their value
    bad = central.cli("policy", "--set", "burst_per_till=3")
    assert bad.returncode != 0 and "burst_per_terminal" in bad.stderr
    negative = central.cli("policy", "--set", "burst_per_coupon=-1")
    assert negative.returncode != 0 and "'burst_per_coupon' must be a non-negative" in (
        negative.stderr
    )
    shown = central.cli("policy", "--json")
    assert json.loads(shown.stdout)["policy"]["burst_per_coupon"] == 3
