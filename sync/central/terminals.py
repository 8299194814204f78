"""Who may talk to the central: one-time enrollment codes, enrolled terminals (their device
keys, revocation) and admin tokens. Codes and tokens are stored only as hashes."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, tzinfo
from typing import TypedDict

import peewee as pw

from coupons.journal import GENESIS_HASH
from sync import protocol
from sync.central import display, fleet
from sync.central.models import AdminToken, EnrollCode, TerminalRow
from sync.central.store import CODE_ALPHABET, Central, CentralError
from sync.central.users import check_role

ID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
TERMINAL_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
CODE_GROUPS = 4  # 4 groups of 4 from a 32-letter alphabet: 80 bits
SEEN_EVERY_S = 60  # last_seen is written at most this often per terminal
DEFAULT_TTL_S = 3600
ADMIN_TOKEN_PREFIX = "era_"


class EnrollRefused(CentralError):
    """The code is unknown, used or expired (deliberately one answer for all three)."""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def normalise_code(code: str) -> str:
    """Codes are read aloud and typed: case, spaces and dashes do not matter."""
    return "".join(ch for ch in code.upper() if ch.isalnum())


def check_store(store: str) -> str:
    if not ID_RE.fullmatch(store):
        raise CentralError("a store id is 1-32 letters, digits, '-' or '_'")
    return store


# ---------------------------------------------------------------- enrollment


def new_enroll_code(central: Central, store: str, ttl_s: int = DEFAULT_TTL_S) -> tuple[str, int]:
    """A one-time code for enrolling one terminal into `store`; returns it and its expiry."""
    check_store(store)
    if not 1 <= ttl_s <= 30 * 24 * 3600:
        raise CentralError("--ttl must be between 1 second and 30 days")
    code = "-".join(
        "".join(secrets.choice(CODE_ALPHABET) for _ in range(4)) for _ in range(CODE_GROUPS)
    )
    now = int(central.now())
    EnrollCode.create(
        code_hash=_digest(normalise_code(code)),
        store=store,
        created_at=now,
        expires_at=now + ttl_s,
    )
    return code, now + ttl_s


@dataclass(frozen=True)
class Enrolled:
    terminal: str
    store: str


def enroll(central: Central, code: str, device_key: bytes) -> Enrolled:
    """Spend a code (atomically: two instances cannot both use it) and register the key."""
    if len(device_key) != 32:
        raise CentralError("device_key must be a 32-byte Ed25519 public key (64 hex digits)")
    digest = _digest(normalise_code(code))
    now = int(central.now())
    for _ in range(5):
        try:
            with central.writing():
                spent = (
                    EnrollCode.update(used_at=now)
                    .where(
                        (EnrollCode.code_hash == digest)
                        & EnrollCode.used_at.is_null()
                        & (EnrollCode.expires_at > now)
                    )
                    .execute()
                )
                if spent != 1:
                    raise EnrollRefused("enrollment code is unknown, already used or expired")
                store = EnrollCode.get(EnrollCode.code_hash == digest).store
                number = TerminalRow.select().where(TerminalRow.store == store).count() + 1
                terminal = f"{store}-{number:03d}"
                TerminalRow.create(
                    id=terminal,
                    store=store,
                    public_key=device_key.hex(),
                    enrolled_at=now,
                    head_hash=GENESIS_HASH,
                )
                EnrollCode.update(terminal=terminal).where(EnrollCode.code_hash == digest).execute()
            return Enrolled(terminal, store)
        except pw.IntegrityError:
            continue  # another instance took that number meanwhile: count again
    raise CentralError("could not assign a terminal id; try again")


class TerminalDoc(TypedDict):
    """An enrolled terminal as `redeem-central terminals` and the admin API show it."""

    terminal: str
    store: str
    enrolled_at: int  # epoch seconds, as every time here; the *_iso fields say it in UTC
    enrolled_at_iso: str
    revoked: bool
    acked_seq: int
    last_seen: int | None  # any signed request
    last_seen_iso: str | None
    last_upload: int | None  # the last journal batch that stored entries: its last sync
    last_upload_iso: str | None
    ledger_version: int | None
    ledger_published_at: int | None  # when that version of its store's ledger was published
    ledger_age_s: int | None  # central now minus that
    ledger_behind: int | None  # versions of its store's ledger published since
    fingerprint: str  # of its device key
    # What the till last reported (sync/till_status.py); None: never reported (an old till)
    backlog: int | None  # entries it reported having written that the central lacks
    clock_ms: int | None  # its clock minus the central's (+ when it runs ahead)
    health: str | None  # ok | stopped | degraded | down (the worst of its inputs)
    unwell: list[str]  # the inputs not ok
    app_version: str | None
    status_at: int | None  # when the central stored that report
    status_ignored: int  # reports ignored as malformed or badly signed


def list_terminals(central: Central) -> list[TerminalDoc]:
    now = int(central.now())
    rows = list(TerminalRow.select().order_by(TerminalRow.store, TerminalRow.id))
    published = fleet.published_at((t.store, t.ledger_version) for t in rows)
    latest = fleet.latest_versions({t.store for t in rows})
    return [_doc(t, published, latest, now) for t in rows]


def _doc(
    t: TerminalRow, published: dict[tuple[str, int], int], latest: dict[str, int], now: int
) -> TerminalDoc:
    at = published.get((t.store, t.ledger_version)) if t.ledger_version else None
    head = latest.get(t.store)
    return {
        "terminal": t.id,
        "store": t.store,
        "enrolled_at": t.enrolled_at,
        "enrolled_at_iso": display.iso(t.enrolled_at) or "",
        "revoked": bool(t.revoked),
        "acked_seq": int(t.acked_seq),
        "last_seen": t.last_seen,
        "last_seen_iso": display.iso(t.last_seen),
        "last_upload": t.last_upload,
        "last_upload_iso": display.iso(t.last_upload),
        "ledger_version": t.ledger_version,
        "ledger_published_at": at,
        "ledger_age_s": None if at is None else now - at,
        "ledger_behind": None
        if head is None or t.ledger_version is None
        else max(0, head - t.ledger_version),
        "fingerprint": "SHA256:" + hashlib.sha256(bytes.fromhex(t.public_key)).hexdigest()[:32],
        "backlog": fleet.backlog(t.journal_head, int(t.acked_seq)),
        "clock_ms": t.clock_ms,
        "health": t.health,
        "unwell": t.unwell.split(",") if t.unwell else [],
        "app_version": t.app_version,
        "status_at": t.status_at,
        "status_ignored": int(t.status_ignored or 0),
    }


def terminals_text(items: list[TerminalDoc], now_s: int, tz: tzinfo = UTC) -> str:
    """`redeem-central terminals` for a person: one row a terminal, times in ISO 8601 with
    their age. "acked" is the last entry the central holds; backlog, clock (the till's
    minus the central's), health and app are what the till last reported ("-": never,
    e.g. a till from before the report)."""
    if not items:
        return "no terminals enrolled"
    rows = [
        [
            t["terminal"],
            t["store"],
            "revoked" if t["revoked"] else "active",
            f"v{t['ledger_version']}" if t["ledger_version"] is not None else "none",
            display.ago(t["ledger_age_s"]) if t["ledger_age_s"] is not None else "-",
            f"#{t['acked_seq']}",
            str(t["backlog"]) if t["backlog"] is not None else "-",
            display.clock(t["clock_ms"]),
            display.health(t["health"], t["unwell"]),
            t["app_version"] or "-",
            display.when(t["last_upload"], now_s, tz),
            display.when(t["last_seen"], now_s, tz),
            display.iso(t["enrolled_at"], tz) or "-",
        ]
        for t in items
    ]
    header = ["terminal", "store", "state", "ledger", "ledger age", "acked", "backlog", "clock"]
    header += ["health", "app", "last sync", "last seen", "enrolled"]
    return "\n".join(display.table(header, rows, indent=""))


def revoke_terminal(central: Central, terminal: str) -> None:
    n = (
        TerminalRow.update(revoked=True, revoked_at=int(central.now()))
        .where(TerminalRow.id == terminal)
        .execute()
    )
    if n == 0:
        raise CentralError(f"no terminal {terminal}")


# ---------------------------------------------------------------- signed requests


def authenticate(
    central: Central, headers: Mapping[str, str], method: str, path_qs: str, body: bytes
) -> TerminalRow:
    """The enrolled, unrevoked terminal that signed this request (protocol.check_signature);
    raises protocol.AuthError (401 unknown or badly signed, 403 revoked)."""
    tid = headers.get(protocol.HEADER_TERMINAL, "")
    row = TerminalRow.get_or_none(TerminalRow.id == tid) if TERMINAL_RE.fullmatch(tid) else None
    key = bytes.fromhex(row.public_key) if row is not None else None
    now = central.now()
    protocol.check_signature(headers, method, path_qs, body, key, now)
    assert row is not None  # check_signature refuses an unknown terminal
    if row.revoked:
        raise protocol.AuthError(403, f"terminal {row.id} is revoked")
    if row.last_seen is None or row.last_seen < now - SEEN_EVERY_S:
        TerminalRow.update(last_seen=int(now)).where(TerminalRow.id == row.id).execute()
    fleet.record_status(row, headers, method, path_qs, now)
    return row


# ---------------------------------------------------------------- admin tokens


class TokenDoc(TypedDict):
    """An admin token as `admin-token list` shows it: never the token, only its id."""

    id: str  # the first 12 hex digits of its hash
    label: str | None
    role: str
    created_at: int
    revoked: bool


TOKEN_ID_CHARS = 12


def new_admin_token(central: Central, label: str | None = None, role: str = "admin") -> str:
    check_role(role)
    token = ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
    AdminToken.create(
        token_hash=_digest(token), label=label, role=role, created_at=int(central.now())
    )
    return token


def token_doc(row: AdminToken) -> TokenDoc:
    return {
        "id": row.token_hash[:TOKEN_ID_CHARS],
        "label": row.label,
        "role": row.role,
        "created_at": int(row.created_at),
        "revoked": bool(row.revoked),
    }


def list_admin_tokens() -> list[TokenDoc]:
    return [token_doc(t) for t in AdminToken.select().order_by(AdminToken.created_at)]


def revoke_admin_token(token_id: str) -> tuple[TokenDoc, TokenDoc]:
    """Revoke the one token whose id (as listed) is this; its documents before and after."""
    if not re.fullmatch(f"[0-9a-f]{{{TOKEN_ID_CHARS}}}", token_id):
        raise CentralError(f"a token id is {TOKEN_ID_CHARS} hex digits (`admin-token list`)")
    rows = list(AdminToken.select().where(AdminToken.token_hash.startswith(token_id)))
    if len(rows) != 1:
        raise CentralError(f"no admin token {token_id}")
    before = token_doc(rows[0])
    AdminToken.update(revoked=True).where(AdminToken.token_hash == rows[0].token_hash).execute()
    return before, {**before, "revoked": True}


@dataclass(frozen=True)
class Caller:
    """Who an admin request comes from: the audit log's actor, and the role it holds."""

    actor: str
    role: str


def admin_caller(authorization: str | None) -> Caller | None:
    """The unrevoked admin token in an Authorization header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    row = AdminToken.get_or_none(
        (AdminToken.token_hash == _digest(token.strip())) & (AdminToken.revoked == False)  # noqa: E712
    )
    if row is None:
        return None
    return Caller(f"token:{row.label or row.token_hash[:TOKEN_ID_CHARS]}", row.role)
