"""POS API strictness over the daemon's real kiosk web server: numbers are JSON integers
within bounds, a retried apply gets its first answer however the checkout moved on, and
every documented error carries a reason code and a sentence the cashier can read (in the
terminal's language)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coupons.journal import PosCheckout
from kiosk_ui import api, tills
from terminal.daemon import config as config_mod
from terminal.daemon.runner import Daemon
from tests.conftest import World
from tests.test_daemon import fifo_input, write_config
from tests.test_pos_api import BASKET, Pos, kiosk_url
from tests.test_pos_api import pos as pos  # the fixture

CJK = re.compile(r"[\u4e00-\u9fff]")
LINE = {"sku": "TEA-500", "quantity": 2, "unit_price_minor": 6400}
# Each integer field of a request body, as a function that puts `value` in it.
FIELDS: dict[str, Any] = {
    "quantity": lambda v: {"currency": "CNY", "lines": [{**LINE, "quantity": v}]},
    "unit_price_minor": lambda v: {"currency": "CNY", "lines": [{**LINE, "unit_price_minor": v}]},
    "total_minor": lambda v: {"currency": "CNY", "total_minor": v},
}
TOO_LARGE = {"quantity": 100_001, "unit_price_minor": 10**10 + 1, "total_minor": 10**12 + 1}
NOT_INTEGERS = [True, False, 10000.0, "100", 2.5, None, [100], {"v": 100}]


def assert_problem(r: httpx.Response, status: int, code: str, reason: str | None = None) -> None:
    """A problem+json answer with every member a till relies on, and a cashier's sentence."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    p = r.json()
    assert p["type"] == f"urn:edge-redeem:problem:{code}", p
    assert p["status"] == status and p["title"] and p["detail"] and p["code"] == code, p
    assert p["reason"] == (reason or code.replace("-", "_")), p
    message = p["message"]
    assert isinstance(message, str) and message[0].isupper() and message.endswith("."), p
    assert len(message.split()) >= 5, p  # a sentence, not a code


# ---------------------------------------------------------------- integers only


def test_integer_fields_take_json_integers_only_within_bounds(pos: Pos) -> None:
    seq = pos.seq()
    n = 0
    for name, put in FIELDS.items():
        bad = [*NOT_INTEGERS, -1, TOO_LARGE[name], 2**63, 10**30]
        if name == "total_minor":
            bad.remove(None)  # null is "no total" there: the lines give it
        if name == "quantity":
            bad.append(0)
        for value in bad:
            n += 1
            r = pos.post("/api/v1/checkouts", {"basket": put(value)}, f"bad-{n}")
            assert_problem(r, 422, "invalid")
            assert name in r.json()["detail"], (name, value, r.json())
    # A flag is a JSON boolean, not 1 or "true".
    for value in (1, "true"):
        n += 1
        basket = {**BASKET, "customer": {"new": value}}
        assert_problem(
            pos.post("/api/v1/checkouts", {"basket": basket}, f"bad-{n}"), 422, "invalid"
        )
    assert pos.seq() == seq
    # The same fields as JSON integers within bounds are taken.
    for name, put in FIELDS.items():
        top = TOO_LARGE[name] - 1
        r = pos.post("/api/v1/checkouts", {"basket": put(top)}, f"ok-{name}")
        assert r.status_code == 201, (name, r.text)
    r = pos.post("/api/v1/checkouts", {"basket": {**BASKET, "customer": {"new": True}}}, "ok-new")
    assert r.status_code == 201, r.text


# ---------------------------------------------------------------- retries


def test_an_apply_retried_after_commit_gets_its_first_answer(pos: Pos) -> None:
    cid = pos.open()
    url = f"/api/v1/checkouts/{cid}/coupons"
    first = pos.post(url, {"code": pos.spend[0]}, "apply-1")
    assert first.status_code == 200 and first.json()["decision"]["accepted"]
    no = pos.post(url, {"code": "NOSUCH-CODE-1"}, "apply-2")  # a refusal is an answer too
    assert no.status_code == 200 and not no.json()["decision"]["accepted"]
    twice = pos.post(url, {"code": pos.spend[0]}, "apply-3")
    assert_problem(twice, 409, "already-applied")
    assert pos.post(f"/api/v1/checkouts/{cid}/commit", key="pay").status_code == 200
    after, seq = pos.state(cid), pos.seq()
    assert after[0] == "committed"
    # The till never saw the answers and sends the applies again with their keys.
    for key, code, answer in (("apply-1", pos.spend[0], first), ("apply-2", "NOSUCH-CODE-1", no)):
        again = pos.post(url, {"code": code}, key)
        assert again.status_code == 200, again.text
        want = answer.json()
        want["decision"]["replayed"] = True
        assert again.json() == want
    assert_problem(pos.post(url, {"code": pos.spend[0]}, "apply-3"), 409, "already-applied")
    # The same key for another coupon is still a conflict; a new key meets the closed sale.
    assert_problem(pos.post(url, {"code": pos.spend[1]}, "apply-1"), 409, "operation-conflict")
    closed = pos.post(url, {"code": pos.spend[1]}, "apply-4")
    assert_problem(closed, 409, "checkout-closed", "unknown_checkout")
    assert pos.state(cid) == after and pos.seq() == seq
    # After a restart the engine's journal answers: the first decision, the coupons as now.
    pos.restart()
    again = pos.post(url, {"code": pos.spend[0]}, "apply-1")
    assert again.status_code == 200, again.text
    decision = again.json()["decision"]
    assert decision == {**first.json()["decision"], "replayed": True}
    assert [c["status"] for c in again.json()["coupons"]] == ["committed"]
    assert pos.state(cid) == after and pos.seq() == seq


def test_an_apply_retried_after_release_or_for_a_forgotten_checkout(pos: Pos) -> None:
    cid = pos.open()
    url = f"/api/v1/checkouts/{cid}/coupons"
    first = pos.post(url, {"code": pos.ten[0]}, "apply-1").json()
    assert pos.post(f"/api/v1/checkouts/{cid}/release", key="cancel").status_code == 200
    # The checkout's record is gone (pruned after a week): the journal still answers.
    pos.daemon.worker.call(  # type: ignore[union-attr]
        lambda e: PosCheckout.delete().where(PosCheckout.id == cid).execute()
    )
    pos.restart()
    again = pos.post(url, {"code": pos.ten[0]}, "apply-1")
    assert again.status_code == 200, again.text
    assert again.json()["decision"] == {**first["decision"], "replayed": True}
    assert [c["status"] for c in again.json()["coupons"]] == ["released"]
    unknown = pos.post(url, {"code": pos.ten[0]}, "apply-2")
    assert_problem(unknown, 404, "unknown-checkout", "unknown_checkout")


def test_a_retried_open_after_the_sale_closed_is_the_same_checkout(pos: Pos) -> None:
    first = pos.post("/api/v1/checkouts", {"basket": BASKET}, "open-x")
    cid = first.json()["checkout_id"]
    assert pos.post(f"/api/v1/checkouts/{cid}/commit", key="pay").status_code == 200
    newer = pos.open("open-y")
    # No checkout is kept in memory: after a restart the journal answers.
    pos.restart()
    again = pos.post("/api/v1/checkouts", {"basket": BASKET}, "open-x")
    assert again.status_code == 201 and again.json() == first.json()
    assert pos.state(newer)[0] == "open"


# ---------------------------------------------------------------- every error


def test_apply_to_a_closed_checkout_says_why_in_words(pos: Pos) -> None:
    cid = pos.open()
    assert pos.post(f"/api/v1/checkouts/{cid}/commit", key="pay").status_code == 200
    r = pos.post(f"/api/v1/checkouts/{cid}/coupons", {"code": pos.spend[0]}, "late")
    assert_problem(r, 409, "checkout-closed", "unknown_checkout")
    # The reason code stays the contract's; the words say what happened to the sale.
    assert r.json()["message"] == "This sale is already paid. No coupon can be added to it."


def documented_errors(pos: Pos, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Each error of docs/pos-api.md's table, provoked: (what, response, status, code,
    reason or None for the code's own)."""
    auth = {"Authorization": f"Bearer {pos.token}"}
    out: list[tuple[Any, ...]] = []
    cid = pos.open("e-open")
    apply = f"/api/v1/checkouts/{cid}/coupons"

    def add(
        what: str, r: httpx.Response, status: int, code: str, reason: str | None = None
    ) -> None:
        out.append((what, r, status, code, reason))

    raw = pos.post(apply, content=b"{no", key="e1", headers={"Content-Type": "application/json"})
    add("malformed JSON", raw, 400, "bad-request")
    add("no key", pos.post(apply, {"code": pos.spend[0]}), 400, "bad-request")
    add("bad key", pos.post(apply, {"code": pos.spend[0]}, "with space"), 400, "bad-request")
    r = pos.client.get(f"{pos.url}/api/v1/checkouts/{cid}")
    add("no token", r, 401, "unauthorized")
    add("unknown", pos.get("/api/v1/checkouts/nosuch"), 404, "unknown-checkout")
    add("no path", pos.get("/api/v1/nosuch"), 404, "not-found")
    r = pos.client.get(f"{pos.url}/api/v1/checkouts", headers=auth)
    add("method", r, 405, "method-not-allowed")
    r = pos.post("/api/v1/checkouts", {"basket": {**BASKET, "total_minor": 1}}, "e-open")
    add("key reused", r, 409, "operation-conflict")
    held = pos.post(apply, {"code": pos.spend[0]}, "e2")
    assert held.json()["decision"]["accepted"], held.text
    add("twice", pos.post(apply, {"code": pos.spend[0]}, "e3"), 409, "already-applied")
    r = pos.post(f"/api/v1/checkouts/{cid}/reverse", key="e4")
    add("refund early", r, 409, "not-committed")
    add("too large", pos.post(apply, {"code": "A" * 70_000}, "e5"), 413, "too-large")
    add("schema", pos.post(apply, {"code": 5}, "e6"), 422, "invalid")
    odd = {"currency": "CNY", "lines": [{"sku": "a", "unit_price_minor": 5}], "total_minor": 9}
    add("basket", pos.post("/api/v1/checkouts", {"basket": odd}, "e7"), 422, "invalid-basket")
    pos.daemon.clock.advance(3600)  # type: ignore[attr-defined]  # the hold lapses
    add("lapsed", pos.post(f"/api/v1/checkouts/{cid}/commit", key="e8"), 409, "hold-expired")
    paid = pos.open("e-open2")
    assert pos.post(f"/api/v1/checkouts/{paid}/commit", key="e9").status_code == 200
    r = pos.post(f"/api/v1/checkouts/{paid}/coupons", {"code": pos.spend[1]}, "e10")
    add("closed apply", r, 409, "checkout-closed", "unknown_checkout")
    r = pos.post(f"/api/v1/checkouts/{paid}/release", key="e11")
    add("closed release", r, 409, "checkout-closed", "unknown_checkout")

    # A fault in the terminal (injected: a bug in the code's path) and an engine that
    # cannot answer (the worker's job fails).
    def fault(*_: Any) -> Any:
        raise RuntimeError("injected")

    monkeypatch.setattr(api.tokens, "extract", fault)
    add("fault", pos.post(apply, {"code": pos.spend[2]}, "e12"), 500, "internal-error")
    monkeypatch.undo()
    monkeypatch.setattr(pos.daemon.worker.engine, "checkout_coupons", fault)  # type: ignore[union-attr]
    add("engine", pos.get(f"/api/v1/checkouts/{paid}"), 503, "unavailable", "internal_error")
    monkeypatch.undo()
    return out


def test_every_documented_error_carries_reason_and_message(
    pos: Pos, monkeypatch: pytest.MonkeyPatch
) -> None:
    errors = documented_errors(pos, monkeypatch)
    assert {status for _, _, status, _, _ in errors} == {
        400,
        401,
        404,
        405,
        409,
        413,
        422,
        500,
        503,
    }
    for what, r, status, code, reason in errors:
        assert r.status_code == status, (what, r.text)
        assert_problem(r, status, code, reason)


@pytest.fixture
def pos_zh(world: World, tmp_path: Path) -> Iterator[Pos]:
    """The pos fixture's terminal, speaking Simplified Chinese."""
    world.campaign(id="SPEND100", kind="threshold", amount_minor=2000, min_spend_minor=10000)
    spend = world.issue("SPEND100", 4)
    world.sync_ledger()
    world.engine.db.close()
    path = write_config(tmp_path / "d.toml", world.data, fifo_input(tmp_path / "f"))
    path.write_text(path.read_text().replace("[terminal]\n", '[terminal]\nlang = "zh_CN"\n', 1))
    daemon = Daemon(config_mod.load(path), world.clock)
    daemon.start()
    token = tills.issue(world.data, "till1")
    p = Pos(daemon, kiosk_url(daemon), token, spend, [], httpx.Client(timeout=10))
    try:
        yield p
    finally:
        p.client.close()
        p.daemon.stop()


def test_error_sentences_are_in_the_terminals_language(
    pos_zh: Pos, monkeypatch: pytest.MonkeyPatch
) -> None:
    for what, r, status, code, reason in documented_errors(pos_zh, monkeypatch):
        p = r.json()
        assert r.status_code == status and p["code"] == code, (what, r.text)
        assert p["reason"] == (reason or code.replace("-", "_")), (what, p)
        assert CJK.search(p["message"]), (what, p)
