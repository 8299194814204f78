"""How `redeem-central` shows money, times and ages to a person: major units with the
currency's own digits, ISO 8601 in UTC (or a zone asked for), "3 min ago"."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from coupons.money import format_amount


def money(minor: int, currency: str | None, lang: str | None = None) -> str:
    """Integer minor units as major units, as coupons.money.format_amount writes them: for a
    page in `lang` with the language's symbol ("¥100.00", never split over two lines); for
    plain text (no `lang`: the CLI, CSV) with the currency's code, unambiguous where ¥ is
    CNY and JPY: 10000 CNY -> "CNY 100.00", 500 JPY -> "JPY 500", as many decimals as the
    currency has. Without a currency (a campaign that redeemed nothing) the bare number of
    minor units is meaningless, so a dash for nothing and the raw count otherwise."""
    if not currency:
        return "-" if minor == 0 else f"{minor} (minor units, no currency)"
    if lang is None:
        return format_amount(minor, currency, "en", code=True, one_unit=False)
    return format_amount(minor, currency, lang)


def zone(name: str | None) -> tzinfo:
    """The zone a person asked for (an IANA name such as Asia/Shanghai), UTC by default;
    ValueError naming it when it is unknown."""
    if not name or name.upper() in ("UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name, e.g. Asia/Shanghai)") from None


def iso(epoch_s: int | float | None, tz: tzinfo = UTC) -> str | None:
    """ISO 8601 to the second, "Z" for UTC; None stays None (never happened)."""
    if epoch_s is None:
        return None
    text = datetime.fromtimestamp(int(epoch_s), tz).isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def ago(seconds: int | float | None) -> str:
    """An age a person reads at a glance: "just now", "3 min ago", "5 h ago", "2 d ago";
    a time ahead of the central's clock says so rather than pretend it is past."""
    if seconds is None:
        return "never"
    s = int(seconds)
    if s < 0:
        return f"{ago(-s).removesuffix(' ago')} ahead"
    if s < 60:
        return "just now" if s < 5 else f"{s} s ago"
    if s < 3600:
        return f"{s // 60} min ago"
    if s < 2 * 86400:
        return f"{s // 3600} h ago"
    return f"{s // 86400} d ago"


def when(epoch_s: int | None, now_s: int, tz: tzinfo = UTC) -> str:
    """ "2026-11-24T08:00:00Z (3 min ago)", or "never"."""
    if epoch_s is None:
        return "never"
    return f"{iso(epoch_s, tz)} ({ago(now_s - int(epoch_s))})"


def table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    """Left-aligned columns as wide as their widest cell."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    return [
        indent + "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in (header, *rows)
    ]


def clock(ms: int | None) -> str:
    """A till's clock offset as it reported it (its clock minus the central's): "+1.2 s"
    runs ahead, "-0.4 s" behind; "-" never reported."""
    if ms is None:
        return "-"
    return f"{round(ms / 1000, 1) + 0.0:+.1f} s"  # + 0.0: never "-0.0"


def health(state: str | None, unwell: list[str]) -> str:
    """ "ok", "degraded (camera, nfc)"; "-" never reported."""
    if state is None:
        return "-"
    return f"{state} ({', '.join(unwell)})" if unwell else state
