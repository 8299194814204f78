"""Edges of the rules engine a shopper or cashier would notice. Written to kill mutants that
`make mutate` found surviving (coupons/rules.py)."""

from __future__ import annotations

import pytest

from coupons.reasons import Reason
from coupons.rules import Basket, Campaign, Customer, Refusal, best_combination


def test_an_eleventh_coupon_is_refused_as_not_stackable() -> None:
    """The cashier's screen says why by the reason: more than ten at once do not stack."""
    camps = [
        (
            f"{i:016x}",
            Campaign.from_dict(
                {"id": f"C{i}", "kind": "fixed", "currency": "CNY", "amount_minor": 100}
                | {"stacking": "any"}
            ),
        )
        for i in range(11)
    ]
    combo = best_combination(camps, Basket.from_dict({"currency": "CNY", "total_minor": 100000}))
    assert len(combo.applied) == 10
    assert combo.refused[camps[10][0]].reason is Reason.NOT_STACKABLE


def test_an_audience_refusal_says_which_rule_the_shopper_missed() -> None:
    """The cashier can tell the shopper why: new customers only, a member tier, or a
    member card needed for a per-customer limit."""
    cases = (
        ({"new_customers_only": True}, Customer(tier="gold", new=False), "new customers only"),
        ({"tiers": ["gold"]}, Customer(tier="silver"), "member tier"),
        ({"uses_per_customer": 1}, None, "needs a customer reference"),
    )
    for rule, customer, words in cases:
        campaign = Campaign.from_dict(
            {"id": "C", "kind": "fixed", "currency": "CNY", "amount_minor": 100} | rule
        )
        with pytest.raises(Refusal) as caught:
            campaign.check_audience(customer)
        assert caught.value.reason is Reason.NOT_FOR_CUSTOMER
        assert caught.value.detail == words
