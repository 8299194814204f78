"""The POS API (/api/v1) and /metrics over a real in-process daemon, served by the daemon's
own kiosk web server (kiosk_ui/app.py's create_app) on loopback: checkouts, holds, the best
combination, commit/release/reverse and the states they are allowed from, idempotency keys,
till tokens, the published OpenAPI document and problem+json errors that change nothing."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from coupons.journal import Entry, PosCheckout
from kiosk_ui import api, tills
from kiosk_ui.app import create_app
from terminal.daemon import config as config_mod
from terminal.daemon.runner import Daemon
from tests.conftest import World
from tests.test_daemon import fifo_input, wait_for, write_config

BASKET = {"currency": "CNY", "total_minor": 12800}


@dataclass
class Pos:
    daemon: Daemon
    url: str
    token: str
    spend: list[str]  # SPEND100: 20.00 off 100.00, stacks with anything
    ten: list[str]  # TENOFF: 10 % off, stacks with anything
    client: httpx.Client

    def restart(self) -> None:
        """Stop the daemon (and so its web app) and start it again on the same data, as
        after a power cut and systemd's restart."""
        cfg = self.daemon.cfg
        self.daemon.stop()
        self.daemon = Daemon(cfg, self.daemon.clock)
        self.daemon.start()
        self.url = kiosk_url(self.daemon)

    def post(self, path: str, body: Any = None, key: str | None = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        if key is not None:
            headers["Idempotency-Key"] = key
        return self.client.post(self.url + path, json=body, headers=headers, **kw)

    def get(self, path: str) -> Any:
        return self.client.get(self.url + path, headers={"Authorization": f"Bearer {self.token}"})

    def open(self, key: str = "open-1", basket: Any = None) -> str:
        r = self.post("/api/v1/checkouts", {"basket": basket or BASKET}, key)
        assert r.status_code == 201, r.text
        return str(r.json()["checkout_id"])

    def seq(self) -> int:
        return int(self.daemon.worker.call(lambda e: e.journal.head_seq))  # type: ignore[union-attr]

    def entries_after(self, seq: int) -> list[Entry]:
        """Journal entries written since `seq`."""
        return list(
            self.daemon.worker.call(  # type: ignore[union-attr]
                lambda e: list(Entry.select().where(Entry.seq > seq).order_by(Entry.seq))
            )
        )

    def state(self, cid: str) -> tuple[str, list[tuple[str, str]]]:
        """The checkout's state and its coupons' (serial, status), as the till reads them."""
        got = self.get(f"/api/v1/checkouts/{cid}").json()
        return got["state"], [(c["serial"], c["status"]) for c in got["coupons"]]


def make_app(daemon: Daemon) -> FastAPI:
    """The daemon's own web app (pages, API, /metrics), for a caller that drives it without
    a server (tests/reliability/fuzz_targets.py)."""
    return create_app(daemon)


def kiosk_url(daemon: Daemon) -> str:
    assert daemon.kiosk is not None, "the daemon's kiosk web server did not start"
    return str(daemon.kiosk.url)


@pytest.fixture
def pos(world: World, tmp_path: Path) -> Iterator[Pos]:
    world.campaign(
        id="SPEND100", kind="threshold", amount_minor=2000, min_spend_minor=10000, stacking="any"
    )
    world.campaign(id="TENOFF", kind="percent", percent=10, stacking="any")
    spend, ten = world.issue("SPEND100", 4), world.issue("TENOFF", 2)
    world.sync_ledger()
    world.engine.db.close()
    # The daemon's own kiosk web server (create_app: pages, API, /metrics) on a free port.
    body = fifo_input(tmp_path / "f")  # write_config adds the kiosk on a free port
    cfg = config_mod.load(write_config(tmp_path / "d.toml", world.data, body))
    daemon = Daemon(cfg, world.clock)
    daemon.start()
    token = tills.issue(world.data, "till1")
    p = Pos(daemon, kiosk_url(daemon), token, spend, ten, httpx.Client(timeout=10))
    try:
        yield p
    finally:
        p.client.close()
        p.daemon.stop()


# ---------------------------------------------------------------- the happy path


def test_open_apply_commit(pos: Pos) -> None:
    cid = pos.open()
    r = pos.post(f"/api/v1/checkouts/{cid}/coupons", {"code": pos.spend[0]}, "apply-1")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["decision"]["accepted"] and body["decision"]["discount_minor"] == 2000
    assert [c["status"] for c in body["coupons"]] == ["held"]
    r = pos.post(f"/api/v1/checkouts/{cid}/commit", key="commit-1")
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] and r.json()["discount_minor"] == 2000
    got = pos.get(f"/api/v1/checkouts/{cid}").json()
    assert got["state"] == "committed" and got["coupons"][0]["status"] == "committed"
    late = pos.post(f"/api/v1/checkouts/{cid}/coupons", {"code": pos.spend[1]}, "late")
    assert late.status_code == 409 and late.json()["code"] == "checkout-closed"
    # Another till does not see this till's checkout.
    other_till = tills.issue(pos.daemon.cfg.terminal.data, "till2")
    peek = pos.client.get(
        f"{pos.url}/api/v1/checkouts/{cid}", headers={"Authorization": f"Bearer {other_till}"}
    )
    assert peek.status_code == 404
    # The same coupon at another checkout: refused, as a 200 with the cashier's sentence.
    other = pos.open("open-2")
    r = pos.post(f"/api/v1/checkouts/{other}/coupons", {"code": pos.spend[0]}, "apply-2")
    assert r.status_code == 200
    d = r.json()["decision"]
    assert not d["accepted"] and d["reason"] == "already_redeemed"
    assert d["message"] == "This coupon has already been used."


def test_two_coupons_stack_and_the_best_combination(pos: Pos) -> None:
    cid = pos.open()
    a = pos.post(f"/api/v1/checkouts/{cid}/coupons", {"code": pos.ten[0]}, "a").json()
    b = pos.post(f"/api/v1/checkouts/{cid}/coupons", {"code": pos.spend[0]}, "b").json()
    assert a["decision"]["accepted"] and b["decision"]["accepted"]
    assert len(b["coupons"]) == 2
    got = pos.get(f"/api/v1/checkouts/{cid}").json()
    best = got["best"]
    # 10 % of 128.00 first (12.80), then 20.00 off the threshold: 32.80 together.
    assert sorted(best["coupons"]) == sorted(c["serial"] for c in got["coupons"])
    assert best["discount_minor"] == 1280 + 2000
    r = pos.post(f"/api/v1/checkouts/{cid}/commit", key="c")
    assert r.json()["discount_minor"] == 3280


def test_release_then_commit_is_409_checkout_closed(pos: Pos) -> None:
    cid = pos.open()
    pos.post(f"/api/v1/checkouts/{cid}/coupons", {"code": pos.spend[0]}, "a")
    r = pos.post(f"/api/v1/checkouts/{cid}/release", key="rel")
    assert r.status_code == 200 and r.json()["accepted"]
    r = pos.post(f"/api/v1/checkouts/{cid}/commit", key="com")
    assert r.status_code == 409
    assert r.headers["content-type"].startswith("application/problem+json")
    p = r.json()
    assert p["type"] == "urn:edge-redeem:problem:checkout-closed" and "released" in p["detail"]
    assert p["status"] == 409 and p["reason"] == "unknown_checkout" and p["message"]
    assert p["instance"] == f"/api/v1/checkouts/{cid}/commit" and p["type"] and p["title"]
    # Released: the coupon is free for the next sale.
    nxt = pos.open("open-2")
    r = pos.post(f"/api/v1/checkouts/{nxt}/coupons", {"code": pos.spend[0]}, "b")
    assert r.json()["decision"]["accepted"]


def test_reverse_after_commit_and_not_before(pos: Pos) -> None:
    cid = pos.open()
    pos.post(f"/api/v1/checkouts/{cid}/coupons", {"code": pos.spend[0]}, "a")
    r = pos.post(f"/api/v1/checkouts/{cid}/reverse", key="early")
    assert r.status_code == 409 and r.json()["reason"] == "not_committed"
    pos.post(f"/api/v1/checkouts/{cid}/commit", key="c")
    r = pos.post(f"/api/v1/checkouts/{cid}/reverse", key="refund")
    assert r.status_code == 200 and r.json()["accepted"]
    got = pos.get(f"/api/v1/checkouts/{cid}").json()
    assert got["state"] == "reversed" and got["coupons"][0]["status"] == "reversed"


def test_retry_gets_the_same_answer_and_a_reused_key_is_409(pos: Pos) -> None:
    cid = pos.open("k-open")
    assert pos.open("k-open") == cid  # a retried open is the same checkout
    first = pos.post(f"/api/v1/checkouts/{cid}/coupons", {"code": pos.spend[0]}, "k1").json()
    seq = pos.seq()
    again = pos.post(f"/api/v1/checkouts/{cid}/coupons", {"code": pos.spend[0]}, "k1").json()
    assert again["decision"]["replayed"] and pos.seq() == seq
    strip = {k: v for k, v in first["decision"].items() if k != "replayed"}
    assert {k: v for k, v in again["decision"].items() if k != "replayed"} == strip
    r = pos.post(f"/api/v1/checkouts/{cid}/coupons", {"code": pos.spend[1]}, "k1")
    assert r.status_code == 409 and r.json()["code"] == "operation-conflict"
    r = pos.post("/api/v1/checkouts", {"basket": {"currency": "CNY", "total_minor": 1}}, "k-open")
    assert r.status_code == 409
    assert pos.seq() == seq
    assert len(pos.get(f"/api/v1/checkouts/{cid}").json()["coupons"]) == 1
    c1 = pos.post(f"/api/v1/checkouts/{cid}/commit", key="k2").json()
    c2 = pos.post(f"/api/v1/checkouts/{cid}/commit", key="k2").json()
    assert c2["replayed"] and c1["journal_seq"] == c2["journal_seq"]


# ---------------------------------------------------------------- allowed steps


def refused(pos: Pos, cid: str, step: str, key: str, problem: str) -> None:
    """`step` is a 409 `problem` that changes nothing: not the checkout's state, not its
    coupons, not the journal."""
    before, seq = pos.state(cid), pos.seq()
    r = pos.post(f"/api/v1/checkouts/{cid}/{step}", key=key)
    assert r.status_code == 409, (step, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    p = r.json()
    assert p["type"] == f"urn:edge-redeem:problem:{problem}", p
    assert p["status"] == 409 and p["title"] == "Conflict" and cid in p["detail"]
    assert pos.state(cid) == before and pos.seq() == seq


@pytest.mark.parametrize("with_coupon", [True, False], ids=["coupon", "no-coupon"])
def test_commit_and_release_only_from_open_reverse_only_from_committed(
    pos: Pos, with_coupon: bool
) -> None:
    def checkout(key: str) -> str:
        cid = pos.open(key)
        if with_coupon:
            code = pos.spend[len(key) % 4]
            r = pos.post(f"/api/v1/checkouts/{cid}/coupons", {"code": code}, f"{key}-apply")
            assert r.json()["decision"]["accepted"], r.text
        return cid

    opened = checkout("o1")
    # Nothing to refund before payment.
    refused(pos, opened, "reverse", "o1-rev", "not-committed")
    assert pos.state(opened)[0] == "open"

    released = checkout("o22")
    assert pos.post(f"/api/v1/checkouts/{released}/release", key="r-rel").status_code == 200
    assert pos.state(released)[0] == "released"
    refused(pos, released, "commit", "r-com", "checkout-closed")
    refused(pos, released, "release", "r-rel2", "checkout-closed")
    refused(pos, released, "reverse", "r-rev", "not-committed")
    assert pos.state(released)[0] == "released"

    paid = checkout("o333")
    assert pos.post(f"/api/v1/checkouts/{paid}/commit", key="p-com").status_code == 200
    refused(pos, paid, "commit", "p-com2", "checkout-closed")
    refused(pos, paid, "release", "p-rel", "checkout-closed")
    assert pos.state(paid)[0] == "committed"
    if not with_coupon:
        # Paid without a coupon: there is no coupon to reverse, and the sale stays paid.
        refused(pos, paid, "reverse", "p-rev", "not-committed")
        assert pos.state(paid)[0] == "committed"
        return
    assert pos.post(f"/api/v1/checkouts/{paid}/reverse", key="p-rev").status_code == 200
    refused(pos, paid, "reverse", "p-rev2", "not-committed")
    refused(pos, paid, "commit", "p-com3", "checkout-closed")
    refused(pos, paid, "release", "p-rel2", "checkout-closed")
    assert pos.state(paid)[0] == "reversed"


def test_a_retried_step_gets_its_first_answer_whatever_came_after(pos: Pos) -> None:
    cid = pos.open()
    pos.post(f"/api/v1/checkouts/{cid}/coupons", {"code": pos.spend[0]}, "a")
    first = pos.post(f"/api/v1/checkouts/{cid}/commit", key="pay").json()
    assert pos.post(f"/api/v1/checkouts/{cid}/reverse", key="refund").status_code == 200
    before, seq = pos.state(cid), pos.seq()
    # The till never saw the commit's answer and sends it again with its key.
    again = pos.post(f"/api/v1/checkouts/{cid}/commit", key="pay")
    assert again.status_code == 200 and again.json()["replayed"]
    assert again.json()["journal_seq"] == first["journal_seq"]
    assert pos.state(cid) == before and before[0] == "reversed" and pos.seq() == seq


def test_a_sale_without_coupons_commits_and_releases_with_an_honest_message(pos: Pos) -> None:
    paid = pos.open("o-paid")
    seq = pos.seq()
    r = pos.post(f"/api/v1/checkouts/{paid}/commit", key="pay")
    assert r.status_code == 200
    d = r.json()
    assert d["accepted"] and d["discount_minor"] == 0 and d["coupons"] == []
    assert d["message"] == "Payment recorded. No coupon was applied to this checkout."
    assert "Coupon" not in d["message"].split(".")[0]
    assert pos.state(paid) == ("committed", []) and pos.seq() == seq
    cancelled = pos.open("o-cancel")
    r = pos.post(f"/api/v1/checkouts/{cancelled}/release", key="cancel")
    assert r.status_code == 200
    assert r.json()["message"] == "Checkout cancelled. No coupon was applied to it."
    assert pos.state(cancelled) == ("released", [])
    # A retry after a restart still gets the first answer, not a 409.
    pos.restart()
    again = pos.post(f"/api/v1/checkouts/{paid}/commit", key="pay")
    assert again.status_code == 200, again.text
    body = again.json()
    assert body["replayed"] and body["message"] == d["message"]
    assert pos.state(paid) == ("committed", []) and pos.seq() == seq
    refused(pos, paid, "release", "cancel-late", "checkout-closed")


def test_the_same_coupon_twice_in_one_checkout_is_409_already_applied(pos: Pos) -> None:
    cid = pos.open()
    url = f"/api/v1/checkouts/{cid}/coupons"
    first = pos.post(url, {"code": pos.spend[0]}, "first").json()
    serial = first["decision"]["serial"]
    before, seq = pos.state(cid), pos.seq()
    for _ in range(2):  # the retry with the same key gets the same answer
        r = pos.post(url, {"code": pos.spend[0]}, "again")
        assert r.status_code == 409, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        p = r.json()
        assert p["type"] == "urn:edge-redeem:problem:already-applied"
        assert serial in p["detail"] and "SPEND100" in p["detail"] and cid in p["detail"]
        assert p["message"] == "This coupon is already applied to this sale."
        assert "already been used" not in p["message"]
    # Still one hold; the engine journaled the attempt once, as it does every refusal, and
    # raised no replay flag (the coupon was not used anywhere else).
    assert pos.state(cid) == before == ("open", [(serial, "held")])
    (entry,) = pos.entries_after(seq)
    assert (entry.kind, entry.accepted, entry.reason) == ("hold", False, "already_applied")
    assert entry.serial == serial and entry.checkout_id == cid
    assert "already applied" in json.loads(entry.detail)["detail"]
    best = pos.get(f"/api/v1/checkouts/{cid}").json()["best"]
    assert best["coupons"] == [serial] and best["discount_minor"] == 2000
    done = pos.post(f"/api/v1/checkouts/{cid}/commit", key="pay").json()
    assert done["discount_minor"] == 2000 and len(done["coupons"]) == 1


# ---------------------------------------------------------------- what is published


def test_openapi_publishes_the_pos_api_and_not_the_kiosk_pages(pos: Pos) -> None:
    r = pos.client.get(pos.url + "/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["info"]["title"] and doc["info"]["version"] == api.API_VERSION
    assert sorted(doc["paths"]) == [
        "/api/v1/checkouts",
        "/api/v1/checkouts/{checkout_id}",
        "/api/v1/checkouts/{checkout_id}/commit",
        "/api/v1/checkouts/{checkout_id}/coupons",
        "/api/v1/checkouts/{checkout_id}/release",
        "/api/v1/checkouts/{checkout_id}/reverse",
    ]
    # The pages are still served, only not published.
    page = pos.client.get(pos.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_every_error_under_the_api_is_a_problem(pos: Pos) -> None:
    cid = pos.open()
    seq = pos.seq()
    auth = {"Authorization": f"Bearer {pos.token}", "Idempotency-Key": "k"}
    cases = [
        ("GET", "/api/v1/nosuch", auth, 404),
        ("POST", "/api/v1/checkouts/x/y/z", auth, 404),
        ("GET", "/api/v1", {}, 404),
        ("GET", "/api/v1/checkouts", auth, 405),
        ("DELETE", f"/api/v1/checkouts/{cid}", auth, 405),
        ("PUT", f"/api/v1/checkouts/{cid}/commit", {}, 405),
    ]
    for method, path, headers, status in cases:
        r = pos.client.request(method, pos.url + path, headers=headers)
        assert r.status_code == status, (method, path, r.text)
        assert r.headers["content-type"].startswith("application/problem+json"), path
        p = r.json()
        assert p["status"] == status and p["type"].startswith("urn:edge-redeem:problem:")
        assert p["title"] and p["detail"] and p["instance"] == path
        assert p["reason"] == p["code"].replace("-", "_") and p["message"].endswith("."), p
        if status == 405:
            assert "allow" in r.headers
    assert pos.seq() == seq and pos.state(cid) == ("open", [])
    # The kiosk's pages keep their own answers.
    r = pos.client.get(pos.url + "/nosuch")
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    assert r.json() == {"detail": "Not Found"}
    r = pos.client.get(pos.url + "/scan")
    assert r.status_code == 405 and not r.headers["content-type"].startswith("application/pro")


# ---------------------------------------------------------------- bad input


def test_missing_or_wrong_token_is_401_and_changes_nothing(pos: Pos) -> None:
    cid = pos.open()
    seq = pos.seq()
    apply = f"{pos.url}/api/v1/checkouts/{cid}/coupons"
    for headers in (
        {},
        {"Authorization": "Bearer pos_not-a-real-token"},
        {"Authorization": f"Basic {pos.token}"},
        {"Authorization": f"Bearer {pos.token}x"},
    ):
        r = pos.client.post(
            apply, json={"code": pos.spend[0]}, headers={**headers, "Idempotency-Key": "z"}
        )
        assert r.status_code == 401, headers
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.headers["www-authenticate"] == "Bearer"
        assert (
            pos.client.get(f"{pos.url}/api/v1/checkouts/{cid}", headers=headers).status_code == 401
        )
    assert pos.seq() == seq and pos.get(f"/api/v1/checkouts/{cid}").json()["coupons"] == []
    # A new token replaces the till's old one.
    old, pos.token = pos.token, tills.issue(pos.daemon.cfg.terminal.data, "till1")
    assert pos.get(f"/api/v1/checkouts/{cid}").status_code == 200
    pos.token = old
    assert pos.get(f"/api/v1/checkouts/{cid}").status_code == 401


def test_unknown_checkout_is_404(pos: Pos) -> None:
    seq = pos.seq()
    for r in (
        pos.get("/api/v1/checkouts/nosuch"),
        pos.post("/api/v1/checkouts/nosuch/coupons", {"code": pos.spend[0]}, "a"),
        pos.post("/api/v1/checkouts/nosuch/commit", key="b"),
        pos.post("/api/v1/checkouts/nosuch/release", key="c"),
        pos.post("/api/v1/checkouts/nosuch/reverse", key="d"),
    ):
        assert r.status_code == 404, r.text
        assert r.json()["reason"] == "unknown_checkout"
    assert pos.seq() == seq


def test_oversized_and_malformed_bodies(pos: Pos) -> None:
    cid = pos.open()
    seq = pos.seq()
    url = f"/api/v1/checkouts/{cid}/coupons"
    big = pos.post(url, {"code": "A" * 70_000}, "big")
    assert big.status_code == 413 and big.json()["status"] == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        for _ in range(80):
            yield b"x" * 1024

    streamed = pos.client.post(
        pos.url + url,
        content=chunks(),
        headers={"Authorization": f"Bearer {pos.token}", "Idempotency-Key": "s"},
    )
    assert streamed.status_code == 413
    bad_json = pos.post(
        url, content=b"{not json", key="j", headers={"Content-Type": "application/json"}
    )
    assert bad_json.status_code == 400 and bad_json.json()["code"] == "bad-request"
    for body in ({}, {"code": 5}, {"code": "x", "extra": 1}, [1, 2]):
        r = pos.post(url, body, "v")
        assert r.status_code == 422, body
        assert r.headers["content-type"].startswith("application/problem+json")
    no_key = pos.post(url, {"code": pos.spend[0]})
    assert no_key.status_code == 400 and "Idempotency-Key" in no_key.json()["detail"]
    mismatch = {"currency": "CNY", "lines": [{"sku": "a", "unit_price_minor": 5}], "total_minor": 9}
    r = pos.post("/api/v1/checkouts", {"basket": mismatch}, "m")
    assert r.status_code == 422 and "total_minor" in r.json()["detail"]
    assert pos.seq() == seq and pos.get(f"/api/v1/checkouts/{cid}").json()["coupons"] == []


def test_metrics_show_decisions_by_reason(pos: Pos) -> None:
    pos.daemon.set_basket(api.Basket.from_dict(BASKET))
    (pipe,) = pos.daemon.inputs
    pipe.feed(pos.spend[0])
    wait_for(lambda: pos.daemon.published_count == 1)
    r = pos.client.get(pos.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'redeem_decisions_total{accepted="true",reason="ok"} 1.0' in text
    assert "redeem_scan_latency_seconds_count 1.0" in text
    assert "redeem_ledger_age_seconds" in text and "redeem_sync_backlog" in text
    assert 'redeem_device_up{input="pipe"} 1.0' in text


def test_pos_token_command_stores_only_a_salted_hash(world: World, capsys: Any) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)

    def cmd(parent: Any, name: str, func: Any, help_: str) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = parent.add_parser(name, help=help_)
        sp.add_argument("--data", required=True)
        sp.set_defaults(func=func)
        return sp

    tills.add_commands(sub, cmd)
    args = parser.parse_args(["pos-token", "--data", str(world.data), "--till", "till7"])
    assert args.func(args) == 0
    token = capsys.readouterr().out.strip()
    path = world.data / tills.FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert token not in path.read_text()
    assert tills.Tills(world.data).till_for(f"Bearer {token}") == "till7"
    assert tills.Tills(world.data).till_for(f"Bearer {token[:-1]}") is None
    with pytest.raises(ValueError):
        tills.issue(world.data, "no spaces")


def test_coupons_applied_by_the_till_reach_metrics_once_however_often_retried(pos: Pos) -> None:
    cid = pos.open()
    for _ in range(2):  # the till retries with the same key: one decision, counted once
        r = pos.post(f"/api/v1/checkouts/{cid}/coupons", {"code": pos.spend[0]}, "apply-m")
        assert r.status_code == 200 and r.json()["decision"]["accepted"]
    wait_for(lambda: pos.daemon.published_count == 1)
    assert pos.daemon.recent[-1].kind == "pos"
    text = pos.client.get(pos.url + "/metrics").text
    assert 'redeem_decisions_total{accepted="true",reason="ok"} 1.0' in text


# ---------------------------------------------------------------- across a restart


def test_a_checkout_carries_on_after_the_terminal_restarts(pos: Pos) -> None:
    cid = pos.open("open-r")
    first = pos.post(f"/api/v1/checkouts/{cid}/coupons", {"code": pos.spend[0]}, "apply-r1")
    assert first.json()["decision"]["accepted"]
    pos.restart()
    # The till's retry of the open (its answer was lost in the cut) finds the same checkout.
    again = pos.post("/api/v1/checkouts", {"basket": BASKET}, "open-r")
    assert again.status_code == 201 and again.json()["checkout_id"] == cid
    second = pos.post(f"/api/v1/checkouts/{cid}/coupons", {"code": pos.ten[0]}, "apply-r2")
    assert second.status_code == 200 and second.json()["decision"]["accepted"]
    got = pos.get(f"/api/v1/checkouts/{cid}").json()
    assert got["state"] == "open" and got["basket_total_minor"] == 12800
    assert len(got["coupons"]) == 2 and got["best"]["discount_minor"] > 2000
    done = pos.post(f"/api/v1/checkouts/{cid}/commit", key="commit-r")
    assert done.status_code == 200 and done.json()["accepted"]
    pos.restart()
    late = pos.post(f"/api/v1/checkouts/{cid}/coupons", {"code": pos.spend[1]}, "apply-r3")
    assert late.status_code == 409 and late.json()["type"].endswith("checkout-closed")


def test_a_commit_whose_state_was_lost_is_read_off_the_coupons(pos: Pos) -> None:
    cid = pos.open("open-s")
    pos.post(f"/api/v1/checkouts/{cid}/coupons", {"code": pos.spend[0]}, "apply-s1")
    assert pos.post(f"/api/v1/checkouts/{cid}/commit", key="commit-s").json()["accepted"]
    # The cut came between the engine's commit and the checkout's new state.
    pos.daemon.worker.call(  # type: ignore[union-attr]
        lambda e: PosCheckout.update(state="open").where(PosCheckout.id == cid).execute()
    )
    pos.restart()
    assert pos.get(f"/api/v1/checkouts/{cid}").json()["state"] == "committed"
    late = pos.post(f"/api/v1/checkouts/{cid}/coupons", {"code": pos.spend[1]}, "apply-s2")
    assert late.status_code == 409
