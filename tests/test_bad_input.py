"""Any bytes as a token, any document as basket or campaign, any file as ledger: a clear
refusal or a clear error, never a traceback, never an accept."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coupons.ledger import ledger_file
from coupons.rules import Basket, Campaign, InputError
from tests.conftest import World, basket

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.text(max_size=20)
    | st.floats(allow_nan=True),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=20,
)

basket_like = st.fixed_dictionaries(
    {"currency": st.sampled_from(["CNY", "EUR", "", "cny1", 5])},
    optional={
        "lines": st.lists(
            st.dictionaries(
                st.sampled_from(["sku", "category", "quantity", "unit_price_minor", "name", "x"]),
                json_values,
                max_size=5,
            ),
            max_size=4,
        ),
        "total_minor": json_values,
        "customer": json_values,
    },
)

quiet = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@quiet
@given(doc=json_values | basket_like)
def test_any_basket_document_is_read_or_named_as_invalid(doc: Any) -> None:
    try:
        b = Basket.from_dict(doc)
    except InputError as exc:
        assert str(exc).startswith("basket")
    else:
        assert b.total_minor >= 0


@quiet
@given(
    doc=json_values
    | st.fixed_dictionaries(
        {
            "id": st.text(max_size=8),
            "kind": st.sampled_from(["fixed", "percent", "gift", "x"]),
            "currency": st.sampled_from(["CNY", "XX"]),
        },
        optional={
            "amount_minor": json_values,
            "percent": json_values,
            "hours": json_values,
            "days": json_values,
            "stacking": json_values,
            "gift_sku": json_values,
        },
    )
)
def test_any_campaign_document_is_read_or_named_as_invalid(doc: Any) -> None:
    try:
        c = Campaign.from_dict(doc)
    except InputError as exc:
        assert str(exc).startswith("campaign")
    else:
        # A campaign that was accepted survives its own round trip.
        assert Campaign.from_dict(json.loads(json.dumps(c.to_dict()))) == c


@quiet
@given(code=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: "CPN1:" + b.hex()))
def test_any_scanned_text_is_refused_with_a_reason(world: World, code: str) -> None:
    if world.engine.ledger.version == 0:
        world.campaign(id="TEN", amount_minor=1000)
        world.sync_ledger()
    d = world.engine.check(code, basket(5000))
    assert not d.accepted
    # unknown_code: text shaped like a typed code that no ledger holds.
    assert d.reason.value in {"malformed", "unknown_code", "bad_signature", "unknown_key"}
    assert d.reason.message()


@quiet
@given(data=st.binary(max_size=2000))
def test_any_bytes_as_ledger_file_change_nothing(world: World, data: bytes) -> None:
    before = world.engine.ledger.version
    result = world.engine.import_ledger(data)
    assert not result.applied
    assert world.engine.ledger.version == before


def test_ledger_file_of_garbage_updates_is_refused(world: World) -> None:
    result = world.engine.import_ledger(ledger_file([b"\x00" * 40, b"junk"]))
    assert [r.kind for r in result.refused] == ["damaged", "damaged"]
    assert world.engine.ledger.version == 0
