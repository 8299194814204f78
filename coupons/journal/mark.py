"""The head mark kept beside journal.db, which shows a journal that lost committed entries."""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import peewee as pw

from coupons.i18n import N_, translate
from coupons.journal.chain import Journal, NewEntry, stored_head
from coupons.journal.schema import Entry, database_proxy

# The newest committed entry (seq, hash), kept beside journal.db and written after each
# commit: a lost or damaged WAL, or an older journal.db put back, leaves the journal
# behind it, which nothing inside journal.db can show.
MARK_NAME = "journal.mark"
_MARK_MAGIC = "redeem-journal-mark-1"
_MARK_SLOT = 512  # two copies, each in its own sector: a torn write spoils one, not both
LOSS_ACCEPTED = "journal_loss_accepted"  # the flag a manager's decision is journaled as
BEHIND = N_(
    "The journal ends at entry {head} but this till had committed entry {mark}: {missing} "
    "entries are missing (journal.db-wal lost or an older journal.db put back). Do not "
    "redeem coupons on this till; see the runbook step 'Journal behind its mark'."
)
FORKED = N_(
    "The journal's entry {mark} is not the one this till committed (journal.db was replaced "
    "by another copy). Do not redeem coupons on this till; see the runbook step 'Journal "
    "behind its mark'."
)

# What `redeem journal accept-loss` says.
ACCEPT_NEEDS_CONFIRM = N_(
    "Nothing done: add --confirm. The missing entries stay lost, and the coupons they "
    "redeemed can be redeemed again on this till."
)
NOT_BEHIND = N_("Nothing done: the journal is not behind its mark.")
LOSS_ACCEPTED_SAID = N_(
    "Decision recorded as journal entry {seq} (manager {manager}); the till may redeem again."
)


@dataclass(frozen=True)
class Mark:
    seq: int
    hash: str


def mark_path(db: pw.Database | None = None) -> Path:
    """The mark file beside the open journal's database file."""
    db = db if db is not None else database_proxy.obj
    return Path(db.database).parent / MARK_NAME


def write_mark(path: Path, seq: int, digest: str) -> None:
    """Record (seq, digest) as committed: one small write, no fsync. Call only after the
    commit returned (synchronous=FULL: the WAL is on the card by then), so the mark can
    be behind the journal after a power cut, never ahead of it. The slot alternates with
    seq, so a write torn by a power cut leaves the other slot's (older) mark readable."""
    body = f"{_MARK_MAGIC} {seq} {digest}"
    line = f"{body} {zlib.crc32(body.encode()):08x}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, line, (seq % 2) * _MARK_SLOT)
    finally:
        os.close(fd)


def read_mark(path: Path) -> Mark | None:
    """The newest intact mark; None when there is none (a till that never committed since
    this check came in, or both copies torn, which only weakens the check)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    found: list[Mark] = []
    for at in (0, _MARK_SLOT):
        line = raw[at : at + _MARK_SLOT].split(b"\n", 1)[0]
        parts = line.decode("ascii", "replace").split(" ")
        if len(parts) != 4 or parts[0] != _MARK_MAGIC or not parts[1].isdigit():
            continue
        body = " ".join(parts[:3])
        if f"{zlib.crc32(body.encode()):08x}" == parts[3] and len(parts[2]) == 64:
            found.append(Mark(int(parts[1]), parts[2]))
    return max(found, key=lambda m: m.seq, default=None)


@dataclass(frozen=True)
class Behind:
    """The journal is behind the mark kept outside it: entries this till committed are
    gone (or journal.db is another copy). missing is None for another copy."""

    head: int
    mark: Mark
    missing: int | None

    def sentence(self, lang: str = "en") -> str:
        if self.missing is None:
            return translate(FORKED, lang).format(mark=self.mark.seq)
        return translate(BEHIND, lang).format(
            head=self.head, mark=self.mark.seq, missing=self.missing
        )


def behind_mark() -> Behind | None:
    """Compare the open journal with its mark: behind it (entries missing) or holding
    another entry under the mark's number (journal.db replaced). A mark behind the journal
    is normal after a power cut (it is written without fsync) and is no alarm. Two indexed
    reads: cheap enough for every start-up."""
    mark = read_mark(mark_path())
    if mark is None:
        return None
    seq, digest = stored_head()
    if mark.seq > seq:
        return Behind(seq, mark, mark.seq - seq)
    if mark.seq == seq:
        same = digest == mark.hash
    else:
        row = Entry.select(Entry.hash).where(Entry.seq == mark.seq).first()
        if row is None:  # pruned (two years old and acknowledged): nothing to compare
            return None
        same = row.hash == mark.hash
    return None if same else Behind(seq, mark, None)


def accept_loss(manager: str, at_ms: int) -> tuple[Behind, int] | None:
    """A manager decides to go on with the journal as it is: journal the decision (a flag
    naming the mark, the head and the count missing), then move the mark to it. None when
    the journal is not behind its mark."""
    behind = behind_mark()
    if behind is None:
        return None
    db = database_proxy.obj
    with db.atomic():
        seq = Journal().write(
            NewEntry(
                at_ms=at_ms,
                kind="flag",
                accepted=True,
                reason=LOSS_ACCEPTED,
                source="manager",
                detail={
                    "manager": manager,
                    "journal_head": behind.head,
                    "mark_seq": behind.mark.seq,
                    "mark_hash": behind.mark.hash,
                    "missing": behind.missing,
                    "detail": behind.sentence(),
                },
            )
        )
    head_seq, head_hash = stored_head()
    _replace_mark(mark_path(), head_seq, head_hash)
    return behind, seq


def _replace_mark(path: Path, seq: int, digest: str) -> None:
    """A new mark file in place of the old one, durably (fsync, rename, fsync of the
    directory): once the decision is made, the old mark must not come back after a power
    cut. Rare (a manager's decision), so the fsyncs cost nothing that matters."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    write_mark(tmp, seq, digest)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
