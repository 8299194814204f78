"""Editing a campaign in the console, the preview of sample baskets, archiving, and the list's
figures (issue 14, item 3), on the real central on loopback with a real till: a saved edit
reaches the till with its next ledger; an impossible edit is refused at its field with
nothing changed; a preview saves nothing; an auditor changes nothing."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import requests

from coupons.clock import FixedClock
from sync.central import users
from sync.central.models import CampaignRow, CampaignUsage
from tests.central_server import Running, running_central
from tests.conftest import T0, basket
from tests.test_console import PASSWORD, entries, login, token

DAY = 86400


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_central("sqlite", tmp_path_factory.mktemp("edit"), FixedClock(T0)) as c:
        with c.central.session():
            users.add_user(c.central, "test", "mia", "marketer", PASSWORD)
            users.add_user(c.central, "test", "abe", "auditor", PASSWORD)
        yield c


@pytest.fixture(scope="module")
def mia(central: Running) -> requests.Session:
    return login(central, "mia")[0]


def _add(central: Running, **doc: object) -> None:
    doc = {"currency": "CNY", "kind": "fixed", "amount_minor": 1000, **doc}
    with central.central.session():
        central.central.add_campaign(doc)


def _doc(central: Running, cid: str) -> dict[str, object]:
    with central.central.session():
        return dict(central.central.campaign(cid).to_dict())


def _audit(central: Running, action: str) -> list[users.AuditDoc]:
    with central.central.session():
        return entries(action)


def _edit(central: Running, s: requests.Session, cid: str, **changes: str) -> requests.Response:
    """Open the edit form, keep what it is prefilled with, change some fields, save."""
    page = s.get(f"{central.url}/campaigns/{cid}/edit", timeout=10)
    assert page.status_code == 200, page.text
    values = dict(re.findall(r'<input name="([a-z_]+)" id="f-[a-z_]+" value="([^"]*)"', page.text))
    for name in ("kind", "stacking"):
        chosen = re.search(
            rf'<select name="{name}".*?<option value="(\w+)" selected', page.text, re.S
        )
        assert chosen, page.text
        values[name] = chosen.group(1)
    return s.post(
        f"{central.url}/campaigns/{cid}/edit",
        data={**values, **changes, "csrftoken": token(page.text)},
        timeout=10,
        allow_redirects=False,
    )


def _error_at(html: str, field: str) -> str:
    found = re.search(rf'<p class="error" id="e-{field}" role="alert">([^<]*)</p>', html)
    assert found, html
    return found.group(1)


def test_the_edit_form_is_the_campaign_prefilled(central: Running, mia: requests.Session) -> None:
    _add(
        central, id="PREFILL", name="Tea time", kind="threshold", amount_minor=2000,
        min_spend_minor=10050, valid_until=int(T0) + 10 * DAY, stores=["SH-2", "SH-1"],
        budget_minor=500000,
    )  # fmt: skip
    page = mia.get(central.url + "/campaigns/PREFILL/edit", timeout=10).text
    for field, value in (
        ("id", "PREFILL"), ("name", "Tea time"), ("amount", "20.00"), ("min_spend", "100.50"),
        ("valid_until", "2026-12-05"), ("stores", "SH-1, SH-2"), ("budget_money", "5000.00"),
    ):  # fmt: skip
        assert f'name="{field}" id="f-{field}" value="{value}"' in page, field
    assert 'value="PREFILL" readonly' in page  # the id is not for changing
    assert '<option value="threshold" selected>' in page


def test_a_saved_edit_reaches_the_till_with_the_next_ledger(
    central: Running, mia: requests.Session
) -> None:
    _add(central, id="SPRING", name="Spring", exclude_skus=["TOBACCO"], valid_until=int(T0) + DAY)
    with central.central.session():
        [coupon] = [i.token or "" for i in central.central.issue("SPRING", 1)]
    till = central.till()
    with till.opened() as engine:
        till.pull()
        assert engine.check(coupon, basket(5000)).discount_minor == 1000

        r = _edit(central, mia, "SPRING", name="Spring (more)", amount="15", budget_count="100")
        assert r.status_code == 303 and r.headers["location"] == "/campaigns"
        after = _doc(central, "SPRING")
        assert after["amount_minor"] == 1500 and after["name"] == "Spring (more)"
        assert after["budget_count"] == 100
        # What the form does not show is kept, and a date left as shown keeps its second.
        assert after["exclude_skus"] == ["TOBACCO"] and after["valid_until"] == int(T0) + DAY
        [edit] = [e for e in _audit(central, "campaign.edit") if e["target"] == "SPRING"]
        assert edit["actor"] == "user:mia"
        assert isinstance(edit["before"], dict) and isinstance(edit["after"], dict)
        assert (edit["before"]["amount_minor"], edit["after"]["amount_minor"]) == (1000, 1500)

        # Offline-first: the till knows nothing of the edit until its next ledger.
        assert engine.check(coupon, basket(5000)).discount_minor == 1000
        till.pull()
        assert engine.ledger.campaigns["SPRING"].amount_minor == 1500
        decision = engine.redeem(coupon, basket(5000))
        assert decision.accepted and decision.discount_minor == 1500


def test_saving_an_unchanged_form_changes_nothing(central: Running, mia: requests.Session) -> None:
    _add(central, id="SAME", valid_from=int(T0) - DAY, valid_until=int(T0) + 3 * DAY)
    before = _doc(central, "SAME")
    assert _edit(central, mia, "SAME").status_code == 303
    assert _doc(central, "SAME") == before
    assert not [e for e in _audit(central, "campaign.edit") if e["target"] == "SAME"]


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"kind": "percent", "percent": "10"}, "kind", "The kind cannot change"),
        ({"currency": "EUR"}, "currency", "The currency cannot change"),
        ({"id": "OTHER"}, "id", "The campaign id cannot change"),
        ({"amount": "5"}, "amount", "only change in the shopper&#39;s favour"),
        ({"stores": "SH-1"}, "stores", "stores may be added, none taken away"),
        ({"valid_from": "2026-11-26"}, "valid_from", "its start cannot move"),
        ({"valid_until": "2026-11-01"}, "valid_until", "use End on the campaign list"),
        ({"amount": "0"}, "amount", "needs a positive &#39;amount_minor&#39;"),  # the rules
        ({"budget_count": "many"}, "budget_count", "Not a whole number"),
    ],
)  # fmt: skip
def test_an_impossible_edit_is_refused_at_its_field_and_changes_nothing(
    central: Running, mia: requests.Session, changes: dict[str, str], field: str, words: str
) -> None:
    cid = "LIVE-" + re.sub(r"\W", "", words)[:20]  # one campaign per case
    _add(central, id=cid, stores=["SH-1", "SH-2"])
    with central.central.session():
        central.central.issue(cid, 1)  # coupons are out: shoppers hold its terms
    before = _doc(central, cid)
    r = _edit(central, mia, cid, **changes)
    assert r.status_code == 422
    assert words in _error_at(r.text, field)
    for name, typed in changes.items():  # what was typed stays in the form
        if name not in ("kind",):
            assert f'value="{typed}"' in r.text
    assert _doc(central, cid) == before
    assert not [e for e in _audit(central, "campaign.edit") if e["target"] == cid]
    [attempt] = [e for e in _audit(central, "campaign.edit.refused") if e["target"] == cid]
    assert attempt["actor"] == "user:mia" and attempt["before"] == before


def test_before_any_coupon_is_out_the_terms_may_go_down(
    central: Running, mia: requests.Session
) -> None:
    _add(central, id="DRAFT", amount_minor=20000, stores=["SH-1", "SH-2"])  # a typo: 200 off
    r = _edit(central, mia, "DRAFT", amount="20", stores="SH-1")
    assert r.status_code == 303
    assert _doc(central, "DRAFT")["amount_minor"] == 2000
    assert _doc(central, "DRAFT")["stores"] == ["SH-1"]


def test_an_ended_campaign_is_not_edited(central: Running, mia: requests.Session) -> None:
    _add(central, id="GONE")
    page = mia.get(central.url + "/campaigns/GONE/edit", timeout=10)
    with central.central.session():
        central.central.end_campaign("GONE")
    before = _doc(central, "GONE")
    r = mia.post(
        central.url + "/campaigns/GONE/edit",
        data={"id": "GONE", "kind": "fixed", "currency": "CNY", "amount": "50",
              "csrftoken": token(page.text)},
        timeout=10,
    )  # fmt: skip
    assert r.status_code == 422 and "This campaign has ended" in r.text
    assert _doc(central, "GONE") == before
    assert mia.get(central.url + "/campaigns/GONE/edit", timeout=10).status_code == 409
    assert mia.get(central.url + "/campaigns/NOPE/edit", timeout=10).status_code == 404


# ---------------------------------------------------------------- the preview


def _preview(
    central: Running, s: requests.Session, start: str = "/campaigns/new", **fields: str
) -> requests.Response:
    page = s.get(central.url + start, timeout=10)
    return s.post(
        central.url + "/campaigns/preview",
        data={"csrftoken": token(page.text), **fields},
        timeout=10,
    )


def _outcomes(html: str) -> list[tuple[str, str, str]]:
    """(basket total, discount, reason code) per row of the preview."""
    rows = re.findall(
        r'<tr class="outcome \w+" data-reason="(\w+)">\s*<td>[^<]*</td>\s*'
        r'<td class="num">([^<]*)</td>\s*<td class="num discount">([^<]*)',
        html,
    )
    return [(total, discount, reason) for reason, total, discount in rows]


def test_preview_of_a_new_threshold_campaign_saves_nothing(
    central: Running, mia: requests.Session
) -> None:
    audit_before = len(_audit(central, "campaign.add")) + len(_audit(central, "campaign.edit"))
    r = _preview(
        central, mia, id="PREVIEWED", kind="threshold", currency="CNY", amount="20",
        min_spend="100", basket="TEA-1 30 2 drinks\nCAKE 45",
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert _outcomes(r.text) == [
        ("CNY 50.00", "CNY 0.00", "below_minimum"),
        ("CNY 100.00", "CNY 20.00", "ok"),
        ("CNY 300.00", "CNY 20.00", "ok"),
        ("CNY 105.00", "CNY 20.00", "ok"),  # the typed basket
    ]
    assert "minimum spend" in r.text  # the reason in the words a cashier says
    assert "Nothing has been saved" in r.text
    assert 'value="PREVIEWED"' in r.text  # the form keeps what was typed
    with central.central.session():
        assert CampaignRow.get_or_none(CampaignRow.id == "PREVIEWED") is None
    after = len(_audit(central, "campaign.add")) + len(_audit(central, "campaign.edit"))
    assert after == audit_before


def test_preview_of_a_percent_campaign_with_a_cap_and_an_item_rule(
    central: Running, mia: requests.Session
) -> None:
    r = _preview(
        central, mia, id="PCT", kind="percent", currency="CNY", percent="15", cap="30",
        basket="SKU-1 12.50 4",
    )  # fmt: skip
    assert _outcomes(r.text) == [
        ("CNY 50.00", "CNY 7.50", "ok"),
        ("CNY 100.00", "CNY 15.00", "ok"),
        ("CNY 300.00", "CNY 30.00", "ok"),  # capped
        ("CNY 50.00", "CNY 7.50", "ok"),
    ]


def test_preview_of_a_gift_campaign(central: Running, mia: requests.Session) -> None:
    r = _preview(
        central, mia, id="TOTE", kind="gift", currency="CNY", gift_sku="TOTE-BAG",
        amount="15", min_spend="200",
    )  # fmt: skip
    assert [why for _, _, why in _outcomes(r.text)] == ["below_minimum", "below_minimum", "ok"]
    assert "gift <code>TOTE-BAG</code>" in r.text


def test_preview_of_an_edit_uses_the_stored_rules_and_the_typed_amount(
    central: Running, mia: requests.Session
) -> None:
    # A rule the form does not show (only these SKUs) is previewed as the tills apply it.
    _add(central, id="ITEMS", include_skus=["TEA-1"], amount_minor=500)
    r = _preview(
        central, mia, "/campaigns/ITEMS/edit", editing="ITEMS", id="ITEMS", kind="fixed",
        currency="CNY", amount="8", basket="TEA-1 6 1\nCAKE 20 1",
    )  # fmt: skip
    assert [(t, d, why) for t, d, why in _outcomes(r.text)] == [
        ("CNY 50.00", "CNY 0.00", "no_eligible_items"),  # a keyed-in total has no TEA-1
        ("CNY 100.00", "CNY 0.00", "no_eligible_items"),
        ("CNY 300.00", "CNY 0.00", "no_eligible_items"),
        ("CNY 26.00", "CNY 6.00", "ok"),  # never more than the eligible lines
    ]
    assert "Save the changes" in r.text  # still the edit form
    assert _doc(central, "ITEMS")["amount_minor"] == 500


def test_preview_refusals_at_their_fields(central: Running, mia: requests.Session) -> None:
    r = _preview(central, mia, id="BADP", kind="percent", currency="CNY", percent="150")
    assert r.status_code == 422 and "percent" in _error_at(r.text, "percent")
    r = _preview(
        central, mia, id="BADB", kind="fixed", currency="CNY", amount="5", basket="TEA-1 lots"
    )
    assert r.status_code == 422 and "Line 1" in _error_at(r.text, "basket")


def test_a_paused_campaign_previews_with_the_tills_refusal(
    central: Running, mia: requests.Session
) -> None:
    _add(central, id="HUSH")
    with central.central.session():
        central.central.pause_campaign("HUSH")
    r = _preview(
        central, mia, "/campaigns/HUSH/edit", editing="HUSH", id="HUSH", kind="fixed",
        currency="CNY", amount="10",
    )  # fmt: skip
    assert 'id="refused-now"' in r.text and "campaign_paused" in r.text


# ---------------------------------------------------------------- archive and the list


def _step(central: Running, s: requests.Session, cid: str, step: str) -> requests.Response:
    page = s.get(central.url + "/campaigns", timeout=10)
    return s.post(
        f"{central.url}/campaigns/{cid}/{step}",
        data={"csrftoken": token(page.text)},
        timeout=10,
        allow_redirects=False,
    )


def test_archive_only_an_ended_campaign_and_hide_it(
    central: Running, mia: requests.Session
) -> None:
    _add(central, id="OLD")
    page = mia.get(central.url + "/campaigns", timeout=10).text
    assert 'id="archive-OLD"' not in page and 'id="edit-OLD"' in page
    refused = _step(central, mia, "OLD", "archive")
    assert refused.status_code == 409
    assert "Only an ended campaign can be archived: end it first." in refused.text
    with central.central.session():
        assert central.central.campaign_summary("OLD").status == "active"
    assert [e for e in _audit(central, "campaign.archive.refused") if e["target"] == "OLD"]

    assert _step(central, mia, "OLD", "end").status_code == 303
    page = mia.get(central.url + "/campaigns", timeout=10).text
    assert 'id="archive-OLD"' in page and 'id="edit-OLD"' not in page
    assert _step(central, mia, "OLD", "archive").status_code == 303
    [entry] = [e for e in _audit(central, "campaign.archive") if e["target"] == "OLD"]
    assert isinstance(entry["after"], dict) and entry["after"]["status"] == "archived"

    shown = mia.get(central.url + "/campaigns", timeout=10).text
    assert 'id="campaign-OLD"' not in shown and 'id="show-archived"' in shown
    everything = mia.get(central.url + "/campaigns?archived=1", timeout=10).text
    assert 'id="campaign-OLD"' in everything and "archived" in everything


def test_the_list_shows_the_redemption_rate(central: Running, mia: requests.Session) -> None:
    _add(central, id="RATE", budget_minor=100000, valid_until=int(T0) + DAY)
    with central.central.session():
        central.central.issue("RATE", 8)
        CampaignUsage.create(campaign="RATE", count=2, minor=2000)
    page = mia.get(central.url + "/campaigns", timeout=10).text
    row = re.search(r'<tr id="campaign-RATE">(.*?)</tr>', page, re.S)
    assert row
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
    # id, name, status, issued, redemptions, redeemed value, rate, budget left, valid until
    assert [c.strip() for c in cells[3:8]] == ["8", "2", "CNY 20.00", "25.0%", "CNY 980.00"]
    assert "Redemption rate" in page


# ---------------------------------------------------------------- an auditor


def test_an_auditor_reads_and_previews_but_changes_nothing(central: Running) -> None:
    _add(central, id="AUDITED")
    abe, _ = login(central, "abe")
    before = _doc(central, "AUDITED")
    page = abe.get(central.url + "/campaigns/AUDITED/edit", timeout=10)
    assert page.status_code == 200  # every page is readable by every role
    r = abe.post(
        central.url + "/campaigns/AUDITED/edit",
        data={"id": "AUDITED", "kind": "fixed", "currency": "CNY", "amount": "99",
              "csrftoken": token(page.text)},
        timeout=10,
    )  # fmt: skip
    assert r.status_code == 403
    assert _step(central, abe, "AUDITED", "archive").status_code == 403
    assert _doc(central, "AUDITED") == before
    refused = [e for e in _audit(central, "refused") if e["actor"] == "user:abe"]
    assert {e["target"] for e in refused} >= {
        "POST /campaigns/AUDITED/edit",
        "POST /campaigns/AUDITED/archive",
    }
    # A preview changes nothing: an auditor may see what baskets would get.
    shown = _preview(central, abe, id="X", kind="fixed", currency="CNY", amount="5")
    assert shown.status_code == 200 and _outcomes(shown.text)[0][1] == "CNY 5.00"


def test_the_edit_page_in_chinese(central: Running, mia: requests.Session) -> None:
    _add(central, id="ZH")
    page = mia.get(central.url + "/campaigns/ZH/edit?lang=zh_CN", timeout=10).text
    assert "编辑活动" in page and "预览" in page and "保存修改" in page
    mia.get(central.url + "/campaigns?lang=en", timeout=10)  # back to English for the rest
