"""The chain-wide ledger of `Central` (store.py): publishing its next version, a signed
delta of everything that changed (claimed rows stamped with the version, so a row added
meanwhile waits for the next one), and reading versions, states and snapshots back. The
store scopes are made from it (scopes.py); the publisher (publisher.py) calls it."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import peewee as pw

from coupons import cose, ledger
from coupons.keys import PURPOSE_ISSUER, PURPOSE_LEDGER, TrustAnchor
from coupons.ledger import GENESIS, LedgerState
from sync.central.keyring import CentralError
from sync.central.models import (
    CampaignRow,
    CampaignUsage,
    CouponRow,
    CustomerUse,
    DenyRow,
    KeyRow,
    PublishedCustomerUse,
    SerialMark,
    SnapshotRow,
    SunKeyRow,
    VersionRow,
    from_db_serial,
)


class ChainLedger:
    """What `Central` provides is declared below for the type checker only."""

    if TYPE_CHECKING:
        now: Callable[[], float]
        postgres: bool

        @property
        def anchor(self) -> TrustAnchor: ...

        def exclusive(self) -> AbstractContextManager[None]: ...

        def _active(self, purpose: str) -> tuple[cose.SigningKey, bytes]: ...

        def _get(self, key: str, default: str | None = None) -> str | None: ...

        def _set(self, key: str, value: str) -> None: ...

    def latest(self) -> VersionRow | None:
        row: VersionRow | None = VersionRow.select().order_by(VersionRow.version.desc()).first()
        return row

    def publish(self) -> int:
        """Make the next ledger version: a signed delta of everything that changed since the
        last one (possibly nothing: a heartbeat that tells terminals they are current)."""
        with self.exclusive():
            return self._publish_locked()

    def publish_if_changed(self) -> int | None:
        """Publish a new version when anything terminals must hear of changed (campaigns,
        keys, policy, revoked or redeemed serials, usage, deny lists, typed codes, SUN keys)
        or nothing was published yet; returns the new version, else None."""
        with self.exclusive():
            if not self.changed():
                return None
            return self._publish_locked()

    def changed(self) -> bool:
        """Whether a new version would carry anything (read-only; publish_if_changed checks
        again under the lock)."""
        campaigns = CampaignRow.select().where(
            (CampaignRow.published_doc.is_null() & ~CampaignRow.removed)
            | (CampaignRow.doc != CampaignRow.published_doc)
            | (CampaignRow.removed & CampaignRow.published_doc.is_null(False))
        )
        return bool(
            self.latest() is None
            or campaigns.exists()
            or SerialMark.select().where(SerialMark.published_in.is_null()).exists()
            or CouponRow.select()
            .where(CouponRow.code_hash.is_null(False) & CouponRow.published_in.is_null())
            .exists()
            or SunKeyRow.select().where(SunKeyRow.published_in.is_null()).exists()
            or KeyRow.select().where(KeyRow.published_in.is_null()).exists()
            or DenyRow.select().where(DenyRow.published_in.is_null()).exists()
            or CampaignUsage.select()
            .where(
                (CampaignUsage.count != CampaignUsage.pub_count)
                | (CampaignUsage.minor != CampaignUsage.pub_minor)
            )
            .exists()
            or self._get("policy") != self._get("published_policy")
            or self._customer_usage_changes(self._limited_campaigns()).exists()
        )

    def _limited_campaigns(self) -> list[str]:
        """Campaigns (as they will be published) that limit uses per customer."""
        rows = CampaignRow.select(CampaignRow.id, CampaignRow.doc).where(
            ~CampaignRow.removed & CampaignRow.doc.contains('"uses_per_customer"')
        )
        return sorted(r.id for r in rows if json.loads(r.doc).get("uses_per_customer") is not None)

    def _customer_usage_changes(self, campaigns: list[str]) -> pw.ModelSelect[CustomerUse]:
        """The CustomerUse rows (campaign, customer, count) of limited campaigns whose count
        differs from the one last published."""
        pub = PublishedCustomerUse
        return (
            CustomerUse.select(CustomerUse.campaign, CustomerUse.customer, CustomerUse.count)
            .join(
                pub,
                pw.JOIN.LEFT_OUTER,
                on=(pub.campaign == CustomerUse.campaign) & (pub.customer == CustomerUse.customer),
            )
            .where(
                CustomerUse.campaign.in_(campaigns or [""])
                & (
                    (pub.count.is_null() & (CustomerUse.count != 0))
                    | (pub.count != CustomerUse.count)
                )
            )
        )

    # Each part of a new version claims what is new (stamps it with the version), then reads
    # what was claimed: a row another instance adds meanwhile waits for the next version,
    # never gets lost. The parts run in this order, all under the publish lock.

    def _publish_locked(self) -> int:
        key, cert = self._active(PURPOSE_LEDGER)
        last = self.latest()
        version = (last.version if last else 0) + 1
        prev = bytes(last.chain) if last else GENESIS
        issued_at = int(self.now())
        body: dict[str, object] = {
            "type": "delta",
            "version": version,
            "prev": prev,
            "issued_at": issued_at,
        }
        changed = [r for r in CampaignRow.select() if r.doc != r.published_doc and not r.removed]
        body["campaigns"] = [json.loads(r.doc) for r in changed]
        removed = CampaignRow.select().where(
            CampaignRow.removed & CampaignRow.published_doc.is_null(False)
        )
        body["removed_campaigns"] = [r.id for r in removed]
        body.update(self._claim_serials(version))
        body.update(self._claim_keys_and_codes(version))
        policy = self._get("policy") or "{}"
        body["policy"] = json.loads(policy)
        body.update(self._claim_sun_keys_and_usage(version))
        body.update(self._claim_customer_usage(version))
        body.update(self._claim_denied(version))
        raw = ledger.sign_update(key, cert, body)
        payload = ledger.verify_update(self.anchor, raw).payload
        VersionRow.create(
            version=version,
            chain=ledger.chain_next(prev, payload),
            issued_at=issued_at,
            signed=raw,
        )
        for r in changed:
            CampaignRow.update(published_doc=r.doc).where(
                (CampaignRow.id == r.id) & (CampaignRow.doc == r.doc)
            ).execute()
        CampaignRow.delete().where(CampaignRow.removed).execute()
        KeyRow.update(published_in=version).where(KeyRow.published_in.is_null()).execute()
        self._set("published_policy", policy)
        return version

    def _claim_serials(self, version: int) -> dict[str, object]:
        """Revoked, redeemed and (when any) unredeemed serials, packed."""
        out: dict[str, object] = {}
        SerialMark.update(published_in=version).where(SerialMark.published_in.is_null()).execute()
        for kind in ("revoked", "redeemed", "unredeemed"):
            new = SerialMark.select(SerialMark.serial).where(
                (SerialMark.kind == kind) & (SerialMark.published_in == version)
            )
            found = [from_db_serial(r.serial) for r in new]
            if found or kind != "unredeemed":
                out.update(ledger.serial_field(kind, found))
        return out

    def _claim_keys_and_codes(self, version: int) -> dict[str, object]:
        """Issuer certificates, revoked key ids, the typed codes' salt and new typed codes."""
        issuer_certs = [
            bytes(r.cert)
            for r in KeyRow.select().where((KeyRow.purpose == PURPOSE_ISSUER) & ~KeyRow.revoked)
        ]
        revoked_kids = [bytes.fromhex(r.kid) for r in KeyRow.select().where(KeyRow.revoked)]
        plain_salt = bytes.fromhex(self._get("plain_salt") or "")
        CouponRow.update(published_in=version).where(
            CouponRow.code_hash.is_null(False) & CouponRow.published_in.is_null()
        ).execute()
        plain_codes = [
            [bytes(r.code_hash or b""), r.campaign, from_db_serial(r.serial)]
            for r in CouponRow.select().where(CouponRow.published_in == version)
        ]
        return {
            "issuer_certs": issuer_certs,
            "revoked_kids": revoked_kids,
            "plain_salt": plain_salt,
            "plain_codes": plain_codes,
        }

    def _claim_sun_keys_and_usage(self, version: int) -> dict[str, object]:
        """New SUN keys, and each campaign's usage (all terminals) that changed."""
        SunKeyRow.update(published_in=version).where(SunKeyRow.published_in.is_null()).execute()
        out: dict[str, object] = {
            "sun_keys": {
                r.campaign: bytes(r.key)
                for r in SunKeyRow.select().where(SunKeyRow.published_in == version)
            }
        }
        changed = (CampaignUsage.count != CampaignUsage.pub_count) | (
            CampaignUsage.minor != CampaignUsage.pub_minor
        )
        if self.postgres:
            # Lock the rows in campaign order first, the order an upload's upserts take them
            # in (reconcile._campaign_usage): an UPDATE takes them in whatever order it
            # finds them, and two orders over the same rows deadlock.
            list(
                CampaignUsage.select(CampaignUsage.campaign)
                .where(changed)
                .order_by(CampaignUsage.campaign)
                .for_update()
            )
        CampaignUsage.update(
            pub_count=CampaignUsage.count, pub_minor=CampaignUsage.minor, published_in=version
        ).where(changed).execute()
        usage = {
            r.campaign: [int(r.pub_count), int(r.pub_minor)]
            for r in CampaignUsage.select().where(CampaignUsage.published_in == version)
        }
        if usage:
            out["usage"] = usage
        return out

    def _claim_customer_usage(self, version: int) -> dict[str, object]:
        """Per-customer counts of limited campaigns, as they are now (what is read here is
        what is marked published: a use counted meanwhile differs, and goes next time)."""
        counts = {
            (r.campaign, r.customer): int(r.count)
            for r in self._customer_usage_changes(self._limited_campaigns())
        }
        if not counts:
            return {}
        rows = [
            {"campaign": cid, "customer": ref, "count": n, "published_in": version}
            for (cid, ref), n in counts.items()
        ]
        pub = PublishedCustomerUse
        for chunk in range(0, len(rows), 500):
            pub.insert_many(rows[chunk : chunk + 500]).on_conflict(
                conflict_target=[pub.campaign, pub.customer],
                update={pub.count: pw.EXCLUDED.count, pub.published_in: version},
            ).execute()
        return {
            "customer_usage": ledger.pack_customer_usage({k: max(0, n) for k, n in counts.items()})
        }

    def _claim_denied(self, version: int) -> dict[str, object]:
        """New entries of the deny lists: tag UIDs and customer references."""
        out: dict[str, object] = {}
        DenyRow.update(published_in=version).where(DenyRow.published_in.is_null()).execute()
        denied = list(DenyRow.select().where(DenyRow.published_in == version))
        tags = sorted(bytes.fromhex(r.value) for r in denied if r.kind == "tag")
        customers = sorted(r.value for r in denied if r.kind == "customer")
        if tags:
            out["deny_tags"] = tags
        if customers:
            out["deny_customers"] = customers
        return out

    def deltas(self, since: int, until: int | None = None) -> list[bytes]:
        query = VersionRow.select(VersionRow.signed).where(VersionRow.version > since)
        if until is not None:
            query = query.where(VersionRow.version <= until)
        return [bytes(r.signed) for r in query.order_by(VersionRow.version)]

    def state(self) -> LedgerState:
        """The ledger as of the latest version."""
        latest = self.latest()
        return self.state_at(latest.version) if latest else LedgerState()

    def state_at(self, version: int) -> LedgerState:
        """The ledger as of a version: the nearest signed snapshot before it (if any) and
        the deltas after that, each verified as a terminal would."""
        state = LedgerState()
        anchor = self.anchor
        base = (
            SnapshotRow.select()
            .where(SnapshotRow.version <= version)
            .order_by(SnapshotRow.version.desc())
            .first()
        )
        if base is not None:
            state, _ = ledger.apply(anchor, state, bytes(base.signed))
        for raw in self.deltas(state.version, version):
            state, _ = ledger.apply(anchor, state, raw)
        return state

    def snapshot(self) -> bytes:
        """The signed snapshot of the latest version (same version and chain hash)."""
        latest = self.latest()
        if latest is None:
            raise CentralError("nothing published yet")
        return self.snapshot_of(latest.version)

    def snapshot_of(self, version: int) -> bytes:
        """A version's signed snapshot, signed once and kept: the same bytes every time."""
        row = SnapshotRow.get_or_none(SnapshotRow.version == version)
        if row is not None:
            return bytes(row.signed)
        key, cert = self._active(PURPOSE_LEDGER)
        body = ledger.snapshot_body(self.state_at(version))
        body["signed_at"] = int(self.now())
        raw = ledger.sign_update(key, cert, body)
        SnapshotRow.insert(version=version, signed=raw).on_conflict_ignore().execute()
        return bytes(SnapshotRow.get(SnapshotRow.version == version).signed)
