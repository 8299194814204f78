"""What every kiosk screen shares: the templates, the words they show, time and money
formatting, and `render`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from coupons.i18n import N_, format_day, format_moment, normalize_lang, translate
from coupons.money import format_amount
from kiosk_ui import guard

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
COOKIE_LANG, COOKIE_SESSION = "lang", "kiosk_manager"

# Every string the templates show through _(...): marked here so the catalog test sees them.
UI_STRINGS = (
    N_("Cashier"),
    N_("Manager"),
    N_("Ready for the next coupon"),
    N_("Scan a coupon or type its code."),
    N_("Already on this sale"),
    N_("Coupon ready"),
    N_("Sound on"),
    N_("Sound off"),
    N_("Accepted"),
    N_("Refused"),
    N_("Discount"),
    N_("Campaign"),
    N_("Sale total"),
    N_("No total entered"),
    N_("Coupons in this sale"),
    N_("Coupon code"),
    N_("Check coupon"),
    N_("Clear"),
    N_("Enter total"),
    N_("New sale"),
    N_("The coupon ledger is out of date: connect the terminal to sync."),
    N_("The clock is not trusted: ask the manager to check the time."),
    N_("A device is not working:"),
    N_("Manager PIN"),
    N_("Log in"),
    N_("Log out"),
    N_("Wrong PIN."),
    N_("Too many wrong PINs: try again in a few minutes."),
    N_("No manager PIN is set: run redeem manager set-pin."),
    N_("Today"),
    N_("Last 7 days"),
    N_("Redemptions"),
    N_("Discount given"),
    N_("Acceptance rate"),
    N_("Refusal reasons"),
    N_("No coupon was refused in the last 7 days."),
    N_("Redemptions by hour (today)"),
    N_("Redemptions per day"),
    N_("Fraud flags"),
    N_("No flags."),
    N_("Note"),
    N_("Acknowledge"),
    N_("Resolve"),
    N_("acknowledged"),
    N_("resolved"),
    N_("open"),
    N_("Sync"),
    N_("Device health"),
    N_("Journal export"),
    N_("From"),
    N_("To"),
    N_("Download CSV"),
    N_("Ledger version"),
    N_("Ledger age"),
    N_("Backlog"),
    N_("Last sync"),
    N_("Clock offset"),
    N_("Sync is off."),
    N_("hours"),
    N_("Language"),
    N_("Take back last coupon"),
    N_("Coupon taken back"),
    N_("Ask a manager to approve it on the manager screen."),
    N_("Stale-ledger approvals"),
    N_("No coupon is waiting for approval."),
    N_("Approve"),
    N_("That coupon is no longer waiting for approval."),
    N_("No picture yet."),
    N_("Minimum spend"),
    N_("Valid until"),
    N_("Only on some items"),
    N_("New customers only"),
    N_("Members only"),
    N_("Not combinable with other coupons"),
    N_("Combines with other coupons"),
    N_("Clock"),
    N_("This terminal's time"),
    N_("The clock is trusted."),
    N_("Coupons are refused until the time is right. Check the time above against a phone."),
    N_("The time is right: trust it again"),
    N_("The clock is trusted again."),
    N_("The clock could not be trusted again:"),
    N_("Best combination"),
    N_("To pay"),
    N_("Left out"),
    N_("Gift"),
    N_("Last error"),
    N_("never"),
    N_("positive: this terminal's clock is ahead of the central service's"),
    N_("Head office"),
    N_("Head office decisions on other flags"),
    N_("Store group"),
    N_("Till"),
    N_("Last exchange"),
    N_("Round trip"),
    N_("No other till of this store is listed yet."),
    N_("Peers up"),
)

# A peer till's state on the manager's "Store group" card (Daemon.peers_status()).
PEER_STATES = {
    "up": N_("answering"),
    "down": N_("not answering"),
    "revoked": N_("withdrawn"),
}

# Strings built in Python (not in a template): each is translated before it is shown.
OFFLINE_SINCE = N_("Cannot reach the central service since {time}.")
OFFLINE_NEVER = N_("Cannot reach the central service: it has not answered yet.")
NOT_AN_AMOUNT = N_("That is not an amount: enter the total like 128.50.")
BAD_DATES = N_("Dates must look like 2026-11-25.")
BAD_ACTION = N_("Choose Acknowledge or Resolve.")
NO_SUCH_FLAG = N_("There is no such fraud flag.")

# A device input's state (ports.scan.Health.state).
DEVICE_STATES = {
    "ok": N_("working"),
    "degraded": N_("working badly"),
    "down": N_("not working"),
    "stopped": N_("stopped"),
}

# A fraud flag's kind: the terminal's (coupons.fraud, engine, sun) and the central's own
# (sync.central.flags), which reach the terminal with the central's decisions.
FLAG_KINDS = {
    "replay": N_("A used coupon was shown again"),
    "forged_token": N_("Forged or altered coupon"),
    "tag_mismatch": N_("Coupon copied onto another NFC tag"),
    "denied_tag": N_("Deny-listed NFC tag"),
    "denied_customer": N_("Deny-listed customer"),
    "wrong_store": N_("Coupon for another store"),
    "clock_rollback": N_("The clock went backwards"),
    "burst_coupon": N_("One coupon scanned many times"),
    "burst_terminal": N_("Burst of scans at this terminal"),
    "burst_cashier": N_("Burst of scans by one cashier"),
    "ledger_refused": N_("A coupon ledger update was refused"),
    "stale_ledger_override": N_("A manager approved a coupon on an old ledger"),
    "clock_reset": N_("A manager trusted the clock again"),
    "clock_offset": N_("The clock differs from the central service's"),
    "sun_replay": N_("NFC tag read counter went back"),
    "double_redemption": N_("Coupon redeemed at two terminals"),
    "customer_limit_exceeded": N_("Customer over the campaign's limit"),
    "budget_exceeded": N_("Campaign budget exceeded"),
    "journal_altered": N_("Journal entry altered"),
    "journal_chain_broken": N_("Journal chain broken"),
    "implausible_entry": N_("A till reported a redemption the central cannot believe"),
    "peer_replay": N_("A coupon used at another till of this store was shown again"),
    "peer_forged": N_("A message claiming to be from a till of this store was forged"),
    "peer_replayed": N_("A till message was sent again by someone else"),
    "peer_revoked": N_("A withdrawn till of this store is still sending"),
    "peer_flood": N_("A till of this store sent too many messages"),
    "peer_conflict": N_("Coupon accepted here and at another till of this store"),
}

# The central's decision on a flag (sync.central.flags.STATUSES).
CENTRAL_STATUSES = {
    "open": N_("open"),
    "acknowledged": N_("acknowledged"),
    "resolved": N_("resolved"),
    "revoked": N_("revoked"),  # its coupon serial
    "deny_listed": N_("deny-listed"),
}

# Why the last sync round failed (sync.http.SyncError.kind).
SYNC_ERRORS = {
    "network": N_("no connection"),
    "timeout": N_("no answer in time"),
    "server": N_("the central service had an error"),
    "refused": N_("the central service refused"),
    "protocol": N_("an answer that could not be read"),
    "stopped": N_("sync stopped"),
    "internal": N_("an error in this terminal"),
}
# The kinds that mean the central could not be reached (or not usefully): the cashier's
# offline banner. A refusal is an answer: the manager's screen shows it.
UNREACHABLE = frozenset({"network", "timeout", "server", "protocol"})

# The manager's "Needs attention" summary at the top of the dashboard (built in
# kiosk_ui/manager_pages.py: `attention`).
ATTENTION_HEADINGS = (N_("Needs attention"), N_("Nothing needs attention."))
WAITING = N_("Coupons waiting for your approval: {n}")
CLOCK_UNTRUSTED = N_("The clock is not trusted: coupons are refused until you check the time.")
DEVICE_DOWN = N_("Device {name}: {state}")
DEVICES_DOWN = N_("Devices: {devices}")
OPEN_FLAGS = N_("Open fraud flags: {n}")
SYNC_FAILED = N_("The last sync failed: {reason}")
LEDGER_OLD = N_("The coupon ledger is out of date: connect the terminal to sync.")


def local(ts: float) -> dt.datetime:
    """An epoch time in the device's own time zone (the Pi is set to the store's)."""
    return dt.datetime.fromtimestamp(ts).astimezone()


def local_day_ms(day: dt.date) -> int:
    """When a local calendar day starts, in epoch ms (DST-aware: not every day is 24 h)."""
    return int(dt.datetime(day.year, day.month, day.day).astimezone().timestamp() * 1000)


def when(ts: object, lang: str = "en") -> str:
    """A stored time for a person: local, to the minute, in the language's order
    ("2026-11-25 08:05", "2026年11月25日 08:05"); '' for none or nonsense."""
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return ""
    if ts > 1e11:  # milliseconds
        ts = ts / 1000
    try:
        return format_moment(local(ts), lang)
    except (OverflowError, OSError, ValueError):
        return ""


def day(ts: float, lang: str = "en") -> str:
    """The local calendar day of an epoch time: "2026-11-25", "2026年11月25日"."""
    return format_day(local(ts).date(), lang)


def flag_kind(kind: str, lang: str) -> str:
    return translate(FLAG_KINDS[kind], lang) if kind in FLAG_KINDS else kind


def offset_text(offset_s: object) -> str:
    """Central minus ours, shown as how far this terminal is ahead, with its sign."""
    if isinstance(offset_s, bool) or not isinstance(offset_s, int | float):
        return "-"
    ahead = round(-offset_s, 1) + 0.0  # + 0.0: never "-0.0"
    return f"{ahead:+.1f} s"


def lang_of(request: Request) -> str:
    return normalize_lang(request.query_params.get("lang") or request.cookies.get(COOKIE_LANG))


def money(
    minor: int | None, currency: str | None = None, lang: str = "en", plus: bool = False
) -> str:
    """An amount as coupons.money.format_amount writes it in `lang` ("¥20.00", "-¥20.00",
    never split over two lines); '' for none."""
    if minor is None:
        return ""
    return format_amount(minor, currency, lang, plus)


def parse_money(text: str) -> int:
    value = text.strip().replace(",", ".")
    whole, _, frac = value.partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()) or len(frac) > 2 or len(whole) > 9:
        raise ValueError("not an amount")
    return int(whole) * 100 + int((frac + "00")[:2])


def device_state(state: object, lang: str) -> str:
    text = str(state or "")
    return translate(DEVICE_STATES[text], lang) if text in DEVICE_STATES else text


def render(request: Request, name: str, **ctx: object) -> HTMLResponse:
    """A page or fragment in the request's language, with what every template uses."""
    lang = lang_of(request)
    ctx.update(
        request=request,
        lang=lang,
        _=lambda s: translate(s, lang),
        money=lambda minor, currency=None, plus=False: money(minor, currency, lang, plus),
        path=request.url.path,
        csrf_token=guard.csrf_token(request),  # every POST form carries it
    )
    resp = TEMPLATES.TemplateResponse(request, name, ctx)
    if request.query_params.get("lang"):
        resp.set_cookie(COOKIE_LANG, lang, max_age=365 * 86400, samesite="lax")
    return resp
