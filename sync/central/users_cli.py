"""`redeem-central user`, `admin-token` and `audit`: console users, admin API tokens with
a role, and exporting the audit log (sync/central/users.py; docs/central.md, "Users, roles
and the audit log")."""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
from datetime import UTC, datetime
from pathlib import Path

from coupons.cliutil import EXIT_OK, UserError, emit
from coupons.timeutil import parse_time
from sync.central import terminals, users
from sync.central.cli_common import AddCommand, Commands, audited, cli_actor, open_central


def _password_stdin() -> str:
    """One line of standard input, without its line ending (never an argument: arguments
    show in `ps` and in shell history)."""
    line = sys.stdin.readline()
    password = line.rstrip("\r\n")
    if not password:
        raise UserError("--password-stdin: no password on standard input")
    return password


def cmd_user(args: argparse.Namespace) -> int:
    c = open_central(args)
    actor, action = cli_actor(), args.user_command
    try:
        if action == "add":
            doc = users.add_user(c, actor, args.name, args.role, _password_stdin())
            text = f"added user {doc['name']} ({doc['role']})"
        elif action == "disable":
            doc = users.disable_user(c, actor, args.name)
            text = f"user {doc['name']} disabled"
        elif action == "reset":
            doc = users.reset_password(c, actor, args.name, _password_stdin())
            text = f"new password for {doc['name']} (failures and lock cleared)"
        else:
            items = users.list_users()
            lines = [
                f"{u['name']:<24} {u['role']:<9} {'DISABLED ' if u['disabled'] else ''}"
                f"{_locked(c.now(), u['locked_until'])}created {_iso(u['created_at'])}"
                for u in items
            ]
            emit(args, {"users": items}, "\n".join(lines) or "no users")
            return EXIT_OK
    except users.UserError as exc:
        raise UserError(str(exc)) from None
    emit(args, {"user": doc}, text)
    return EXIT_OK


def _iso(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds")


def _locked(now: float, until: int | None) -> str:
    return f"LOCKED until {_iso(until)} " if until is not None and now < until else ""


def cmd_admin_token(args: argparse.Namespace) -> int:
    c = open_central(args)
    if args.action == "list":
        items = terminals.list_admin_tokens()
        lines = [
            f"{t['id']}  {t['role']:<9} {'REVOKED ' if t['revoked'] else ''}"
            f"{t['label'] or '-'}  created {_iso(t['created_at'])}"
            for t in items
        ]
        emit(args, {"tokens": items}, "\n".join(lines) or "no admin tokens")
    elif args.action == "revoke":
        if not args.id:
            raise UserError("admin-token revoke needs --id (as `admin-token list` shows it)")
        with c.writing():
            before, after = terminals.revoke_admin_token(args.id)
            audited(c, "admin-token.revoke", f"token:{args.id}", before, after)
        emit(args, {"revoked": args.id}, f"admin token {args.id} revoked")
    else:
        role = users.check_role(args.role)
        with c.writing():
            token = terminals.new_admin_token(c, args.label, role)
            [doc] = [t for t in terminals.list_admin_tokens() if token_id(token) == t["id"]]
            audited(c, "admin-token.make", f"token:{doc['id']}", None, doc)
        emit(args, {"token": token, "label": args.label, "role": role, "id": doc["id"]}, token)
    return EXIT_OK


def token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[: terminals.TOKEN_ID_CHARS]


def cmd_audit(args: argparse.Namespace) -> int:
    try:
        since = int(parse_time(args.since)) if args.since is not None else None
    except ValueError:
        raise UserError(f"--since {args.since!r}: not a date (ISO 8601 or epoch)") from None
    open_central(args)
    entries: list[users.AuditDoc] = []
    while batch := users.audit_log(since, entries[-1]["id"] if entries else 0, 5000):
        entries.extend(batch)
    if args.csv:
        _write_csv(Path(args.csv), entries)
    lines = [f"{_iso(e['at'])} {e['actor']:<20} {e['action']:<20} {e['target']}" for e in entries]
    if args.csv:
        lines = [f"wrote {len(entries)} audit entries to {args.csv}"]
    emit(args, {"entries": entries}, "\n".join(lines) or "the audit log is empty")
    return EXIT_OK


def _write_csv(path: Path, entries: list[users.AuditDoc]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(users.AUDIT_COLUMNS)
        out.writerows(users.audit_csv_row(e) for e in entries)


def add_commands(sub: Commands, command: AddCommand) -> None:
    """user add|list|disable|reset, admin-token [list|revoke], audit."""
    user = sub.add_parser("user", help="console users: add, list, disable, reset a password")
    usub = user.add_subparsers(dest="user_command", required=True)
    sp = command(usub, "add", cmd_user, "add a console user (password on standard input)")
    sp.add_argument("--name", required=True)
    sp.add_argument("--role", required=True, choices=users.ROLES)
    sp.add_argument("--password-stdin", action="store_true", required=True)
    command(usub, "list", cmd_user, "list console users")
    command(usub, "disable", cmd_user, "refuse a user's logins from now on").add_argument(
        "--name", required=True
    )
    sp = command(usub, "reset", cmd_user, "set a new password (clears a lock-out)")
    sp.add_argument("--name", required=True)
    sp.add_argument("--password-stdin", action="store_true", required=True)
    sp = command(
        sub,
        "admin-token",
        cmd_admin_token,
        "print a new admin API token with a role; `list` them or `revoke --id ID`",
    )
    sp.add_argument("action", nargs="?", choices=("new", "list", "revoke"), default="new")
    sp.add_argument("--label", help="who or what the token is for")
    sp.add_argument("--role", choices=users.ROLES, default="admin", help="default admin")
    sp.add_argument("--id", help="the token to revoke, as `admin-token list` shows it")
    sp = command(sub, "audit", cmd_audit, "print or export the audit log (oldest first)")
    sp.add_argument("--since", metavar="DATE", help="entries from this time (ISO 8601 or epoch)")
    sp.add_argument("--csv", metavar="FILE", help="write a formula-safe CSV file")
