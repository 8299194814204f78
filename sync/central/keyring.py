"""The central's private keys, sealed in the database under the master key (keyvault.py):
made at init, rotated (with a root kept off the central when it is), revoked, imported once
from an older central's DATA/keys/ files, and checked for /healthz. A mixin of `Central`
(store.py), which owns the database and the transactions."""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import peewee as pw

from coupons import cose
from coupons.keys import PURPOSE_ISSUER, PURPOSE_LEDGER, CertError, TrustAnchor, make_cert
from coupons.ledger import Policy
from sync.central import keyvault
from sync.central.models import KeyRow

__all__ = ["PURPOSE_ROOT", "CentralError", "KeyRing"]

log = logging.getLogger(__name__)

KEY_YEARS = 5 * 365 * 24 * 3600
PURPOSE_ROOT = "root"  # KeyRow.purpose of the root key (tills know only ledger and issuer)
ANCHOR_SETTING = "trust_anchor"  # the trust anchor's JSON, as DATA/trust-anchor.json holds it
CHECK_SETTING = "master_key_check"  # keyvault.Vault.check_value of this database's master key
ROOT_OFFLINE = (
    "the root key is kept off this central (`redeem-central init --root-key-out`), and a new "
    "key needs its signature: run the command again with --root-key-file FILE, the file init "
    "wrote (docs/deploy-central.md, Keys and the master key)"
)


class CentralError(Exception):
    """What the central refuses, in words for an operator (every central module raises it;
    store.py re-exports it)."""


def _write_new_secret(path: Path, text: str) -> None:
    """A new file only its owner can read; never overwrites one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise CentralError(f"cannot create {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


class KeyRing:
    """The key methods of `Central` (store.py). Every private key is a KeyRow whose `sealed`
    column holds its seed sealed under the master key: any instance on the database can
    sign, and a rotation on one is in force on all at their next signature, which reads
    the active row. What `Central` provides is declared below for the type checker only."""

    if TYPE_CHECKING:
        data: Path
        keys_dir: Path
        now: Callable[[], float]
        db: pw.Database
        database_url: str | None
        vault: keyvault.Vault
        _anchor: TrustAnchor | None

        def writing(self) -> AbstractContextManager[None]: ...

        def exclusive(self) -> AbstractContextManager[None]: ...

        def _get(self, key: str, default: str | None = None) -> str | None: ...

        def _set(self, key: str, value: str) -> None: ...

    def _make_keys(self, root_key_out: Path | None) -> None:
        if KeyRow.select().exists() or self._get(ANCHOR_SETTING) is not None:
            if self.database_url is None:
                raise CentralError(f"{self.data} is already initialised")
            raise CentralError("the database already holds another central's keys")
        root = cose.SigningKey.generate()
        anchor = TrustAnchor(root.public)
        if root_key_out is not None:
            _write_new_secret(root_key_out, root.seed.hex() + "\n")
        try:
            self._store_new_keys(root, anchor, root_key_out is None)
        except BaseException:
            if root_key_out is not None:  # a root no certificate was made with: no use
                root_key_out.unlink(missing_ok=True)
            raise
        (self.data / "trust-anchor.json").write_text(anchor.to_json())
        self._anchor = anchor

    def _store_new_keys(self, root: cose.SigningKey, anchor: TrustAnchor, seal_root: bool) -> None:
        now = int(self.now())
        with self.writing():
            self._set(CHECK_SETTING, self.vault.check_value)
            self._set(ANCHOR_SETTING, anchor.to_json())
            # published_in 0: tills never receive the root in a delta, they hold its anchor
            KeyRow.create(
                kid=root.kid.hex(),
                purpose=PURPOSE_ROOT,
                cert=b"",
                created=now,
                published_in=0,
                sealed=self.vault.seal(root.kid.hex(), PURPOSE_ROOT, root.seed)
                if seal_root
                else None,
            )
            self._rotate(PURPOSE_LEDGER, root)
            self._rotate(PURPOSE_ISSUER, root)
            self._set("plain_salt", secrets.token_hex(16))
            self._set("policy", json.dumps(Policy().to_dict()))

    def initialised(self) -> bool:
        """Whether the database holds a central's keys (`redeem-central init` was run)."""
        return self._get(ANCHOR_SETTING) is not None or KeyRow.select().exists()

    def _check_master_key(self) -> None:
        """Refuse a master key that is not this database's before anything is signed."""
        stored = self._get(CHECK_SETTING)
        if stored is not None:
            if not self.vault.opens(stored):
                raise CentralError(keyvault.WRONG_KEY)
            return
        # No check value yet: nothing was sealed, unless it was lost; then a sealed key
        # that opens is the proof, and one that does not is a wrong master key.
        row = KeyRow.select().where(KeyRow.sealed.is_null(False)).first()
        if row is not None:
            try:
                self.vault.open(row.kid, row.purpose, bytes(row.sealed))
            except keyvault.VaultError:
                raise CentralError(keyvault.WRONG_KEY) from None
            self._set(CHECK_SETTING, self.vault.check_value)

    def _import_key_files(self) -> None:
        """Seal an older central's DATA/keys/ files into the database, once: the first
        instance that finds them (with the master key) does it, the files are read no more
        after that, and are left for the operator to shred."""
        if not self.keys_dir.is_dir():
            return
        if not self._keys_to_import():
            log.info(
                "%s is no longer read: its keys are sealed in the database; shred it once "
                "every instance runs this version (docs/deploy-central.md)",
                self.keys_dir,
            )
            return
        with self.exclusive():  # one importer among instances starting together
            self._check_master_key()
            pending = self._keys_to_import()
            for name, row in pending:
                key = self._read_key_file(name)
                if row is None:  # the root of an older central had no row
                    KeyRow.create(
                        kid=key.kid.hex(),
                        purpose=PURPOSE_ROOT,
                        cert=b"",
                        created=int(self.now()),
                        published_in=0,
                        sealed=self.vault.seal(key.kid.hex(), PURPOSE_ROOT, key.seed),
                    )
                    continue
                if key.kid.hex() != row.kid:
                    raise CentralError(f"{self.keys_dir / name}.key holds another key")
                sealed = self.vault.seal(row.kid, row.purpose, key.seed)
                KeyRow.update(sealed=sealed).where(KeyRow.kid == row.kid).execute()
            if self._get(ANCHOR_SETTING) is None and (self.keys_dir / "root.key").exists():
                root = self._read_key_file("root")
                self._set(ANCHOR_SETTING, TrustAnchor(root.public).to_json())
            if pending and self._get(CHECK_SETTING) is None:
                self._set(CHECK_SETTING, self.vault.check_value)
        if pending:
            log.warning(
                "sealed %d key(s) from %s into the database under the master key; the files "
                "are no longer read: shred them (docs/deploy-central.md)",
                len(pending),
                self.keys_dir,
            )

    def _keys_to_import(self) -> list[tuple[str, KeyRow | None]]:
        """(file name, its row) of each key file whose key the database lacks sealed; the
        row is None for a root key an older central kept only as a file."""
        out: list[tuple[str, KeyRow | None]] = []
        if (self.keys_dir / "root.key").exists():
            rows = KeyRow.select().where(KeyRow.purpose == PURPOSE_ROOT)
            if not any(r.sealed is not None for r in rows):
                root = self._read_key_file("root")
                row = KeyRow.get_or_none(KeyRow.kid == root.kid.hex())
                out.append(("root", row))
        for row in KeyRow.select().where(
            KeyRow.sealed.is_null() & (KeyRow.purpose != PURPOSE_ROOT)
        ):
            if (self.keys_dir / f"{row.kid}.key").exists():
                out.append((row.kid, row))
        return out

    def _read_key_file(self, name: str) -> cose.SigningKey:
        try:
            return cose.SigningKey(bytes.fromhex((self.keys_dir / f"{name}.key").read_text()))
        except (OSError, ValueError) as exc:
            raise CentralError(f"key {name} unreadable: {exc}") from None

    def _open_key(self, row: KeyRow) -> cose.SigningKey:
        if row.sealed is None:
            if row.purpose == PURPOSE_ROOT:
                raise CentralError(ROOT_OFFLINE)
            raise CentralError(
                f"key {row.kid} is not in the database yet: start an instance once with the "
                "older data directory that holds keys/ and the master key, to import it"
            )
        try:
            seed = self.vault.open(row.kid, row.purpose, bytes(row.sealed))
        except keyvault.VaultError as exc:
            raise CentralError(str(exc)) from None
        key = cose.SigningKey(seed)
        if key.kid.hex() != row.kid:  # the associated data should make this impossible
            raise CentralError(f"key {row.kid}: its sealed seed is another key")
        return key

    def _key(self, kid: str) -> cose.SigningKey:
        """A private key by its id, opened from the database."""
        row = KeyRow.get_or_none(KeyRow.kid == kid)
        if row is None:
            raise CentralError(f"no key {kid}")
        return self._open_key(row)

    @property
    def anchor(self) -> TrustAnchor:
        """The root public key, from the database (so an instance needs no file); it never
        changes for a database, so it is read once."""
        if self._anchor is None:
            text = self._get(ANCHOR_SETTING)
            if text is None:
                raise CentralError("the database holds no trust anchor (run `redeem-central init`)")
            try:
                self._anchor = TrustAnchor(bytes.fromhex(json.loads(text)["root_public_key"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise CentralError(
                    f"the trust anchor in the database is unreadable: {exc}"
                ) from None
        return self._anchor

    def _root(self, given: cose.SigningKey | None) -> cose.SigningKey:
        """The root key: the one given (from a file kept off the central), checked against
        the trust anchor, else the one sealed in the database."""
        anchor = self.anchor
        if given is not None:
            if given.public != anchor.public_key:
                raise CentralError(
                    "that root key is not this central's: the trust anchor's fingerprint is "
                    f"{anchor.fingerprint}"
                )
            return given
        row = KeyRow.get_or_none(KeyRow.kid == anchor.kid.hex())
        if row is None:
            raise CentralError(ROOT_OFFLINE)
        return self._open_key(row)

    def rotate_key(self, purpose: str, root_key: cose.SigningKey | None = None) -> str:
        """Make a new ledger or issuer key, certified by the root (`root_key` when the root
        is kept off the central); older issuer keys stay valid for the coupons they signed
        until revoked."""
        if purpose not in (PURPOSE_LEDGER, PURPOSE_ISSUER):
            raise CentralError(f"only ledger and issuer keys are rotated, not {purpose!r}")
        return self._rotate(purpose, self._root(root_key))

    def _rotate(self, purpose: str, root: cose.SigningKey) -> str:
        key = cose.SigningKey.generate()
        kid = key.kid.hex()
        now = int(self.now())
        cert = make_cert(root, key, purpose, now - 60, now + KEY_YEARS)
        sealed = self.vault.seal(kid, purpose, key.seed)
        with self.db.atomic():  # the new key, its certificate and its seed at once
            KeyRow.update(active=False).where(KeyRow.purpose == purpose).execute()
            KeyRow.create(kid=kid, purpose=purpose, cert=cert, created=now, sealed=sealed)
        return kid

    def revoke_key(self, kid: str) -> None:
        """Revoke an issuer key. The root and ledger keys are refused: revoking either would
        leave the central unable to publish a ledger any till accepts."""
        kid = kid.strip().lower()
        if kid == self._root_kid():
            raise CentralError(
                f"key {kid} is the root key (the trust anchor every till holds) and cannot be "
                "revoked; only issuer keys can. If it was stolen, set up a new central and "
                "enroll every till again (docs/security-model.md)"
            )
        row = KeyRow.get_or_none(KeyRow.kid == kid)
        if row is None:
            raise CentralError(f"no key {kid}")
        if row.purpose != PURPOSE_ISSUER:
            raise CentralError(
                f"key {kid} is a {row.purpose} key and cannot be revoked; only issuer keys "
                "can. To replace the ledger key, run `redeem-central rotate-key --purpose "
                "ledger`"
            )
        KeyRow.update(revoked=True, active=False, published_in=None).where(
            KeyRow.kid == kid
        ).execute()

    def _root_kid(self) -> str | None:
        try:
            return self.anchor.kid.hex()
        except CentralError:
            return None

    def health_problems(self) -> list[str]:
        """Why this central cannot sign or publish right now, in words for an operator
        (empty when it can): the trust anchor, the root key when it is kept here, and the
        active ledger and issuer keys must open, match their certificates and be valid
        now. A root key kept off the central is no problem: it signs only at rotation."""
        problems: list[str] = []
        try:
            anchor = self.anchor
            row = KeyRow.get_or_none(KeyRow.kid == anchor.kid.hex())
            if row is not None and row.sealed is not None:
                if self._open_key(row).public != anchor.public_key:
                    raise CentralError("the root key does not match the trust anchor")
        except CentralError as exc:
            return [f"cannot certify keys: {exc}"]
        now = self.now()
        for purpose, what in ((PURPOSE_LEDGER, "publish"), (PURPOSE_ISSUER, "issue coupons")):
            try:
                key, raw = self._active(purpose)
                cert = anchor.check_cert(raw)
            except (CentralError, CertError) as exc:
                problems.append(f"cannot {what}: {exc}")
                continue
            if cert.public_key != key.public:
                problems.append(
                    f"cannot {what}: key {cert.kid.hex()} does not match its certificate"
                )
            elif not cert.valid_at(now):
                problems.append(
                    f"cannot {what}: the {purpose} key's certificate is not valid now "
                    f"(run `redeem-central rotate-key --purpose {purpose}`)"
                )
        return problems

    def active_key(self, purpose: str) -> tuple[cose.SigningKey, bytes]:
        """The active key of a purpose and its certificate (the publisher signs with it)."""
        return self._active(purpose)

    def _active(self, purpose: str) -> tuple[cose.SigningKey, bytes]:
        row = KeyRow.get_or_none((KeyRow.purpose == purpose) & KeyRow.active)
        if row is None:
            raise CentralError(f"no active {purpose} key")
        return self._open_key(row), bytes(row.cert)
