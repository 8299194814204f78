"""schemathesis against the central's admin API (/admin/v1), read from the central's own
/openapi.json on loopback, once with a token of each role. Every role: no 5xx and every
answer as documented. The auditor reads everything and changes nothing: every write it
sends is refused (403, or 400/422 for a malformed request, which is checked first) and
leaves the campaigns, flags, terminals, tokens and keys as they were."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from sync import protocol
from sync.central import terminals, users
from sync.central.models import AdminToken, CampaignRow, FlagRow, KeyRow, TerminalRow
from tests.central_server import Running, running_central

SETTINGS = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_central("sqlite", tmp_path_factory.mktemp("adminfuzz")) as c:
        c.central.add_campaign(
            {"id": "SPRING", "name": "Spring", "kind": "fixed", "currency": "CNY",
             "amount_minor": 1000, "budget_minor": 100_000}
        )  # fmt: skip
        c.device("S1")  # a terminal and a store to list, revoke and scope
        yield c


def token(c: Running, role: str) -> str:
    with c.central.session():
        return terminals.new_admin_token(c.central, f"fuzz-{role}", role=role)


def each_admin_operation(c: Running, check: Callable[[Any], None]) -> tuple[int, int]:
    """Run `check(case)` on generated cases of every admin operation; (operations, cases)."""
    schema = schemathesis.openapi.from_url(c.url + "/openapi.json")
    ops = cases = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if not operation.path.startswith(protocol.ADMIN_PREFIX):
            continue
        ops += 1

        @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
        @SETTINGS
        def run(case: Any) -> None:
            nonlocal cases
            cases += 1
            check(case)

        run()
    return ops, cases


def state(c: Running) -> tuple[object, ...]:
    """What a write could change, as a head-office user would see it."""
    with c.central.session():
        return (
            [(r.id, r.doc, r.removed) for r in CampaignRow.select().order_by(CampaignRow.id)],
            [(r.id, r.status, r.note) for r in FlagRow.select().order_by(FlagRow.id)],
            [(r.id, r.revoked) for r in TerminalRow.select().order_by(TerminalRow.id)],
            [(t.token_hash, t.revoked) for t in AdminToken.select().order_by(AdminToken.label)],
            [(r.kid, r.active, r.revoked) for r in KeyRow.select().order_by(KeyRow.kid)],
        )


def answered_as_documented(response: Any) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        problem = response.json()
        assert problem["code"] and problem["detail"], problem


@pytest.mark.parametrize("role", ["admin", "marketer", "analyst"])
def test_each_role_gets_no_5xx_and_documented_answers(central: Running, role: str) -> None:
    bearer = {"Authorization": f"Bearer {token(central, role)}"}

    def check(case: Any) -> None:
        # A well-formed request may name an unknown flag or terminal, or a step the role
        # may not take: the documented 403/404/409, not a rejection of valid data.
        answered_as_documented(
            case.call_and_validate(headers=bearer, excluded_checks=[positive_data_acceptance])
        )

    ops, cases = each_admin_operation(central, check)
    assert ops >= 8 and cases > 40


def test_an_auditor_reads_everything_and_changes_nothing(central: Running) -> None:
    bearer = {"Authorization": f"Bearer {token(central, 'auditor')}"}
    before = state(central)
    refused: list[str] = []

    def check(case: Any) -> None:
        response = case.call_and_validate(
            headers=bearer, excluded_checks=[positive_data_acceptance]
        )
        answered_as_documented(response)
        if case.method.upper() == "GET":
            assert response.status_code in (200, 304, 400, 404, 422), response.text
        else:
            assert response.status_code in (400, 403, 404, 422), response.text
            if response.status_code == 403:
                assert response.json()["code"] == "permission", response.text
                refused.append(case.path)

    each_admin_operation(central, check)
    assert state(central) == before
    assert refused  # the writes were really tried and refused, not all malformed
    with central.central.session():
        log = users.audit_log(limit=100_000)
    attempts = [a for a in log if a["actor"] == "token:fuzz-auditor"]
    # Each refused write is on the record as an attempt, and nothing else the auditor did is.
    assert len(attempts) == len(refused)
    assert {a["action"] for a in attempts} == {"refused"}
