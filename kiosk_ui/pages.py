"""The kiosk's screens: the cashier screen (/), live decisions over SSE (/events), the
manager dashboard (/manager) behind a PIN, and the journal export."""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import io
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from peewee import fn

from coupons import journal
from coupons import sync_state as sync_status
from coupons.i18n import N_, normalize_lang, translate
from coupons.reasons import Reason
from coupons.rules import Basket, best_combination
from kiosk_ui import charts, guard
from kiosk_ui.manager import Manager, Reviews
from ports.scan import Scan

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
COOKIE_LANG, COOKIE_SESSION = "lang", "kiosk_manager"

# Every string the templates show through _(...): marked here so the catalog test sees them.
UI_STRINGS = (
    N_("Cashier"),
    N_("Manager"),
    N_("Waiting for a coupon"),
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
)

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
}

# The central's decision on a flag (sync.central.flags.STATUSES).
CENTRAL_STATUSES = {
    "open": N_("open"),
    "acknowledged": N_("acknowledged"),
    "resolved": N_("resolved"),
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


def local(ts: float) -> dt.datetime:
    """An epoch time in the device's own time zone (the Pi is set to the store's)."""
    return dt.datetime.fromtimestamp(ts).astimezone()


def local_day_ms(day: dt.date) -> int:
    """When a local calendar day starts, in epoch ms (DST-aware: not every day is 24 h)."""
    return int(dt.datetime(day.year, day.month, day.day).astimezone().timestamp() * 1000)


def when(ts: Any) -> str:
    """A stored time for a person: local, to the minute; '' for none or nonsense."""
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return ""
    if ts > 1e11:  # milliseconds
        ts = ts / 1000
    try:
        return local(ts).strftime("%Y-%m-%d %H:%M")
    except (OverflowError, OSError, ValueError):
        return ""


def flag_kind(kind: str, lang: str) -> str:
    return translate(FLAG_KINDS[kind], lang) if kind in FLAG_KINDS else kind


def offset_text(offset_s: Any) -> str:
    """Central minus ours, shown as how far this terminal is ahead, with its sign."""
    if isinstance(offset_s, bool) or not isinstance(offset_s, int | float):
        return "-"
    ahead = round(-offset_s, 1) + 0.0  # + 0.0: never "-0.0"
    return f"{ahead:+.1f} s"


def conditions(campaign: Any, lang: str) -> list[str]:
    """The campaign's conditions in the few words a cashier reads out."""
    if campaign is None:
        return []

    def _(text: str) -> str:
        return translate(text, lang)

    out = []
    if campaign.min_spend_minor:
        out.append(f"{_('Minimum spend')} {money(campaign.min_spend_minor, campaign.currency)}")
    if campaign.valid_until is not None:
        until = local(campaign.valid_until).date().isoformat()
        out.append(f"{_('Valid until')} {until}")
    if campaign.item_level or campaign.exclude_categories or campaign.exclude_skus:
        out.append(_("Only on some items"))
    if campaign.new_customers_only:
        out.append(_("New customers only"))
    if campaign.tiers:
        out.append(_("Members only"))
    exclusive = campaign.stacking == "exclusive"
    out.append(
        _("Not combinable with other coupons") if exclusive else _("Combines with other coupons")
    )
    return out


def lang_of(request: Request) -> str:
    return normalize_lang(request.query_params.get("lang") or request.cookies.get(COOKIE_LANG))


def money(minor: int | None, currency: str | None = None) -> str:
    if minor is None:
        return ""
    return f"{currency + ' ' if currency else ''}{minor / 100:.2f}"


def parse_money(text: str) -> int:
    value = text.strip().replace(",", ".")
    whole, _, frac = value.partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()) or len(frac) > 2 or len(whole) > 9:
        raise ValueError("not an amount")
    return int(whole) * 100 + int((frac + "00")[:2])


class Hub:
    """Fans published decisions out to SSE clients. The daemon calls `publish` on its worker
    thread: it only hands the item to each client's event loop, never waits."""

    def __init__(self) -> None:
        self._clients: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]] = set()
        self._lock = threading.Lock()

    def publish(self, item: Any) -> None:
        with self._lock:
            clients = list(self._clients)
        for loop, queue in clients:
            try:
                loop.call_soon_threadsafe(_offer, queue, item)
            except RuntimeError:  # the client's loop is closed
                self.leave(loop, queue)

    def join(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]:
        client = (asyncio.get_running_loop(), asyncio.Queue[Any](maxsize=100))
        with self._lock:
            self._clients.add(client)
        return client

    def leave(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
        with self._lock:
            self._clients.discard((loop, queue))


def _offer(queue: asyncio.Queue[Any], item: Any) -> None:
    if not queue.full():  # a client that stopped reading loses events, not the daemon
        queue.put_nowait(item)


def router(daemon: Any) -> APIRouter:
    r = APIRouter()
    data = Path(daemon.cfg.terminal.data)
    mgr = Manager(data, wall=daemon.clock.now)
    reviews = Reviews(data)
    hub = Hub()
    flag_index = FlagIndex()
    daemon.listeners.append(hub.publish)
    r.state = {"manager": mgr, "hub": hub}  # type: ignore[attr-defined]

    def render(request: Request, name: str, **ctx: Any) -> HTMLResponse:
        lang = lang_of(request)
        ctx.update(
            request=request,
            lang=lang,
            _=lambda s: translate(s, lang),
            money=money,
            path=request.url.path,
            csrf_token=guard.csrf_token(request),  # every POST form carries it
        )
        resp = TEMPLATES.TemplateResponse(request, name, ctx)
        if request.query_params.get("lang"):
            resp.set_cookie(COOKIE_LANG, lang, max_age=365 * 86400, samesite="lax")
        return resp

    def sale(lang: str) -> dict[str, Any]:
        till = daemon.till
        window = daemon.cfg.terminal.void_window_s
        basket = till.basket

        def look(engine: Any) -> tuple[list[dict[str, Any]], bool, dict[str, Any] | None]:
            voidable, _ = engine.voidable(till.checkout_id, window)
            uses = engine.checkout_coupons(till.checkout_id)
            return uses, voidable is not None, best_of(engine, uses, basket, lang)

        uses, voidable, best = daemon.worker.call(look)  # one trip to the worker, not two
        live = {c["serial"] for c in uses if c["status"] in ("held", "committed")}
        coupons = [
            p.decision.to_dict(lang)
            for p in list(daemon.recent)
            if p.decision is not None
            and p.decision.accepted
            and p.decision.reason == Reason.OK
            and p.decision.checkout_id == till.checkout_id
            and p.decision.serial in live
        ]
        return {
            "total_minor": basket.total_minor if basket else None,
            "currency": daemon.cfg.terminal.currency,
            "coupons": coupons,
            "best": best if coupons else None,
            "pending": len(till.pending),
            "voidable": bool(coupons) and voidable,
        }

    def last(lang: str) -> tuple[int, dict[str, Any] | None]:
        recent = [p for p in list(daemon.recent) if p.decision is not None]
        number = daemon.published_count
        return number, (described(recent[-1], lang) if recent else None)

    def described(pub: Any, lang: str) -> dict[str, Any]:
        doc: dict[str, Any] = pub.to_dict(lang)
        campaign = pub.decision.campaign if pub.decision else None
        if campaign:
            # A plain read, not a worker call: it runs in the SSE stream's event loop too.
            # An import swaps the engine's whole ledger object, so the read sees one or
            # the other, never half.
            doc["conditions"] = conditions(daemon.engine.ledger.campaigns.get(campaign), lang)
        return doc

    def banners(status: dict[str, Any], lang: str) -> list[str]:
        """The cashier's warnings, translated."""
        out = []
        ledger = status.get("ledger") or {}
        age = ledger.get("age_s")
        warn_s = daemon.worker.call(lambda e: e.ledger.policy.stale_warn_hours * 3600.0)
        if ledger.get("problem") or (age is not None and age > warn_s):
            out.append(N_("The coupon ledger is out of date: connect the terminal to sync."))
        if not status.get("clock_ok", True):
            out.append(N_("The clock is not trusted: ask the manager to check the time."))
        texts = [translate(b, lang) for b in out]
        offline = offline_banner(status.get("sync") or {}, lang)
        return [offline, *texts] if offline else texts

    def faults(status: dict[str, Any], lang: str) -> list[str]:
        """Inputs that are not working, with their state in words (the driver's own detail
        is for the manager's device list)."""
        return [
            f"{name} ({device_state(h.get('state'), lang)})"
            for name, h in (status.get("inputs") or {}).items()
            if h.get("state") != "ok"
        ]

    # ------------------------------------------------------------------ cashier

    @r.get("/", response_class=HTMLResponse)
    def cashier(request: Request) -> HTMLResponse:
        return cashier_page(request)

    def cashier_page(request: Request, **extra: Any) -> HTMLResponse:
        lang = lang_of(request)
        status = daemon.status()
        number, pub = last(lang)
        return render(
            request,
            "cashier.html",
            number=number,
            pub=pub,
            sale=sale(lang),
            banners=banners(status, lang),
            faults=faults(status, lang),
            **extra,
        )

    def _done(request: Request) -> Response:
        if request.headers.get("HX-Request"):
            return Response(status_code=204)
        return RedirectResponse("/", status_code=303)

    @r.post("/scan")
    def scan(request: Request, code: str = Form(..., max_length=2000)) -> Response:
        code = code.strip()
        if code:
            daemon.on_scan(
                Scan(source="keypad", kind="keyboard", payload=code.encode(), at=daemon.clock.now())
            )
        return _done(request)

    @r.post("/basket")
    def basket(request: Request, total: str = Form("", max_length=20)) -> Response:
        if not total.strip():
            daemon.set_basket(None)
            return _done(request)
        try:
            minor = parse_money(total)
        except ValueError:
            # The total form is a plain form post: answer with the page and the reason.
            page = cashier_page(request, error=NOT_AN_AMOUNT, total=total)
            page.status_code = 400
            return page
        doc = {"currency": daemon.cfg.terminal.currency, "total_minor": minor}
        daemon.set_basket(Basket.from_dict(doc))
        return _done(request)

    @r.post("/void")
    def void(request: Request) -> Response:
        daemon.void_last()  # published: the screen shows the answer either way
        return _done(request)

    @r.get("/fragments/sale", response_class=HTMLResponse)
    def sale_fragment(request: Request) -> HTMLResponse:
        return render(request, "_sale.html", sale=sale(lang_of(request)))

    @r.get("/events")
    async def events(request: Request, after: int = 0) -> StreamingResponse:
        lang = lang_of(request)
        loop, queue = hub.join()
        backlog = [p for p in daemon.published_after(after) if p.decision is not None]
        env = TEMPLATES.env

        def frame(pub: Any) -> str:
            html = env.get_template("_decision.html").render(
                pub=described(pub, lang), _=lambda s: translate(s, lang), money=money
            )
            lines = "".join(f"data: {line}\n" for line in html.splitlines() or [""])
            payload = json.dumps(pub.to_dict(lang), ensure_ascii=False)
            return f"event: decision\n{lines}\nevent: decision-json\ndata: {payload}\n\n"

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 1000\n\n"
                for pub in backlog:
                    yield frame(pub)
                while not await request.is_disconnected():
                    try:
                        pub = await asyncio.wait_for(queue.get(), 1.0)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if pub.decision is not None:
                        yield frame(pub)
            finally:
                hub.leave(loop, queue)

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    # ------------------------------------------------------------------ manager

    def session_ok(request: Request) -> bool:
        return mgr.valid(request.cookies.get(COOKIE_SESSION))

    @r.get("/manager", response_class=HTMLResponse)
    def manager(request: Request) -> Response:
        if not session_ok(request):
            return render(request, "login.html", error=None, has_pin=mgr.has_pin())
        return manager_page(request)

    def manager_page(
        request: Request, status_code: int = 200, error: str | None = None, **extra: Any
    ) -> HTMLResponse:
        status = daemon.status()
        lang = lang_of(request)
        now = local(daemon.clock.now())
        page = render(
            request,
            "manager.html",
            stats=stats(lang, str(status.get("terminal") or "")),
            status=status,
            sync=sync_view(status.get("sync") or {}, lang),
            devices=devices(status, lang),
            today=now.date().isoformat(),
            overrides=[p.to_dict(lang) for p in daemon.awaiting_override()],
            cameras={d.name for d in daemon.inputs if hasattr(d, "snapshot")},
            notice=request.query_params.get("notice"),
            device_time=now.strftime("%Y-%m-%d %H:%M:%S %Z"),
            error=error,
            **extra,
        )
        page.status_code = status_code
        return page

    @r.post("/manager/login", response_class=HTMLResponse)
    def login(request: Request, pin: str = Form("", max_length=32)) -> Response:
        if mgr.locked_for() > 0:
            error = N_("Too many wrong PINs: try again in a few minutes.")
            return _login_error(request, error, 429)
        token = mgr.login(pin)
        if token is None:
            locked = mgr.locked_for() > 0
            error = (
                N_("Too many wrong PINs: try again in a few minutes.")
                if locked
                else N_("Wrong PIN.")
            )
            return _login_error(request, error, 429 if locked else 401)
        resp = RedirectResponse("/manager", status_code=303)
        resp.set_cookie(
            COOKIE_SESSION, token, httponly=True, samesite="strict", max_age=int(mgr.session_s)
        )
        return resp

    def _login_error(request: Request, error: str, code: int) -> Response:
        resp = render(request, "login.html", error=error, has_pin=mgr.has_pin())
        resp.status_code = code
        return resp

    @r.post("/manager/logout")
    def logout(request: Request) -> Response:
        mgr.logout(request.cookies.get(COOKIE_SESSION))
        resp = RedirectResponse("/manager", status_code=303)
        resp.delete_cookie(COOKIE_SESSION)
        return resp

    @r.post("/manager/flags/{seq}")
    def review(
        request: Request,
        seq: int,
        action: str = Form(...),
        note: str = Form("", max_length=500),
    ) -> Response:
        if not session_ok(request):
            return RedirectResponse("/manager", status_code=303)
        status = {"acknowledge": "acknowledged", "resolve": "resolved"}.get(action)
        if status is None:
            return manager_page(request, 400, BAD_ACTION)
        if not daemon.worker.call(lambda e: is_flag(seq)):
            return manager_page(request, 404, NO_SUCH_FLAG)
        reviews.set(seq, status, note, daemon.clock.now())
        return RedirectResponse("/manager#flags", status_code=303)

    @r.post("/manager/override/{number}")
    def override(request: Request, number: int) -> Response:
        """Approve a coupon refused for a stale ledger; the cashier screen shows the new
        decision at once."""
        if not session_ok(request):
            return RedirectResponse("/manager", status_code=303)
        decision = daemon.override(number, "kiosk-manager")
        where = "/manager#overrides" if decision is not None else "/manager?notice=gone#overrides"
        return RedirectResponse(where, status_code=303)

    @r.post("/manager/clock/reset")
    def clock_reset(request: Request) -> Response:
        """The manager has checked the time shown and confirms it: trusted time restarts
        from now (Engine.reset_clock_trust, journaled as a `clock_reset` flag)."""
        if not session_ok(request):
            return RedirectResponse("/manager", status_code=303)
        decision = daemon.worker.call(lambda e: e.reset_clock_trust("kiosk-manager"))
        notice = "clock-ok" if decision.accepted else "clock-refused"
        return RedirectResponse(f"/manager?notice={notice}#clock", status_code=303)

    @r.get("/manager/snapshot/{name}.jpg")
    def snapshot(request: Request, name: str) -> Response:
        """The camera's newest frame, so a manager can see what the camera sees."""
        if not session_ok(request):
            return Response(status_code=401)
        driver = next((d for d in daemon.inputs if d.name == name), None)
        jpeg = driver.snapshot() if driver is not None and hasattr(driver, "snapshot") else None
        if jpeg is None:
            return Response(status_code=404)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    @r.get("/manager/export.csv")
    def export(request: Request, since: str = "", until: str = "") -> Response:
        if not session_ok(request):
            return RedirectResponse("/manager", status_code=303)
        try:
            since_ms = _day_ms(since) if since else None
            until_ms = _day_ms(until, 1) if until else None
        except ValueError:
            return manager_page(request, 400, BAD_DATES, export_error=True)

        def job(engine: Any) -> str:
            out = io.StringIO()
            journal.export("csv", out, since_ms, until_ms)
            return out.getvalue()

        body = daemon.worker.call(job, 60.0)
        name = f"journal-{since or 'start'}-{until or 'now'}.csv"
        return Response(
            body,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    def stats(lang: str, terminal: str) -> dict[str, Any]:
        today = local(daemon.clock.now()).date()
        # Day boundaries in the device's time zone: bounds[i] starts day i of the week
        # (the 7th is today), bounds[7] ends today.
        bounds = [local_day_ms(today + dt.timedelta(days=i - 6)) for i in range(8)]
        week0, today0, end = bounds[0], bounds[6], bounds[7]

        def read(engine: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any]:
            return list(journal.rows(week0)), flag_index.update(engine), central_decisions(engine)

        rows, all_flags, central = daemon.worker.call(read, 30.0)  # one trip to the worker
        # Entries stamped after today (a clock that ran ahead) are in no chart's range.
        decided = [e for e in rows if e["kind"] == "redeem" and e["at_ms"] < end]
        done = reviews.all()

        def summary(entries: list[dict[str, Any]]) -> dict[str, Any]:
            ok = [e for e in entries if e["accepted"]]
            return {
                "count": len(ok),
                "discount": sum(e["discount_minor"] for e in ok),
                "rate": f"{100 * len(ok) / len(entries):.0f}%" if entries else "-",
            }

        today_rows = [e for e in decided if e["at_ms"] >= today0]
        hours = [0] * 24
        for e in today_rows:
            if e["accepted"]:
                hours[local(e["at_ms"] / 1000).hour] += 1
        days = [0] * 7
        for e in decided:
            if e["accepted"]:
                days[bisect.bisect_right(bounds, e["at_ms"]) - 1] += 1
        day_labels = [(today + dt.timedelta(days=i - 6)).strftime("%m-%d") for i in range(7)]
        refusals = Counter(e["reason"] for e in decided if not e["accepted"])
        # The week's flags, and every flag still open however old: an unreviewed flag never
        # drops off the screen.
        shown = [e for e in all_flags if e["at_ms"] >= week0 or done.get(str(e["seq"])) is None]
        matched: set[Any] = set()
        flags = []
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
        return {
            "today": summary(today_rows),
            "week": summary(decided),
            "currency": daemon.cfg.terminal.currency,
            "hours_svg": charts.bars(
                hours, [str(h) for h in range(24)], translate("Redemptions by hour (today)", lang)
            ),
            "days_svg": charts.bars(days, day_labels, translate("Redemptions per day", lang)),
            "refusals": [
                (reason, _reason_text(reason, lang), n) for reason, n in refusals.most_common()
            ],
            "flags": flags,
            "central_others": others,
        }

    def offline_banner(sync: dict[str, Any], lang: str) -> str | None:
        err = sync.get("last_error")
        if not sync.get("central") or not isinstance(err, dict):
            return None
        if err.get("kind") not in UNREACHABLE:
            return None
        since = when(sync.get("last_success"))
        if not since:
            return translate(OFFLINE_NEVER, lang)
        return translate(OFFLINE_SINCE, lang).format(time=since)

    def sync_view(sync: dict[str, Any], lang: str) -> dict[str, Any]:
        """The sync card's lines, formatted: local times, the offset with its sign, and the
        last round's error in words."""
        err = sync.get("last_error")
        if isinstance(err, str) and err:  # the daemon's own words (a stuck engine worker)
            err = {"message": err}
        out: dict[str, Any] = {
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

    def devices(status: dict[str, Any], lang: str) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "state": str(h.get("state") or ""),
                "text": device_state(h.get("state"), lang),
                "detail": str(h.get("detail") or ""),
            }
            for name, h in (status.get("inputs") or {}).items()
        ]

    def decision_view(d: dict[str, Any], lang: str) -> dict[str, Any]:
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

    return r


def _day_ms(day: str, later: int = 0) -> int:
    """The start of a local calendar day typed by the manager (YYYY-MM-DD), or of the day
    `later` days after it."""
    return local_day_ms(dt.date.fromisoformat(day) + dt.timedelta(days=later))


def device_state(state: Any, lang: str) -> str:
    text = str(state or "")
    return translate(DEVICE_STATES[text], lang) if text in DEVICE_STATES else text


def best_of(
    engine: Any, uses: list[dict[str, Any]], basket: Basket | None, lang: str
) -> dict[str, Any] | None:
    """The sale's coupons through the rules' best combination (the one the POS API answers
    with): what it picks, what it leaves out and why. An engine job."""
    campaigns = engine.ledger.campaigns
    held = [
        (c["serial"], campaigns[c["campaign"]])
        for c in uses
        if c["status"] in ("held", "committed") and c["campaign"] in campaigns
    ]
    if basket is None or not held:
        return None
    combo = best_combination(held, basket)
    names = {key: campaign.name or campaign.id for key, campaign in held}
    return {
        "discount_minor": combo.discount_minor,
        "pay_minor": max(0, basket.total_minor - combo.discount_minor),
        "currency": basket.currency,
        "picked": [
            {
                "serial": a.key,
                "name": names[a.key],
                "discount_minor": a.discount_minor,
                "gift": (a.campaign.gift_name or a.gift_sku) if a.gift_sku else None,
            }
            for a in combo.applied
        ],
        "left_out": [
            {"serial": key, "name": names.get(key, key), "reason": refusal.reason.message(lang)}
            for key, refusal in combo.refused.items()
        ],
    }


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
        self.flags: list[dict[str, Any]] = []

    def update(self, engine: Any = None) -> list[dict[str, Any]]:
        E = journal.Entry
        query = (
            E.select(E.seq, E.at_ms, E.reason, E.detail)
            .where((E.seq > self.after) & (E.kind == "flag"))
            .order_by(E.seq)
        )
        new = [
            {"seq": e.seq, "at_ms": e.at_ms, "reason": e.reason, "detail": e.detail} for e in query
        ]
        head = E.select(fn.MAX(E.seq)).scalar() or 0
        self.flags.extend(new)
        self.after = max(self.after, head)
        return list(self.flags)


def central_decisions(engine: Any) -> list[dict[str, Any]]:
    """An engine job: the central's decisions on flags, oldest first. Read defensively:
    coupons.sync_state.flag_decisions() has answered both newest-last with the central's own
    fields ("status") and newest-first with its own ("decision"); only objects pass."""
    try:
        items = sync_status.flag_decisions(engine)
    except (ValueError, TypeError, KeyError):
        return []
    if not isinstance(items, list):
        return []

    def number(value: Any) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok else 0.0

    out = [d for d in items if isinstance(d, dict)]
    # Decision ids (and times) grow: sorting on them gives one order whatever the source's.
    out.sort(key=lambda d: (number(d.get("at")), number(d.get("id"))))
    return out


def _flag_key(d: dict[str, Any]) -> Any:
    flag = d.get("flag")
    return flag if flag is not None else id(d)


def latest_per_flag(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest decision per central flag id, in the order they came."""
    latest: dict[Any, dict[str, Any]] = {}
    for d in decisions:
        latest.pop(_flag_key(d), None)
        latest[_flag_key(d)] = d
    return list(latest.values())


def central_for(
    decisions: list[dict[str, Any]], terminal: str, entry: dict[str, Any]
) -> dict[str, Any] | None:
    """The central's newest decision on this terminal's flag `entry` (the central knows it
    by terminal and journal seq; a central flag about the same seq has another kind)."""
    d: dict[str, Any]
    for d in reversed(decisions):
        ours = d.get("this_terminal") is True or (terminal and d.get("terminal") == terminal)
        if not ours or d.get("seq") != entry["seq"]:
            continue
        if d.get("kind") in (None, entry["reason"]):
            return d
    return None


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
