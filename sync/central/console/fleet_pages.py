"""The console's fleet: every store and terminal (quiet ones highlighted, by the report's
threshold) with what each till last reported (backlog, clock offset, device health, app
version) and its ledger's age; enroll codes made here (shown as text and as a QR code
drawn on the server) and revoking a terminal (both permission terminals.manage, both
audited with the viewer as actor)."""

from __future__ import annotations

from typing import TypedDict

import segno
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from markupsafe import Markup

from coupons.i18n import N_
from sync.central import display, report, terminals, users
from sync.central.console import pages
from sync.central.console.dashboard import TerminalLine, fleet
from sync.central.console.session import Viewer
from sync.central.context import services
from sync.central.models import TerminalRow
from sync.central.store import Central, CentralError

router = APIRouter(include_in_schema=False)

# The lifetimes offered in the form (seconds); the central accepts 1 s to 30 days.
TTL_CHOICES_S = (900, 3600, 86400, 7 * 86400)
BAD_ENROLL = N_("An enroll code needs a store (1-32 letters, digits, '-' or '_') and a lifetime.")
CONFIRM_MISMATCH = N_("To revoke a terminal, type its id in the confirmation field.")
# Words of fleet.html (the catalog tests read the marks).
FLEET_STRINGS = (
    N_(
        "Backlog, clock offset, device health and app version are what each till last "
        "reported; '-' means it has not (an older till)."
    ),
    N_("Clock offset: the till's clock minus the central's."),
    N_("App version"),
    N_("Backlog"),
    N_("Ledger age"),
    N_("Clock offset"),
    N_("Device health"),
    N_("versions behind:"),
    N_("status reports ignored:"),
    N_("ok"),
    N_("degraded"),
    N_("down"),
    N_("stopped"),
)


class StoreLine(TypedDict):
    store: str
    terminals: int  # not revoked
    quiet: int
    backlog: int | None  # summed over the tills that reported one; None: none did
    last_sync: int | None  # the latest of its tills'


def stores_of(lines: list[TerminalLine]) -> list[StoreLine]:
    """Each store of the fleet, from its terminals' lines (revoked terminals left out)."""
    out: dict[str, StoreLine] = {}
    for line in lines:
        t = line["doc"]
        if t["revoked"]:
            continue
        s = out.setdefault(
            t["store"],
            {"store": t["store"], "terminals": 0, "quiet": 0, "backlog": None, "last_sync": None},
        )
        s["terminals"] += 1
        s["quiet"] += line["state"] == "quiet"
        if t["backlog"] is not None:
            s["backlog"] = (s["backlog"] or 0) + t["backlog"]
        if t["last_upload"] is not None:
            s["last_sync"] = max(s["last_sync"] or 0, t["last_upload"])
    return sorted(out.values(), key=lambda s: s["store"])


async def _page(request: Request, viewer: Viewer, status: int = 200, **ctx: object) -> Response:
    svc = services(request)
    lines = await svc.db(fleet, svc.central)
    return await pages.render(
        request,
        "fleet.html",
        viewer,
        status,
        terminals=lines,
        stores=stores_of(lines),
        ago=display.ago,
        clock=display.clock,
        ttl_choices=TTL_CHOICES_S,
        quiet_h=report.STALE_AFTER_S // 3600,
        **ctx,
    )


@router.get("/fleet")
async def fleet_page(request: Request) -> Response:
    viewer = await pages.viewer_or_login(request)
    if isinstance(viewer, Response):
        return viewer
    return await _page(request, viewer)


def _enroll_code(central: Central, actor: str, store: str, ttl_s: int) -> tuple[str, int]:
    with central.writing():
        code, expires = terminals.new_enroll_code(central, store, ttl_s)
        # Never the code itself: the log is readable by auditors, the code enrolls a till.
        after = {"store": store, "expires_at": expires}
        users.audit(central, actor, "enroll-code.make", f"store:{store}", None, after)
    return code, expires


def qr_svg(text: str) -> Markup:
    """An inline SVG QR code of `text` (segno; no image file, nothing from elsewhere).
    Markup: segno writes the SVG and the text is a code from the central's own alphabet."""
    return Markup(segno.make(text, error="m").svg_inline(scale=5, border=2))


@router.post("/fleet/enroll-code")
async def enroll_code(request: Request) -> Response:
    checked = await pages.acting(request, "terminals.manage")
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    store, ttl = form.get("store"), form.get("ttl")
    ttl_text = ttl.strip() if isinstance(ttl, str) else ""
    if not isinstance(store, str) or not ttl_text.isdigit() or len(ttl_text) > 9:
        return await _page(request, viewer, 400, error=BAD_ENROLL)
    svc = services(request)
    try:
        code, expires = await svc.db(
            _enroll_code, svc.central, viewer.actor, store.strip(), int(ttl_text)
        )
    except CentralError:
        return await _page(request, viewer, 400, error=BAD_ENROLL, asked_store=store)
    made = {
        "code": code,
        "store": store.strip(),
        "expires_iso": display.iso(expires),
        "qr": qr_svg(code),
    }
    return await _page(request, viewer, 200, made=made)


def _revoke(central: Central, actor: str, terminal: str) -> bool:
    """Revoke and audit in one transaction; False when there is no such terminal."""
    with central.writing():
        row = TerminalRow.get_or_none(TerminalRow.id == terminal)
        if row is None:
            return False
        before = {"revoked": bool(row.revoked)}
        terminals.revoke_terminal(central, terminal)
        after = {"revoked": True}
        users.audit(central, actor, "terminal.revoke", f"terminal:{terminal}", before, after)
    return True


@router.post("/fleet/{terminal}/revoke")
async def revoke(request: Request, terminal: str) -> Response:
    checked = await pages.acting(request, "terminals.manage")
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    if not terminals.TERMINAL_RE.fullmatch(terminal):
        return await pages.message(request, viewer, 404, pages.NOT_FOUND, "not-found")
    confirm = form.get("confirm")
    # Revoking cannot be undone (the till must enroll again): the id typed, not a click.
    if not isinstance(confirm, str) or confirm.strip() != terminal:
        return await _page(request, viewer, 400, error=CONFIRM_MISMATCH)
    svc = services(request)
    if not await svc.db(_revoke, svc.central, viewer.actor, terminal):
        return await pages.message(request, viewer, 404, pages.NOT_FOUND, "not-found")
    return RedirectResponse("/fleet", status_code=303)
