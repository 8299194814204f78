"""The retailer's report: redemptions and discount value by campaign, store and terminal,
redemption rate (coupons redeemed / issued), open fraud flags, terminals gone quiet; and
the same as text for a person (`redeem-central report`)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, tzinfo
from typing import Any, TypedDict

import peewee as pw

from sync.central import display, flags
from sync.central.models import CampaignRow, CouponRow, FlagRow, Redemption, TerminalRow
from sync.central.store import Central

STALE_AFTER_S = 24 * 3600


class Sums(TypedDict):
    """Redemptions of one group (a campaign, store or terminal) in one currency."""

    currency: str | None
    redemptions: int
    discount_minor: int
    discount_text: str  # discount_minor in major units with the code: "CNY 100.00"
    reversed: int
    coupons_redeemed: int


class CampaignLine(Sums):
    campaign: str
    name: str
    issued: int
    redemption_rate: float | None


class StoreLine(Sums):
    store: str


class TerminalLine(Sums):
    terminal: str
    store: str
    last_seen: int | None
    last_upload: int | None


class StaleTerminal(TypedDict):
    terminal: str
    store: str
    last_seen: int | None
    last_upload: int | None
    last_upload_iso: str | None
    quiet_s: int | None


class Totals(TypedDict):
    redemptions: int
    issued: int
    terminals: int
    open_flags: int


class Report(TypedDict):
    generated_at: int
    generated_at_iso: str  # UTC
    ledger_version: int
    totals: Totals
    by_campaign: list[CampaignLine]
    by_store: list[StoreLine]
    by_terminal: list[TerminalLine]
    open_flags: list[flags.FlagDoc]
    open_flags_by_kind: dict[str, int]
    stale_terminals: list[StaleTerminal]
    stale_after_s: int


def sums(*group: pw.Node, where: pw.Node | None = None) -> list[tuple[tuple[str, ...], Sums]]:
    """Per value of the `group` columns or expressions (and currency): those values as text
    (a day number too), and their sums; only the redemptions `where` selects (all without)."""
    live = Redemption.reversed_seq.is_null()
    query: Any = Redemption.select(
        *group,
        Redemption.currency,
        pw.fn.SUM(pw.Case(None, [(live, 1)], 0)).alias("redemptions"),
        pw.fn.SUM(pw.Case(None, [(live, Redemption.discount_minor)], 0)).alias("discount"),
        pw.fn.SUM(pw.Case(None, [(live, 0)], 1)).alias("reversed"),
        pw.fn.COUNT(pw.fn.DISTINCT(pw.Case(None, [(live, Redemption.serial)], None))).alias(
            "coupons"
        ),
    )
    if where is not None:
        query = query.where(where)
    query = query.group_by(*group, Redemption.currency).order_by(*group, Redemption.currency)
    out: list[tuple[tuple[str, ...], Sums]] = []
    n = len(group)
    for row in query.tuples():
        currency, redemptions, discount, reversed_, coupons = row[n:]
        sums_: Sums = {
            "currency": currency,
            "redemptions": int(redemptions or 0),
            "discount_minor": int(discount or 0),
            "discount_text": display.money(int(discount or 0), currency),
            "reversed": int(reversed_ or 0),
            "coupons_redeemed": int(coupons or 0),
        }
        out.append((tuple("" if v is None else str(v) for v in row[:n]), sums_))
    return out


def by_campaign(
    issued: dict[str, int], names: dict[str, str], live: set[str], where: pw.Node | None = None
) -> list[CampaignLine]:
    """Every campaign: those that redeemed (one line per currency; only the redemptions
    `where` selects), then the rest, whether they issued coupons or not (a SUN-tag campaign
    issues none here), each with its rate (coupons redeemed / issued)."""
    lines: list[CampaignLine] = []
    for (cid,), got in sums(Redemption.campaign, where=where):
        n = int(issued.get(cid, 0))
        rate = round(got["coupons_redeemed"] / n, 4) if n else None
        line: CampaignLine = {
            "campaign": cid,
            **got,
            "name": names.get(cid, cid),
            "issued": n,
            "redemption_rate": rate,
        }
        lines.append(line)
    seen = {line["campaign"] for line in lines}
    for cid in sorted((set(issued) | live) - seen):
        n = int(issued.get(cid, 0))
        lines.append(
            {
                "campaign": cid,
                "name": names.get(cid, cid),
                "currency": None,
                "redemptions": 0,
                "discount_minor": 0,
                "discount_text": display.money(0, None),
                "reversed": 0,
                "coupons_redeemed": 0,
                "issued": n,
                "redemption_rate": 0.0 if n else None,
            }
        )
    return lines


def _by_terminal(terminals: dict[str, TerminalRow]) -> list[TerminalLine]:
    out: list[TerminalLine] = []
    for (tid, store), line in sums(Redemption.terminal, Redemption.store):
        t = terminals.get(tid)
        out.append(
            {
                "terminal": tid,
                "store": store,
                **line,
                "last_seen": t.last_seen if t else None,
                "last_upload": t.last_upload if t else None,
            }
        )
    return out


def _stale(terminals: dict[str, TerminalRow], now: int, stale_after_s: int) -> list[StaleTerminal]:
    # Not synced = no journal batch stored: last_seen moves with any signed request, a
    # refused upload or an online check included. A terminal uploads at least the `ledger`
    # entry it journals for each version it applies, and its first round does so.
    return [
        {
            "terminal": t.id,
            "store": t.store,
            "last_seen": t.last_seen,
            "last_upload": t.last_upload,
            "last_upload_iso": display.iso(t.last_upload),
            "quiet_s": None if t.last_upload is None else now - int(t.last_upload),
        }
        for t in sorted(terminals.values(), key=lambda t: t.id)
        if not t.revoked and (t.last_upload is None or int(t.last_upload) < now - stale_after_s)
    ]


def issued_by_campaign(until_s: int | None = None) -> dict[str, int]:
    """Coupons issued per campaign (up to epoch second `until_s`, all without)."""
    query: Any = CouponRow.select(CouponRow.campaign, pw.fn.COUNT(CouponRow.serial))
    if until_s is not None:
        query = query.where(CouponRow.issued_at < until_s)
    return dict(query.group_by(CouponRow.campaign).tuples())


def campaign_names() -> tuple[dict[str, str], set[str], dict[str, frozenset[str]]]:
    """Every campaign's name (its id when it has none), the live (not removed) ones, and
    each one's store scope (empty: every store)."""
    names: dict[str, str] = {}
    # A removed campaign appears only with what it issued or redeemed; a live one even when
    # nothing has happened yet (head office asks "why nothing?" of exactly those).
    live: set[str] = set()
    scope: dict[str, frozenset[str]] = {}
    for row in CampaignRow.select(CampaignRow.id, CampaignRow.doc, CampaignRow.removed):
        if not row.removed:
            live.add(row.id)
        try:
            doc = json.loads(row.doc)
        except ValueError:
            doc = {}
        doc = doc if isinstance(doc, dict) else {}
        names[row.id] = str(doc.get("name", row.id))
        stores = doc.get("stores")
        scope[row.id] = frozenset(stores) if isinstance(stores, list) else frozenset()
    return names, live, scope


def build(central: Central, stale_after_s: int = STALE_AFTER_S) -> Report:
    now = int(central.now())
    issued = issued_by_campaign()
    names, live, _ = campaign_names()
    campaigns = by_campaign(issued, names, live)
    terminals = {t.id: t for t in TerminalRow.select()}
    by_terminal = _by_terminal(terminals)
    stale = _stale(terminals, now, stale_after_s)
    open_flags = flags.list_flags(status="open", limit=1000)
    open_kinds: Any = FlagRow.select(FlagRow.kind).where(FlagRow.status == "open").tuples()
    kinds: Counter[str] = Counter(kind for (kind,) in open_kinds)
    latest = central.latest()
    return {
        "generated_at": now,
        "generated_at_iso": display.iso(now) or "",
        "ledger_version": latest.version if latest else 0,
        "totals": {
            "redemptions": sum(i["redemptions"] for i in campaigns),
            "issued": sum(int(n) for n in issued.values()),
            "terminals": len(terminals),
            "open_flags": sum(kinds.values()),
        },
        "by_campaign": campaigns,
        "by_store": [{"store": store, **line} for (store,), line in sums(Redemption.store)],
        "by_terminal": by_terminal,
        "open_flags": open_flags,
        "open_flags_by_kind": dict(sorted(kinds.items())),
        "stale_terminals": stale,
        "stale_after_s": stale_after_s,
    }


# ---------------------------------------------------------------- text for a person


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"


def _campaign_lines(doc: Report) -> list[str]:
    rows = [
        [
            c["campaign"],
            c["name"] if c["name"] != c["campaign"] else "",
            str(c["issued"]),
            str(c["redemptions"]),
            str(c["reversed"]),
            c["discount_text"],
            _rate(c["redemption_rate"]),
        ]
        for c in doc["by_campaign"]
    ]
    header = ["campaign", "name", "issued", "redeemed", "reversed", "discount", "rate"]
    return ["campaigns", *display.table(header, rows)] if rows else ["campaigns: none"]


def _store_lines(doc: Report) -> list[str]:
    rows = [
        [s["store"], str(s["redemptions"]), str(s["reversed"]), s["discount_text"]]
        for s in doc["by_store"]
    ]
    if not rows:
        return ["stores: no redemptions yet"]
    return ["stores", *display.table(["store", "redeemed", "reversed", "discount"], rows)]


def _flag_stores(f: flags.FlagDoc) -> str:
    detail = f["detail"]
    named = detail.get("stores") if isinstance(detail, dict) else None
    stores = {f["store"]} if f["store"] else set()
    if isinstance(named, list):
        stores.update(s for s in named if isinstance(s, str))
    return ",".join(sorted(stores)) or "-"


def _flag_lines(doc: Report, tz: tzinfo) -> list[str]:
    kinds = doc["open_flags_by_kind"]
    if not kinds:
        return ["open flags: none"]
    head = "open flags: " + ", ".join(f"{kind} {n}" for kind, n in kinds.items())
    now = doc["generated_at"]
    rows = [
        [
            str(f["id"]),
            f["kind"],
            f["serial"] or "-",
            _flag_stores(f),
            f["terminal"] or "-",
            display.iso(f["created_at"], tz) or "-",
            display.ago(now - f["created_at"]),
        ]
        for f in doc["open_flags"]
    ]
    header = ["id", "kind", "serial", "stores", "terminal", "raised", "age"]
    lines = [head, *display.table(header, rows)]
    shown, total = len(rows), doc["totals"]["open_flags"]
    if shown < total:
        lines.append(f"  ({shown} of {total} shown: the admin API lists them all)")
    return lines


def _stale_lines(doc: Report, tz: tzinfo) -> list[str]:
    stale = doc["stale_terminals"]
    if not stale:
        return []
    rows = [
        [s["terminal"], s["store"], display.when(s["last_upload"], doc["generated_at"], tz)]
        for s in stale
    ]
    hours = doc["stale_after_s"] // 3600
    return [
        f"not synced for {hours} h or more",
        *display.table(["terminal", "store", "last upload"], rows),
    ]


def text(doc: Report, tz: tzinfo = UTC) -> str:
    """The report as `redeem-central report` prints it: money in major units with its
    currency, times in ISO 8601 (UTC unless `tz`), every campaign, every open flag."""
    t = doc["totals"]
    out = [
        f"report at {display.iso(doc['generated_at'], tz)}, ledger version {doc['ledger_version']}",
        f"{t['redemptions']} redemption(s) of {t['issued']} coupon(s) issued, "
        f"{t['terminals']} terminal(s), {t['open_flags']} open flag(s)",
    ]
    for part in (
        _campaign_lines(doc),
        _store_lines(doc),
        _flag_lines(doc, tz),
        _stale_lines(doc, tz),
    ):
        if part:
            out += ["", *part]
    return "\n".join(out)
