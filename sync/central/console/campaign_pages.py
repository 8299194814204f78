"""Editing a running campaign in the console, and the preview of what sample baskets would
get from the campaign as typed (issue 14, item 3; docs/central.md, "Editing a campaign").
An edit is checked by the tills' rules, then by what may change (campaign_edit.py); each
refusal shows at its field, nothing is saved and the attempt is audited. A saved edit is
audited as `campaign.edit` (the documents before and after) and reaches the tills with the
next ledger. A preview saves nothing and needs only the read permission."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from coupons.i18n import N_, translate
from coupons.rules import Campaign
from sync.central import campaigns, users
from sync.central.campaign_edit import FINISHED
from sync.central.console import campaign_preview, pages
from sync.central.console.campaign_form import (
    FIELD_OF,
    FieldError,
    checked,
    document,
    edited,
    form_values,
    refused_attempt,
    render_form,
    values_of,
)
from sync.central.console.campaign_preview import BAD_LINE, TOO_MANY_LINES, BasketError
from sync.central.context import services
from sync.central.store import Central, CentralError

router = APIRouter(include_in_schema=False)

# The words the campaign templates show through _(...) beyond pages.UI_STRINGS.
UI_STRINGS = (
    N_("Edit campaign"),
    N_(
        "Saved changes reach the tills with the next ledger. The id, kind and currency never "
        "change; once coupons are out, what they give may only grow."
    ),
    N_("Your own basket for the preview: one line each, SKU PRICE [QUANTITY] [CATEGORY]"),
    N_("Preview"),
    N_("Save the changes"),
    N_("What these baskets would get"),
    N_("Worked out by the tills' own rules. Nothing has been saved."),
    N_("Today the tills would refuse it:"),
    N_("Basket"),
    N_("Total"),
    N_("Discount"),
    N_("Sample"),
    N_("gift"),
    N_("applies"),
    N_("Show archived campaigns"),
    N_("Hide archived campaigns"),
    N_("Redemption rate"),
    N_("Edit"),
    N_("Archive"),
)


def _stored(cid: str) -> campaigns.CampaignSummary | None:
    try:
        return campaigns.summary(cid)
    except CentralError:
        return None


@router.get("/campaigns/{cid}/edit")
async def edit_page(request: Request, cid: str) -> Response:
    viewer = await pages.viewer_or_login(request)
    if isinstance(viewer, Response):
        return viewer
    svc = services(request)
    found = await svc.db(_stored, cid)
    if found is None:
        return await pages.message(request, viewer, 404, pages.NOT_FOUND, "not-found")
    if found.status in campaigns.FINISHED:
        return await pages.message(request, viewer, 409, FINISHED, "campaign-finished")
    return await render_form(request, viewer, 200, values_of(found.campaign), {}, editing=cid)


def _save(central: Central, actor: str, cid: str, form: Mapping[str, str]) -> None:
    """Check and save the edit in one transaction with its audit entry; a refusal raises
    FieldError (the rules) or EditRefused (what may change)."""
    with central.writing():
        stored = campaigns.summary(cid)
        if stored.status in campaigns.FINISHED:
            raise campaigns.EditRefused({"": FINISHED})
        doc = edited(stored.campaign, form)
        checked(doc)
        before, after = campaigns.edit(central, cid, doc)
        if after.to_dict() != before.to_dict():
            users.audit(central, actor, "campaign.edit", cid, before.to_dict(), after.to_dict())


@router.post("/campaigns/{cid}/edit")
async def edit_campaign(request: Request, cid: str) -> Response:
    checked_ = await pages.acting(request, "campaigns.write")
    if isinstance(checked_, Response):
        return checked_
    viewer, form = checked_
    svc = services(request)
    found = await svc.db(_stored, cid)
    if found is None:
        return await pages.message(request, viewer, 404, pages.NOT_FOUND, "not-found")
    values = form_values(form)
    try:
        await svc.db(_save, svc.central, viewer.actor, cid, values)
    except FieldError as exc:
        errors = {exc.field: exc.text}
    except campaigns.EditRefused as exc:
        errors = {FIELD_OF.get(k, ""): v for k, v in exc.problems.items()}
    else:
        return RedirectResponse("/campaigns", status_code=303)
    before = found.campaign.to_dict()
    await svc.db(refused_attempt, svc.central, viewer.actor, "campaign.edit", cid, before, errors)
    top = errors.pop("", None)
    return await render_form(request, viewer, 422, values, errors, editing=cid, top=top)


def _as_typed(editing: str, values: Mapping[str, str]) -> Campaign:
    """The campaign the form describes: for an edit, over the stored document (so the
    fields the form does not show are previewed too)."""
    if editing:
        stored = _stored(editing)
        if stored is not None:
            return checked(edited(stored.campaign, values))
    return checked(document(values))


@router.post("/campaigns/preview")
async def preview(request: Request) -> Response:
    checked_ = await pages.acting(request, "read")
    if isinstance(checked_, Response):
        return checked_
    viewer, form = checked_
    values = form_values(form)
    editing = str(form.get("editing", ""))
    svc = services(request)
    lang = pages.lang_of(request)
    try:
        campaign = await svc.db(_as_typed, editing, values)
        typed = campaign_preview.typed_basket(values["basket"], campaign.currency)
    except FieldError as exc:
        return await render_form(request, viewer, 422, values, {exc.field: exc.text}, editing)
    except BasketError as exc:
        text = translate(BAD_LINE, lang).format(n=exc.line) if exc.line else TOO_MANY_LINES
        return await render_form(request, viewer, 422, values, {"basket": text}, editing)
    now = svc.central.now()
    return await render_form(
        request, viewer, 200, values, {}, editing,
        outcomes=campaign_preview.preview(campaign, typed),
        refused_now=campaign_preview.refused_now(campaign, now),
        currency=campaign.currency,
    )  # fmt: skip
