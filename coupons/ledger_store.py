"""The terminal's copy of the ledger on disk: the last snapshot plus the deltas after it,
each written atomically, replayed and re-verified at start-up."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from coupons import ledger
from coupons.keys import TrustAnchor
from coupons.ledger import LedgerRefused, LedgerState

log = logging.getLogger(__name__)

# The largest ledger file a till reads whole. A 1,000,000-serial snapshot is about 8 MB
# (8 bytes a serial) and a store's ledger is one store's scope, not the chain's: 64 MiB
# leaves eight times that, and still fits a 1 GB Pi beside the running till.
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
_CHUNK = 1024 * 1024


class LedgerTooLarge(Exception):
    """A ledger file (or download) larger than the configured limit: not read, nothing
    changed. Not a LedgerRefused: nothing was verified, so nothing is journaled as a flag."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(
            f"{what} is larger than {limit / 2**20:g} MiB, the most a ledger file may be; "
            "nothing was imported and the ledger is unchanged (check that it is the right "
            "file, or raise the limit with --max-mb)"
        )
        self.limit = limit


def read_limited(path: Path, limit: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """Read a ledger file of at most `limit` bytes. A regular file is judged by its size
    before any byte is read (a 2 GB sparse file costs nothing); anything else (a pipe,
    /dev/zero) is read in chunks and given up on at the first byte past the limit, so memory
    stays bounded by the limit whatever the file claims to be."""
    with open(path, "rb") as fh:
        info = os.fstat(fh.fileno())
        if stat.S_ISREG(info.st_mode) and info.st_size > limit:
            raise LedgerTooLarge(str(path), limit)
        buf = bytearray()
        while len(buf) <= limit:
            chunk = fh.read(min(_CHUNK, limit + 1 - len(buf)))
            if not chunk:
                return bytes(buf)
            buf += chunk
        raise LedgerTooLarge(str(path), limit)


def write_atomic(path: Path, data: bytes) -> None:
    """Write, fsync, rename, fsync the directory: after a power cut the file is either the
    old one or the new one, never half of each."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


@dataclass
class ImportResult:
    applied: list[int] = field(default_factory=list)
    refused: list[LedgerRefused] = field(default_factory=list)
    current: list[int] = field(default_factory=list)  # already held: harmless, not a refusal


class LedgerStore:
    def __init__(self, directory: Path, anchor: TrustAnchor, store: str | None = None) -> None:
        self.dir = directory
        self.anchor = anchor
        self.store = store  # the till's store: only its scope or the chain-wide one is taken
        self.state = LedgerState()
        self.load_problem: str | None = None

    def _files(self) -> list[Path]:
        return sorted(p for p in self.dir.glob("*.cbor") if p.stem.split("-")[0].isdigit())

    def load(self) -> LedgerState:
        """Replay what is on disk; stop at the first file that does not verify (the
        terminal then runs on the last good version and reports the problem)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        state = LedgerState()
        for path in self._files():
            try:
                state, _ = ledger.apply(self.anchor, state, path.read_bytes(), self.store)
            except (LedgerRefused, OSError) as exc:
                self.load_problem = f"{path.name}: {exc}"
                log.error("stored ledger file %s refused: %s", path.name, exc)
                break
        self.state = state
        return state

    def import_file(self, data: bytes) -> ImportResult:
        """Apply each update in a ledger file in order; refused ones change nothing."""
        result = ImportResult()
        try:
            updates = ledger.read_file(data)
        except LedgerRefused as exc:
            result.refused.append(exc)
            return result
        for raw in updates:
            try:
                self.apply(raw)
            except LedgerRefused as exc:
                if exc.kind == "current":
                    result.current.append(self.state.version)
                else:
                    result.refused.append(exc)
            else:
                result.applied.append(self.state.version)
        return result

    def apply(self, raw: bytes) -> LedgerState:
        new, kind = ledger.apply(self.anchor, self.state, raw, self.store)
        self.dir.mkdir(parents=True, exist_ok=True)
        is_snapshot = kind == "snapshot"
        name = f"{new.version:010d}-{kind}.cbor"
        write_atomic(self.dir / name, raw)
        if is_snapshot:
            for old in self._files():
                if old.name != name:
                    old.unlink()
        self.state = new
        return new
