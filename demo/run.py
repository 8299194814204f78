"""The demo: set up a central and a till through the real command lines, then play a
Wednesday of checkouts through the real engine, one line per step (`python -m demo.run`).

Everything is written under ./demo-out/ (relative to the working directory), which is
wiped first. The clock is pinned (REDEEM_NOW for the command lines, a FixedClock for the
session), so the story is the same on every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import unicodedata
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import cbor2

from terminal import base45, cose, setup, tokens
from terminal.clock import FixedClock
from terminal.decision import Context, Decision
from terminal.engine import Engine
from terminal.reasons import Reason
from terminal.rules import Basket

OUT = Path("demo-out")
CAMPAIGNS = Path(__file__).with_name("campaigns.toml")
TZ = ZoneInfo("Asia/Shanghai")
STORE, TILL, CASHIER = "SH-PD-001", "TILL-01", "C07"

# Wednesday 25 November 2026, Shanghai time.
CENTRAL_AT = "2026-11-25T08:30:00+08:00"  # head office issues coupons, publishes the ledger
IMPORT_AT = "2026-11-25T08:45:00+08:00"  # the till takes the ledger before opening
MORNING = datetime(2026, 11, 25, 10, 15, tzinfo=TZ).timestamp()  # inside the flash hour
AFTERNOON = datetime(2026, 11, 25, 15, 30, tzinfo=TZ).timestamp()  # outside it

ISSUE = {"SPEND100": 3, "PCT15": 3, "NEW10": 3, "TOTE200": 2, "FLASH": 2}


class DemoFailed(Exception):
    pass


def yuan(minor: int) -> str:
    return f"¥{minor // 100}.{minor % 100:02d}"


def customer_ref(loyalty_id: str) -> str:
    """What the POS sends: a hash of the loyalty id, never the phone number itself."""
    return hashlib.sha256(f"demo-loyalty:{loyalty_id}".encode()).hexdigest()[:32]


# ---------------------------------------------------------------- the command lines


def _tool(name: str, module: str) -> list[str]:
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


TOOLS = {
    "redeem": _tool("redeem", "terminal.cli"),
    "redeem-central": _tool("redeem-central", "sync.central.cli"),
}


def run(
    tool: str,
    *args: str,
    now: str | None = None,
    ok_codes: tuple[int, ...] = (0,),
) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDEEM_DATA", "REDEEM_CENTRAL_DATA", "REDEEM_LANG", "REDEEM_NOW")
    }
    if now:
        env["REDEEM_NOW"] = now
    proc = subprocess.run(
        [*TOOLS[tool], *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode not in ok_codes:
        raise DemoFailed(
            f"`{tool} {' '.join(args)}` exited {proc.returncode}: "
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def run_json(tool: str, *args: str, now: str | None = None) -> Any:
    return json.loads(run(tool, *args, "--json", now=now).stdout)


def set_up() -> dict[str, list[str]]:
    """Central and till, through `redeem-central` and `redeem`; returns the coupons."""
    central, till = OUT / "central", OUT / "terminal"
    info = run_json("redeem-central", "init", "--data", str(central), now=CENTRAL_AT)
    say("setup", f"redeem-central init: root key made, trust anchor {info['fingerprint'][:26]}…")
    added = run_json(
        "redeem-central",
        "campaign",
        "add",
        "--data",
        str(central),
        "--file",
        str(CAMPAIGNS),
        now=CENTRAL_AT,
    )["added"]
    say("setup", f"redeem-central campaign add: {', '.join(added)}")
    coupons: dict[str, list[str]] = {}
    for cid, count in ISSUE.items():
        out = OUT / "coupons" / cid
        res = run_json(
            "redeem-central",
            "issue",
            "--data",
            str(central),
            "--campaign",
            cid,
            "--count",
            str(count),
            "--out",
            str(out),
            now=CENTRAL_AT,
        )
        coupons[cid] = (out / "tokens.txt").read_text().splitlines()
        say(
            "setup",
            f"redeem-central issue {cid}: {res['count']} QR coupon(s), "
            f"{res['token_chars']} chars each -> {out}/",
        )
    out = OUT / "coupons" / "SPEND100-codes"
    run_json(
        "redeem-central",
        "issue",
        "--data",
        str(central),
        "--campaign",
        "SPEND100",
        "--count",
        "2",
        "--codes",
        "--out",
        str(out),
        now=CENTRAL_AT,
    )
    coupons["codes"] = (out / "codes.txt").read_text().splitlines()
    say("setup", f"redeem-central issue SPEND100 --codes: 2 printed flyer codes -> {out}/")
    ledger = OUT / "ledger.cbor"
    pub = run_json(
        "redeem-central", "publish", "--data", str(central), "--out", str(ledger), now=CENTRAL_AT
    )
    say("setup", f"redeem-central publish: signed ledger version {pub['version']} -> {ledger}")
    run_json(
        "redeem",
        "init",
        "--data",
        str(till),
        "--trust-anchor",
        str(central / "trust-anchor.json"),
        "--store",
        STORE,
        "--terminal",
        TILL,
        now=IMPORT_AT,
    )
    say("setup", f"redeem init: till {TILL} of store {STORE} trusts only the root key")
    imp = run_json("redeem", "ledger", "import", str(ledger), "--data", str(till), now=IMPORT_AT)
    say(
        "setup",
        f"redeem ledger import: applied version {imp['applied']}, the till is "
        f"at version {imp['version']} and can work offline",
    )
    return coupons


# ---------------------------------------------------------------- forgeries


def tamper_one_char(token: str) -> str:
    """Change one character of a real token so it still decodes but the signature (the
    last 64 bytes) no longer matches: what a photocopier fault or a forger produces."""
    original = base45.decode(token[len(tokens.PREFIX) :])
    body = token[len(tokens.PREFIX) :]
    for i in range(len(body) - 1, 0, -1):
        for ch in base45.ALPHABET:
            if ch == body[i]:
                continue
            candidate = body[:i] + ch + body[i + 1 :]
            try:
                data = base45.decode(candidate)
            except base45.Base45Error:
                continue
            diff = [k for k, (a, b) in enumerate(zip(data, original, strict=True)) if a != b]
            if len(data) == len(original) and diff and min(diff) >= len(data) - 64:
                return tokens.PREFIX + candidate
    raise DemoFailed("could not tamper with the token")


def attacker_token(genuine: str, campaign: str) -> str:
    """A well-formed token for `campaign` that names our issuer's key id but is signed
    with the attacker's own Ed25519 key."""
    kid = tokens.parse(genuine).message.kid
    claims = tokens.Claims(
        campaign, 0x0BADC0DE0BADC0DE, int(MORNING) - 3600, int(MORNING) + 30 * 86400
    )
    protected = cbor2.dumps({cose.HDR_ALG: cose.ALG_EDDSA, cose.HDR_KID: kid})
    payload = claims.to_cbor()
    attacker = cose.SigningKey.generate()
    signature = attacker.sign(cbor2.dumps(["Signature1", protected, b"", payload]))
    raw = cbor2.dumps(cbor2.CBORTag(cose.TAG_SIGN1, [protected, {}, payload, signature]))
    return tokens.PREFIX + base45.encode(raw)


# ---------------------------------------------------------------- the story

CLOCK = FixedClock(MORNING)
STEP = [0]


def say(when: str, text: str) -> None:
    wide = sum(unicodedata.east_asian_width(ch) in "WF" for ch in when)  # 2 columns each
    print(f"{when:<{6 - wide}} {text}", flush=True)


def step(label: str, d: Decision, done: str = "ACCEPTED") -> Decision:
    STEP[0] += 1
    at = datetime.fromtimestamp(CLOCK.now(), TZ).strftime("%H:%M")
    if d.accepted:
        parts = [f"-{yuan(d.discount_minor)}"] if d.discount_minor or not d.gift_sku else []
        parts += [f"gift {d.gift_sku}"] if d.gift_sku else []
        if done == "RELEASED":
            freed = [x["campaign"] for x in d.coupons if x["status"] == "released"]
            parts = [f"{', '.join(freed)} free to use again"]
        outcome = f"{done:<9} {' + '.join(parts)}"
    else:
        outcome = f'REFUSED   {d.reason.value}: "{d.reason.message()}"'
    seq = f"  [journal #{d.journal_seq}]" if d.journal_seq else ""
    say(at, f"{STEP[0]:>2}. {label:<50} {outcome}{seq}")
    CLOCK.advance(45)
    return d


def basket(name: str, lines: list[tuple[str, str, str, int, int]], **customer: Any) -> Basket:
    doc: dict[str, Any] = {
        "currency": "CNY",
        "lines": [
            {"sku": sku, "category": cat, "name": nm, "quantity": qty, "unit_price_minor": price}
            for sku, cat, nm, qty, price in lines
        ],
    }
    if customer:
        doc["customer"] = customer
    path = OUT / "baskets" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=2))
    return Basket.from_dict(doc)


def session(engine: Engine, c: dict[str, list[str]]) -> None:
    scan = Context(source="camera", cashier=CASHIER)
    pos = Context(source="pos", cashier=CASHIER)
    groceries = basket(
        "groceries-128",
        [("MILK-1L", "dairy", "Milk 1 L", 4, 1800), ("RICE-5KG", "grocery", "Rice 5 kg", 1, 5600)],
    )
    small = basket(
        "snacks-86",
        [
            ("TEA-OOLONG", "drinks", "Oolong tea", 2, 2900),
            ("NUTS-MIX", "snacks", "Mixed nuts", 1, 2800),
        ],
    )
    headphones = basket("headphones-400", [("HP-BT-200", "3c", "BT headphones", 1, 40000)])
    flash = basket("flash-188", [("SKIN-SERUM", "beauty", "Serum", 1, 18800)])
    gold = customer_ref("13800000001")
    regular = basket(
        "regular-customer-60",
        [("COFFEE-BEANS", "drinks", "Coffee", 1, 6000)],
        ref=gold,
        tier="gold",
        new=False,
    )
    newbie = basket(
        "new-customer-45",
        [("BREAD", "bakery", "Sourdough", 1, 4500)],
        ref=customer_ref("13900000002"),
        new=True,
    )
    tote = basket(
        "gift-236",
        [("SHAMPOO", "care", "Shampoo", 2, 6800), ("TOWEL", "home", "Bath towel", 1, 10000)],
    )
    big = basket(
        "stack-300",
        [
            ("RICE-COOKER", "appliance", "Rice cooker", 1, 26000),
            ("LADLE", "home", "Ladle", 2, 2000),
        ],
    )
    cancel = basket("cancelled-120", [("DETERGENT", "home", "Detergent", 2, 6000)])
    typed = basket("flyer-150", [("FRUIT-BOX", "fresh", "Fruit box", 1, 15000)])

    step("SPEND100 on a ¥128.00 grocery basket", engine.redeem(c["SPEND100"][0], groceries, scan))
    step("SPEND100 on a ¥86.00 basket", engine.redeem(c["SPEND100"][1], small, scan))
    step(
        "PCT15 on ¥400.00 headphones (15% is ¥60: capped)",
        engine.redeem(c["PCT15"][0], headphones, scan),
    )
    step("FLASH in the 10:00-11:00 hour, ¥188.00 serum", engine.redeem(c["FLASH"][0], flash, scan))
    step("NEW10 shown by a gold member (not new)", engine.redeem(c["NEW10"][0], regular, scan))
    step("NEW10 shown by a first-time shopper", engine.redeem(c["NEW10"][1], newbie, scan))
    step("TOTE200 on a ¥236.00 basket", engine.redeem(c["TOTE200"][0], tote, scan))
    step(
        "FORGED: SPEND100 token, one character changed",
        engine.redeem(tamper_one_char(c["SPEND100"][2]), groceries, scan),
    )
    step(
        "FORGED: PCT15 token signed with an attacker's key",
        engine.redeem(attacker_token(c["PCT15"][0], "PCT15"), headphones, scan),
    )
    step(
        "REPLAY: the SPEND100 coupon from step 1 again",
        engine.redeem(c["SPEND100"][0], groceries, scan),
    )

    # One shopper, four coupons, a ¥300.00 basket: the till picks the best stack.
    presented = [c["FLASH"][1], c["SPEND100"][2], c["PCT15"][1], c["TOTE200"][1]]
    chosen, refused = engine.best(presented, big, pos)
    value = sum(d.discount_minor for d in chosen)
    names = " + ".join(d.campaign or "" for d in chosen)
    say(
        "",
        f"    best of 4 coupons for a ¥300.00 basket: {names} = -{yuan(value)}"
        + "".join(f"; {d.campaign} left out ({d.reason.value})" for d in refused),
    )
    by_serial = {f"{tokens.parse(t).claims.serial:016x}": t for t in presented}
    for d in chosen:
        step(
            f"POS-1001 hold {d.campaign}",
            engine.hold("POS-1001", by_serial[d.serial or ""], big, pos),
        )
    done = step(
        "POS-1001 paid: commit the held coupons", engine.commit("POS-1001", ctx=pos), "PAID"
    )
    say(
        "",
        "    committed: "
        + ", ".join(
            f"{x['campaign']} "
            + (f"gift {x['gift_sku']}" if x["gift_sku"] else f"-{yuan(x['discount_minor'])}")
            for x in done.coupons
        ),
    )

    step(
        "POS-1002 hold PCT15 on ¥120.00 detergent",
        engine.hold("POS-1002", c["PCT15"][2], cancel, pos),
    )
    step("POS-1002 shopper walks away: release", engine.release("POS-1002", ctx=pos), "RELEASED")
    step("the released PCT15 coupon, next shopper", engine.redeem(c["PCT15"][2], cancel, scan))
    spoken = c["codes"][0].lower().replace("-", " ")
    step(
        f"typed flyer code '{spoken}'",
        engine.redeem(spoken, typed, Context(source="keyboard", cashier=CASHIER)),
    )

    CLOCK.at = AFTERNOON
    step("FLASH at 15:30, ¥188.00 serum", engine.redeem(c["FLASH"][1], flash, scan))


# ---------------------------------------------------------------- after closing


def summary(entries: list[dict[str, Any]]) -> None:
    final = [e for e in entries if e["kind"] in ("redeem", "commit") and e["accepted"]]
    refusals = Counter(
        e["reason"] for e in entries if e["kind"] in ("redeem", "hold") and not e["accepted"]
    )
    flags = Counter(e["reason"] for e in entries if e["kind"] == "flag")
    total = sum(e["discount_minor"] for e in final)
    gifts = sum(1 for e in final if json.loads(e["detail"]).get("gift"))
    say(
        "total",
        f"{len(final)} coupons redeemed, {yuan(total)} off, {gifts} gift(s); "
        f"{sum(refusals.values())} refused; fraud flags: "
        + ", ".join(f"{k} x{n}" for k, n in sorted(flags.items())),
    )
    for reason, n in sorted(refusals.items()):
        say("", f'    refused {reason} x{n}: "{Reason(reason).message()}"')
    say(
        "中文",
        f"今日核销 {len(final)} 张券，共优惠 {yuan(total)}，送出赠品 {gifts} 份；"
        f"拒收 {sum(refusals.values())} 次。",
    )
    for reason in (Reason.BAD_SIGNATURE, Reason.ALREADY_REDEEMED):
        if refusals.get(reason.value):
            say("中文", f"    {reason.value} x{refusals[reason.value]}：{reason.message('zh_CN')}")


LIVE_AT = "2026-11-25T16:00:00+08:00"  # the daemon's afternoon, after the session above


def live_part(coupons: dict[str, list[str]]) -> int:
    """The same till as a running daemon with a camera and an NFC reader."""
    from demo.live import run_live

    fresh: dict[str, str] = {}
    for cid in ("SPEND100", "PCT15", "NEW10"):
        out = OUT / "coupons" / f"{cid}-live"
        run_json(
            "redeem-central",
            "issue",
            "--data",
            str(OUT / "central"),
            "--campaign",
            cid,
            "--out",
            str(out),
            "--no-qr",
            now=CENTRAL_AT,
        )
        fresh[cid] = (out / "tokens.txt").read_text().splitlines()[0]
    say("live", "redeem-central issue: one more SPEND100, PCT15 and NEW10 for the live till")
    good = run_live(
        OUT, OUT / "terminal", TOOLS, LIVE_AT, fresh, tamper_one_char(fresh["SPEND100"]), say
    )
    verify = run_json("redeem", "journal", "verify", "--data", str(OUT / "terminal"), now=LIVE_AT)
    say(
        "close",
        f"redeem journal verify after the live part: {verify['entries']} entries, "
        f"hash chain {'intact' if verify['ok'] else 'BROKEN'}",
    )
    return good if verify["ok"] else -1


def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    print(
        f"edge-redeem demo: store {STORE}, till {TILL}, Wednesday 25 Nov 2026, "
        "Asia/Shanghai, prices in CNY",
        flush=True,
    )
    try:
        coupons = set_up()
        engine = setup.open_engine(OUT / "terminal", CLOCK)
        try:
            session(engine, coupons)
        finally:
            engine.db.close()
        till = str(OUT / "terminal")
        now = datetime.fromtimestamp(CLOCK.now(), TZ).isoformat()
        zh = run(
            "redeem",
            "check",
            coupons["SPEND100"][0],
            "--basket",
            str(OUT / "baskets" / "groceries-128.json"),
            "--data",
            till,
            "--lang",
            "zh_CN",
            now=now,
            ok_codes=(1,),
        )
        say("", f"    redeem check --lang zh_CN on the step-1 coupon: {zh.stdout.strip()}")
        verify = run_json("redeem", "journal", "verify", "--data", till, now=now)
        say(
            "close",
            f"redeem journal verify: {verify['entries']} entries, hash chain "
            f"{'intact' if verify['ok'] else 'BROKEN: ' + str(verify['problem'])}",
        )
        for fmt in ("jsonl", "csv"):
            run(
                "redeem",
                "journal",
                "export",
                "--data",
                till,
                "--format",
                fmt,
                "--out",
                str(OUT / f"journal.{fmt}"),
                now=now,
            )
        say("close", f"redeem journal export: {OUT}/journal.jsonl and {OUT}/journal.csv")
        entries = [
            json.loads(line)
            for line in (OUT / "journal.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        summary(entries)
        if not verify["ok"]:
            return 1
        if live_part(coupons) != 5:
            return 1
    except DemoFailed as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
