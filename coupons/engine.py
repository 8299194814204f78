"""The redemption engine: one call decides a coupon offline, in the order DESIGN.md fixes
(format, signature, key and campaign, time, scope, limits, basket, fraud), and journals
every attempt before answering. Standalone redeem here, two-phase hold/commit/release/
reverse in twophase.py, all idempotent by the caller's operation id. One thread calls it
(one writer)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import sqlite3
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import peewee as pw

from coupons import fraud
from coupons.claims import ClaimKey, ClaimResult
from coupons.clock import Clock
from coupons.decision import Context, Coupon, Decision, Refuse
from coupons.fraud import Flag
from coupons.journal import (
    LIVE_USES,
    Entry,
    Journal,
    NewEntry,
    NewUse,
    Use,
    UseStatus,
    checkout_uses,
    get_meta,
    insert_operation,
    insert_use,
    mark_path,
    operation_answer,
    raise_tag_counter,
    read_mark,
    write_mark,
)
from coupons.journal.meta import CLOCK_OFFSET as META_CLOCK_OFFSET
from coupons.journal.meta import OWN_CUSTOMER_USAGE as META_OWN_CUSTOMER_USAGE
from coupons.ledger import Policy, clamped_usage
from coupons.ledger_store import LedgerStore
from coupons.ledger_sync import LedgerSync
from coupons.peer_claims import PeerClaims
from coupons.reasons import Reason
from coupons.rules import Basket, best_combination
from coupons.twophase import TwoPhase

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=256)
def _use_detail(via: str, gift_sku: str | None) -> str:
    """A coupon use's detail column (json.dumps's default spelling, as it always was)."""
    return json.dumps({"code": "", "via": via, "gift": gift_sku})


# The attempts the burst detectors count (the engine journals each as one entry of these
# kinds); read from the tail of the journal by seq, which is its primary key.
_ATTEMPT_KINDS = frozenset(("redeem", "hold"))
_TAIL_SQL = "SELECT {} FROM {} ORDER BY {} DESC".format(  # noqa: S608 (model metadata only)
    ", ".join(
        f'"{Entry._meta.fields[c].column_name}"'
        for c in ("at_ms", "kind", "accepted", "serial", "cashier")
    ),
    f'"{Entry._meta.table_name}"',
    f'"{Entry._meta.fields["seq"].column_name}"',
)


def _recent_attempts(db: pw.Database, now: float, policy: Policy) -> list[fraud.PastAttempt]:
    """The journal's attempts inside the burst window before `now`, oldest first. Walks
    back from the newest entry and stops at the first one older than the window, so the
    cost is the window's entries, not the journal's."""
    window = policy.burst_window_s
    if not window:
        return []
    cutoff_ms = (now - window) * 1000
    out: list[fraud.PastAttempt] = []
    cursor = db.connection().execute(_TAIL_SQL)
    try:
        for at_ms, kind, accepted, serial, cashier in cursor:
            if at_ms <= cutoff_ms:
                break
            if kind in _ATTEMPT_KINDS:
                out.append(fraud.PastAttempt(at_ms / 1000.0, serial, cashier, bool(accepted)))
    finally:
        cursor.close()
    out.reverse()
    return out


# What _record tells peewee while its transaction is open (see there).
_TRANSACTION = object()


class Engine(TwoPhase, LedgerSync, PeerClaims):
    """The engine's state and its one write path (`_record`). The two-phase checkout steps
    are in coupons/twophase.py, what sync and a manager tell it in coupons/ledger_sync.py,
    the claims on the store's other tills in coupons/peer_claims.py."""

    def __init__(
        self, ledger_store: LedgerStore, clock: Clock, store: str, terminal: str, db: pw.Database
    ) -> None:
        self.ledger_store = ledger_store
        self.clock = clock
        self.store = store
        self.terminal = terminal
        self.db = db
        self.journal = Journal()
        # Where each commit's (seq, hash) is kept outside journal.db; None: not kept.
        self.mark_file: Path | None = mark_path(db) if db.database != ":memory:" else None
        if self.mark_file is not None and read_mark(self.mark_file) is None:
            self._keep_mark()  # a till from before the mark, or its mark lost: start it now
        self.bursts = fraud.BurstDetector()
        # The windows as the journal shows them: a restart, a reload after another process
        # wrote, or a one-shot `redeem redeem` process decides as one long-lived process would.
        self.bursts.seed(terminal, _recent_attempts(db, clock.now(), self.ledger.policy))
        self._trusted_s = float(get_meta("trusted_time", "0") or 0)
        self.own_usage = clamped_usage(json.loads(get_meta("own_usage", "{}") or "{}"))
        own_customers = json.loads(get_meta(META_OWN_CUSTOMER_USAGE, "{}") or "{}")
        self.own_customer_usage = {(c, r): int(n) for c, r, n in own_customers.get("counts", ())}
        offset = get_meta(META_CLOCK_OFFSET)
        self.clock_offset_s = float(offset) if offset else None
        self._rebuild_usage()

    # ------------------------------------------------------------ usage cache

    def reload(self) -> None:
        """Another process wrote this terminal's journal or ledger (a `redeem` command run
        beside the daemon): re-read both and start again from what is on disk."""
        self.ledger_store.load()
        Engine.__init__(self, self.ledger_store, self.clock, self.store, self.terminal, self.db)

    def _rebuild_usage(self) -> None:
        """In-memory counters of uses that count; the Use table is the truth."""
        self.serial_uses: Counter[str] = Counter()
        self.customer_uses: Counter[tuple[str, str]] = Counter()
        self.campaign_count: Counter[str] = Counter()
        self.campaign_minor: Counter[str] = Counter()
        self._next_expiry = float("inf")
        for u in Use.select().where(Use.counts == True).iterator():  # noqa: E712
            self._count(u, +1)
            if u.status == UseStatus.HELD and u.expires_at is not None:
                self._next_expiry = min(self._next_expiry, u.expires_at)

    def _count(self, u: Use, sign: int) -> None:
        self._count_use(u.serial, u.campaign, u.customer, u.value_minor, sign)

    def _count_use(
        self, serial: str, campaign: str, customer: str | None, value_minor: int, sign: int
    ) -> None:
        self.serial_uses[serial] += sign
        if customer:
            self.customer_uses[(campaign, customer)] += sign
        self.campaign_count[campaign] += sign
        self.campaign_minor[campaign] += sign * value_minor

    def check(self, code: str, basket: Basket, ctx: Context = Context()) -> Decision:
        """Decide without recording anything (the `redeem check` command, a till's preview)."""
        now = self.now()
        self._expire_holds(now)  # else a lapsed hold still reads as "already used"
        try:
            decision, _, _, _ = self._decide(code, basket, ctx, now, [])
        except Refuse as r:
            return self._refusal(r, basket)
        return decision

    def _replay(self, op_id: str | None, request: str) -> Decision | None:
        """The stored answer when this operation id was seen before with the same request;
        a refusal when the id was used for a different request."""
        if not op_id:
            return None
        stored = operation_answer(op_id)
        if stored is None:
            return None
        if stored[0] != request:
            return Decision(
                False,
                Reason.OPERATION_CONFLICT,
                detail=f"operation id {op_id} was used for another request",
            )
        d = Decision.from_dict(json.loads(stored[1]))
        d.replayed = True
        return d

    def first_answer(self, op_id: str | None, request: str) -> Decision | None:
        """The answer an operation id got first (None: never seen), for a caller outside
        the engine that keeps the same promise (the POS API's retries)."""
        return self._replay(op_id, request)

    @staticmethod
    def request_key(*parts: str) -> str:
        """What an operation asked, as its stored fingerprint: the same parts, the same key."""
        joined = "\x1f".join(parts).encode("utf-8", "surrogatepass")
        return hashlib.sha256(joined).hexdigest()[:32]

    def _record(
        self, op_id: str | None, work: Callable[[], Decision], request: str = ""
    ) -> Decision:
        """Run `work` (which appends journal entries) in one durable transaction and store
        the answer under op_id. A storage fault refuses (fails closed) and loses nothing."""
        journal = self.journal
        head = (journal.head_seq, journal.head_hash, journal.last_at_ms)
        db = self.db
        try:
            if db.transaction_depth():  # inside a caller's transaction: a savepoint, as ever
                with db.atomic():
                    return self._work_and_remember(op_id, work, request)
            # db.atomic() without its bookkeeping: BEGIN and COMMIT on the connection, rolled
            # back on any error. Peewee is told a transaction is open, so that an atomic()
            # inside `work` nests as a savepoint as it would have.
            conn = db.connection()
            conn.execute("BEGIN")
            db.push_transaction(_TRANSACTION)
            try:
                decision = self._work_and_remember(op_id, work, request)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                db.pop_transaction()
            if journal.head_seq != head[0]:
                self._keep_mark()
            return decision
        except (pw.OperationalError, pw.IntegrityError, sqlite3.Error, OSError) as exc:
            log.error("journal write failed, refusing: %s", exc)
            reason, detail = Reason.STORAGE_FAILURE, str(exc)
        except Exception:
            # A bug must not accept a coupon or kill the terminal: refuse and keep the trace.
            log.exception("engine fault, refusing")
            reason, detail = Reason.INTERNAL_ERROR, ""
        journal.head_seq, journal.head_hash, journal.last_at_ms = head
        self._rebuild_usage()
        return Decision(False, reason, detail=detail)

    def _keep_mark(self) -> None:
        """The head mark beside journal.db, after the commit (see journal.write_mark). A
        failed write (a full or read-only card) loses nothing that was committed: the mark
        only falls behind, which weakens the check until the next write, and the decision
        stands."""
        if self.mark_file is None:
            return
        try:
            write_mark(self.mark_file, self.journal.head_seq, self.journal.head_hash)
        except OSError as exc:
            log.warning("cannot keep the journal's head mark in %s: %s", self.mark_file, exc)

    def _work_and_remember(
        self, op_id: str | None, work: Callable[[], Decision], request: str
    ) -> Decision:
        decision: Decision = work()
        if op_id:
            insert_operation(op_id, request, self.journal.head_seq, json.dumps(decision.to_dict()))
        return decision

    def _append(
        self,
        kind: str,
        decision: Decision,
        basket: Basket | None,
        ctx: Context,
        now: float,
        op_id: str | None,
        coupon: Coupon | None = None,
        checkout_id: str | None = None,
        flags: Sequence[Flag] = (),
        peer: dict[str, object] | None = None,
    ) -> int:
        at_ms = int(now * 1000)
        detail: dict[str, object] = {
            "detail": decision.detail,
            "gift": decision.gift_sku,
            "basket_minor": basket.total_minor if basket else None,
            "tag": ctx.tag_uid.hex() if ctx.tag_uid else None,
            "override": ctx.manager_override,
        }
        if peer is not None:  # only when peers were asked: other entries' bytes stay as they were
            detail["peer"] = peer
        seq = self.journal.write(
            NewEntry(
                at_ms=at_ms,
                kind=kind,
                op_id=op_id,
                checkout_id=checkout_id,
                accepted=decision.accepted,
                reason=decision.reason.value,
                campaign=decision.campaign,
                serial=decision.serial,
                customer=coupon.customer if coupon else None,
                discount_minor=decision.discount_minor,
                currency=decision.currency or (basket.currency if basket else None),
                cashier=ctx.cashier,
                source=ctx.source,
                detail=detail,
            )
        )
        decision.journal_seq = seq
        for flag in flags:
            self.journal.write(
                NewEntry(
                    at_ms=at_ms,
                    kind="flag",
                    accepted=False,
                    reason=flag.kind,
                    serial=decision.serial,
                    campaign=decision.campaign,
                    cashier=ctx.cashier,
                    source=ctx.source,
                    detail={"detail": flag.detail, "about_seq": seq},
                )
            )
        return seq

    def _attempt(
        self,
        kind: str,
        code: str,
        basket: Basket,
        ctx: Context,
        op_id: str | None,
        checkout_id: str,
        status: UseStatus,
        request: str,
        same_sale: bool = False,
    ) -> Decision:
        now = self.now()
        self._expire_holds(now)
        others, any_held = (
            self._held_coupons(checkout_id, committed=same_sale)
            if status == UseStatus.HELD or same_sale
            else ([], False)
        )
        claims: list[ClaimResult] = []  # the peers' answer, settled after COMMIT

        def work() -> Decision:
            flags: list[Flag] = []
            coupon: Coupon | None
            try:
                decision, coupon, flags, restacked = self._decide(code, basket, ctx, now, others)
            except Refuse as r:
                decision, coupon = self._refusal(r, basket), r.coupon
                flags = [r.flag] if r.flag else []
                restacked = {}
            peer = None
            if decision.accepted and coupon is not None:
                # Only an acceptance asks the peers, and they can only turn it into a refusal.
                decision, peer = self._claim(coupon, decision, basket, flags, claims)
            if coupon is not None:
                burst = self.bursts.on_attempt(coupon.key, now, self.ledger.policy)
                if burst:
                    flags.append(burst)
            # A standalone redemption is its own one-coupon checkout: its id is what a refund
            # (reverse) names.
            decision.checkout_id = checkout_id
            self._append(kind, decision, basket, ctx, now, op_id, coupon, checkout_id, flags, peer)
            if decision.accepted and coupon is not None:
                self._add_use(coupon, decision, checkout_id, status, now)
                if coupon.via == "sun":
                    # The tap's read counter, with the use it allowed: a copy of this
                    # URL (same counter or older) is refused from now on.
                    _, tap = self._sun_read(code)
                    raise_tag_counter(coupon.campaign.id, tap.uid, tap.counter)
                if len(restacked) > 1 and any_held:  # only held uses take a new discount
                    self._restack(checkout_id, coupon.key, restacked)
                if status == UseStatus.HELD:
                    decision.coupons = self.checkout_coupons(checkout_id)
            return decision

        decision = self._record(op_id, work, request)
        for claim in claims:  # a storage fault refused: the claim is given back
            self.claimer.settle(claim, decision.accepted, decision.journal_seq)
        if decision.accepted:
            self.bursts.on_accept(self.terminal, ctx.cashier, now)
        return decision

    def _restack(self, checkout_id: str, new_key: str, discounts: dict[str, int]) -> None:
        """Held coupons of a checkout take the discounts the new stacking order gives them;
        their value against the campaign budget follows."""
        for u in Use.select().where(
            (Use.checkout_id == checkout_id)
            & (Use.status == UseStatus.HELD)
            & (Use.serial != new_key)
        ):
            off = discounts.get(u.serial, u.discount_minor)
            if off == u.discount_minor:
                continue
            value = u.value_minor - u.discount_minor + off
            self.campaign_minor[u.campaign] += value - u.value_minor
            Use.update(discount_minor=off, value_minor=value).where(Use.id == u.id).execute()

    def _add_use(
        self, coupon: Coupon, d: Decision, checkout_id: str, status: UseStatus, now: float
    ) -> None:
        c = coupon.campaign
        value = d.discount_minor + (c.gift_value_minor if d.gift_sku else 0)
        expires = now + self.ledger.policy.hold_ttl_s if status == UseStatus.HELD else None
        insert_use(
            NewUse(
                serial=coupon.key,
                campaign=c.id,
                customer=coupon.customer,
                checkout_id=checkout_id,
                status=status,
                counts=True,
                discount_minor=d.discount_minor,
                value_minor=value,
                currency=d.currency or c.currency,
                expires_at=expires,
                detail=_use_detail(coupon.via, d.gift_sku),
            )
        )
        self._count_use(coupon.key, c.id, coupon.customer, value, +1)
        if expires is not None:
            self._next_expiry = min(self._next_expiry, expires)

    # ------------------------------------------------------------ public operations

    def redeem(
        self,
        code: str,
        basket: Basket,
        ctx: Context = Context(),
        op_id: str | None = None,
        checkout_id: str | None = None,
    ) -> Decision:
        """Standalone: decide and redeem at once. Coupons redeemed under one `checkout_id`
        (one sale at the till) must stack with each other."""
        # The fingerprint is only ever compared under an operation id: no id, no hashing.
        request = self.request_key("redeem", checkout_id or "", code) if op_id else ""
        sale = checkout_id or op_id or uuid.uuid4().hex
        return self._replay(op_id, request) or self._attempt(
            "redeem",
            code,
            basket,
            ctx,
            op_id,
            sale,
            UseStatus.COMMITTED,
            request,
            same_sale=checkout_id is not None,
        )

    def best(
        self,
        codes: list[str],
        basket: Basket,
        ctx: Context = Context(),
    ) -> tuple[list[Decision], list[Decision]]:
        """Which of the presented coupons to use together for the most value. Records
        nothing; returns (chosen, refused)."""
        now = self.now()
        self._expire_holds(now)
        coupons: dict[str, Coupon] = {}
        refused: list[Decision] = []
        for code in codes:
            try:
                coupon = self._resolve(code, basket, ctx, now)
                self._check_limits(coupon, 0, basket)
                coupons[coupon.key] = coupon
            except Refuse as r:
                refused.append(self._refusal(r, basket))
        combo = best_combination([(k, c.campaign) for k, c in coupons.items()], basket)
        chosen = [
            Decision(
                True,
                Reason.OK,
                a.discount_minor,
                a.campaign.currency,
                a.campaign.id,
                a.campaign.name,
                a.key,
                gift_sku=a.gift_sku,
            )
            for a in combo.applied
        ]
        for key, exc in combo.refused.items():
            c = coupons[key].campaign
            refused.append(
                Decision(
                    False, exc.reason, 0, basket.currency, c.id, c.name, key, detail=exc.detail
                )
            )
        return chosen, refused

    def _held_coupons(self, checkout_id: str, committed: bool = False) -> tuple[list[Coupon], bool]:
        """Coupons held for a checkout (and, for a standalone sale, already redeemed in it),
        and whether any of them is held (else a new coupon restacks nothing)."""
        statuses = LIVE_USES if committed else (UseStatus.HELD,)
        out, any_held = [], False
        for serial, campaign_id, customer, status, detail in checkout_uses(checkout_id, statuses):
            campaign = self.ledger.campaigns.get(campaign_id)
            if campaign is not None:
                via = json.loads(detail).get("via", "token")
                out.append(Coupon(serial, int(serial, 16), campaign, customer, via))
                any_held = any_held or status == UseStatus.HELD
        return out, any_held

    def _expire_holds(self, now: float) -> None:
        if now < self._next_expiry:
            return

        released: list[ClaimKey] = []

        def work() -> Decision:
            expired = list(
                Use.select().where((Use.status == UseStatus.HELD) & (Use.expires_at <= now))
            )
            for u in expired:
                Use.update(status=UseStatus.EXPIRED, counts=False, expires_at=None).where(
                    Use.id == u.id
                ).execute()
                self._count(u, -1)
                released.append(self._use_key(u))
                self._append(
                    "expire",
                    Decision(
                        False,
                        Reason.HOLD_EXPIRED,
                        u.discount_minor,
                        u.currency,
                        u.campaign,
                        serial=u.serial,
                    ),
                    None,
                    Context(source="engine"),
                    now,
                    None,
                    checkout_id=u.checkout_id,
                )
            return Decision(True, Reason.OK)

        if self._record(None, work).accepted and released:
            self.claimer.release(released)
        nxt = Use.select(pw.fn.MIN(Use.expires_at)).where(Use.status == UseStatus.HELD).scalar()
        self._next_expiry = nxt if nxt is not None else float("inf")


__all__ = ["Context", "Decision", "Engine"]
