"""Users, roles and the audit log at the central (SQLite and PostgreSQL): console users with
argon2id hashes and a lock-out, admin tokens with a role (403 naming the permission a role
lacks), every change on the audit log with before and after, the log append-only in the
database, and its CSV export formula-safe."""

from __future__ import annotations

import csv
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import peewee as pw
import pytest
import requests

from coupons.clock import FixedClock
from sync import protocol
from sync.central import terminals, users
from sync.central.models import AdminToken, AuditRow, Setting, UserRow
from sync.central.store import Central
from tests.central_server import BACKENDS, Running, chain, database_for, running_central
from tests.conftest import T0
from tests.master_key import KEY as MASTER_KEY

A = protocol.ADMIN_PREFIX
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module", params=BACKENDS)
def central(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    with running_central(request.param, tmp_path_factory.mktemp("users"), FixedClock(T0)) as c:
        yield c


def _admin(central: Running, method: str, path: str, token: str, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    return requests.request(method, central.url + A + path, headers=headers, timeout=30, **kw)


def _entries(action: str, target: str | None = None) -> list[users.AuditDoc]:
    return [
        e
        for e in users.audit_log(limit=5000)
        if e["action"] == action and (target is None or e["target"] == target)
    ]


def _flag(central: Running, campaign: str) -> int:
    """A double redemption of one coupon at two stores: an open flag."""
    c = central.central
    c.add_campaign({"id": campaign, "kind": "fixed", "currency": "CNY", "amount_minor": 300})
    [coupon] = c.issue(campaign, 1)
    serial = f"{coupon.serial:016x}"
    use = {"kind": "redeem", "reason": "ok", "campaign": campaign, "serial": serial,
           "discount_minor": 300, "currency": "CNY"}  # fmt: skip
    for store in ("UA", "UB"):
        assert central.device(store).push(chain(use))["acked_seq"] == 1
    token = central.admin_token()
    found = _admin(central, "GET", "/flags", token, params={"kind": "double_redemption"})
    [flag] = [f for f in found.json()["flags"] if f["serial"] == serial]
    return int(flag["id"])


def test_users_from_the_cli_are_added_listed_disabled_and_reset(central: Running) -> None:
    r = central.cli("user", "add", "--name", "mei", "--role", "marketer", "--password-stdin",
                    "--json", stdin=PASSWORD + "\n")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["user"]["role"] == "marketer"
    again = central.cli("user", "add", "--name", "mei", "--role", "admin", "--password-stdin",
                        stdin=PASSWORD + "\n")  # fmt: skip
    assert again.returncode == 2 and "exists already" in again.stderr
    short = central.cli("user", "add", "--name", "li", "--role", "analyst", "--password-stdin",
                        stdin="short\n")  # fmt: skip
    assert short.returncode == 2 and "12 to 1024 characters" in short.stderr
    listed = json.loads(central.cli("user", "list", "--json").stdout)["users"]
    assert [(u["name"], u["role"], u["disabled"]) for u in listed] == [("mei", "marketer", False)]

    assert users.verify_login(central.central, "mei", PASSWORD, T0)["name"] == "mei"
    new = "a different long password"
    assert central.cli("user", "reset", "--name", "mei", "--password-stdin",
                       stdin=new + "\n").returncode == 0  # fmt: skip
    with pytest.raises(users.LoginRefused):
        users.verify_login(central.central, "mei", PASSWORD, T0)
    assert users.verify_login(central.central, "mei", new, T0)["role"] == "marketer"
    assert central.cli("user", "disable", "--name", "mei").returncode == 0
    with pytest.raises(users.LoginRefused) as refused:
        users.verify_login(central.central, "mei", new, T0)
    assert refused.value.reason == "disabled"
    assert central.cli("user", "disable", "--name", "nobody").returncode == 2

    [added] = _entries("user.add", "user:mei")
    assert added["actor"].startswith("cli:") and added["before"] is None
    assert added["after"]["role"] == "marketer"  # type: ignore[index]
    [disabled] = _entries("user.disable", "user:mei")
    assert disabled["before"]["disabled"] is False  # type: ignore[index]
    assert disabled["after"]["disabled"] is True  # type: ignore[index]
    assert len(_entries("user.reset-password", "user:mei")) == 1


def test_hashes_are_argon2id_and_the_password_is_nowhere(central: Running) -> None:
    users.add_user(central.central, "tests", "hash.check", "analyst", PASSWORD)
    row = UserRow.get(UserRow.name == "hash.check")
    assert row.password_hash.startswith("$argon2id$")
    assert PASSWORD not in row.password_hash
    assert all(PASSWORD not in (e.before or "") + (e.after or "") for e in AuditRow.select())
    if central.database is None:  # the SQLite file itself (and its write-ahead log)
        # Read by another process: closing a file this process has open drops its SQLite
        # locks (POSIX record locks belong to the process, not to the descriptor).
        files = [str(p) for p in central.data.glob("central.db*")]
        found = subprocess.run(["grep", "-lF", PASSWORD, *files], capture_output=True)
        assert found.returncode == 1, found.stdout


def test_lock_out_after_five_wrong_passwords_for_fifteen_minutes(central: Running) -> None:
    clock = central.clock
    assert isinstance(clock, FixedClock)
    c = central.central
    users.add_user(c, "tests", "wu", "analyst", PASSWORD)
    for n in range(1, users.MAX_FAILURES):
        with pytest.raises(users.LoginRefused) as bad:
            users.verify_login(c, "wu", "wrong password!", clock.now())
        assert bad.value.reason == "bad-credentials"
        assert UserRow.get(UserRow.name == "wu").failed_logins == n
    with pytest.raises(users.LoginRefused):
        users.verify_login(c, "wu", "wrong password!", clock.now())
    # Locked: even the right password is refused, with its own reason.
    with pytest.raises(users.LoginRefused) as locked:
        users.verify_login(c, "wu", PASSWORD, clock.now())
    assert locked.value.reason == "locked"
    [lock] = _entries("user.lock", "user:wu")
    assert lock["after"]["locked_until"] == int(clock.now()) + users.LOCK_S  # type: ignore[index]
    clock.advance(users.LOCK_S - 1)
    with pytest.raises(users.LoginRefused):
        users.verify_login(c, "wu", PASSWORD, clock.now())
    clock.advance(1)
    assert users.verify_login(c, "wu", PASSWORD, clock.now())["failed_logins"] == 0
    # An unknown name is the same answer as a wrong password.
    with pytest.raises(users.LoginRefused) as unknown:
        users.verify_login(c, "nobody", PASSWORD, clock.now())
    assert unknown.value.reason == "bad-credentials"
    assert str(unknown.value) == str(bad.value)


def test_roles_decide_what_a_token_may_do(central: Running) -> None:
    flag = _flag(central, "ROLE1")
    marketer = terminals.new_admin_token(central.central, "mkt", "marketer")
    auditor = terminals.new_admin_token(central.central, "aud", "auditor")
    admin = central.admin_token()
    decision = {"status": "acknowledged", "note": "checking"}

    r = _admin(central, "POST", f"/flags/{flag}", marketer, json=decision)
    assert r.status_code == 403
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert "flags.decide" in r.json()["detail"] and r.json()["code"] == "permission"
    assert _admin(central, "GET", "/flags?status=open&kind=double_redemption", marketer).ok
    r = _admin(central, "POST", f"/flags/{flag}", admin, json=decision)
    assert r.status_code == 200 and r.json()["status"] == "acknowledged"

    assert _admin(central, "GET", "/report", auditor).status_code == 200
    assert _admin(central, "GET", "/audit", auditor).status_code == 200
    assert _admin(central, "GET", "/audit", marketer).status_code == 403
    for path, body in (
        (f"/flags/{flag}", {"status": "resolved"}),
        ("/enroll-codes", {"store": "S1"}),
        ("/terminals/UA-001/revoke", {}),
        ("/publish", {}),
    ):
        r = _admin(central, "POST", path, auditor, json=body)
        assert r.status_code == 403, (path, r.text)
    refused = [e for e in _entries("refused") if e["actor"] == "token:aud"]
    assert len(refused) == 4
    assert {e["after"]["permission"] for e in refused} == {  # type: ignore[index]
        "flags.decide",
        "terminals.manage",
        "ledger.publish",
    }
    status = _admin(central, "GET", "/flags", admin, params={"kind": "double_redemption"})
    assert [f["status"] for f in status.json()["flags"] if f["id"] == flag] == ["acknowledged"]


def test_every_admin_change_is_on_the_audit_log(central: Running) -> None:
    flag = _flag(central, "AUD1")
    admin = terminals.new_admin_token(central.central, "ops")
    r = _admin(central, "POST", f"/flags/{flag}", admin, json={"status": "resolved", "note": "ok"})
    assert r.status_code == 200
    [decided] = _entries("flag.decide", f"flag:{flag}")
    assert decided["actor"] == "token:ops"
    assert decided["before"]["status"] == "open"  # type: ignore[index]
    assert decided["after"]["status"] == "resolved"  # type: ignore[index]

    code = _admin(central, "POST", "/enroll-codes", admin, json={"store": "AU"}).json()["code"]
    [made] = _entries("enroll-code.make", "store:AU")
    assert code not in json.dumps(made)  # the log never holds a usable code
    terminal = central.device("AV").terminal
    assert _admin(central, "POST", f"/terminals/{terminal}/revoke", admin).status_code == 200
    [revoked] = _entries("terminal.revoke", f"terminal:{terminal}")
    assert revoked["before"] == {"revoked": False} and revoked["after"] == {"revoked": True}
    assert _admin(central, "POST", "/publish", admin).status_code == 200
    assert _entries("ledger.publish-now")[-1]["actor"] == "token:ops"
    listed = _admin(central, "GET", "/audit", admin, params={"after": decided["id"] - 1})
    assert listed.json()["entries"][0]["id"] == decided["id"]


def test_cli_changes_are_audited(central: Running, tmp_path: Path) -> None:
    doc = tmp_path / "camp.json"
    doc.write_text(json.dumps({"id": "CLI1", "kind": "fixed", "currency": "CNY",
                               "amount_minor": 100}))  # fmt: skip
    now = str(central.clock.now())
    assert central.cli("campaign", "add", "--file", str(doc), now=now).returncode == 0
    out = tmp_path / "issued"
    issued = central.cli("issue", "--campaign", "CLI1", "--count", "2", "--out", str(out),
                         "--no-qr", "--json", now=now)  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    serial = json.loads(issued.stdout)["serials"][0]
    assert central.cli("revoke", "--serial", serial, now=now).returncode == 0
    assert central.cli("policy", "--set", "burst_per_terminal=7", now=now).returncode == 0
    terminal = central.device("AW").terminal
    assert central.cli("revoke-terminal", "--terminal", terminal, now=now).returncode == 0
    for action, target in (
        ("campaign.add", "CLI1"),
        ("coupons.issue", "campaign:CLI1"),
        ("coupons.revoke", serial),
        ("policy.set", "policy"),
        ("terminal.revoke", f"terminal:{terminal}"),
    ):
        [entry] = _entries(action, target)
        assert entry["actor"].startswith("cli:")
    [policy] = _entries("policy.set")
    assert policy["after"]["burst_per_terminal"] == 7  # type: ignore[index]
    assert policy["before"]["burst_per_terminal"] != 7  # type: ignore[index]


def test_admin_tokens_have_roles_and_are_listed_and_revoked(central: Running) -> None:
    made = central.cli("admin-token", "--role", "analyst", "--label", "fraud desk", "--json")
    assert made.returncode == 0, made.stderr
    doc = json.loads(made.stdout)
    assert doc["role"] == "analyst"
    assert _admin(central, "GET", "/flags", doc["token"]).status_code == 200
    listed = json.loads(central.cli("admin-token", "list", "--json").stdout)["tokens"]
    [mine] = [t for t in listed if t["id"] == doc["id"]]
    assert mine == {**mine, "label": "fraud desk", "role": "analyst", "revoked": False}
    assert doc["token"] not in json.dumps(listed)
    assert central.cli("admin-token", "revoke", "--id", doc["id"]).returncode == 0
    assert _admin(central, "GET", "/flags", doc["token"]).status_code == 401
    assert central.cli("admin-token", "revoke", "--id", "0" * 12).returncode == 2
    assert central.cli("admin-token", "--role", "boss").returncode == 2
    assert [e["after"]["revoked"] for e in _entries("admin-token.revoke")] == [True]  # type: ignore[index]
    assert _entries("admin-token.make")[-1]["after"]["role"] == "analyst"  # type: ignore[index]


def test_the_audit_log_refuses_update_and_delete(central: Running) -> None:
    entry = users.audit(central.central, "tests", "test.append", "nothing")
    with pytest.raises(pw.DatabaseError, match="append-only"):
        AuditRow.update(actor="someone else").where(AuditRow.id == entry).execute()
    with pytest.raises(pw.DatabaseError, match="append-only"):
        AuditRow.delete().where(AuditRow.id == entry).execute()
    assert AuditRow.get_by_id(entry).actor == "tests"


def test_the_csv_export_is_formula_safe(central: Running, tmp_path: Path) -> None:
    users.audit(central.central, '=HYPERLINK("http://evil")', "-2+3", "@SUM(A1)", None, None)
    out = tmp_path / "audit.csv"
    r = central.cli("audit", "--since", "2020-01-01", "--csv", str(out))
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(out.open(encoding="utf-8")))
    assert rows[0] == ["id", "at", "actor", "action", "target", "before", "after"]
    [evil] = [row for row in rows if "HYPERLINK" in row[2]]
    assert evil[2:5] == ['\'=HYPERLINK("http://evil")', "'-2+3", "'@SUM(A1)"]
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row)
    later = central.cli("audit", "--since", "2100-01-01", "--json")
    assert json.loads(later.stdout)["entries"] == []
    assert central.cli("audit", "--since", "yesterday").returncode == 2


def test_the_permission_table() -> None:
    assert users.allowed("admin", "users.manage") and not users.allowed("marketer", "users.manage")
    assert users.allowed("marketer", "campaigns.write") and users.allowed("analyst", "flags.decide")
    assert not users.allowed("analyst", "campaigns.write")
    changes = [p for p in users.PERMISSIONS if p not in ("read", "audit.read")]
    assert not [p for p in changes if users.allowed("auditor", p)]
    assert all(users.allowed(r, "read") for r in users.ROLES)
    assert not users.allowed("admin", "no.such.permission")


def test_a_schema_3_database_makes_its_tokens_admin(tmp_path: Path) -> None:
    database = database_for("sqlite", "schema3")
    c = Central.init(tmp_path / "central", database=database, master_key=MASTER_KEY)
    try:
        token = terminals.new_admin_token(c, "old")
        c.db.execute_sql('ALTER TABLE "admintoken" DROP COLUMN "role"')
        c.db.execute_sql('ALTER TABLE "admintoken" DROP COLUMN "revoked"')
        c.db.execute_sql("DROP TRIGGER audit_no_update")
        Setting.update(value="3").where(Setting.key == "schema").execute()
        c.close()
        c = Central(tmp_path / "central", database=database, master_key=MASTER_KEY)
        assert Setting.get(Setting.key == "schema").value == "4"
        caller = terminals.admin_caller(f"Bearer {token}")
        assert caller is not None and caller.role == "admin"
        assert AdminToken.get(AdminToken.label == "old").revoked is False
        entry = users.audit(c, "tests", "test", "x")
        with pytest.raises(pw.DatabaseError):
            AuditRow.update(actor="y").where(AuditRow.id == entry).execute()
    finally:
        c.close()
