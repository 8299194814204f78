"""`redeem-central campaign add|list|show|pause|resume|end|archive`: campaigns from a file,
and their lifecycle (sync/central/campaigns.py; docs/central.md, "Campaigns")."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from coupons.cliutil import EXIT_OK, UserError, emit, read_document
from coupons.rules import Campaign, CampaignKind
from sync.central.campaigns import CampaignSummary, replacing
from sync.central.cli_common import AddCommand, Commands, audited, open_central


def major(minor: int | None, currency: str) -> str:
    """Minor units as a person reads them: `CNY 100.00` (every currency shipped today has
    two minor digits, as coupons.money assumes)."""
    if minor is None:
        return "-"
    sign = "-" if minor < 0 else ""
    units, cents = divmod(abs(minor), 100)
    return f"{currency} {sign}{units}.{cents:02d}"


def iso(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t, UTC).isoformat()


def gives(c: Campaign) -> str:
    """What a coupon of it gives, in words."""
    if c.kind is CampaignKind.PERCENT:
        cap = f", at most {major(c.cap_minor, c.currency)}" if c.cap_minor is not None else ""
        text = f"{c.percent_bp / 100:g}% off{cap}"
    elif c.kind is CampaignKind.GIFT:
        text = f"gift {c.gift_name or c.gift_sku} (worth {major(c.gift_value_minor, c.currency)})"
    else:
        text = f"{major(c.amount_minor, c.currency)} off"
    if c.min_spend_minor:
        text += f" from {major(c.min_spend_minor, c.currency)} spent"
    return text


def rate(s: CampaignSummary) -> str:
    """Redemptions per coupon issued, as a percentage ("-" when none was issued here)."""
    return "-" if s.redemption_rate is None else f"{s.redemption_rate * 100:.1f}%"


def budget_left(s: CampaignSummary) -> str:
    c = s.campaign
    parts = []
    if c.budget_minor is not None:
        parts.append(
            f"{major(s.budget_minor_left, c.currency)} of {major(c.budget_minor, c.currency)}"
        )
    if c.budget_count is not None:
        parts.append(f"{s.budget_count_left} of {c.budget_count} uses")
    return ", ".join(parts) or "no budget"


def cmd_campaign_add(args: argparse.Namespace) -> int:
    doc = read_document(args.file)
    docs = doc.get("campaign", [doc]) if isinstance(doc, dict) else doc
    if isinstance(docs, dict):
        docs = [docs]
    if not isinstance(docs, list):
        raise UserError(f"{args.file}: expected a campaign or a list of campaigns")
    c = open_central(args)
    campaigns = [Campaign.from_dict(d) for d in docs]  # all valid, or none is added
    for camp in campaigns:  # a file over a running campaign is an edit: the same rules
        problems = replacing(c, camp)
        if problems:
            said = "; ".join(f"{field}: {why}" for field, why in problems.items())
            raise UserError(f"campaign {camp.id} cannot be replaced so: {said}")
    added = [c.add_campaign(camp.to_dict()).id for camp in campaigns]
    audited(c, "campaign.add", ",".join(added), None, [camp.to_dict() for camp in campaigns])
    emit(args, {"added": added}, "added campaign(s): " + ", ".join(added))
    return EXIT_OK


LIST_HEADER = (
    f"{'CAMPAIGN':<16} {'STATUS':<8} {'KIND':<9} {'ISSUED':>9} {'REDEEMED':>9} "
    f"{'REDEEMED VALUE':>18}  {'VALID UNTIL':<25}  NAME"
)


def _list_line(s: CampaignSummary) -> str:
    c = s.campaign
    return (
        f"{c.id:<16} {s.status:<8} {c.kind.value:<9} {s.issued:>9} {s.redemptions:>9} "
        f"{major(s.redeemed_minor, c.currency):>18}  {iso(c.valid_until):<25}  {c.name}"
    )


def cmd_campaign_list(args: argparse.Namespace) -> int:
    found = open_central(args).list_campaigns()
    shown = found if args.all else [s for s in found if s.status != "archived"]
    text = [LIST_HEADER, *(_list_line(s) for s in shown)] if shown else ["no campaigns"]
    hidden = len(found) - len(shown)
    if hidden:
        text.append(f"({hidden} archived campaign(s) not shown: --all lists them)")
    emit(args, {"campaigns": [s.to_dict() for s in shown]}, "\n".join(text))
    return EXIT_OK


def show_text(s: CampaignSummary) -> str:
    c = s.campaign
    rows = [
        ("status", s.status),
        ("kind", c.kind.value),
        ("gives", gives(c)),
        ("valid from", iso(c.valid_from)),
        ("valid until", iso(c.valid_until)),
        ("ended at", iso(s.ended_at)),
        ("stores", ", ".join(sorted(c.stores)) or "all"),
        ("issued", str(s.issued)),
        ("redemptions", str(s.redemptions)),
        ("redeemed value", major(s.redeemed_minor, c.currency)),
        ("redemption rate", rate(s)),
        ("budget left", budget_left(s)),
    ]
    return "\n".join([f"campaign {c.id}: {c.name}", *(f"  {k + ':':<17}{v}" for k, v in rows)])


def cmd_campaign_show(args: argparse.Namespace) -> int:
    s = open_central(args).campaign_summary(args.campaign)
    emit(args, s.to_dict(), show_text(s))
    return EXIT_OK


# What each step tells the operator happens next: the central changes rows, the publisher
# carries them to the tills.
AFTER = {
    "pause": "tills refuse its coupons (campaign_paused) from their next ledger",
    "resume": "tills accept its coupons again from their next ledger",
    "end": "tills refuse its coupons as expired from their next ledger",
    "archive": "left out of `campaign list` (--all lists it)",
}


def cmd_campaign_step(args: argparse.Namespace) -> int:
    c = open_central(args)
    step = {
        "pause": c.pause_campaign,
        "resume": c.resume_campaign,
        "end": c.end_campaign,
        "archive": c.archive_campaign,
    }[args.step]
    before = c.campaign_summary(args.campaign).to_dict()
    s = step(args.campaign)
    audited(c, f"campaign.{args.step}", args.campaign, before, s.to_dict())
    ended = f", ended at {iso(s.ended_at)}" if s.ended_at is not None else ""
    text = f"campaign {s.campaign.id}: {s.status}{ended}; {AFTER[args.step]}"
    emit(args, s.to_dict(), text)
    return EXIT_OK


def add_commands(sub: Commands, command: AddCommand) -> None:
    """`campaign` and its sub-commands, each working on a central (--data, --json, ...)."""
    camp = sub.add_parser("campaign", help="manage campaigns")
    csub = camp.add_subparsers(dest="campaign_command", required=True)
    command(
        csub, "add", cmd_campaign_add, "add or update campaigns from a TOML or JSON file"
    ).add_argument("--file", required=True)
    command(
        csub, "list", cmd_campaign_list, "every campaign with its status and figures"
    ).add_argument("--all", action="store_true", help="archived campaigns too")
    command(
        csub, "show", cmd_campaign_show, "one campaign: what it gives, status and figures"
    ).add_argument("campaign", metavar="CAMPAIGN")
    for step, help_ in (
        ("pause", "pause a campaign: tills refuse it from their next ledger until resumed"),
        ("resume", "resume a paused campaign"),
        ("end", "end a campaign now: its coupons expire with the tills' next ledger"),
        ("archive", "archive an ended campaign (out of `campaign list`)"),
    ):
        sp = command(csub, step, cmd_campaign_step, help_)
        sp.add_argument("campaign", metavar="CAMPAIGN")
        sp.set_defaults(step=step)
