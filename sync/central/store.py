"""The central's state: keys, campaigns, issued coupons, revocations, and the published
ledger versions (each a signed delta in one hash chain, snapshots signed once per version).
Every write that two instances on one database could race on runs under a database lock."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import peewee as pw

from coupons import ledger
from coupons.keys import PURPOSE_ISSUER, PURPOSE_LEDGER, TrustAnchor
from coupons.ledger import GENESIS, LedgerState, Policy
from coupons.rules import Campaign
from coupons.tokens import Claims, issue, plain_code_hash
from sync.central import campaigns, keyvault
from sync.central.keyring import CentralError, KeyRing
from sync.central.models import (
    CampaignRow,
    CampaignUsage,
    CouponRow,
    CustomerUse,
    DenyRow,
    KeyRow,
    PublishedCustomerUse,
    SerialMark,
    Setting,
    SnapshotRow,
    SunKeyRow,
    VersionRow,
    create_schema,
    db_proxy,
    db_serial,
    from_db_serial,
    is_postgres,
    open_database,
)

__all__ = ["Central", "CentralError", "Issued", "db_proxy"]

CODE_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O, 1/I: cashiers type these
LOCK_PUBLISH = 0x45445245  # PostgreSQL advisory lock id for publishing ("EDRE")
SERIAL_COUNT_MAX = 0xFFFF_FFFF  # coupons one campaign number can count (low 32 bits)


@dataclass
class Issued:
    serial: int
    token: str | None
    code: str | None


class Central(KeyRing):
    def __init__(
        self,
        data: Path,
        now: Callable[[], float] = time.time,
        database: str | None = None,
        pool_size: int = 16,
        master_key: bytes | None = None,
    ) -> None:
        """Open the central on `data` (and `database`, when given). The master key opens
        the private keys sealed in the database; without one it is read from the
        environment or the systemd credential (keyvault.locate), and without any the
        central refuses to start, as it does with a master key that is not this
        database's: it never signs with a key it could not check."""
        self.data = data
        self.now = now
        self.keys_dir = data / "keys"  # an older central's key files, imported once
        self.database_url = database
        try:
            self.vault = keyvault.Vault(
                keyvault.load_master_key() if master_key is None else master_key
            )
        except keyvault.VaultError as exc:
            raise CentralError(str(exc)) from None
        try:
            self.db = open_database(data, database, pool_size)
        except ValueError as exc:
            raise CentralError(str(exc)) from None
        db_proxy.initialize(self.db)
        try:
            self.db.connect(reuse_if_open=True)
        except pw.OperationalError as exc:
            raise CentralError(f"cannot open the database: {exc}".strip()) from None
        create_schema(self.db)
        self.postgres = is_postgres(self.db)
        self._anchor: TrustAnchor | None = None
        try:
            self._check_master_key()
            self._import_key_files()
        except CentralError:
            self.close()
            raise

    def close(self) -> None:
        if not self.db.is_closed():
            self.db.close()
        if self.postgres:
            self.db.close_all()  # type: ignore[attr-defined]

    @contextmanager
    def session(self) -> Iterator[None]:
        """A connection for one request (returned to the pool after), in any thread."""
        opened = self.db.is_closed()
        if opened:
            self.db.connect()
        try:
            yield
        finally:
            if opened and not self.db.is_closed():
                self.db.close()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """A transaction that holds the central's publish lock: on SQLite the write lock
        (BEGIN IMMEDIATE), on PostgreSQL a transaction-scoped advisory lock."""
        if self.postgres:
            with self.db.atomic():
                self.db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (LOCK_PUBLISH,))
                yield
        else:
            with self.db.atomic("IMMEDIATE"):
                yield

    @contextmanager
    def writing(self) -> Iterator[None]:
        """A write transaction; on SQLite it takes the write lock at once, so a read done
        inside it cannot go stale before the write."""
        if self.postgres:
            with self.db.atomic():
                yield
        else:
            with self.db.atomic("IMMEDIATE"):
                yield

    # ---------------------------------------------------------------- keys (keyring.py)

    @classmethod
    def init(
        cls,
        data: Path,
        now: Callable[[], float] = time.time,
        database: str | None = None,
        master_key: bytes | None = None,
        root_key_out: Path | None = None,
    ) -> Central:
        """Make the root, ledger and issuer keys and write DATA/trust-anchor.json. With
        `root_key_out` the root seed goes only to that new file (mode 0600), never into the
        database: the central can then sign but not certify a new key without it."""
        if (data / "keys" / "root.key").exists():
            raise CentralError(f"{data} is already initialised")
        if root_key_out is not None and root_key_out.exists():
            raise CentralError(f"{root_key_out} exists: init writes the root key to a new file")
        data.mkdir(parents=True, exist_ok=True)
        c = cls(data, now, database, master_key=master_key)
        try:
            c._make_keys(root_key_out)
        except BaseException:
            c.close()
            raise
        return c

    def _get(self, key: str, default: str | None = None) -> str | None:
        row = Setting.get_or_none(Setting.key == key)
        return row.value if row else default

    def _set(self, key: str, value: str) -> None:
        Setting.insert(key=key, value=value).on_conflict(
            conflict_target=[Setting.key], update={Setting.value: value}
        ).execute()

    # ---------------------------------------------------------------- campaigns and coupons

    def add_campaign(self, doc: Mapping[str, object]) -> Campaign:
        """Add a campaign, or replace the document of one that has not ended (a pause
        head office made stays: campaigns.status_on_add)."""
        campaign = Campaign.from_dict(doc)
        with self.writing():
            status = campaigns.status_on_add(campaign.id, campaign.paused)
            campaign = replace(campaign, paused=status == campaigns.PAUSED)
            CampaignRow.insert(
                id=campaign.id, doc=json.dumps(campaign.to_dict()), removed=False, status=status
            ).on_conflict(
                conflict_target=[CampaignRow.id],
                preserve=[CampaignRow.doc, CampaignRow.removed, CampaignRow.status],
            ).execute()
        self._campaign_number(campaign.id)
        return campaign

    # The lifecycle (sync/central/campaigns.py); an unknown id is a CentralError.

    def pause_campaign(self, cid: str) -> campaigns.CampaignSummary:
        return campaigns.pause(self, cid)

    def resume_campaign(self, cid: str) -> campaigns.CampaignSummary:
        return campaigns.resume(self, cid)

    def end_campaign(self, cid: str) -> campaigns.CampaignSummary:
        return campaigns.end(self, cid)

    def archive_campaign(self, cid: str) -> campaigns.CampaignSummary:
        return campaigns.archive(self, cid)

    def list_campaigns(self, archived: bool = True) -> list[campaigns.CampaignSummary]:
        """Every campaign with its status and figures (archived ones unless told not to)."""
        found = campaigns.summaries()
        return found if archived else [s for s in found if s.status != campaigns.ARCHIVED]

    def campaign_summary(self, cid: str) -> campaigns.CampaignSummary:
        return campaigns.summary(cid)

    def campaign(self, cid: str) -> Campaign:
        row = CampaignRow.get_or_none((CampaignRow.id == cid) & ~CampaignRow.removed)
        if row is None:
            raise CentralError(f"no campaign {cid}")
        return Campaign.from_dict(json.loads(row.doc))

    def issue(
        self,
        cid: str,
        count: int,
        codes: bool = False,
        customer: bytes | None = None,
        tag_uid: bytes | None = None,
        validity_s: int = 90 * 24 * 3600,
    ) -> list[Issued]:
        campaign = self.campaign(cid)
        campaigns.require_issuable(cid)
        key, _ = self._active(PURPOSE_ISSUER)
        salt = bytes.fromhex(self._get("plain_salt") or "")
        now = int(self.now())
        nbf = max(now, campaign.valid_from or now)
        exp = campaign.valid_until or nbf + validity_s
        out: list[Issued] = []
        serials_ = self.allocate_serials(cid, count)
        with self.db.atomic():
            for serial in serials_:
                code = None
                if codes:
                    code = "-".join(
                        "".join(secrets.choice(CODE_ALPHABET) for _ in range(4)) for _ in range(3)
                    )
                CouponRow.create(
                    serial=db_serial(serial),
                    campaign=cid,
                    issued_at=now,
                    code_hash=plain_code_hash(salt, code) if code else None,
                    customer=customer.hex() if customer else None,
                )
                token = (
                    None if codes else issue(key, Claims(cid, serial, nbf, exp, customer, tag_uid))
                )
                out.append(Issued(serial, token, code))
        return out

    def allocate_serials(self, cid: str, count: int) -> list[int]:
        """`count` new numbered serials of a campaign: its number in the high 32 bits, a
        count from 1 in the low ones (never 0, so no serial is just the number shifted).
        The range is taken in a transaction of its own: two instances issuing at once get
        disjoint ranges, and one whose coupons then fail to be written leaves a gap."""
        number = self._campaign_number(cid)
        with self.writing():  # PostgreSQL: the UPDATE locks the row until commit
            CampaignRow.update(issued=CampaignRow.issued + count).where(
                CampaignRow.id == cid
            ).execute()
            last = CampaignRow.select(CampaignRow.issued).where(CampaignRow.id == cid).scalar()
            if last is None:
                raise CentralError(f"no campaign {cid}")
            if last > SERIAL_COUNT_MAX:  # raised inside: the counter rolls back
                raise CentralError(
                    f"campaign {cid} cannot issue {count} more coupons: "
                    f"{last - count} of the {SERIAL_COUNT_MAX} its number allows are issued"
                )
        return [(number << 32) | n for n in range(last - count + 1, last + 1)]

    def _campaign_number(self, cid: str) -> int:
        """The campaign's number (the high 32 bits of its serials), drawn the first time it
        is asked for: random and non-zero, unique among campaigns (the index), and clear of
        every serial issued before (old random ones, those of a deleted campaign)."""
        for _ in range(64):
            number = CampaignRow.select(CampaignRow.number).where(CampaignRow.id == cid).scalar()
            if number is not None:
                return int(number)
            candidate = secrets.randbits(32)
            low, high = candidate << 32, (candidate << 32) | SERIAL_COUNT_MAX
            if candidate == 0 or (
                CouponRow.select()
                .where(CouponRow.serial.between(db_serial(low), db_serial(high)))
                .exists()
            ):
                continue
            try:
                with self.db.atomic():  # a savepoint: another campaign may hold it already
                    CampaignRow.update(number=candidate).where(
                        (CampaignRow.id == cid) & CampaignRow.number.is_null()
                    ).execute()
            except pw.IntegrityError:
                continue
            if not CampaignRow.select().where(CampaignRow.id == cid).exists():
                raise CentralError(f"no campaign {cid}")
        raise CentralError(f"no free number for campaign {cid}")  # 2**32 numbers: never

    def mark(self, serials_: Iterable[int], kind: str) -> int:
        rows = [{"serial": db_serial(s), "kind": kind} for s in serials_]
        with self.db.atomic():
            for chunk in range(0, len(rows), 500):
                SerialMark.insert_many(rows[chunk : chunk + 500]).on_conflict_ignore().execute()
        return len(rows)

    def deny(self, kind: str, value: str) -> bool:
        """Put a tag UID (hex) or a customer reference on the ledger's deny lists."""
        if kind not in ("tag", "customer"):
            raise CentralError(f"no deny list {kind!r}")
        n = DenyRow.insert(kind=kind, value=value).on_conflict_ignore().execute()
        return bool(n)

    def set_sun_key(self, cid: str, key: bytes) -> None:
        """The SDM key a campaign's SUN tags were personalised with; the next published
        version carries it to the terminals (a new key replaces the old one there)."""
        self.campaign(cid)
        if len(key) != 16:
            raise CentralError("an SDM key is 16 bytes (AES-128)")
        SunKeyRow.insert(campaign=cid, key=key, published_in=None).on_conflict(
            conflict_target=[SunKeyRow.campaign],
            update={SunKeyRow.key: key, SunKeyRow.published_in: None},
        ).execute()

    def set_policy(self, policy: Policy) -> None:
        self._set("policy", json.dumps(policy.to_dict()))

    def policy(self) -> Policy:
        """The policy the next ledger version carries (defaults for any field not set)."""
        return Policy.from_dict(json.loads(self._get("policy") or "{}"))

    # ---------------------------------------------------------------- ledger

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
