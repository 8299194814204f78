"""A new campaign from a form (issue 14, item 3): the fields a marketer fills in, read into a
campaign document and checked by the same rules code the tills use (`Campaign.from_dict`);
a refusal is shown beside the field it names, nothing is saved and the attempt is audited.
Permission campaigns.write; the campaign added is audited with the viewer as actor. The
edit form and the preview (campaign_pages.py) read the same fields through this module."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation

from babel.numbers import get_currency_precision
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from coupons.i18n import N_
from coupons.rules import Campaign, InputError
from sync.central import users
from sync.central.console import pages
from sync.central.console.session import Viewer
from sync.central.context import services
from sync.central.models import CampaignRow
from sync.central.store import Central

router = APIRouter(include_in_schema=False)

KINDS = ("fixed", "threshold", "percent", "gift")
STACKINGS = ("exclusive", "group", "any")
# The form's fields, in the order the page shows them.
FIELDS = (
    "id", "name", "kind", "currency", "amount", "min_spend", "percent", "cap",
    "gift_sku", "valid_from", "valid_until", "stores", "uses_per_customer", "budget_count",
    "budget_money", "stacking", "stack_group",
)  # fmt: skip
# Which form field a refusal of a document field belongs beside ("": the page's top).
FIELD_OF = {
    "": "",
    "id": "id",
    "name": "name",
    "kind": "kind",
    "currency": "currency",
    "amount_minor": "amount",
    "gift_value_minor": "amount",
    "min_spend_minor": "min_spend",
    "percent": "percent",
    "percent_bp": "percent",
    "cap_minor": "cap",
    "gift_sku": "gift_sku",
    "valid_from": "valid_from",
    "valid_until": "valid_until",
    "stores": "stores",
    "uses_per_customer": "uses_per_customer",
    "budget_count": "budget_count",
    "budget_minor": "budget_money",
    "stacking": "stacking",
    "stack_group": "stack_group",
}
# The document fields the form writes; an edit keeps every other field of the stored one.
FORM_KEYS = frozenset(FIELD_OF) - {"", "id"}
LABELS = {
    "id": N_("Campaign id"),
    "name": N_("Name"),
    "kind": N_("Kind"),
    "currency": N_("Currency"),
    "amount": N_("Amount off (or gift value)"),
    "min_spend": N_("Minimum spend"),
    "percent": N_("Percent off"),
    "cap": N_("Most off per sale"),
    "gift_sku": N_("Gift SKU"),
    "valid_from": N_("Valid from"),
    "valid_until": N_("Valid until"),
    "stores": N_("Stores (comma-separated; empty: every store)"),
    "uses_per_customer": N_("Uses per customer"),
    "budget_count": N_("Budget (number of uses)"),
    "budget_money": N_("Budget (money)"),
    "stacking": N_("Combines with other coupons"),
    "stack_group": N_("Stacking group"),
}
KIND_NAMES = {
    "fixed": N_("fixed amount off"),
    "threshold": N_("amount off above a minimum spend"),
    "percent": N_("percent off"),
    "gift": N_("free gift"),
}
STACKING_NAMES = {
    "exclusive": N_("never (exclusive)"),
    "group": N_("only with its stacking group"),
    "any": N_("with any coupon that allows it"),
}
NEW_CAMPAIGN = N_("New campaign")
SAVE = N_("Add the campaign")
NOT_A_NUMBER = N_("Not an amount: write it like 20 or 20.50.")
NOT_A_DATE = N_("Not a date: write it as YYYY-MM-DD.")
NOT_A_COUNT = N_("Not a whole number.")
ID_TAKEN = N_("A campaign with this id exists already.")
_QUOTED = re.compile(r"'([a-z_]+)'")


class FieldError(Exception):
    def __init__(self, field: str, text: str) -> None:
        super().__init__(text)
        self.field = field
        self.text = text


def _minor(form: Mapping[str, str], field: str, currency: str) -> int | None:
    text = form.get(field, "").strip().replace(",", "")
    if not text:
        return None
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise FieldError(field, NOT_A_NUMBER) from None
    exponent = get_currency_precision(currency) if len(currency) == 3 else 2
    minor = amount.scaleb(exponent)
    if minor != minor.to_integral_value() or not amount.is_finite():
        raise FieldError(field, NOT_A_NUMBER)
    return int(minor)


def _count(form: Mapping[str, str], field: str) -> int | None:
    text = form.get(field, "").strip()
    if not text:
        return None
    if not text.isascii() or not text.isdigit():
        raise FieldError(field, NOT_A_COUNT)
    return int(text)


def _day(form: Mapping[str, str], field: str, end: bool) -> int | None:
    text = form.get(field, "").strip()
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise FieldError(field, NOT_A_DATE) from None
    start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
    return int(start) + (24 * 3600 - 1 if end else 0)  # "until" means to the day's end


def document(form: Mapping[str, str]) -> dict[str, object]:
    """The campaign document the form describes (still to be checked by from_dict)."""
    currency = form.get("currency", "").strip().upper()
    kind = form.get("kind", "").strip()
    doc: dict[str, object] = {"id": form.get("id", "").strip(), "kind": kind, "currency": currency}
    for field in ("name", "gift_sku", "stack_group"):
        if form.get(field, "").strip():
            doc[field] = form[field].strip()
    if form.get("stacking", "").strip():
        doc["stacking"] = form["stacking"].strip()
    for field, key in (
        ("amount", "gift_value_minor" if kind == "gift" else "amount_minor"),
        ("min_spend", "min_spend_minor"),
        ("cap", "cap_minor"),
        ("budget_money", "budget_minor"),
    ):
        value = _minor(form, field, currency)
        if value is not None:
            doc[key] = value
    percent = form.get("percent", "").strip()
    if percent:
        try:
            doc["percent_bp"] = int(Decimal(percent) * 100)
        except (InvalidOperation, ValueError):  # ValueError: NaN or Infinity
            raise FieldError("percent", NOT_A_NUMBER) from None
    for field, end in (("valid_from", False), ("valid_until", True)):
        moment = _day(form, field, end)
        if moment is not None:
            doc[field] = moment
    stores = [s.strip() for s in form.get("stores", "").split(",") if s.strip()]
    if stores:
        doc["stores"] = stores
    for field in ("uses_per_customer", "budget_count"):
        count = _count(form, field)
        if count is not None:
            doc[field] = count
    return doc


def _major(minor: int | None, currency: str) -> str:
    if minor is None:
        return ""
    exponent = get_currency_precision(currency) if len(currency) == 3 else 2
    return format(Decimal(minor).scaleb(-exponent), "f")


def day_of(t: int | None) -> str:
    return "" if t is None else datetime.fromtimestamp(t, UTC).date().isoformat()


def values_of(c: Campaign) -> dict[str, str]:
    """The form filled in with a stored campaign: what `document` reads back unchanged."""
    gift = c.kind.value == "gift"
    return {
        "id": c.id,
        "name": c.name,
        "kind": c.kind.value,
        "currency": c.currency,
        "amount": _major(c.gift_value_minor if gift else c.amount_minor or None, c.currency),
        "min_spend": _major(c.min_spend_minor or None, c.currency),
        "percent": format(Decimal(c.percent_bp).scaleb(-2).normalize(), "f")
        if c.percent_bp
        else "",
        "cap": _major(c.cap_minor, c.currency),
        "gift_sku": c.gift_sku or "",
        "valid_from": day_of(c.valid_from),
        "valid_until": day_of(c.valid_until),
        "stores": ", ".join(sorted(c.stores)),
        "uses_per_customer": "" if c.uses_per_customer is None else str(c.uses_per_customer),
        "budget_count": "" if c.budget_count is None else str(c.budget_count),
        "budget_money": _major(c.budget_minor, c.currency),
        "stacking": c.stacking.value,
        "stack_group": c.stack_group or "",
    }


def edited(stored: Campaign, form: Mapping[str, str]) -> dict[str, object]:
    """The stored campaign with the form's fields written over it: fields the form does
    not show (days, hours, categories, audience...) stay; a date left as the day shown
    keeps its stored second (the form's days end at 23:59:59 UTC)."""
    doc: dict[str, object] = {k: v for k, v in stored.to_dict().items() if k not in FORM_KEYS}
    doc.update(document(form))
    for field in ("valid_from", "valid_until"):
        kept = getattr(stored, field)
        if kept is not None and form.get(field, "").strip() == day_of(kept):
            doc[field] = kept
    return doc


def field_of(message: str) -> str:
    """The form field a rules refusal names (the first quoted document field in it)."""
    for name in _QUOTED.findall(message):
        if name in FIELD_OF:
            return FIELD_OF[name]
    return "id"


def checked(doc: Mapping[str, object]) -> Campaign:
    """The tills' own rules on the document (`Campaign.from_dict`); a refusal as a
    FieldError at the field it names."""
    try:
        return Campaign.from_dict(doc)
    except InputError as exc:
        text = str(exc).partition(": ")[2] or str(exc)
        raise FieldError(field_of(text), text) from None


def refused_attempt(
    central: Central, actor: str, action: str, target: str, before: object, errors: object
) -> None:
    """The audit entry of a change refused for its content (nothing else is written)."""
    with central.writing():
        users.audit(central, actor, f"{action}.refused", target, before, {"errors": errors})


def _add(central: Central, actor: str, doc: dict[str, object]) -> Campaign:
    with central.writing():
        if CampaignRow.get_or_none(CampaignRow.id == doc["id"]) is not None:
            raise FieldError("id", ID_TAKEN)
        campaign = central.add_campaign(doc)
        users.audit(central, actor, "campaign.add", campaign.id, None, campaign.to_dict())
    return campaign


async def render_form(
    request: Request,
    viewer: Viewer,
    status: int,
    values: Mapping[str, str],
    errors: Mapping[str, str],
    editing: str = "",
    **extra: object,
) -> Response:
    """The form, new (editing "") or editing a campaign; `extra`: the preview's outcomes
    and what the template shows above them."""
    return await pages.render(
        request, "campaign_form.html", viewer, status,
        fields=FIELDS, kinds=KIND_NAMES, stackings=STACKING_NAMES, labels=LABELS,
        values=values, errors=errors, editing=editing, **extra,
    )  # fmt: skip


def form_values(form: Mapping[str, object]) -> dict[str, str]:
    return {f: str(form.get(f, "")) for f in (*FIELDS, "basket")}


@router.get("/campaigns/new")
async def new_campaign_page(request: Request) -> Response:
    viewer = await pages.viewer_or_login(request)
    if isinstance(viewer, Response):
        return viewer
    values = {"kind": "fixed", "currency": "CNY", "stacking": "exclusive"}
    return await render_form(request, viewer, 200, values, {})


@router.post("/campaigns/new")
async def new_campaign(request: Request) -> Response:
    checked_ = await pages.acting(request, "campaigns.write")
    if isinstance(checked_, Response):
        return checked_
    viewer, form = checked_
    values = form_values(form)
    svc = services(request)
    try:
        doc = document(values)
        checked(doc)  # the tills' own rules: the form saves nothing they refuse
        await svc.db(_add, svc.central, viewer.actor, doc)
    except FieldError as exc:
        errors = {exc.field: exc.text}
        target = values["id"].strip()
        await svc.db(
            refused_attempt, svc.central, viewer.actor, "campaign.add", target, None, errors
        )
        return await render_form(request, viewer, 422, values, errors)
    return RedirectResponse("/campaigns", status_code=303)
