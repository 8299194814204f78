"""The central's state: its database and settings, campaigns, issued coupons and
revocations; the keys are in keyring.py and the chain-wide ledger's versions in chain.py.
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

from coupons.keys import PURPOSE_ISSUER, TrustAnchor
from coupons.ledger import Policy
from coupons.rules import Campaign
from coupons.tokens import Claims, issue, plain_code_hash
from sync.central import campaigns, keyvault
from sync.central.chain import ChainLedger
from sync.central.keyring import CentralError, KeyRing
from sync.central.models import (
    CampaignRow,
    CouponRow,
    DenyRow,
    SerialMark,
    Setting,
    SunKeyRow,
    create_schema,
    db_proxy,
    db_serial,
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


class Central(KeyRing, ChainLedger):
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
