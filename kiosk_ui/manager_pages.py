"""The manager's screens behind a PIN (/manager): login and logout, the dashboard, flag
reviews, stale-ledger approvals, the clock reset, camera snapshots and the journal export."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from coupons import journal
from coupons.engine import Engine
from coupons.i18n import N_, translate
from kiosk_ui import daemon_port, stats
from kiosk_ui.daemon_port import Daemon, DaemonPort
from kiosk_ui.manager import Manager, Reviews
from kiosk_ui.pages import (
    BAD_ACTION,
    BAD_DATES,
    CLOCK_UNTRUSTED,
    COOKIE_SESSION,
    DEVICE_DOWN,
    DEVICES_DOWN,
    LEDGER_OLD,
    NO_SUCH_FLAG,
    OFFLINE_NEVER,
    OFFLINE_SINCE,
    OPEN_FLAGS,
    PEER_STATES,
    SYNC_ERRORS,
    SYNC_FAILED,
    UNREACHABLE,
    WAITING,
    device_state,
    lang_of,
    local,
    local_day_ms,
    offset_text,
    render,
    when,
)

router = APIRouter()


@dataclass
class Office:
    """The app's manager state: PIN and sessions, flag reviews, the flag index."""

    manager: Manager
    reviews: Reviews
    flags: stats.FlagIndex


def setup(app: FastAPI, daemon: DaemonPort) -> None:
    data = Path(daemon.cfg.terminal.data)
    app.state.office = Office(
        Manager(data, wall=daemon.clock.now), Reviews(data), stats.FlagIndex()
    )


def get_office(request: Request) -> Office:
    office: Office = request.app.state.office
    return office


OfficeDep = Annotated[Office, Depends(get_office)]


def sync_view(sync: Mapping[str, object], lang: str) -> dict[str, object]:
    """The sync card's lines, formatted: local times, the offset with its sign, and the
    last round's error in words."""
    err = sync.get("last_error")
    if isinstance(err, str) and err:  # the daemon's own words (a stuck engine worker)
        err = {"message": err}
    out: dict[str, object] = {
        "central": sync.get("central"),
        "backlog": sync.get("backlog"),
        "last_success": when(sync.get("last_success")) or translate("never", lang),
        "clock_offset": offset_text(sync.get("clock_offset_s")),
        "error": None,
    }
    if isinstance(err, dict):
        kind = str(err.get("kind") or "")
        out["error"] = {
            "at": when(err.get("at")),
            "kind": translate(SYNC_ERRORS[kind], lang) if kind in SYNC_ERRORS else kind,
            "message": str(err.get("message") or ""),
        }
    return out


def sync_trouble(sync: Mapping[str, object], lang: str) -> str | None:
    """The sync problem in one sentence, or None: the central out of reach (since when, as
    the cashier's banner says it), or the last round failing for another reason."""
    err = sync.get("last_error")
    if not err:
        return None
    if isinstance(err, str):  # the daemon's own words (a stuck engine worker)
        return translate(SYNC_FAILED, lang).format(reason=err)
    kind = str(err.get("kind") or "") if isinstance(err, dict) else ""
    if not sync.get("central"):
        return None
    if kind in UNREACHABLE:
        since = when(sync.get("last_success"))
        return (
            translate(OFFLINE_SINCE, lang).format(time=since)
            if since
            else translate(OFFLINE_NEVER, lang)
        )
    reason = translate(SYNC_ERRORS[kind], lang) if kind in SYNC_ERRORS else kind
    if not reason and isinstance(err, dict):
        reason = str(err.get("message") or "")
    return translate(SYNC_FAILED, lang).format(reason=reason)


# Most urgent first: a shopper waiting on an approval, a clock that refuses every coupon, a
# device down; then what can wait a little. The first three show red, the rest amber.
RANKS = ("overrides", "clock", "device-down", "flags", "sync", "device-degraded", "ledger")
URGENT = 3


def attention(
    status: daemon_port.Status,
    ledger_old: bool,
    waiting: int,
    flags: Sequence[Mapping[str, object]],
    lang: str,
) -> list[dict[str, str]]:
    """What needs the manager, in RANKS order, each with the part of the page (an anchor)
    that has the detail."""
    items: list[tuple[str, str, str]] = []  # (rank, text, href)
    if waiting:
        items.append(("overrides", translate(WAITING, lang).format(n=waiting), "#overrides"))
    if not status.get("clock_ok", True):
        items.append(("clock", translate(CLOCK_UNTRUSTED, lang), "#clock"))
    items.extend(device_lines(status, lang))
    opened = [f for f in flags if not f.get("review")]
    if opened:  # newest first: the link goes to the newest open one
        text = translate(OPEN_FLAGS, lang).format(n=len(opened))
        items.append(("flags", text, f"#flag-{opened[0]['seq']}"))
    trouble = sync_trouble(status.get("sync") or {}, lang)
    if trouble:
        items.append(("sync", trouble, "#sync"))
    if ledger_old:
        items.append(("ledger", translate(LEDGER_OLD, lang), "#sync"))
    items.sort(key=lambda item: RANKS.index(item[0]))  # stable: devices keep their order
    return [
        {
            "rank": rank,
            "level": "urgent" if RANKS.index(rank) < URGENT else "warn",
            "text": text,
            "href": href,
        }
        for rank, text, href in items
    ]


def device_lines(status: daemon_port.Status, lang: str) -> list[tuple[str, str, str]]:
    """One line for the inputs that are down or stopped, one for those working badly: a
    till with every reader unplugged still fits the summary on the first screen."""
    ranked: dict[str, list[tuple[str, object]]] = {"device-down": [], "device-degraded": []}
    for name, h in (status.get("inputs") or {}).items():
        state = h.get("state")
        if state != "ok":  # down, stopped, or a state this page does not know: down
            ranked["device-degraded" if state == "degraded" else "device-down"].append(
                (name, state)
            )
    out = []
    for rank, names in ranked.items():
        if len(names) == 1:
            (name, state), *_ = names
            text = translate(DEVICE_DOWN, lang).format(name=name, state=device_state(state, lang))
        elif names:
            sep = "、" if lang == "zh_CN" else ", "
            listed = sep.join(f"{n} ({device_state(state, lang)})" for n, state in names)
            text = translate(DEVICES_DOWN, lang).format(devices=listed)
        else:
            continue
        out.append((rank, text, f"#device-{names[0][0]}"))
    return out


def ledger_is_old(daemon: DaemonPort, status: daemon_port.Status) -> bool:
    """The ledger failed to load or is older than the policy's warning age."""
    ledger = status.get("ledger") or {}
    age = ledger.get("age_s")
    warn_s = daemon_port.worker(daemon).call(lambda e: e.ledger.policy.stale_warn_hours * 3600.0)
    return bool(ledger.get("problem")) or (age is not None and age > warn_s)


def devices(status: daemon_port.Status, lang: str) -> list[dict[str, str]]:
    return [
        {
            "name": name,
            "state": str(h.get("state") or ""),
            "text": device_state(h.get("state"), lang),
            "detail": health_detail(h, lang),
        }
        for name, h in (status.get("inputs") or {}).items()
    ]


def health_detail(h: Mapping[str, object], lang: str) -> str:
    """A device's detail: in the page's language when the line gave its words (the store
    peers' do), else as the driver wrote it (a technical note, shown small)."""
    message = h.get("message")
    if isinstance(message, Mapping) and isinstance(message.get("id"), str):
        words = message.get("words")
        try:
            return translate(str(message["id"]), lang).format_map(
                words if isinstance(words, Mapping) else {}
            )
        except (KeyError, ValueError, IndexError):  # a catalog entry that lost a field
            pass
    return str(h.get("detail") or "")


def peers_view(peers: Mapping[str, object], lang: str) -> dict[str, object] | None:
    """The "Store group" card: each peer till up, down or withdrawn, when it was last heard
    from and its round trip; None when this till has no store group (the card is hidden)."""
    if not peers.get("enabled"):
        return None
    listed = peers.get("peers")
    rows = []
    for p in listed if isinstance(listed, list) else []:
        if not isinstance(p, Mapping):
            continue
        state = "revoked" if p.get("revoked") else "up" if p.get("up") else "down"
        rtt = p.get("rtt_ms")
        rows.append(
            {
                "terminal": str(p.get("terminal") or ""),
                "state": state,
                "text": translate(PEER_STATES[state], lang),
                "last_exchange": when(p.get("last_exchange"), lang) or "-",
                "rtt": f"{rtt:.1f} ms" if isinstance(rtt, int | float) else "-",
            }
        )
    up = sum(1 for r in rows if r["state"] == "up")
    return {"terminal": str(peers.get("terminal") or ""), "peers": rows, "up": up, "of": len(rows)}


def _day_ms(day: str, later: int = 0) -> int:
    """The start of a local calendar day typed by the manager (YYYY-MM-DD), or of the day
    `later` days after it."""
    return local_day_ms(dt.date.fromisoformat(day) + dt.timedelta(days=later))


def session_ok(request: Request, office: Office) -> bool:
    return office.manager.valid(request.cookies.get(COOKIE_SESSION))


def manager_page(
    request: Request,
    daemon: DaemonPort,
    office: Office,
    status_code: int = 200,
    error: str | None = None,
    **extra: object,
) -> HTMLResponse:
    status = daemon.status()
    lang = lang_of(request)
    now = local(daemon.clock.now())
    figures = stats.figures(
        daemon_port.worker(daemon),
        office.flags,
        office.reviews,
        daemon.clock.now(),
        daemon.cfg.terminal.currency,
        str(status.get("terminal") or ""),
        lang,
    )
    overrides = [p.to_dict(lang) for p in daemon.awaiting_override()]
    flags = figures["flags"]
    assert isinstance(flags, list)
    page = render(
        request,
        "manager.html",
        attention=attention(status, ledger_is_old(daemon, status), len(overrides), flags, lang),
        stats=figures,
        status=status,
        sync=sync_view(status.get("sync") or {}, lang),
        devices=devices(status, lang),
        peers=peers_view(daemon_port.peers_status(daemon), lang),
        today=now.date().isoformat(),
        overrides=overrides,
        cameras={d.name for d in daemon.inputs if hasattr(d, "snapshot")},
        notice=request.query_params.get("notice"),
        device_time=now.strftime("%Y-%m-%d %H:%M:%S %Z"),
        error=error,
        **extra,
    )
    page.status_code = status_code
    return page


@router.get("/manager", response_class=HTMLResponse)
def manager(request: Request, daemon: Daemon, office: OfficeDep) -> Response:
    if not session_ok(request, office):
        return render(request, "login.html", error=None, has_pin=office.manager.has_pin())
    return manager_page(request, daemon, office)


def _login_error(request: Request, office: Office, error: str, code: int) -> Response:
    resp = render(request, "login.html", error=error, has_pin=office.manager.has_pin())
    resp.status_code = code
    return resp


@router.post("/manager/login", response_class=HTMLResponse)
def login(request: Request, office: OfficeDep, pin: str = Form("", max_length=32)) -> Response:
    mgr = office.manager
    if mgr.locked_for() > 0:
        error = N_("Too many wrong PINs: try again in a few minutes.")
        return _login_error(request, office, error, 429)
    token = mgr.login(pin)
    if token is None:
        locked = mgr.locked_for() > 0
        error = (
            N_("Too many wrong PINs: try again in a few minutes.") if locked else N_("Wrong PIN.")
        )
        return _login_error(request, office, error, 429 if locked else 401)
    resp = RedirectResponse("/manager", status_code=303)
    resp.set_cookie(
        COOKIE_SESSION, token, httponly=True, samesite="strict", max_age=int(mgr.session_s)
    )
    return resp


@router.post("/manager/logout")
def logout(request: Request, office: OfficeDep) -> Response:
    office.manager.logout(request.cookies.get(COOKIE_SESSION))
    resp = RedirectResponse("/manager", status_code=303)
    resp.delete_cookie(COOKIE_SESSION)
    return resp


@router.post("/manager/flags/{seq}")
def review(
    request: Request,
    daemon: Daemon,
    office: OfficeDep,
    seq: int,
    action: str = Form(...),
    note: str = Form("", max_length=500),
) -> Response:
    if not session_ok(request, office):
        return RedirectResponse("/manager", status_code=303)
    status = {"acknowledge": "acknowledged", "resolve": "resolved"}.get(action)
    if status is None:
        return manager_page(request, daemon, office, 400, BAD_ACTION)
    if not daemon_port.worker(daemon).call(lambda e: stats.is_flag(seq)):
        return manager_page(request, daemon, office, 404, NO_SUCH_FLAG)
    office.reviews.set(seq, status, note, daemon.clock.now())
    return RedirectResponse("/manager#flags", status_code=303)


@router.post("/manager/override/{number}")
def override(request: Request, daemon: Daemon, office: OfficeDep, number: int) -> Response:
    """Approve a coupon refused for a stale ledger; the cashier screen shows the new
    decision at once."""
    if not session_ok(request, office):
        return RedirectResponse("/manager", status_code=303)
    decision = daemon.override(number, "kiosk-manager")
    where = "/manager#overrides" if decision is not None else "/manager?notice=gone#overrides"
    return RedirectResponse(where, status_code=303)


@router.post("/manager/clock/reset")
def clock_reset(request: Request, daemon: Daemon, office: OfficeDep) -> Response:
    """The manager has checked the time shown and confirms it: trusted time restarts
    from now (Engine.reset_clock_trust, journaled as a `clock_reset` flag)."""
    if not session_ok(request, office):
        return RedirectResponse("/manager", status_code=303)
    decision = daemon_port.worker(daemon).call(lambda e: e.reset_clock_trust("kiosk-manager"))
    notice = "clock-ok" if decision.accepted else "clock-refused"
    return RedirectResponse(f"/manager?notice={notice}#clock", status_code=303)


@router.get("/manager/snapshot/{name}.jpg")
def snapshot(request: Request, daemon: Daemon, office: OfficeDep, name: str) -> Response:
    """The camera's newest frame, so a manager can see what the camera sees."""
    if not session_ok(request, office):
        return Response(status_code=401)
    driver = next((d for d in daemon.inputs if d.name == name), None)
    jpeg = driver.snapshot() if driver is not None and hasattr(driver, "snapshot") else None
    if jpeg is None:
        return Response(status_code=404)
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


@router.get("/manager/export.csv")
def export(
    request: Request, daemon: Daemon, office: OfficeDep, since: str = "", until: str = ""
) -> Response:
    if not session_ok(request, office):
        return RedirectResponse("/manager", status_code=303)
    try:
        since_ms = _day_ms(since) if since else None
        until_ms = _day_ms(until, 1) if until else None
    except ValueError:
        return manager_page(request, daemon, office, 400, BAD_DATES, export_error=True)

    def job(engine: Engine) -> str:
        out = io.StringIO()
        journal.export("csv", out, since_ms, until_ms)
        return out.getvalue()

    body = daemon_port.worker(daemon).call(job, 60.0)
    name = f"journal-{since or 'start'}-{until or 'now'}.csv"
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
