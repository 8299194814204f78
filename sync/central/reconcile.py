"""Reconciliation of uploaded journal entries across terminals: accepted redeem/commit
entries with a serial are redemptions once the central finds them plausible (trust.py; an
implausible one is flagged and never counted), reverse entries undo them when the campaign
makes a refunded coupon reusable. Counters are upserted in one order (serials, customers, campaigns)
so concurrent batches on PostgreSQL serialise on rows and never miss each other; what the
counters show afterwards raises flags (double redemption, customer limit, budget) and marks
serials for the next ledger version."""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import peewee as pw

from coupons.rules import Campaign, InputError
from sync.central import bulk, flags, trust
from sync.central.models import (
    HEX_DIGITS,
    CampaignRow,
    CampaignUsage,
    CustomerUse,
    JournalRow,
    Redemption,
    SerialMark,
    SerialUse,
    TerminalRow,
    TerminalUsage,
    db_serial,
    from_db_serial,
)
from sync.central.store import Central

log = logging.getLogger(__name__)
CHUNK = 400
_REDEMPTION = (
    "terminal",
    "seq",
    "store",
    "campaign",
    "checkout_id",
    "customer",
    "tag",
    "discount_minor",
    "value_minor",
    "currency",
    "at_ms",
)


@dataclass
class _Use:
    row: dict[str, Any]  # a Redemption row
    counts: bool = True


def _detail(entry: dict[str, Any]) -> dict[str, Any]:
    try:
        doc = json.loads(entry["detail"])
    except (ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _serial(text: str | None) -> int | None:
    """A serial as tills write it (serial_hex: 16 lowercase hex digits), else None. Not
    int(text, 16) alone: it also reads " 12..", "0x..", "+.." and "1_2..", so other texts
    would count as the same coupon while the stored entry says something else."""
    if text is None or len(text) != 16 or not HEX_DIGITS.issuperset(text):
        return None
    return int(text, 16)


def _chunks(items: list[Any]) -> list[list[Any]]:
    return [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]


class _Campaigns:
    def __init__(self) -> None:
        self._cache: dict[str, Campaign | None] = {}

    def get(self, cid: str | None) -> Campaign | None:
        if cid is None:
            return None
        if cid not in self._cache:
            row = CampaignRow.get_or_none(CampaignRow.id == cid)
            try:
                self._cache[cid] = Campaign.from_dict(json.loads(row.doc)) if row else None
            except (InputError, ValueError):
                self._cache[cid] = None
        return self._cache[cid]


def reconcile(central: Central, term: TerminalRow, entries: list[dict[str, Any]]) -> bool:
    """Count what these (just stored) entries did; True when the ledger must change."""
    campaigns = _Campaigns()
    by_seq = {e["seq"]: e for e in entries}
    holds: dict[tuple[str | None, str], dict[str, Any]] = {}
    pending: list[_Use] = []
    serial_delta: Counter[int] = Counter()
    customer_delta: Counter[tuple[str, str]] = Counter()
    usage_delta: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])
    last_seq: dict[Any, int] = {}
    # Serials of implausible entries that the central did issue for the campaign named: no
    # use is counted, but the coupon is marked used (docs/decisions.md, issue 11).
    burned: dict[int, str] = {}
    known = trust.Known.load(
        s
        for e in entries
        if e["accepted"] and e["kind"] in ("redeem", "commit")
        for s in [_serial(e["serial"])]
        if s is not None
    )

    def count(use: dict[str, Any], sign: int) -> None:
        serial = use["serial"]
        serial_delta[serial] += sign
        camp = use["campaign"]
        if use["customer"]:
            customer_delta[(camp, use["customer"])] += sign
        usage_delta[camp][0] += sign
        usage_delta[camp][1] += sign * use["value_minor"]

    for e in entries:
        kind, serial_text = e["kind"], e["serial"]
        if kind == "flag":
            _journal_flag(central, term, e, by_seq)
            continue
        if not e["accepted"] or serial_text is None:
            continue
        if kind == "hold":
            holds[(e["checkout_id"], serial_text)] = e
            continue
        serial = _serial(serial_text)
        if serial is None:
            if kind in ("redeem", "commit"):  # no till writes that: evidence, not a use
                _implausible(central, term, e, f"serial {serial_text!r} is not 16 hex digits")
            continue
        camp = campaigns.get(e["campaign"])
        if kind in ("redeem", "commit"):
            detail = _detail(e)
            customer, tag = e["customer"], detail.get("tag")
            hold = None
            if kind == "commit":
                hold = holds.get((e["checkout_id"], serial_text)) or _stored_hold(term, e)
                if hold is not None:
                    customer = customer or hold["customer"]
                    tag = tag or _detail(hold).get("tag")
            why = trust.implausible(
                e, detail, term.store, serial, camp, known, _detail(hold) if hold else None
            )
            if why is not None:
                _implausible(central, term, e, why)
                if known.issued_for(serial, e["campaign"]):
                    burned[serial] = e["campaign"]
                    serial_delta[serial] += 1
                    last_seq[serial] = e["seq"]
                continue
            gift = camp.gift_value_minor if (camp and detail.get("gift")) else 0
            use = {
                "terminal": term.id,
                "seq": e["seq"],
                "store": term.store,
                "campaign": e["campaign"] or "",
                "serial": serial,
                "checkout_id": e["checkout_id"],
                "customer": customer,
                "tag": tag if isinstance(tag, str) else None,
                "discount_minor": e["discount_minor"],
                "value_minor": e["discount_minor"] + gift,
                "currency": e["currency"],
                "at_ms": e["at_ms"],
            }
            pending.append(_Use(use))
            count(use, +1)
            for key in (serial, use["campaign"], (use["campaign"], customer)):
                last_seq[key] = e["seq"]
        elif kind == "reverse":
            reusable = camp.reusable_after_refund if camp else True
            mine = next(
                (
                    u
                    for u in reversed(pending)
                    if u.row["serial"] == serial
                    and u.row["checkout_id"] == e["checkout_id"]
                    and u.row.get("reversed_seq") is None
                ),
                None,
            )
            if mine is not None:
                mine.row["reversed_seq"] = e["seq"]
                if reusable:
                    mine.counts = False
                    count(mine.row, -1)
                continue
            stored = (
                Redemption.select()
                .where(
                    (Redemption.terminal == term.id)
                    & (Redemption.serial == db_serial(serial))
                    & (Redemption.checkout_id == e["checkout_id"])
                    & Redemption.reversed_seq.is_null()
                )
                .order_by(Redemption.seq.desc())
                .first()
            )
            if stored is None:
                continue
            Redemption.update(reversed_seq=e["seq"], counts=not reusable and stored.counts).where(
                (Redemption.terminal == term.id) & (Redemption.seq == stored.seq)
            ).execute()
            if reusable and stored.counts:
                count(
                    {
                        "serial": serial,
                        "campaign": stored.campaign,
                        "customer": stored.customer,
                        "value_minor": int(stored.value_minor),
                    },
                    -1,
                )

    if pending:
        bulk.insert(
            central.db,
            Redemption,
            (*_REDEMPTION, "serial", "reversed_seq", "counts"),
            [
                (
                    *(u.row[k] for k in _REDEMPTION),
                    db_serial(u.row["serial"]),
                    u.row.get("reversed_seq"),
                    u.counts,
                )
                for u in pending
            ],
        )
    if not serial_delta and not usage_delta:
        return False
    _serials(central, term, serial_delta, campaigns, pending, last_seq, burned)
    _customers(central, term, customer_delta, campaigns, last_seq)
    _campaign_usage(central, term, usage_delta, campaigns, last_seq)
    _terminal_usage(term, usage_delta)
    return True


def _stored_hold(term: TerminalRow, commit: dict[str, Any]) -> dict[str, Any] | None:
    row: dict[str, Any] | None = (
        JournalRow.select()
        .where(
            (JournalRow.terminal == term.id)
            & (JournalRow.checkout_id == commit["checkout_id"])
            & (JournalRow.serial == commit["serial"])
            & (JournalRow.kind == "hold")
            & JournalRow.accepted
            & (JournalRow.seq < commit["seq"])
        )
        .order_by(JournalRow.seq.desc())
        .dicts()
        .first()
    )
    return row


def _implausible(central: Central, term: TerminalRow, e: dict[str, Any], why: str) -> None:
    """An accepted use the central cannot believe: the entry stays stored (evidence), this
    flag names the terminal, and nothing of it is counted."""
    flags.raise_flag(
        central,
        f"{flags.IMPLAUSIBLE}:{term.id}:{e['seq']}",
        flags.IMPLAUSIBLE,
        "central",
        store=term.store,
        terminal=term.id,
        seq=e["seq"],
        campaign=e["campaign"],
        serial=e["serial"],
        customer=e["customer"],
        detail={
            "detail": f"terminal {term.id} reported {e['kind']} #{e['seq']} that the central "
            f"cannot believe: {why}; not counted",
            "why": why,
            "terminal": term.id,
            "kind": e["kind"],
            "discount_minor": e["discount_minor"],
            "currency": e["currency"],
            "cashier": e["cashier"],
            "at_ms": e["at_ms"],
            "hash": e["hash"],
        },
    )
    log.warning("implausible %s #%d from %s: %s", e["kind"], e["seq"], term.id, why)


def _journal_flag(
    central: Central, term: TerminalRow, e: dict[str, Any], by_seq: dict[int, dict[str, Any]]
) -> None:
    """A fraud flag the terminal raised; the entry it is about gives the tag and customer."""
    detail = _detail(e)
    about_seq = detail.get("about_seq")
    about: dict[str, Any] | None = None
    if isinstance(about_seq, int) and not isinstance(about_seq, bool):
        about = by_seq.get(about_seq)
        if about is None and abs(about_seq) < 2**62:
            about = (
                JournalRow.select()
                .where((JournalRow.terminal == term.id) & (JournalRow.seq == about_seq))
                .dicts()
                .first()
            )
    tag = _detail(about).get("tag") if about else None
    flags.raise_flag(
        central,
        f"journal:{term.id}:{e['seq']}",
        e["reason"],
        "terminal",
        store=term.store,
        terminal=term.id,
        seq=e["seq"],
        campaign=e["campaign"],
        serial=e["serial"],
        customer=about["customer"] if about else None,
        tag=tag if isinstance(tag, str) else None,
        detail={**detail, "at_ms": e["at_ms"], "cashier": e["cashier"], "source": e["source"]},
    )


def _serials(
    central: Central,
    term: TerminalRow,
    delta: Counter[int],
    campaigns: _Campaigns,
    pending: list[_Use],
    last_seq: dict[Any, int],
    burned: dict[int, str],
) -> None:
    changed = sorted(s for s, d in delta.items() if d)
    if not changed:
        return
    bulk.insert(
        central.db,
        SerialUse,
        ("serial", "count"),
        [(db_serial(s), delta[s]) for s in changed],
        'ON CONFLICT ("serial") DO UPDATE SET "count" = "serialuse"."count" + excluded."count"',
    )
    counts: dict[int, int] = {}
    for chunk in _chunks(changed):
        query: Any = (
            SerialUse.select(SerialUse.serial, SerialUse.count)
            .where(SerialUse.serial.in_([db_serial(s) for s in chunk]))
            .tuples()
        )
        for stored, n in query:
            counts[from_db_serial(stored)] = int(n)
    campaign_of = {**burned, **{u.row["serial"]: u.row["campaign"] for u in pending}}
    redeemed, unredeemed = [], []
    for s in changed:
        cid = campaign_of.get(s) or _campaign_of_serial(s)
        camp = campaigns.get(cid)
        limit = camp.uses_per_coupon if camp else 1
        n = counts.get(s, 0)
        if delta[s] > 0:
            if n >= limit:
                redeemed.append(s)
            if n > limit:
                _double(central, term, s, cid, n, limit, last_seq.get(s))
        elif n < limit:
            unredeemed.append(s)
    for chunk in _chunks(redeemed):
        stored = [db_serial(s) for s in chunk]
        SerialMark.delete().where(
            SerialMark.serial.in_(stored)
            & (SerialMark.kind == "unredeemed")
            & SerialMark.published_in.is_null()
        ).execute()
        bulk.insert(
            central.db,
            SerialMark,
            ("serial", "kind"),
            [(s, "redeemed") for s in stored],
            "ON CONFLICT DO NOTHING",
        )
    for chunk in _chunks(unredeemed):
        stored = [db_serial(s) for s in chunk]
        SerialMark.delete().where(
            SerialMark.serial.in_(stored) & (SerialMark.kind == "redeemed")
        ).execute()
        SerialMark.insert_many(
            [{"serial": s, "kind": "unredeemed", "published_in": None} for s in stored]
        ).on_conflict(
            conflict_target=[SerialMark.serial, SerialMark.kind],
            update={SerialMark.published_in: None},
        ).execute()


def _campaign_of_serial(serial: int) -> str | None:
    row = (
        Redemption.select(Redemption.campaign).where(Redemption.serial == db_serial(serial)).first()
    )
    return row.campaign if row else None


def _double(
    central: Central,
    term: TerminalRow,
    serial: int,
    campaign: str | None,
    count: int,
    limit: int,
    seq: int | None,
) -> None:
    uses = [
        {"terminal": r.terminal, "store": r.store, "seq": int(r.seq), "at_ms": int(r.at_ms)}
        for r in Redemption.select()
        .where((Redemption.serial == db_serial(serial)) & Redemption.counts)
        .order_by(Redemption.at_ms, Redemption.terminal, Redemption.seq)
    ]
    serial_hex = f"{serial:016x}"
    flags.raise_flag(
        central,
        f"{flags.DOUBLE_REDEMPTION}:{serial_hex}:{term.id}:{seq}",
        flags.DOUBLE_REDEMPTION,
        "central",
        store=term.store,
        terminal=term.id,
        seq=seq,
        campaign=campaign,
        serial=serial_hex,
        detail={
            "detail": f"coupon {serial_hex} used {count} times, allowed {limit}",
            "uses": count,
            "allowed": limit,
            "redemptions": uses,
            "terminals": sorted({u["terminal"] for u in uses}),
            "stores": sorted({u["store"] for u in uses}),
        },
    )
    log.warning("double redemption of %s (%d uses, %d allowed)", serial_hex, count, limit)


def _customers(
    central: Central,
    term: TerminalRow,
    delta: Counter[tuple[str, str]],
    campaigns: _Campaigns,
    last_seq: dict[Any, int],
) -> None:
    changed = sorted(k for k, d in delta.items() if d)
    for camp_id, customer in changed:
        CustomerUse.insert(
            campaign=camp_id, customer=customer, count=delta[(camp_id, customer)]
        ).on_conflict(
            conflict_target=[CustomerUse.campaign, CustomerUse.customer],
            update={CustomerUse.count: CustomerUse.count + pw.EXCLUDED.count},
        ).execute()
        if delta[(camp_id, customer)] <= 0:
            continue
        camp = campaigns.get(camp_id)
        if camp is None or camp.uses_per_customer is None:
            continue
        n = CustomerUse.get(
            (CustomerUse.campaign == camp_id) & (CustomerUse.customer == customer)
        ).count
        if n > camp.uses_per_customer:
            seq = last_seq.get((camp_id, customer))
            flags.raise_flag(
                central,
                f"{flags.CUSTOMER_LIMIT}:{camp_id}:{customer}:{term.id}:{seq}",
                flags.CUSTOMER_LIMIT,
                "central",
                store=term.store,
                terminal=term.id,
                seq=seq,
                campaign=camp_id,
                customer=customer,
                detail={
                    "detail": f"customer used campaign {camp_id} {n} times, allowed "
                    f"{camp.uses_per_customer}",
                    "uses": int(n),
                    "allowed": camp.uses_per_customer,
                },
            )


def _campaign_usage(
    central: Central,
    term: TerminalRow,
    delta: defaultdict[str, list[int]],
    campaigns: _Campaigns,
    last_seq: dict[Any, int],
) -> None:
    for camp_id in sorted(delta):
        n, minor = delta[camp_id]
        if not n and not minor:
            continue
        CampaignUsage.insert(campaign=camp_id, count=n, minor=minor).on_conflict(
            conflict_target=[CampaignUsage.campaign],
            update={
                CampaignUsage.count: CampaignUsage.count + pw.EXCLUDED.count,
                CampaignUsage.minor: CampaignUsage.minor + pw.EXCLUDED.minor,
            },
        ).execute()
        camp = campaigns.get(camp_id)
        if n <= 0 or camp is None or (camp.budget_count is None and camp.budget_minor is None):
            continue
        usage = CampaignUsage.get(CampaignUsage.campaign == camp_id)
        over = (camp.budget_count is not None and usage.count > camp.budget_count) or (
            camp.budget_minor is not None and usage.minor > camp.budget_minor
        )
        if over:
            seq = last_seq.get(camp_id)
            flags.raise_flag(
                central,
                f"{flags.BUDGET}:{camp_id}:{term.id}:{seq}",
                flags.BUDGET,
                "central",
                store=term.store,
                terminal=term.id,
                seq=seq,
                campaign=camp_id,
                detail={
                    "detail": f"campaign {camp_id} budget exceeded across terminals",
                    "count": int(usage.count),
                    "minor": int(usage.minor),
                    "budget_count": camp.budget_count,
                    "budget_minor": camp.budget_minor,
                },
            )


def _terminal_usage(term: TerminalRow, delta: defaultdict[str, list[int]]) -> None:
    for camp_id in sorted(delta):
        n, minor = delta[camp_id]
        TerminalUsage.insert(terminal=term.id, campaign=camp_id, count=n, minor=minor).on_conflict(
            conflict_target=[TerminalUsage.terminal, TerminalUsage.campaign],
            update={
                TerminalUsage.count: TerminalUsage.count + pw.EXCLUDED.count,
                TerminalUsage.minor: TerminalUsage.minor + pw.EXCLUDED.minor,
            },
        ).execute()
