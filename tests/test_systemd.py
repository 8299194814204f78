"""The systemd units in systemd/: `systemd-analyze verify` accepts each one without a word,
and they hold the settings an operator and the daemon rely on."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sync.device import CREDENTIAL

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"
SYSTEM_UNITS = [
    "redeem.service",
    "redeem-central.service",
    "redeem-central@.service",  # one instance per port, behind nginx
    "redeem-camera.service",
]
USER_UNITS = ["redeem-kiosk.service"]
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (not a systemd machine)"
)

# The shipped units name the paths of a Pi install; verify checks that executables exist,
# so point them at this checkout for the test.
REWRITES = {
    "/opt/edge-redeem/venv/bin/": f"{REPO}/.venv/bin/",
    "/opt/edge-redeem/bin/redeem-kiosk-browser": f"{REPO}/install/redeem-kiosk-browser",
    "/usr/bin/rpicam-vid": shutil.which("true") or "/bin/true",
}


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections to (key, value) in order; keys repeat (DeviceAllow=, SystemCallFilter=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: str, section: str, key: str) -> list[str]:
    return [v for k, v in parse_unit(UNITS / unit)[section] if k == key]


def one(unit: str, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"{unit}: [{section}] {key}= set {len(found)} times"
    return found[0]


def seconds(span: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|min)?", span)
    assert m, span
    return float(m.group(1)) * {"ms": 0.001, "s": 1.0, "min": 60.0, None: 1.0}[m.group(2)]


def verify(
    tmp_path: Path, unit: str, user: bool, text: str | None = None
) -> subprocess.CompletedProcess[str]:
    text = (UNITS / unit).read_text() if text is None else text
    for old, new in REWRITES.items():
        text = text.replace(old, new)
    copy = tmp_path / unit  # verify names the unit after the file
    copy.write_text(text)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_PAGER": "", "LC_ALL": "C"}
    cmd = [str(ANALYZE), "verify", "--man=no", *(["--user"] if user else []), str(copy)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)


@needs_analyze
@pytest.mark.parametrize(
    ("unit", "user"), [(u, False) for u in SYSTEM_UNITS] + [(u, True) for u in USER_UNITS]
)
def test_unit_verifies_without_a_word(tmp_path: Path, unit: str, user: bool) -> None:
    result = verify(tmp_path, unit, user)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@needs_analyze
def test_tpm_credential_drop_in_verifies(tmp_path: Path) -> None:
    """install/credentials.conf.example as /etc/systemd/system/redeem.service.d/*.conf."""
    drop_ins = tmp_path / "redeem.service.d"
    drop_ins.mkdir()
    example = REPO / "install" / "credentials.conf.example"
    (drop_ins / "credentials.conf").write_text(example.read_text())
    result = verify(tmp_path, "redeem.service", user=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    lines = example.read_text().splitlines()
    assert "LoadCredential=" in lines  # drops the unit's plain credential
    assert f"LoadCredentialEncrypted={CREDENTIAL}:" in example.read_text()


def test_device_key_is_a_credential_by_default_and_optional() -> None:
    """The key comes from the credstore the installer moves it to, under the name
    sync/device.py reads; the unit still starts on a till whose key is not there yet."""
    unit = "redeem.service"
    assert values(unit, "Service", "LoadCredential") == [
        f"{CREDENTIAL}:/etc/credstore/edge-redeem/device-key"
    ]
    # systemd fails a start whose LoadCredential= file is missing, unless a SetCredential=
    # of the same name is the fallback (systemd.exec(5)); its value is the placeholder
    # sync/device.py takes as "no credential" (tests/test_device_key.py).
    fallback = one(unit, "Service", "SetCredential")
    assert fallback == f"{CREDENTIAL}:\\n"


def test_disk_full_start_is_retried_and_a_damaged_journal_is_not() -> None:
    """The daemon exits 75 (EX_TEMPFAIL) when the journal cannot start for now (disk full)
    and 2 when restarting cannot help (bad config, damaged journal)."""
    unit = "redeem.service"
    assert one(unit, "Service", "Restart") == "on-failure"
    prevent = one(unit, "Service", "RestartPreventExitStatus").split()
    assert "2" in prevent and "75" not in prevent and "EX_TEMPFAIL" not in prevent
    # 75 is a failure (so on-failure restarts it), not a clean exit...
    assert not any("75" in v.split() for v in values(unit, "Service", "SuccessExitStatus"))
    # ...and the retries are bounded by the start limit.
    assert int(one(unit, "Unit", "StartLimitBurst")) > 1
    assert seconds(one(unit, "Unit", "StartLimitIntervalSec")) > seconds(
        one(unit, "Service", "RestartSec")
    ) * int(one(unit, "Unit", "StartLimitBurst"))


@needs_analyze
def test_verify_does_speak_up_about_a_broken_unit(tmp_path: Path) -> None:
    """The check above means something: a misspelt setting is reported."""
    text = (UNITS / "redeem.service").read_text().replace("WatchdogSec=", "WatchDogSec=")
    result = verify(tmp_path, "redeem.service", user=False, text=text)
    assert "WatchDogSec" in result.stderr


def test_every_unit_file_is_checked() -> None:
    shipped = sorted(p.name for p in UNITS.glob("*.service")) + sorted(
        p.name for p in UNITS.glob("*.timer")
    )
    assert shipped == sorted(SYSTEM_UNITS + USER_UNITS)


def test_terminal_daemon_unit_has_what_the_daemon_and_operators_rely_on() -> None:
    unit = "redeem.service"
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    # runner.py pings every min(1 s, WATCHDOG_USEC/2): anything above a few seconds works.
    assert seconds(one(unit, "Service", "WatchdogSec")) >= 5
    # The daemon stops within its 5 s budget; systemd must wait a little longer than that.
    assert 5 < seconds(one(unit, "Service", "TimeoutStopSec")) <= 15
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "User") == one(unit, "Service", "Group") == "redeem"
    assert one(unit, "Service", "StateDirectory") == "edge-redeem"
    assert one(unit, "Service", "ConfigurationDirectory") == "edge-redeem"
    assert one(unit, "Unit", "ConditionPathExists") == "/var/lib/edge-redeem/terminal.json"
    assert one(unit, "Service", "ExecStart") == (
        "/opt/edge-redeem/venv/bin/redeem run --config /etc/edge-redeem/terminal.toml"
    )
    assert one(unit, "Service", "DevicePolicy") == "closed"
    allowed = {v.split()[0] for v in values(unit, "Service", "DeviceAllow")}
    assert {"char-video4linux", "char-ttyACM", "char-ttyUSB", "char-usb_device"} <= allowed
    assert one(unit, "Service", "CapabilityBoundingSet") == ""
    assert one(unit, "Service", "ProtectSystem") == "strict"


def test_units_run_commands_the_cli_has() -> None:
    """ExecStart= flags exist in the real CLIs (a renamed flag would fail only on a Pi)."""
    venv = REPO / ".venv" / "bin"
    run_help = subprocess.run(
        [str(venv / "redeem"), "run", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    serve_help = subprocess.run(
        [str(venv / "redeem-central"), "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "--config" in run_help
    for unit in ("redeem-central.service", "redeem-central@.service"):
        central = one(unit, "Service", "ExecStart").split()
        assert central[:2] == ["/opt/edge-redeem/venv/bin/redeem-central", "serve"]
        for flag in (a for a in central if a.startswith("--")):
            assert flag in serve_help, flag
        assert one(unit, "Service", "User") == "redeem-central"


@needs_analyze
def test_central_instance_verifies_as_an_instance(tmp_path: Path) -> None:
    """The template as `systemctl enable redeem-central@8701` instantiates it."""
    text = (UNITS / "redeem-central@.service").read_text()
    result = verify(tmp_path, "redeem-central@8701.service", user=False, text=text)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_central_instances_are_the_single_unit_on_their_own_port() -> None:
    """The template is redeem-central.service with the port and instance id from the
    instance name: the same hardening, user, directories and master-key credential."""
    single = parse_unit(UNITS / "redeem-central.service")
    template = parse_unit(UNITS / "redeem-central@.service")
    differs = {"Description", "ExecStart"}
    for section in ("Unit", "Service", "Install"):
        assert [kv for kv in single[section] if kv[0] not in differs] == [
            kv for kv in template[section] if kv[0] not in differs
        ], section
    exec_start = one("redeem-central@.service", "Service", "ExecStart").split()
    assert exec_start[exec_start.index("--port") + 1] == "%i"
    assert exec_start[exec_start.index("--instance-id") + 1] == "%H:%i"
    assert exec_start[exec_start.index("--host") + 1] == "127.0.0.1"  # nginx in front
    assert values("redeem-central@.service", "Service", "LoadCredential") == [
        "master-key:/etc/edge-redeem/master-key"
    ]


def test_kiosk_browser_waits_for_the_kiosk_on_loopback() -> None:
    unit = "redeem-kiosk.service"
    assert one(unit, "Service", "ExecStartPre").endswith("redeem-kiosk-browser --wait 180")
    script = (REPO / "install" / "redeem-kiosk-browser").read_text()
    assert "http://127.0.0.1:8080/" in script
    for flag in ("--kiosk", "--noerrdialogs", "--disable-infobars", "--incognito"):
        assert flag in script
    assert "--check-for-update-interval=31536000" in script
    assert os.access(REPO / "install" / "redeem-kiosk-browser", os.X_OK)
