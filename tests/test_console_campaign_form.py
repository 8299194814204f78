"""A new campaign from the console's form (issue 14, item 3): checked by the tills' own
rules, each refusal beside its field with nothing saved, the campaign added and audited,
and refused to a role without campaigns.write."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import requests

from coupons.clock import FixedClock
from sync.central import users
from sync.central.models import CampaignRow
from tests.central_server import Running, running_central
from tests.conftest import T0
from tests.test_console import PASSWORD, login, token


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_central("sqlite", tmp_path_factory.mktemp("form"), FixedClock(T0)) as c:
        with c.central.session():
            users.add_user(c.central, "test", "mia", "marketer", PASSWORD)
            users.add_user(c.central, "test", "ana", "analyst", PASSWORD)
        yield c


def _post(central: Running, s: requests.Session, **fields: str) -> requests.Response:
    page = s.get(central.url + "/campaigns/new", timeout=10)
    assert page.status_code == 200
    return s.post(
        central.url + "/campaigns/new",
        data={"csrftoken": token(page.text), **fields},
        timeout=10,
        allow_redirects=False,
    )


def _error_at(html: str, field: str) -> str:
    found = re.search(rf'<p class="error" id="e-{field}" role="alert">([^<]*)</p>', html)
    assert found, html
    return found.group(1)


def _saved(central: Running, cid: str) -> bool:
    with central.central.session():
        return CampaignRow.get_or_none(CampaignRow.id == cid) is not None


def test_a_marketer_adds_a_threshold_campaign_in_major_units(central: Running) -> None:
    s, _ = login(central, "mia")
    r = _post(
        central, s, id="SPRING", name="Spring", kind="threshold", currency="CNY",
        amount="20", min_spend="100.50", valid_until="2027-03-31", stores="SH-1, SH-2",
    )  # fmt: skip
    assert r.status_code == 303 and r.headers["location"] == "/campaigns"
    with central.central.session():
        campaign = central.central.campaign("SPRING")
        added = [e for e in users.audit_log() if e["action"] == "campaign.add"]
    assert campaign.amount_minor == 2000 and campaign.min_spend_minor == 10050
    assert campaign.stores == frozenset({"SH-1", "SH-2"})
    assert added and added[-1]["actor"] == "user:mia" and added[-1]["target"] == "SPRING"


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"id": "T1", "kind": "threshold", "amount": "20"}, "min_spend", "min_spend_minor"),
        ({"id": "P1", "kind": "percent", "percent": "150"}, "percent", "percent"),
        ({"id": "F1", "kind": "fixed", "amount": "twenty"}, "amount", "Not an amount"),
        ({"id": "F2", "kind": "fixed", "amount": "0.001"}, "amount", "Not an amount"),
        (
            {"id": "F3", "kind": "fixed", "amount": "5", "valid_until": "31/03/2027"},
            "valid_until",
            "Not a date",
        ),
        ({"id": "bad id!", "kind": "fixed", "amount": "5"}, "id", "id"),
        ({"id": "TAKEN", "kind": "fixed", "amount": "5"}, "id", "exists already"),
    ],
)  # fmt: skip
def test_an_impossible_campaign_is_refused_at_its_field_and_nothing_is_saved(
    central: Running, fields: dict[str, str], field: str, words: str
) -> None:
    if fields["id"] == "TAKEN":
        with central.central.session():
            central.central.add_campaign(
                {"id": "TAKEN", "kind": "fixed", "currency": "CNY", "amount_minor": 100}
            )
    s, _ = login(central, "mia")
    r = _post(central, s, currency="CNY", **fields)
    assert r.status_code == 422
    assert words in _error_at(r.text, field)
    assert f'value="{fields["id"]}"' in r.text  # what was typed stays in the form
    if fields["id"] == "TAKEN":  # the campaign there is unchanged
        with central.central.session():
            assert central.central.campaign("TAKEN").amount_minor == 100
    else:
        assert not _saved(central, fields["id"])


def test_a_role_without_campaigns_write_is_refused_and_audited(central: Running) -> None:
    s, _ = login(central, "ana")
    r = _post(central, s, id="ANA1", kind="fixed", currency="CNY", amount="5")
    assert r.status_code == 403 and not _saved(central, "ANA1")
    with central.central.session():
        refused = [e for e in users.audit_log() if e["action"] == "refused"]
    assert refused and refused[-1]["actor"] == "user:ana"


def test_the_form_in_chinese(central: Running) -> None:
    s, _ = login(central, "mia")
    page = s.get(central.url + "/campaigns/new?lang=zh-CN", timeout=10)
    assert "新建活动" in page.text and "满减" in page.text
