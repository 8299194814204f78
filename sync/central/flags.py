"""Fraud flags at the central: raised by terminals (journal entries of kind "flag") and by
reconciliation; decided by people (acknowledged, resolved, deny-listed); the decisions flow
back to the terminals of every store the flag involves (a double redemption names each
store that took the coupon), deny-listing through the ledger."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sync.central import metrics
from sync.central.models import FlagRow, FlagUpdate
from sync.central.store import Central, CentralError

STATUSES = ("open", "acknowledged", "resolved", "deny_listed")
DECISIONS = STATUSES[1:]

# Raised by the central itself.
DOUBLE_REDEMPTION = "double_redemption"
CUSTOMER_LIMIT = "customer_limit_exceeded"
BUDGET = "budget_exceeded"
JOURNAL_ALTERED = "journal_altered"
JOURNAL_CHAIN = "journal_chain_broken"
# An accepted use the central cannot believe (trust.py): stored, never counted.
IMPLAUSIBLE = "implausible_entry"


def raise_flag(
    central: Central,
    key: str,
    kind: str,
    source: str,
    *,
    store: str | None = None,
    terminal: str | None = None,
    seq: int | None = None,
    campaign: str | None = None,
    serial: str | None = None,
    customer: str | None = None,
    tag: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Record a flag once: the same key (a resent batch, a retried request) adds nothing."""
    now = int(central.now())
    FlagRow.insert(
        key=hashlib.sha256(key.encode()).hexdigest(),
        kind=kind,
        source=source,
        store=store,
        terminal=terminal,
        seq=seq,
        campaign=campaign,
        serial=serial,
        customer=customer,
        tag=tag,
        detail=json.dumps(detail or {}, sort_keys=True),
        created_at=now,
        updated_at=now,
    ).on_conflict_ignore().execute()


def flag_doc(f: FlagRow) -> dict[str, Any]:
    return {
        "id": f.id,
        "kind": f.kind,
        "source": f.source,
        "status": f.status,
        "note": f.note,
        "store": f.store,
        "terminal": f.terminal,
        "seq": f.seq,
        "campaign": f.campaign,
        "serial": f.serial,
        "customer": f.customer,
        "tag": f.tag,
        "detail": json.loads(f.detail),
        "created_at": f.created_at,
        "updated_at": f.updated_at,
    }


def list_flags(
    status: str | None = None,
    kind: str | None = None,
    store: str | None = None,
    limit: int = 500,
    after: int = 0,
) -> list[dict[str, Any]]:
    query = FlagRow.select().where(FlagRow.id > after)
    if status:
        query = query.where(FlagRow.status == status)
    if kind:
        query = query.where(FlagRow.kind == kind)
    if store:
        query = query.where(FlagRow.store == store)
    return [flag_doc(f) for f in query.order_by(FlagRow.id).limit(limit)]


def decide(central: Central, flag_id: int, status: str, note: str | None) -> dict[str, Any]:
    """Set a flag's status; deny_listed also puts its tag UID and customer reference on the
    ledger's deny lists and publishes them."""
    if status not in DECISIONS:
        raise CentralError(f"status must be one of {', '.join(DECISIONS)}")
    now = int(central.now())
    # Under the central's lock: decision ids become visible in the order they were made, so
    # a terminal reading ?since= never skips one committed late by another instance.
    with central.exclusive():
        flag = FlagRow.get_or_none(FlagRow.id == flag_id)
        if flag is None:
            raise LookupError(f"no flag {flag_id}")
        denied: list[str] = []
        if status == "deny_listed":
            if flag.tag:
                central.deny("tag", flag.tag)
                denied.append(f"tag {flag.tag}")
            if flag.customer:
                central.deny("customer", flag.customer)
                denied.append(f"customer {flag.customer}")
            if not denied:
                raise CentralError(f"flag {flag_id} names no tag UID or customer to deny-list")
        FlagRow.update(status=status, note=note, updated_at=now).where(
            FlagRow.id == flag_id
        ).execute()
        # One row per store involved, so each store's terminals read it at ?since=.
        for store in stores_of(flag):
            FlagUpdate.create(flag=flag_id, store=store, status=status, note=note, at=now)
    if status == "deny_listed":
        metrics.publish(central, just_changed=True)
    return flag_doc(FlagRow.get(FlagRow.id == flag_id))


def stores_of(flag: FlagRow) -> list[str | None]:
    """The flag's own store and every store its detail names (reconcile records the stores
    of a double redemption in detail["stores"]); sorted, each once."""
    stores: set[str] = {flag.store} if flag.store else set()
    try:
        detail = json.loads(flag.detail)
    except ValueError:
        detail = {}
    named = detail.get("stores") if isinstance(detail, dict) else None
    if isinstance(named, list):
        stores.update(s for s in named if isinstance(s, str) and s)
    return [*sorted(stores)] if stores else [None]


def updates_for_store(store: str, since: int, limit: int = 500) -> dict[str, Any]:
    """Decisions on the flags that involve a store after update id `since`, oldest first."""
    rows = list(
        FlagUpdate.select()
        .where((FlagUpdate.store == store) & (FlagUpdate.id > since))
        .order_by(FlagUpdate.id)
        .limit(limit)
    )
    flags = {f.id: f for f in FlagRow.select().where(FlagRow.id.in_([u.flag for u in rows]))}
    decisions = []
    for u in rows:
        f = flags[u.flag]
        decisions.append(
            {
                "id": u.id,
                "flag": u.flag,
                "kind": f.kind,
                "store": f.store,
                "campaign": f.campaign,
                "terminal": f.terminal,
                "seq": f.seq,
                "serial": f.serial,
                "status": u.status,
                "note": u.note,
                "at": u.at,
            }
        )
    return {"decisions": decisions, "next": rows[-1].id if rows else since}
