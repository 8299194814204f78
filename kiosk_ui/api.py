"""The POS integration API under /api/v1: tills open a checkout with its basket, apply
coupons (the engine's hold), read the best combination, and commit, release or reverse.
Bearer token per till, Idempotency-Key on every POST, errors as RFC 9457 problem+json
(each with a reason code and the cashier's sentence); numbers are JSON integers only.
The checkouts themselves, their states and their idempotency are coupons/checkout.py's,
run on the daemon's one engine worker: this module reads and writes no table."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from coupons import checkout, problem, tokens
from coupons.decision import Decision
from coupons.engine import Engine
from coupons.i18n import N_, translate
from coupons.reasons import Reason
from coupons.rules import Basket, InputError
from kiosk_ui import daemon_port
from kiosk_ui.daemon_port import Daemon, DaemonPort, get_daemon
from kiosk_ui.hub import CashierHub
from kiosk_ui.tills import Tills

log = logging.getLogger(__name__)
T = TypeVar("T")

PREFIX = "/api/v1"
API_VERSION = "1.4"  # the contract in docs/pos-api.md ("Changes")
MAX_BODY = 64 * 1024
# Problem documents are coupons.problem's (one shape for the kiosk and the central).
PROBLEM = problem.MEDIA_TYPE
TITLES = problem.TITLES
# The problem code of an HTTP error raised by routing (no route, wrong method, ...).
HTTP_CODES = {404: "not-found", 405: "method-not-allowed", 500: "internal-error"}
KEY_PATTERN = r"^[\x21-\x7e]{1,128}$"
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
# Engine answers to a commit/release/reverse that are the checkout's state, not a coupon's.
CONFLICTS = {
    Reason.OPERATION_CONFLICT,
    Reason.UNKNOWN_CHECKOUT,
    Reason.NOT_COMMITTED,
    Reason.HOLD_EXPIRED,
}
UNAVAILABLE = {Reason.STORAGE_FAILURE, Reason.INTERNAL_ERROR}
# The sentence for each problem the API raises itself (an engine answer carries its
# reason's own sentence): what the cashier reads on the till's screen.
CALL_SUPPORT = N_("The till asked for something this terminal does not offer. Please call support.")
PROBLEM_MESSAGES = {
    "bad-request": N_(
        "The till sent a request this terminal cannot read. Please try again or call support."
    ),
    "unauthorized": N_(
        "This till is not registered with the coupon terminal. Ask a manager to set it up."
    ),
    "not-found": CALL_SUPPORT,
    "method-not-allowed": CALL_SUPPORT,
    "too-large": N_("The till sent too much at once. Please split the sale or call support."),
    "invalid": N_(
        "The till sent sale details this terminal cannot accept. Please check the sale "
        "and try again."
    ),
    "invalid-basket": N_(
        "This terminal cannot accept the items or the total of this sale. Please check them."
    ),
}
# Any other refusal (a 4xx the API did not name above).
REFUSED = N_("This terminal refused the till's request. Please call support.")


# ---------------------------------------------------------------- documents


class _Doc(BaseModel):
    # Strict: a number must be a JSON integer (not true, 10000.0 or "100") and a flag a
    # JSON boolean, as the CLI's own parsing refuses them; a guess at what the till meant
    # could put the wrong amount on a coupon.
    model_config = ConfigDict(extra="forbid", strict=True)


class BasketLine(_Doc):
    # Bounded so that a line (quantity x price), and 500 of them, stay far inside SQLite's
    # 64-bit integers: at most 500 x 10^5 x 10^10 = 5 x 10^17.
    sku: str = Field(max_length=64)
    category: str | None = Field(None, max_length=64)
    quantity: int = Field(1, ge=1, le=100_000)
    unit_price_minor: int = Field(ge=0, le=10**10)
    name: str | None = Field(None, max_length=200)


class Customer(_Doc):
    ref: str | None = Field(None, max_length=64, description="customer reference (hex)")
    tier: str | None = Field(None, max_length=32)
    new: bool = False


class BasketDoc(_Doc):
    """Lines, or only `total_minor` (a till that sends totals only)."""

    currency: str = Field(pattern=r"^[A-Za-z]{3}$", description="ISO 4217")
    lines: list[BasketLine] | None = Field(None, max_length=500)
    total_minor: int | None = Field(None, ge=0, le=10**12)
    customer: Customer | None = None


class OpenCheckout(_Doc):
    basket: BasketDoc
    cashier: str | None = Field(None, max_length=64, description="journaled with each step")


class ApplyCoupon(_Doc):
    code: str = Field(
        min_length=1, max_length=4096, description="a scanned CPN1: token or a typed code"
    )


class CouponOut(BaseModel):
    serial: str
    campaign: str
    status: str  # held, committed, released, expired, reversed
    discount_minor: int
    currency: str
    gift_sku: str | None = None


class DecisionOut(BaseModel):
    accepted: bool
    reason: str
    message: str = Field(description="the sentence the cashier says")
    discount_minor: int
    currency: str | None = None
    campaign: str | None = None
    campaign_name: str | None = None
    serial: str | None = None
    journal_seq: int | None = None
    gift_sku: str | None = None
    checkout_id: str | None = None
    detail: str = ""
    warnings: list[str] = []
    coupons: list[CouponOut] = []
    replayed: bool = False
    used_at: str | None = Field(
        default=None, description="the till of this store that already used the coupon"
    )


class BestOut(BaseModel):
    discount_minor: int
    value_minor: int
    coupons: list[str] = Field(description="serials to use together")
    refused: dict[str, str] = Field(description="serial -> reason it is left out")


class CheckoutOut(BaseModel):
    checkout_id: str
    state: str  # open, committed, released, reversed, or unknown after a restart
    basket_total_minor: int | None = None
    currency: str | None = None
    coupons: list[CouponOut]
    best: BestOut | None = None


class ApplyOut(BaseModel):
    decision: DecisionOut
    coupons: list[CouponOut]


class ProblemDoc(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    code: str
    reason: str = Field(
        description="the engine's reason code when it decided, else `code` with underscores"
    )
    message: str = Field(description="the sentence the cashier reads, in the terminal's language")


def _problems(*codes: int) -> dict[int | str, dict[str, object]]:
    return {
        c: {"description": TITLES[c], "model": ProblemDoc, "content": {PROBLEM: {}}} for c in codes
    }


# ---------------------------------------------------------------- errors


class Problem(Exception):
    """An error answer, always with a reason code and the cashier's sentence: the engine's
    when `decision` is given, else `code` with underscores and PROBLEM_MESSAGES' sentence;
    `message` (a marked msgid) replaces the sentence."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        decision: Decision | None = None,
        message: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.decision = status, code, detail, decision
        self.message, self.headers = message, headers

    def response(self, instance: str, lang: str) -> Response:
        reason = self.code.replace("-", "_")
        if self.decision is not None:
            reason = self.decision.reason.value
            message = self.decision.reason.message(lang)
        elif self.status >= 500:
            message = Reason.INTERNAL_ERROR.message(lang)
        else:
            message = translate(PROBLEM_MESSAGES.get(self.code, REFUSED), lang)
        if self.message is not None:
            message = translate(self.message, lang)
        doc = problem.Problem(
            self.status, self.code, self.detail, instance=instance, reason=reason, message=message
        ).to_dict()
        headers = dict(self.headers or {})
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return Response(json.dumps(doc), self.status, headers, media_type=PROBLEM)


def http_problem(status: int, detail: object, headers: Mapping[str, str] | None = None) -> Problem:
    """An HTTP error from routing or the framework (404 no such route, 405 wrong method)
    as a problem; its headers (Allow on a 405) are kept."""
    if not isinstance(detail, str) or not detail:
        detail = problem.title_for(status)
    return Problem(status, HTTP_CODES.get(status, f"http-{status}"), detail, headers=headers)


def under_api(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def _validation(exc: RequestValidationError) -> Problem:
    errors = exc.errors()
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    msg = f"{where}: {first.get('msg', 'invalid')}"
    if first.get("type") == "json_invalid" or (first.get("loc") or ("",))[0] == "header":
        return Problem(400, "bad-request", msg)
    return Problem(422, "invalid", msg)


async def _read_limited(request: Request) -> None:
    """The body, at most MAX_BODY bytes, cached where FastAPI will look for it."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise Problem(413, "too-large", f"bodies are at most {MAX_BODY} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise Problem(413, "too-large", f"bodies are at most {MAX_BODY} bytes")
    request._body = body


# ---------------------------------------------------------------- per-app state


@dataclass
class PosState:
    """The app's POS state: the checkouts' in-memory holds and the tills' tokens."""

    checkouts: checkout.Checkouts
    tills: Tills


def setup(app: FastAPI, daemon: DaemonPort) -> None:
    """Prune old checkouts on the daemon's worker and put the POS state on app.state."""
    daemon_port.worker(daemon).call(checkout.prune, 60.0)
    app.state.pos = PosState(checkout.Checkouts(), Tills(Path(daemon.cfg.terminal.data)))


def get_pos(request: Request) -> PosState:
    pos: PosState = request.app.state.pos
    return pos


def _lang(request: Request) -> str:
    return str(get_daemon(request).cfg.terminal.lang)


def authenticated_till(request: Request) -> str:
    """The till whose bearer token came with the request, or a 401. PosRoute asks first,
    before the body is read (a stranger gets 401, never 413 or 422); the routes' dependency
    then finds the answer on request.state."""
    till: str | None = getattr(request.state, "till", None)
    if till is None:
        till = get_pos(request).tills.till_for(request.headers.get("authorization"))
        if till is None:
            raise Problem(401, "unauthorized", "a valid till bearer token is required")
        request.state.till = till
    return till


Pos = Annotated[PosState, Depends(get_pos)]
TillName = Annotated[str, Depends(authenticated_till)]


class PosRoute(APIRoute):
    """Authenticate, bound the body, and turn every error into problem+json (a router
    cannot carry exception handlers, so the route does)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[object, None, Response]]:
        inner = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                authenticated_till(request)
                if request.method == "POST":
                    await _read_limited(request)
                response: Response = await inner(request)
                return response
            except Problem as exc:
                return exc.response(request.url.path, _lang(request))
            except RequestValidationError as exc:
                return _validation(exc).response(request.url.path, _lang(request))
            except HTTPException as exc:
                failed = http_problem(exc.status_code, exc.detail, exc.headers)
                return failed.response(request.url.path, _lang(request))
            except Exception:
                # A fault in a route is still an answer the till can parse.
                log.exception("POS API %s %s failed", request.method, request.url.path)
                failed = Problem(500, "internal-error", "the terminal could not answer")
                return failed.response(request.url.path, _lang(request))

        return handler


bearer = HTTPBearer(auto_error=False, description="the till's token (redeem pos-token)")
router = APIRouter(
    prefix=PREFIX,
    tags=["pos"],
    route_class=PosRoute,
    dependencies=[Depends(bearer)],
    responses=_problems(401),
)
Key = Header(
    alias="Idempotency-Key",
    pattern=KEY_PATTERN,
    description="unique per request; a retry with the same key gets the same answer",
)
CheckoutId = PathParam(pattern=ID_PATTERN)


# ---------------------------------------------------------------- routes


def _fingerprint(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def _refused(exc: checkout.Refused) -> Problem:
    status = 404 if exc.why is checkout.Why.UNKNOWN else 409
    # The sentence for the checkout's state ("This sale was refunded; it cannot be paid.")
    # where the reason's own would be untrue.
    return Problem(
        status, exc.why.value, exc.detail, Decision(False, exc.reason), message=exc.words
    )


def _call(daemon: DaemonPort, job: Callable[[Engine], T]) -> T:
    """`job` on the daemon's one engine worker, its refusals and faults as problems."""
    try:
        return daemon_port.worker(daemon).call(job)
    except checkout.Refused as exc:  # decided on the worker, in order with the others
        raise _refused(exc) from None
    except Exception as exc:
        log.exception("POS API engine call failed")
        raise Problem(
            503,
            "unavailable",
            "the terminal cannot answer right now",
            Decision(False, Reason.INTERNAL_ERROR),
        ) from exc


@router.post(
    "/checkouts",
    status_code=201,
    response_model=CheckoutOut,
    summary="Open a checkout with its basket",
    responses=_problems(400, 409, 413, 422),
)
def open_checkout(
    daemon: Daemon, till: TillName, body: OpenCheckout, idempotency_key: str = Key
) -> dict[str, object]:
    doc = body.basket.model_dump(exclude_none=True)
    try:
        basket = Basket.from_dict(doc)
    except InputError as exc:
        raise Problem(422, "invalid-basket", str(exc)) from None
    op = f"{till}:{idempotency_key}"
    fp = _fingerprint("open", json.dumps(body.model_dump(), sort_keys=True))
    # A storage fault is a 503: the till retries with the same key.
    return _call(
        daemon,
        lambda engine: checkout.open_checkout(engine, till, basket, doc, body.cashier, op, fp),
    )


def _apply_and_publish(
    engine: Engine,
    daemon: DaemonPort,
    pos: PosState,
    till: str,
    checkout_id: str,
    code: str,
    op: str,
    arrived: float,
) -> checkout.Applied:
    """Runs on the worker: the hold, and its decision published in order with the rest."""
    applied = pos.checkouts.apply(engine, till, checkout_id, code, op)
    if not applied.decision.replayed:  # the cashier screen and /metrics see it too
        daemon.publish(applied.decision, f"pos:{till}", "pos", arrived)
    return applied


@router.post(
    "/checkouts/{checkout_id}/coupons",
    response_model=ApplyOut,
    summary="Apply a coupon (token or typed code): held until commit or release",
    description="A refused coupon is not an HTTP error: 200 with decision.accepted false, "
    "its reason code and the sentence the cashier says.",
    responses=_problems(400, 404, 409, 413, 422, 503),
)
def apply_coupon(
    daemon: Daemon,
    pos: Pos,
    till: TillName,
    body: ApplyCoupon,
    checkout_id: str = CheckoutId,
    idempotency_key: str = Key,
) -> dict[str, object]:
    code = tokens.extract(body.code) or body.code.strip()
    op, arrived = f"{till}:{idempotency_key}", time.monotonic()
    applied = _call(
        daemon,
        lambda engine: _apply_and_publish(
            engine, daemon, pos, till, checkout_id, code, op, arrived
        ),
    )
    decision = applied.decision
    if decision.reason in UNAVAILABLE:
        raise Problem(503, "unavailable", decision.detail or "try again", decision)
    if decision.reason is Reason.ALREADY_APPLIED:
        # This very checkout holds it: the same sentence as on the cashier screen. The
        # engine journaled the attempt as it journals every refusal; the hold is as it was.
        raise Problem(
            409,
            "already-applied",
            f"coupon {decision.serial} of campaign {decision.campaign} is already applied "
            f"to checkout {checkout_id}",
            decision,
        )
    lang = str(daemon.cfg.terminal.lang)
    return {"decision": decision.to_dict(lang), "coupons": applied.coupons}


@router.get(
    "/checkouts/{checkout_id}",
    response_model=CheckoutOut,
    summary="The checkout's coupons and the best combination of them for its basket",
    responses=_problems(404, 422, 503),
)
def get_checkout(
    daemon: Daemon, till: TillName, checkout_id: str = CheckoutId
) -> dict[str, object]:
    return _call(daemon, lambda engine: checkout.read(engine, till, checkout_id))


def _step(
    daemon: DaemonPort, till: str, checkout_id: str, kind: checkout.Step, key: str
) -> dict[str, object]:
    """Commit, release or reverse the checkout: the decision, or the problem it is."""
    op = f"{till}:{key}"
    decision = _call(daemon, lambda engine: checkout.step(engine, till, checkout_id, kind, op))
    if decision.reason in UNAVAILABLE:
        raise Problem(503, "unavailable", decision.detail or "try again", decision)
    if not decision.accepted:
        status = 409 if decision.reason in CONFLICTS else 422
        detail = decision.detail or f"cannot {kind} checkout {checkout_id}"
        raise Problem(status, decision.reason.value.replace("_", "-"), detail, decision)
    # The step's own sentence ("Payment recorded. ..."), decided with the answer.
    return decision.to_dict(str(daemon.cfg.terminal.lang))


STEP_ERRORS = _problems(400, 404, 409, 413, 422, 503)


@router.post(
    "/checkouts/{checkout_id}/commit",
    response_model=DecisionOut,
    summary="Payment done: the held coupons are redeemed",
    responses=STEP_ERRORS,
)
def commit_checkout(
    daemon: Daemon,
    hub: CashierHub,
    till: TillName,
    checkout_id: str = CheckoutId,
    idempotency_key: str = Key,
) -> dict[str, object]:
    answer = _step(daemon, till, checkout_id, checkout.Step.COMMIT, idempotency_key)
    hub.sale_ended(checkout_id)  # the sale is over: the cashier screen is ready for the next
    return answer


@router.post(
    "/checkouts/{checkout_id}/release",
    response_model=DecisionOut,
    summary="Checkout cancelled: the held coupons are free again",
    responses=STEP_ERRORS,
)
def release_checkout(
    daemon: Daemon,
    hub: CashierHub,
    till: TillName,
    checkout_id: str = CheckoutId,
    idempotency_key: str = Key,
) -> dict[str, object]:
    answer = _step(daemon, till, checkout_id, checkout.Step.RELEASE, idempotency_key)
    hub.sale_ended(checkout_id)  # the sale is over: the cashier screen is ready for the next
    return answer


@router.post(
    "/checkouts/{checkout_id}/reverse",
    response_model=DecisionOut,
    summary="Refund: the redeemed coupons are reversed",
    responses=STEP_ERRORS,
)
def reverse_checkout(
    daemon: Daemon, till: TillName, checkout_id: str = CheckoutId, idempotency_key: str = Key
) -> dict[str, object]:
    return _step(daemon, till, checkout_id, checkout.Step.REVERSE, idempotency_key)
