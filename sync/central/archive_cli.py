"""`redeem-central archive` and `archive-verify`: journal entries past retention to
compressed files with a manifest, and checking such an archive offline (sync/central/
archive.py; docs/central.md, "Retention and archives")."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from coupons.cliutil import EXIT_OK, EXIT_REFUSED, UserError, add_json, emit
from coupons.timeutil import parse_time
from sync.central import archive
from sync.central.cli_common import AddCommand, Commands, open_central


def cmd_archive(args: argparse.Namespace) -> int:
    try:
        before = parse_time(args.before) if args.before is not None else None
    except ValueError:
        raise UserError(f"--before {args.before!r}: not a date (ISO 8601 or epoch)") from None
    c = open_central(args)
    try:
        cut_ms = archive.cutoff_ms(c.now(), before, args.older_than_days)
        result = archive.archive(c, Path(args.out), cut_ms, dry_run=args.dry_run)
    except archive.ArchiveError as exc:
        raise UserError(str(exc)) from None
    entries = sum(f.entries for f in result.files)
    cutoff = datetime.fromtimestamp(cut_ms / 1000, UTC).isoformat()
    verb = "would archive" if args.dry_run else "archived"
    text = [
        f"{verb} {entries} journal entries stamped before {cutoff} "
        f"({len({f.terminal for f in result.files})} terminal(s), {len(result.files)} file(s)) "
        f"into {args.out}",
        f"held back as evidence of undecided flags: {result.held}",
    ]
    if not args.dry_run:
        text.append(
            f"deleted from the database: {result.pruned} ({result.resumed} from an "
            "earlier run that stopped before pruning)"
        )
        text.append(f"manifest SHA-256: {result.manifest_sha256 or '(no manifest yet)'}")
    emit(
        args,
        {
            "out": args.out,
            "cutoff_ms": cut_ms,
            "dry_run": args.dry_run,
            "entries": entries,
            "files": [asdict(f) for f in result.files],
            "held": result.held,
            "pruned": result.pruned,
            "resumed": result.resumed,
            "manifest_sha256": result.manifest_sha256,
        },
        "\n".join(text),
    )
    return EXIT_OK


def cmd_archive_verify(args: argparse.Namespace) -> int:
    try:
        summary = archive.verify_archive(Path(args.dir))
    except archive.ArchiveInvalid as exc:
        print(f"redeem-central: archive-verify: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    text = [
        f"{args.dir}: {summary['files']} file(s), {summary['entries']} entries of "
        f"{len(summary['terminals'])} terminal(s): every hash and chain link checks",
        f"manifest SHA-256: {summary['manifest_sha256']}",
    ]
    for terminal, t in summary["terminals"].items():
        gaps = "".join(f", gap {a}-{b}" for a, b in t["gaps"])
        text.append(f"  {terminal:<16} #{t['first_seq']}-#{t['last_seq']} ({t['entries']}){gaps}")
    emit(args, summary, "\n".join(text))
    return EXIT_OK


def add_commands(sub: Commands, command: AddCommand) -> None:
    """`archive` (needs the data directory) and `archive-verify` (needs only the archive)."""
    sp = command(
        sub,
        "archive",
        cmd_archive,
        "write journal entries past retention to compressed files with a manifest, verify "
        "them, then delete them from the database",
    )
    when = sp.add_mutually_exclusive_group()
    when.add_argument("--before", metavar="DATE", help="entries stamped before this (ISO 8601)")
    when.add_argument(
        "--older-than-days",
        type=int,
        metavar="N",
        help="entries older than N days (default 730; never fewer: the evidence rule)",
    )
    sp.add_argument("--out", required=True, metavar="DIR", help="archive directory")
    sp.add_argument("--dry-run", action="store_true", help="say what would be archived")
    sp = sub.add_parser(
        "archive-verify",
        help="check an archive offline (no database): every file, entry hash and chain link",
    )
    sp.add_argument("dir", metavar="DIR")
    add_json(sp)
    sp.set_defaults(func=cmd_archive_verify)
