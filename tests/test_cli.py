"""Both command lines as a person or a script uses them: real processes, real files.

Exit codes: 0 accepted/done, 1 refused (or a tampered journal), 2 usage or input error.
Bad input of any kind gets a one-line message, never a traceback."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coupons import base45
from coupons.journal import CSV_FIELDS
from coupons.reasons import Reason
from tests import master_key

NOW = "2026-11-25T04:00:00Z"  # Wednesday 12:00 in Shanghai

CAMPAIGNS_TOML = """
[[campaign]]
id = "SPEND100"
name = "Spend 100, get 20 off"
kind = "threshold"
currency = "CNY"
min_spend_minor = 10000
amount_minor = 2000
stacking = "any"

[[campaign]]
id = "PCT15"
kind = "percent"
currency = "CNY"
percent = 15
cap_minor = 3000
stacking = "any"
"""

DECISION_KEYS = {
    "accepted",
    "reason",
    "message",
    "discount_minor",
    "currency",
    "campaign",
    "serial",
    "journal_seq",
}


_MASTER_KEY_ENV: dict[str, str] = {}  # the centrals' master key file, for every process


@pytest.fixture(scope="module", autouse=True)
def _master_key_file(tmp_path_factory: pytest.TempPathFactory) -> None:
    _MASTER_KEY_ENV.update(master_key.env(tmp_path_factory.mktemp("master-key")))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDEEM_")}
    env["REDEEM_NOW"] = NOW
    env.update(_MASTER_KEY_ENV)
    env.update(extra)
    return env


def run(
    module: str, *args: str | Path, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        env=env or _env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout
    return proc


def redeem(*args: str | Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    return run("terminal.cli", *args, **kw)


def central(*args: str | Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    return run("sync.central.cli", *args, **kw)


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(proc.stdout)


@dataclass
class Central:
    dir: Path
    anchor: Path
    ledger: Path
    spend: list[str]  # SPEND100 tokens
    spend_serials: list[str]
    pct: list[str]  # PCT15 tokens
    codes: list[str]  # SPEND100 typed codes
    big: Path  # basket files
    small: Path


@pytest.fixture(scope="module")
def hq(tmp_path_factory: pytest.TempPathFactory) -> Central:
    root = tmp_path_factory.mktemp("hq")
    data = root / "central"
    info = as_json(central("init", "--data", data, "--json"))
    assert info["fingerprint"].startswith("SHA256:")
    (root / "campaigns.toml").write_text(CAMPAIGNS_TOML)
    added = central("campaign", "add", "--data", data, "--file", root / "campaigns.toml", "--json")
    assert added.returncode == 0 and as_json(added) == {"added": ["SPEND100", "PCT15"]}
    spend = as_json(
        central(
            "issue",
            "--data",
            data,
            "--campaign",
            "SPEND100",
            "--count",
            "6",
            "--out",
            root / "spend",
            "--json",
        )
    )
    assert spend["count"] == 6 and len(list((root / "spend").glob("*.png"))) == 6
    central(
        "issue",
        "--data",
        data,
        "--campaign",
        "PCT15",
        "--count",
        "3",
        "--no-qr",
        "--out",
        root / "pct",
    )
    assert not list((root / "pct").glob("*.png"))
    central(
        "issue",
        "--data",
        data,
        "--campaign",
        "SPEND100",
        "--count",
        "2",
        "--codes",
        "--out",
        root / "codes",
    )
    pub = central("publish", "--data", data, "--out", root / "ledger.cbor", "--json")
    assert pub.returncode == 0 and as_json(pub)["version"] == 1
    big, small = root / "big.json", root / "small.json"
    big.write_text(
        json.dumps(
            {
                "currency": "CNY",
                "lines": [
                    {
                        "sku": "RICE-COOKER",
                        "category": "appliance",
                        "quantity": 1,
                        "unit_price_minor": 26000,
                    }
                ],
            }
        )
    )
    small.write_text(json.dumps({"currency": "CNY", "total_minor": 8600}))
    return Central(
        data,
        data / "trust-anchor.json",
        root / "ledger.cbor",
        (root / "spend" / "tokens.txt").read_text().splitlines(),
        spend["serials"],
        (root / "pct" / "tokens.txt").read_text().splitlines(),
        (root / "codes" / "codes.txt").read_text().splitlines(),
        big,
        small,
    )


@pytest.fixture
def till(tmp_path: Path, hq: Central) -> Path:
    data = tmp_path / "till"
    init = redeem(
        "init",
        "--data",
        data,
        "--trust-anchor",
        hq.anchor,
        "--store",
        "S1",
        "--terminal",
        "T1",
        "--json",
    )
    assert init.returncode == 0 and as_json(init)["store"] == "S1"
    imp = redeem("ledger", "import", hq.ledger, "--data", data, "--json")
    assert imp.returncode == 0 and as_json(imp) == {"applied": [1], "refused": [], "version": 1}
    return data


# ---------------------------------------------------------------- the whole flow


def test_issue_writes_tokens_qr_codes_and_a_ledger(hq: Central) -> None:
    assert all(t.startswith("CPN1:") for t in hq.spend + hq.pct)
    assert len(hq.spend) == len(set(hq.spend)) == 6
    assert all(len(s) == 16 for s in hq.spend_serials)
    assert all(len(c) == 14 and c.count("-") == 2 for c in hq.codes)
    assert json.loads(hq.anchor.read_text())["root_public_key"]
    assert hq.ledger.stat().st_size > 0


def test_full_flow_check_redeem_verify_export(till: Path, hq: Central, tmp_path: Path) -> None:
    status = as_json(redeem("ledger", "status", "--data", till, "--json"))
    assert status["version"] == 1 and status["campaigns"] == 2 and status["plain_codes"] == 2

    check = redeem("check", hq.spend[0], "--basket", hq.big, "--data", till, "--json")
    d = as_json(check)
    assert check.returncode == 0 and d["accepted"] and d["journal_seq"] is None

    first = redeem(
        "redeem", hq.spend[0], "--basket", hq.big, "--data", till, "--json", "--cashier", "C07"
    )
    d = as_json(first)
    assert first.returncode == 0
    assert DECISION_KEYS <= d.keys()
    assert d["accepted"] is True and d["reason"] == "ok"
    assert d["message"] == Reason.OK.message()
    assert d["discount_minor"] == 2000 and d["currency"] == "CNY"
    assert d["campaign"] == "SPEND100" and d["serial"] == hq.spend_serials[0]
    assert isinstance(d["journal_seq"], int) and d["journal_seq"] >= 2

    again = redeem("redeem", hq.spend[0], "--basket", hq.big, "--data", till, "--json")
    d2 = as_json(again)
    assert again.returncode == 1
    assert d2["accepted"] is False and d2["reason"] == "already_redeemed"
    assert d2["message"] == "This coupon has already been used."
    assert d2["discount_minor"] == 0 and d2["serial"] == hq.spend_serials[0]
    assert d2["journal_seq"] > d["journal_seq"]

    text = redeem("redeem", hq.pct[0], "--basket", hq.big, "--data", till)
    assert text.returncode == 0 and text.stdout.startswith("ACCEPTED")
    assert "-30.00 CNY" in text.stdout  # 15 % of 260 is 39, capped at 30

    typed = redeem(
        "redeem",
        hq.codes[0].lower().replace("-", " "),
        "--basket",
        hq.big,
        "--data",
        till,
        "--json",
    )
    assert typed.returncode == 0, typed.stdout
    assert as_json(typed)["campaign"] == "SPEND100"

    verify = redeem("journal", "verify", "--data", till)
    assert verify.returncode == 0 and "chain intact" in verify.stdout
    vj = as_json(redeem("journal", "verify", "--data", till, "--json"))
    assert vj["ok"] is True and vj["first_bad_seq"] is None

    jsonl = redeem("journal", "export", "--data", till, "--format", "jsonl")
    rows = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert jsonl.returncode == 0 and rows == sorted(rows, key=lambda r: r["seq"])
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert rows[0]["kind"] == "ledger"
    redeemed = [r for r in rows if r["kind"] == "redeem"]
    assert [(r["accepted"], r["reason"]) for r in redeemed] == [
        (True, "ok"),
        (False, "already_redeemed"),
        (True, "ok"),
        (True, "ok"),
    ]
    assert redeemed[0]["cashier"] == "C07" and redeemed[0]["discount_minor"] == 2000
    assert any(r["kind"] == "flag" and r["reason"] == "replay" for r in rows)

    out = tmp_path / "journal.csv"
    exp = redeem("journal", "export", "--data", till, "--format", "csv", "--out", out)
    assert exp.returncode == 0 and f"exported {len(rows)} entries" in exp.stderr
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert tuple(table[0].keys()) == CSV_FIELDS
    assert [int(r["seq"]) for r in table] == [r["seq"] for r in rows]
    assert [r["hash"] for r in table] == [r["hash"] for r in rows]


def test_two_phase_hold_commit_release_and_retry_by_operation_id(till: Path, hq: Central) -> None:
    hold = redeem(
        "hold",
        hq.pct[1],
        "--checkout",
        "POS-1",
        "--basket",
        hq.big,
        "--data",
        till,
        "--op-id",
        "op-1",
        "--json",
    )
    assert hold.returncode == 0 and as_json(hold)["checkout_id"] == "POS-1"
    retry = as_json(
        redeem(
            "hold",
            hq.pct[1],
            "--checkout",
            "POS-1",
            "--basket",
            hq.big,
            "--data",
            till,
            "--op-id",
            "op-1",
            "--json",
        )
    )
    assert retry["accepted"] and retry["replayed"] is True
    assert retry["journal_seq"] == as_json(hold)["journal_seq"]
    redeem("hold", hq.spend[1], "--checkout", "POS-1", "--basket", hq.big, "--data", till)
    commit = as_json(redeem("commit", "--checkout", "POS-1", "--data", till, "--json"))
    assert commit["accepted"] and commit["discount_minor"] == 3000 + 2000
    assert {c["status"] for c in commit["coupons"]} == {"committed"}
    assert redeem("commit", "--checkout", "POS-1", "--data", till).returncode == 1

    redeem("hold", hq.spend[2], "--checkout", "POS-2", "--basket", hq.big, "--data", till)
    release = redeem("release", "--checkout", "POS-2", "--data", till)
    assert release.returncode == 0
    again = redeem("redeem", hq.spend[2], "--basket", hq.big, "--data", till, "--json")
    assert again.returncode == 0 and as_json(again)["accepted"]
    nothing = redeem("commit", "--checkout", "NO-SUCH", "--data", till, "--json")
    assert nothing.returncode == 1 and as_json(nothing)["reason"] == "unknown_checkout"


# ---------------------------------------------------------------- exit codes


def test_exit_codes_accepted_refused_and_usage(till: Path, hq: Central) -> None:
    assert redeem("check", hq.spend[3], "--basket", hq.big, "--data", till).returncode == 0
    below = redeem("check", hq.spend[3], "--basket", hq.small, "--data", till, "--json")
    assert below.returncode == 1 and as_json(below)["reason"] == "below_minimum"
    assert redeem("check", hq.spend[3], "--data", till).returncode == 2  # no --basket
    assert redeem("no-such-command", "--data", till).returncode == 2
    assert redeem().returncode == 2
    assert (
        central(
            "issue",
            "--data",
            hq.dir,
            "--campaign",
            "SPEND100",
            "--count",
            "0",
            "--out",
            till.parent / "x",
        ).returncode
        == 2
    )
    unknown = central("issue", "--data", hq.dir, "--campaign", "NOPE", "--out", till.parent / "x")
    assert unknown.returncode == 2 and "NOPE" in unknown.stderr
    uninit = redeem("ledger", "status", "--data", till.parent / "nothing-here")
    assert uninit.returncode == 2 and "redeem init" in uninit.stderr
    not_central = central("publish", "--data", till, "--out", till.parent / "l.cbor")
    assert not_central.returncode == 2 and "redeem-central init" in not_central.stderr


# ---------------------------------------------------------------- bad input

BAD_BASKETS: list[tuple[str, bytes, str]] = [
    ("garbage.json", bytes(range(256)) * 4, "cannot read"),
    ("text.json", b"two coffees please", "not valid JSON"),
    ("list.json", b"[1, 2, 3]", "must be a JSON object"),
    ("string-total.json", b'{"currency": "CNY", "total_minor": "128.00"}', "'total_minor'"),
    ("float-total.json", b'{"currency": "CNY", "total_minor": 128.5}', "'total_minor'"),
    (
        "bool-qty.json",
        b'{"currency": "CNY", "lines": [{"sku": "A", "quantity": true, "unit_price_minor": 100}]}',
        "'quantity'",
    ),
    ("lines-object.json", b'{"currency": "CNY", "lines": {"sku": "A"}}', "'lines'"),
    ("no-price.json", b'{"currency": "CNY", "lines": [{"sku": "A"}]}', "'unit_price_minor'"),
    ("negative.json", b'{"currency": "CNY", "total_minor": -100}', "'total_minor'"),
    ("no-currency.json", b'{"total_minor": 100}', "'currency'"),
    (
        "unknown.json",
        b'{"currency": "CNY", "total_minor": 100, "coupon": "x"}',
        "unknown field 'coupon'",
    ),
    ("nan.json", b'{"currency": "CNY", "total_minor": NaN}', "'total_minor'"),
    ("huge.json", b'{"currency": "CNY", "total_minor": 1e999}', "'total_minor'"),
    ("bad.toml", b"currency = ", "not valid TOML"),
]


def test_bad_basket_files_are_input_errors_not_tracebacks(
    till: Path, hq: Central, tmp_path: Path
) -> None:
    for name, content, words in BAD_BASKETS:
        path = tmp_path / name
        path.write_bytes(content)
        proc = redeem("redeem", hq.spend[4], "--basket", path, "--data", till)
        assert proc.returncode == 2, (name, proc.stdout, proc.stderr)
        assert proc.stderr.startswith("redeem: ") and words in proc.stderr, (name, proc.stderr)
        assert proc.stdout == ""
    missing = redeem("check", hq.spend[4], "--basket", tmp_path / "missing.json", "--data", till)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    piped = redeem("check", hq.spend[4], "--basket", "-", "--data", till, stdin="{oops")
    assert piped.returncode == 2 and "not valid JSON" in piped.stderr
    good = redeem(
        "check",
        hq.spend[4],
        "--basket",
        "-",
        "--data",
        till,
        stdin='{"currency": "CNY", "total_minor": 12800}',
    )
    assert good.returncode == 0
    # None of it was journaled: the basket is read before the engine decides anything.
    rows = redeem("journal", "export", "--data", till).stdout.splitlines()
    assert [json.loads(r)["kind"] for r in rows] == ["ledger"]


def test_deeply_nested_basket_is_an_input_error(till: Path, hq: Central, tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    proc = redeem("check", hq.spend[4], "--basket", path, "--data", till)
    assert proc.returncode == 2 and proc.stderr.startswith("redeem: ")


@pytest.mark.parametrize(
    ("filename", "content", "words"),
    [
        (
            "c.toml",
            CAMPAIGNS_TOML.replace('stacking = "any"\n', 'stacking = "any"\ndiscount = 5\n', 1),
            "unknown field 'discount'",
        ),
        (
            "c.json",
            json.dumps(
                {"id": "X", "kind": "fixed", "currency": "CNY", "amount_minor": 100, "max_uses": 3}
            ),
            "unknown field 'max_uses'",
        ),
        (
            "c.json",
            json.dumps({"id": "X", "kind": "fixed", "currency": "CNY", "amount_minor": "100"}),
            "'amount_minor' has the wrong type",
        ),
        ("c.json", json.dumps({"id": "X", "kind": "bogof", "currency": "CNY"}), "'kind'"),
        ("c.json", json.dumps([1, 2]), "campaign must be a table/object"),
        ("c.toml", "[[campaign]\nid = ", "not valid TOML"),
        ("c.json", '"just a string"', "expected a campaign"),
    ],
)
def test_bad_campaign_files_name_the_problem(
    hq: Central, tmp_path: Path, filename: str, content: str, words: str
) -> None:
    path = tmp_path / filename
    path.write_text(content)
    proc = central("campaign", "add", "--data", hq.dir, "--file", path)
    assert proc.returncode == 2, proc.stdout
    assert proc.stderr.startswith("redeem-central: ") and words in proc.stderr, proc.stderr


def test_campaign_file_missing(hq: Central, tmp_path: Path) -> None:
    proc = central("campaign", "add", "--data", hq.dir, "--file", tmp_path / "none.toml")
    assert proc.returncode == 2 and "cannot read" in proc.stderr


def test_random_ledger_file_is_refused_and_ledger_unchanged(
    till: Path, hq: Central, tmp_path: Path
) -> None:
    before = as_json(redeem("ledger", "status", "--data", till, "--json"))
    files_before = sorted(p.name for p in (till / "ledger").iterdir())
    rng = random.Random(7)
    real = hq.ledger.read_bytes()
    for i, junk in enumerate(
        [rng.randbytes(4096), b"", real[: len(real) // 2], real[:-1] + bytes([real[-1] ^ 1])]
    ):
        path = tmp_path / f"junk{i}.cbor"
        path.write_bytes(junk)
        proc = redeem("ledger", "import", path, "--data", till, "--json")
        result = as_json(proc)
        assert proc.returncode == 1, (i, proc.stdout)
        assert result["applied"] == [] and result["refused"], i
        assert result["refused"][0]["kind"] in ("damaged", "forged"), result
        assert result["version"] == 1
    after = as_json(redeem("ledger", "status", "--data", till, "--json"))
    assert (after["version"], after["chain"]) == (before["version"], before["chain"])
    assert sorted(p.name for p in (till / "ledger").iterdir()) == files_before
    again = redeem("ledger", "import", hq.ledger, "--data", till, "--json")
    assert again.returncode == 0 and as_json(again)["refused"] == []  # same version: no-op
    assert redeem("check", hq.spend[5], "--basket", hq.big, "--data", till).returncode == 0


def test_random_tokens_are_refused_as_unreadable(till: Path, hq: Central) -> None:
    rng = random.Random(11)
    alphabet = base45.ALPHABET
    samples = [
        "CPN1:" + "".join(rng.choice(alphabet) for _ in range(176)),
        "CPN1:" + "".join(rng.choice(alphabet) for _ in range(3000)),
        "CPN1:",
        "".join(chr(rng.randrange(33, 127)) for _ in range(40)),
        os.fsdecode(bytes(rng.randrange(1, 256) for _ in range(64))),
        hq.spend[5][:-20],  # a real token cut short by a bad scan
    ]
    for token in samples:
        proc = redeem("redeem", token, "--basket", hq.big, "--data", till, "--json")
        d = as_json(proc)
        assert proc.returncode == 1, (token, proc.stdout, proc.stderr)
        assert d["accepted"] is False and d["reason"] == "malformed", (token, d)
        assert d["message"] == Reason.MALFORMED.message()
    assert redeem("journal", "verify", "--data", till).returncode == 0


# ---------------------------------------------------------------- environment and language


def test_data_directories_from_the_environment(hq: Central, tmp_path: Path) -> None:
    data = tmp_path / "env-till"
    env = _env(REDEEM_DATA=str(data))
    assert (
        redeem(
            "init", "--trust-anchor", hq.anchor, "--store", "S1", "--terminal", "T9", env=env
        ).returncode
        == 0
    )
    assert (data / "terminal.json").exists()
    assert redeem("ledger", "import", hq.ledger, env=env).returncode == 0
    status = as_json(redeem("ledger", "status", "--json", env=env))
    assert status["version"] == 1
    assert (
        redeem("ledger", "status", "--data", tmp_path / "elsewhere", env=env).returncode == 2
    )  # the flag wins over the environment
    no_data = redeem("ledger", "status")
    assert no_data.returncode == 2 and "--data" in no_data.stderr

    cdata = tmp_path / "env-central"
    cenv = _env(REDEEM_CENTRAL_DATA=str(cdata))
    assert central("init", env=cenv).returncode == 0
    assert (cdata / "trust-anchor.json").exists()
    pub = central("publish", "--out", tmp_path / "l.cbor", "--json", env=cenv)
    assert pub.returncode == 0 and as_json(pub)["version"] == 1
    assert central("publish", "--out", tmp_path / "l.cbor").returncode == 2


def test_redeem_now_pins_the_clock(till: Path, hq: Central) -> None:
    rows = redeem("journal", "export", "--data", till).stdout.splitlines()
    assert json.loads(rows[0])["at_ms"] == 1_795_579_200_000  # 2026-11-25T04:00:00Z
    early = redeem(
        "check",
        hq.spend[5],
        "--basket",
        hq.big,
        "--data",
        till,
        "--json",
        env=_env(REDEEM_NOW="2026-11-24T04:00:00Z"),
    )
    assert early.returncode == 1 and as_json(early)["reason"] == "clock_untrusted"


def test_lang_zh_cn_prints_the_chinese_sentence(till: Path, hq: Central) -> None:
    redeem("redeem", hq.spend[5], "--basket", hq.big, "--data", till)
    zh = redeem("redeem", hq.spend[5], "--basket", hq.big, "--data", till, "--lang", "zh_CN")
    assert zh.returncode == 1
    assert "already_redeemed" in zh.stdout and "这张券已经用过了。" in zh.stdout
    by_env = redeem(
        "check",
        hq.spend[4],
        "--basket",
        hq.small,
        "--data",
        till,
        "--json",
        env=_env(REDEEM_LANG="zh-CN"),
    )
    assert as_json(by_env)["message"] == Reason.BELOW_MINIMUM.message("zh_CN")
    assert as_json(by_env)["message"] != Reason.BELOW_MINIMUM.message("en")
    ok = redeem("check", hq.pct[2], "--basket", hq.big, "--data", till, "--json", "--lang", "zh_CN")
    assert as_json(ok)["message"] == "优惠券可以使用。"
    en = redeem("check", hq.pct[2], "--basket", hq.big, "--data", till, "--json", "--lang", "fr")
    assert as_json(en)["message"] == "Coupon accepted."


# ---------------------------------------------------------------- tamper evidence


def test_journal_verify_names_the_edited_entry(till: Path, hq: Central) -> None:
    for token in (hq.spend[5], hq.pct[2], hq.spend[5]):
        redeem("redeem", token, "--basket", hq.big, "--data", till)
    assert redeem("journal", "verify", "--data", till).returncode == 0
    with sqlite3.connect(till / "journal.db") as db:
        db.execute("UPDATE entry SET discount_minor = 9900 WHERE seq = 3")
    db.close()
    proc = redeem("journal", "verify", "--data", till)
    assert proc.returncode == 1
    assert "TAMPERED" in proc.stdout and "entry 3 was altered" in proc.stdout
    report = as_json(redeem("journal", "verify", "--data", till, "--json"))
    assert report["ok"] is False and report["first_bad_seq"] == 3

    with sqlite3.connect(till / "journal.db") as db:
        db.execute("UPDATE entry SET discount_minor = 3000 WHERE seq = 3")
        db.execute("DELETE FROM entry WHERE seq = 2")
    db.close()
    gone = as_json(redeem("journal", "verify", "--data", till, "--json"))
    assert gone["ok"] is False and gone["first_bad_seq"] == 2
    assert "entry 2 is missing" in gone["problem"]


def test_campaign_file_with_one_bad_campaign_adds_none(tmp_path: Path) -> None:
    data = tmp_path / "central"
    assert central("init", "--data", data).returncode == 0
    path = tmp_path / "two.json"
    path.write_text(
        json.dumps(
            [
                {"id": "GOOD", "kind": "fixed", "currency": "CNY", "amount_minor": 100},
                {"id": "BAD", "kind": "fixed", "currency": "CNY", "amount_minor": -1},
            ]
        )
    )
    proc = central("campaign", "add", "--data", data, "--file", path)
    assert proc.returncode == 2 and "BAD" in proc.stderr
    proc = central("issue", "--data", data, "--campaign", "GOOD", "--out", tmp_path / "o")
    assert proc.returncode == 2 and "no campaign GOOD" in proc.stderr


def test_output_that_cannot_be_written_is_one_clear_line(hq: Central, tmp_path: Path) -> None:
    proc = central("publish", "--data", hq.dir, "--out", tmp_path / "missing" / "l.cbor")
    assert proc.returncode == 2 and "is not a directory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_typed_code_qr_is_a_full_size_qr(tmp_path: Path) -> None:
    import cv2

    data = tmp_path / "central"
    central("init", "--data", data)
    camp = tmp_path / "c.json"
    camp.write_text(
        json.dumps({"id": "C", "kind": "fixed", "currency": "CNY", "amount_minor": 100})
    )
    central("campaign", "add", "--data", data, "--file", camp)
    assert (
        central(
            "issue", "--data", data, "--campaign", "C", "--codes", "--out", tmp_path / "o"
        ).returncode
        == 0
    )
    (png,) = (tmp_path / "o").glob("*.png")
    code = (tmp_path / "o" / "codes.txt").read_text().strip()
    text, _, _ = cv2.QRCodeDetector().detectAndDecode(cv2.imread(str(png)))
    assert text == code
