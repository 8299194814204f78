"""Retention at the central: journal entries past the evidence period are written per
terminal to gzip'd JSON-lines files listed in a manifest with their chain hashes, read back
and checked, and only then deleted from the database; and the offline check of such an
archive that needs nothing but its directory (`redeem-central archive-verify`).

Why gzip'd JSON lines and not CBOR: each line is exactly the row `redeem journal export`
writes and a till uploads (EXPORT_FIELDS), so an auditor reads it with zcat and jq, and the
entry hash (the compact JSON array of HASHED_FIELDS) is recomputed from values JSON carries
unchanged (text, whole numbers, booleans, null). gzip with mtime 0 makes the same entries
the same bytes, which is what makes a rerun reproduce the files of a run that crashed."""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import logging
import re
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeAlias, TypedDict

import peewee as pw

from coupons.journal import EXPORT_FIELDS, entry_hash
from coupons.jsontypes import JSON
from coupons.ledger_store import write_atomic
from sync.central.models import FlagRow, JournalRow, TerminalRow
from sync.central.store import Central

log = logging.getLogger(__name__)

FORMAT = "edge-redeem-journal-archive/1"
MANIFEST = "manifest.json"
ENTRIES = "entries"
DAY_S = 24 * 3600
# The evidence rule (docs: DOMAIN, "kept at least 2 years"): the default and the least.
DEFAULT_DAYS = MIN_DAYS = 730
# Bounds one file (and what the archiver holds in memory at once); boundaries fall at the
# same places on a rerun, so a crashed run's files are reproduced, not split differently.
MAX_FILE_ENTRIES = 50_000
# A flag nobody has closed yet: its entries stay in the database, where analysts look.
UNDECIDED = ("open", "acknowledged")
_SAFE_TERMINAL = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
_FILE_NAME = re.compile(r"\d{12}-\d{12}\.jsonl\.gz(\.tmp)?")
_FIELDS = frozenset(EXPORT_FIELDS)

# A journal entry as a till exports it and its hash covers: the EXPORT_FIELDS.
Row: TypeAlias = dict[str, JSON]


class TerminalSummary(TypedDict):
    first_seq: int
    last_seq: int
    entries: int
    chain_after: str
    gaps: list[list[int]]


class Summary(TypedDict):
    """What archive-verify found: the manifest's hash and each terminal's runs."""

    manifest_sha256: str
    files: int
    entries: int
    terminals: dict[str, TerminalSummary]


class ArchiveError(Exception):
    """The archive run cannot go on; nothing more is deleted from the database."""


class ArchiveInvalid(Exception):
    """An archive fails verification; the message names the file and, if one, the entry."""


@dataclass(frozen=True)
class ArchivedFile:
    """One manifest line: a run of one terminal's entries, consecutive in seq and chain."""

    path: str  # relative to the archive directory, always entries/TERMINAL/FIRST-LAST...
    sha256: str
    terminal: str
    store: str | None
    first_seq: int
    last_seq: int
    entries: int
    chain_before: str  # prev_hash of the first entry: the chain hash this file continues
    chain_after: str  # hash of the last entry: what the terminal's next entry names
    first_at_ms: int
    last_at_ms: int

    @classmethod
    def from_dict(cls, doc: object, i: int) -> ArchivedFile:
        names = [f.name for f in cls.__dataclass_fields__.values()]
        if not isinstance(doc, dict) or set(doc) != set(names):
            raise ArchiveInvalid(f"{MANIFEST}: files[{i}] is not a file entry")
        ints = ("first_seq", "last_seq", "entries", "first_at_ms", "last_at_ms")
        for name in names:
            value = doc[name]
            want_int = name in ints
            ok = (type(value) is int) if want_int else isinstance(value, str)
            if not ok and not (name == "store" and value is None):
                raise ArchiveInvalid(f"{MANIFEST}: files[{i}].{name} has the wrong type")
        item = cls(**doc)
        if not _SAFE_TERMINAL.fullmatch(item.terminal) or item.path != file_path(
            item.terminal, item.first_seq, item.last_seq
        ):
            raise ArchiveInvalid(f"{MANIFEST}: files[{i}] has an unexpected path {item.path!r}")
        return item


def file_path(terminal: str, first: int, last: int) -> str:
    return f"{ENTRIES}/{terminal}/{first:012d}-{last:012d}.jsonl.gz"


def cutoff_ms(now_s: float, before_s: float | None, older_than_days: int | None) -> int:
    """Entries stamped before this are past retention; never less than MIN_DAYS ago."""
    latest_s = now_s - MIN_DAYS * DAY_S
    if before_s is None:
        days = DEFAULT_DAYS if older_than_days is None else older_than_days
        before_s = now_s - days * DAY_S
    if before_s > latest_s:
        raise ArchiveError(
            f"the cut-off is less than {MIN_DAYS} days before now: journal entries are "
            "evidence and are kept two years (docs/central.md, Retention and archives)"
        )
    return int(before_s * 1000)


# ---------------------------------------------------------------- the file format


def encode(rows: list[Row]) -> bytes:
    lines = "".join(
        json.dumps({k: r[k] for k in EXPORT_FIELDS}, ensure_ascii=False) + "\n" for r in rows
    )
    return gzip.compress(lines.encode(), compresslevel=9, mtime=0)


def decode(raw: bytes, name: str) -> list[Row]:
    try:
        text = gzip.decompress(raw).decode()
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise ArchiveInvalid(f"{name}: not a readable gzip'd JSON-lines file ({exc})") from None
    rows: list[Row] = []
    for n, line in enumerate(text.splitlines(), start=1):
        try:
            row = json.loads(line)
        except ValueError:
            raise ArchiveInvalid(f"{name}: line {n} is not JSON") from None
        if not isinstance(row, dict) or set(row) != _FIELDS:
            raise ArchiveInvalid(f"{name}: line {n} is not a journal entry")
        rows.append(row)
    return rows


def check_file(directory: Path, item: ArchivedFile) -> list[Row]:
    """The file's entries, after checking its SHA-256, each entry's hash (the till's own
    entry_hash), the chain from chain_before to chain_after and the seq range."""
    try:
        raw = (directory / item.path).read_bytes()
    except OSError as exc:
        raise ArchiveInvalid(f"{item.path}: cannot be read ({exc.strerror or exc})") from None
    if hashlib.sha256(raw).hexdigest() != item.sha256:
        raise ArchiveInvalid(f"{item.path}: SHA-256 differs from the manifest's")
    rows = decode(raw, item.path)
    prev, seq = item.chain_before, item.first_seq
    for row in rows:
        where = f"{item.path}: entry {row.get('seq')!r}"
        if row["seq"] != seq:
            raise ArchiveInvalid(f"{where}: expected entry {seq} (entries must be consecutive)")
        if entry_hash(row) != row["hash"]:
            raise ArchiveInvalid(f"{where}: its hash does not match its content")
        if row["prev_hash"] != prev:
            raise ArchiveInvalid(f"{where}: does not follow the entry before it (broken chain)")
        prev, seq = row["hash"], seq + 1
    if len(rows) != item.entries or seq - 1 != item.last_seq or prev != item.chain_after:
        raise ArchiveInvalid(
            f"{item.path}: holds {len(rows)} entries ending at {seq - 1}, the manifest says "
            f"{item.entries} ending at {item.last_seq} with chain hash {item.chain_after}"
        )
    return rows


def read_manifest(directory: Path) -> list[ArchivedFile]:
    try:
        doc = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArchiveInvalid(f"{directory / MANIFEST}: no manifest (not an archive)") from None
    except (OSError, ValueError) as exc:
        raise ArchiveInvalid(f"{MANIFEST}: unreadable ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ArchiveInvalid(f"{MANIFEST}: not a {FORMAT} manifest")
    files = doc.get("files")
    if not isinstance(files, list):
        raise ArchiveInvalid(f"{MANIFEST}: has no file list")
    items = [ArchivedFile.from_dict(f, i) for i, f in enumerate(files)]
    if len({i.path for i in items}) != len(items):
        raise ArchiveInvalid(f"{MANIFEST}: lists a file twice")
    return items


def manifest_bytes(items: list[ArchivedFile]) -> bytes:
    doc = {
        "format": FORMAT,
        "entry_hash": "SHA-256 of the compact JSON array of the fields before 'hash', in "
        "this order (coupons/journal/chain.py entry_hash); each prev_hash is the hash of "
        "the entry before it, chain_before that of the entry before a file's first",
        "fields": list(EXPORT_FIELDS),
        "files": [asdict(i) for i in sorted(items, key=lambda i: (i.terminal, i.first_seq))],
    }
    return (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode()


def verify_archive(directory: Path) -> Summary:
    """Check a whole archive offline; raises ArchiveInvalid at the first fault."""
    items = read_manifest(directory)
    listed = {i.path for i in items}
    root = directory / ENTRIES
    for path in sorted(root.rglob("*")) if root.is_dir() else []:
        name = path.relative_to(directory).as_posix()
        if path.is_file() and name not in listed:
            raise ArchiveInvalid(f"{name}: not listed in the manifest (an unfinished run?)")
    terminals: dict[str, list[ArchivedFile]] = {}
    for item in sorted(items, key=lambda i: (i.terminal, i.first_seq)):
        check_file(directory, item)
        runs = terminals.setdefault(item.terminal, [])
        if runs and item.first_seq <= runs[-1].last_seq:
            raise ArchiveInvalid(f"{item.path}: overlaps {runs[-1].path}")
        if runs and item.first_seq == runs[-1].last_seq + 1:
            if item.chain_before != runs[-1].chain_after:
                raise ArchiveInvalid(f"{item.path}: does not continue the chain of {runs[-1].path}")
        runs.append(item)
    return {
        "manifest_sha256": hashlib.sha256((directory / MANIFEST).read_bytes()).hexdigest(),
        "files": len(items),
        "entries": sum(i.entries for i in items),
        "terminals": {
            t: {
                "first_seq": runs[0].first_seq,
                "last_seq": runs[-1].last_seq,
                "entries": sum(r.entries for r in runs),
                "chain_after": runs[-1].chain_after,
                # Held back at the time (evidence of a flag then undecided), or in another
                # archive: seq ranges between this terminal's files.
                "gaps": [
                    [a.last_seq + 1, b.first_seq - 1]
                    for a, b in zip(runs, runs[1:], strict=False)
                    if b.first_seq > a.last_seq + 1
                ],
            }
            for t, runs in terminals.items()
        },
    }


# ---------------------------------------------------------------- archiving


@dataclass
class Result:
    cutoff_ms: int
    dry_run: bool
    files: list[ArchivedFile] = field(default_factory=list)  # written by this run
    pruned: int = 0  # entries deleted from the database
    resumed: int = 0  # of them, from files an earlier run listed but did not prune
    held: int = 0  # entries past retention kept as evidence of an undecided flag
    manifest_sha256: str | None = None


def evidence() -> set[tuple[str, int]]:
    """(terminal, seq) of every entry an undecided flag points at: the entry it was raised
    on (flag.terminal, flag.seq), the entry a till's flag is about (detail.about_seq) and
    every use a double redemption lists (detail.redemptions, at any terminal)."""
    keep: set[tuple[str, int]] = set()
    query = FlagRow.select(FlagRow.terminal, FlagRow.seq, FlagRow.detail)
    for f in query.where(FlagRow.status.in_(UNDECIDED)).iterator():
        if f.terminal and f.seq is not None:
            keep.add((f.terminal, int(f.seq)))
        try:
            detail = json.loads(f.detail)
        except ValueError:
            continue
        if not isinstance(detail, dict):
            continue
        about = detail.get("about_seq")
        if f.terminal and type(about) is int:
            keep.add((f.terminal, about))
        for use in detail.get("redemptions") or ():
            if isinstance(use, dict) and isinstance(use.get("terminal"), str):
                if type(use.get("seq")) is int:
                    keep.add((use["terminal"], use["seq"]))
    return keep


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One archiver per directory at a time (a second one fails at once)."""
    with open(directory / ".lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArchiveError(f"another archive run is writing to {directory}") from None
        yield


def _stored(where: pw.Expression, limit: int | None = None) -> list[Row]:
    """Stored entries in seq order, each as the export row (the fields the hash covers)."""
    query: Any = JournalRow.select().where(where).order_by(JournalRow.seq)
    if limit is not None:
        query = query.limit(limit)
    return [{k: d[k] for k in EXPORT_FIELDS} for d in query.dicts()]


def _segments(term: TerminalRow, cut_ms: int, skip: Callable[[int], bool]) -> Iterator[list[Row]]:
    """The terminal's entries past retention in runs of consecutive seqs, without skipped
    ones. Only the leading run of old entries counts (as the till prunes): one stamped by a
    wrong clock must not leave the database before the younger entries around it."""
    young = JournalRow.select(JournalRow.seq).where(
        (JournalRow.terminal == term.id) & (JournalRow.at_ms >= cut_ms)
    )
    first_young = young.order_by(JournalRow.seq).limit(1).scalar()
    run: list[Row] = []
    for row in _rows(term.id, first_young):
        seq = _int(row, "seq")
        if run and (skip(seq) or seq != _int(run[-1], "seq") + 1 or len(run) >= MAX_FILE_ENTRIES):
            yield run
            run = []
        if skip(seq):
            continue
        if run and row["prev_hash"] != run[-1]["hash"]:
            raise ArchiveError(f"terminal {term.id} entry {seq} in the database breaks the chain")
        run.append(row)
    if run:
        yield run


def _rows(terminal: str, below: int | None) -> Iterator[Row]:
    """A terminal's stored entries in seq order (below `below`), a page at a time."""
    after = -1
    while True:
        where = (JournalRow.terminal == terminal) & (JournalRow.seq > after)
        if below is not None:
            where &= JournalRow.seq < below
        page = _stored(where, MAX_FILE_ENTRIES)
        for row in page:
            if entry_hash(row) != row["hash"]:  # fail closed: a bad row is not archived as good
                raise ArchiveError(
                    f"terminal {terminal} entry {row['seq']} in the database was altered"
                )
            yield row
        if len(page) < MAX_FILE_ENTRIES:
            return
        after = _int(page[-1], "seq")


def _describe(term: TerminalRow, run: list[Row], sha256: str) -> ArchivedFile:
    first, last = run[0], run[-1]
    return ArchivedFile(
        path=file_path(term.id, _int(first, "seq"), _int(last, "seq")),
        sha256=sha256,
        terminal=term.id,
        store=term.store,
        first_seq=_int(first, "seq"),
        last_seq=_int(last, "seq"),
        entries=len(run),
        chain_before=_str(first, "prev_hash"),
        chain_after=_str(last, "hash"),
        first_at_ms=_int(first, "at_ms"),
        last_at_ms=_int(last, "at_ms"),
    )


def _int(row: Row, name: str) -> int:
    value = row[name]
    if type(value) is not int:
        raise ArchiveInvalid(f"entry field {name} is not an integer")
    return value


def _str(row: Row, name: str) -> str:
    value = row[name]
    if not isinstance(value, str):
        raise ArchiveInvalid(f"entry field {name} is not text")
    return value


def _runs(
    cut_ms: int,
    listed: list[ArchivedFile],
    keep: set[tuple[str, int]],
    held: set[tuple[str, int]],
) -> Iterator[tuple[TerminalRow, list[Row]]]:
    """Every terminal's runs to archive: past retention, not evidence, not in a listed file
    (one an earlier run listed but could not prune yet)."""
    covered: dict[str, list[tuple[int, int]]] = {}
    for item in listed:
        covered.setdefault(item.terminal, []).append((item.first_seq, item.last_seq))
    for term in TerminalRow.select().order_by(TerminalRow.id).iterator():
        if not _SAFE_TERMINAL.fullmatch(term.id):
            raise ArchiveError(f"terminal id {term.id!r} cannot name a directory")
        spans = covered.get(term.id, [])

        def skip(seq: int, tid: str = term.id, spans: list[tuple[int, int]] = spans) -> bool:
            if any(a <= seq <= b for a, b in spans):
                return True  # in a listed file: pruned (or held) there, never twice
            if (tid, seq) in keep:
                held.add((tid, seq))
                return True
            return False

        for run in _segments(term, cut_ms, skip):
            yield term, run


def _listed(directory: Path) -> list[ArchivedFile]:
    if not (directory / MANIFEST).exists():
        return []
    try:
        return read_manifest(directory)
    except ArchiveInvalid as exc:
        raise ArchiveError(f"the archive in {directory} is damaged: {exc}") from None


def _clear_leftovers(directory: Path, listed: list[ArchivedFile]) -> None:
    """Files a crashed run wrote but never listed: their entries are all still in the
    database (pruning starts only once the manifest lists a file), so they go."""
    paths = {i.path for i in listed}
    root = directory / ENTRIES
    for path in sorted(root.glob("*/*")) if root.is_dir() else []:
        name = path.relative_to(directory).as_posix()
        if _FILE_NAME.fullmatch(path.name) and name not in paths:
            log.info("removing %s, left by an archive run that did not finish", name)
            path.unlink()


def _prune(
    central: Central, directory: Path, item: ArchivedFile, keep: set[tuple[str, int]]
) -> tuple[int, int]:
    """Delete a listed file's entries from the database once the file, read back from the
    disk, holds each of them unchanged: (deleted, held back as evidence)."""
    span = (JournalRow.terminal == item.terminal) & JournalRow.seq.between(
        item.first_seq, item.last_seq
    )
    stored_n = JournalRow.select().where(span).count()
    if not stored_n:
        return 0, 0
    if any(t == item.terminal and item.first_seq <= s <= item.last_seq for t, s in keep):
        # A flag raised after the file was written: the file stays listed, the entries stay
        # here; a later run prunes them once the flag is decided.
        return 0, stored_n
    try:
        archived = {r["seq"]: r for r in check_file(directory, item)}
    except ArchiveInvalid as exc:
        raise ArchiveError(f"{exc}; its entries stay in the database") from None
    with central.writing():
        for row in _stored(span):
            if archived.get(row["seq"]) != row:
                raise ArchiveError(
                    f"{item.path}: entry {row['seq']} differs from the database's; "
                    "nothing of it deleted"
                )
        deleted = int(JournalRow.delete().where(span).execute())
    return deleted, 0


def archive(
    central: Central,
    directory: Path,
    cut_ms: int,
    dry_run: bool = False,
    fault: Callable[[str], None] | None = None,
) -> Result:
    """Archive and prune every terminal's entries stamped before cut_ms (see the module
    docstring). Resumable: a run that stopped anywhere leaves every entry either in the
    database or in a listed, verified file (or both), and the next run finishes it.
    `fault(stage)` is called after the files are written and after they are listed (the
    tests stop a run there)."""
    result = Result(cut_ms, dry_run)
    held: set[tuple[str, int]] = set()
    if dry_run:
        for term, run in _runs(cut_ms, _listed(directory), evidence(), held):
            result.files.append(_describe(term, run, ""))
        result.held = len(held)
        return result
    # Entries carry hashed customer references: the archive is as private as the database.
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(directory):
        listed = _listed(directory)
        _clear_leftovers(directory, listed)
        keep = evidence()
        for item in listed:  # listed by a run that stopped before pruning: finish it
            deleted, kept = _prune(central, directory, item, keep)
            result.resumed += deleted
            result.held += kept
        for term, run in _runs(cut_ms, listed, keep, held):
            raw = encode(run)
            item = _describe(term, run, hashlib.sha256(raw).hexdigest())
            (directory / item.path).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(directory / item.path, raw)  # the file and its directory fsynced
            try:
                same = check_file(directory, item) == run
            except ArchiveInvalid as exc:
                raise ArchiveError(f"{exc} right after writing it; nothing deleted") from None
            if not same:
                raise ArchiveError(f"{item.path} reads back different; nothing deleted")
            result.files.append(item)
        if fault:
            fault("written")
        if result.files:
            write_atomic(directory / MANIFEST, manifest_bytes(listed + result.files))
            if {i.path for i in read_manifest(directory)} != {
                i.path for i in listed + result.files
            }:
                raise ArchiveError(f"{MANIFEST} reads back different; nothing deleted")
        if (directory / MANIFEST).exists():
            result.manifest_sha256 = hashlib.sha256((directory / MANIFEST).read_bytes()).hexdigest()
        if fault:
            fault("listed")
        keep = evidence()  # again: a flag raised meanwhile holds its entries back
        for item in result.files:
            deleted, kept = _prune(central, directory, item, keep)
            result.pruned += deleted
            result.held += kept
        result.pruned += result.resumed
        result.held += len(held)
    log.info(
        "archived %d file(s) into %s, pruned %d entries, held %d as evidence",
        len(result.files),
        directory,
        result.pruned,
        result.held,
    )
    return result
