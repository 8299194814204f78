"""Fraud flags at the central: raised by terminals (journal entries of kind "flag") and by
reconciliation; decided by people (acknowledged, resolved, revoked, deny-listed); the
decisions flow back to the terminals of every store the flag involves (a double redemption
names each store that took the coupon), and what they take out of circulation goes through
the ledger: "revoked" revokes the flag's coupon serial; "deny_listed" puts one customer or
NFC tag the evidence names on the deny lists, or, asked without one (the admin API, as
before), revokes the serial and deny-lists every customer and tag the evidence names."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import TypedDict

from sync.central.models import CouponRow, FlagRow, FlagUpdate, JournalRow, Redemption, db_serial
from sync.central.store import Central, CentralError

STATUSES = ("open", "acknowledged", "resolved", "revoked", "deny_listed")
DECISIONS = STATUSES[1:]

# Raised by the central itself.
DOUBLE_REDEMPTION = "double_redemption"
CUSTOMER_LIMIT = "customer_limit_exceeded"
BUDGET = "budget_exceeded"
JOURNAL_ALTERED = "journal_altered"
JOURNAL_CHAIN = "journal_chain_broken"
# An accepted use the central cannot believe (trust.py): stored, never counted.
IMPLAUSIBLE = "implausible_entry"

SERIAL_RE = re.compile(r"[0-9a-fA-F]{1,16}")
TAG_UID_BYTES = (4, 7, 10)  # NFC UIDs; anything else would break the ledger's deny list
EVIDENCE_MAX = 200  # journal entries read for the customer and tag of one decision


class FlagDoc(TypedDict):
    """A flag as the admin API and the report show it."""

    id: int
    kind: str
    source: str
    status: str
    note: str | None
    store: str | None
    terminal: str | None
    seq: int | None
    campaign: str | None
    serial: str | None
    customer: str | None
    tag: str | None
    detail: object  # the JSON document it was raised with
    created_at: int
    updated_at: int


class DecidedDoc(FlagDoc):
    """A flag just decided, with what the decision did (one sentence each), e.g.
    "revoked coupon 00000001000000a2: every till refuses it from its next ledger"."""

    done: list[str]


class DecisionDoc(TypedDict):
    """A decision on a flag, as the terminals of a store read it (GET /v1/flags)."""

    id: int
    flag: int
    kind: str
    store: str | None
    campaign: str | None
    terminal: str | None
    seq: int | None
    serial: str | None
    status: str
    note: str | None
    at: int


class DecisionsDoc(TypedDict):
    decisions: list[DecisionDoc]
    next: int


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
    detail: Mapping[str, object] | None = None,
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


def flag_doc(f: FlagRow) -> FlagDoc:
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
    campaign: str | None = None,
    created_before: int | None = None,
) -> list[FlagDoc]:
    """Flags oldest first; `created_before` (epoch seconds) keeps those raised before it."""
    query = FlagRow.select().where(FlagRow.id > after)
    if campaign:
        query = query.where(FlagRow.campaign == campaign)
    if created_before is not None:
        query = query.where(FlagRow.created_at < created_before)
    if status:
        query = query.where(FlagRow.status == status)
    if kind:
        query = query.where(FlagRow.kind == kind)
    if store:
        query = query.where(FlagRow.store == store)
    return [flag_doc(f) for f in query.order_by(FlagRow.id).limit(limit)]


def decide(
    central: Central,
    flag_id: int,
    status: str,
    note: str | None,
    holder: tuple[str, str] | None = None,
) -> DecidedDoc:
    """Set a flag's status and tell the stores involved. "revoked" revokes the flag's coupon
    serial; "deny_listed" deny-lists `holder` ("customer" or "tag", and the value, which the
    evidence must name), or without one takes everything the flag is about out of
    circulation (deny_list). A flag about nothing a ledger can refuse (a campaign's budget,
    a terminal's journal) is refused with what to do instead. Without a note, a revocation
    or deny-listing is noted with what it did."""
    if status not in DECISIONS:
        raise CentralError(f"status must be one of {', '.join(DECISIONS)}")
    now = int(central.now())
    # Under the central's lock: decision ids become visible in the order they were made, so
    # a terminal reading ?since= never skips one committed late by another instance.
    with central.exclusive():
        flag = FlagRow.get_or_none(FlagRow.id == flag_id)
        if flag is None:
            raise LookupError(f"no flag {flag_id}")
        done = _take_out(central, flag, status, holder)
        if done and not note:
            note = "; ".join(d.split(":")[0] for d in done)[:2000]
        FlagRow.update(status=status, note=note, updated_at=now).where(
            FlagRow.id == flag_id
        ).execute()
        # One row per store involved, so each store's terminals read it at ?since=.
        stores = stores_of(flag)
        for store in stores:
            FlagUpdate.create(flag=flag_id, store=store, status=status, note=note, at=now)
    named = ", ".join(s for s in stores if s) or "no store"
    done.append(f"{status}: the terminals of {named} read the decision at their next sync")
    return {**flag_doc(FlagRow.get(FlagRow.id == flag_id)), "done": done}


def _take_out(
    central: Central, flag: FlagRow, status: str, holder: tuple[str, str] | None
) -> list[str]:
    if status == "revoked":
        return revoke_serial(central, flag)
    if status == "deny_listed":
        return deny_list(central, flag) if holder is None else deny_holder(central, flag, *holder)
    return []


def flag_serial(flag: FlagRow) -> int | None:
    """The coupon serial a flag names, when it names one a ledger can carry."""
    return int(flag.serial, 16) if flag.serial and SERIAL_RE.fullmatch(flag.serial) else None


def revoke_serial(central: Central, flag: FlagRow) -> list[str]:
    """Revoke the flag's coupon serial: every till refuses it from its next ledger."""
    serial = flag_serial(flag)
    if serial is None:
        raise CentralError(
            f"flag {flag.id} ({flag.kind}) names no coupon serial to revoke; "
            "deny-list the customer or tag, or resolve it"
        )
    central.mark([serial], "revoked")
    return [f"revoked coupon {serial:016x}: every till refuses it from its next ledger"]


def holders(flag: FlagRow) -> tuple[list[str], list[str]]:
    """The customers and NFC tag UIDs (hex) the flag and its evidence name, sorted: what
    the fraud desk offers to deny-list one by one."""
    customers, tags = _holders(flag, flag_serial(flag))
    return sorted(customers), sorted(tags)


def deny_holder(central: Central, flag: FlagRow, kind: str, value: str) -> list[str]:
    """Deny-list one customer or tag UID that the flag or its evidence names (never any
    other value: the desk acts on evidence, not on what a form says)."""
    customers, tags = holders(flag)
    named = {"customer": customers, "tag": tags}.get(kind)
    if named is None:
        raise CentralError("what to deny-list is a customer or a tag")
    if value not in named:
        what = "customer" if kind == "customer" else "NFC tag"
        raise CentralError(f"flag {flag.id} ({flag.kind}): its evidence names no {what} {value}")
    central.deny(kind, value)
    label = "customer" if kind == "customer" else "NFC tag"
    return [f"deny-listed {label} {value}: every till refuses it from its next ledger"]


def deny_list(central: Central, flag: FlagRow) -> list[str]:
    """Revoke the flag's coupon serial and deny-list every customer and tag UID that the flag,
    the coupon or the journal entries it rests on carry (a double redemption names only the
    serial: its uses hold the rest). Published with the next ledger, so every till refuses
    them from its next pull. Returns what was done; CentralError when there is nothing."""
    done: list[str] = []
    serial = flag_serial(flag)
    if serial is not None:
        central.mark([serial], "revoked")
        done.append(f"revoked coupon {serial:016x}: every till refuses it from its next ledger")
    customers, tags = _holders(flag, serial)
    for tag in sorted(tags):
        central.deny("tag", tag)
        done.append(f"deny-listed NFC tag {tag}")
    for customer in sorted(customers):
        central.deny("customer", customer)
        done.append(f"deny-listed customer {customer}")
    if not done:
        raise CentralError(_nothing_to_deny(flag))
    return done


def _nothing_to_deny(flag: FlagRow) -> str:
    what = f"flag {flag.id} ({flag.kind})"
    if flag.kind == BUDGET:
        return (
            f"{what} is about campaign {flag.campaign}, not a coupon, customer or tag: nothing "
            "to deny-list; resolve it, or end the campaign"
        )
    if flag.terminal and flag.kind in (JOURNAL_ALTERED, JOURNAL_CHAIN, IMPLAUSIBLE):
        return (
            f"{what} names no coupon, customer or tag, only terminal {flag.terminal}: nothing "
            f"to deny-list; to refuse that terminal, revoke it (redeem-central "
            f"revoke-terminal --terminal {flag.terminal})"
        )
    return f"{what} names no coupon serial, customer or NFC tag to deny-list; resolve it instead"


def _holders(flag: FlagRow, serial: int | None) -> tuple[set[str], set[str]]:
    """Customers and tag UIDs (hex) of the flag, its coupon, the central's counted uses of
    that coupon and the journal entries the flag rests on."""
    customers: set[str] = {flag.customer} if flag.customer else set()
    tags: list[object] = [flag.tag]
    if serial is not None:
        coupon = CouponRow.get_or_none(CouponRow.serial == db_serial(serial))
        if coupon is not None and coupon.customer:
            customers.add(coupon.customer)
        uses = Redemption.select(Redemption.customer, Redemption.tag).where(
            Redemption.serial == db_serial(serial)
        )
        for use in uses.limit(EVIDENCE_MAX):
            customers.update([use.customer] if use.customer else [])
            tags.append(use.tag)
    for entry in _evidence(flag):
        customers.update([entry.customer] if entry.customer else [])
        tags.append(_loads(entry.detail).get("tag"))
    return customers, {t for t in (_tag_hex(t) for t in tags) if t}


def evidence(flag: FlagRow) -> list[JournalRow]:
    """The journal entries a flag rests on (see _evidence), ordered by terminal and seq."""
    return list(_evidence(flag))


def _evidence(flag: FlagRow) -> Iterable[JournalRow]:
    """The journal entries a flag names: its own (terminal, seq), the entry a till's flag is
    about (detail.about_seq) and every use a double redemption lists (detail.redemptions)."""
    detail = _loads(flag.detail)
    wanted: set[tuple[str, int]] = set()
    if flag.terminal and flag.seq is not None:
        wanted.add((flag.terminal, int(flag.seq)))
        about = detail.get("about_seq")
        if isinstance(about, int) and not isinstance(about, bool) and abs(about) < 2**62:
            wanted.add((flag.terminal, about))
    uses = detail.get("redemptions")
    for use in uses if isinstance(uses, list) else []:
        if isinstance(use, dict) and isinstance(use.get("terminal"), str):
            seq = use.get("seq")
            if isinstance(seq, int) and not isinstance(seq, bool) and abs(seq) < 2**62:
                wanted.add((use["terminal"], seq))
    for terminal, seq in sorted(wanted)[:EVIDENCE_MAX]:
        row = JournalRow.get_or_none((JournalRow.terminal == terminal) & (JournalRow.seq == seq))
        if row is not None:
            yield row


def _loads(text: str | None) -> dict[str, object]:
    try:
        doc = json.loads(text or "{}")
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _tag_hex(value: object) -> str | None:
    """A tag UID as the ledger's deny list holds it (lower-case hex of 4, 7 or 10 bytes);
    None for anything else, which the publisher could not encode."""
    if not isinstance(value, str):
        return None
    try:
        uid = bytes.fromhex(value.replace(":", "").replace(" ", ""))
    except ValueError:
        return None
    return uid.hex() if len(uid) in TAG_UID_BYTES else None


def stores_of(flag: FlagRow) -> list[str | None]:
    """The flag's own store and every store its detail names (reconcile records the stores
    of a double redemption in detail["stores"]); sorted, each once."""
    stores: set[str] = {flag.store} if flag.store else set()
    named = _loads(flag.detail).get("stores")
    if isinstance(named, list):
        stores.update(s for s in named if isinstance(s, str) and s)
    return [*sorted(stores)] if stores else [None]


def updates_for_store(store: str, since: int, limit: int = 500) -> DecisionsDoc:
    """Decisions on the flags that involve a store after update id `since`, oldest first."""
    rows = list(
        FlagUpdate.select()
        .where((FlagUpdate.store == store) & (FlagUpdate.id > since))
        .order_by(FlagUpdate.id)
        .limit(limit)
    )
    flags = {f.id: f for f in FlagRow.select().where(FlagRow.id.in_([u.flag for u in rows]))}
    decisions: list[DecisionDoc] = []
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
