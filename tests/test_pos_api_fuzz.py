"""schemathesis against the OpenAPI document the terminal publishes: the daemon's own kiosk
web server (kiosk_ui/app.py's create_app, pages and all) on loopback, read from its
/openapi.json. With a till token no 5xx and every response as documented (every error with
its reason code and the cashier's sentence); without one, a 401 and no state change (no
journal entry added)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from tests.test_pos_api import BASKET, Pos
from tests.test_pos_api import pos as pos  # the fixture

SETTINGS = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)


def each_operation(pos: Pos, mode: GenerationMode, check: Callable[[Any, str], None]) -> int:
    """Run `check(case, open_checkout_id)` on generated cases of every API operation."""
    schema = schemathesis.openapi.from_url(pos.url + "/openapi.json")
    assert pos.daemon.kiosk is not None and pos.url == pos.daemon.kiosk.url  # the real app
    cid = pos.open("fuzz-open", BASKET)
    count = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @SETTINGS
        def run(case: Any) -> None:
            nonlocal count
            count += 1
            params = case.path_parameters or {}
            # Half the checkout ids name the real open checkout, so holds, commits and
            # refunds are exercised too, not only 404s.
            if "checkout_id" in params and count % 2 == 0 and mode is GenerationMode.POSITIVE:
                params["checkout_id"] = cid
            check(case, cid)

        run()
    return count


def words(response: Any) -> None:
    """An error names its reason and says it in a sentence (documented or not: 404, 405)."""
    if response.status_code >= 400:
        problem = response.json()
        assert problem["reason"] and problem["message"].endswith("."), problem


def test_with_a_token_no_5xx_and_responses_match_the_schema(pos: Pos) -> None:
    def check(case: Any, cid: str) -> None:
        # A well-formed request may meet a closed or unknown checkout (404/409): the
        # documented answer, not a rejection of valid data.
        words(
            case.call_and_validate(
                headers={"Authorization": f"Bearer {pos.token}"},
                excluded_checks=[positive_data_acceptance],
            )
        )

    def check_negative(case: Any, cid: str) -> None:
        # The valid token replaces whatever bearer header was generated, which can make a
        # "negative" case valid: no 5xx and documented answers still, but not "rejected".
        words(
            case.call_and_validate(
                headers={"Authorization": f"Bearer {pos.token}"},
                excluded_checks=[positive_data_acceptance, negative_data_rejection],
            )
        )

    assert each_operation(pos, GenerationMode.POSITIVE, check) > 30
    assert each_operation(pos, GenerationMode.NEGATIVE, check_negative) > 30


def test_without_a_token_nothing_changes(pos: Pos) -> None:
    def check(case: Any, cid: str) -> None:
        before = pos.seq()
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        case.headers = headers
        response = case.call()
        assert response.status_code == 401, response.text
        assert response.headers["content-type"][0].startswith("application/problem+json")
        words(response)
        assert pos.seq() == before
        assert pos.get(f"/api/v1/checkouts/{cid}").json()["coupons"] == []

    assert each_operation(pos, GenerationMode.POSITIVE, check) > 30
