"""Head office's people and what they may do: console users (argon2id password hashes,
lock-out after repeated failures), the roles and their permissions (one table, shared by
users and admin tokens), and the append-only audit log of every change."""

from __future__ import annotations

import json
import re
from typing import TypedDict

import peewee as pw
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from coupons import csvsafe
from sync.central.models import AuditRow, UserRow
from sync.central.store import Central, CentralError

ROLES = ("admin", "marketer", "analyst", "auditor")
# Permission -> the roles that hold it: the one place that says who may do what. An
# auditor holds only the read permissions (it reads everything and changes nothing).
PERMISSIONS: dict[str, frozenset[str]] = {
    "read": frozenset(ROLES),
    "audit.read": frozenset({"admin", "auditor"}),
    "campaigns.write": frozenset({"admin", "marketer"}),
    "coupons.issue": frozenset({"admin", "marketer"}),
    "coupons.revoke": frozenset({"admin", "analyst"}),
    "flags.decide": frozenset({"admin", "analyst"}),
    "ledger.publish": frozenset({"admin", "marketer"}),
    "terminals.manage": frozenset({"admin"}),
    "keys.manage": frozenset({"admin"}),
    "users.manage": frozenset({"admin"}),
}
NAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 1024  # argon2 takes any length; a megabyte "password" is an attack
MAX_FAILURES = 5  # wrong passwords in a row before the account locks
LOCK_S = 15 * 60
AUDIT_TEXT_CHARS = 20_000  # a before/after document longer than this is cut (and says so)

# argon2-cffi's defaults follow RFC 9106's second recommended option (argon2id, 64 MiB).
_hasher = PasswordHasher()
# Verified against when the name is unknown, so that an unknown name costs as long as a
# wrong password and the answer time does not tell which names exist.
_DUMMY_HASH = _hasher.hash("not a password of anyone")


class UserError(CentralError):
    """A user that does not exist, a bad name, role or password."""


class LoginRefused(CentralError):
    """Wrong name or password (one answer for both), a disabled or a locked account."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # bad-credentials | disabled | locked


class UserDoc(TypedDict):
    name: str
    role: str
    disabled: bool
    failed_logins: int
    locked_until: int | None
    created_at: int


class AuditDoc(TypedDict):
    id: int
    at: int
    actor: str
    action: str
    target: str
    before: object
    after: object


def allowed(role: str, permission: str) -> bool:
    """Whether `role` holds `permission`; an unknown permission is held by nobody."""
    return role in PERMISSIONS.get(permission, frozenset())


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    return role


def _check_password(password: str) -> str:
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise UserError(f"a password has {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters")
    return password


def _doc(row: UserRow) -> UserDoc:
    return {
        "name": row.name,
        "role": row.role,
        "disabled": bool(row.disabled),
        "failed_logins": int(row.failed_logins),
        "locked_until": row.locked_until,
        "created_at": int(row.created_at),
    }


def _get(name: str) -> UserRow:
    row = UserRow.get_or_none(UserRow.name == name) if NAME_RE.fullmatch(name) else None
    if row is None:
        raise UserError(f"no user {name!r}")
    return row


# ---------------------------------------------------------------- users


def add_user(central: Central, actor: str, name: str, role: str, password: str) -> UserDoc:
    if not NAME_RE.fullmatch(name):
        raise UserError("a user name is 1-64 letters, digits, '.', '@', '-' or '_'")
    check_role(role)
    digest = _hasher.hash(_check_password(password))
    try:
        with central.writing():
            row = UserRow.create(
                name=name, role=role, password_hash=digest, created_at=int(central.now())
            )
            doc = _doc(row)
            audit(central, actor, "user.add", f"user:{name}", None, doc)
    except pw.IntegrityError:
        raise UserError(f"user {name!r} exists already") from None
    return doc


def list_users() -> list[UserDoc]:
    return [_doc(r) for r in UserRow.select().order_by(UserRow.name)]


def disable_user(central: Central, actor: str, name: str) -> UserDoc:
    with central.writing():
        row = _get(name)
        before = _doc(row)
        UserRow.update(disabled=True, session_epoch=UserRow.session_epoch + 1).where(
            UserRow.id == row.id
        ).execute()
        after = _doc(UserRow.get_by_id(row.id))
        audit(central, actor, "user.disable", f"user:{name}", before, after)
    return after


def end_sessions(name: str) -> None:
    """End every console session of a user (logging out ends them all: the sessions are
    signed cookies, and only the user's epoch can take one back)."""
    UserRow.update(session_epoch=UserRow.session_epoch + 1).where(UserRow.name == name).execute()


def reset_password(central: Central, actor: str, name: str, password: str) -> UserDoc:
    """A new password; it also clears the failure count and a lock (the admin who resets
    it has checked who asked). The audit entry never holds a hash."""
    digest = _hasher.hash(_check_password(password))
    with central.writing():
        row = _get(name)
        before = _doc(row)
        UserRow.update(
            password_hash=digest,
            failed_logins=0,
            locked_until=None,
            session_epoch=UserRow.session_epoch + 1,  # a session begun before ends here
        ).where(UserRow.id == row.id).execute()
        after = _doc(UserRow.get_by_id(row.id))
        audit(central, actor, "user.reset-password", f"user:{name}", before, after)
    return after


def verify_login(central: Central, name: str, password: str, now: float) -> UserDoc:
    """The user whose name and password these are, or LoginRefused. Five wrong passwords
    in a row lock the account for 15 minutes (even the right password is refused then);
    the lock is recorded in the audit log."""
    row = UserRow.get_or_none(UserRow.name == name) if NAME_RE.fullmatch(name) else None
    if row is None or len(password) > MAX_PASSWORD_CHARS:
        _verify(_DUMMY_HASH, password[:MAX_PASSWORD_CHARS])
        raise LoginRefused("bad-credentials", "wrong user name or password")
    if row.locked_until is not None and now < row.locked_until:
        raise LoginRefused("locked", "too many wrong passwords: try again in 15 minutes")
    good = _verify(row.password_hash, password)
    if good and row.disabled:
        raise LoginRefused("disabled", f"user {name} is disabled")
    if good:
        fields: dict[str, object] = {"failed_logins": 0, "locked_until": None}
        if _hasher.check_needs_rehash(row.password_hash):
            fields["password_hash"] = _hasher.hash(password)
        UserRow.update(**fields).where(UserRow.id == row.id).execute()
        return _doc(UserRow.get_by_id(row.id))
    _count_failure(central, row, now)
    raise LoginRefused("bad-credentials", "wrong user name or password")


def _verify(digest: str, password: str) -> bool:
    try:
        return _hasher.verify(digest, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _count_failure(central: Central, row: UserRow, now: float) -> None:
    # Counted in the database (an expression, not read-modify-write): two instances
    # answering wrong passwords at once both count.
    with central.writing():
        UserRow.update(failed_logins=UserRow.failed_logins + 1).where(
            UserRow.id == row.id
        ).execute()
        fresh = UserRow.get_by_id(row.id)
        if fresh.failed_logins >= MAX_FAILURES:
            before = _doc(fresh)
            UserRow.update(failed_logins=0, locked_until=int(now) + LOCK_S).where(
                UserRow.id == row.id
            ).execute()
            after = _doc(UserRow.get_by_id(row.id))
            audit(central, row.name, "user.lock", f"user:{row.name}", before, after)


# ---------------------------------------------------------------- the audit log


def _json(value: object) -> str | None:
    if value is None:
        return None
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    if len(text) > AUDIT_TEXT_CHARS:
        return json.dumps({"truncated": True, "head": text[:AUDIT_TEXT_CHARS]})
    return text


def audit(
    central: Central,
    actor: str,
    action: str,
    target: str,
    before: object = None,
    after: object = None,
) -> int:
    """Append one entry (who, when, what, before and after) and return its id. Called in
    the transaction of the change where there is one, so the entry and the change commit
    together."""
    row = AuditRow.create(
        at=int(central.now()),
        actor=actor[:255],
        action=action[:255],
        target=target,
        before=_json(before),
        after=_json(after),
    )
    return int(row.id)


def audit_doc(r: AuditRow) -> AuditDoc:
    return {
        "id": int(r.id),
        "at": int(r.at),
        "actor": r.actor,
        "action": r.action,
        "target": r.target,
        "before": json.loads(r.before) if r.before is not None else None,
        "after": json.loads(r.after) if r.after is not None else None,
    }


def audit_log(since: int | None = None, after_id: int = 0, limit: int = 1000) -> list[AuditDoc]:
    """Entries in the order they were written: from epoch second `since`, after id."""
    query = AuditRow.select().where(AuditRow.id > after_id)
    if since is not None:
        query = query.where(AuditRow.at >= since)
    return [audit_doc(r) for r in query.order_by(AuditRow.id).limit(limit)]


AUDIT_COLUMNS = ("id", "at", "actor", "action", "target", "before", "after")


def audit_csv_row(e: AuditDoc) -> list[str | int | float]:
    """One entry as CSV cells (AUDIT_COLUMNS), every one through csvsafe: a target or a
    note written as =HYPERLINK(...) opens as text in a spreadsheet, never as a formula."""
    row: list[object] = [
        e["id"],
        csvsafe.iso_time(e["at"] * 1000),
        e["actor"],
        e["action"],
        e["target"],
        "" if e["before"] is None else json.dumps(e["before"], ensure_ascii=False),
        "" if e["after"] is None else json.dumps(e["after"], ensure_ascii=False),
    ]
    return [csvsafe.cell(v) for v in row]


__all__ = [
    "AUDIT_COLUMNS",
    "LOCK_S",
    "MAX_FAILURES",
    "PERMISSIONS",
    "ROLES",
    "AuditDoc",
    "LoginRefused",
    "UserDoc",
    "UserError",
    "add_user",
    "allowed",
    "audit",
    "audit_csv_row",
    "audit_doc",
    "audit_log",
    "check_role",
    "disable_user",
    "list_users",
    "reset_password",
    "verify_login",
]
