"""A campaign's lifecycle at the central (active, paused, ended, archived) and the list head
office reads: each campaign with its status and figures. Tills never see the status: a pause
reaches them as the document's `paused`, an end as its `valid_until` (docs/central.md)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import peewee as pw

from coupons.jsontypes import JSONObject
from coupons.rules import Campaign
from sync.central import campaign_edit
from sync.central.keyring import CentralError
from sync.central.models import CampaignRow, CampaignUsage, CouponRow, SunKeyRow

if TYPE_CHECKING:
    from sync.central.store import Central

ACTIVE, PAUSED, ENDED, ARCHIVED = "active", "paused", "ended", "archived"
STATUSES = (ACTIVE, PAUSED, ENDED, ARCHIVED)
FINISHED = (ENDED, ARCHIVED)


@dataclass(frozen=True)
class CampaignSummary:
    """One campaign as head office lists it. Money in minor units of the campaign's
    currency; times in epoch seconds."""

    campaign: Campaign
    status: str
    ended_at: int | None
    issued: int  # coupons issued here (SUN-tag campaigns issue none at the central)
    redemptions: int  # uses counted across all terminals (what budgets count)
    redeemed_minor: int  # their discount plus gift value (what a money budget counts)

    @property
    def budget_count_left(self) -> int | None:
        budget = self.campaign.budget_count
        return None if budget is None else max(0, budget - self.redemptions)

    @property
    def budget_minor_left(self) -> int | None:
        budget = self.campaign.budget_minor
        return None if budget is None else max(0, budget - self.redeemed_minor)

    @property
    def redemption_rate(self) -> float | None:
        """Redemptions per coupon issued here (None when it issued none: SUN-tag campaigns
        issue their coupons outside the central)."""
        return None if not self.issued else self.redemptions / self.issued

    def to_dict(self) -> JSONObject:
        c = self.campaign
        rate = self.redemption_rate
        return {
            "id": c.id,
            "name": c.name,
            "kind": c.kind.value,
            "currency": c.currency,
            "status": self.status,
            "valid_from": c.valid_from,
            "valid_until": c.valid_until,
            "ended_at": self.ended_at,
            "issued": self.issued,
            "redemptions": self.redemptions,
            "redeemed_minor": self.redeemed_minor,
            "redemption_rate": None if rate is None else round(rate, 4),
            "budget_count": c.budget_count,
            "budget_count_left": self.budget_count_left,
            "budget_minor": c.budget_minor,
            "budget_minor_left": self.budget_minor_left,
            "document": c.to_dict(),
        }


def _row(cid: str) -> CampaignRow:
    row = CampaignRow.get_or_none((CampaignRow.id == cid) & ~CampaignRow.removed)
    if row is None:
        raise CentralError(f"no campaign {cid!r}")
    return row


def _document(row: CampaignRow) -> JSONObject:
    doc = json.loads(row.doc)
    if not isinstance(doc, dict):
        raise CentralError(f"campaign {row.id}: its stored document is not an object")
    return doc


def _store(row: CampaignRow, doc: JSONObject, **fields: object) -> None:
    """Write a changed document (checked by the tills' own rules first) and status fields;
    a document that differs from the published one goes out with the next ledger."""
    campaign = Campaign.from_dict(doc)
    CampaignRow.update(doc=json.dumps(campaign.to_dict()), **fields).where(
        CampaignRow.id == row.id
    ).execute()


def status_on_add(cid: str, paused: bool) -> str:
    """The status a campaign has after `campaign add` writes its document: a new one is
    active (paused when its document says so); replacing one keeps a pause head office made
    (a file re-added by a script must not undo it: `campaign resume` does); an ended
    campaign is not brought back by a file (its coupons were refused as expired, and the
    store ledgers may have dropped it)."""
    row = CampaignRow.get_or_none((CampaignRow.id == cid) & ~CampaignRow.removed)
    status = ACTIVE if row is None else str(row.status)
    if status in FINISHED:
        raise CentralError(f"campaign {cid!r} is {status}: add it again under a new id")
    return PAUSED if paused or status == PAUSED else ACTIVE


def require_issuable(cid: str) -> None:
    status = str(_row(cid).status)
    if status in FINISHED:
        raise CentralError(f"campaign {cid!r} is {status}: it issues no more coupons")


def pause(central: Central, cid: str) -> CampaignSummary:
    """Tills refuse its coupons (campaign_paused) from their next ledger on."""
    return _set_paused(central, cid, True, "only a running one pauses")


def resume(central: Central, cid: str) -> CampaignSummary:
    return _set_paused(central, cid, False, "it cannot be resumed")


def _set_paused(central: Central, cid: str, paused: bool, refusal: str) -> CampaignSummary:
    """Pause or resume: the document's `paused` (what the tills read) and the status move
    together; a campaign already so is left alone, an ended one is refused."""
    with central.writing():
        row = _row(cid)
        if row.status in FINISHED:
            raise CentralError(f"campaign {cid!r} is {row.status}: {refusal}")
        status = PAUSED if paused else ACTIVE
        if row.status != status:
            _store(row, {**_document(row), "paused": paused}, status=status)
    return summary(cid)


def end(central: Central, cid: str) -> CampaignSummary:
    """End it now: its `valid_until` becomes now (when later or unset), so tills refuse its
    coupons as expired from their next ledger, and the store ledgers drop it after the
    grace (scopes.ENDED_GRACE_S) as for any campaign that ran out. A pause is kept: a till
    whose clock is a little behind still refuses it."""
    with central.writing():
        row = _row(cid)
        if row.status in FINISHED:
            return summary(cid)
        now = int(central.now())
        doc = _document(row)
        campaign = Campaign.from_dict(doc)
        if campaign.valid_until is None or campaign.valid_until > now:
            doc["valid_until"] = now
            if campaign.valid_from is not None and campaign.valid_from >= now:
                # It had not started: a window ending before it opens is no window (the
                # rules refuse it), and without a start it is simply over.
                doc["valid_from"] = None
        _store(row, doc, status=ENDED, ended_at=now)
    return summary(cid)


def can_archive(status: str, campaign: Campaign, now: float) -> bool:
    """Ended, by `campaign end` or by its `valid_until` passing (archived already: no)."""
    ran_out = campaign.valid_until is not None and campaign.valid_until <= now
    return status == ENDED or (status != ARCHIVED and ran_out)


def archive(central: Central, cid: str) -> CampaignSummary:
    """Put an ended campaign away (out of `campaign list` unless --all)."""
    with central.writing():
        row = _row(cid)
        if row.status == ARCHIVED:
            return summary(cid)
        if not can_archive(str(row.status), Campaign.from_dict(_document(row)), central.now()):
            raise CentralError(
                f"campaign {cid!r} is {row.status}: end it (campaign end) before archiving it"
            )
        CampaignRow.update(status=ARCHIVED).where(CampaignRow.id == cid).execute()
    return summary(cid)


class EditRefused(CentralError):
    """An edit the lifecycle or campaign_edit.refusals refuses: document field -> why
    (field "" for the campaign as a whole)."""

    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k or 'campaign'}: {v}" for k, v in problems.items()))
        self.problems = problems


def live(cid: str) -> bool:
    """Shoppers may hold its terms: coupons were issued or redeemed, or SUN tags made."""
    if CouponRow.select().where(CouponRow.campaign == cid).exists():
        return True
    if CampaignUsage.select().where(CampaignUsage.campaign == cid).exists():
        return True
    return bool(SunKeyRow.select().where(SunKeyRow.campaign == cid).exists())


def replacing(central: Central, new: Campaign) -> dict[str, str]:
    """What `campaign add` over a running campaign of the same id may not change (the rules
    of an edit; empty for a new id or an allowed replacement)."""
    row = CampaignRow.get_or_none((CampaignRow.id == new.id) & ~CampaignRow.removed)
    if row is None or row.status in FINISHED:
        return {}  # new; or ended, which status_on_add refuses with its own sentence
    old = Campaign.from_dict(_document(row))
    return campaign_edit.refusals(old, new, live(new.id), int(central.now()))


def edit(central: Central, cid: str, doc: Mapping[str, object]) -> tuple[Campaign, Campaign]:
    """Replace a running campaign's document with an edited one (checked by the tills'
    rules, then by campaign_edit.refusals); the new document goes out with the next
    ledger. Returns (before, after); after is before when nothing changed."""
    new = Campaign.from_dict(doc)
    with central.writing():
        row = _row(cid)
        if row.status in FINISHED:
            raise EditRefused({"": campaign_edit.FINISHED})
        old = Campaign.from_dict(_document(row))
        new = replace(new, paused=old.paused)  # pause and resume are their own steps
        problems = campaign_edit.refusals(old, new, live(cid), int(central.now()))
        if problems:
            raise EditRefused(problems)
        if new.to_dict() != old.to_dict():
            _store(row, new.to_dict())
    return old, new


def summary(cid: str) -> CampaignSummary:
    [found] = summaries(_row(cid).id)
    return found


def summaries(only: str | None = None) -> list[CampaignSummary]:
    """Every campaign (or one), by id, with its figures: campaigns that issued nothing and
    were never redeemed too."""
    rows = CampaignRow.select().where(~CampaignRow.removed).order_by(CampaignRow.id)
    issued_q = CouponRow.select(CouponRow.campaign, pw.fn.COUNT(CouponRow.serial)).group_by(
        CouponRow.campaign
    )
    usage_q = CampaignUsage.select()
    if only is not None:
        rows = rows.where(CampaignRow.id == only)
        issued_q = issued_q.where(CouponRow.campaign == only)
        usage_q = usage_q.where(CampaignUsage.campaign == only)
    counted: Any = issued_q.tuples()  # rows as (campaign, count) tuples
    issued = {str(cid): int(n) for cid, n in counted}
    usage = {str(u.campaign): (int(u.count), int(u.minor)) for u in usage_q}
    out = []
    for row in rows:
        count, minor = usage.get(row.id, (0, 0))
        out.append(
            CampaignSummary(
                campaign=Campaign.from_dict(_document(row)),
                status=str(row.status),
                ended_at=None if row.ended_at is None else int(row.ended_at),
                issued=issued.get(row.id, 0),
                redemptions=count,
                redeemed_minor=minor,
            )
        )
    return out
