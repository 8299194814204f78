"""The rules engine as a pure function: coupon kinds, restrictions, stacking, order, the best
combination, strict reading of campaign and basket documents, and money allocation."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coupons.money import allocate
from coupons.reasons import Reason
from coupons.rules import (
    Basket,
    Campaign,
    Customer,
    InputError,
    Refusal,
    apply_in_order,
    apply_one,
    best_combination,
    compatible,
    stack_problem,
)

# Wednesday 2026-11-25 12:00 UTC (20:00 in Shanghai).
T0 = 1795_608_000.0
HOUR = 3600


def camp(**doc: Any) -> Campaign:
    doc.setdefault("id", "C")
    doc.setdefault("currency", "CNY")
    doc.setdefault("kind", "fixed")
    if doc["kind"] in ("fixed", "threshold"):
        doc.setdefault("amount_minor", 1000)
    if doc["kind"] == "threshold":
        doc.setdefault("min_spend_minor", 10000)
    return Campaign.from_dict(doc)


def bask(
    *lines: tuple[str, str, int] | tuple[str, str, int, int],
    currency: str = "CNY",
    customer: Customer | None = None,
) -> Basket:
    """Lines as (sku, category, unit price[, quantity])."""
    doc: dict[str, Any] = {
        "currency": currency,
        "lines": [
            {
                "sku": ln[0],
                "category": ln[1],
                "unit_price_minor": ln[2],
                "quantity": ln[3] if len(ln) > 3 else 1,
            }
            for ln in lines
        ],
    }
    b = Basket.from_dict(doc)
    return Basket(b.currency, b.lines, customer)


def total(amount: int) -> Basket:
    return Basket.from_dict({"currency": "CNY", "total_minor": amount})


def apply(c: Campaign, b: Basket) -> int:
    return apply_one(c, b, [line.total_minor for line in b.lines], "k").discount_minor


def refusal(c: Campaign, b: Basket) -> Reason:
    with pytest.raises(Refusal) as exc:
        apply_one(c, b, [line.total_minor for line in b.lines], "k")
    return exc.value.reason


MIXED = (("PHONE", "3C", 300000), ("LIPSTICK", "beauty", 25000), ("TEA", "food", 5000, 2))


# ---------------------------------------------------------------- coupon kinds


class TestThreshold:
    def test_spend_100_get_20_off(self) -> None:
        c = camp(kind="threshold", min_spend_minor=10000, amount_minor=2000)
        assert apply(c, total(10000)) == 2000
        assert apply(c, total(25000)) == 2000  # once, not per 100 spent

    def test_below_minimum_is_refused(self) -> None:
        c = camp(kind="threshold", min_spend_minor=10000, amount_minor=2000)
        assert refusal(c, total(9999)) is Reason.BELOW_MINIMUM

    def test_minimum_counts_only_eligible_items(self) -> None:
        c = camp(
            kind="threshold",
            min_spend_minor=10000,
            amount_minor=2000,
            include_categories=["beauty"],
        )
        # 300 000 in the basket, but only 8 000 of beauty.
        b = bask(("PHONE", "3C", 300000), ("MASK", "beauty", 8000))
        assert refusal(c, b) is Reason.BELOW_MINIMUM
        b = bask(("PHONE", "3C", 300000), ("MASK", "beauty", 8000, 2))
        assert apply(c, b) == 2000

    def test_threshold_without_minimum_is_rejected(self) -> None:
        with pytest.raises(InputError, match="min_spend_minor"):
            Campaign.from_dict(
                {"id": "T", "kind": "threshold", "currency": "CNY", "amount_minor": 2000}
            )


class TestPercent:
    def test_fifteen_percent(self) -> None:
        c = camp(kind="percent", percent=15)
        assert c.percent_bp == 1500
        assert apply(c, total(10000)) == 1500

    def test_cap(self) -> None:
        c = camp(kind="percent", percent=15, cap_minor=3000)
        assert apply(c, total(10000)) == 1500
        assert apply(c, total(20000)) == 3000
        assert apply(c, total(100000)) == 3000

    def test_minimum(self) -> None:
        c = camp(kind="percent", percent=15, cap_minor=3000, min_spend_minor=5000)
        assert refusal(c, total(4999)) is Reason.BELOW_MINIMUM
        assert apply(c, total(5000)) == 750

    def test_rounds_down_never_over_gives(self) -> None:
        c = camp(kind="percent", percent_bp=1500)
        assert apply(c, total(999)) == 149  # 149.85

    def test_fractional_percent_is_exact(self) -> None:
        # 8.7 * 100 is 869.999... in binary floating point; the shopper was promised 8.7 %.
        assert camp(kind="percent", percent=8.7).percent_bp == 870
        assert camp(kind="percent", percent=12.5).percent_bp == 1250

    def test_hundred_percent_at_most(self) -> None:
        assert apply(camp(kind="percent", percent=100), total(4321)) == 4321
        with pytest.raises(InputError, match="percent"):
            camp(kind="percent", percent=101)
        with pytest.raises(InputError, match="percent"):
            camp(kind="percent", percent=0)


class TestFixed:
    def test_ten_off(self) -> None:
        assert apply(camp(kind="fixed", amount_minor=1000), total(5000)) == 1000

    def test_never_more_than_basket(self) -> None:
        assert apply(camp(kind="fixed", amount_minor=5000), total(3000)) == 3000

    def test_never_more_than_eligible_subtotal(self) -> None:
        c = camp(kind="fixed", amount_minor=50000, include_categories=["beauty"])
        b = bask(*MIXED)
        a = apply_one(c, b, [ln.total_minor for ln in b.lines], "k")
        assert a.discount_minor == 25000
        assert a.per_line == (0, 25000, 0)

    def test_needs_positive_amount(self) -> None:
        with pytest.raises(InputError, match="amount_minor"):
            Campaign.from_dict({"id": "F", "kind": "fixed", "currency": "CNY"})


class TestGift:
    def test_gift_adds_sku_at_zero_discount(self) -> None:
        c = camp(kind="gift", gift_sku="TOTE", gift_name="Tote bag", gift_value_minor=3900)
        a = apply_one(c, total(1000), [1000], "k")
        assert a.discount_minor == 0
        assert a.gift_sku == "TOTE"
        assert a.per_line == (0,)
        assert a.value_minor == 3900

    def test_gift_with_minimum(self) -> None:
        c = camp(kind="gift", gift_sku="TOTE", min_spend_minor=20000)
        assert refusal(c, total(19999)) is Reason.BELOW_MINIMUM
        assert apply_one(c, total(20000), [20000], "k").gift_sku == "TOTE"

    def test_gift_needs_sku(self) -> None:
        with pytest.raises(InputError, match="gift_sku"):
            Campaign.from_dict({"id": "G", "kind": "gift", "currency": "CNY"})


def test_wrong_currency_is_refused() -> None:
    eur = Basket.from_dict({"currency": "EUR", "total_minor": 5000})
    assert refusal(camp(), eur) is Reason.WRONG_CURRENCY


# ---------------------------------------------------------------- time restrictions


class TestTime:
    def test_valid_from_and_until(self) -> None:
        c = camp(valid_from="2026-11-25T00:00:00Z", valid_until="2026-11-26T00:00:00Z")
        c.check_time(T0)
        with pytest.raises(Refusal) as exc:
            c.check_time(T0 - 13 * HOUR)
        assert exc.value.reason is Reason.NOT_YET_VALID
        with pytest.raises(Refusal) as exc:
            c.check_time(T0 + 12 * HOUR)  # exactly valid_until: over
        assert exc.value.reason is Reason.EXPIRED
        c.check_time(T0 + 12 * HOUR - 1)
        c.check_time(T0 - 12 * HOUR)  # exactly valid_from: valid

    def test_until_must_follow_from(self) -> None:
        with pytest.raises(InputError, match="valid_until"):
            camp(valid_from="2026-11-25T00:00:00Z", valid_until="2026-11-25T00:00:00Z")

    def test_bad_time_names_field(self) -> None:
        with pytest.raises(InputError, match="valid_from"):
            camp(valid_from="next tuesday")

    @pytest.mark.parametrize(
        ("offset_h", "ok"),
        [
            (0, True),  # 20:00 Shanghai
            (0.99, True),  # 20:59
            (1, False),  # 21:00: the window is [20:00, 21:00)
            (-10, True),  # 10:00
            (-9, False),  # 11:00
            (-8, False),  # 12:00
            (-10.01, False),  # 09:59
        ],
    )
    def test_flash_windows_in_local_time(self, offset_h: float, ok: bool) -> None:
        c = camp(hours=["10:00-11:00", "20:00-21:00"], timezone="Asia/Shanghai")
        t = T0 + offset_h * HOUR
        if ok:
            c.check_time(t)
        else:
            with pytest.raises(Refusal) as exc:
                c.check_time(t)
            assert exc.value.reason is Reason.OUTSIDE_HOURS

    def test_same_window_in_utc_differs(self) -> None:
        c = camp(hours=["20:00-21:00"])  # UTC by default; T0 is 12:00 UTC
        with pytest.raises(Refusal):
            c.check_time(T0)
        c.check_time(T0 + 8 * HOUR)

    def test_days_of_week(self) -> None:
        c = camp(days=["wed", "Saturday"])
        assert c.days_of_week == {2, 5}
        c.check_time(T0)
        with pytest.raises(Refusal) as exc:
            c.check_time(T0 + 24 * HOUR)  # Thursday
        assert exc.value.reason is Reason.OUTSIDE_HOURS
        c.check_time(T0 + 3 * 24 * HOUR)  # Saturday

    def test_day_is_the_local_day(self) -> None:
        # Wednesday 20:00 UTC is already Thursday 04:00 in Shanghai.
        t = T0 + 8 * HOUR
        camp(days_of_week=[3], timezone="Asia/Shanghai").check_time(t)
        with pytest.raises(Refusal):
            camp(days_of_week=[3]).check_time(t)

    def test_days_and_hours_both_apply(self) -> None:
        c = camp(days=["wed"], hours=["12:00-13:00"])
        c.check_time(T0)
        with pytest.raises(Refusal):
            c.check_time(T0 + 24 * HOUR)  # Thursday noon
        with pytest.raises(Refusal):
            c.check_time(T0 + 2 * HOUR)  # Wednesday 14:00

    def test_until_midnight(self) -> None:
        c = camp(hours=["23:00-24:00"])
        c.check_time(T0 + 11.99 * HOUR)
        with pytest.raises(Refusal):
            c.check_time(T0 + 12 * HOUR)


# ---------------------------------------------------------------- scope and audience


class TestEligibleItems:
    def test_include_category(self) -> None:
        c = camp(kind="percent", percent=10, include_categories=["3C"])
        assert apply(c, bask(*MIXED)) == 30000

    def test_include_sku_and_category_union(self) -> None:
        c = camp(kind="percent", percent=10, include_categories=["beauty"], include_skus=["TEA"])
        assert apply(c, bask(*MIXED)) == 2500 + 1000

    def test_exclude_category_from_whole_basket(self) -> None:
        c = camp(kind="percent", percent=10, exclude_categories=["3C"])
        assert apply(c, bask(*MIXED)) == 3500

    def test_exclude_sku_beats_include_category(self) -> None:
        c = camp(
            kind="percent",
            percent=10,
            include_categories=["beauty", "food"],
            exclude_skus=["LIPSTICK"],
        )
        assert apply(c, bask(*MIXED)) == 1000

    def test_no_eligible_items(self) -> None:
        c = camp(include_categories=["toys"])
        assert refusal(c, bask(*MIXED)) is Reason.NO_ELIGIBLE_ITEMS
        c = camp(exclude_categories=["3C", "beauty", "food"])
        assert refusal(c, bask(*MIXED)) is Reason.NO_ELIGIBLE_ITEMS

    def test_discount_lands_on_eligible_lines_only(self) -> None:
        c = camp(kind="fixed", amount_minor=3000, include_categories=["beauty", "food"])
        b = bask(*MIXED)
        a = apply_one(c, b, [ln.total_minor for ln in b.lines], "k")
        assert a.per_line[0] == 0
        assert sum(a.per_line) == 3000
        # 25000 : 10000 of the eligible 35000
        assert a.per_line[1:] == (2143, 857)


class TestAudience:
    def test_new_customers_only(self) -> None:
        c = camp(new_customers_only=True)
        c.check_audience(Customer(ref="ab", new=True))
        for who in (None, Customer(ref="ab"), Customer(ref="ab", new=False)):
            with pytest.raises(Refusal) as exc:
                c.check_audience(who)
            assert exc.value.reason is Reason.NOT_FOR_CUSTOMER

    def test_tiers(self) -> None:
        c = camp(tiers=["gold", "black"])
        c.check_audience(Customer(tier="gold"))
        c.check_audience(Customer(tier="black"))
        for who in (None, Customer(), Customer(tier="silver")):
            with pytest.raises(Refusal) as exc:
                c.check_audience(who)
            assert exc.value.reason is Reason.NOT_FOR_CUSTOMER

    def test_per_customer_limit_needs_a_customer(self) -> None:
        c = camp(uses_per_customer=1)
        c.check_audience(Customer(ref="ab"))
        with pytest.raises(Refusal) as exc:
            c.check_audience(Customer())
        assert exc.value.reason is Reason.NOT_FOR_CUSTOMER

    def test_no_restriction_takes_anyone(self) -> None:
        camp().check_audience(None)


def test_store_scope() -> None:
    c = camp(stores=["S1", "S2"])
    c.check_store("S1")
    c.check_store("S2")
    with pytest.raises(Refusal) as exc:
        c.check_store("S3")
    assert exc.value.reason is Reason.WRONG_STORE
    camp().check_store("anywhere")


# ---------------------------------------------------------------- stacking


class TestStacking:
    def test_exclusive_stacks_with_nothing(self) -> None:
        ex = camp(id="EX")
        anything = camp(id="ANY", stacking="any")
        grp = camp(id="G", stacking="group", stack_group="g")
        for other in (anything, grp, camp(id="EX2")):
            assert not compatible(ex, other)
            assert not compatible(other, ex)

    def test_any_stacks_with_any(self) -> None:
        assert compatible(camp(id="A", stacking="any"), camp(id="B", stacking="any"))

    def test_group_stacks_within_its_group_only(self) -> None:
        g1 = camp(id="A", stacking="group", stack_group="platform")
        g2 = camp(id="B", stacking="group", stack_group="platform")
        other = camp(id="C", stacking="group", stack_group="store")
        anything = camp(id="D", stacking="any")
        assert compatible(g1, g2)
        assert not compatible(g1, other)
        assert not compatible(g1, anything) and not compatible(anything, g1)

    def test_group_needs_a_group_name(self) -> None:
        with pytest.raises(InputError, match="stack_group"):
            camp(stacking="group")

    def test_per_basket(self) -> None:
        one = camp(id="A", stacking="any")
        assert stack_problem([one, one]) is not None
        two = camp(id="B", stacking="any", per_basket=2)
        assert stack_problem([two, two]) is None
        assert stack_problem([two, two, two]) is not None

    def test_apply_in_order_refuses_incompatible_set(self) -> None:
        with pytest.raises(Refusal) as exc:
            apply_in_order([("a", camp(id="A")), ("b", camp(id="B", stacking="any"))], total(10000))
        assert exc.value.reason is Reason.NOT_STACKABLE

    def test_two_stackable_coupons_both_apply(self) -> None:
        combo = apply_in_order(
            [
                ("a", camp(id="A", stacking="any", amount_minor=1000)),
                ("b", camp(id="B", stacking="any", amount_minor=500)),
            ],
            total(10000),
        )
        assert combo.discount_minor == 1500
        assert not combo.refused

    def test_later_coupon_sees_what_earlier_left(self) -> None:
        big = camp(id="A", stacking="any", amount_minor=8000)
        small = camp(id="B", stacking="any", amount_minor=5000)
        combo = apply_in_order([("a", big), ("b", small)], total(10000))
        assert combo.discount_minor == 10000
        assert [a.discount_minor for a in combo.applied] == [8000, 2000]

    def test_refused_member_does_not_sink_the_rest(self) -> None:
        thr = camp(id="T", kind="threshold", stacking="any", min_spend_minor=20000)
        ok = camp(id="F", stacking="any")
        combo = apply_in_order([("t", thr), ("f", ok)], total(10000))
        assert [a.key for a in combo.applied] == ["f"]
        assert combo.refused["t"].reason is Reason.BELOW_MINIMUM


class TestOrder:
    def test_percent_before_fixed(self) -> None:
        pct = camp(id="P", kind="percent", percent=10, stacking="any")
        fix = camp(id="F", kind="fixed", amount_minor=5000, stacking="any")
        # 10 % of 100 000 = 10 000, then 5 000: 15 000. Fixed first would give 14 500.
        combo = apply_in_order([("f", fix), ("p", pct)], total(100000))
        assert [a.key for a in combo.applied] == ["p", "f"]
        assert combo.discount_minor == 15000

    def test_explicit_order_overrides(self) -> None:
        pct = camp(id="P", kind="percent", percent=10, stacking="any")
        fix = camp(id="F", kind="fixed", amount_minor=5000, stacking="any", order=0)
        combo = apply_in_order([("p", pct), ("f", fix)], total(100000))
        assert [a.key for a in combo.applied] == ["f", "p"]
        assert combo.discount_minor == 5000 + 9500

    def test_item_level_before_basket_level(self) -> None:
        # Half off the phone, then 500 off the basket: 150 000 + 500 = 150 500 off.
        item = camp(id="Z", kind="percent", percent=50, include_categories=["3C"], stacking="any")
        whole = camp(id="A", kind="fixed", amount_minor=500, stacking="any")
        b = bask(("PHONE", "3C", 300000), ("CASE", "acc", 300000))
        combo = apply_in_order([("whole", whole), ("item", item)], b)
        assert [a.key for a in combo.applied] == ["item", "whole"]
        assert combo.discount_minor == 150500
        # Forcing the basket coupon first spreads it over both lines, so the percent sees less.
        forced = camp(id="A", kind="fixed", amount_minor=500, stacking="any", order=-1)
        combo = apply_in_order([("whole", forced), ("item", item)], b)
        assert [a.key for a in combo.applied] == ["whole", "item"]
        assert combo.discount_minor == 500 + (300000 - 250) // 2

    def test_threshold_sees_basket_after_percent(self) -> None:
        pct = camp(id="P", kind="percent", percent=10, stacking="any")
        thr = camp(
            id="T", kind="threshold", min_spend_minor=10000, amount_minor=2000, stacking="any"
        )
        combo = apply_in_order([("t", thr), ("p", pct)], total(10500))
        assert [a.key for a in combo.applied] == ["p"]
        assert combo.refused["t"].reason is Reason.BELOW_MINIMUM


class TestBestCombination:
    def test_most_valuable_compatible_set(self) -> None:
        ex = camp(id="EX", amount_minor=3000)
        a = camp(id="A", stacking="any", amount_minor=2000)
        b = camp(id="B", stacking="any", amount_minor=1500)
        combo = best_combination([("ex", ex), ("a", a), ("b", b)], total(10000))
        assert sorted(x.key for x in combo.applied) == ["a", "b"]
        assert combo.discount_minor == 3500
        assert combo.refused["ex"].reason is Reason.NOT_STACKABLE

    def test_exclusive_wins_when_worth_more(self) -> None:
        ex = camp(id="EX", amount_minor=4000)
        a = camp(id="A", stacking="any", amount_minor=2000)
        b = camp(id="B", stacking="any", amount_minor=1500)
        combo = best_combination([("a", a), ("ex", ex), ("b", b)], total(10000))
        assert [x.key for x in combo.applied] == ["ex"]
        assert set(combo.refused) == {"a", "b"}

    def test_tie_prefers_fewer_coupons(self) -> None:
        ex = camp(id="EX", amount_minor=3000)
        a = camp(id="A", stacking="any", amount_minor=2000)
        b = camp(id="B", stacking="any", amount_minor=1000)
        combo = best_combination([("a", a), ("b", b), ("ex", ex)], total(10000))
        assert [x.key for x in combo.applied] == ["ex"]

    def test_tie_when_basket_is_used_up(self) -> None:
        # Both together are worth 5 000, the same as the big one alone: keep the small one.
        big = camp(id="A", stacking="any", amount_minor=5000)
        small = camp(id="B", stacking="any", amount_minor=1000)
        combo = best_combination([("small", small), ("big", big)], total(5000))
        assert [x.key for x in combo.applied] == ["big"]

    def test_gift_value_counts(self) -> None:
        gift = camp(id="G", kind="gift", gift_sku="TOTE", gift_value_minor=5000)
        fix = camp(id="F", amount_minor=3000)
        combo = best_combination([("f", fix), ("g", gift)], total(10000))
        assert [x.key for x in combo.applied] == ["g"]
        assert combo.value_minor == 5000 and combo.discount_minor == 0

    def test_unusable_coupon_is_refused_with_its_reason(self) -> None:
        thr = camp(id="T", kind="threshold", min_spend_minor=20000, stacking="any")
        fix = camp(id="F", stacking="any", amount_minor=500)
        combo = best_combination([("t", thr), ("f", fix)], total(10000))
        assert [x.key for x in combo.applied] == ["f"]
        assert combo.refused["t"].reason is Reason.BELOW_MINIMUM

    def test_nothing_usable(self) -> None:
        thr = camp(id="T", kind="threshold", min_spend_minor=20000)
        combo = best_combination([("t", thr)], total(10000))
        assert combo.applied == ()
        assert combo.refused["t"].reason is Reason.BELOW_MINIMUM

    def test_group_against_any(self) -> None:
        g1 = camp(id="G1", stacking="group", stack_group="g", amount_minor=1000)
        g2 = camp(id="G2", stacking="group", stack_group="g", amount_minor=1000)
        a1 = camp(id="A1", stacking="any", amount_minor=1500)
        combo = best_combination([("g1", g1), ("g2", g2), ("a1", a1)], total(10000))
        assert sorted(x.key for x in combo.applied) == ["g1", "g2"]

    def test_per_basket_limits_copies(self) -> None:
        c = camp(id="A", stacking="any", amount_minor=1000, per_basket=2)
        combo = best_combination([("x", c), ("y", c), ("z", c)], total(10000))
        assert len(combo.applied) == 2
        assert combo.discount_minor == 2000


# ---------------------------------------------------------------- reading documents


class TestCampaignDocuments:
    BASE: dict[str, Any] = {"id": "C1", "kind": "fixed", "currency": "CNY", "amount_minor": 100}

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"colour": "red"}, "colour"),
            ({"amount_minor": "100"}, "amount_minor"),
            ({"amount_minor": True}, "amount_minor"),
            ({"amount_minor": -1}, "amount_minor"),
            ({"amount_minor": 1.5}, "amount_minor"),
            ({"uses_per_coupon": True}, "uses_per_coupon"),
            ({"new_customers_only": 1}, "new_customers_only"),
            ({"kind": "bogof"}, "kind"),
            ({"currency": "YUAN"}, "currency"),
            ({"stacking": "sometimes"}, "stacking"),
            ({"include_categories": "3C"}, "include_categories"),
            ({"include_categories": [3]}, "include_categories"),
            ({"hours": ["10-11"]}, "hours"),
            ({"hours": ["1000-1100"]}, "hours"),
            ({"hours": ["25:00-26:00"]}, "hours"),
            ({"hours": ["10:00-10:00"]}, "hours"),
            ({"percent": 10, "percent_bp": 1000, "kind": "percent"}, "percent"),
            ({"budget_count": 0}, "budget_count"),
            ({"hours": ["10:00-10:99"]}, "hours"),
            ({"hours": "10:00-11:00"}, "hours"),
            ({"days": ["someday"]}, "day"),
            ({"days_of_week": [7]}, "day"),
            ({"timezone": "Mars/Olympus"}, "timezone"),
            ({"timezone": 8}, "timezone"),
            ({"percent": "15"}, "percent"),
            ({"kind": "percent", "percent": float("nan")}, "percent"),
            ({"kind": "percent", "percent": float("inf")}, "percent"),
            ({"kind": "percent", "percent": True}, "percent"),
            ({"uses_per_coupon": 0}, "uses"),
            ({"id": "has space"}, "id"),
        ],
    )
    def test_rejects_and_names_the_field(self, change: dict[str, Any], field: str) -> None:
        with pytest.raises(InputError) as exc:
            Campaign.from_dict({**self.BASE, **change})
        assert field in str(exc.value)

    def test_missing_required_field(self) -> None:
        doc = dict(self.BASE)
        del doc["currency"]
        with pytest.raises(InputError, match="currency"):
            Campaign.from_dict(doc)
        with pytest.raises(InputError, match="id"):
            Campaign.from_dict({"kind": "fixed"})

    def test_not_a_table(self) -> None:
        with pytest.raises(InputError):
            Campaign.from_dict(["id", "C1"])  # type: ignore[arg-type]

    def test_toml_document(self) -> None:
        doc = tomllib.loads("""
            id = "FLASH15"
            name = "Flash sale 15 % off beauty"
            kind = "percent"
            currency = "cny"
            percent = 15
            cap_minor = 3000
            min_spend_minor = 5000
            valid_from = 2026-11-11T00:00:00+08:00
            valid_until = 2026-12-12T00:00:00Z
            days = ["mon", "wed", "fri"]
            hours = ["10:00-11:00", "20:00-21:00"]
            timezone = "Asia/Shanghai"
            include_categories = ["beauty"]
            exclude_skus = ["GIFTCARD"]
            tiers = ["gold", "black"]
            stores = ["S1"]
            stacking = "group"
            stack_group = "platform"
            uses_per_customer = 2
            budget_minor = 10_000_000
            reusable_after_refund = false
        """)
        c = Campaign.from_dict(doc)
        assert c.currency == "CNY"
        assert c.percent_bp == 1500 and c.cap_minor == 3000
        assert c.valid_from == int(datetime(2026, 11, 10, 16, tzinfo=UTC).timestamp())
        assert c.valid_until == int(datetime(2026, 12, 12, tzinfo=UTC).timestamp())
        assert c.days_of_week == {0, 2, 4}
        assert c.hours == ((600, 660), (1200, 1260))
        assert c.include_categories == {"beauty"} and c.exclude_skus == {"GIFTCARD"}
        assert c.stack_group == "platform" and not c.reusable_after_refund
        c.check_time(T0)  # Wednesday 20:00 in Shanghai

    def test_round_trip_through_to_dict(self) -> None:
        c = camp(
            kind="percent",
            percent=15,
            hours=["10:00-11:00"],
            days=["sat"],
            include_categories=["3C"],
            timezone="Asia/Shanghai",
        )
        assert Campaign.from_dict(c.to_dict()) == c


class TestBasketDocuments:
    def line(self, **kw: Any) -> dict[str, Any]:
        return {"currency": "CNY", "lines": [{"sku": "A", "unit_price_minor": 100, **kw}]}

    @pytest.mark.parametrize(
        ("doc", "field"),
        [
            ({"currency": "CNY", "total_minor": 100, "vat": 1}, "vat"),
            ({"currency": "CNY", "total_minor": -1}, "total_minor"),
            ({"currency": "CNY", "total_minor": "100"}, "total_minor"),
            ({"currency": "CNY", "total_minor": True}, "total_minor"),
            ({"currency": "CNY"}, "total_minor"),
            ({"total_minor": 100}, "currency"),
            ({"currency": "RMB1", "total_minor": 100}, "currency"),
            ({"currency": "CNY", "lines": "A"}, "lines"),
            ({"currency": "CNY", "lines": ["A"]}, "line 1"),
            ({"currency": "CNY", "total_minor": 1, "customer": {"vip": True}}, "vip"),
            ({"currency": "CNY", "total_minor": 1, "customer": {"new": "yes"}}, "new"),
        ],
    )
    def test_rejects_and_names_the_field(self, doc: dict[str, Any], field: str) -> None:
        with pytest.raises(InputError) as exc:
            Basket.from_dict(doc)
        assert field in str(exc.value)

    @pytest.mark.parametrize(
        ("kw", "field"),
        [
            ({"unit_price_minor": -5}, "unit_price_minor"),
            ({"unit_price_minor": 1.5}, "unit_price_minor"),
            ({"unit_price_minor": False}, "unit_price_minor"),
            ({"quantity": 0}, "quantity"),
            ({"quantity": True}, "quantity"),
            ({"sku": 7}, "sku"),
            ({"discount": 1}, "discount"),
        ],
    )
    def test_line_errors_name_the_field(self, kw: dict[str, Any], field: str) -> None:
        with pytest.raises(InputError) as exc:
            Basket.from_dict(self.line(**kw))
        assert field in str(exc.value) and "line 1" in str(exc.value)

    def test_not_an_object(self) -> None:
        with pytest.raises(InputError):
            Basket.from_dict("100")

    def test_too_many_lines(self) -> None:
        doc = {"currency": "CNY", "lines": [{"sku": "A", "unit_price_minor": 1}] * 501}
        with pytest.raises(InputError, match="500"):
            Basket.from_dict(doc)

    def test_lines_and_customer(self) -> None:
        b = Basket.from_dict(
            tomllib.loads("""
            currency = "cny"
            customer = { ref = "c0ffee", tier = "gold", new = true }
            [[lines]]
            sku = "PHONE"
            category = "3C"
            unit_price_minor = 300000
            [[lines]]
            sku = "TEA"
            quantity = 3
            unit_price_minor = 500
        """)
        )
        assert b.currency == "CNY"
        assert b.total_minor == 301500
        assert b.lines[1].category == "" and b.lines[1].quantity == 3
        assert b.customer == Customer("c0ffee", "gold", True)

    def test_total_only(self) -> None:
        b = total(12345)
        assert b.total_minor == 12345 and len(b.lines) == 1


# ---------------------------------------------------------------- money


def test_allocate_examples() -> None:
    assert allocate(100, [1, 1, 1]) == [34, 33, 33]
    assert allocate(10, [0, 5, 0]) == [0, 10, 0]
    assert allocate(0, [1, 2]) == [0, 0]
    assert allocate(5, [0, 0]) == [0, 0]
    assert allocate(7, [2, 1]) == [5, 2]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**12), st.lists(st.integers(0, 10**10), min_size=1, max_size=30))
def test_allocate_sums_exactly(amount: int, weights: list[int]) -> None:
    shares = allocate(amount, weights)
    assert len(shares) == len(weights)
    assert all(s >= 0 for s in shares)
    assert all(s == 0 for s, w in zip(shares, weights, strict=True) if w == 0)
    if sum(weights) > 0:
        assert sum(shares) == amount


# ---------------------------------------------------------------- properties

CATS = ["3C", "beauty", "food", ""]
SKUS = ["A", "B", "C", "D"]

lines_st = st.lists(
    st.fixed_dictionaries(
        {
            "sku": st.sampled_from(SKUS),
            "category": st.sampled_from(CATS),
            "quantity": st.integers(1, 5),
            "unit_price_minor": st.integers(0, 200_000),
        }
    ),
    min_size=1,
    max_size=6,
)


@st.composite
def campaigns(draw: st.DrawFn, cid: str = "C") -> Campaign:
    kind = draw(st.sampled_from(["threshold", "percent", "fixed", "gift"]))
    doc: dict[str, Any] = {
        "id": cid,
        "kind": kind,
        "currency": "CNY",
        "stacking": draw(st.sampled_from(["any", "exclusive"])),
    }
    if kind in ("threshold", "fixed"):
        doc["amount_minor"] = draw(st.integers(1, 300_000))
    if kind == "threshold":
        doc["min_spend_minor"] = draw(st.integers(1, 500_000))
    elif draw(st.booleans()):
        doc["min_spend_minor"] = draw(st.integers(0, 500_000))
    if kind == "percent":
        doc["percent_bp"] = draw(st.integers(1, 10_000))
        if draw(st.booleans()):
            doc["cap_minor"] = draw(st.integers(0, 100_000))
    if kind == "gift":
        doc["gift_sku"] = "GIFT"
        doc["gift_value_minor"] = draw(st.integers(0, 10_000))
    if draw(st.booleans()):
        doc["include_categories"] = draw(st.lists(st.sampled_from(CATS), max_size=2))
    if draw(st.booleans()):
        doc["exclude_skus"] = draw(st.lists(st.sampled_from(SKUS), max_size=2))
    if draw(st.booleans()):
        doc["order"] = draw(st.integers(-5, 20))
    return Campaign.from_dict(doc)


@settings(max_examples=150, deadline=None)
@given(lines_st, campaigns())
def test_discount_never_negative_nor_above_eligible(
    lines: list[dict[str, Any]], c: Campaign
) -> None:
    b = Basket.from_dict({"currency": "CNY", "lines": lines})
    eligible = sum(ln.total_minor for ln in b.lines if c.eligible(ln))
    try:
        a = apply_one(c, b, [ln.total_minor for ln in b.lines], "k")
    except Refusal as exc:
        assert exc.reason in (Reason.NO_ELIGIBLE_ITEMS, Reason.BELOW_MINIMUM)
        return
    assert 0 <= a.discount_minor <= eligible
    assert sum(a.per_line) == a.discount_minor
    for share, line in zip(a.per_line, b.lines, strict=True):
        assert 0 <= share <= line.total_minor
        if not c.eligible(line):
            assert share == 0


@settings(max_examples=150, deadline=None)
@given(
    lines_st,
    st.lists(st.integers(0, 10**6), min_size=1, max_size=4).flatmap(
        lambda seeds: st.tuples(*[campaigns(f"C{i}") for i in range(len(seeds))])
    ),
)
def test_stacked_total_never_exceeds_basket(
    lines: list[dict[str, Any]], camps: tuple[Campaign, ...]
) -> None:
    b = Basket.from_dict({"currency": "CNY", "lines": lines})
    coupons = [(f"k{i}", c) for i, c in enumerate(camps)]
    if stack_problem([c for _, c in coupons]) is None:
        combo = apply_in_order(coupons, b)
        assert 0 <= combo.discount_minor <= b.total_minor
        for i in range(len(b.lines)):
            assert sum(a.per_line[i] for a in combo.applied) <= b.lines[i].total_minor
    best = best_combination(coupons, b)
    assert 0 <= best.discount_minor <= b.total_minor
    assert stack_problem([a.campaign for a in best.applied]) is None
    assert {a.key for a in best.applied} | set(best.refused) == {k for k, _ in coupons}
    # No single usable coupon is worth more than the chosen set.
    for key, c in coupons:
        try:
            single = apply_one(c, b, [ln.total_minor for ln in b.lines], key)
        except Refusal:
            continue
        assert single.value_minor <= best.value_minor


def test_a_window_past_midnight_covers_both_days() -> None:
    camp = Campaign.from_dict(
        {
            "id": "LATE",
            "kind": "fixed",
            "currency": "CNY",
            "amount_minor": 100,
            "hours": ["22:00-02:00"],
            "timezone": "Asia/Shanghai",
        }
    )
    tz = ZoneInfo("Asia/Shanghai")
    camp.check_time(datetime(2026, 11, 25, 23, 30, tzinfo=tz).timestamp())
    camp.check_time(datetime(2026, 11, 26, 1, 59, tzinfo=tz).timestamp())
    with pytest.raises(Refusal) as exc:
        camp.check_time(datetime(2026, 11, 26, 2, 0, tzinfo=tz).timestamp())
    assert exc.value.reason is Reason.OUTSIDE_HOURS
    assert Campaign.from_dict(camp.to_dict()) == camp


def test_coupons_beyond_ten_are_refused_not_lost() -> None:
    camps = [
        (
            f"{i:016x}",
            Campaign.from_dict(
                {
                    "id": f"C{i}",
                    "kind": "fixed",
                    "currency": "CNY",
                    "amount_minor": 100 + i,
                    "stacking": "any",
                }
            ),
        )
        for i in range(12)
    ]
    combo = best_combination(camps, Basket.from_dict({"currency": "CNY", "total_minor": 100000}))
    assert len(combo.applied) == 10
    assert set(combo.refused) == {camps[10][0], camps[11][0]}
    assert "at most 10" in combo.refused[camps[11][0]].detail


def test_a_stated_total_must_match_the_lines() -> None:
    with pytest.raises(InputError, match="total_minor"):
        Basket.from_dict(
            {
                "currency": "CNY",
                "total_minor": 999,
                "lines": [{"sku": "A", "unit_price_minor": 1000}],
            }
        )
    ok = Basket.from_dict(
        {"currency": "CNY", "total_minor": 1000, "lines": [{"sku": "A", "unit_price_minor": 1000}]}
    )
    assert ok.total_minor == 1000


# ---------------------------------------------------------------- paused (issue 14)


class TestPaused:
    def test_absent_means_not_paused(self) -> None:
        c = camp()
        assert c.paused is False
        c.check_paused()

    def test_paused_is_refused_with_its_own_reason(self) -> None:
        c = camp(paused=True)
        with pytest.raises(Refusal) as exc:
            c.check_paused()
        assert exc.value.reason is Reason.CAMPAIGN_PAUSED

    def test_null_is_not_paused(self) -> None:
        assert camp(paused=None).paused is False  # as every optional field reads null

    @pytest.mark.parametrize("value", [1, 0, "true", "yes", [True], {"on": True}, 1.0])
    def test_only_a_boolean_is_read(self, value: object) -> None:
        with pytest.raises(InputError, match="'paused' has the wrong type"):
            camp(paused=value)

    def test_to_dict_leaves_it_out_when_false(self) -> None:
        # Old ledgers and their hashes: a campaign never paused writes what it wrote before.
        assert "paused" not in camp().to_dict()
        assert "paused" not in camp(paused=False).to_dict()
        assert camp(paused=True).to_dict()["paused"] is True

    def test_round_trip(self) -> None:
        for c in (camp(), camp(paused=True)):
            assert Campaign.from_dict(c.to_dict()) == c

    def test_toml_reads_it(self) -> None:
        doc = tomllib.loads(
            'id = "P"\nkind = "fixed"\ncurrency = "CNY"\namount_minor = 5\npaused = true'
        )
        assert Campaign.from_dict(doc).paused is True
