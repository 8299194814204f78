"""The terminal's sync client: one round pushes the journal (acknowledged high-water mark,
gaps resent), pulls the ledger (ETag, gzip, resumable; sync/ledger_pull.py) into the engine,
pulls the central's decisions on fraud flags, and measures the clock offset. Network I/O
happens on the calling thread; every engine and journal access goes through `local.call`
(the daemon's one writer)."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, TypedDict, TypeVar, cast

from coupons import journal, ledger, setup
from coupons import sync_state as status
from coupons.engine import Engine
from coupons.journal import EXPORT_FIELDS, Entry, get_meta, set_meta
from coupons.journal.meta import PRUNED_AT
from coupons.jsontypes import JSONObject
from coupons.ledger_store import DEFAULT_MAX_FILE_BYTES
from sync import protocol, till_status
from sync.device import Settings, read_device_key
from sync.http import CentralLink, Link, Offset, SyncError, SyncErrorKind
from sync.ledger_pull import (
    Partial,
    content_range_start,
    decode,
    etag_for,
    no_updates,
    remember_etag,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
IMPORT_TIMEOUT_S = 120.0  # verifying a big snapshot on a Pi takes a while
PRUNE_EVERY_S = 24 * 3600  # how often acknowledged old journal entries are dropped


class Local(Protocol):
    """Runs a job against the engine: directly (CLI) or on the daemon's engine worker."""

    def call(self, job: Callable[[Engine], T], timeout: float = ...) -> T: ...


class Direct:
    """The engine used in this thread (`redeem sync --once`, no daemon running)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def call(self, job: Callable[[Engine], T], timeout: float = 0.0) -> T:
        return job(self.engine)


class JournalReport(TypedDict, total=False):
    """What a round did with the journal; the counts come last (empty: not reached)."""

    sent: int
    accepted: int
    resent_from: list[int]
    acked_seq: int
    head_seq: int
    backlog: int


class Refusal(TypedDict):
    kind: str
    detail: str


# What a round did with the ledger (empty: not reached). "from" is a keyword, hence this form.
LedgerReport = TypedDict(
    "LedgerReport",
    {
        "from": int,
        "to": int,
        "applied": list[int],
        "refused": list[Refusal],
        "resumed_at": int,
        "status": int,
        "not_modified": bool,
        "bytes": int,
    },
    total=False,
)


class FlagsReport(TypedDict, total=False):
    received: int
    since: str


class ClockReport(TypedDict):
    offset_s: float
    uncertainty_s: float
    ok: bool


class _Imported(TypedDict):
    applied: list[int]
    refused: list[Refusal]
    to: int


class _Counts(TypedDict):
    acked_seq: int
    head_seq: int
    backlog: int


class _JournalAnswer(TypedDict):
    """The central's answer to a batch, checked (protocol.JournalReplyDoc)."""

    acked_seq: int
    accepted: int
    gaps: list[list[int]]
    problem: str | None
    usage: dict[str, list[int]] | None


@dataclass
class RoundResult:
    ok: bool = False
    error: str | None = None
    error_kind: SyncErrorKind | None = None
    started_at: float = 0.0
    duration_s: float = 0.0
    journal: JournalReport = field(default_factory=JournalReport)
    ledger: LedgerReport = field(default_factory=LedgerReport)
    flags: FlagsReport = field(default_factory=FlagsReport)
    clock: ClockReport | None = None

    def to_dict(self) -> JSONObject:
        # Every field is a JSON value (the reports are TypedDicts of them).
        return cast(JSONObject, asdict(self))

    def summary(self) -> str:
        lines = []
        j, led = self.journal, self.ledger
        if j:
            lines.append(
                f"journal: sent {j.get('sent', 0)}, central stored {j.get('accepted', 0)} new;"
                f" acknowledged up to #{j.get('acked_seq', 0)}, backlog {j.get('backlog', 0)}"
            )
        if led:
            if led.get("not_modified"):
                lines.append(f"ledger: version {led.get('to')} is current (not modified)")
            else:
                applied = ", ".join(map(str, led.get("applied", []))) or "none"
                lines.append(
                    f"ledger: version {led.get('from')} -> {led.get('to')} (applied {applied})"
                )
            for r in led.get("refused", []):
                lines.append(f"ledger REFUSED: {r['kind']}: {r['detail']}")
        if self.flags:
            lines.append(f"flag decisions: {self.flags.get('received', 0)} new")
        if self.clock:
            c = self.clock
            ahead = round(-c["offset_s"], 1) + 0.0  # + 0.0: never print "-0.0"
            lines.append(
                f"clock: {ahead:+.1f} s off the central's (+-{c['uncertainty_s']:.2f} s)"
                + ("" if c["ok"] else " -> clock UNTRUSTED, coupons are refused")
            )
        lines.append("sync OK" if self.ok else f"sync FAILED ({self.error_kind}): {self.error}")
        return "\n".join(lines)


class Backoff:
    """Exponential backoff with full jitter between failed rounds: the n-th failure in a
    row waits uniform(0, min(cap, base * 2**(n-1))); success goes back to the interval."""

    def __init__(self, base_s: float = 5.0, cap_s: float = 300.0, seed: int | None = None):
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0
        self._rng = random.Random(seed)

    def ceiling(self) -> float:
        return min(self.cap_s, self.base_s * 2.0 ** max(0, self.failures - 1))

    def next_delay(self, interval_s: float) -> float:
        if self.failures == 0:
            return interval_s
        delay: float = self._rng.uniform(0.0, self.ceiling())
        return delay

    def record(self, ok: bool) -> None:
        self.failures = 0 if ok else self.failures + 1


def _scope_and_since(engine: Engine) -> tuple[str, int]:
    """The scope a till asks for (its store's) and the version it holds in it. A till still
    on the chain-wide ledger (from before scopes, or a USB import) asks from 0 for its
    store's snapshot: the one-way move docs/central-scale.md describes."""
    scope = ledger.store_scope(engine.store)
    return scope, engine.ledger.version if engine.ledger.scope == scope else 0


class SyncClient:
    def __init__(
        self,
        data: Path,
        link: CentralLink,
        local: Local,
        stop: threading.Event | None = None,
        inputs: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self.data = data
        self.link = link
        self.local = local
        self.stop = stop or threading.Event()
        self.inputs = inputs  # the daemon's inputs and their health states, to report
        self.work_dir = data / "sync"
        # A ledger download (as sent, and once decompressed) is refused past this: the
        # same bound as `redeem ledger import`, so a central or proxy sending an endless
        # body neither fills the SD card nor the memory.
        self.max_ledger_bytes = DEFAULT_MAX_FILE_BYTES
        self._own_usage: dict[str, list[int]] | None = None

    # ------------------------------------------------------------------ the round

    def run_round(self) -> RoundResult:
        """Push, pull, measure. Any failure ends the round cleanly: what was acknowledged
        stays acknowledged, nothing is applied twice, and the next round picks up."""
        result = RoundResult(started_at=self.link.clock.now())
        t0 = time.monotonic()
        self.link.reset_offset()
        try:
            self._check_stop()
            self.report_status()
            result.journal = self.push_journal()
            self._check_stop()
            self.report_status()
            result.ledger = self.pull_ledger()
            if self._own_usage is not None:
                # The ledger just pulled counts every use the central has from us: from now
                # on the budget check takes our own uses out of the ledger's totals.
                own = self._own_usage
                self.local.call(lambda e: e.record_own_usage(own))
            self._check_stop()
            self.report_status()
            result.flags = self.pull_flags()
            # A ledger applied journals an entry: send it now too.
            if self.local.call(_journal_counts)["backlog"] > 0:
                self._check_stop()
                self.report_status()
                result.journal = _merge_push(result.journal, self.push_journal())
            result.ok = True
        except SyncError as exc:
            result.error, result.error_kind = exc.message, exc.kind
            log.warning("sync round failed (%s): %s", exc.kind, exc.message)
        result.clock = self._record_offset(self.link.best)
        result.duration_s = round(time.monotonic() - t0, 3)
        if not self.stop.is_set():
            counts = self.local.call(_journal_counts)
            result.journal = {"sent": 0, "accepted": 0, **result.journal, **counts}
        return result

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise SyncError(SyncErrorKind.STOPPED, "sync stopped (the terminal is shutting down)")

    def report_status(self) -> None:
        """What the next requests tell the central (sync/till_status.py): the journal head
        and ledger version now, the clock offset (this round's, else the last kept) and the
        inputs' health."""
        counts, offset, (_, version) = self.local.call(
            lambda e: (_journal_counts(e), e.clock_offset_s, _scope_and_since(e))
        )
        offset = self.link.best.offset_s if self.link.best is not None else offset
        try:
            inputs = self.inputs() if self.inputs is not None else None
        except Exception as exc:  # a driver's health must never stop a round
            log.warning("input health not reported: %s", exc)
            inputs = None
        self.link.status = till_status.report(counts["head_seq"], version, offset, inputs)

    def _record_offset(self, best: Offset | None) -> ClockReport | None:
        if best is None or self.stop.is_set():
            return None
        try:
            ok = self.local.call(lambda e: e.record_clock_offset(best.offset_s, best.uncertainty_s))
        except Exception as exc:  # the worker stopping: the measurement is simply lost
            log.warning("clock offset not recorded: %s", exc)
            return None
        return {
            "offset_s": round(best.offset_s, 3),
            "uncertainty_s": round(best.uncertainty_s, 3),
            "ok": ok,
        }

    # ------------------------------------------------------------------ journal

    def push_journal(self) -> JournalReport:
        """Send every entry after the acknowledged mark in batches of MAX_BATCH; the central
        answers with its mark and any gaps, and we resend from the first gap."""
        counts = self.local.call(_journal_counts)
        acked, head = counts["acked_seq"], counts["head_seq"]
        out: JournalReport = {"sent": 0, "accepted": 0, "resent_from": []}
        start = acked + 1
        stalls = 0
        while start <= head:
            self._check_stop()
            # Not past `head`: scans journaled meanwhile go with the next round.
            batch = self.local.call(_rows_job(start, head, protocol.MAX_BATCH))
            if not batch or batch[0]["seq"] != start:
                raise SyncError(
                    SyncErrorKind.PROTOCOL,
                    f"journal entries from #{start} are no longer on this terminal "
                    f"(pruned); the central needs them",
                )
            answer = self.link.post_json(protocol.JOURNAL, {"entries": batch})
            reply = _journal_reply(answer.json())
            out["sent"] += len(batch)
            out["accepted"] += reply["accepted"]
            if reply["usage"] is not None:
                self._own_usage = reply["usage"]
            central_acked = reply["acked_seq"]
            if central_acked > head:
                raise SyncError(
                    SyncErrorKind.PROTOCOL,
                    f"the central acknowledges #{central_acked} but this terminal has only "
                    f"written up to #{head}: is it the right central?",
                )
            if central_acked != acked:
                self.local.call(_set_acked_job(central_acked))
                try:
                    setup.keep_acknowledged_copy(self.data, central_acked)
                except OSError as exc:  # a full disk: the mark in journal.db still holds
                    log.warning("cannot keep a copy of the acknowledged mark: %s", exc)
                acked = central_acked
            if reply["problem"]:
                raise SyncError(
                    SyncErrorKind.REFUSED,
                    f"the central refused journal entries: {reply['problem']}",
                )
            nxt = reply["gaps"][0][0] if reply["gaps"] else acked + 1
            if reply["gaps"]:
                out["resent_from"].append(nxt)
            stalls = stalls + 1 if nxt <= start and not reply["accepted"] else 0
            if stalls >= 2:
                raise SyncError(
                    SyncErrorKind.PROTOCOL,
                    f"the central does not take the journal from #{start} on",
                )
            start = nxt
        return out

    # ------------------------------------------------------------------ ledger

    def pull_ledger(self) -> LedgerReport:
        scope, since = self.local.call(_scope_and_since)
        out: LedgerReport = {"from": since, "to": since, "applied": [], "refused": []}
        partial = Partial(self.work_dir)
        part = partial.load(since)
        headers = {"Accept": protocol.LEDGER_MEDIA_TYPE, "Accept-Encoding": "gzip"}
        cached = etag_for(self.local.call(lambda e: get_meta(status.LEDGER_ETAG)), since)
        if part is not None:
            headers["Range"] = f"bytes={part.size}-"
            headers["If-Range"] = part.etag
            out["resumed_at"] = part.size
        elif cached:
            headers["If-None-Match"] = cached
        answer = self.link.request(
            "GET",
            protocol.LEDGER,
            params={"since": since, "scope": scope},
            headers=headers,
            stream=True,
        )
        resp = answer.response
        out["status"] = answer.status
        try:
            if answer.status in (304, 204):
                # 204: we hold the latest; its ETag makes the next pull a 304.
                if answer.status == 204 and resp.headers.get("ETag"):
                    self.local.call(remember_etag(resp.headers["ETag"], since))
                out["not_modified"] = True
                return out
            if answer.status == 416:
                partial.drop()
                raise SyncError(
                    SyncErrorKind.PROTOCOL, "the central refused to resume the ledger download"
                )
            etag = resp.headers.get("ETag", "")
            encoding = resp.headers.get("Content-Encoding", "identity").lower()
            if answer.status == 206 and part is not None:
                start = content_range_start(resp.headers.get("Content-Range", ""))
                if start != part.size:
                    partial.drop()
                    raise SyncError(
                        SyncErrorKind.PROTOCOL, "the central resumed the ledger at the wrong byte"
                    )
                append = True
            else:
                out.pop("resumed_at", None)
                append = False
            raw = partial.receive(
                resp, since, etag, encoding, append, self.stop, self.max_ledger_bytes
            )
        finally:
            resp.close()
        out["bytes"] = len(raw)
        try:
            data = decode(raw, encoding, self.max_ledger_bytes)
        except SyncError:
            partial.drop()
            raise
        if no_updates(data):
            partial.drop()
            out["not_modified"] = True
            return out
        result = self.local.call(lambda e: _import(e, data), IMPORT_TIMEOUT_S)
        partial.drop()
        if etag:
            # Kept even when the file was refused: the same refused file is then not fetched,
            # re-imported and flagged again every round, only a newer version is.
            self.local.call(remember_etag(etag, result["to"]))
        out["applied"] = result["applied"]
        out["refused"] = result["refused"]
        out["to"] = result["to"]
        if result["refused"]:
            first = result["refused"][0]
            raise SyncError(
                SyncErrorKind.REFUSED, f"ledger update refused: {first['kind']}: {first['detail']}"
            )
        return out

    # ------------------------------------------------------------------ flags

    def pull_flags(self) -> FlagsReport:
        """The central's decisions on fraud flags (acknowledged, resolved, deny-listed),
        kept for the manager's screen; deny-lists themselves arrive in the ledger."""
        since = self.local.call(lambda e: get_meta(status.FLAGS_SINCE, "0")) or "0"
        answer = self.link.get_json(protocol.FLAGS, params={"since": since})
        doc = answer.json()
        items, cursor = _flag_reply(doc, since)
        if items or cursor != since:
            self.local.call(lambda e: status.store_flag_decisions(items, cursor))
        return {"received": len(items), "since": cursor}


# ---------------------------------------------------------------------- engine jobs


def _journal_counts(engine: Engine) -> _Counts:
    acked = int(get_meta("acked_seq", "0") or 0)
    head = engine.journal.head_seq
    return {"acked_seq": acked, "head_seq": head, "backlog": max(0, head - acked)}


def _rows_job(start: int, until: int, limit: int) -> Callable[[Engine], list[dict[str, object]]]:
    def job(engine: Engine) -> list[dict[str, object]]:
        query = (
            Entry.select()
            .where((Entry.seq >= start) & (Entry.seq <= until))
            .order_by(Entry.seq)
            .limit(limit)
        )
        rows: list[dict[str, object]] = list(query.dicts())  # type: ignore[arg-type]
        return [{k: row[k] for k in EXPORT_FIELDS} for row in rows]

    return job


def _set_acked_job(acked: int) -> Callable[[Engine], None]:
    def job(engine: Engine) -> None:
        set_meta("acked_seq", str(acked))
        _prune(engine)

    return job


def _prune(engine: Engine) -> None:
    """Drop journal entries the central holds and the retention period no longer needs
    (journal.prune keeps RETENTION_S, two years, and only acknowledged entries), so the
    SD card does not fill. At most every PRUNE_EVERY_S: finding the cutoff reads the
    whole journal."""
    now = engine.now()
    last = get_meta(PRUNED_AT)
    try:
        due = last is None or not 0 <= now - float(last) < PRUNE_EVERY_S
    except ValueError:
        due = True
    if not due:
        return
    dropped = journal.prune(now)
    set_meta(PRUNED_AT, f"{now:.3f}")
    if dropped:
        log.info("pruned %d acknowledged journal entries older than the retention", dropped)


def _import(engine: Engine, data: bytes) -> _Imported:
    result = engine.import_ledger(data)
    return {
        "applied": list(result.applied),
        "refused": [{"kind": r.kind, "detail": r.detail} for r in result.refused],
        "to": engine.ledger.version,
    }


def _merge_push(first: JournalReport, second: JournalReport) -> JournalReport:
    return {
        "sent": first["sent"] + second["sent"],
        "accepted": first["accepted"] + second["accepted"],
        "resent_from": first["resent_from"] + second["resent_from"],
    }


# ---------------------------------------------------------------------- replies


def _journal_reply(doc: object) -> _JournalAnswer:
    """Check the central's answer to a batch (protocol.py); raise on a malformed one."""
    if not isinstance(doc, dict):
        raise SyncError(SyncErrorKind.PROTOCOL, "journal reply is not a JSON object")
    acked, accepted = doc.get("acked_seq"), doc.get("accepted", 0)
    gaps, problem = doc.get("gaps") or [], doc.get("problem")
    if not isinstance(acked, int) or isinstance(acked, bool) or acked < 0:
        raise SyncError(SyncErrorKind.PROTOCOL, "journal reply has no acked_seq")
    if not isinstance(accepted, int):
        raise SyncError(SyncErrorKind.PROTOCOL, "journal reply: accepted is not a number")
    if not isinstance(gaps, list) or not all(
        isinstance(g, list) and len(g) == 2 and all(isinstance(x, int) for x in g) for g in gaps
    ):
        raise SyncError(SyncErrorKind.PROTOCOL, "journal reply: gaps are not [[a, b], ...]")
    usage = doc.get("usage")
    own: dict[str, list[int]] | None = None
    if isinstance(usage, dict) and all(
        isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) for x in v)
        for v in usage.values()
    ):
        own = {str(k): [int(v[0]), int(v[1])] for k, v in usage.items()}
    return {
        "acked_seq": acked,
        "accepted": accepted,
        "gaps": sorted(gaps),
        "problem": None if problem is None else str(problem),
        "usage": own,
    }


def _flag_reply(doc: object, since: str) -> tuple[list[JSONObject], str]:
    items: object
    cursor: object
    if isinstance(doc, list):
        items, cursor = doc, None
    elif isinstance(doc, dict):
        items = doc.get("decisions", doc.get("flags", []))
        cursor = doc.get("next", doc.get("since"))
    else:
        raise SyncError(SyncErrorKind.PROTOCOL, "flags reply is neither a list nor an object")
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise SyncError(SyncErrorKind.PROTOCOL, "flags reply: decisions are not objects")
    decisions: list[JSONObject] = [i for i in items if isinstance(i, dict)]  # parsed JSON
    if cursor is None:
        ids = [v for i in decisions if isinstance(v := i.get("id"), int)]
        cursor = max(ids) if ids else since
    return decisions, str(cursor)


# ---------------------------------------------------------------------- one-shot use


def open_link(
    data: Path,
    engine: Engine,
    central: str | None = None,
    ca: str | None = None,
    connect_timeout_s: float = 5.0,
    read_timeout_s: float = 20.0,
) -> CentralLink:
    """A signed link for this terminal: the central and CA pinned at enrollment unless
    given (the daemon's [sync] section, `--central`)."""
    settings = Settings.load(data)
    url = central or (settings.central if settings else None)
    if not url:
        raise SyncError(
            SyncErrorKind.REFUSED, f"{data} has no central: enroll it or give --central"
        )
    if ca is None and settings is not None and url == settings.central:
        ca = settings.ca_path(data)
    link = Link(url, ca, connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s)
    return CentralLink(link, read_device_key(data), engine.terminal, engine.clock)


def run_once(data: Path, engine: Engine, link: CentralLink | None = None) -> RoundResult:
    """One round with the engine used directly (no daemon), its outcome kept in Meta."""
    link = link or open_link(data, engine)
    try:
        result = SyncClient(data, link, Direct(engine)).run_round()
    finally:
        link.close()
    status.record_round(engine, result)
    return result
