"""peers.db: the claims this till made, granted and saw used, its outbox of uses for the
other tills, and what it knows of each peer. Kept apart from journal.db and written by the
peer service itself (docs/store-peers.md, "Durability"). WAL, synchronous=FULL: a grant is
on disk before the grant message leaves."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cbor2

from coupons.claims import ClaimKey, PeerRecord
from sync.peers import wire

# Own rows (holder = this till): pending -> won -> held, or pending -> yielded / deleted.
# A peer's rows: granted (we told it to go ahead), used (it told us it used the key).
OWN_STATES = ("pending", "yielded", "won", "held")
SCHEMA = """
CREATE TABLE IF NOT EXISTS claim (
  key TEXT NOT NULL, holder TEXT NOT NULL, state TEXT NOT NULL, claim_id BLOB NOT NULL,
  prio_ms INTEGER NOT NULL, at_ms INTEGER NOT NULL, wire BLOB NOT NULL,
  PRIMARY KEY (key, holder));
CREATE INDEX IF NOT EXISTS claim_id ON claim (claim_id);
CREATE INDEX IF NOT EXISTS claim_holder ON claim (holder, state, at_ms);
CREATE TABLE IF NOT EXISTS outbox (
  pseq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, type TEXT NOT NULL, keys BLOB NOT NULL,
  seq INTEGER);
CREATE TABLE IF NOT EXISTS peer (
  terminal TEXT PRIMARY KEY, last_pseq INTEGER NOT NULL DEFAULT 0,
  last_seen_ms INTEGER NOT NULL DEFAULT 0, rtt_ms REAL);
CREATE TABLE IF NOT EXISTS mirror (
  id INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, what TEXT NOT NULL,
  peer TEXT NOT NULL, key BLOB NOT NULL, claim_id TEXT NOT NULL, pseq INTEGER);
"""


def key_text(key: ClaimKey) -> str:
    """A key's identity: the limit is not part of it."""
    return f"{key.kind}\x1f{key.campaign}\x1f{key.subject}\x1f{key.slot}"


@dataclass(frozen=True)
class Row:
    key: ClaimKey
    holder: str
    state: str
    claim_id: bytes
    prio_ms: int


class PeerStore:
    """Not thread-safe on its own: the service calls it under its one lock."""

    def __init__(self, path: Path | str, synchronous: str = "FULL") -> None:
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.durable_mode = "NORMAL" if synchronous == "NORMAL" else "FULL"
        self._mode = ""
        self.db.executescript(SCHEMA)

    @contextlib.contextmanager
    def _tx(self, durable: bool = False) -> Iterator[None]:
        """One transaction. Only a grant must be on disk before it is sent (its commit
        also syncs every WAL frame before it); everything else is rebuilt after a crash
        (pending rounds are dropped, uses seeded from the journal, outboxes synced
        again), so it skips the fsync (WAL with synchronous=NORMAL)."""
        mode = self.durable_mode if durable else "NORMAL"
        if mode != self._mode:
            self.db.execute(f"PRAGMA synchronous={mode}")
            self._mode = mode
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    # claims --------------------------------------------------------------------------
    def rows(self, key: ClaimKey) -> list[Row]:
        cur = self.db.execute(
            "SELECT holder, state, claim_id, prio_ms, wire FROM claim WHERE key = ?",
            (key_text(key),),
        )
        return [Row(_key(w), h, s, bytes(c), p) for h, s, c, p, w in cur]

    def put(
        self,
        keys: Iterable[ClaimKey],
        holder: str,
        state: str,
        claim_id: bytes,
        prio: int,
        at: int,
        durable: bool = False,
    ) -> None:
        with self._tx(durable):
            self.db.executemany(
                "INSERT OR REPLACE INTO claim VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(key_text(k), holder, state, claim_id, prio, at, _wire(k)) for k in keys],
            )

    def set_state(self, claim_id: bytes, holder: str, state: str, only: str | None = None) -> int:
        sql = "UPDATE claim SET state = ? WHERE claim_id = ? AND holder = ?"
        args: tuple[object, ...] = (state, claim_id, holder)
        if only is not None:
            sql, args = sql + " AND state = ?", (*args, only)
        with self._tx():
            return self.db.execute(sql, args).rowcount

    def states_of(self, claim_id: bytes, holder: str) -> set[str]:
        cur = self.db.execute(
            "SELECT state FROM claim WHERE claim_id = ? AND holder = ?", (claim_id, holder)
        )
        return {s for (s,) in cur}

    def delete_claim(self, claim_id: bytes, holder: str, states: Sequence[str]) -> int:
        marks = ",".join("?" * len(states))
        with self._tx():
            return self.db.execute(
                f"DELETE FROM claim WHERE claim_id = ? AND holder = ? AND state IN ({marks})",  # noqa: S608
                (claim_id, holder, *states),
            ).rowcount

    def delete_keys(self, keys: Iterable[ClaimKey], holder: str, states: Sequence[str]) -> int:
        marks = ",".join("?" * len(states))
        sql = f"DELETE FROM claim WHERE key = ? AND holder = ? AND state IN ({marks})"  # noqa: S608
        with self._tx():
            return sum(self.db.execute(sql, (key_text(k), holder, *states)).rowcount for k in keys)

    def grants_in_flight(self, holder: str, since_ms: int) -> int:
        """Claims of `holder` we granted since `since_ms` that it has neither used nor
        released."""
        row = self.db.execute(
            "SELECT count(DISTINCT claim_id) FROM claim WHERE holder = ? AND state = 'granted' "
            "AND at_ms >= ?",
            (holder, since_ms),
        ).fetchone()
        return int(row[0])

    def with_claim_mates(
        self, keys: Sequence[ClaimKey], holder: str, states: Sequence[str]
    ) -> list[ClaimKey]:
        """`keys`, and every other key `holder` took in the same claim as one of them (a
        use's customer and budget slots beside its serial). Rows seeded at start share the
        zero claim id and are not mates."""
        out, seen = list(keys), {key_text(k) for k in keys}
        marks = ",".join("?" * len(states))
        for k in keys:
            for row in self.rows(k):
                if row.holder != holder or row.state not in states:
                    continue
                if row.claim_id.strip(b"\0") == b"":
                    continue
                sql = f"SELECT wire FROM claim WHERE claim_id = ? AND holder = ? AND state IN ({marks})"  # noqa: S608, E501
                cur = self.db.execute(sql, (row.claim_id, holder, *states))
                for (w,) in cur:
                    mate = _key(w)
                    if key_text(mate) not in seen:
                        seen.add(key_text(mate))
                        out.append(mate)
        return out

    # recovery after a crash (PeerService._recover) -----------------------------------------
    def drop_unfinished(self, me: str) -> list[bytes]:
        """Our rounds a crash cut short (pending, yielded): deleted; their claim ids."""
        cur = self.db.execute(
            "SELECT DISTINCT claim_id FROM claim WHERE holder = ? AND state IN "
            "('pending', 'yielded')",
            (me,),
        )
        dropped = [bytes(c) for (c,) in cur]
        for cid in dropped:
            self.delete_claim(cid, me, ("pending", "yielded"))
        return dropped

    def drop_unsold(self, me: str, live: Sequence[ClaimKey]) -> list[bytes]:
        """Our `won` claims whose serial is no live use in the journal (the sale never
        committed): deleted; their claim ids."""
        live_text = {key_text(k) for k in live}
        cur = self.db.execute(
            "SELECT DISTINCT claim_id, key FROM claim WHERE holder = ? AND state = 'won'", (me,)
        )
        dropped = []
        for cid, text in list(cur):
            if text.startswith("serial\x1f") and text not in live_text:
                dropped.append(bytes(cid))
                self.delete_claim(bytes(cid), me, ("won",))
        return dropped

    def seed(self, me: str, live: Sequence[ClaimKey], now: int) -> None:
        """The journal's live uses we hold no row for: held, and in the outbox as `used`."""
        new = [k for k in live if not any(r.holder == me for r in self.rows(k))]
        if new:
            self.put(new, me, "held", b"\0" * wire.ID_LEN, now, now)
            self.append("used", new, None, now)

    def held_set(self, me: str) -> list[str]:
        """The uses this till knows of: its own and the ones peers told it about."""
        cur = self.db.execute(
            "SELECT key, holder FROM claim WHERE (holder = ? AND state = 'held') OR "
            "(holder != ? AND state = 'used') ORDER BY key, holder",
            (me, me),
        )
        return [f"{k.replace(chr(31), '/')}@{h}" for k, h in cur]

    def count(self, state: str) -> int:
        return int(
            self.db.execute("SELECT count(*) FROM claim WHERE state = ?", (state,)).fetchone()[0]
        )

    # outbox --------------------------------------------------------------------------
    def append(self, t: str, keys: Sequence[ClaimKey], seq: int | None, at: int) -> int:
        with self._tx():
            cur = self.db.execute(
                "INSERT INTO outbox (at_ms, type, keys, seq) VALUES (?, ?, ?, ?)",
                (at, t, cbor2.dumps([wire.key_to_wire(k) for k in keys]), seq),
            )
            return int(cur.lastrowid or 0)

    def head(self) -> int:
        return int(self.db.execute("SELECT coalesce(max(pseq), 0) FROM outbox").fetchone()[0])

    def events(self, since: int, limit: int) -> list[list[object]]:
        cur = self.db.execute(
            "SELECT pseq, type, keys, seq, at_ms FROM outbox WHERE pseq > ? ORDER BY pseq LIMIT ?",
            (since, limit),
        )
        return [
            wire.event_to_wire(p, t, [wire.key_from_wire(w) for w in cbor2.loads(k)], s, a)
            for p, t, k, s, a in cur
        ]

    # peers ---------------------------------------------------------------------------
    def last_pseq(self, peer: str) -> int:
        row = self.db.execute("SELECT last_pseq FROM peer WHERE terminal = ?", (peer,)).fetchone()
        return int(row[0]) if row else 0

    def set_last_pseq(self, peer: str, pseq: int) -> None:
        with self._tx():
            self.db.execute(
                "INSERT INTO peer (terminal, last_pseq) VALUES (?, ?) "
                "ON CONFLICT(terminal) DO UPDATE SET last_pseq = excluded.last_pseq",
                (peer, pseq),
            )

    # the journal mirror --------------------------------------------------------------
    def mirror(self, recs: Iterable[PeerRecord]) -> None:
        with self._tx():
            self.db.executemany(
                "INSERT INTO mirror (at_ms, what, peer, key, claim_id, pseq) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(r.at_ms, r.what, r.peer, _wire(r.key), r.claim_id, r.pseq) for r in recs],
            )

    def unmirrored(self, limit: int = 200) -> list[tuple[int, PeerRecord]]:
        cur = self.db.execute(
            "SELECT id, at_ms, what, peer, key, claim_id, pseq FROM mirror ORDER BY id LIMIT ?",
            (limit,),
        )
        return [(i, PeerRecord(a, w, p, _key(k), c, q)) for i, a, w, p, k, c, q in cur]

    def mirrored(self, upto: int) -> None:
        with self._tx():
            self.db.execute("DELETE FROM mirror WHERE id <= ?", (upto,))


def digest(held: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(held).encode()).hexdigest()


def _wire(key: ClaimKey) -> bytes:
    return cbor2.dumps(wire.key_to_wire(key))


def _key(blob: bytes) -> ClaimKey:
    return wire.key_from_wire(cbor2.loads(blob))
