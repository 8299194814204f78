"""Burst detectors decide the same whether the attempts came to one long-lived engine or to
several: a restart, a reload after another process wrote the journal, and a `redeem redeem`
process of its own each start from the journal's attempts inside the window."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from coupons.decision import Context
from coupons.journal import Entry
from coupons.ledger import Policy
from coupons.reasons import Reason
from tests.conftest import T0, World, basket

ROOT = Path(__file__).resolve().parent.parent


def _flags(kind: str) -> list[int]:
    """The journal seq each flag of this kind is about."""
    rows = Entry.select().where((Entry.kind == "flag") & (Entry.reason == kind))
    return [json.loads(r.detail)["about_seq"] for r in rows.order_by(Entry.seq)]


def _same_engine(world: World) -> None:
    pass


def _restart(world: World) -> None:
    world.reopen()


def _reload(world: World) -> None:
    world.engine.reload()


BETWEEN: dict[str, Callable[[World], None]] = {
    "one engine": _same_engine,
    "restart": _restart,
    "reload": _reload,
}


@pytest.mark.parametrize("between", BETWEEN)
def test_attempts_on_one_coupon_across_restarts_are_a_burst(world: World, between: str) -> None:
    world.campaign(id="TEN", stacking="any")
    (tok,) = world.issue("TEN", 1)
    world.sync_ledger()
    limit = world.engine.ledger.policy.burst_per_coupon
    seqs = []
    for _ in range(limit + 2):
        BETWEEN[between](world)
        seqs.append(world.engine.redeem(tok, basket(5000)).journal_seq)
        world.clock.advance(0.2)
    # The attempts past the limit are flagged, however many engines saw them.
    assert _flags("burst_coupon") == seqs[limit:]
    assert len(_flags("replay")) == limit + 1


@pytest.mark.parametrize("between", BETWEEN)
@pytest.mark.parametrize("cashier", [None, "C07"])
def test_accepted_redemptions_across_restarts_trip_the_terminal_and_cashier_bursts(
    world: World, between: str, cashier: str | None
) -> None:
    if cashier:
        world.central.set_policy(Policy(burst_per_cashier=3))
    else:
        world.central.set_policy(Policy(burst_per_terminal=3))
    world.campaign(id="TEN", stacking="any")
    toks = world.issue("TEN", 5)
    world.sync_ledger()
    ctx = Context(cashier=cashier)
    accepted = []
    for tok in toks[:3]:
        BETWEEN[between](world)
        accepted.append(world.engine.redeem(tok, basket(5000), ctx).accepted)
        world.clock.advance(1)
    assert accepted == [True, True, True]
    BETWEEN[between](world)
    d = world.engine.redeem(toks[3], basket(5000), ctx)
    assert not d.accepted and d.reason is Reason.SUSPECTED_FRAUD
    assert len(_flags("burst_cashier" if cashier else "burst_terminal")) == 1
    # Once the window has passed, a restart does not bring the old attempts back.
    world.clock.advance(world.engine.ledger.policy.burst_window_s + 1)
    BETWEEN[between](world)
    assert world.engine.redeem(toks[3], basket(5000), ctx).accepted


def test_another_cashier_is_not_held_back_by_a_colleagues_burst_after_a_restart(
    world: World,
) -> None:
    world.central.set_policy(Policy(burst_per_cashier=2))
    world.campaign(id="TEN", stacking="any")
    toks = world.issue("TEN", 4)
    world.sync_ledger()
    for tok in toks[:2]:
        assert world.engine.redeem(tok, basket(5000), Context(cashier="C01")).accepted
    world.reopen()
    assert not world.engine.redeem(toks[2], basket(5000), Context(cashier="C01")).accepted
    assert world.engine.redeem(toks[3], basket(5000), Context(cashier="C02")).accepted


def test_redeem_commands_run_one_after_another_flag_a_burst_on_one_coupon(world: World) -> None:
    """The audit's case: five `redeem redeem` processes on one serial within a second."""
    world.campaign(id="TEN", stacking="any")
    (tok,) = world.issue("TEN", 1)
    world.sync_ledger()
    limit = world.engine.ledger.policy.burst_per_coupon
    world.engine.db.close()
    basket_file = world.data.parent / "basket.json"
    basket_file.write_text(json.dumps({"currency": "CNY", "total_minor": 5000}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDEEM_")}
    answers = []
    for i in range(limit + 2):
        env["REDEEM_NOW"] = f"{T0 + i * 0.2:.1f}"
        proc = subprocess.run(
            [sys.executable, "-m", "terminal.cli", "redeem", tok, "--basket", str(basket_file)]
            + ["--data", str(world.data), "--json"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        answers.append(json.loads(proc.stdout))
    assert [a["accepted"] for a in answers] == [True] + [False] * (limit + 1)
    world.reopen()
    assert _flags("burst_coupon") == [a["journal_seq"] for a in answers[limit:]]
