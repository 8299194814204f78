"""A new campaign from a form (issue 14, item 3): the fields a marketer fills in, read into a
campaign document and checked by the same rules code the tills use (`Campaign.from_dict`);
a refusal is shown beside the field it names, and nothing is saved. Permission
campaigns.write; the campaign added is audited with the viewer as actor."""

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
# The form's fields, in the order the page shows them.
FIELDS = (
    "id", "name", "kind", "currency", "amount", "min_spend", "percent", "cap",
    "gift_sku", "valid_from", "valid_until", "stores", "uses_per_customer", "budget_count",
)  # fmt: skip
# Which form field a refusal of a document field belongs beside.
FIELD_OF = {
    "id": "id",
    "name": "name",
    "kind": "kind",
    "currency": "currency",
    "amount_minor": "amount",
    "min_spend_minor": "min_spend",
    "percent": "percent",
    "percent_bp": "percent",
    "max_discount_minor": "cap",
    "gift_sku": "gift_sku",
    "valid_from": "valid_from",
    "valid_until": "valid_until",
    "stores": "stores",
    "uses_per_customer": "uses_per_customer",
    "budget_count": "budget_count",
}
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
}
KIND_NAMES = {
    "fixed": N_("fixed amount off"),
    "threshold": N_("amount off above a minimum spend"),
    "percent": N_("percent off"),
    "gift": N_("free gift"),
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
    doc: dict[str, object] = {
        "id": form.get("id", "").strip(),
        "kind": form.get("kind", "").strip(),
        "currency": currency,
    }
    if form.get("name", "").strip():
        doc["name"] = form["name"].strip()
    for field, key in (
        ("amount", "amount_minor"),
        ("min_spend", "min_spend_minor"),
        ("cap", "max_discount_minor"),
    ):
        value = _minor(form, field, currency)
        if value is not None:
            doc[key] = value
    percent = form.get("percent", "").strip()
    if percent:
        try:
            doc["percent_bp"] = int(Decimal(percent) * 100)
        except InvalidOperation:
            raise FieldError("percent", NOT_A_NUMBER) from None
    if form.get("gift_sku", "").strip():
        doc["gift_sku"] = form["gift_sku"].strip()
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


def field_of(message: str) -> str:
    """The form field a rules refusal names (the first quoted document field in it)."""
    for name in _QUOTED.findall(message):
        if name in FIELD_OF:
            return FIELD_OF[name]
    return "id"


def _add(central: Central, actor: str, doc: dict[str, object]) -> Campaign:
    with central.writing():
        if CampaignRow.get_or_none(CampaignRow.id == doc["id"]) is not None:
            raise FieldError("id", ID_TAKEN)
        campaign = central.add_campaign(doc)
        users.audit(central, actor, "campaign.add", campaign.id, None, campaign.to_dict())
    return campaign


async def _form(
    request: Request, viewer: Viewer, status: int, values: Mapping[str, str], errors: dict[str, str]
) -> Response:
    return await pages.render(
        request, "campaign_form.html", viewer, status,
        fields=FIELDS, kinds=KIND_NAMES, labels=LABELS, values=values, errors=errors,
    )  # fmt: skip


@router.get("/campaigns/new")
async def new_campaign_page(request: Request) -> Response:
    viewer = await pages.viewer_or_login(request)
    if isinstance(viewer, Response):
        return viewer
    return await _form(request, viewer, 200, {"kind": "fixed", "currency": "CNY"}, {})


@router.post("/campaigns/new")
async def new_campaign(request: Request) -> Response:
    checked = await pages.acting(request, "campaigns.write")
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    values = {f: str(form.get(f, "")) for f in FIELDS}
    try:
        doc = document(values)
        Campaign.from_dict(doc)  # the tills' own rules: the form saves nothing they refuse
        svc = services(request)
        await svc.db(_add, svc.central, viewer.actor, doc)
    except FieldError as exc:
        return await _form(request, viewer, 422, values, {exc.field: exc.text})
    except InputError as exc:
        text = str(exc).partition(": ")[2] or str(exc)
        return await _form(request, viewer, 422, values, {field_of(text): text})
    return RedirectResponse("/campaigns", status_code=303)
