"""What every console page shares: the templates, the words they show (translated through
coupons.i18n), the page language, and the checks in front of each page and action."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

from babel.dates import format_timedelta
from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from coupons.i18n import N_, normalize_lang, translate
from sync.central import display, users
from sync.central.console import session
from sync.central.console.session import Viewer
from sync.central.context import services

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
COOKIE_LANG = "lang"

# Every string the templates show through _(...): marked here so the catalog tests see them.
UI_STRINGS = (
    N_("Head office console"),
    N_("Dashboard"),
    N_("Campaigns"),
    N_("Fraud flags"),
    N_("Fleet"),
    N_("Log out"),
    N_("Log in"),
    N_("User name"),
    N_("Password"),
    N_("Signed in as"),
    N_("Open flags"),
    N_("No open flags."),
    N_("Kind"),
    N_("Count"),
    N_("Campaign"),
    N_("Name"),
    N_("Status"),
    N_("Issued"),
    N_("Redemptions"),
    N_("Redeemed value"),
    N_("Budget left"),
    N_("Valid until"),
    N_("Actions"),
    N_("Pause"),
    N_("Resume"),
    N_("End"),
    N_("No campaigns yet."),
    N_("Quiet terminals"),
    N_("Every terminal has synced recently."),
    N_("Terminal"),
    N_("Store"),
    N_("Last sync"),
    N_("Last seen"),
    N_("Ledger version"),
    N_("Enrolled"),
    N_("State"),
    N_("revoked"),
    N_("quiet"),
    N_("in service"),
    N_("No terminals enrolled yet."),
    N_("Flag"),
    N_("Serial"),
    N_("Raised"),
    N_("Note"),
    N_("Acknowledge"),
    N_("Resolve"),
    N_("Deny-list"),
    N_("Show"),
    N_("open"),
    N_("acknowledged"),
    N_("resolved"),
    N_("deny_listed"),
    N_("active"),
    N_("paused"),
    N_("ended"),
    N_("archived"),
    N_("never"),
    N_("Language"),
    N_("Older than (hours)"),
    N_("Filter"),
    N_("No flags match these filters."),
    N_("Raised by"),
    N_("Stores"),
    N_("Terminals"),
    N_("Detail"),
    N_("Total discount"),
    N_("Journal entries"),
    N_("Seq"),
    N_("Time"),
    N_("Entry"),
    N_("Outcome"),
    N_("Reason"),
    N_("Amount"),
    N_("Customer"),
    N_("Cashier"),
    N_("accepted"),
    N_("refused"),
    N_("The central holds no journal entry for this flag."),
    N_("Listed but no longer held (archived):"),
    N_("Enroll code"),
    N_("Type this code on the new terminal, or scan it. It works once."),
    N_("Quiet: no journal batch for more than this many hours:"),
    N_("Type the terminal id"),
    N_("Revoke"),
    N_("New enroll code"),
    N_("Valid for"),
    N_("minutes"),
    N_("hours"),
    N_("days"),
    N_("Make an enroll code"),
)
# Messages built in Python.
SESSION_EXPIRED = N_("Your session has expired: log in again.")
BAD_CREDENTIALS = N_("Wrong user name or password.")
LOCKED = N_("Too many wrong passwords: this account is locked for 15 minutes.")
DISABLED = N_("This account is disabled: ask an administrator.")
CSRF_REFUSED = N_("This form has expired: reload the page and try again.")
NOT_ALLOWED = N_("Your role may not do this: ask an administrator.")
NOT_FOUND = N_("Not found.")
JUST_NOW = N_("just now")


def lang_of(request: Request) -> str:
    """?lang= first, then the language cookie, then the browser's Accept-Language."""
    asked = request.query_params.get("lang") or request.cookies.get(COOKIE_LANG)
    if asked:
        return normalize_lang(asked)
    ranked: list[tuple[float, str]] = []
    for part in request.headers.get("accept-language", "").split(","):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        if tag and tag.lower()[:2] in ("en", "zh"):
            ranked.append((q, tag))
    ranked.sort(key=lambda t: -t[0])  # stable: equal weights keep the browser's order
    return normalize_lang(ranked[0][1]) if ranked else "en"


def when(epoch_s: int | None, now_s: int, lang: str) -> str:
    """ "2026-11-24T08:00:00Z (3 minutes ago)" in the page's language (Babel's words for the
    age: "3分钟前"), or "never"."""
    if epoch_s is None:
        return translate("never", lang)
    delta = int(epoch_s) - now_s
    age = (
        translate(JUST_NOW, lang)
        if abs(delta) < 5
        else format_timedelta(timedelta(seconds=delta), add_direction=True, locale=lang)
    )
    return f"{display.iso(int(epoch_s))} ({age})"


def money(minor: int | None, currency: str | None) -> str:
    return "-" if minor is None else display.money(minor, currency)


async def render(
    request: Request,
    template: str,
    viewer: Viewer | None,
    status: int = 200,
    **ctx: object,
) -> Response:
    """A page in the request's language with what every template uses; a logged-in
    viewer's session is refreshed (the idle time counts from here)."""
    lang = lang_of(request)
    now = int(services(request).central.now())
    ctx.update(
        request=request,
        lang=lang,
        _=lambda s: translate(s, lang),
        money=money,
        when=lambda t: when(t, now, lang),
        path=request.url.path,
        viewer=viewer,
        may=lambda permission: viewer is not None and users.allowed(viewer.role, permission),
        csrf_token=viewer.csrf if viewer else ctx.get("csrf_token", ""),
    )
    resp = TEMPLATES.TemplateResponse(request, template, ctx, status_code=status)
    if request.query_params.get("lang"):
        resp.set_cookie(COOKIE_LANG, lang, max_age=365 * 86400, samesite="strict")
    if viewer is not None:
        await session.start(request, resp, viewer)
    return resp


async def message(
    request: Request, viewer: Viewer | None, status: int, text: str, code: str
) -> Response:
    return await render(request, "message.html", viewer, status, text=text, code=code)


def to_login(request: Request, expired: bool) -> Response:
    target = "/login?expired=1" if expired else "/login"
    resp = RedirectResponse(target, status_code=303)
    if expired:
        session.end(resp)
    return resp


async def viewer_or_login(request: Request) -> Viewer | Response:
    """The logged-in viewer of a page, or the redirect to the login page."""
    viewer, expired = await session.read(request)
    return viewer if viewer is not None else to_login(request, expired)


async def acting(
    request: Request, permission: str
) -> tuple[Viewer, Mapping[str, object]] | Response:
    """The viewer of a POST and its form, once the session, the CSRF token and the role's
    permission are checked; else the answer to send. A role without the permission is
    refused with 403 and an audit entry (as the admin API does)."""
    viewer, expired = await session.read(request)
    if viewer is None:
        return to_login(request, expired)
    form = dict(await request.form())
    if not session.csrf_ok(viewer, form.get(session.CSRF_FIELD)):
        return await message(request, viewer, 403, CSRF_REFUSED, "csrf-token")
    if not users.allowed(viewer.role, permission):
        svc = services(request)
        where = f"{request.method} {request.url.path}"
        refused = {"permission": permission, "role": viewer.role}
        await svc.db(users.audit, svc.central, viewer.actor, "refused", where, None, refused)
        return await message(request, viewer, 403, NOT_ALLOWED, "permission")
    return viewer, form


__all__ = ["TEMPLATES", "UI_STRINGS", "acting", "lang_of", "message", "render", "viewer_or_login"]
