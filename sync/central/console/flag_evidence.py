"""What the fraud desk reads: the queue's filters (checked: a bad one is a sentence, never
a 500) and a flag's evidence, the journal entries it rests on with their terminals, stores,
times and amounts."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import TypedDict

from coupons.i18n import N_
from sync.central import display, flags
from sync.central.models import FlagRow, JournalRow, TerminalRow
from sync.central.terminals import ID_RE

KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
CAMPAIGN_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_AGE_H = 24 * 366 * 10  # ten years: anything older is a typing mistake
QUEUE_LIMIT = 500
MAX_HOLDERS = 20  # deny-list buttons on one flag's page

BAD_KIND = N_("The kind must be a flag kind such as double_redemption.")
BAD_STORE = N_("The store must be 1-32 letters, digits, '-' or '_'.")
BAD_CAMPAIGN = N_("The campaign must be 1-64 letters, digits, '.', '-' or '_'.")
BAD_STATE = N_("The state must be open, acknowledged, resolved, revoked or deny_listed.")
BAD_AGE = N_("Older than must be a whole number of hours from 0 to 87840.")


class FilterError(ValueError):
    """A queue filter that cannot be used; the message is a marked sentence."""


@dataclass(frozen=True)
class QueueFilter:
    state: str = "open"
    kind: str = ""
    store: str = ""
    campaign: str = ""
    older_than_h: int | None = None


def _text(params: dict[str, str], name: str, pattern: re.Pattern[str], error: str) -> str:
    value = params.get(name, "").strip()
    if value and not pattern.fullmatch(value):
        raise FilterError(error)
    return value


def parse_filter(params: dict[str, str]) -> QueueFilter:
    """The queue's filters from a query string; FilterError naming the first bad one.
    `status` is the older name of `state` (links made before the filters still work)."""
    state = (params.get("state") or params.get("status") or "open").strip()
    if state not in flags.STATUSES:
        raise FilterError(BAD_STATE)
    age_text = params.get("older_than_h", "").strip()
    age: int | None = None
    if age_text:
        if not age_text.isdigit() or int(age_text) > MAX_AGE_H:
            raise FilterError(BAD_AGE)
        age = int(age_text)
    return QueueFilter(
        state=state,
        kind=_text(params, "kind", KIND_RE, BAD_KIND),
        store=_text(params, "store", ID_RE, BAD_STORE),
        campaign=_text(params, "campaign", CAMPAIGN_RE, BAD_CAMPAIGN),
        older_than_h=age,
    )


def queue(f: QueueFilter, now_s: int) -> list[flags.FlagDoc]:
    before = None if f.older_than_h is None else now_s - f.older_than_h * 3600
    return flags.list_flags(
        status=f.state,
        kind=f.kind or None,
        store=f.store or None,
        campaign=f.campaign or None,
        created_before=before,
        limit=QUEUE_LIMIT,
    )


class EntryLine(TypedDict):
    """One journal entry of the evidence, as the flag's page shows it."""

    terminal: str
    store: str
    seq: int
    at_iso: str
    kind: str
    accepted: bool
    reason: str
    campaign: str | None
    serial: str | None
    customer: str | None
    cashier: str | None
    amount: str  # major units with the currency (display.money)
    named: bool  # the entry the flag itself names (its terminal and seq)


class Evidence(TypedDict):
    flag: flags.FlagDoc
    entries: list[EntryLine]
    missing: list[str]  # "terminal #seq" the flag lists but the central no longer holds
    terminals: list[str]
    stores: list[str]
    totals: list[str]  # the entries' discounts summed per currency
    revocable: bool  # it names a coupon serial the ledger can revoke
    customers: list[str]  # what the desk may deny-list, one button each (flags.holders)
    tags: list[str]


def _listed(flag: flags.FlagDoc) -> list[tuple[str, int]]:
    """(terminal, seq) of the flag itself and every use its detail lists."""
    wanted: set[tuple[str, int]] = set()
    if flag["terminal"] and flag["seq"] is not None:
        wanted.add((flag["terminal"], int(flag["seq"])))
    detail = flag["detail"]
    uses = detail.get("redemptions") if isinstance(detail, dict) else None
    for use in uses if isinstance(uses, list) else []:
        if isinstance(use, dict) and isinstance(use.get("terminal"), str):
            seq = use.get("seq")
            if isinstance(seq, int) and not isinstance(seq, bool):
                wanted.add((use["terminal"], seq))
    return sorted(wanted)


def _line(row: JournalRow, store: str, flag: flags.FlagDoc) -> EntryLine:
    return {
        "terminal": row.terminal,
        "store": store,
        "seq": int(row.seq),
        "at_iso": display.iso(int(row.at_ms) // 1000) or "-",
        "kind": row.kind,
        "accepted": bool(row.accepted),
        "reason": row.reason,
        "campaign": row.campaign,
        "serial": row.serial,
        "customer": row.customer,
        "cashier": row.cashier,
        "amount": display.money(int(row.discount_minor), row.currency),
        "named": (row.terminal, int(row.seq)) == (flag["terminal"], flag["seq"]),
    }


def evidence(flag_id: int) -> Evidence | None:
    """A flag and the journal entries on each side of it; None for no such flag."""
    row = FlagRow.get_or_none(FlagRow.id == flag_id)
    if row is None:
        return None
    doc = flags.flag_doc(row)
    rows = sorted(flags.evidence(row), key=lambda r: (int(r.at_ms), r.terminal, int(r.seq)))
    names = {r.terminal for r in rows}
    stores = {t.id: t.store for t in TerminalRow.select().where(TerminalRow.id.in_(names))}
    lines = [_line(r, stores.get(r.terminal, "-"), doc) for r in rows]
    held = {(r.terminal, int(r.seq)) for r in rows}
    sums: dict[str, int] = defaultdict(int)
    for r in rows:
        if r.accepted:
            sums[r.currency or ""] += int(r.discount_minor)
    customers, tags = flags.holders(row)
    return {
        "flag": doc,
        "entries": lines,
        "missing": [f"{t} #{s}" for t, s in _listed(doc) if (t, s) not in held],
        "terminals": sorted(names | ({doc["terminal"]} if doc["terminal"] else set())),
        "stores": sorted({s for s in flags.stores_of(row) if s}),
        "totals": [display.money(v, c or None) for c, v in sorted(sums.items())],
        "revocable": flags.flag_serial(row) is not None,
        "customers": customers[:MAX_HOLDERS],
        "tags": tags[:MAX_HOLDERS],
    }
