"""The retailer's report: redemptions and discount value by campaign, store and terminal,
redemption rate (coupons redeemed / issued), open fraud flags, terminals gone quiet."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import peewee as pw

from sync.central import flags
from sync.central.models import CampaignRow, CouponRow, FlagRow, Redemption, TerminalRow
from sync.central.store import Central

STALE_AFTER_S = 24 * 3600


def _sums(*group: Any) -> list[dict[str, Any]]:
    live = Redemption.reversed_seq.is_null()
    query: Any = (
        Redemption.select(
            *group,
            Redemption.currency,
            pw.fn.SUM(pw.Case(None, [(live, 1)], 0)).alias("redemptions"),
            pw.fn.SUM(pw.Case(None, [(live, Redemption.discount_minor)], 0)).alias("discount"),
            pw.fn.SUM(pw.Case(None, [(live, 0)], 1)).alias("reversed"),
            pw.fn.COUNT(pw.fn.DISTINCT(pw.Case(None, [(live, Redemption.serial)], None))).alias(
                "coupons"
            ),
        )
        .group_by(*group, Redemption.currency)
        .order_by(*group, Redemption.currency)
        .dicts()
    )
    out = []
    for row in query:
        out.append(
            {
                **{f.name: row[f.name] for f in group},
                "currency": row["currency"],
                "redemptions": int(row["redemptions"] or 0),
                "discount_minor": int(row["discount"] or 0),
                "reversed": int(row["reversed"] or 0),
                "coupons_redeemed": int(row["coupons"] or 0),
            }
        )
    return out


def build(central: Central, stale_after_s: int = STALE_AFTER_S) -> dict[str, Any]:
    now = int(central.now())
    counted: Any = (
        CouponRow.select(CouponRow.campaign, pw.fn.COUNT(CouponRow.serial))
        .group_by(CouponRow.campaign)
        .tuples()
    )
    issued: dict[str, int] = dict(counted)
    names = {}
    for row in CampaignRow.select(CampaignRow.id, CampaignRow.doc):
        try:
            names[row.id] = json.loads(row.doc).get("name", row.id)
        except ValueError:
            names[row.id] = row.id
    by_campaign = _sums(Redemption.campaign)
    seen = set()
    for item in by_campaign:
        cid = item["campaign"]
        seen.add(cid)
        item["name"] = names.get(cid, cid)
        item["issued"] = int(issued.get(cid, 0))
        item["redemption_rate"] = (
            round(item["coupons_redeemed"] / item["issued"], 4) if item["issued"] else None
        )
    for cid in sorted(set(issued) - seen):
        by_campaign.append(
            {
                "campaign": cid,
                "name": names.get(cid, cid),
                "currency": None,
                "redemptions": 0,
                "discount_minor": 0,
                "reversed": 0,
                "coupons_redeemed": 0,
                "issued": int(issued[cid]),
                "redemption_rate": 0.0,
            }
        )
    terminals = {t.id: t for t in TerminalRow.select()}
    by_terminal = _sums(Redemption.terminal, Redemption.store)
    for item in by_terminal:
        t = terminals.get(item["terminal"])
        item["last_seen"] = t.last_seen if t else None
        item["last_upload"] = t.last_upload if t else None
    # Not synced = no journal batch stored: last_seen moves with any signed request, a
    # refused upload or an online check included. A terminal uploads at least the `ledger`
    # entry it journals for each version it applies, and its first round does so.
    stale = [
        {
            "terminal": t.id,
            "store": t.store,
            "last_seen": t.last_seen,
            "last_upload": t.last_upload,
            "quiet_s": None if t.last_upload is None else now - int(t.last_upload),
        }
        for t in sorted(terminals.values(), key=lambda t: t.id)
        if not t.revoked and (t.last_upload is None or int(t.last_upload) < now - stale_after_s)
    ]
    open_flags = flags.list_flags(status="open", limit=1000)
    open_kinds: Any = FlagRow.select(FlagRow.kind).where(FlagRow.status == "open").tuples()
    kinds: Counter[str] = Counter(kind for (kind,) in open_kinds)
    latest = central.latest()
    return {
        "generated_at": now,
        "ledger_version": latest.version if latest else 0,
        "totals": {
            "redemptions": sum(i["redemptions"] for i in by_campaign),
            "issued": sum(int(n) for n in issued.values()),
            "terminals": len(terminals),
            "open_flags": sum(kinds.values()),
        },
        "by_campaign": by_campaign,
        "by_store": _sums(Redemption.store),
        "by_terminal": by_terminal,
        "open_flags": open_flags,
        "open_flags_by_kind": dict(sorted(kinds.items())),
        "stale_terminals": stale,
        "stale_after_s": stale_after_s,
    }
