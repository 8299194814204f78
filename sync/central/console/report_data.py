"""The figures of the console's report page over a range of days (UTC, by the central's
clock): redemptions, discount and redemption rate by day, store and campaign, and the
refusals by failure category (coupons/refusals.py). The sums are report.py's, filtered."""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, TypedDict

import peewee as pw

from coupons import refusals
from coupons.i18n import N_
from sync.central import display, report
from sync.central.models import CouponRow, JournalRow, Redemption

DAY_S = 86400
DAY_MS = DAY_S * 1000
DEFAULT_DAYS = 7
MAX_DAYS = 366
DATE_RE = re.compile(r"\d{4}-\d\d-\d\d")
ATTEMPTS = ("redeem", "hold", "commit")  # the journal's kinds that try to use a coupon

BAD_DATE = N_("A date is written as YYYY-MM-DD, e.g. 2026-11-25.")
BACKWARDS = N_("The range runs backwards: the first day is after the last.")
TOO_LONG = N_("A report covers at most 366 days: shorten the range.")


class RangeError(ValueError):
    """A range of days a report cannot cover; the message is a msgid for the form."""


@dataclass(frozen=True)
class DayRange:
    first: dt.date
    last: dt.date  # included

    @property
    def start_ms(self) -> int:
        return epoch_s(self.first) * 1000

    @property
    def end_ms(self) -> int:  # excluded: midnight after the last day
        return (epoch_s(self.last) + DAY_S) * 1000

    def days(self) -> list[dt.date]:
        return [self.first + dt.timedelta(days=i) for i in range((self.last - self.first).days + 1)]


def epoch_s(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())


def parse_day(text: str | None) -> dt.date | None:
    """A day typed as YYYY-MM-DD; None when left blank; RangeError otherwise."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        if not DATE_RE.fullmatch(text):
            raise ValueError(text)
        return dt.date.fromisoformat(text)
    except ValueError:
        raise RangeError(BAD_DATE) from None


def parse_range(first: str | None, last: str | None, now_s: float) -> DayRange:
    """The days from `first` to `last` (YYYY-MM-DD, both included); a blank one defaults
    to the last seven days up to today (UTC, the central's clock)."""
    today = dt.datetime.fromtimestamp(int(now_s), dt.UTC).date()
    end = parse_day(last) or today
    start = parse_day(first) or end - dt.timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise RangeError(BACKWARDS)
    if (end - start).days + 1 > MAX_DAYS:
        raise RangeError(TOO_LONG)
    return DayRange(start, end)


class Line(TypedDict):
    key: str  # the day (YYYY-MM-DD), store or campaign
    name: str  # what a person reads for it: the campaign's name, else the key
    currency: str | None
    redemptions: int
    discount_minor: int
    discount_text: str
    coupons_redeemed: int
    issued: int | None  # None where coupons are not counted so (none issued, SUN tags)
    rate: float | None  # coupons redeemed / issued


class RefusalGroup(TypedDict):
    category: str
    label: str  # a msgid
    count: int
    reasons: list[tuple[str, int]]  # (reason code, count), most first


class Figures(TypedDict):
    range: DayRange
    by_day: list[Line]
    by_store: list[Line]
    by_campaign: list[Line]
    refusals: list[RefusalGroup]
    refused: int
    redemptions: int
    discount: list[str]  # one text per currency: "CNY 40.00"


def _line(key: str, got: report.Sums, issued: int | None, name: str | None = None) -> Line:
    rate = round(got["coupons_redeemed"] / issued, 4) if issued else None
    return {
        "key": key,
        "name": name or key,
        "currency": got["currency"],
        "redemptions": got["redemptions"],
        "discount_minor": got["discount_minor"],
        "discount_text": got["discount_text"],
        "coupons_redeemed": got["coupons_redeemed"],
        "issued": issued or None,
        "rate": rate,
    }


def _empty() -> report.Sums:
    return {
        "currency": None,
        "redemptions": 0,
        "discount_minor": 0,
        "discount_text": display.money(0, None),
        "reversed": 0,
        "coupons_redeemed": 0,
    }


def _within(r: DayRange) -> pw.Node:
    return (Redemption.at_ms >= r.start_ms) & (Redemption.at_ms < r.end_ms)


def _cumulative(r: DayRange, by_day: dict[int, int], before: int) -> dict[dt.date, int]:
    """Running totals at the end of each day of `r` from counts per epoch day."""
    out, total = {}, before
    for day in r.days():
        total += by_day.get(epoch_s(day) // DAY_S, 0)
        out[day] = total
    return out


def _to_date(r: DayRange) -> dict[dt.date, tuple[int, int]]:
    """Per day: coupons first redeemed up to its end, and coupons issued up to its end
    (campaigns that issue coupons only: a SUN-tag campaign has no count to divide by)."""
    issuing = CouponRow.select(CouponRow.campaign).distinct()
    live = Redemption.reversed_seq.is_null() & Redemption.campaign.in_(issuing)
    firsts = (
        Redemption.select(pw.fn.MIN(Redemption.at_ms).alias("first"))
        .where(live)
        .group_by(Redemption.serial)
        .alias("firsts")
    )
    day = firsts.c.first / DAY_MS
    used: Any = firsts.select_from(day, pw.fn.COUNT(pw.SQL("*"))).group_by(day)
    redeemed = {int(d): int(n) for d, n in used.tuples()}
    made_day = CouponRow.issued_at / DAY_S
    made: Any = CouponRow.select(made_day, pw.fn.COUNT(CouponRow.serial)).group_by(made_day)
    issued = {int(d): int(n) for d, n in made.tuples()}
    first = epoch_s(r.first) // DAY_S
    r_before = sum(n for d, n in redeemed.items() if d < first)
    i_before = sum(n for d, n in issued.items() if d < first)
    got, made_ = _cumulative(r, redeemed, r_before), _cumulative(r, issued, i_before)
    return {day_: (got[day_], made_[day_]) for day_ in r.days()}


def by_day(r: DayRange) -> list[Line]:
    """Every day of the range (a quiet day too), one line per currency redeemed that day;
    the rate is the redemption rate to date (coupons redeemed / issued by that day's end)."""
    day = Redemption.at_ms / DAY_MS
    found: dict[dt.date, list[report.Sums]] = {}
    for (number,), got in report.sums(day, where=_within(r)):
        found.setdefault(dt.date(1970, 1, 1) + dt.timedelta(days=int(number)), []).append(got)
    to_date = _to_date(r)
    lines: list[Line] = []
    for d in r.days():
        redeemed, issued = to_date[d]
        for got in found.get(d) or [_empty()]:
            line = _line(d.isoformat(), got, issued)
            line["rate"] = round(redeemed / issued, 4) if issued else None
            lines.append(line)
    return lines


def by_store(r: DayRange) -> list[Line]:
    """Stores that redeemed in the range; the rate: coupons redeemed there / coupons
    issued by the range's end in the campaigns that cover the store."""
    issued = report.issued_by_campaign(r.end_ms // 1000)
    _, _, scope = report.campaign_names()
    lines = []
    for (store,), got in report.sums(Redemption.store, where=_within(r)):
        n = sum(k for c, k in issued.items() if not scope.get(c) or store in scope[c])
        lines.append(_line(store, got, n))
    return lines


def by_campaign(r: DayRange) -> list[Line]:
    """Every campaign (report.by_campaign: those without redemptions too), its rate over
    the coupons it had issued by the range's end."""
    issued = report.issued_by_campaign(r.end_ms // 1000)
    names, live, _ = report.campaign_names()
    return [
        _line(c["campaign"], c, c["issued"], c["name"])
        for c in report.by_campaign(issued, names, live, where=_within(r))
    ]


def refusal_groups(r: DayRange) -> list[RefusalGroup]:
    """Refused attempts in the range by failure category (every category, in order, an
    empty one too), the reason codes and their counts under each."""
    query: Any = (
        JournalRow.select(JournalRow.reason, pw.fn.COUNT(JournalRow.seq))
        .where(
            ~JournalRow.accepted
            & JournalRow.kind.in_(ATTEMPTS)
            & (JournalRow.at_ms >= r.start_ms)
            & (JournalRow.at_ms < r.end_ms)
        )
        .group_by(JournalRow.reason)
        .tuples()
    )
    counts: Counter[str] = Counter({str(reason): int(n) for reason, n in query})
    groups: list[RefusalGroup] = []
    for name in refusals.CATEGORIES:
        held = [(code, n) for code, n in counts.most_common() if refusals.category(code) == name]
        groups.append(
            {
                "category": name,
                "label": refusals.label(name),
                "count": sum(n for _, n in held),
                "reasons": held,
            }
        )
    return groups


def figures(r: DayRange) -> Figures:
    days = by_day(r)
    groups = refusal_groups(r)
    per_currency: Counter[str] = Counter()
    for line in days:
        if line["currency"]:
            per_currency[line["currency"]] += line["discount_minor"]
    return {
        "range": r,
        "by_day": days,
        "by_store": by_store(r),
        "by_campaign": by_campaign(r),
        "refusals": groups,
        "refused": sum(g["count"] for g in groups),
        "redemptions": sum(line["redemptions"] for line in days),
        "discount": [display.money(n, c) for c, n in sorted(per_currency.items())],
    }
