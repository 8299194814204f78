"""Sync status kept in the journal database's Meta table, so `redeem sync status` can answer
with the daemon stopped: last attempt and success, last error, backlog, ledger version and
age, clock offset, and the central's decisions on fraud flags. Engine jobs: call them on
the engine's thread (the daemon's worker) or with the engine the CLI opened."""

from __future__ import annotations

import json
from typing import Any, Protocol, cast

from coupons.engine import Engine
from coupons.journal import database_proxy, get_meta, set_meta
from coupons.journal.meta import CLOCK_OFFSET_AT as META_CLOCK_OFFSET_AT
from coupons.journal.meta import (
    FAILURES,
    FLAG_DECISIONS,
    LAST_ATTEMPT,
    LAST_ERROR,
    LAST_SUCCESS,
)
from coupons.journal.meta import FLAGS_SINCE as FLAGS_SINCE  # sync/client.py reads these two
from coupons.journal.meta import LEDGER_ETAG as LEDGER_ETAG
from coupons.jsontypes import JSON, JSONObject

KEEP_DECISIONS = 200  # the newest flag decisions kept under FLAG_DECISIONS


class RoundOutcome(Protocol):
    """How a sync round ended, as this module keeps it (sync.client.RoundResult)."""

    @property
    def ok(self) -> bool: ...
    @property
    def started_at(self) -> float: ...
    @property
    def error(self) -> str | None: ...
    @property
    def error_kind(self) -> str | None: ...


def record_round(engine: Engine, result: RoundOutcome) -> None:
    """Remember how a round ended (a RoundResult)."""
    with database_proxy.obj.atomic():
        set_meta(LAST_ATTEMPT, f"{result.started_at:.3f}")
        if result.ok:
            set_meta(LAST_SUCCESS, f"{result.started_at:.3f}")
            set_meta(LAST_ERROR, "")
            set_meta(FAILURES, "0")
        else:
            doc = {"at": result.started_at, "kind": result.error_kind, "message": result.error}
            set_meta(LAST_ERROR, json.dumps(doc))
            set_meta(FAILURES, str(int(get_meta(FAILURES, "0") or 0) + 1))


def store_flag_decisions(items: list[JSONObject], cursor: str) -> None:
    with database_proxy.obj.atomic():
        kept = _decisions()
        kept = (kept + items)[-KEEP_DECISIONS:]
        set_meta(FLAG_DECISIONS, json.dumps(kept))
        set_meta(FLAGS_SINCE, cursor)


def _json(text: str | None, default: JSON) -> JSON:
    if not text:
        return default
    try:
        parsed: JSON = json.loads(text)
    except ValueError:
        return default
    return parsed


def _decisions() -> list[JSON]:
    """The kept flag decisions: a list, as store_flag_decisions (its only writer) keeps it."""
    return cast(list[JSON], _json(get_meta(FLAG_DECISIONS), []))


def _float(key: str) -> float | None:
    value = get_meta(key)
    try:
        return float(value) if value else None
    except ValueError:
        return None


def snapshot(engine: Engine) -> JSONObject:
    """Everything a status line or the manager's screen shows about sync."""
    now = engine.now()
    acked = int(get_meta("acked_seq", "0") or 0)
    head = engine.journal.head_seq
    last_success = _float(LAST_SUCCESS)
    offset = engine.clock_offset_s
    return {
        "last_attempt": _float(LAST_ATTEMPT),
        "last_success": last_success,
        "since_success_s": None if last_success is None else max(0.0, now - last_success),
        "last_error": _json(get_meta(LAST_ERROR), None),
        "failures_in_a_row": int(get_meta(FAILURES, "0") or 0),
        "acked_seq": acked,
        "head_seq": head,
        "backlog": max(0, head - acked),
        "ledger_version": engine.ledger.version,
        "ledger_issued_at": engine.ledger.issued_at or None,
        "ledger_age_s": engine.ledger_age_s(now),
        "clock_offset_s": offset,  # central minus ours: negative when ours runs ahead
        "clock_offset_at": _float(META_CLOCK_OFFSET_AT),
        "max_clock_offset_s": engine.ledger.policy.max_clock_offset_s,
        "clock_ok": engine.clock_ok(now),
        "flag_decisions": len(_decisions()),
        "flags_since": get_meta(FLAGS_SINCE),
    }


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def flag_decisions(engine: Engine, limit: int | None = None) -> list[JSONObject]:
    """The central's decisions on fraud flags, newest first, for the manager's screen. Each:
    id (decision id), flag (the central's flag id), kind (flag kind: double_redemption,
    replay, ...), decision (acknowledged | resolved | deny_listed), note (text or None),
    at (Unix seconds of the decision, or None), serial, campaign, store, terminal (the
    terminal the flag is about; None when unknown), seq (its journal seq or None) and
    this_terminal (True when the flag is about this terminal's own journal). Decisions a
    central sent without a field show None for it."""
    own = engine.terminal
    out: list[JSONObject] = []
    for item in reversed(_decisions()):
        if not isinstance(item, dict):
            continue
        terminal = _text(item.get("terminal"))
        out.append(
            {
                "id": _int(item.get("id")),
                "flag": _int(item.get("flag")),
                "kind": _text(item.get("kind")),
                "decision": _text(item.get("status")),
                "note": _text(item.get("note")),
                "at": _int(item.get("at")),
                "serial": _text(item.get("serial")),
                "campaign": _text(item.get("campaign")),
                "store": _text(item.get("store")),
                "terminal": terminal,
                "seq": _int(item.get("seq")),
                "this_terminal": terminal is not None and terminal == own,
            }
        )
        if limit is not None and len(out) >= limit:
            break
    return out


def describe(s: dict[str, Any]) -> str:
    """The status as a few lines for a person."""

    def ago(seconds: float | None) -> str:
        if seconds is None:
            return "never"
        if seconds < 120:
            return f"{seconds:.0f} s ago"
        if seconds < 7200:
            return f"{seconds / 60:.0f} min ago"
        return f"{seconds / 3600:.1f} h ago"

    lines = []
    central = s.get("central")
    if central:
        state = "running" if s.get("running") else "not running"
        lines.append(f"central {central} (sync loop {state})")
    lines.append(f"last success: {ago(s.get('since_success_s'))}")
    err = s.get("last_error")
    if err:
        lines.append(
            f"last error ({err.get('kind')}), {s.get('failures_in_a_row', 0)} failed round(s)"
            f" in a row: {err.get('message')}"
        )
    lines.append(
        f"journal: {s['backlog']} entr{'y' if s['backlog'] == 1 else 'ies'} not yet "
        f"acknowledged (head #{s['head_seq']}, acknowledged #{s['acked_seq']})"
    )
    age = s.get("ledger_age_s")
    lines.append(
        f"ledger version {s['ledger_version']}, age "
        + (f"{age / 3600:.1f} h" if age is not None else "-")
    )
    offset = s.get("clock_offset_s")
    if offset is None:
        lines.append("clock offset: not measured yet")
    else:
        ahead = round(-offset, 1) + 0.0  # + 0.0: never print "-0.0"
        lines.append(f"clock: {ahead:+.1f} s off the central's (limit {s['max_clock_offset_s']} s)")
    lines.append("clock " + ("ok" if s.get("clock_ok") else "UNTRUSTED: coupons are refused"))
    if s.get("next_round_in_s") is not None:
        lines.append(f"next round in {s['next_round_in_s']:.0f} s")
    return "\n".join(lines)
