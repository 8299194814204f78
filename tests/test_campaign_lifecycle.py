"""A campaign's lifecycle (issue 14, item 3): pause, resume, end, archive at the central;
what a till does with it after its next store ledger; `redeem-central campaign` as an
operator reads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coupons.ledger import store_scope
from coupons.reasons import Reason
from sync.central import scopes
from sync.central.delivery import Delivery
from sync.central.models import CampaignRow, CampaignUsage
from sync.central.publisher import Publisher
from sync.central.store import Central, CentralError
from sync.central.terminals import new_enroll_code
from tests import master_key, postgres
from tests.central_server import BACKENDS, database_for
from tests.conftest import T0, World, basket

PAUSED_EN = "This promotion is paused for now and cannot be used."
PAUSED_ZH = "该活动已暂停，暂时无法使用。"


def _next_ledger(world: World, pub: Publisher) -> None:
    """The publisher's tick, then the till of S1 pulls its store's ledger and imports it."""
    pub.tick()
    answer = Delivery(world.central).answer(store_scope("S1"), world.engine.ledger.version, {})
    if answer.status == 204:
        return
    assert answer.status == 200, answer.status
    result = world.engine.import_ledger(answer.body)
    assert result.applied and not result.refused, result.refused


@pytest.fixture
def pub(world: World) -> Publisher:
    new_enroll_code(world.central, "S1")  # the store gets its own ledger
    return Publisher(world.central)


def test_a_paused_campaign_is_refused_at_the_till_until_resumed(
    world: World, pub: Publisher
) -> None:
    world.campaign(id="SPRING", amount_minor=500)
    first, second = world.issue("SPRING", 2)
    _next_ledger(world, pub)
    assert world.engine.check(first, basket(5000)).accepted

    paused = world.central.pause_campaign("SPRING")
    assert paused.status == "paused" and paused.campaign.paused
    # Until the next ledger the till knows nothing of it (it is offline-first).
    assert world.engine.check(first, basket(5000)).accepted
    _next_ledger(world, pub)
    assert world.engine.ledger.campaigns["SPRING"].paused
    refused = world.engine.redeem(first, basket(5000))
    assert not refused.accepted and refused.reason is Reason.CAMPAIGN_PAUSED
    assert refused.to_dict()["message"] == PAUSED_EN
    assert refused.to_dict("zh_CN")["message"] == PAUSED_ZH
    assert not world.engine.check(second, basket(5000)).accepted

    resumed = world.central.resume_campaign("SPRING")
    assert resumed.status == "active" and not resumed.campaign.paused
    _next_ledger(world, pub)
    assert world.engine.redeem(first, basket(5000)).accepted
    # The document is back to the bytes it had before the pause: no `paused` field.
    assert "paused" not in world.central.campaign("SPRING").to_dict()


def test_pausing_twice_or_resuming_an_active_campaign_changes_nothing(world: World) -> None:
    world.campaign(id="P")
    world.central.pause_campaign("P")
    assert world.central.pause_campaign("P").status == "paused"
    world.central.resume_campaign("P")
    assert world.central.resume_campaign("P").status == "active"


def test_an_ended_campaign_is_refused_as_expired_and_leaves_after_the_grace(
    world: World, pub: Publisher
) -> None:
    world.campaign(id="OVER", valid_until="2027-01-01T00:00:00Z")
    first, second = world.issue("OVER", 2)
    _next_ledger(world, pub)
    assert world.engine.redeem(first, basket(5000)).accepted

    ended = world.central.end_campaign("OVER")
    assert ended.status == "ended" and ended.ended_at == int(T0)
    assert world.central.campaign("OVER").valid_until == int(T0)
    _next_ledger(world, pub)
    refused = world.engine.redeem(second, basket(5000))
    assert not refused.accepted and refused.reason is Reason.EXPIRED
    # Ending again, or pausing or resuming what has ended, is no way back.
    assert world.central.end_campaign("OVER").ended_at == int(T0)
    for step in (world.central.pause_campaign, world.central.resume_campaign):
        with pytest.raises(CentralError, match="OVER.*ended"):
            step("OVER")
    with pytest.raises(CentralError, match="ended"):
        world.campaign(id="OVER")
    with pytest.raises(CentralError, match="issues no more coupons"):
        world.issue("OVER", 1)

    # The store ledgers drop it after the grace, as any campaign that ran out.
    world.clock.advance(scopes.ENDED_GRACE_S + 60)
    _next_ledger(world, pub)
    assert "OVER" not in world.engine.ledger.campaigns


def test_ending_keeps_an_earlier_end_and_a_pause(world: World) -> None:
    world.campaign(id="SOON", valid_until=int(T0) - 10)  # ran out already
    assert world.central.end_campaign("SOON").campaign.valid_until == int(T0) - 10
    world.campaign(id="HELD")
    world.central.pause_campaign("HELD")
    ended = world.central.end_campaign("HELD")
    # Still paused in the document: a till whose clock is a little behind refuses it too.
    assert ended.status == "ended" and ended.campaign.paused


def test_ending_a_campaign_that_had_not_started(world: World) -> None:
    world.campaign(id="LATER", valid_from=int(T0) + 3600, valid_until=int(T0) + 7200)
    ended = world.central.end_campaign("LATER").campaign
    assert ended.valid_from is None and ended.valid_until == int(T0)


def test_only_an_ended_campaign_is_archived(world: World) -> None:
    world.campaign(id="RUN")
    with pytest.raises(CentralError, match="'RUN' is active: end it"):
        world.central.archive_campaign("RUN")
    world.central.pause_campaign("RUN")
    with pytest.raises(CentralError, match="'RUN' is paused: end it"):
        world.central.archive_campaign("RUN")
    world.central.end_campaign("RUN")
    assert world.central.archive_campaign("RUN").status == "archived"
    assert world.central.archive_campaign("RUN").status == "archived"  # again: no change
    assert [s.campaign.id for s in world.central.list_campaigns()] == ["RUN"]
    assert world.central.list_campaigns(archived=False) == []
    with pytest.raises(CentralError, match="archived"):
        world.central.pause_campaign("RUN")
    # One whose dates ran out has ended without `campaign end`.
    world.campaign(id="PAST", valid_until=int(T0) - 1)
    assert world.central.archive_campaign("PAST").status == "archived"


def test_adding_the_file_again_keeps_a_pause(world: World) -> None:
    world.campaign(id="KEEP", amount_minor=300)
    world.central.pause_campaign("KEEP")
    world.campaign(id="KEEP", amount_minor=400)  # a script re-adds the campaign file
    kept = world.central.campaign_summary("KEEP")
    assert kept.status == "paused" and kept.campaign.paused
    assert kept.campaign.amount_minor == 400
    # A document that says it is paused adds a paused campaign.
    world.campaign(id="FROMFILE", paused=True)
    assert world.central.campaign_summary("FROMFILE").status == "paused"


@pytest.mark.parametrize("step", ["pause", "resume", "end", "archive"])
def test_an_unknown_campaign_is_an_error(world: World, step: str) -> None:
    with pytest.raises(CentralError, match="no campaign 'NOPE'"):
        getattr(world.central, f"{step}_campaign")("NOPE")


def test_list_has_every_campaign_with_its_figures(world: World) -> None:
    world.campaign(id="BUDGET", amount_minor=2000, budget_minor=100000, budget_count=50)
    world.campaign(id="IDLE", kind="percent", percent=15)
    world.issue("BUDGET", 3)
    CampaignUsage.create(campaign="BUDGET", count=2, minor=4000)  # what uploads counted
    by_id = {s.campaign.id: s for s in world.central.list_campaigns()}
    assert set(by_id) == {"BUDGET", "IDLE"}
    budget, idle = by_id["BUDGET"], by_id["IDLE"]
    assert (budget.issued, budget.redemptions, budget.redeemed_minor) == (3, 2, 4000)
    assert (budget.budget_minor_left, budget.budget_count_left) == (96000, 48)
    assert (idle.issued, idle.redemptions, idle.budget_minor_left) == (0, 0, None)
    doc = budget.to_dict()
    assert doc["status"] == "active" and doc["budget_minor_left"] == 96000
    assert doc["document"] == world.central.campaign("BUDGET").to_dict()


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_older_database_gains_the_status_columns(backend: str, tmp_path: Path) -> None:
    database = database_for(backend, "lifecycle")
    c = Central.init(tmp_path / "central", database=database, master_key=master_key.KEY)
    try:
        c.add_campaign({"id": "OLD", "kind": "fixed", "currency": "CNY", "amount_minor": 100})
        c.db.execute_sql('ALTER TABLE "campaignrow" DROP COLUMN "status"')
        c.db.execute_sql('ALTER TABLE "campaignrow" DROP COLUMN "ended_at"')
        c.close()
        c = Central(tmp_path / "central", database=database, master_key=master_key.KEY)
        assert {"status", "ended_at"} <= {col.name for col in c.db.get_columns("campaignrow")}
        row = CampaignRow.get(CampaignRow.id == "OLD")
        assert row.status == "active" and row.ended_at is None
        assert c.pause_campaign("OLD").status == "paused"
    finally:
        c.close()
        if database:
            postgres.drop_database(database)


# ---------------------------------------------------------------- the command line


def _cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDEEM_")}
    env["REDEEM_NOW"] = "2026-11-25T12:00:00Z"  # T0
    env.update(master_key.env(data.parent / "master-key"))
    proc = subprocess.run(
        [sys.executable, "-m", "sync.central.cli", "campaign", *args, "--data", str(data)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc


@pytest.fixture
def hq(world: World) -> Path:
    world.campaign(
        id="FLASH",
        name="Flash sale (限时秒杀券)",
        kind="threshold",
        amount_minor=3000,
        min_spend_minor=15000,
        budget_minor=1000000,
        valid_from="2026-11-20T00:00:00Z",
        valid_until="2026-12-01T00:00:00Z",
    )
    world.campaign(id="NOTHING", kind="percent", percent=15, cap_minor=3000)
    world.issue("FLASH", 4)
    CampaignUsage.create(campaign="FLASH", count=2, minor=6000)
    data = world.central.data
    world.central.close()
    return data


def test_cli_list(hq: Path) -> None:
    proc = _cli(hq, "list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["CAMPAIGN", "STATUS", "KIND"]
    flash = next(line for line in lines if line.startswith("FLASH"))
    assert flash.split()[:5] == ["FLASH", "active", "threshold", "4", "2"]
    assert "CNY 60.00" in flash and "2026-12-01T00:00:00+00:00" in flash
    assert "限时秒杀券" in flash
    nothing = next(line for line in lines if line.startswith("NOTHING"))  # nothing issued
    assert nothing.split()[:5] == ["NOTHING", "active", "percent", "0", "0"]
    assert "CNY 0.00" in nothing
    assert "6000" not in proc.stdout  # no minor units in what people read


def test_cli_list_json(hq: Path) -> None:
    doc = json.loads(_cli(hq, "list", "--json").stdout)
    by_id = {c["id"]: c for c in doc["campaigns"]}
    assert set(by_id) == {"FLASH", "NOTHING"}
    assert by_id["FLASH"]["redeemed_minor"] == 6000 and by_id["FLASH"]["issued"] == 4
    assert by_id["FLASH"]["budget_minor_left"] == 994000
    assert by_id["FLASH"]["redemption_rate"] == 0.5
    assert by_id["NOTHING"]["redemption_rate"] is None  # issued none here


def test_cli_show(hq: Path) -> None:
    proc = _cli(hq, "show", "FLASH")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("campaign FLASH: Flash sale (限时秒杀券)")
    assert "CNY 30.00 off from CNY 150.00 spent" in out
    assert "2026-11-20T00:00:00+00:00" in out and "2026-12-01T00:00:00+00:00" in out
    assert "CNY 9940.00 of CNY 10000.00" in out  # budget left
    assert "redeemed value:" in out and "CNY 60.00" in out
    assert "redemption rate: 50.0%" in out  # 2 redemptions of 4 issued, as the console shows
    assert "15% off, at most CNY 30.00" in _cli(hq, "show", "NOTHING").stdout


def test_cli_lifecycle(hq: Path) -> None:
    proc = _cli(hq, "pause", "FLASH")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("campaign FLASH: paused; tills refuse its coupons")
    assert _cli(hq, "resume", "FLASH").stdout.startswith("campaign FLASH: active;")
    refused = _cli(hq, "archive", "FLASH")
    assert refused.returncode == 2
    assert "campaign 'FLASH' is active: end it (campaign end) before archiving it" in (
        refused.stderr
    )
    ended = _cli(hq, "end", "FLASH")
    assert "ended, ended at 2026-11-25T12:00:00+00:00" in ended.stdout
    assert _cli(hq, "archive", "FLASH").returncode == 0
    listed = _cli(hq, "list").stdout
    assert "FLASH" not in listed and "1 archived campaign(s) not shown" in listed
    assert any(
        line.startswith("FLASH    ") for line in _cli(hq, "list", "--all").stdout.split("\n")
    )


@pytest.mark.parametrize("step", ["show", "pause", "resume", "end", "archive"])
def test_cli_unknown_campaign(hq: Path, step: str) -> None:
    proc = _cli(hq, step, "NOPE")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "redeem-central: no campaign 'NOPE'"
    assert proc.stdout == ""


def test_cli_add_over_a_running_campaign_follows_the_console_edit_rules(
    hq: Path, tmp_path: Path
) -> None:
    doc = json.loads(_cli(hq, "show", "FLASH", "--json").stdout)["document"]
    path = tmp_path / "flash.json"
    path.write_text(json.dumps({**doc, "amount_minor": 1000, "currency": "EUR"}))
    refused = _cli(hq, "add", "--file", str(path))
    assert refused.returncode == 2
    assert "campaign FLASH cannot be replaced so: currency: The currency cannot change" in (
        refused.stderr
    )
    path.write_text(json.dumps({**doc, "amount_minor": 1000}))  # coupons are out: no less
    refused = _cli(hq, "add", "--file", str(path))
    assert refused.returncode == 2 and "amount_minor: Coupons of this campaign" in refused.stderr
    assert "CNY 30.00 off" in _cli(hq, "show", "FLASH").stdout
    path.write_text(json.dumps({**doc, "amount_minor": 4000}))  # more generous: fine
    assert _cli(hq, "add", "--file", str(path)).returncode == 0
    assert "CNY 40.00 off" in _cli(hq, "show", "FLASH").stdout


def test_campaigns_still_added_from_a_file(tmp_path: Path) -> None:
    data = tmp_path / "central"
    Central.init(data, lambda: T0, master_key=master_key.KEY).close()
    path = tmp_path / "c.json"
    path.write_text(
        json.dumps({"id": "ADDED", "kind": "fixed", "currency": "CNY", "amount_minor": 100})
    )
    proc = _cli(data, "add", "--file", str(path))
    assert proc.returncode == 0 and "ADDED" in proc.stdout
    assert "ADDED" in _cli(data, "list").stdout
