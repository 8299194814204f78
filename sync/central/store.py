"""The central's state: keys, campaigns, issued coupons, revocations, and the published
ledger versions (each a signed delta in one hash chain, snapshots made on demand)."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peewee as pw

from terminal import cose, ledger, serials
from terminal.keys import PURPOSE_ISSUER, PURPOSE_LEDGER, TrustAnchor, make_cert
from terminal.ledger import GENESIS, LedgerState, Policy
from terminal.rules import Campaign
from terminal.tokens import Claims, issue, plain_code_hash

KEY_YEARS = 5 * 365 * 24 * 3600
CODE_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O, 1/I: cashiers type these

db_proxy = pw.DatabaseProxy()


class _M(pw.Model):
    class Meta:
        database = db_proxy


class KeyRow(_M):
    kid = pw.CharField(primary_key=True)
    purpose = pw.CharField()
    cert = pw.BlobField()
    created = pw.IntegerField()
    active = pw.BooleanField(default=True)  # the key new signatures use
    revoked = pw.BooleanField(default=False)
    published_in = pw.IntegerField(null=True)


class CampaignRow(_M):
    id = pw.CharField(primary_key=True)
    doc = pw.TextField()
    published_doc = pw.TextField(null=True)
    removed = pw.BooleanField(default=False)


class CouponRow(_M):
    serial = pw.BigIntegerField(primary_key=True)  # stored signed; see _db_serial
    campaign = pw.CharField(index=True)
    issued_at = pw.IntegerField()
    code_hash = pw.BlobField(null=True)
    customer = pw.CharField(null=True)
    published_in = pw.IntegerField(null=True)  # for typed codes: the version that listed it


class SerialMark(_M):
    """A serial every terminal must refuse: revoked, or redeemed somewhere already."""

    serial = pw.BigIntegerField()
    kind = pw.CharField()  # revoked | redeemed
    published_in = pw.IntegerField(null=True, index=True)

    class Meta:
        primary_key = pw.CompositeKey("serial", "kind")


class VersionRow(_M):
    version = pw.IntegerField(primary_key=True)
    chain = pw.BlobField()
    issued_at = pw.IntegerField()
    signed = pw.BlobField()  # the signed delta


class Setting(_M):
    key = pw.CharField(primary_key=True)
    value = pw.TextField()


class SunKeyRow(_M):
    """A campaign's NTAG 424 DNA SDM key (AES-128), sent to terminals in the ledger."""

    campaign = pw.CharField(primary_key=True)
    key = pw.BlobField()
    published_in = pw.IntegerField(null=True)


MODELS = [KeyRow, CampaignRow, CouponRow, SerialMark, VersionRow, Setting, SunKeyRow]


def _db_serial(serial: int) -> int:
    """SQLite and PostgreSQL integers are signed 64-bit; store serials two's-complement."""
    return serial - 2**64 if serial >= 2**63 else serial


def _serial(stored: int) -> int:
    return stored + 2**64 if stored < 0 else stored


class CentralError(Exception):
    pass


@dataclass
class Issued:
    serial: int
    token: str | None
    code: str | None


class Central:
    def __init__(self, data: Path, now: Any = time.time) -> None:
        self.data = data
        self.now = now
        self.keys_dir = data / "keys"
        self.db = pw.SqliteDatabase(
            str(data / "central.db"), pragmas={"journal_mode": "wal", "synchronous": 1}
        )
        db_proxy.initialize(self.db)
        self.db.connect(reuse_if_open=True)
        self.db.create_tables(MODELS)

    # ---------------------------------------------------------------- keys

    @classmethod
    def init(cls, data: Path, now: Any = time.time) -> Central:
        if (data / "keys" / "root.key").exists():
            raise CentralError(f"{data} is already initialised")
        (data / "keys").mkdir(parents=True, exist_ok=True)
        os.chmod(data / "keys", 0o700)
        c = cls(data, now)
        root = cose.SigningKey.generate()
        c._save_key("root", root)
        anchor = TrustAnchor(root.public)
        (data / "trust-anchor.json").write_text(anchor.to_json())
        c.rotate_key(PURPOSE_LEDGER)
        c.rotate_key(PURPOSE_ISSUER)
        c._set("plain_salt", secrets.token_hex(16))
        c._set("policy", json.dumps(Policy().to_dict()))
        return c

    def _save_key(self, name: str, key: cose.SigningKey) -> None:
        path = self.keys_dir / f"{name}.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key.seed.hex())

    def _load_key(self, name: str) -> cose.SigningKey:
        try:
            return cose.SigningKey(bytes.fromhex((self.keys_dir / f"{name}.key").read_text()))
        except (OSError, ValueError) as exc:
            raise CentralError(f"key {name} unreadable: {exc}") from None

    @property
    def anchor(self) -> TrustAnchor:
        return TrustAnchor(self._load_key("root").public)

    def rotate_key(self, purpose: str) -> str:
        """Make a new ledger or issuer key, certified by the root; older issuer keys stay
        valid for the coupons they signed until revoked."""
        root = self._load_key("root")
        key = cose.SigningKey.generate()
        now = int(self.now())
        cert = make_cert(root, key, purpose, now - 60, now + KEY_YEARS)
        with self.db.atomic():
            KeyRow.update(active=False).where(KeyRow.purpose == purpose).execute()
            KeyRow.create(kid=key.kid.hex(), purpose=purpose, cert=cert, created=now)
            self._save_key(key.kid.hex(), key)
        return key.kid.hex()

    def revoke_key(self, kid: str) -> None:
        if KeyRow.update(revoked=True, active=False).where(KeyRow.kid == kid).execute() == 0:
            raise CentralError(f"no key {kid}")

    def _active(self, purpose: str) -> tuple[cose.SigningKey, bytes]:
        row = KeyRow.get_or_none((KeyRow.purpose == purpose) & KeyRow.active)
        if row is None:
            raise CentralError(f"no active {purpose} key")
        return self._load_key(row.kid), bytes(row.cert)

    def _get(self, key: str, default: str | None = None) -> str | None:
        row = Setting.get_or_none(Setting.key == key)
        return row.value if row else default

    def _set(self, key: str, value: str) -> None:
        Setting.insert(key=key, value=value).on_conflict_replace().execute()

    # ---------------------------------------------------------------- campaigns and coupons

    def add_campaign(self, doc: dict[str, Any]) -> Campaign:
        campaign = Campaign.from_dict(doc)
        CampaignRow.insert(
            id=campaign.id, doc=json.dumps(campaign.to_dict()), removed=False
        ).on_conflict(
            conflict_target=[CampaignRow.id], preserve=[CampaignRow.doc, CampaignRow.removed]
        ).execute()
        return campaign

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
        key, _ = self._active(PURPOSE_ISSUER)
        salt = bytes.fromhex(self._get("plain_salt") or "")
        now = int(self.now())
        nbf = max(now, campaign.valid_from or now)
        exp = campaign.valid_until or nbf + validity_s
        out: list[Issued] = []
        with self.db.atomic():
            for _ in range(count):
                serial = secrets.randbits(64)
                code = None
                if codes:
                    code = "-".join(
                        "".join(secrets.choice(CODE_ALPHABET) for _ in range(4)) for _ in range(3)
                    )
                CouponRow.create(
                    serial=_db_serial(serial),
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

    def mark(self, serials_: Iterable[int], kind: str) -> int:
        rows = [{"serial": _db_serial(s), "kind": kind} for s in serials_]
        with self.db.atomic():
            for chunk in range(0, len(rows), 500):
                SerialMark.insert_many(rows[chunk : chunk + 500]).on_conflict_ignore().execute()
        return len(rows)

    def set_sun_key(self, cid: str, key: bytes) -> None:
        """The SDM key a campaign's SUN tags were personalised with; the next published
        version carries it to the terminals (a new key replaces the old one there)."""
        self.campaign(cid)
        if len(key) != 16:
            raise CentralError("an SDM key is 16 bytes (AES-128)")
        SunKeyRow.insert(campaign=cid, key=key, published_in=None).on_conflict_replace().execute()

    def set_policy(self, policy: Policy) -> None:
        self._set("policy", json.dumps(policy.to_dict()))

    # ---------------------------------------------------------------- ledger

    def latest(self) -> VersionRow | None:
        row: VersionRow | None = VersionRow.select().order_by(VersionRow.version.desc()).first()
        return row

    def publish(self) -> int:
        """Make the next ledger version: a signed delta of everything that changed since the
        last one (possibly nothing: a heartbeat that tells terminals they are current)."""
        key, cert = self._active(PURPOSE_LEDGER)
        with self.db.atomic():
            last = self.latest()
            version = (last.version if last else 0) + 1
            prev = bytes(last.chain) if last else GENESIS
            body: dict[str, Any] = {
                "type": "delta",
                "version": version,
                "prev": prev,
                "issued_at": int(self.now()),
            }
            changed = [
                r for r in CampaignRow.select() if r.doc != r.published_doc and not r.removed
            ]
            body["campaigns"] = [json.loads(r.doc) for r in changed]
            body["removed_campaigns"] = [
                r.id
                for r in CampaignRow.select().where(
                    CampaignRow.removed & CampaignRow.published_doc.is_null(False)
                )
            ]
            for kind in ("revoked", "redeemed"):
                new = SerialMark.select(SerialMark.serial).where(
                    (SerialMark.kind == kind) & SerialMark.published_in.is_null()
                )
                body[kind] = serials.pack(_serial(r.serial) for r in new)
            body["issuer_certs"] = [
                bytes(r.cert)
                for r in KeyRow.select().where((KeyRow.purpose == PURPOSE_ISSUER) & ~KeyRow.revoked)
            ]
            body["revoked_kids"] = [
                bytes.fromhex(r.kid) for r in KeyRow.select().where(KeyRow.revoked)
            ]
            body["plain_salt"] = bytes.fromhex(self._get("plain_salt") or "")
            body["plain_codes"] = [
                [bytes(r.code_hash or b""), r.campaign, _serial(r.serial)]
                for r in CouponRow.select().where(
                    CouponRow.code_hash.is_null(False) & CouponRow.published_in.is_null()
                )
            ]
            body["policy"] = json.loads(self._get("policy") or "{}")
            body["sun_keys"] = {
                r.campaign: bytes(r.key)
                for r in SunKeyRow.select().where(SunKeyRow.published_in.is_null())
            }
            raw = ledger.sign_update(key, cert, body)
            payload = ledger.verify_update(self.anchor, raw).payload
            VersionRow.create(
                version=version,
                chain=ledger.chain_next(prev, payload),
                issued_at=body["issued_at"],
                signed=raw,
            )
            for r in changed:
                CampaignRow.update(published_doc=r.doc).where(CampaignRow.id == r.id).execute()
            CampaignRow.delete().where(CampaignRow.removed).execute()
            SerialMark.update(published_in=version).where(
                SerialMark.published_in.is_null()
            ).execute()
            CouponRow.update(published_in=version).where(
                CouponRow.code_hash.is_null(False) & CouponRow.published_in.is_null()
            ).execute()
            SunKeyRow.update(published_in=version).where(SunKeyRow.published_in.is_null()).execute()
        return version

    def deltas(self, since: int) -> list[bytes]:
        return [
            bytes(r.signed)
            for r in VersionRow.select()
            .where(VersionRow.version > since)
            .order_by(VersionRow.version)
        ]

    def state(self) -> LedgerState:
        """The ledger as of the latest version, by replaying the signed deltas."""
        state = LedgerState()
        anchor = self.anchor
        for raw in self.deltas(0):
            state, _ = ledger.apply(anchor, state, raw)
        return state

    def snapshot(self) -> bytes:
        """A signed snapshot of the latest version (same version and chain hash)."""
        key, cert = self._active(PURPOSE_LEDGER)
        body = ledger.snapshot_body(self.state())
        body["signed_at"] = int(self.now())
        return ledger.sign_update(key, cert, body)
