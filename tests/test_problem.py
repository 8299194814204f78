"""coupons.problem: the problem document both web apps answer with (RFC 9457 members, the
central's member order, the kiosk's reason and message, extension members)."""

from __future__ import annotations

import json

import pytest

from coupons.problem import MEDIA_TYPE, TITLES, Problem, title_for


def test_the_central_document_is_what_it_always_sent() -> None:
    doc = Problem(401, "unauthorized", "stale timestamp", instance="/v1/ledger").to_dict()
    assert json.dumps(doc) == json.dumps(
        {
            "type": "urn:edge-redeem:problem:unauthorized",
            "title": "Unauthorized",
            "status": 401,
            "detail": "stale timestamp",
            "code": "unauthorized",
            "instance": "/v1/ledger",
        }
    )
    assert MEDIA_TYPE == "application/problem+json"


def test_optional_members_are_left_out_not_null() -> None:
    doc = Problem(400, "bad-request", "no", instance="").to_dict()
    assert set(doc) == {"type", "title", "status", "detail", "code"}


def test_the_kiosk_members_reason_and_message() -> None:
    doc = Problem(
        409,
        "checkout-closed",
        "released",
        instance="/api/v1/checkouts/x/commit",
        reason="checkout_closed",
        message="This checkout is closed.",
    ).to_dict()
    assert doc["reason"] == "checkout_closed" and doc["message"] == "This checkout is closed."
    assert list(doc)[-2:] == ["reason", "message"]


def test_title_comes_from_the_status_unless_given() -> None:
    assert Problem(416, "range", "x").to_dict()["title"] == TITLES[416] == title_for(416)
    assert Problem(418, "teapot", "x").to_dict()["title"] == "Error"
    assert Problem(404, "gone", "x", title="Gone for good").to_dict()["title"] == "Gone for good"


def test_extension_members_follow_and_never_replace_the_problem_members() -> None:
    doc = Problem(503, "not-ready", "no key", extra={"ok": False, "problems": ["no key"]})
    assert list(doc.to_dict())[-2:] == ["ok", "problems"]
    with pytest.raises(ValueError, match="status"):
        Problem(500, "internal", "x", extra={"status": 200})


def test_a_problem_is_a_value() -> None:
    a = Problem(400, "bad-request", "x")
    assert a == Problem(400, "bad-request", "x") and a.type == "urn:edge-redeem:problem:bad-request"
    with pytest.raises(AttributeError):
        a.status = 200  # type: ignore[misc]
