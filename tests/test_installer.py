"""install/install-pi.sh: syntax, what --dry-run would do on a Pi, and a real run that lays
the files out under --prefix (no apt, no users, no systemctl, no network)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "install" / "install-pi.sh"
SCRIPTS = [SCRIPT, REPO / "install" / "redeem-kiosk-browser"]
CODE = "7KQ4-M2XP-9HDW-T3ZA"


def install(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDEEM_")}
    result = subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def commands(output: str) -> list[str]:
    return [line[2:] for line in output.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_shellcheck_clean(script: Path) -> None:
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_config_template_passes_config_check() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "terminal.cli", "config", "check", "install/terminal.toml.example"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_dry_run_shows_every_step_of_an_install() -> None:
    out = install(
        "--dry-run", "--kiosk", "--central", "https://central.example", "--enroll-code", CODE
    ).stdout
    cmds = commands(out)
    expected = [
        "apt-get update",
        "apt-get install -y -q python3-venv libzbar0",
        "apt-get install -y -q chromium",
        "useradd --system --user-group --home-dir /var/lib/edge-redeem",
        "python3 -m venv --clear /opt/edge-redeem/venv",
        f"/opt/edge-redeem/venv/bin/pip install --quiet {REPO}",
        "install -o redeem -g redeem -d -m 0700 /var/lib/edge-redeem",
        "install -m 0644 " + str(REPO / "systemd/redeem.service"),
        "/etc/systemd/user/redeem-kiosk.service",
        "systemctl daemon-reload",
        "runuser -u redeem -- /opt/edge-redeem/venv/bin/redeem enroll",
        # The key enrollment wrote moves out of the data directory, for LoadCredential=.
        "install -o root -g root -d -m 0700 /etc/credstore/edge-redeem",
        "install -o root -g root -m 0600 /var/lib/edge-redeem/device.key "
        "/etc/credstore/edge-redeem/device-key.new",
        "mv -f /etc/credstore/edge-redeem/device-key.new /etc/credstore/edge-redeem/device-key",
        "rm -f /var/lib/edge-redeem/device.key",
        "systemctl enable redeem.service",
        "systemctl --global enable redeem-kiosk.service",
        "systemctl restart redeem.service",
    ]
    at = 0
    for want in expected:  # each step present, in this order
        found = [i for i, c in enumerate(cmds) if want in c and i >= at]
        assert found, f"no step {want!r} after step {at}:\n" + "\n".join(cmds)
        at = found[0]
    assert any(c.startswith("usermod --append --groups") for c in cmds)
    assert CODE not in out  # the one-time code is never printed


def test_no_start_enables_without_starting() -> None:
    cmds = commands(install("--dry-run", "--no-start").stdout)
    assert "systemctl enable redeem.service" in cmds
    assert not any("restart" in c or "start " in c for c in cmds)
    # Not enrolled: no key to move yet (the unit starts without one).
    assert not any("credstore" in c for c in cmds)


def test_plain_uninstall_keeps_config_and_journal() -> None:
    cmds = commands(install("--dry-run", "--uninstall").stdout)
    assert "rm -rf /opt/edge-redeem" in cmds
    assert any(c.startswith("systemctl disable --now redeem.service") for c in cmds)
    removed = " ".join(c for c in cmds if c.startswith("rm "))
    assert "/var/lib/edge-redeem" not in removed and "/etc/edge-redeem " not in removed + " "
    assert "credstore" not in removed and "redeem.service.d" not in removed
    assert not any(c.startswith("userdel") for c in cmds)


def test_purge_removes_config_data_key_drop_ins_and_user() -> None:
    cmds = commands(install("--dry-run", "--uninstall", "--purge").stdout)
    assert (
        "rm -rf /etc/edge-redeem /var/lib/edge-redeem /etc/credstore/edge-redeem "
        "/etc/systemd/system/redeem.service.d"
    ) in cmds
    assert "userdel redeem" in cmds


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--enroll-code", CODE], "--enroll-code needs --central"),
        (["--central", "http://central.example"], "https://"),
        (["--purge"], "--purge goes with --uninstall"),
        (["--bogus"], "unknown option: --bogus"),
        (["--prefix", "relative"], "absolute"),
    ],
)
def test_bad_options_are_refused(args: list[str], words: str) -> None:
    result = install("--dry-run", *args, check=False)
    assert result.returncode == 2 and words in result.stderr


def test_real_run_under_prefix_lays_out_the_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    out = install("--prefix", str(root), "--no-pip", "--kiosk", "--central", "https://c.example")
    assert not any(c.startswith(("systemctl", "apt-get", "useradd")) for c in commands(out.stdout))

    config = root / "etc/edge-redeem/terminal.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert 'central = "https://c.example"' in config.read_text().splitlines()
    check = subprocess.run(
        [sys.executable, "-m", "terminal.cli", "config", "check", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert stat.S_IMODE((root / "var/lib/edge-redeem").stat().st_mode) == 0o700
    for unit in ("system/redeem.service", "system/redeem-camera.service"):
        assert (root / "etc/systemd" / unit).read_bytes() == (
            REPO / "systemd" / unit[7:]
        ).read_bytes()
    assert (root / "etc/systemd/user/redeem-kiosk.service").exists()
    assert os.access(root / "opt/edge-redeem/bin/redeem-kiosk-browser", os.X_OK)
    assert (root / "opt/edge-redeem/venv/bin/python3").exists()
    assert (root / "opt/edge-redeem/docs/daemon.md").exists()

    # A second run never overwrites a config the operator edited.
    config.write_text(config.read_text() + "# edited on site\n")
    again = install("--prefix", str(root), "--no-pip")
    assert "keeping the existing" in again.stdout
    assert config.read_text().endswith("# edited on site\n")

    # Uninstall: software and units go, config, journal, device key and the operator's
    # drop-ins stay.
    (root / "var/lib/edge-redeem/journal.db").write_bytes(b"evidence")
    key = root / "etc/credstore/edge-redeem/device-key"
    key.parent.mkdir(parents=True)
    key.write_text("00" * 32 + "\n")
    override = root / "etc/systemd/system/redeem.service.d/override.conf"
    override.parent.mkdir()
    override.write_text("[Service]\nRestartSec=5s\n")
    install("--prefix", str(root), "--uninstall")
    assert not (root / "opt/edge-redeem").exists()
    assert not (root / "etc/systemd/system/redeem.service").exists()
    assert config.exists() and (root / "var/lib/edge-redeem/journal.db").exists()
    assert key.exists() and override.exists()

    install("--prefix", str(root), "--uninstall", "--purge")
    assert not (root / "etc/edge-redeem").exists() and not (root / "var/lib/edge-redeem").exists()
    assert not (root / "etc/credstore/edge-redeem").exists()
    assert not (root / "etc/systemd/system/redeem.service.d").exists()
