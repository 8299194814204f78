"""Keys sealed in the database under the master key (issue 13, docs/central-scale.md
section 1): an instance signs with the key another one rotated in, with no key file
anywhere; an instance without the master key, or with another one, refuses to start; an
older central's keys/ directory is imported once; a root key kept off the central is
needed at rotation only; a sealed key moved to another row does not open."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from coupons import cose, ledger, tokens
from coupons.clock import SystemClock
from coupons.keys import PURPOSE_ISSUER, PURPOSE_LEDGER
from sync import protocol
from sync.central import keyvault
from sync.central.keyring import PURPOSE_ROOT
from sync.central.models import KeyRow, Setting
from sync.central.store import Central, CentralError
from sync.central.terminals import new_admin_token
from tests import master_key, postgres
from tests.central_server import BACKENDS, ROOT, database_for, serve_process
from tests.conftest import World
from tests.master_key import KEY as MASTER_KEY

WRONG_KEY = "the master key does not open this database's keys"
CAMPAIGN = {"id": "K1", "kind": "fixed", "currency": "CNY", "amount_minor": 100}


def cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`redeem-central` with no REDEEM_* setting and no systemd credential but `env`."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("REDEEM_") and k != "CREDENTIALS_DIRECTORY"
    }
    proc = subprocess.run(
        [sys.executable, "-m", "sync.central.cli", *map(str, args)],
        env={**base, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def signer(raw: bytes) -> str:
    """The kid that signed a ledger update."""
    _, signed = cose.loads_strict(raw, "ledger update")
    return cose.parse_sign1(signed).kid.hex()


# ---------------------------------------------------------------- two instances


def _wait_until_published_is_quiet(central: Central, quiet_s: float = 1.0) -> None:
    """Until a ledger version exists and none newer came for `quiet_s` (five publisher
    ticks of the test instance)."""
    deadline = time.monotonic() + 20
    seen, since = None, time.monotonic()
    while True:
        latest = central.latest()
        version = latest.version if latest is not None else None
        if version != seen:
            seen, since = version, time.monotonic()
        elif version is not None and time.monotonic() - since >= quiet_s:
            return
        assert time.monotonic() < deadline, "the publisher never settled"
        time.sleep(0.05)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_rotation_on_one_instance_is_in_force_on_another_at_once(
    backend: str, tmp_path: Path
) -> None:
    database = database_for(backend, "keys_pair")
    a = Central.init(tmp_path / "central", SystemClock().now, database, master_key=MASTER_KEY)
    # On PostgreSQL instance B has an empty data directory: the database and the master key
    # are all it needs. On SQLite the database is the file in the data directory.
    b_data = tmp_path / "instance-b" if database else tmp_path / "central"
    b_data.mkdir(exist_ok=True)
    proc, url = serve_process(b_data, database)  # running before the rotation
    try:
        a.add_campaign(CAMPAIGN)
        # B's own publisher (every 0.2 s) takes the campaign up with the key it has; let
        # that version land first, or on a busy machine it lands after the rotation below
        # and is taken for the one the rotation asked for.
        _wait_until_published_is_quiet(a)
        admin = {"Authorization": f"Bearer {new_admin_token(a, 'tests')}"}
        new_ledger = a.rotate_key(PURPOSE_LEDGER)
        new_issuer = a.rotate_key(PURPOSE_ISSUER)

        before = a.latest()
        r = requests.post(url + protocol.ADMIN_PREFIX + "/publish", headers=admin, timeout=30)
        assert r.status_code == 200 and r.json()["woken"], r.text  # B's publisher leads
        deadline = time.monotonic() + 20
        while (latest := a.latest()) is None or (
            before is not None and latest.version == before.version
        ):
            assert time.monotonic() < deadline, "instance B published nothing"
            time.sleep(0.05)
        version = latest.version
        (raw,) = a.deltas(version - 1, version)
        assert signer(raw) == new_ledger  # B signed with the key A made a moment ago
        assert ledger.verify_update(a.anchor, raw).body["version"] == version

        out = tmp_path / "coupons"
        extra = ["--database", database] if database else []
        issued = cli(
            "issue", "--data", b_data, *extra, "--campaign", "K1", "--out", out, "--no-qr",
            env=master_key.env(tmp_path),
        )  # fmt: skip
        assert issued.returncode == 0, issued.stderr
        token = (out / "tokens.txt").read_text().splitlines()[0]
        assert tokens.parse(token).message.kid.hex() == new_issuer
        assert not list(tmp_path.rglob("*.key")) and not (tmp_path / "central" / "keys").exists()
        assert requests.get(url + "/healthz", timeout=30).status_code == 200
    finally:
        proc.terminate()
        proc.wait(15)
        a.close()
        if database:
            postgres.drop_database(database)


# ---------------------------------------------------------------- the master key


def test_an_instance_without_a_master_key_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Central.init(tmp_path / "central", master_key=MASTER_KEY).close()
    r = cli("serve", "--data", tmp_path / "central", "--port", str(postgres.free_port()))
    assert r.returncode == 2
    assert (
        "no master key: looked for --master-key-file PATH, the environment variable "
        "REDEEM_CENTRAL_MASTER_KEY_FILE (not set) and the systemd credential master-key "
        "(CREDENTIALS_DIRECTORY is not set)"
    ) in r.stderr
    assert "redeem-central init --master-key-file PATH" in r.stderr
    monkeypatch.delenv(keyvault.ENV_FILE, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(CentralError, match="^no master key: "):
        Central(tmp_path / "central")


def test_the_systemd_credential_is_the_last_place_looked(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    master_key.key_file(creds)
    named = tmp_path / "named"
    named.write_text("ab" * 32)
    found = keyvault.locate(None, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert found.path == creds / "master-key" and not found.creatable
    both = {"CREDENTIALS_DIRECTORY": str(creds), keyvault.ENV_FILE: str(named)}
    assert keyvault.locate(None, both).path == named
    assert keyvault.locate(str(tmp_path / "flag"), both).path == tmp_path / "flag"
    assert keyvault.read_master_key(found) == MASTER_KEY
    with pytest.raises(keyvault.VaultError, match="no file master-key in"):
        keyvault.locate(None, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    named.write_text("not hex")
    with pytest.raises(keyvault.VaultError, match="must hold 64 hex digits"):
        keyvault.load_master_key(str(named))
    missing = tmp_path / "missing"  # a named file that is missing is an error, no fallback
    with pytest.raises(keyvault.VaultError, match=f"{missing} .*unreadable"):
        keyvault.load_master_key(None, {**both, keyvault.ENV_FILE: str(missing)})

    data = tmp_path / "central"
    Central.init(data, master_key=MASTER_KEY).close()
    r = cli("publish", "--data", data, "--out", tmp_path / "l.cbor",
            env={"CREDENTIALS_DIRECTORY": str(creds)})  # fmt: skip
    assert r.returncode == 0, r.stderr


def test_a_wrong_master_key_is_refused_before_anything_is_signed(tmp_path: Path) -> None:
    data = tmp_path / "central"
    c = Central.init(data, master_key=MASTER_KEY)
    c.add_campaign(CAMPAIGN)
    published = c.publish()
    c.close()
    with pytest.raises(CentralError) as err:
        Central(data, master_key=bytes(32))
    assert str(err.value).startswith(WRONG_KEY)
    wrong = tmp_path / "wrong-key"
    wrong.write_text("00" * 32)
    for args in (
        ["publish", "--out", tmp_path / "l.cbor"],
        ["issue", "--campaign", "K1", "--out", tmp_path / "coupons"],
        ["rotate-key", "--purpose", "ledger"],
    ):
        r = cli(*args, "--data", data, "--master-key-file", wrong)
        assert r.returncode == 2 and WRONG_KEY in r.stderr, r.stderr
    assert not (tmp_path / "l.cbor").exists()
    assert not (tmp_path / "coupons" / "tokens.txt").exists()
    c = Central(data, master_key=MASTER_KEY)
    try:
        assert c.latest() is not None and c.latest().version == published  # type: ignore[union-attr]
        assert KeyRow.select().where(KeyRow.purpose == PURPOSE_LEDGER).count() == 1
    finally:
        c.close()


def test_init_makes_the_master_key_file_and_takes_it_back_when_init_fails(tmp_path: Path) -> None:
    data, made = tmp_path / "central", tmp_path / "etc" / "master-key"
    made.parent.mkdir()
    r = cli("init", "--data", data, "--master-key-file", made, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["master_key_created"] == str(made)
    assert stat.S_IMODE(made.stat().st_mode) == 0o600
    key = keyvault.load_master_key(str(made))
    c = Central(data, master_key=key)
    try:
        assert c.health_problems() == []
        assert (
            Setting.get(Setting.key == "master_key_check").value == keyvault.Vault(key).check_value
        )
        assert all(r.sealed is not None for r in KeyRow.select())
    finally:
        c.close()
    again = tmp_path / "etc" / "another"
    r = cli("init", "--data", data, "--master-key-file", again)
    assert r.returncode == 2 and not again.exists()  # no stray key for a refused init
    r = cli("init", "--data", data, "--master-key-file", made)  # the same key: initialised
    assert r.returncode == 2 and "already initialised" in r.stderr


# ---------------------------------------------------------------- an older data directory


def _older_central(data: Path, database: str | None = None) -> tuple[str, str]:
    """A central as an older release left it: keys as files in DATA/keys/, schema 2 (no
    KeyRow.sealed), no root row, no trust anchor or check value in the database. Returns
    the active ledger and issuer key ids."""
    c = Central.init(data, database=database, master_key=MASTER_KEY)
    c.add_campaign(CAMPAIGN)
    c.publish()
    keys = data / "keys"
    keys.mkdir(mode=0o700)
    for row in KeyRow.select():
        name = "root" if row.purpose == PURPOSE_ROOT else row.kid
        (keys / f"{name}.key").write_text(c._key(row.kid).seed.hex())
    kids = (c._active(PURPOSE_LEDGER)[0].kid.hex(), c._active(PURPOSE_ISSUER)[0].kid.hex())
    with c.db.atomic():
        c.db.execute_sql("DELETE FROM keyrow WHERE purpose = 'root'")
        c.db.execute_sql("ALTER TABLE keyrow DROP COLUMN sealed")
        c.db.execute_sql("DELETE FROM setting WHERE key IN ('trust_anchor', 'master_key_check')")
        c.db.execute_sql("UPDATE setting SET value = '2' WHERE key = 'schema'")
    c.close()
    return kids


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_older_keys_directory_is_imported_once(
    backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = database_for(backend, "keys_older")
    try:
        _import_once(tmp_path / "central", database, caplog)
    finally:
        if database:
            postgres.drop_database(database)


def _import_once(data: Path, database: str | None, caplog: pytest.LogCaptureFixture) -> None:
    ledger_kid, issuer_kid = _older_central(data, database)
    anchor_file = json.loads((data / "trust-anchor.json").read_text())
    with caplog.at_level(logging.INFO, logger="sync.central.keyring"):
        c = Central(data, database=database, master_key=MASTER_KEY)
    try:
        assert f"sealed 3 key(s) from {data / 'keys'} into the database" in caplog.text
        assert Setting.get(Setting.key == "schema").value == "4"
        assert all(r.sealed is not None for r in KeyRow.select())
        assert c.anchor.public_key.hex() == anchor_file["root_public_key"]
        assert c.health_problems() == []
    finally:
        c.close()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sync.central.keyring"):
        c = Central(
            data, database=database, master_key=MASTER_KEY
        )  # the next start imports nothing
    c.close()
    assert "key(s) from" not in caplog.text and "is no longer read" in caplog.text

    for path in (data / "keys").iterdir():  # the operator shreds the directory
        path.unlink()
    (data / "keys").rmdir()
    c = Central(data, database=database, master_key=MASTER_KEY)
    try:
        version = c.publish()
        assert signer(c.deltas(version - 1)[0]) == ledger_kid
        (coupon,) = c.issue("K1", 1)
        assert tokens.parse(coupon.token or "").message.kid.hex() == issuer_kid
        assert c.rotate_key(PURPOSE_LEDGER) != ledger_kid  # the root came along
    finally:
        c.close()
    with pytest.raises(CentralError, match=WRONG_KEY):
        Central(data, database=database, master_key=bytes(32))


def test_an_older_directory_with_the_wrong_master_key_imports_nothing(tmp_path: Path) -> None:
    data = tmp_path / "central"
    _older_central(data)
    # No check value yet and nothing sealed: the first key given seals the files; a
    # second instance with another key is then refused.
    Central(data, master_key=MASTER_KEY).close()
    with pytest.raises(CentralError, match=WRONG_KEY):
        Central(data, master_key=bytes(32))


# ---------------------------------------------------------------- the root kept off the central


def test_a_root_key_kept_off_the_central_is_needed_for_rotation_only(tmp_path: Path) -> None:
    data, root_file = tmp_path / "central", tmp_path / "safe" / "root.key"
    root_file.parent.mkdir()
    env = master_key.env(tmp_path)
    r = cli("init", "--data", data, "--root-key-out", root_file, "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["root_key_out"] == str(root_file)
    assert stat.S_IMODE(root_file.stat().st_mode) == 0o600
    c = Central(data, master_key=MASTER_KEY)
    try:
        root = cose.SigningKey(bytes.fromhex(root_file.read_text().strip()))
        assert c.anchor.public_key == root.public
        assert KeyRow.get(KeyRow.purpose == PURPOSE_ROOT).sealed is None  # not in the database
        assert c.health_problems() == []  # it signs and publishes without the root
        c.add_campaign(CAMPAIGN)
        assert c.publish() == 1 and c.issue("K1", 1)
        old_ledger = c._active(PURPOSE_LEDGER)[0].kid.hex()
    finally:
        c.close()

    refused = cli("rotate-key", "--purpose", "ledger", "--data", data, env=env)
    assert refused.returncode == 2
    assert (
        "the root key is kept off this central (`redeem-central init --root-key-out`), and a "
        "new key needs its signature: run the command again with --root-key-file FILE"
    ) in refused.stderr
    other = tmp_path / "other.key"
    other.write_text(cose.SigningKey.generate().seed.hex())
    wrong = cli("rotate-key", "--purpose", "ledger", "--data", data, "--root-key-file", other,
                env=env)  # fmt: skip
    assert wrong.returncode == 2 and "that root key is not this central's" in wrong.stderr
    done = cli("rotate-key", "--purpose", "ledger", "--data", data, "--root-key-file", root_file,
               "--json", env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    new_ledger = json.loads(done.stdout)["kid"]
    c = Central(data, master_key=MASTER_KEY)
    try:
        assert new_ledger != old_ledger
        key, cert = c._active(PURPOSE_LEDGER)
        assert key.kid.hex() == new_ledger and c.anchor.check_cert(cert).kid.hex() == new_ledger
        assert signer(c.deltas(c.publish() - 1)[0]) == new_ledger
    finally:
        c.close()


# ---------------------------------------------------------------- sealed blobs


def test_a_sealed_key_moved_to_another_row_does_not_open(world: World) -> None:
    c = world.central
    ledger_row = KeyRow.get(KeyRow.active & (KeyRow.purpose == PURPOSE_LEDGER))
    issuer_row = KeyRow.get(KeyRow.active & (KeyRow.purpose == PURPOSE_ISSUER))
    KeyRow.update(sealed=issuer_row.sealed).where(KeyRow.kid == ledger_row.kid).execute()
    with pytest.raises(CentralError, match=f"key {ledger_row.kid} does not open"):
        c.publish()
    assert c.latest() is None
    assert any(
        p.startswith("cannot publish: ") and "does not open" in p for p in c.health_problems()
    )
    KeyRow.update(sealed=ledger_row.sealed).where(KeyRow.kid == ledger_row.kid).execute()
    assert c.publish() == 1


def test_the_associated_data_binds_a_seal_to_its_key_id_and_purpose() -> None:
    vault = keyvault.Vault(MASTER_KEY)
    seed = os.urandom(32)
    sealed = vault.seal("ab" * 8, PURPOSE_ISSUER, seed)
    assert vault.open("ab" * 8, PURPOSE_ISSUER, sealed) == seed
    assert sealed != vault.seal("ab" * 8, PURPOSE_ISSUER, seed)  # a fresh nonce each time
    for kid, purpose in (("cd" * 8, PURPOSE_ISSUER), ("ab" * 8, PURPOSE_LEDGER)):
        with pytest.raises(keyvault.VaultError, match="does not open"):
            vault.open(kid, purpose, sealed)
    with pytest.raises(keyvault.VaultError, match="does not open"):
        keyvault.Vault(bytes(32)).open("ab" * 8, PURPOSE_ISSUER, sealed)
    with pytest.raises(keyvault.VaultError, match="damaged"):
        vault.open("ab" * 8, PURPOSE_ISSUER, sealed[:5])
    assert seed not in sealed
