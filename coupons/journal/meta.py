"""The Meta table: one registry of every key the till keeps there, and reading and writing them."""

from __future__ import annotations

from coupons.journal.schema import Meta

# The journal's own (coupons/journal): where a pruned chain resumes, and the newest entry
# the central acknowledged (sync/client.py writes it; prune and verify read it).
PRUNED_SEQ = "pruned_seq"
PRUNED_HASH = "pruned_hash"
ACKED_SEQ = "acked_seq"

# The engine's (coupons/engine.py). Trusted time (a clock reading before it is wrong): the
# newest ledger's issue time or a manager's reset; and the entry of the last reset, from
# which entries' stamps count towards it again (chain.Journal reads it).
TRUSTED_TIME = "trusted_time"
CLOCK_RESET_SEQ = "clock_reset_seq"
# The device clock measured against the central's by sync (central minus ours, seconds)
# and when.
CLOCK_OFFSET = "clock_offset_s"
CLOCK_OFFSET_AT = "clock_offset_at"
OWN_USAGE = "own_usage"  # JSON: what the central counts of this till's uses, as of the ledger
# This till's uses per (campaign, customer) that the central counts (acknowledged journal
# entries), for campaigns with a per-customer limit: {"seq": counted up to, "campaigns":
# [...], "counts": [[campaign, customer, n], ...]}.
OWN_CUSTOMER_USAGE = "own_customer_usage"

# Sync's (coupons/sync_state.py, sync/client.py), so `redeem sync status` can answer with
# the daemon stopped.
LAST_ATTEMPT = "sync.last_attempt"
LAST_SUCCESS = "sync.last_success"
LAST_ERROR = "sync.last_error"  # JSON {"at", "kind", "message"}; cleared by a success
FAILURES = "sync.failures"  # failed rounds in a row
LEDGER_ETAG = "sync.ledger_etag"  # JSON {"since", "etag"}: If-None-Match for that version
FLAGS_SINCE = "sync.flags_since"
FLAG_DECISIONS = "sync.flag_decisions"  # JSON list, newest last (sync_state.KEEP_DECISIONS)
PRUNED_AT = "sync.pruned_at"  # when the sync client last looked for entries to prune

KEYS = frozenset(
    {
        PRUNED_SEQ,
        PRUNED_HASH,
        ACKED_SEQ,
        TRUSTED_TIME,
        CLOCK_RESET_SEQ,
        CLOCK_OFFSET,
        CLOCK_OFFSET_AT,
        OWN_USAGE,
        OWN_CUSTOMER_USAGE,
        LAST_ATTEMPT,
        LAST_SUCCESS,
        LAST_ERROR,
        FAILURES,
        LEDGER_ETAG,
        FLAGS_SINCE,
        FLAG_DECISIONS,
        PRUNED_AT,
    }
)


def get_meta(key: str, default: str | None = None) -> str | None:
    row = Meta.get_or_none(Meta.key == key)
    return row.value if row else default


def set_meta(key: str, value: str) -> None:
    Meta.insert(key=key, value=value).on_conflict_replace().execute()
