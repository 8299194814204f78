"""Store scopes: each store's own ledger, derived from the chain-wide one.

The chain-wide ledger (store.py) stays the one place changes are recorded. After each
chain-wide version, every store scope is brought up to it: what the chain-wide deltas
touched is looked up in the chain-wide state and kept only where it can matter at that
store; a campaign that enters a scope arrives whole, one that leaves (no longer valid at the
store, or ended longer ago than the grace) leaves with its serials, codes and counts. Each
scope is its own signed hash chain (docs/central-scale.md). Only the publisher calls this.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace

import cbor2
import peewee as pw

from coupons import cose, ledger, serials
from coupons.jsontypes import JSONObject
from coupons.ledger import GENESIS, LedgerState, TillKey
from sync.central.models import (
    CouponRow,
    EnrollCode,
    ScopeRow,
    ScopeSnapshot,
    ScopeVersion,
    TerminalRow,
    VersionRow,
    db_serial,
    from_db_serial,
)

ENDED_GRACE_S = 7 * 24 * 3600  # an ended campaign stays this long (late refunds, disputes)
SNAPSHOT_EVERY = 32  # a scope gets a fresh snapshot after this many deltas
STORES_PER_TRANSACTION = 500  # a tick writes stores' new versions this many at a time
_INSERT_CHUNK = 100  # rows per INSERT (each delta is a few kB of signed bytes)
_ROW_FIELDS = (
    ScopeRow.version,
    ScopeRow.chain,
    ScopeRow.base,
    ScopeRow.campaigns,
    ScopeRow.meta,
    ScopeRow.issued_at,
    ScopeRow.snapshot_version,
    ScopeRow.tills,
)
HEARTBEATS_PER_WARNING = 4  # a quiet scope gets an empty version 4 times per stale_warn_hours
_LOOKUP_CHUNK = 500


def stores() -> list[str]:
    """The stores that have (or are about to have) tills: every one gets its scope."""
    have = {r.store for r in TerminalRow.select(TerminalRow.store).distinct()}
    have |= {r.store for r in EnrollCode.select(EnrollCode.store).distinct()}
    return sorted(have)


def tills_by_store() -> dict[str, dict[str, TillKey]]:
    """Every store's enrolled tills with their device keys, revoked ones included (a listed
    revoked till's messages are refused and flagged by its peers): one query per tick."""
    out: dict[str, dict[str, TillKey]] = {}
    rows = TerminalRow.select(
        TerminalRow.id, TerminalRow.store, TerminalRow.public_key, TerminalRow.revoked
    )
    for r in rows:
        try:
            key = bytes.fromhex(r.public_key)
        except ValueError:
            continue  # never written so (terminals.enroll checks it); not worth a tick
        if len(key) == 32:
            out.setdefault(r.store, {})[r.id] = TillKey(key, bool(r.revoked))
    return out


def tills_hash(tills: Mapping[str, TillKey]) -> bytes:
    """What ScopeRow.tills keeps: a store's tills are sent again only when this changes."""
    return hashlib.sha256(cbor2.dumps(ledger.pack_tills(tills), canonical=True)).digest()


def campaigns_at(state: LedgerState, store: str, now: int) -> frozenset[str]:
    """Campaigns that can matter at a store now: valid there (or chain-wide) and not ended
    longer ago than the grace."""
    return frozenset(
        c.id
        for c in state.campaigns.values()
        if (not c.stores or store in c.stores)
        and (c.valid_until is None or c.valid_until + ENDED_GRACE_S >= now)
    )


def _meta_hash(state: LedgerState) -> bytes:
    doc = [
        sorted(c.raw for c in state.issuer_keys.values()),
        sorted(state.revoked_kids),
        state.policy.to_dict(),
        state.plain_salt,
    ]
    return hashlib.sha256(cbor2.dumps(doc, canonical=True)).digest()


@dataclass
class ChainView:
    """The chain-wide ledger at one version, with the campaign of each serial it lists."""

    state: LedgerState
    campaign_of: dict[int, str] = field(default_factory=dict)

    def learn(self, serials_: Iterable[int]) -> None:
        """Look up the campaign of serials not seen yet (issued here: CouponRow)."""
        todo = [s for s in serials_ if s not in self.campaign_of]
        for i in range(0, len(todo), _LOOKUP_CHUNK):
            chunk = todo[i : i + _LOOKUP_CHUNK]
            rows = CouponRow.select(CouponRow.serial, CouponRow.campaign).where(
                CouponRow.serial.in_([db_serial(s) for s in chunk])
            )
            for r in rows:
                self.campaign_of[from_db_serial(r.serial)] = r.campaign

    def keeps(self, serial: int, campaigns: frozenset[str]) -> bool:
        """Whether a serial belongs in a scope holding `campaigns`; one this central did
        not issue belongs everywhere (fail closed: a revocation is never dropped)."""
        cid = self.campaign_of.get(serial)
        return cid is None or cid in campaigns

    def serials_of(self, which: serials.SerialSet, campaigns: frozenset[str]) -> list[int]:
        return [s for s in which if self.campaign_of.get(s) in campaigns]


@dataclass
class Touched:
    """What a run of chain-wide deltas changed (the values are read from the chain view)."""

    campaigns: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    revoked: set[int] = field(default_factory=set)
    redeemed: set[int] = field(default_factory=set)
    codes: set[bytes] = field(default_factory=set)
    usage: set[str] = field(default_factory=set)
    customers: set[tuple[str, str]] = field(default_factory=set)
    deny_tags: set[bytes] = field(default_factory=set)
    deny_customers: set[str] = field(default_factory=set)
    sun_keys: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, bodies: Iterable[Mapping[str, object]]) -> Touched:
        t = cls()
        for b in bodies:
            t.campaigns.update(
                str(c["id"]) for c in _list(b.get("campaigns")) if isinstance(c, Mapping)
            )
            t.removed.update(str(c) for c in _list(b.get("removed_campaigns")))
            t.revoked.update(ledger.read_serials(b, "revoked"))
            for name in ("redeemed", "unredeemed"):
                t.redeemed.update(ledger.read_serials(b, name))
            t.codes.update(
                bytes(row[0]) for row in _list(b.get("plain_codes")) if isinstance(row, list)
            )
            t.usage.update(str(c) for c in _dict(b.get("usage")))
            for cid, refs in _dict(b.get("customer_usage")).items():
                t.customers.update(
                    (str(cid), ref.hex() if isinstance(ref, bytes) else str(ref))
                    for ref in _dict(refs)
                )
            t.deny_tags.update(x for x in _list(b.get("deny_tags")) if isinstance(x, bytes))
            t.deny_customers.update(str(x) for x in _list(b.get("deny_customers")))
            t.sun_keys.update(str(c) for c in _dict(b.get("sun_keys")))
        return t


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, (list, tuple)) else []


def _dict(value: object) -> dict[object, object]:
    return dict(value) if isinstance(value, Mapping) else {}


@dataclass
class _Parts:
    """Everything the chain view holds for some campaigns: what a campaign entering a
    scope brings with it."""

    campaigns: list[JSONObject]
    revoked: list[int]
    redeemed: list[int]
    plain_codes: list[list[object]]
    usage: dict[str, list[int]]
    customer_usage: dict[tuple[str, str], int]
    sun_keys: dict[str, bytes]

    @classmethod
    def of(cls, view: ChainView, cids: Iterable[str]) -> _Parts:
        ids = frozenset(cids)
        s = view.state
        return cls(
            campaigns=[s.campaigns[c].to_dict() for c in sorted(ids)],
            revoked=view.serials_of(s.revoked, ids),
            redeemed=view.serials_of(s.redeemed, ids),
            plain_codes=[
                [h, p.campaign, p.serial] for h, p in s.plain_codes.items() if p.campaign in ids
            ],
            usage={c: list(s.usage[c]) for c in sorted(ids) if c in s.usage},
            customer_usage={k: n for k, n in s.customer_usage.items() if k[0] in ids},
            sun_keys={c: s.sun_keys[c] for c in sorted(ids) if c in s.sun_keys},
        )


def delta_content(
    view: ChainView,
    touched: Touched,
    had: frozenset[str],
    now_in: frozenset[str],
    meta_changed: bool,
    fresh: bool,
) -> dict[str, object]:
    """The body (without scope, version, prev, time) of a scope's next delta; empty when
    nothing in it changed."""
    s = view.state
    entering = now_in - had
    leaving = had - now_in
    staying = now_in & had
    body: dict[str, object] = {}
    whole = _Parts.of(view, entering)
    campaigns = list(whole.campaigns)
    campaigns += [s.campaigns[c].to_dict() for c in sorted(touched.campaigns & staying)]
    if campaigns:
        body["campaigns"] = campaigns
    removed = sorted(leaving | (touched.removed & had))
    if removed:
        body["removed_campaigns"] = removed
    keep = view.keeps
    if fresh:  # every revocation that can matter here, the unattributed ones included
        revoked = {x for x in s.revoked if keep(x, now_in)}
    else:
        revoked = set(whole.revoked)
        revoked |= {x for x in touched.revoked if x in s.revoked and keep(x, now_in)}
    redeemed = set(whole.redeemed)
    redeemed |= {x for x in touched.redeemed if x in s.redeemed and keep(x, staying)}
    unredeemed = {x for x in touched.redeemed if x not in s.redeemed and keep(x, staying)}
    left = frozenset(leaving)
    unredeemed |= set(view.serials_of(s.redeemed, left))
    unrevoked = set(view.serials_of(s.revoked, left))
    for name, values in (
        ("revoked", revoked),
        ("redeemed", redeemed),
        ("unredeemed", unredeemed),
        ("unrevoked", unrevoked),
    ):
        if values:
            body.update(ledger.serial_field(name, values))
    codes = list(whole.plain_codes)
    for h in sorted(touched.codes):
        p = s.plain_codes.get(h)
        if p is not None and p.campaign in staying:
            codes.append([h, p.campaign, p.serial])
    if codes:
        body["plain_codes"] = codes
    usage = dict(whole.usage)
    usage.update({c: list(s.usage[c]) for c in sorted(touched.usage & staying) if c in s.usage})
    if usage:
        body["usage"] = usage
    counts = dict(whole.customer_usage)
    counts.update({k: s.customer_usage.get(k, 0) for k in touched.customers if k[0] in staying})
    if counts:
        body["customer_usage"] = ledger.pack_customer_usage(counts)
    sun = dict(whole.sun_keys)
    sun.update({c: s.sun_keys[c] for c in touched.sun_keys & staying if c in s.sun_keys})
    if sun:
        body["sun_keys"] = dict(sorted(sun.items()))
    deny_tags = sorted(s.deny_tags) if fresh else sorted(touched.deny_tags & s.deny_tags)
    deny_customers = (
        sorted(s.deny_customers) if fresh else sorted(touched.deny_customers & s.deny_customers)
    )
    if deny_tags:
        body["deny_tags"] = deny_tags
    if deny_customers:
        body["deny_customers"] = deny_customers
    # Keys, policy and salt only when they changed (a till keeps what a delta leaves out):
    # every issuer certificate in every store's every delta was most of its bytes.
    if meta_changed or fresh:
        body["issuer_certs"] = sorted(c.raw for c in s.issuer_keys.values())
        body["revoked_kids"] = sorted(s.revoked_kids)
        body["policy"] = s.policy.to_dict()
        body["plain_salt"] = s.plain_salt
    return body


def scope_state(view: ChainView, scope: str, campaigns: frozenset[str]) -> LedgerState:
    """What a till holding the scope holds (without version and chain): for snapshots."""
    s = view.state
    parts = _Parts.of(view, campaigns)
    revoked = {x for x in s.revoked if view.keeps(x, campaigns)}
    return LedgerState(
        scope=scope,
        issuer_keys=dict(s.issuer_keys),
        revoked_kids=set(s.revoked_kids),
        campaigns={c: s.campaigns[c] for c in campaigns},
        usage={c: s.usage[c] for c in campaigns if c in s.usage},
        customer_usage=dict(parts.customer_usage),
        revoked=serials.SerialSet(revoked),
        redeemed=serials.SerialSet(parts.redeemed),
        deny_tags=set(s.deny_tags),
        deny_customers=set(s.deny_customers),
        plain_salt=s.plain_salt,
        plain_codes={h: p for h, p in s.plain_codes.items() if p.campaign in campaigns},
        policy=s.policy,
        sun_keys={c: k for c, k in s.sun_keys.items() if c in campaigns},
    )


@dataclass
class ScopeResult:
    published: int = 0  # scope versions signed
    snapshots: int = 0
    scopes: int = 0


def bodies_between(after: int, upto: int) -> list[Mapping[str, object]]:
    """The chain-wide delta bodies after version `after` up to `upto` (read back from the
    signed bytes: the publisher signed them, so no verification is needed here)."""
    out: list[Mapping[str, object]] = []
    rows = VersionRow.select(VersionRow.signed).where(
        (VersionRow.version > after) & (VersionRow.version <= upto)
    )
    for r in rows.order_by(VersionRow.version):
        _, signed = cbor2.loads(bytes(r.signed))
        out.append(cbor2.loads(cose.parse_sign1(signed).payload))
    return out


@dataclass
class _Writes:
    """A chunk of stores' new versions, written in one transaction: a store's delta, its
    snapshot when due and its ScopeRow go together, so a publisher that dies mid-tick
    leaves each store either fully at its new version or at its old one."""

    versions: list[dict[str, object]] = field(default_factory=list)
    snapshots: list[dict[str, object]] = field(default_factory=list)
    rows: list[dict[str, object]] = field(default_factory=list)
    caught_up: list[str] = field(default_factory=list)  # nothing new: only `base` moves

    def __len__(self) -> int:
        return len(self.rows) + len(self.caught_up)

    def flush(self, base: int, transaction: Callable[[], AbstractContextManager[None]]) -> None:
        if not len(self):
            return
        with transaction():
            for i in range(0, len(self.versions), _INSERT_CHUNK):
                ScopeVersion.insert_many(self.versions[i : i + _INSERT_CHUNK]).execute()
            for i in range(0, len(self.snapshots), _INSERT_CHUNK):
                ScopeSnapshot.insert_many(self.snapshots[i : i + _INSERT_CHUNK]).execute()
            # (scope, version) is the delta's key: a second publisher racing this one fails
            # here and rolls the chunk back, so a store's chain never forks.
            for i in range(0, len(self.rows), _INSERT_CHUNK):
                ScopeRow.insert_many(self.rows[i : i + _INSERT_CHUNK]).on_conflict(
                    conflict_target=[ScopeRow.scope],
                    update={f: pw.EXCLUDED[f.name] for f in _ROW_FIELDS},
                ).execute()
            for i in range(0, len(self.caught_up), _INSERT_CHUNK):
                ScopeRow.update(base=base).where(
                    ScopeRow.scope.in_(self.caught_up[i : i + _INSERT_CHUNK])
                ).execute()
        self.versions, self.snapshots, self.rows, self.caught_up = [], [], [], []


def publish_scopes(
    view: ChainView,
    base: int,
    now: int,
    key: cose.SigningKey,
    cert: bytes,
    transaction: Callable[[], AbstractContextManager[None]],
    store_ids: Iterable[str] | None = None,
) -> ScopeResult:
    """Bring every store's scope up to the chain-wide version `base` (which `view` shows):
    at most one new version per scope, written STORES_PER_TRANSACTION stores at a time,
    each chunk in its own `transaction()` (so uploads never wait on a whole tick)."""
    result = ScopeResult()
    heartbeat_s = view.state.policy.stale_warn_hours * 3600 // HEARTBEATS_PER_WARNING
    view.learn(view.state.revoked)
    view.learn(view.state.redeemed)
    meta = _meta_hash(view.state)
    rows = {r.scope: r for r in ScopeRow.select()}
    tills = tills_by_store()
    touched_since: dict[int, Touched] = {}
    contents: dict[tuple[int, frozenset[str], frozenset[str], bool, bool], dict[str, object]] = {}
    snapshot_states: dict[frozenset[str], LedgerState] = {}
    writes = _Writes()
    for store_id in sorted(store_ids if store_ids is not None else stores()):
        scope = ledger.store_scope(store_id)
        result.scopes += 1
        row = rows.get(scope)
        quiet = row is not None and now - int(row.issued_at) < heartbeat_s
        mine = tills.get(store_id, {})
        mine_hash = tills_hash(mine)
        tills_changed = row is None or bytes(row.tills or b"") != mine_hash
        if row is not None and row.base == base and quiet and not tills_changed:
            continue
        had = frozenset(json.loads(row.campaigns)) if row is not None else frozenset()
        now_in = campaigns_at(view.state, store_id, now)
        since = row.base if row is not None else base
        if since not in touched_since:
            touched_since[since] = Touched.of(bodies_between(since, base))
        meta_changed = row is None or bytes(row.meta) != meta
        # Stores with the same campaigns at the same position get the same content: made
        # once (a chain-wide change touches thousands of stores alike); signed per store.
        shape = (since, had, now_in, meta_changed, row is None)
        if shape not in contents:
            contents[shape] = delta_content(
                view, touched_since[since], had, now_in, meta_changed, row is None
            )
        body = contents[shape]
        if tills_changed:  # the whole map, replacing the till's; a copy: `body` is shared
            body = {**body, "tills": ledger.pack_tills(mine)}
        if not body and quiet:
            writes.caught_up.append(scope)
        else:
            # An empty delta now and then (a heartbeat) tells a quiet store's tills that
            # their ledger is still the latest: a till judges staleness by its age.
            _sign_version(
                writes,
                view,
                scope,
                row,
                body,
                base,
                now,
                meta,
                now_in,
                (mine, mine_hash),
                key,
                cert,
                snapshot_states,
                result,
            )
        if len(writes) >= STORES_PER_TRANSACTION:
            writes.flush(base, transaction)
    writes.flush(base, transaction)
    return result


def _sign_version(
    writes: _Writes,
    view: ChainView,
    scope: str,
    row: ScopeRow | None,
    body: Mapping[str, object],
    base: int,
    now: int,
    meta: bytes,
    now_in: frozenset[str],
    tills: tuple[Mapping[str, TillKey], bytes],
    key: cose.SigningKey,
    cert: bytes,
    snapshot_states: dict[frozenset[str], LedgerState],
    result: ScopeResult,
) -> None:
    """A store's next delta (and its snapshot when due), queued in `writes`."""
    version = (row.version if row is not None else 0) + 1
    prev = bytes(row.chain) if row is not None else GENESIS
    head = {"scope": scope, "type": "delta", "version": version, "prev": prev, "issued_at": now}
    raw, payload = ledger.signed_update(key, cert, {**head, **body})
    chain = ledger.chain_next(prev, payload)
    writes.versions.append({"scope": scope, "version": version, "signed": raw, "issued_at": now})
    snap_at = row.snapshot_version if row is not None else 0
    if row is None or version - snap_at >= SNAPSHOT_EVERY:
        if now_in not in snapshot_states:  # what a store holds depends on its campaigns
            snapshot_states[now_in] = scope_state(view, "", now_in)
        state = replace(
            snapshot_states[now_in],
            scope=scope,
            version=version,
            chain=chain,
            issued_at=now,
            tills=dict(tills[0]),
        )
        snap = ledger.sign_update(key, cert, ledger.snapshot_body(state))
        writes.snapshots.append({"scope": scope, "version": version, "signed": snap})
        snap_at = version
        result.snapshots += 1
    writes.rows.append(
        {
            "scope": scope,
            "version": version,
            "chain": chain,
            "base": base,
            "campaigns": json.dumps(sorted(now_in)),
            "meta": meta,
            "issued_at": now,
            "snapshot_version": snap_at,
            "tills": tills[1],
        }
    )
    result.published += 1


def compact(keep_after_snapshot: int) -> int:
    """Drop a scope's deltas that lie more than `keep_after_snapshot` versions before its
    newest snapshot, and its older snapshots: a till that far behind gets the snapshot
    anyway. Two statements for all stores. Returns the deltas dropped."""
    newest = ScopeRow.select(ScopeRow.snapshot_version).where(ScopeRow.scope == ScopeVersion.scope)
    dropped = int(
        ScopeVersion.delete().where(ScopeVersion.version + keep_after_snapshot <= newest).execute()
    )
    newest_snap = ScopeRow.select(ScopeRow.snapshot_version).where(
        ScopeRow.scope == ScopeSnapshot.scope
    )
    ScopeSnapshot.delete().where(ScopeSnapshot.version < newest_snap).execute()
    return dropped


def behind(chain_version: int) -> list[str]:
    """The stores whose ledger has not caught up with chain-wide version `chain_version`
    (or has none yet): what the publisher still owes."""
    caught = {
        r.scope for r in ScopeRow.select(ScopeRow.scope).where(ScopeRow.base >= chain_version)
    }
    return [s for s in stores() if ledger.store_scope(s) not in caught]
