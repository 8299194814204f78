"""The signed ledger: numbered versions (snapshots and hash-chained deltas) signed by a
root-certified ledger key. Verifying and applying updates; building them for the central."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import cbor2

from coupons import cose, serials
from coupons.jsontypes import JSONObject
from coupons.keys import PURPOSE_ISSUER, PURPOSE_LEDGER, CertError, KeyCert, TrustAnchor
from coupons.rules import Campaign, InputError
from coupons.serials import SerialSet

FILE_FORMAT = "edge-redeem-ledger-file/1"
CHAIN_WIDE = ""  # the scope of the chain-wide ledger (and of ledgers from before scopes)
UPDATE_FORMAT = "edge-redeem-ledger/1"
GENESIS = bytes(32)
TILL_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # as sync.central.terminals.TERMINAL_RE


class LedgerRefused(Exception):
    """An update was not applied; `kind` says why (forged, damaged, rollback, gap, ...)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Policy:
    """Terminal behaviour the central sets through the ledger."""

    stale_warn_hours: int = 24
    stale_block_hours: int = 72
    stale_high_value_minor: int = 5_000  # above this, a stale ledger needs a manager
    clock_tolerance_s: int = 300  # how far behind trusted time the clock may be
    # Burst detectors (coupons/fraud.py): head office sets them (`redeem-central policy`);
    # a till only falls back on these defaults for a field its ledger does not carry. 0: off.
    burst_window_s: int = 60
    burst_per_coupon: int = 3  # attempts on one serial within the window
    burst_per_terminal: int = 60  # accepted redemptions per window
    burst_per_cashier: int = 30
    hold_ttl_s: int = 900
    # How far the device clock may be from the central's time as a sync measured it;
    # beyond it the clock is untrusted until a later sync measures it back in range. 0: off.
    max_clock_offset_s: int = 300

    @classmethod
    def from_dict(cls, doc: Mapping[str, object]) -> Policy:
        names = {f.name for f in fields(cls)}
        unknown = set(doc) - names
        if unknown:
            raise InputError(f"policy: unknown field '{sorted(unknown)[0]}'")
        values: dict[str, int] = {}
        for key, value in doc.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"policy: '{key}' must be a non-negative integer")
            values[key] = value
        return cls(**values)

    def to_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class PlainCode:
    campaign: str
    serial: int


@dataclass(frozen=True, slots=True)
class TillKey:
    """A till of the store as its ledger lists it: its device key (Ed25519, 32 bytes) and
    whether the central revoked it. Tills of one store vouch for each other with these
    (docs/store-peers.md); a revoked till stays listed so that its messages are refused."""

    public_key: bytes
    revoked: bool = False


def store_scope(store: str) -> str:
    """The scope of one store's ledger: its own hash chain, holding what can matter there."""
    return f"store:{store}"


@dataclass
class LedgerState:
    # Which ledger this is: CHAIN_WIDE or store_scope(store). Versions and the chain hash
    # count within one scope; a till holds one scope at a time (docs/central-scale.md).
    scope: str = CHAIN_WIDE
    version: int = 0
    chain: bytes = GENESIS
    issued_at: int = 0
    issuer_keys: dict[bytes, KeyCert] = field(default_factory=dict)
    revoked_kids: set[bytes] = field(default_factory=set)
    campaigns: dict[str, Campaign] = field(default_factory=dict)
    usage: dict[str, tuple[int, int]] = field(default_factory=dict)  # count, minor elsewhere
    # Uses per (campaign, customer ref) the central counts, for campaigns with a per-customer
    # limit; like `usage`, this till's own synced uses are in it too.
    customer_usage: dict[tuple[str, str], int] = field(default_factory=dict)
    revoked: SerialSet = field(default_factory=SerialSet)
    redeemed: SerialSet = field(default_factory=SerialSet)
    deny_tags: set[bytes] = field(default_factory=set)
    deny_customers: set[str] = field(default_factory=set)
    plain_salt: bytes = b""
    plain_codes: dict[bytes, PlainCode] = field(default_factory=dict)
    policy: Policy = field(default_factory=Policy)
    # Per campaign, the AES-128 SDM key of its NTAG 424 DNA (SUN) tags.
    sun_keys: dict[str, bytes] = field(default_factory=dict)
    # The store's enrolled tills (a store scope only; the chain-wide ledger lists none).
    tills: dict[str, TillKey] = field(default_factory=dict)

    def summary(self) -> JSONObject:
        return {
            "scope": self.scope,
            "version": self.version,
            "chain": self.chain.hex(),
            "issued_at": self.issued_at,
            "campaigns": len(self.campaigns),
            "issuer_keys": len(self.issuer_keys),
            "revoked_serials": len(self.revoked),
            "redeemed_serials": len(self.redeemed),
            "plain_codes": len(self.plain_codes),
            "sun_keys": len(self.sun_keys),
            "tills": len(self.tills),
        }


def serial_field(name: str, values: Iterable[int]) -> dict[str, bytes]:
    """A set of serials as an update carries it: the numbered ones as `name`_rb, a
    serialized roaring bitmap, when that is smaller than 8 bytes a serial (well under a
    byte each), and the random ones in `name`, the sorted 8-byte list (22 bytes each in a
    bitmap, and as much memory again at the till that reads it; docs/central-scale.md)."""
    numbered, random = serials.split_numbered(values)
    rb = numbered.serialize() if len(numbered) else b""
    if rb and len(rb) < 8 * len(numbered):
        out = {f"{name}_rb": rb}
        if len(random):
            out[name] = serials.pack(random)
        return out
    return {name: serials.pack(values)}


def read_serials(body: Mapping[str, Any], name: str) -> SerialSet:
    """The serials an update lists under `name`, in either form (both may be present)."""
    out = SerialSet(serials.unpack(_blob(body.get(name, b""), name)))
    if f"{name}_rb" in body:
        out.add_many(serials.unpack_rb(_blob(body[f"{name}_rb"], f"{name}_rb")))
    return out


def _blob(value: object, name: str) -> bytes:
    if not isinstance(value, bytes):
        raise InputError(f"'{name}' is not a byte string")
    return value


def chain_next(prev: bytes, payload: bytes) -> bytes:
    return hashlib.sha256(prev + hashlib.sha256(payload).digest()).digest()


# ---------------------------------------------------------------- building (central side)


def sign_update(
    ledger_key: cose.SigningKey, ledger_cert: bytes, body: Mapping[str, object]
) -> bytes:
    """One signed update: [ledger certificate, COSE_Sign1(body)]."""
    return signed_update(ledger_key, ledger_cert, body)[0]


def signed_update(
    ledger_key: cose.SigningKey, ledger_cert: bytes, body: Mapping[str, object]
) -> tuple[bytes, bytes]:
    """sign_update() and the signed payload, whose hash the chain takes (chain_next)."""
    payload = cbor2.dumps({"format": UPDATE_FORMAT, **body}, canonical=True)
    return cbor2.dumps([ledger_cert, ledger_key.sign1(payload)]), payload


def ledger_file(updates: Iterable[bytes]) -> bytes:
    return cbor2.dumps({"format": FILE_FORMAT, "updates": list(updates)})


def snapshot_body(state: LedgerState) -> dict[str, object]:
    return {
        **({"scope": state.scope} if state.scope else {}),
        "type": "snapshot",
        "version": state.version,
        "chain": state.chain,
        "issued_at": state.issued_at,
        "issuer_certs": [c.raw for c in state.issuer_keys.values()],
        "revoked_kids": sorted(state.revoked_kids),
        "campaigns": [c.to_dict() for c in state.campaigns.values()],
        "usage": {k: list(v) for k, v in state.usage.items()},
        **(
            {"customer_usage": pack_customer_usage(state.customer_usage)}
            if state.customer_usage
            else {}
        ),
        **serial_field("revoked", state.revoked),
        **serial_field("redeemed", state.redeemed),
        "deny_tags": sorted(state.deny_tags),
        "deny_customers": sorted(state.deny_customers),
        "plain_salt": state.plain_salt,
        "plain_codes": [[h, p.campaign, p.serial] for h, p in state.plain_codes.items()],
        "policy": state.policy.to_dict(),
        "sun_keys": dict(sorted(state.sun_keys.items())),
        **({"tills": pack_tills(state.tills)} if state.tills else {}),
    }


def pack_tills(tills: Mapping[str, TillKey]) -> dict[str, dict[str, object]]:
    """The ledger's `tills` map: {terminal id: {"key": 32 bytes, "revoked": bool}}."""
    return {t: {"key": k.public_key, "revoked": k.revoked} for t, k in sorted(tills.items())}


def _ref_out(ref: str) -> bytes | str:
    """A customer reference as the ledger carries it: the bytes of a hex hash (half the
    size), any other text as it is."""
    if len(ref) % 2 == 0 and ref == ref.lower():
        try:
            return bytes.fromhex(ref)
        except ValueError:
            pass
    return ref


def _ref_in(ref: object) -> str:
    if isinstance(ref, bytes):
        return ref.hex()
    if isinstance(ref, str):
        return ref
    raise InputError("customer_usage: a customer reference is bytes or text")


def pack_customer_usage(
    counts: Mapping[tuple[str, str], int],
) -> dict[str, dict[bytes | str, int]]:
    """{(campaign, customer): count} as the ledger's `customer_usage` map:
    {campaign: {customer ref: count}}."""
    out: dict[str, dict[bytes | str, int]] = {}
    for (cid, ref), n in sorted(counts.items()):
        out.setdefault(cid, {})[_ref_out(ref)] = int(n)
    return out


def clamped_usage(doc: Mapping[str, Sequence[int]] | None) -> dict[str, tuple[int, int]]:
    """The ledger's `usage` map, each figure clamped at zero: a negative use count or value
    (a central that believed a till's negative discount) must not give a budget back."""
    return {k: (max(0, int(v[0])), max(0, int(v[1]))) for k, v in dict(doc or {}).items()}


def _customer_usage(
    doc: Mapping[str, Mapping[bytes | str, int]] | None,
) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for cid, refs in dict(doc or {}).items():
        if not isinstance(cid, str):
            raise InputError("customer_usage: campaign ids are text")
        for ref, n in dict(refs).items():
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise InputError("customer_usage: counts are non-negative integers")
            out[(cid, _ref_in(ref))] = n
    return out


# ---------------------------------------------------------------- reading (terminal side)


def read_file(data: bytes) -> list[bytes]:
    try:
        # Strict as a token is (cose.loads_strict): one reading of the bytes, nothing after.
        doc = cose.loads_strict(data, "ledger file")
    except cose.CoseError as exc:
        raise LedgerRefused("damaged", f"ledger file is not readable CBOR ({exc})") from None
    if not isinstance(doc, Mapping) or doc.get("format") != FILE_FORMAT:
        raise LedgerRefused("damaged", "not an edge-redeem ledger file")
    updates = doc.get("updates")
    if not isinstance(updates, (list, tuple)) or not updates:
        raise LedgerRefused("damaged", "ledger file holds no updates")
    if not all(isinstance(u, bytes) for u in updates):
        raise LedgerRefused("damaged", "ledger file updates are not byte strings")
    return list(updates)


@dataclass(frozen=True)
class VerifiedUpdate:
    body: Mapping[str, Any]
    payload: bytes


def verify_update(anchor: TrustAnchor, raw: bytes) -> VerifiedUpdate:
    """Check certificate chain and signature; return the body. Raises LedgerRefused."""
    try:
        outer = cose.loads_strict(raw, "ledger update")
        if not isinstance(outer, Iterable):  # what unpacking it would refuse, as it would
            raise TypeError("not an array")
        cert_raw, signed = outer
        msg = cose.parse_sign1(signed)
    except Exception:
        raise LedgerRefused("damaged", "update is truncated or not an update") from None
    try:
        cert = anchor.check_cert(cert_raw)
    except CertError as exc:
        raise LedgerRefused("forged", str(exc)) from None
    if cert.purpose != PURPOSE_LEDGER or cert.kid != msg.kid:
        raise LedgerRefused("forged", "update not signed by a ledger key")
    if not cose.verify_sign1(msg, cert.public_key):
        raise LedgerRefused("forged", "ledger signature does not verify")
    try:
        body = cose.loads_strict(msg.payload, "ledger update body")
    except cose.CoseError:
        raise LedgerRefused("damaged", "update body is not CBOR") from None
    if not isinstance(body, Mapping) or body.get("format") != UPDATE_FORMAT:
        raise LedgerRefused("damaged", "update body has an unknown format")
    issued = body.get("issued_at")
    # A snapshot of an older version may be signed later, by a newer ledger key: the
    # certificate must cover the signing time, which `signed_at` states when it differs.
    signed = body.get("signed_at", issued)
    if not isinstance(issued, int) or not isinstance(signed, int) or not cert.valid_at(signed):
        raise LedgerRefused("forged", "ledger key was not valid when the update was signed")
    return VerifiedUpdate(body, msg.payload)


def _chain_of(body: Mapping[str, object], payload: bytes) -> bytes | None:
    """The chain hash the terminal holds after this update: a snapshot names it, a delta's
    follows from its predecessor and its own payload."""
    if body.get("type") == "snapshot":
        chain = body.get("chain")
        return chain if isinstance(chain, bytes) else None
    prev = body.get("prev")
    return chain_next(prev, payload) if isinstance(prev, bytes) else None


def _certs(anchor: TrustAnchor, raws: Iterable[bytes] | None) -> dict[bytes, KeyCert]:
    out: dict[bytes, KeyCert] = {}
    for raw in raws or ():
        cert = anchor.check_cert(raw)
        if cert.purpose == PURPOSE_ISSUER:
            out[cert.kid] = cert
    return out


def _sun_keys(doc: Mapping[str, bytes] | None) -> dict[str, bytes]:
    out = {}
    for cid, key in dict(doc or {}).items():
        if not isinstance(cid, str) or not isinstance(key, bytes) or len(key) != 16:
            raise InputError("sun_keys: each is a campaign id and a 16-byte AES key")
        out[cid] = key
    return out


def _tills(doc: object) -> dict[str, TillKey]:
    """The `tills` map of an update; the whole map, replacing the till's (as issuer_certs)."""
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise InputError("tills: not a map")
    out = {}
    for tid, entry in doc.items():
        if not isinstance(tid, str) or not TILL_ID_RE.fullmatch(tid):
            raise InputError("tills: a terminal id is 1-64 letters, digits, '_', '.' or '-'")
        if not isinstance(entry, Mapping) or "key" not in entry or "revoked" not in entry:
            raise InputError("tills: each entry is {key, revoked}")
        key, revoked = entry["key"], entry["revoked"]
        if not isinstance(key, bytes) or len(key) != 32 or not isinstance(revoked, bool):
            raise InputError("tills: a key is 32 bytes and 'revoked' a boolean")
        out[tid] = TillKey(key, revoked)
    return out


def _campaigns(docs: Iterable[Mapping[str, object]] | None) -> dict[str, Campaign]:
    out = {}
    for doc in docs or ():
        c = Campaign.from_dict(dict(doc))
        out[c.id] = c
    return out


def scope_of(body: Mapping[str, Any]) -> str:
    scope = body.get("scope", CHAIN_WIDE)
    if not isinstance(scope, str):
        raise LedgerRefused("damaged", "update names no readable scope")
    return scope


def _check_scope(state: LedgerState, scope: str, kind: object, store: str | None) -> None:
    """A till takes its own store's ledger, or the chain-wide one (a superset, for a USB
    import or a till from before scopes); never another store's. Once it holds its store's
    scope it stays there: only a snapshot of its own scope replaces a chain-wide ledger."""
    if scope != CHAIN_WIDE and store is not None and scope != store_scope(store):
        raise LedgerRefused(
            "wrong_scope", f"this ledger is for {scope}, not for this till's {store_scope(store)}"
        )
    if scope == state.scope or state.version == 0:
        return
    if state.scope == CHAIN_WIDE and kind == "snapshot":
        return  # the one-way move from the chain-wide ledger to the store's own
    raise LedgerRefused(
        "wrong_scope",
        f"this till holds the ledger of {state.scope or 'the whole chain'}; "
        f"an update of {scope or 'the whole chain'} does not continue it",
    )


def apply(
    anchor: TrustAnchor, state: LedgerState, raw: bytes, store: str | None = None
) -> tuple[LedgerState, str]:
    """Return the state after one update and the update's type ("snapshot" or "delta");
    `state` itself is never modified. `store`: the till's store, whose scope (or the
    chain-wide one) is the only one it accepts; None checks no scope (the central)."""
    upd = verify_update(anchor, raw)
    body = upd.body
    kind, version = body.get("type"), body.get("version")
    if not isinstance(version, int):
        raise LedgerRefused("damaged", "update has no version")
    scope = scope_of(body)
    _check_scope(state, scope, kind, store)
    moving = scope != state.scope
    if not moving:
        if version == state.version and _chain_of(body, upd.payload) == state.chain:
            raise LedgerRefused("current", f"already at version {version}")
        if version <= state.version:
            raise LedgerRefused("rollback", f"version {version} is not newer than {state.version}")
    try:
        if kind == "snapshot":
            return _from_snapshot(anchor, body, scope), "snapshot"
        if kind == "delta":
            base = LedgerState(scope=scope) if moving else state
            if version != base.version + 1 or body.get("prev") != base.chain:
                raise LedgerRefused(
                    "gap", f"delta {version} does not follow version {base.version}"
                )
            return _apply_delta(anchor, base, body, chain_next(base.chain, upd.payload)), "delta"
    except (InputError, CertError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise LedgerRefused("damaged", f"update content is invalid: {exc}") from None
    raise LedgerRefused("damaged", f"unknown update type {kind!r}")


def _from_snapshot(anchor: TrustAnchor, b: Mapping[str, Any], scope: str) -> LedgerState:
    return LedgerState(
        scope=scope,
        version=b["version"],
        chain=bytes(b["chain"]),
        issued_at=b["issued_at"],
        issuer_keys=_certs(anchor, b.get("issuer_certs")),
        revoked_kids=set(b.get("revoked_kids", ())),
        campaigns=_campaigns(b.get("campaigns")),
        usage=clamped_usage(b.get("usage")),
        customer_usage={k: n for k, n in _customer_usage(b.get("customer_usage")).items() if n},
        revoked=SerialSet(read_serials(b, "revoked")),
        redeemed=SerialSet(read_serials(b, "redeemed")),
        deny_tags=set(b.get("deny_tags", ())),
        deny_customers=set(b.get("deny_customers", ())),
        plain_salt=bytes(b.get("plain_salt", b"")),
        plain_codes={bytes(h): PlainCode(c, s) for h, c, s in b.get("plain_codes", ())},
        policy=Policy.from_dict(dict(b.get("policy", {}))),
        sun_keys=_sun_keys(b.get("sun_keys")),
        tills=_tills(b.get("tills")),
    )


def _apply_delta(
    anchor: TrustAnchor, s: LedgerState, b: Mapping[str, Any], chain: bytes
) -> LedgerState:
    campaigns = dict(s.campaigns)
    # A campaign that left the scope (ended past its grace, or no longer at this store)
    # leaves with what the ledger held for it; its serials come as unredeemed/unrevoked.
    gone = set(b.get("removed_campaigns", ()))
    for cid in gone:
        campaigns.pop(cid, None)
    campaigns.update(_campaigns(b.get("campaigns")))
    revoked, redeemed = s.revoked.copy(), s.redeemed.copy()
    revoked.add_many(read_serials(b, "revoked"))
    revoked.discard_many(read_serials(b, "unrevoked"))
    redeemed.add_many(read_serials(b, "redeemed"))
    redeemed.discard_many(read_serials(b, "unredeemed"))
    codes = {h: p for h, p in s.plain_codes.items() if p.campaign not in gone}
    codes.update({bytes(h): PlainCode(c, n) for h, c, n in b.get("plain_codes", ())})
    usage = {cid: u for cid, u in s.usage.items() if cid not in gone}
    usage.update(clamped_usage(b.get("usage")))
    customer_usage = s.customer_usage
    if gone:
        customer_usage = {k: n for k, n in customer_usage.items() if k[0] not in gone}
    if "customer_usage" in b:  # counts as they are now; 0 once every use was refunded
        customer_usage = dict(customer_usage)
        for key, n in _customer_usage(b["customer_usage"]).items():
            if n:
                customer_usage[key] = n
            else:
                customer_usage.pop(key, None)
    return replace(
        s,
        version=b["version"],
        chain=chain,
        issued_at=b["issued_at"],
        issuer_keys=_certs(anchor, b["issuer_certs"]) if "issuer_certs" in b else s.issuer_keys,
        revoked_kids=s.revoked_kids | set(b.get("revoked_kids", ())),
        campaigns=campaigns,
        usage=usage,
        customer_usage=customer_usage,
        revoked=revoked,
        redeemed=redeemed,
        deny_tags=s.deny_tags | set(b.get("deny_tags", ())),
        deny_customers=s.deny_customers | set(b.get("deny_customers", ())),
        plain_salt=bytes(b["plain_salt"]) if "plain_salt" in b else s.plain_salt,
        plain_codes=codes,
        policy=Policy.from_dict(dict(b["policy"])) if "policy" in b else s.policy,
        sun_keys={
            **{cid: k for cid, k in s.sun_keys.items() if cid not in gone},
            **_sun_keys(b.get("sun_keys")),
        },
        tills=_tills(b["tills"]) if "tills" in b else s.tills,
    )
