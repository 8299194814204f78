"""What every `redeem-central` command module shares: opening the central a command names
(its data directory or database, and the master key), and the types of the sub-command
registry."""

from __future__ import annotations

import argparse
import getpass
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from coupons.cliutil import UserError
from coupons.timeutil import clock_from_env
from sync.central import keyvault, users
from sync.central.store import Central

# Quoted: the class is not subscriptable at run time.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
AddCommand: TypeAlias = Callable[[Commands, str, object, str], argparse.ArgumentParser]


def open_central(args: argparse.Namespace) -> Central:
    data = Path(args.data)
    not_central = f"{data} is not a central data directory (run `redeem-central init`)"
    if not args.database and not (data / "central.db").exists():
        raise UserError(not_central)  # before SQLite would make an empty database there
    c = Central(data, clock_from_env().now, args.database, master_key=master_key(args))
    if not c.initialised():
        c.close()
        raise UserError(not_central)
    return c


def master_key(args: argparse.Namespace) -> bytes:
    """The master key: --master-key-file, else REDEEM_CENTRAL_MASTER_KEY_FILE, else the
    systemd credential."""
    try:
        return keyvault.load_master_key(args.master_key_file)
    except keyvault.VaultError as exc:
        raise UserError(str(exc)) from None


def new_or_existing_master_key(args: argparse.Namespace) -> tuple[bytes, Path | None]:
    """For init: the master key, and the file it was just written to when the flag or the
    environment named a file that did not exist yet (a new random key, mode 0600)."""
    try:
        source = keyvault.locate(args.master_key_file)
        if source.creatable and not source.path.exists():
            return keyvault.create_master_key_file(source.path), source.path
        return keyvault.read_master_key(source), None
    except keyvault.VaultError as exc:
        raise UserError(str(exc)) from None


def add_key_options(sp: argparse.ArgumentParser, command: str) -> None:
    """The master key on every command that opens the central; the root key kept off the
    central on the two commands that need it (docs/deploy-central.md)."""
    sp.add_argument(
        "--master-key-file",
        metavar="PATH",
        help="file holding the 64-hex-digit master key that opens the keys in the database "
        f"(else env {keyvault.ENV_FILE}, else the systemd credential {keyvault.CREDENTIAL}); "
        "init makes a new one when PATH does not exist",
    )
    if command == "init":
        sp.add_argument(
            "--root-key-out",
            metavar="FILE",
            help="write the root key to this new file only, not into the database (keep it "
            "off the central; rotate-key then needs it)",
        )
    if command == "rotate-key":
        sp.add_argument(
            "--root-key-file",
            metavar="FILE",
            help="the root key `init --root-key-out` wrote, when it is kept off the central",
        )


def cli_actor() -> str:
    """The audit log's actor for a command: the operating-system user who ran it."""
    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return f"cli:uid-{os.getuid()}"


def audited(c: Central, action: str, target: str, before: object, after: object) -> None:
    """One audit entry for a change a command made (docs/central.md, "Users, roles and the
    audit log")."""
    with c.session():
        users.audit(c, cli_actor(), action, target, before, after)
