"""The device key's way from `redeem enroll` to the daemon: enrollment writes
<data>/device.key, install/install-pi.sh moves it to the credstore, systemd hands it over as
$CREDENTIALS_DIRECTORY/device-key (systemd/redeem.service), and sync/device.py reads it;
a till whose key is not in the credstore (yet) still signs with the one in its data
directory, and a re-enrollment's new key replaces the old credential."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from sync.device import CREDENTIAL, DeviceKeyError, ensure_device_key, read_device_key

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "install" / "install-pi.sh"


def installer(root: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDEEM_")}
    result = subprocess.run(
        ["bash", str(SCRIPT), "--prefix", str(root), "--no-pip"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def unit_fallback() -> bytes:
    """The SetCredential= value redeem.service gives when the credstore file is missing,
    C-unescaped as systemd does."""
    for line in (REPO / "systemd" / "redeem.service").read_text().splitlines():
        if line.startswith(f"SetCredential={CREDENTIAL}:"):
            value = line.partition(":")[2]
            return value.encode().decode("unicode_escape").encode("latin-1")
    raise AssertionError("redeem.service has no SetCredential= fallback")


def load_credential(source: Path, creds: Path) -> None:
    """What systemd does at start: LoadCredential= copies the file; when it is missing,
    the SetCredential= of the same name stands in."""
    shutil.rmtree(creds, ignore_errors=True)
    creds.mkdir()
    target = creds / CREDENTIAL
    if source.exists():
        shutil.copyfile(source, target)
    else:
        target.write_bytes(unit_fallback())


@pytest.fixture
def till(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    return tmp_path / "root"


def test_the_installer_moves_the_enrolled_key_into_the_credential_the_daemon_reads(
    till: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = till / "var/lib/edge-redeem"
    key, path, created = ensure_device_key(data)  # what `redeem enroll` writes
    assert created and path == data / "device.key"

    installer(till)
    store = till / "etc/credstore/edge-redeem"
    moved = store / CREDENTIAL
    assert not (data / "device.key").exists()  # off the data partition's copies
    assert stat.S_IMODE(moved.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    assert not list(store.glob("*.new"))

    creds = tmp_path / "creds"
    load_credential(moved, creds)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_device_key(data).public == key.public
    # A second installer run (an upgrade) leaves the key where it is.
    installer(till)
    assert read_device_key(data).public == key.public and moved.exists()


def test_a_till_whose_key_is_not_in_the_credstore_signs_with_its_data_key(
    till: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Enrolled by hand after the installer ran: the unit's fallback credential is no key."""
    data = till / "var/lib/edge-redeem"
    key, _, _ = ensure_device_key(data)
    creds = tmp_path / "creds"
    load_credential(till / "etc/credstore/edge-redeem" / CREDENTIAL, creds)
    assert (creds / CREDENTIAL).read_bytes() == b"\n"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_device_key(data).public == key.public
    again, where, created = ensure_device_key(data)
    assert (again.public, where, created) == (key.public, data / "device.key", False)


def test_re_enrollment_replaces_the_old_credential(
    till: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data = till / "var/lib/edge-redeem"
    old, _, _ = ensure_device_key(data)
    installer(till)
    moved = till / "etc/credstore/edge-redeem" / CREDENTIAL

    # The till is enrolled again (a fresh data directory, a new key), by hand.
    shutil.rmtree(data)
    new, _, created = ensure_device_key(data)
    assert created and new.public != old.public
    creds = tmp_path / "creds"
    load_credential(moved, creds)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with caplog.at_level(logging.WARNING, logger="sync.device"):
        assert read_device_key(data).public == old.public  # the stale credential wins...
    assert "enrolled again" in caplog.text  # ...and the log says what to do

    installer(till)  # what the warning says: the new key replaces the old credential
    load_credential(moved, creds)
    assert read_device_key(data).public == new.public
    assert not (data / "device.key").exists()


def test_no_key_anywhere_names_both_places(till: Path, tmp_path: Path) -> None:
    with pytest.raises(DeviceKeyError) as err:
        read_device_key(till / "var/lib/edge-redeem")
    assert "redeem enroll" in str(err.value)
    assert "/etc/credstore/edge-redeem/device-key" in str(err.value)
