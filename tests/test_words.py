"""The words a cashier reads: a mistyped code, a coupon twice on one sale, each checkout step
and each refused step, amounts and dates in the page's language."""

from __future__ import annotations

import datetime as dt
import unicodedata

import pytest

from coupons.i18n import format_day, format_moment
from coupons.money import JOIN, NBSP, format_amount
from coupons.reasons import STEP_REFUSED, Reason
from kiosk_ui import pages
from sync.central import display
from terminal.daemon import feedback
from tests.conftest import World, basket
from tests.test_pos_api import Pos
from tests.test_pos_api import pos as pos  # the fixture: the POS API on a running daemon

# ---------------------------------------------------------------- amounts and dates


@pytest.mark.parametrize(
    ("minor", "currency", "lang", "shown"),
    [
        (2000, "CNY", "zh_CN", "¥20.00"),
        (2000, "CNY", "en", "CN¥20.00"),  # CLDR's English keeps ¥ for the yen
        (12_345_678, "CNY", "zh_CN", "¥123,456.78"),
        (2000, "JPY", "en", "¥2,000"),  # the yen has no minor unit: 2000 minor is 2000 yen
        (2000, "JPY", "zh_CN", "JP¥2,000"),
        (1500, "KWD", "en", "KWD1.500"),  # three decimals
        (5, "CNY", "zh", "¥0.05"),
    ],
)
def test_amounts_in_each_language_with_the_currency_s_own_decimals(
    minor: int, currency: str, lang: str, shown: str
) -> None:
    assert format_amount(minor, currency, lang) == shown


def test_a_signed_amount_is_one_unit_a_line_never_breaks() -> None:
    off = format_amount(-2000, "CNY", "zh_CN")
    assert off == "-" + JOIN + "¥20.00"
    assert format_amount(2000, "CNY", "zh_CN", plus=True) == "+" + JOIN + "¥20.00"
    # No character a line may break at: no space, only the no-break space and word joiner.
    for text in (off, format_amount(-150, "KWD", "en", code=True)):
        assert not any(unicodedata.category(c) == "Zs" and c != NBSP for c in text), text
    assert format_amount(-150, "KWD", "en", code=True) == "-" + JOIN + "KWD" + NBSP + "0.150"


def test_one_function_behind_every_screen() -> None:
    assert pages.money(-2000, "CNY", "zh_CN") == format_amount(-2000, "CNY", "zh_CN")
    assert pages.money(None) == ""
    assert pages.money(12800, None, "en") == "128.00"  # a till not yet told its currency
    assert display.money(-2000, "CNY", "zh_CN") == format_amount(-2000, "CNY", "zh_CN")
    # Plain text (the central's CLI, CSV files) keeps the unambiguous code.
    assert display.money(500, "JPY") == "JPY 500"
    assert feedback.money(-2000, "CNY", "zh_CN") == "-¥20.00"  # a display line: no joiners


@pytest.mark.parametrize(
    ("lang", "encoding", "line"),
    [
        ("zh_CN", "gb18030", "-¥12.50"),  # a Chinese VFD shows the symbol
        ("zh_CN", "ascii", "-CNY 12.50"),  # an ASCII one gets the code, never "?"
        ("en", None, "-CN¥12.50"),  # the log
    ],
)
def test_the_customer_display_shows_what_it_can(lang: str, encoding: str | None, line: str) -> None:
    from coupons.decision import Decision

    decision = Decision(True, Reason.OK, 1250, "CNY")
    assert feedback.lines_for(decision, lang, encoding)[1] == line


def test_dates_in_the_language_s_order() -> None:
    day = dt.date(2026, 11, 5)
    assert format_day(day, "zh_CN") == "2026年11月5日"
    assert format_day(day, "en") == "2026-11-05"  # ISO: never the US month-first order
    at = dt.datetime(2026, 11, 5, 8, 5)
    assert format_moment(at, "zh_CN") == "2026年11月5日 08:05"
    assert format_moment(at, "en") == "2026-11-05 08:05"


# ---------------------------------------------------------------- a mistyped code


@pytest.mark.parametrize("typed", ["ABCD-EFGH-JKLM", "spend 2026", "X7Q9"])
def test_a_well_formed_code_the_ledger_lacks_is_unknown_code(world: World, typed: str) -> None:
    world.campaign(id="SPEND100", kind="threshold", amount_minor=2000)
    world.issue("SPEND100", 1, codes=True)
    world.sync_ledger()
    d = world.engine.redeem(typed, basket(12800))
    assert not d.accepted and d.reason is Reason.UNKNOWN_CODE
    assert d.to_dict()["message"] == "This code was not found. Please check it and type it again."
    assert d.to_dict("zh_CN")["message"] == "没有找到这个券码，请核对后重新输入。"


@pytest.mark.parametrize(
    "garbage",
    ["AB", "<script>", "券码券码券码", "ABCD!EFGH", "A" * 65, "CPN1:NOT-A-TOKEN", "CPN1:"],
)
def test_garbage_stays_malformed(world: World, garbage: str) -> None:
    world.campaign(id="SPEND100", kind="threshold", amount_minor=2000)
    world.sync_ledger()
    assert world.engine.redeem(garbage, basket(12800)).reason is Reason.MALFORMED


def test_a_typed_code_the_ledger_holds_is_still_accepted_and_a_forged_token_is_not_genuine(
    world: World,
) -> None:
    world.campaign(id="SPEND100", kind="threshold", amount_minor=2000)
    (code,) = world.issue("SPEND100", 1, codes=True)
    (token,) = world.issue("SPEND100", 1)
    world.sync_ledger()
    assert world.engine.redeem(code.lower(), basket(12800)).accepted
    body = token[5:]
    forged = token[:5] + body[:-4] + ("AAAA" if body[-4:] != "AAAA" else "BBBB")
    assert world.engine.redeem(forged, basket(12800)).reason in (
        Reason.BAD_SIGNATURE,
        Reason.MALFORMED,  # the change hit the CBOR structure itself
    )


# ---------------------------------------------------------------- the checkout's words


def step(till: Pos, cid: str, name: str, key: str) -> tuple[int, str, str]:
    r = till.post(f"/api/v1/checkouts/{cid}/{name}", key=key)
    body = r.json()
    return r.status_code, body["reason"], body["message"]


def test_each_step_and_each_refused_step_says_what_happened_to_the_sale(pos: Pos) -> None:
    cid = pos.open()
    pos.post(f"/api/v1/checkouts/{cid}/coupons", {"code": pos.spend[0]}, "a")
    assert step(pos, cid, "reverse", "early") == (
        409,
        "not_committed",
        "This sale is not paid yet, so there is nothing to refund.",
    )
    paid = (200, "ok", "Payment recorded. The coupons on this sale are now used.")
    assert step(pos, cid, "commit", "pay") == paid
    assert step(pos, cid, "commit", "pay") == paid  # a retry: the first answer, same words
    assert step(pos, cid, "commit", "pay-2")[2] == "This sale is already paid."
    assert step(pos, cid, "release", "cancel")[2] == (
        "This sale is already paid, so it cannot be cancelled. Refund it instead."
    )
    refund = step(pos, cid, "reverse", "refund")
    assert refund == (200, "ok", "Refund recorded, together with the coupons used on this sale.")
    # The two the issue named: a second refund, and a payment after the refund.
    assert step(pos, cid, "reverse", "refund-2") == (
        409,
        "not_committed",
        "This sale was already refunded.",
    )
    assert step(pos, cid, "commit", "pay-3") == (
        409,
        "unknown_checkout",
        "This sale was refunded; it cannot be paid.",
    )
    late = pos.post(f"/api/v1/checkouts/{cid}/coupons", {"code": pos.spend[1]}, "late").json()
    assert late["message"] == "This sale was refunded. No coupon can be added to it."

    gone = pos.open("open-2")
    pos.post(f"/api/v1/checkouts/{gone}/coupons", {"code": pos.spend[2]}, "b")
    assert step(pos, gone, "release", "g-rel")[2] == (
        "Sale cancelled. Its coupons are free to use again."
    )
    assert step(pos, gone, "release", "g-rel-2")[2] == "This sale was already cancelled."
    assert step(pos, gone, "commit", "g-pay")[2] == "This sale was cancelled; it cannot be paid."
    assert step(pos, gone, "reverse", "g-ref")[2] == (
        "This sale was cancelled, so there is nothing to refund."
    )
    # Never the coupon's "Coupon accepted." for a step, nor the same words for two steps.
    assert Reason.OK.message() not in {refund[2], paid[2]}
    assert len(set(STEP_REFUSED.values())) == len(STEP_REFUSED)


def test_a_coupon_twice_on_one_sale_reads_the_same_on_the_screen_and_through_the_api(
    pos: Pos,
) -> None:
    cid = pos.open()
    url = f"/api/v1/checkouts/{cid}/coupons"
    pos.post(url, {"code": pos.spend[0]}, "first")
    api = pos.post(url, {"code": pos.spend[0]}, "again").json()
    assert api["reason"] == "already_applied"
    # The cashier screen shows the decision the daemon published for the same attempt.
    screen = pos.daemon.recent[-1].decision
    assert screen is not None and screen.reason is Reason.ALREADY_APPLIED
    assert screen.to_dict()["message"] == api["message"]
    assert api["message"] == "This coupon is already applied to this sale."
    assert "already been used" not in api["message"]
