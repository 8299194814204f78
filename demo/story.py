"""The scripted day at three tills of one store: terminal A is the real daemon (camera, NFC,
serial scanner, kiosk and POS API), terminal B a till driven through `redeem redeem` and
`redeem sync --once`, terminal C a second daemon beside A, rung up through its POS API. A
and C form a store group (docs/store-peers.md); B is not in it. The central goes away in the
middle of the day; the tills keep redeeming. C refuses a coupon A has just taken, asking A
over the store LAN; B, alone, accepts the same single-use coupon as A, and reconciliation
catches it when the central is back."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from coupons import base45, tokens
from demo.live import Decisions
from demo.tools import DemoFailed, run_json, say, yuan
from drivers.nfc.emulator import Type2Tag
from drivers.scanner.pty import Pty
from terminal.daemon import control


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


@dataclass
class Day:
    """What the story needs from the set-up: the two tills and terminal A's devices."""

    out: Path
    a: Path  # terminal A's data directory (the daemon owns it)
    b: Path  # terminal B's data directory
    names: dict[str, str]  # "A"/"B" -> the terminal id the central gave
    coupons: dict[str, list[str]]
    decisions: Decisions
    tag: Type2Tag
    scanner: Pty
    kiosk_url: str
    pos_token: str
    c: Path  # terminal C's data directory (its own daemon)
    c_url: str  # terminal C's kiosk and POS API
    c_token: str
    central_down: Callable[[], None]
    central_up: Callable[[], None]
    phase: str = "morning"
    number: int = 0
    refusals: dict[str, Counter[str]] = field(
        default_factory=lambda: {"A": Counter(), "B": Counter(), "C": Counter()}
    )
    outcomes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    # ------------------------------------------------------------------ printing

    def show(
        self, till: str, channel: str, label: str, d: dict[str, Any], done: str = ""
    ) -> dict[str, Any]:
        self.number += 1
        if d["accepted"]:
            verdict = f"{done or 'ACCEPTED':<9} -{yuan(d['discount_minor'])}"
            if d.get("gift_sku"):
                verdict += f" + gift {d['gift_sku']}"
        else:
            verdict = f"REFUSED   {d['reason']}"
            self.refusals[till][d["reason"]] += 1
        say(
            self.phase,
            f'{self.number:>2}. {till} {channel:<7} {label:<46} {verdict:<26} "{d["message"]}"',
        )
        self.outcomes.append((till, d))
        return d

    def expect(self, d: dict[str, Any], reason: str) -> None:
        """The story only goes on when the real components decided as it says."""
        if d["reason"] != reason:
            raise DemoFailed(f"step {self.number}: expected {reason}, got {d['reason']}")

    # ------------------------------------------------------------------ terminal A

    def camera(self, label: str, total: int) -> dict[str, Any]:
        self.decisions.sale(total)
        return self.show("A", "camera", label, self.decisions.next("counter-camera")["decision"])

    def nfc(self, label: str, total: int, **customer: Any) -> dict[str, Any]:
        self.decisions.sale(total, **customer)
        self.tag.place()
        try:
            return self.show("A", "nfc", label, self.decisions.next("nfc-reader")["decision"])
        finally:
            self.tag.remove()

    def serial(self, label: str, total: int, token: str) -> dict[str, Any]:
        self.decisions.sale(total)
        self.scanner.write(token.encode() + b"\r")  # a scanner in USB-COM mode ends with CR
        return self.show("A", "serial", label, self.decisions.next("hand-scanner")["decision"])

    def pos(
        self,
        path: str,
        body: dict[str, Any] | None = None,
        method: str = "POST",
        till: str = "A",
    ) -> dict[str, Any]:
        """One call to a till's POS API (A's, or C's) as the till software makes it (its
        bearer token, a fresh idempotency key per state change)."""
        token, base = (
            (self.c_token, self.c_url) if till == "C" else (self.pos_token, self.kiosk_url)
        )
        headers = {
            "Authorization": f"Bearer {token}",
            "Idempotency-Key": uuid.uuid4().hex,
        }
        url = f"{base}/api/v1{path}"
        r = requests.request(method, url, json=body, headers=headers, timeout=10)
        if r.status_code >= 400:
            raise DemoFailed(f"POS API {path}: {r.status_code} {r.text}")
        doc: dict[str, Any] = r.json()
        return doc

    def pos_checkout(self, token: str) -> None:
        """The till software's two-phase checkout over the POS API: open, apply (hold),
        read the best combination, commit on payment."""
        basket = {
            "currency": "CNY",
            "lines": [
                {"sku": "SHAMPOO", "category": "care", "quantity": 2, "unit_price_minor": 6800},
                {"sku": "TOWEL", "category": "home", "quantity": 1, "unit_price_minor": 10000},
            ],
        }
        opened = self.pos("/checkouts", {"basket": basket, "cashier": "C07"})
        cid = opened["checkout_id"]
        applied = self.pos(f"/checkouts/{cid}/coupons", {"code": token})
        total = yuan(opened["basket_total_minor"])
        label = f"checkout {total}: apply PCT15 (held)"
        self.expect(self.show("A", "pos-api", label, applied["decision"], "HELD"), "ok")
        paid = self.pos(f"/checkouts/{cid}/commit")
        self.expect(
            self.show("A", "pos-api", "payment done: commit the held coupon", paid, "PAID"), "ok"
        )

    def pos_best(self, tokens_shown: list[str]) -> None:
        """One shopper hands over several coupons at the till: the POS API holds each one
        the rules let it hold, names the best combination for the basket, and the payment
        commits it."""
        basket = {
            "currency": "CNY",
            "lines": [
                {"sku": "SERUM", "category": "care", "quantity": 1, "unit_price_minor": 18800},
                {"sku": "KETTLE", "category": "home", "quantity": 1, "unit_price_minor": 11200},
            ],
        }
        opened = self.pos("/checkouts", {"basket": basket, "cashier": "C07"})
        cid, total = opened["checkout_id"], yuan(opened["basket_total_minor"])
        names = {}
        for token in tokens_shown:
            d = self.pos(f"/checkouts/{cid}/coupons", {"code": token})["decision"]
            names[d.get("serial")] = d.get("campaign")
            self.show("A", "pos-api", f"checkout {total}: apply {d.get('campaign')}", d, "HELD")
        best = self.pos(f"/checkouts/{cid}", method="GET")["best"]
        picked = " + ".join(str(names.get(s, s)) for s in best["coupons"]) or "none"
        say(
            self.phase,
            f"    best combination of the coupons held: {picked} = -{yuan(best['discount_minor'])}"
            f" (worth {yuan(best['value_minor'])} with the gift)",
        )
        paid = self.pos(f"/checkouts/{cid}/commit")
        self.expect(
            self.show("A", "pos-api", "payment done: commit the held coupons", paid, "PAID"), "ok"
        )

    # ------------------------------------------------------------------ terminal C

    def till_c(self, label: str, total: int, token: str) -> dict[str, Any]:
        basket = {"currency": "CNY", "total_minor": total}
        cid = self.pos("/checkouts", {"basket": basket, "cashier": "C21"}, till="C")["checkout_id"]
        applied = self.pos(f"/checkouts/{cid}/coupons", {"code": token}, till="C")
        return self.show("C", "pos-api", label, applied["decision"])

    def store_group(self, timeout_s: float = 30.0) -> None:
        """Wait until A and C hear each other (each lists the other in its ledger, and its
        hellos arrive); a sync round brings a ledger that lists a till enrolled later."""
        deadline = time.monotonic() + timeout_s
        while True:
            up = {t: self._peers_up(t) for t in ("A", "C")}
            if up["A"] and up["C"]:
                say(
                    self.phase,
                    f"    store group: A ({self.names['A']}) and C ({self.names['C']}) hear "
                    "each other on the store LAN (signed UDP); B is not in it",
                )
                return
            if time.monotonic() > deadline:
                raise DemoFailed(f"tills A and C never formed their store group: {up}")
            for t in ("A", "C"):
                if not up[t]:
                    self._round(t)
            time.sleep(0.5)

    def _peers_up(self, till: str) -> bool:
        other = self.names["C" if till == "A" else "A"]
        status = control.request(self._data(till), {"op": "peers"}, timeout=5)
        return any(p["terminal"] == other and p["up"] for p in status.get("peers") or [])

    def _data(self, till: str) -> Path:
        return {"A": self.a, "B": self.b, "C": self.c}[till]

    # ------------------------------------------------------------------ terminal B

    def till_b(self, label: str, total: int, token: str) -> dict[str, Any]:
        basket = self.out / "baskets" / f"b-{self.number + 1:02d}.json"
        basket.parent.mkdir(parents=True, exist_ok=True)
        basket.write_text(json.dumps({"currency": "CNY", "total_minor": total}))
        d = run_json(
            "redeem",
            "redeem",
            token,
            "--basket",
            str(basket),
            "--data",
            str(self.b),
            "--cashier",
            "C12",
            ok_codes=(0, 1),
        )
        return self.show("B", "cli", label, d)

    # ------------------------------------------------------------------ sync

    def sync(self, till: str) -> dict[str, Any]:
        """`redeem sync --once`: for A the daemon runs the round (it owns the journal)."""
        return self._show_round(till, self._round(till))

    def sync_new_ledger(self, till: str, timeout_s: float = 20.0) -> dict[str, Any]:
        """Sync until the round brings a newer ledger: what the uploads changed reaches
        the tills with the central publisher's next tick (every 0.5 s in the demo)."""
        deadline = time.monotonic() + timeout_s
        while True:
            r = self._round(till)
            led = r.get("ledger") or {}
            if not r["ok"] or led.get("to") != led.get("from") or time.monotonic() > deadline:
                return self._show_round(till, r)
            time.sleep(0.2)

    def _round(self, till: str) -> dict[str, Any]:
        r = run_json("redeem", "sync", "--once", "--data", str(self._data(till)), ok_codes=(0, 1))
        return r  # type: ignore[no-any-return]

    def _show_round(self, till: str, r: dict[str, Any]) -> dict[str, Any]:
        j, led = r.get("journal") or {}, r.get("ledger") or {}
        if r["ok"]:
            ledger = (
                f"ledger v{led.get('to')} current"
                if led.get("not_modified") or led.get("from") == led.get("to")
                else f"ledger v{led.get('from')} -> v{led.get('to')}"
            )
            text = (
                f"sent {entries(j.get('sent', 0))}, central stored "
                f"{j.get('accepted', 0)} new, backlog {j.get('backlog', 0)}; {ledger}"
            )
        else:
            text = f"FAILED ({r['error_kind']}): {r['error']}"
        say(self.phase, f"    sync {till} ({self.names[till]}): {text}")
        return r

    def backlog(self, till: str) -> dict[str, Any]:
        data = self._data(till)
        return run_json("redeem", "sync", "status", "--data", str(data))  # type: ignore[no-any-return]


def play(day: Day, central_report: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The scripted day. Returns what the summary needs besides the report."""
    c = day.coupons
    spend, pct = c["SPEND100"], c["PCT15"]
    x, y = spend[2], spend[3]  # x: redeemed twice while offline; y: once, at B
    z = spend[5]  # z: taken at A while offline, refused at C (A's store group)

    def ok(d: dict[str, Any]) -> None:
        day.expect(d, "ok")

    def no(d: dict[str, Any], reason: str) -> None:
        day.expect(d, reason)

    ok(day.camera("SPEND100 on a phone, ¥128.00 sale", 12800))
    ok(day.camera("PCT15 on paper, ¥400.00 sale (15% capped)", 40000))
    ok(day.nfc("NEW10 card tapped, new shopper, ¥50.00", 5000, new=True))
    ok(day.serial("SPEND100 flyer, ¥150.00 sale", 15000, spend[1]))
    forged = tamper_one_char(spend[4])
    no(day.serial("FORGED SPEND100 (one character changed)", 15000, forged), "bad_signature")
    day.pos_checkout(pct[1])
    tote, flash = c["TOTE200"], c["FLASH"]
    day.pos_best([pct[2], tote[1]])
    no(day.till_b("TOTE200 (free tote over ¥200), ¥150.00 sale", 15000, tote[0]), "below_minimum")
    ok(day.till_b("the same TOTE200, now a ¥236.00 sale", 23600, tote[0]))
    no(day.till_b("FLASH coupon outside its flash-sale hours", 18800, flash[0]), "outside_hours")
    ok(day.till_b("SPEND100 at the second till, ¥200.00", 20000, spend[4]))
    say(day.phase, "    the tills sync with the central (online):")
    day.sync("A")
    day.sync("B")
    day.sync("C")
    day.store_group()
    say(day.phase, "    the central publishes the next ledger version; B pulls it:")
    day.sync_new_ledger("B")
    used = day.till_b("the SPEND100 from step 1 (used at A), ¥160.00", 16000, spend[0])
    no(used, "already_redeemed")

    day.phase = "offline"
    day.central_down()
    failed = day.sync("A")
    if failed["ok"]:
        raise DemoFailed("a sync round succeeded with the central stopped")
    ok(day.serial("SPEND100 coupon X, ¥168.00 sale", 16800, x))
    ok(day.till_b("the SAME coupon X at the second till, ¥120.00", 12000, x))
    ok(day.till_b("SPEND100 coupon Y, ¥300.00", 30000, y))
    ok(day.serial("SPEND100 coupon Z, ¥150.00 sale", 15000, z))
    no(day.till_c("the SAME coupon Z at till C, beside A", 15000, z), "already_redeemed")
    waiting = {t: day.backlog(t)["backlog"] for t in ("A", "B", "C")}
    say(
        day.phase,
        "    A and B both accepted coupon X (B is in no store group: the offline trade-off); "
        "C asked A before accepting coupon Z and refused it; waiting to sync: "
        f"A {entries(waiting['A'])}, B {entries(waiting['B'])}, C {entries(waiting['C'])}",
    )

    day.phase = "online"
    day.central_up()
    day.sync("A")
    day.sync("B")
    report = central_report()
    doubles = [f for f in report["open_flags"] if f["kind"] == "double_redemption"]
    serial_x = f"{tokens.parse(x).claims.serial:016x}"
    caught = [f for f in doubles if f["serial"] == serial_x]
    for f in caught:
        say(
            day.phase,
            f"    central reconciliation: FRAUD FLAG double_redemption of coupon X "
            f"(serial {f['serial']}, campaign {f['campaign']}), raised on {f['terminal']}'s "
            "upload; the next ledger version lists the serial",
        )
    if not caught:
        raise DemoFailed("the central did not flag the double redemption of coupon X")
    day.sync_new_ledger("A")
    no(day.serial("coupon X a third time, ¥168.00", 16800, x), "already_redeemed")
    no(day.serial("coupon Y (used offline at B), ¥300.00", 30000, y), "already_redeemed")
    no(day.till_b("coupon X again at the second till, ¥120.00", 12000, x), "already_redeemed")
    say(day.phase, "    closing: the tills sync")
    day.sync("A")
    day.sync("B")
    day.sync("C")
    return {"serial_x": serial_x}


def entries(n: int) -> str:
    return f"{n} journal {'entry' if n == 1 else 'entries'}"
