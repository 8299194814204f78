"""The manager dashboard's figures, apart from the screens: today's and the week's
redemptions, the charts, refusal reasons, and fraud flags with the central's decisions."""

from __future__ import annotations

import bisect
import datetime as dt
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

from peewee import fn

from coupons import journal
from coupons import sync_state as sync_status
from coupons.engine import Engine
from coupons.i18n import translate
from coupons.reasons import Reason
from kiosk_ui import charts
from kiosk_ui.daemon_port import Worker
from kiosk_ui.manager import Reviews
from kiosk_ui.pages import CENTRAL_STATUSES, flag_kind, local, local_day_ms, when

CentralDecision = Mapping[str, object]  # one of coupons.sync_state.flag_decisions()


class Flag(TypedDict):
    """A fraud flag in the journal."""

    seq: int
    at_ms: int
    reason: str
    detail: str


@dataclass(frozen=True)
class Redeem:
    """A redeem entry of the journal, as the figures need it."""

    at_ms: int
    accepted: bool
    discount_minor: int
    reason: str


def is_flag(seq: int) -> bool:
    """An engine job: whether the journal's entry `seq` is a fraud flag."""
    entry = journal.Entry.get_or_none(journal.Entry.seq == seq)
    return entry is not None and entry.kind == "flag"


class FlagIndex:
    """Every fraud flag in the journal, kept in memory and read on from the last seq seen,
    so listing old open flags does not scan the whole journal on every page (flags are
    few; the journal is not). Its `update` is an engine job."""

    def __init__(self) -> None:
        self.after = 0
        self.flags: list[Flag] = []

    def update(self, engine: Engine | None = None) -> list[Flag]:
        E = journal.Entry
        query = (
            E.select(E.seq, E.at_ms, E.reason, E.detail)
            .where((E.seq > self.after) & (E.kind == "flag"))
            .order_by(E.seq)
        )
        new: list[Flag] = [
            {"seq": e.seq, "at_ms": e.at_ms, "reason": e.reason, "detail": e.detail} for e in query
        ]
        head = E.select(fn.MAX(E.seq)).scalar() or 0
        self.flags.extend(new)
        self.after = max(self.after, head)
        return list(self.flags)


def central_decisions(engine: Engine) -> list[CentralDecision]:
    """An engine job: the central's decisions on flags, oldest first. Read defensively:
    coupons.sync_state.flag_decisions() has answered both newest-last with the central's own
    fields ("status") and newest-first with its own ("decision"); only objects pass."""
    try:
        items = sync_status.flag_decisions(engine)
    except (ValueError, TypeError, KeyError):
        return []
    if not isinstance(items, list):
        return []

    def number(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return 0.0
        return float(value)

    out: list[CentralDecision] = [d for d in items if isinstance(d, dict)]
    # Decision ids (and times) grow: sorting on them gives one order whatever the source's.
    out.sort(key=lambda d: (number(d.get("at")), number(d.get("id"))))
    return out


def _flag_key(d: CentralDecision) -> object:
    flag = d.get("flag")
    return flag if flag is not None else id(d)


def latest_per_flag(decisions: Sequence[CentralDecision]) -> list[CentralDecision]:
    """The newest decision per central flag id, in the order they came."""
    latest: dict[object, CentralDecision] = {}
    for d in decisions:
        latest.pop(_flag_key(d), None)
        latest[_flag_key(d)] = d
    return list(latest.values())


def central_for(
    decisions: Sequence[CentralDecision], terminal: str, entry: Flag
) -> CentralDecision | None:
    """The central's newest decision on this terminal's flag `entry` (the central knows it
    by terminal and journal seq; a central flag about the same seq has another kind)."""
    for d in reversed(decisions):
        ours = d.get("this_terminal") is True or (terminal and d.get("terminal") == terminal)
        if not ours or d.get("seq") != entry["seq"]:
            continue
        if d.get("kind") in (None, entry["reason"]):
            return d
    return None


def decision_view(d: CentralDecision, lang: str) -> dict[str, object]:
    status = str(d.get("decision") or d.get("status") or "")
    kind = str(d.get("kind") or "")
    return {
        "flag": d.get("flag"),
        "status": status,
        "status_text": translate(CENTRAL_STATUSES[status], lang)
        if status in CENTRAL_STATUSES
        else status,
        "kind": flag_kind(kind, lang) if kind else "",
        "code": kind,
        "note": str(d.get("note") or ""),
        "at": when(d.get("at")),
        "terminal": d.get("terminal"),
        "seq": d.get("seq"),
    }


def _reason_text(reason: str, lang: str) -> str:
    try:
        return Reason(reason).message(lang)
    except ValueError:
        return reason


def _flag_detail(detail: str) -> str:
    try:
        doc = json.loads(detail)
    except ValueError:
        return detail
    if isinstance(doc, dict):
        return str(doc.get("detail") or "")
    return str(doc)


def summary(entries: Sequence[Redeem]) -> dict[str, object]:
    ok = [e for e in entries if e.accepted]
    return {
        "count": len(ok),
        "discount": sum(e.discount_minor for e in ok),
        "rate": f"{100 * len(ok) / len(entries):.0f}%" if entries else "-",
    }


@dataclass(frozen=True)
class Week:
    """The seven local days ending today: bounds[i] starts day i (the 7th is today),
    bounds[7] ends today (day boundaries in the device's time zone)."""

    today: dt.date
    bounds: list[int]

    @classmethod
    def ending(cls, today: dt.date) -> Week:
        return cls(today, [local_day_ms(today + dt.timedelta(days=i - 6)) for i in range(8)])


def charts_of(week: Week, decided: Sequence[Redeem], lang: str) -> dict[str, str]:
    """The by-hour (today) and per-day (the week) bar charts of accepted coupons."""
    hours = [0] * 24
    for e in decided:
        if e.at_ms >= week.bounds[6] and e.accepted:
            hours[local(e.at_ms / 1000).hour] += 1
    days = [0] * 7
    for e in decided:
        if e.accepted:
            days[bisect.bisect_right(week.bounds, e.at_ms) - 1] += 1
    day_labels = [(week.today + dt.timedelta(days=i - 6)).strftime("%m-%d") for i in range(7)]
    # Widths in SVG units, sized so both fit side by side at 800 px (charts.min_width):
    # 24 hours want the room, 7 days less.
    return {
        "hours_svg": charts.bars(
            hours,
            [str(h) for h in range(24)],
            translate("Redemptions by hour (today)", lang),
            width=480,
        ),
        "days_svg": charts.bars(days, day_labels, translate("Redemptions per day", lang), 300),
    }


def flag_views(
    shown: Sequence[Flag],
    central: Sequence[CentralDecision],
    done: Mapping[str, object],
    terminal: str,
    lang: str,
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """The flags shown, newest first, each with the central's decision on it; and the
    central's newest decisions on other flags (at most 20)."""
    matched: set[object] = set()
    flags: list[dict[str, object]] = []
    for e in reversed(shown):
        decision = central_for(central, terminal, e)
        if decision is not None:
            matched.add(_flag_key(decision))
        flags.append(
            {
                "seq": e["seq"],
                "at": when(e["at_ms"] / 1000),
                "code": e["reason"],
                "kind": flag_kind(e["reason"], lang),
                "detail": _flag_detail(e["detail"]),
                "review": done.get(str(e["seq"])),
                "central": decision_view(decision, lang) if decision else None,
            }
        )
    others = [
        decision_view(d, lang)
        for d in reversed(latest_per_flag(central))
        if _flag_key(d) not in matched
    ][:20]
    return flags, others


def figures(
    worker: Worker,
    flag_index: FlagIndex,
    reviews: Reviews,
    now: float,
    currency: str,
    terminal: str,
    lang: str,
) -> dict[str, object]:
    """The dashboard's figures as of `now` (the daemon's clock)."""
    week = Week.ending(local(now).date())
    week0, today0, end = week.bounds[0], week.bounds[6], week.bounds[7]

    def read(engine: Engine) -> tuple[list[Redeem], list[Flag], list[CentralDecision]]:
        redeems = [
            Redeem(e["at_ms"], e["accepted"], e["discount_minor"], e["reason"])
            for e in journal.rows(week0)
            if e["kind"] == "redeem"
        ]
        return redeems, flag_index.update(engine), central_decisions(engine)

    rows, all_flags, central = worker.call(read, 30.0)  # one trip to the worker
    # Entries stamped after today (a clock that ran ahead) are in no chart's range.
    decided = [e for e in rows if e.at_ms < end]
    done = reviews.all()
    # The week's flags, and every flag still open however old: an unreviewed flag never
    # drops off the screen.
    shown = [e for e in all_flags if e["at_ms"] >= week0 or done.get(str(e["seq"])) is None]
    flags, others = flag_views(shown, central, done, terminal, lang)
    refusals = Counter(e.reason for e in decided if not e.accepted)
    return {
        "today": summary([e for e in decided if e.at_ms >= today0]),
        "week": summary(decided),
        "currency": currency,
        **charts_of(week, decided, lang),
        "refusals": [
            (reason, _reason_text(reason, lang), n) for reason, n in refusals.most_common()
        ],
        "flags": flags,
        "central_others": others,
    }
