"""The cashier screen (/): the last decision, the running sale, code and total entry, the
void, and live decisions over Server-Sent Events (/events)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from coupons.engine import Engine
from coupons.i18n import N_, translate
from coupons.journal import LIVE_USES
from coupons.reasons import Reason
from coupons.rules import Basket, Campaign, Stacking, best_combination
from kiosk_ui import daemon_port
from kiosk_ui.daemon_port import Daemon, DaemonPort, Published
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
Client = tuple[asyncio.AbstractEventLoop, "asyncio.Queue[Published]"]


class Hub:
    """Fans published decisions out to SSE clients. The daemon calls `publish` on its worker
    thread: it only hands the item to each client's event loop, never waits."""

    def __init__(self) -> None:
        self._clients: set[Client] = set()
        self._lock = threading.Lock()

    def publish(self, item: Published) -> None:
        with self._lock:
            clients = list(self._clients)
        for loop, queue in clients:
            try:
                loop.call_soon_threadsafe(_offer, queue, item)
            except RuntimeError:  # the client's loop is closed
                self.leave(loop, queue)

    def join(self) -> Client:
        client = (asyncio.get_running_loop(), asyncio.Queue[Published](maxsize=100))
        with self._lock:
            self._clients.add(client)
        return client

    def leave(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Published]) -> None:
        with self._lock:
            self._clients.discard((loop, queue))


def _offer(queue: asyncio.Queue[Published], item: Published) -> None:
    if not queue.full():  # a client that stopped reading loses events, not the daemon
        queue.put_nowait(item)


def setup(app: FastAPI, daemon: DaemonPort) -> None:
    """The app's SSE hub, listening to the daemon's decisions (it never blocks the engine
    worker)."""
    hub = Hub()
    daemon.listeners.append(hub.publish)
    app.state.hub = hub


def get_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


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
    campaign = pub.decision.campaign if pub.decision else None
    if campaign:
        # A plain read, not a worker call: it runs in the SSE stream's event loop too.
        # An import swaps the engine's whole ledger object, so the read sees one or
        # the other, never half.
        campaigns = daemon_port.engine(daemon).ledger.campaigns
        doc["conditions"] = conditions(campaigns.get(campaign), lang)
    return doc


def last(daemon: DaemonPort, lang: str) -> tuple[int, dict[str, object] | None]:
    recent = [p for p in list(daemon.recent) if p.decision is not None]
    number = daemon.published_count
    return number, (described(daemon, recent[-1], lang) if recent else None)


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
    number, pub = last(daemon, lang)
    return render(
        request,
        "cashier.html",
        number=number,
        pub=pub,
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
def basket(request: Request, daemon: Daemon, total: str = Form("", max_length=20)) -> Response:
    if not total.strip():
        daemon.set_basket(None)
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
    request: Request, daemon: Daemon, hub: Annotated[Hub, Depends(get_hub)], after: int = 0
) -> StreamingResponse:
    lang = lang_of(request)
    loop, queue = hub.join()
    backlog = [p for p in daemon.published_after(after) if p.decision is not None]
    env = TEMPLATES.env

    def frame(pub: Published) -> str:
        html = env.get_template("_decision.html").render(
            pub=described(daemon, pub, lang), _=lambda s: translate(s, lang), money=money
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
