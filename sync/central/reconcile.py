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
from dataclasses import dataclass, field
from typing import Any, TypeVar

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
from sync.protocol import EntryDoc

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


_SeqKey = int | str | tuple[str, str | None]  # a serial, a campaign, (campaign, customer)
T = TypeVar("T")


@dataclass
class _Use:
    """A redemption this batch adds: a Redemption row, its columns by name."""

    terminal: str
    seq: int
    store: str
    campaign: str
    serial: int
    checkout_id: str | None
    customer: str | None
    tag: str | None
    discount_minor: int
    value_minor: int
    currency: str | None
    at_ms: int
    reversed_seq: int | None = None
    counts: bool = True  # cleared when a reverse in the same batch makes it reusable

    def values(self) -> tuple[object, ...]:
        """The row for bulk.insert: the _REDEMPTION columns, serial, reversed_seq, counts."""
        named = (getattr(self, k) for k in _REDEMPTION)
        return (*named, db_serial(self.serial), self.reversed_seq, self.counts)


def _detail(entry: EntryDoc) -> dict[str, object]:
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


def _chunks(items: list[T]) -> list[list[T]]:
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


@dataclass
class _Batch:
    """What one batch of entries changes, gathered before any counter is written."""

    central: Central
    term: TerminalRow
    by_seq: dict[int, EntryDoc]
    known: trust.Known
    campaigns: _Campaigns = field(default_factory=_Campaigns)
    holds: dict[tuple[str | None, str], EntryDoc] = field(default_factory=dict)
    pending: list[_Use] = field(default_factory=list)
    serial_delta: Counter[int] = field(default_factory=Counter)
    customer_delta: Counter[tuple[str, str]] = field(default_factory=Counter)
    usage_delta: defaultdict[str, list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0])
    )
    last_seq: dict[_SeqKey, int] = field(default_factory=dict)
    # Serials of implausible entries that the central did issue for the campaign named: no
    # use is counted, but the coupon is marked used (docs/decisions.md, issue 11).
    burned: dict[int, str] = field(default_factory=dict)

    def count(
        self, serial: int, campaign: str, customer: str | None, value_minor: int, sign: int
    ) -> None:
        self.serial_delta[serial] += sign
        if customer:
            self.customer_delta[(campaign, customer)] += sign
        self.usage_delta[campaign][0] += sign
        self.usage_delta[campaign][1] += sign * value_minor


def reconcile(central: Central, term: TerminalRow, entries: list[EntryDoc]) -> bool:
    """Count what these (just stored) entries did; True when the ledger must change."""
    campaigns = _Campaigns()
    known = trust.Known.load(
        s
        for e in entries
        if e["accepted"] and e["kind"] in ("redeem", "commit")
        for s in [_serial(e["serial"])]
        if s is not None
    )
    batch = _Batch(central, term, {e["seq"]: e for e in entries}, known, campaigns)
    for e in entries:
        _take(batch, e)
    _insert_uses(central, batch.pending)
    if not batch.serial_delta and not batch.usage_delta:
        return False
    _serials(batch)
    _customers(batch)
    _campaign_usage(batch)
    _terminal_usage(term, batch.usage_delta)
    return True


def _take(batch: _Batch, e: EntryDoc) -> None:
    """One entry: a flag is raised, a hold remembered, a use counted or reversed."""
    kind, serial_text = e["kind"], e["serial"]
    if kind == "flag":
        _journal_flag(batch.central, batch.term, e, batch.by_seq)
        return
    if not e["accepted"] or serial_text is None:
        return
    if kind == "hold":
        batch.holds[(e["checkout_id"], serial_text)] = e
        return
    serial = _serial(serial_text)
    if serial is None:
        if kind in ("redeem", "commit"):  # no till writes that: evidence, not a use
            why = f"serial {serial_text!r} is not 16 hex digits"
            _implausible(batch.central, batch.term, e, why)
        return
    camp = batch.campaigns.get(e["campaign"])
    if kind in ("redeem", "commit"):
        _use(batch, e, serial, serial_text, camp)
    elif kind == "reverse":
        _reverse(batch, e, serial, camp)


def _use(batch: _Batch, e: EntryDoc, serial: int, serial_text: str, camp: Campaign | None) -> None:
    """An accepted redeem or commit: counted when the central finds it plausible, else
    flagged (and the coupon burned when the central issued it for that campaign)."""
    term = batch.term
    detail = _detail(e)
    customer, tag = e["customer"], detail.get("tag")
    hold = None
    if e["kind"] == "commit":
        hold = batch.holds.get((e["checkout_id"], serial_text)) or _stored_hold(term, e)
        if hold is not None:
            customer = customer or hold["customer"]
            tag = tag or _detail(hold).get("tag")
    why = trust.implausible(
        e, detail, term.store, serial, camp, batch.known, _detail(hold) if hold else None
    )
    if why is not None:
        _implausible(batch.central, term, e, why)
        cid = e["campaign"]
        if cid is not None and batch.known.issued_for(serial, cid):
            batch.burned[serial] = cid
            batch.serial_delta[serial] += 1
            batch.last_seq[serial] = e["seq"]
        return
    gift = camp.gift_value_minor if (camp and detail.get("gift")) else 0
    use = _Use(
        terminal=term.id,
        seq=e["seq"],
        store=term.store,
        campaign=e["campaign"] or "",
        serial=serial,
        checkout_id=e["checkout_id"],
        customer=customer,
        tag=tag if isinstance(tag, str) else None,
        discount_minor=e["discount_minor"],
        value_minor=e["discount_minor"] + gift,
        currency=e["currency"],
        at_ms=e["at_ms"],
    )
    batch.pending.append(use)
    batch.count(serial, use.campaign, customer, use.value_minor, +1)
    for key in (serial, use.campaign, (use.campaign, customer)):
        batch.last_seq[key] = e["seq"]


def _reverse(batch: _Batch, e: EntryDoc, serial: int, camp: Campaign | None) -> None:
    """A refund: the use it undoes (in this batch, else stored) is marked reversed, and
    stops counting when the campaign makes a refunded coupon reusable."""
    reusable = camp.reusable_after_refund if camp else True
    mine = next(
        (
            u
            for u in reversed(batch.pending)
            if u.serial == serial and u.checkout_id == e["checkout_id"] and u.reversed_seq is None
        ),
        None,
    )
    if mine is not None:
        mine.reversed_seq = e["seq"]
        if reusable:
            mine.counts = False
            batch.count(mine.serial, mine.campaign, mine.customer, mine.value_minor, -1)
        return
    term = batch.term
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
        return
    Redemption.update(reversed_seq=e["seq"], counts=not reusable and stored.counts).where(
        (Redemption.terminal == term.id) & (Redemption.seq == stored.seq)
    ).execute()
    if reusable and stored.counts:
        batch.count(serial, stored.campaign, stored.customer, int(stored.value_minor), -1)


def _insert_uses(central: Central, pending: list[_Use]) -> None:
    if pending:
        bulk.insert(
            central.db,
            Redemption,
            (*_REDEMPTION, "serial", "reversed_seq", "counts"),
            [u.values() for u in pending],
        )


def _stored_hold(term: TerminalRow, commit: EntryDoc) -> EntryDoc | None:
    # A JournalRow row: every field of the entry as uploaded (and its terminal).
    row: EntryDoc | None = (
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


def _implausible(central: Central, term: TerminalRow, e: EntryDoc, why: str) -> None:
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
    central: Central, term: TerminalRow, e: EntryDoc, by_seq: dict[int, EntryDoc]
) -> None:
    """A fraud flag the terminal raised; the entry it is about gives the tag and customer."""
    detail = _detail(e)
    about_seq = detail.get("about_seq")
    about: EntryDoc | None = None
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


def _serials(batch: _Batch) -> None:
    central, term, delta = batch.central, batch.term, batch.serial_delta
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
    campaign_of = {**batch.burned, **{u.serial: u.campaign for u in batch.pending}}
    redeemed, unredeemed = [], []
    for s in changed:
        cid = campaign_of.get(s) or _campaign_of_serial(s)
        camp = batch.campaigns.get(cid)
        limit = camp.uses_per_coupon if camp else 1
        n = counts.get(s, 0)
        if delta[s] > 0:
            if n >= limit:
                redeemed.append(s)
            if n > limit:
                _double(central, term, s, cid, n, limit, batch.last_seq.get(s))
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
    rows = list(
        Redemption.select()
        .where((Redemption.serial == db_serial(serial)) & Redemption.counts)
        .order_by(Redemption.at_ms, Redemption.terminal, Redemption.seq)
    )
    uses = [
        {"terminal": r.terminal, "store": r.store, "seq": int(r.seq), "at_ms": int(r.at_ms)}
        for r in rows
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
            "terminals": sorted({r.terminal for r in rows}),
            "stores": sorted({r.store for r in rows}),
        },
    )
    log.warning("double redemption of %s (%d uses, %d allowed)", serial_hex, count, limit)


def _customers(batch: _Batch) -> None:
    central, term = batch.central, batch.term
    delta, campaigns = batch.customer_delta, batch.campaigns
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
            seq = batch.last_seq.get((camp_id, customer))
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


def _campaign_usage(batch: _Batch) -> None:
    central, term = batch.central, batch.term
    delta, campaigns = batch.usage_delta, batch.campaigns
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
            seq = batch.last_seq.get(camp_id)
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
