"""What the central knows of each till's state beyond its requests: the status it reports
on them (sync/till_status.py: journal head, clock offset, device health, app version), stored
on its TerminalRow, and when the ledger version it holds was published."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from coupons.ledger import store_scope
from sync import till_status
from sync.central import metrics
from sync.central.models import ScopeRow, ScopeVersion, TerminalRow

log = logging.getLogger(__name__)
REPORT_EVERY_S = 60  # an unchanged report is written at most this often per terminal
CLOCK_STEP_MS = 500  # a clock offset that moved less than this is "unchanged"


def record_status(
    row: TerminalRow, headers: Mapping[str, str], method: str, path_qs: str, now: float
) -> None:
    """Store the report a signed request carries (none: nothing changes). A malformed or
    badly signed one is ignored, counted (metrics and the terminal's status_ignored) and
    logged: it never fails the request it rides on. A key the report leaves out keeps what
    the central holds (a till synced by hand has no daemon to tell its device health)."""
    try:
        got = till_status.read_status(headers, method, path_qs, bytes.fromhex(row.public_key))
    except till_status.StatusError as exc:
        metrics.count_status(exc.why)
        log.info("ignored the status report of terminal %s: %s", row.id, exc)
        TerminalRow.update(status_ignored=TerminalRow.status_ignored + 1).where(
            TerminalRow.id == row.id
        ).execute()
        return
    if got is None:
        return
    metrics.count_status("ok")
    changes: dict[str, object] = {}
    if got.head is not None and got.head != row.journal_head:
        changes["journal_head"] = got.head
    if got.ledger is not None and got.ledger != row.ledger_version:
        changes["ledger_version"] = got.ledger
    if got.clock_ms is not None and (
        row.clock_ms is None or abs(got.clock_ms - row.clock_ms) >= CLOCK_STEP_MS
    ):
        changes["clock_ms"] = got.clock_ms
    if got.health is not None:
        unwell = ",".join(got.unwell) or None
        if (got.health, unwell) != (row.health, row.unwell):
            changes.update(health=got.health, unwell=unwell)
    if got.app is not None and got.app != row.app_version:
        changes["app_version"] = got.app
    if not changes and row.status_at is not None and row.status_at >= now - REPORT_EVERY_S:
        return
    if got.clock_ms is not None:
        changes["clock_ms"] = got.clock_ms  # written anyway: the latest figure
    changes["status_at"] = int(now)
    TerminalRow.update(**changes).where(TerminalRow.id == row.id).execute()


def published_at(held: Iterable[tuple[str, int | None]]) -> dict[tuple[str, int], int]:
    """When each (store, ledger version) a terminal holds was published in its store's
    ledger (epoch seconds); missing when unknown (version 0, a chain-wide version, or a
    delta compacted away that is not the latest)."""
    wanted = {(store_scope(s), v) for s, v in held if v}
    if not wanted:
        return {}
    scopes = {sc for sc, _ in wanted}
    found: dict[tuple[str, int], int] = {}
    for r in ScopeRow.select(ScopeRow.scope, ScopeRow.version, ScopeRow.issued_at).where(
        ScopeRow.scope.in_(scopes)
    ):
        found[(r.scope, int(r.version))] = int(r.issued_at)
    versions = {v for _, v in wanted}
    query = ScopeVersion.select(
        ScopeVersion.scope, ScopeVersion.version, ScopeVersion.issued_at
    ).where(ScopeVersion.scope.in_(scopes) & ScopeVersion.version.in_(versions))
    for v in query:
        found[(v.scope, int(v.version))] = int(v.issued_at)
    return {(sc.removeprefix("store:"), v): t for (sc, v), t in found.items() if (sc, v) in wanted}


def latest_versions(stores: Iterable[str]) -> dict[str, int]:
    """The latest version of each store's ledger."""
    scopes = {store_scope(s) for s in stores}
    rows = ScopeRow.select(ScopeRow.scope, ScopeRow.version).where(ScopeRow.scope.in_(scopes))
    return {r.scope.removeprefix("store:"): int(r.version) for r in rows}


def backlog(head: int | None, acked: int) -> int | None:
    """Entries a till has written that the central does not hold: counted from the head it
    reported and the central's own mark (never from a figure the till could get wrong)."""
    return None if head is None else max(0, head - acked)
