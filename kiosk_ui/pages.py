"""The kiosk's screens: the cashier screen (/), live decisions over SSE (/events), the
manager dashboard (/manager) behind a PIN, and the journal export."""

from __future__ import annotations

import asyncio
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

from drivers.scan import Scan
from kiosk_ui import charts
from kiosk_ui.manager import Manager, Reviews
from terminal import journal
from terminal.i18n import N_, normalize_lang, translate
from terminal.reasons import Reason
from terminal.rules import Basket

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
COOKIE_LANG, COOKIE_SESSION = "lang", "kiosk_manager"
DAY_MS = 86_400_000

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
)


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
        until = dt.datetime.fromtimestamp(campaign.valid_until, dt.UTC).date().isoformat()
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
    mgr = Manager(data)
    reviews = Reviews(data)
    hub = Hub()
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
        )
        resp = TEMPLATES.TemplateResponse(request, name, ctx)
        if request.query_params.get("lang"):
            resp.set_cookie(COOKIE_LANG, lang, max_age=365 * 86400, samesite="lax")
        return resp

    def sale(lang: str) -> dict[str, Any]:
        till = daemon.till
        window = daemon.cfg.terminal.void_window_s

        def look(engine: Any) -> tuple[list[dict[str, Any]], bool]:
            voidable, _ = engine.voidable(till.checkout_id, window)
            return engine.checkout_coupons(till.checkout_id), voidable is not None

        uses, voidable = daemon.worker.call(look)  # one trip to the worker, not two
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
        basket = till.basket
        return {
            "total_minor": basket.total_minor if basket else None,
            "currency": daemon.cfg.terminal.currency,
            "coupons": coupons,
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

    def banners(status: dict[str, Any]) -> list[str]:
        out = []
        ledger = status.get("ledger") or {}
        age = ledger.get("age_s")
        warn_s = daemon.worker.call(lambda e: e.ledger.policy.stale_warn_hours * 3600.0)
        if ledger.get("problem") or (age is not None and age > warn_s):
            out.append(N_("The coupon ledger is out of date: connect the terminal to sync."))
        if not status.get("clock_ok", True):
            out.append(N_("The clock is not trusted: ask the manager to check the time."))
        return out

    def faults(status: dict[str, Any]) -> list[str]:
        return [
            f"{name}: {h.get('detail') or h.get('state')}"
            for name, h in (status.get("inputs") or {}).items()
            if h.get("state") != "ok"
        ]

    # ------------------------------------------------------------------ cashier

    @r.get("/", response_class=HTMLResponse)
    def cashier(request: Request) -> HTMLResponse:
        lang = lang_of(request)
        status = daemon.status()
        number, pub = last(lang)
        return render(
            request,
            "cashier.html",
            number=number,
            pub=pub,
            sale=sale(lang),
            banners=banners(status),
            faults=faults(status),
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
            return Response("not an amount", status_code=400)
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
        status = daemon.status()
        lang = lang_of(request)
        return render(
            request,
            "manager.html",
            stats=stats(lang),
            status=status,
            faults=faults(status),
            today=dt.datetime.fromtimestamp(daemon.clock.now(), dt.UTC).date().isoformat(),
            overrides=[p.to_dict(lang) for p in daemon.awaiting_override()],
            cameras={d.name for d in daemon.inputs if hasattr(d, "snapshot")},
            notice=request.query_params.get("notice"),
            device_time=dt.datetime.fromtimestamp(daemon.clock.now(), dt.UTC).strftime(
                "%Y-%m-%d %H:%M:%S UTC"
            ),
        )

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
            return Response("unknown action", status_code=400)
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
            until_ms = _day_ms(until) + DAY_MS if until else None
        except ValueError:
            return Response("dates must be YYYY-MM-DD", status_code=400)

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

    def stats(lang: str) -> dict[str, Any]:
        now_ms = int(daemon.clock.now() * 1000)
        today0 = now_ms - now_ms % DAY_MS
        week0 = today0 - 6 * DAY_MS
        rows = daemon.worker.call(lambda engine: list(journal.rows(week0)), 30.0)
        # Entries stamped after today (a clock that ran ahead) are in no chart's range.
        rows = [e for e in rows if e["at_ms"] < today0 + DAY_MS]
        decided = [e for e in rows if e["kind"] == "redeem"]
        flags = [e for e in rows if e["kind"] == "flag"]
        done = reviews.all()

        def summary(entries: list[dict[str, Any]]) -> dict[str, Any]:
            ok = [e for e in entries if e["accepted"]]
            return {
                "count": len(ok),
                "discount": sum(e["discount_minor"] for e in ok),
                "rate": f"{100 * len(ok) / len(entries):.0f}%" if entries else "-",
            }

        today = [e for e in decided if e["at_ms"] >= today0]
        hours = [0] * 24
        for e in today:
            if e["accepted"]:
                hours[(e["at_ms"] - today0) // 3_600_000] += 1
        days = [0] * 7
        for e in decided:
            if e["accepted"]:
                days[min(6, (e["at_ms"] - week0) // DAY_MS)] += 1
        day_labels = [
            dt.datetime.fromtimestamp((week0 + i * DAY_MS) / 1000, dt.UTC).strftime("%m-%d")
            for i in range(7)
        ]
        refusals = Counter(e["reason"] for e in decided if not e["accepted"])
        return {
            "today": summary(today),
            "week": summary(decided),
            "currency": daemon.cfg.terminal.currency,
            "hours_svg": charts.bars(
                hours, [str(h) for h in range(24)], translate("Redemptions by hour (today)", lang)
            ),
            "days_svg": charts.bars(days, day_labels, translate("Redemptions per day", lang)),
            "refusals": [
                (reason, _reason_text(reason, lang), n) for reason, n in refusals.most_common()
            ],
            "flags": [
                {
                    "seq": e["seq"],
                    "at": dt.datetime.fromtimestamp(e["at_ms"] / 1000, dt.UTC).strftime(
                        "%Y-%m-%d %H:%M"
                    ),
                    "kind": e["reason"],
                    "detail": _flag_detail(e["detail"]),
                    "review": done.get(str(e["seq"])),
                }
                for e in reversed(flags)
            ],
        }

    return r


def _day_ms(day: str) -> int:
    d = dt.date.fromisoformat(day)
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp() * 1000)


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
