"""The cashier screen (/): the last decision while its sale is open (else "Ready for the next
coupon"), the running sale, code and total entry, the void, and live decisions over
Server-Sent Events (/events)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Annotated

from fastapi import APIRouter, FastAPI, Form, Header, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from coupons.engine import Engine
from coupons.i18n import N_, translate
from coupons.journal import LIVE_USES
from coupons.reasons import Reason
from coupons.rules import Basket, Campaign, Stacking, best_combination
from kiosk_ui import daemon_port
from kiosk_ui.daemon_port import Daemon, DaemonPort, Published
from kiosk_ui.hub import CashierHub, Hub, get_hub
from kiosk_ui.hub import setup as setup_hub
from kiosk_ui.pages import (
    NOT_AN_AMOUNT,
    OFFLINE_NEVER,
    OFFLINE_SINCE,
    TEMPLATES,
    UNREACHABLE,
    day,
    device_state,
    lang_of,
    money,
    parse_money,
    render,
    when,
)
from ports.scan import Scan

router = APIRouter()


def setup(app: FastAPI, daemon: DaemonPort) -> None:
    """The app's SSE hub (kiosk_ui.hub), listening to the daemon's decisions."""
    setup_hub(app, daemon)


def panel(decision: Mapping[str, object]) -> str:
    """The decision panel's kind (its class in _decision.html and kiosk.css): each has a
    mark and a word besides its colour, for cashiers who cannot tell red from green."""
    reason = decision.get("reason")
    if reason == Reason.VOIDED.value:
        return "void"
    if decision.get("accepted"):
        return "ok"
    if reason == Reason.NEEDS_TOTAL.value:
        return "wait"  # a good coupon waiting for the total: nothing to refuse
    if reason == Reason.ALREADY_APPLIED.value:
        return "same"
    return "no"


def conditions(campaign: Campaign | None, lang: str) -> list[str]:
    """The campaign's conditions in the few words a cashier reads out."""
    if campaign is None:
        return []

    def _(text: str) -> str:
        return translate(text, lang)

    out = []
    if campaign.min_spend_minor:
        least = money(campaign.min_spend_minor, campaign.currency, lang)
        out.append(f"{_('Minimum spend')} {least}")
    if campaign.valid_until is not None:
        out.append(f"{_('Valid until')} {day(campaign.valid_until, lang)}")
    if campaign.item_level or campaign.exclude_categories or campaign.exclude_skus:
        out.append(_("Only on some items"))
    if campaign.new_customers_only:
        out.append(_("New customers only"))
    if campaign.tiers:
        out.append(_("Members only"))
    exclusive = campaign.stacking is Stacking.EXCLUSIVE
    out.append(
        _("Not combinable with other coupons") if exclusive else _("Combines with other coupons")
    )
    return out


Use = Mapping[str, object]  # one coupon of a checkout (Engine.checkout_coupons)


def best_of(
    engine: Engine, uses: Sequence[Use], basket: Basket | None, lang: str
) -> dict[str, object] | None:
    """The sale's coupons through the rules' best combination (the one the POS API answers
    with): what it picks, what it leaves out and why. An engine job."""
    campaigns = engine.ledger.campaigns
    held = [
        (str(c["serial"]), campaigns[str(c["campaign"])])
        for c in uses
        if c["status"] in LIVE_USES and c["campaign"] in campaigns
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


def sale(daemon: DaemonPort, lang: str) -> dict[str, object]:
    """The running sale panel: its total, its accepted coupons and their best combination."""
    till = daemon.till
    window = daemon.cfg.terminal.void_window_s
    basket = till.basket

    def look(engine: Engine) -> tuple[Sequence[Use], bool, dict[str, object] | None]:
        voidable, _ = engine.voidable(till.checkout_id, window)
        uses: Sequence[Use] = engine.checkout_coupons(till.checkout_id)
        return uses, voidable is not None, best_of(engine, uses, basket, lang)

    # One trip to the worker, not two.
    uses, voidable, best = daemon_port.worker(daemon).call(look)
    live = {c["serial"] for c in uses if c["status"] in LIVE_USES}
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


def described(daemon: DaemonPort, pub: Published, lang: str) -> dict[str, object]:
    """A published decision for the decision panel, with its campaign's conditions."""
    doc = pub.to_dict(lang)
    decision = doc.get("decision")
    if isinstance(decision, Mapping):
        doc["panel"] = panel(decision)
    campaign = pub.decision.campaign if pub.decision else None
    if campaign:
        # A plain read, not a worker call: it runs in the SSE stream's event loop too.
        # An import swaps the engine's whole ledger object, so the read sees one or
        # the other, never half.
        campaigns = daemon_port.engine(daemon).ledger.campaigns
        doc["conditions"] = conditions(campaigns.get(campaign), lang)
    return doc


def last(daemon: DaemonPort, hub: Hub, lang: str) -> tuple[int, dict[str, object] | None]:
    number = daemon.published_count
    shown = hub.showing()
    return number, (described(daemon, shown, lang) if shown else None)


def offline_banner(sync: Mapping[str, object], lang: str) -> str | None:
    err = sync.get("last_error")
    if not sync.get("central") or not isinstance(err, dict):
        return None
    if err.get("kind") not in UNREACHABLE:
        return None
    since = when(sync.get("last_success"), lang)
    if not since:
        return translate(OFFLINE_NEVER, lang)
    return translate(OFFLINE_SINCE, lang).format(time=since)


def banners(daemon: DaemonPort, status: daemon_port.Status, lang: str) -> list[str]:
    """The cashier's warnings, translated."""
    out = []
    ledger = status.get("ledger") or {}
    age = ledger.get("age_s")
    warn_s = daemon_port.worker(daemon).call(lambda e: e.ledger.policy.stale_warn_hours * 3600.0)
    if ledger.get("problem") or (age is not None and age > warn_s):
        out.append(N_("The coupon ledger is out of date: connect the terminal to sync."))
    if not status.get("clock_ok", True):
        out.append(N_("The clock is not trusted: ask the manager to check the time."))
    texts = [translate(b, lang) for b in out]
    offline = offline_banner(status.get("sync") or {}, lang)
    return [offline, *texts] if offline else texts


def faults(status: daemon_port.Status, lang: str) -> list[str]:
    """Inputs that are not working, with their state in words (the driver's own detail
    is for the manager's device list)."""
    return [
        f"{name} ({device_state(h.get('state'), lang)})"
        for name, h in (status.get("inputs") or {}).items()
        if h.get("state") != "ok"
    ]


def cashier_page(request: Request, daemon: DaemonPort, **extra: object) -> HTMLResponse:
    lang = lang_of(request)
    status = daemon.status()
    number, pub = last(daemon, get_hub(request), lang)
    return render(
        request,
        "cashier.html",
        number=number,
        pub=pub,
        sound=daemon.cfg.kiosk.sound,
        sale=sale(daemon, lang),
        banners=banners(daemon, status, lang),
        faults=faults(status, lang),
        **extra,
    )


def _done(request: Request) -> Response:
    if request.headers.get("HX-Request"):
        return Response(status_code=204)
    return RedirectResponse("/", status_code=303)


@router.get("/", response_class=HTMLResponse)
def cashier(request: Request, daemon: Daemon) -> HTMLResponse:
    return cashier_page(request, daemon)


@router.post("/scan")
def scan(request: Request, daemon: Daemon, code: str = Form(..., max_length=2000)) -> Response:
    code = code.strip()
    if code:
        daemon.on_scan(
            Scan(source="keypad", kind="keyboard", payload=code.encode(), at=daemon.clock.now())
        )
    return _done(request)


@router.post("/basket")
def basket(
    request: Request, daemon: Daemon, hub: CashierHub, total: str = Form("", max_length=20)
) -> Response:
    """A new total (or none) starts a new sale: every screen is ready for its coupons."""
    if not total.strip():
        daemon.set_basket(None)
        hub.wake()
        return _done(request)
    try:
        minor = parse_money(total)
    except ValueError:
        # The total form is a plain form post: answer with the page and the reason.
        page = cashier_page(request, daemon, error=NOT_AN_AMOUNT, total=total)
        page.status_code = 400
        return page
    doc = {"currency": daemon.cfg.terminal.currency, "total_minor": minor}
    daemon.set_basket(Basket.from_dict(doc))
    hub.wake()
    return _done(request)


@router.post("/void")
def void(request: Request, daemon: Daemon) -> Response:
    daemon.void_last()  # published: the screen shows the answer either way
    return _done(request)


@router.get("/fragments/sale", response_class=HTMLResponse)
def sale_fragment(request: Request, daemon: Daemon) -> HTMLResponse:
    return render(request, "_sale.html", sale=sale(daemon, lang_of(request)))


@router.get("/events")
async def events(
    request: Request,
    daemon: Daemon,
    hub: CashierHub,
    after: int = 0,
    idle: bool = False,
    last_event_id: Annotated[int, Header()] = 0,
) -> StreamingResponse:
    """The decision panel, live: event `decision` (its HTML) and `decision-json` for each
    decision, with the decision's number as the event id (a reconnecting browser sends it
    back as Last-Event-ID: nothing shown twice), and event `idle` (the idle panel) when the
    sale on screen ends or its decision times out. A comment every second keeps it alive."""
    lang = lang_of(request)
    loop, queue = hub.join()
    env = TEMPLATES.env

    def panel_html(pub: Published | None) -> str:
        return env.get_template("_decision.html").render(
            pub=described(daemon, pub, lang) if pub else None,
            _=lambda s: translate(s, lang),
            money=money,
        )

    def frame(pub: Published) -> str:
        payload = json.dumps(pub.to_dict(lang), ensure_ascii=False)
        return (
            f"id: {pub.number}\nevent: decision\n{_data(panel_html(pub))}\n"
            f"event: decision-json\ndata: {payload}\n\n"
        )

    idle_frame = f"event: idle\n{_data(panel_html(None))}\n"

    async def stream() -> AsyncIterator[str]:
        # The page showed decisions up to `after` (idle, or not), and the browser has had
        # those up to Last-Event-ID since (then it may show one: send idle again if due).
        sent, idle_shown = max(after, last_event_id), idle and last_event_id <= after
        try:
            yield "retry: 1000\n\n"
            while True:
                shown = hub.showing()
                if shown is None and not idle_shown:
                    yield idle_frame
                    idle_shown = True
                elif shown is not None and shown.number > sent:
                    yield frame(shown)  # one missed while connecting or queued behind
                    sent, idle_shown = shown.number, False
                if await request.is_disconnected():
                    return
                try:
                    pub = await asyncio.wait_for(queue.get(), 1.0)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if pub is not None and pub.decision is not None and pub.number > sent:
                    yield frame(pub)
                    sent, idle_shown = pub.number, False
        finally:
            hub.leave(loop, queue)

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


def _data(html: str) -> str:
    return "".join(f"data: {line}\n" for line in html.splitlines() or [""])
