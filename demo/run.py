"""`make demo` (`python -m demo.run`): one command starts the central service, enrolls three
tills, runs terminal A as the real daemon with a simulated camera (a generated video), an
NFC reader (nfcpy's udp: emulation) and a serial scanner (a pty), serves its kiosk, runs
terminal C as a second daemon in A's store group, and plays a day of shopping with an
offline period: C refuses what A took, and a double redemption at B is caught at sync.
Then it keeps the kiosk up until Ctrl-C (not with --no-wait or DEMO_WAIT=0).

Everything is written under ./demo-out/ (wiped first). Every process runs on the real
clock (no REDEEM_NOW): the campaigns' validity is set around today when they are loaded.
Servers bind to 127.0.0.1 only."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import sys
import time
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any
from zoneinfo import ZoneInfo

import requests

from demo import console, live
from demo.procs import Child, Children, free_port, port_free
from demo.story import Day, play
from demo.tools import TOOLS, DemoFailed, clean_env, run, run_json, say, yuan
from drivers.nfc.emulator import Type2Tag
from drivers.scanner.pty import Pty
from terminal.daemon import control

OUT = Path("demo-out")
CAMPAIGNS = Path(__file__).with_name("campaigns.toml")
STORE = "SH-PD-001"
ISSUE = {"SPEND100": 6, "PCT15": 3, "NEW10": 1, "TOTE200": 2, "FLASH": 1}
CENTRAL_PORT = 8700


class Stop(Exception):
    """SIGINT or SIGTERM: stop everything in order and exit 0."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo.run", description=__doc__.split("\n")[0])
    p.add_argument(
        "--no-wait",
        action="store_true",
        default=os.environ.get("DEMO_WAIT", "1") == "0",
        help="exit after the summary instead of keeping the kiosk up (env DEMO_WAIT=0)",
    )
    p.add_argument(
        "--kiosk-port", type=int, default=8080, help="default 8080 (a free port if taken)"
    )
    p.add_argument(
        "--central-port",
        type=int,
        default=CENTRAL_PORT,
        help=f"default {CENTRAL_PORT} (a free port if taken)",
    )
    return p.parse_args(argv)


# ---------------------------------------------------------------- the central


def campaigns_for_today(out: Path) -> Path:
    """demo/campaigns.toml with the validity window moved around today, as JSON (what
    `redeem-central campaign add` takes besides TOML): the demo runs on the real clock."""
    doc = tomllib.loads(CAMPAIGNS.read_text(encoding="utf-8"))
    now = datetime.now(UTC).replace(microsecond=0)
    for camp in doc["campaign"]:
        if "valid_from" in camp or "valid_until" in camp:
            camp["valid_from"] = (now - timedelta(days=7)).isoformat()
            camp["valid_until"] = (now + timedelta(days=30)).isoformat()
        if "hours" in camp:
            camp["hours"] = hours_away_from(now, camp["hours"], camp.get("timezone", "UTC"))
    path = out / "campaigns.json"
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def hours_away_from(now: datetime, hours: list[str], zone: str) -> list[str]:
    """A flash sale's hours, moved three hours on when the demo runs inside one of them:
    the story shows the campaign refusing a coupon outside its hours whenever it runs."""
    local = now.astimezone(ZoneInfo(zone))
    minute = local.hour * 60 + local.minute
    spans = [
        tuple(int(h) * 60 + int(m) for h, m in (t.split(":") for t in w.split("-"))) for w in hours
    ]
    if not any(start <= minute < end for start, end in spans):
        return hours
    return [
        f"{(start // 60 + 3) % 24:02d}:{start % 60:02d}-{(end // 60 + 3) % 24:02d}:{end % 60:02d}"
        for start, end in spans
    ]


def at_central(central: Path) -> list[str]:
    """The data directory and the master key file (made by init beside it) that every
    `redeem-central` command of the demo names; a real central reads the key from its
    systemd credential (docs/deploy-central.md)."""
    return ["--data", str(central), "--master-key-file", str(central.parent / "master-key")]


def set_up_central(central: Path) -> tuple[dict[str, list[str]], str]:
    info = run_json("redeem-central", "init", *at_central(central))
    say("setup", f"redeem-central init: root key made, trust anchor {info['fingerprint']}")
    if info.get("master_key_created"):
        say(
            "setup",
            f"master key (opens the keys sealed in the database): {info['master_key_created']}",
        )
    added = run_json(
        "redeem-central",
        "campaign",
        "add",
        *at_central(central),
        "--file",
        str(campaigns_for_today(OUT)),
    )["added"]
    say("setup", f"redeem-central campaign add: {', '.join(added)}")
    coupons: dict[str, list[str]] = {}
    for cid, count in ISSUE.items():
        out = OUT / "coupons" / cid
        res = run_json(
            "redeem-central",
            "issue",
            *at_central(central),
            "--campaign",
            cid,
            "--count",
            str(count),
            "--out",
            str(out),
        )
        coupons[cid] = (out / "tokens.txt").read_text().splitlines()
        say("setup", f"redeem-central issue {cid}: {res['count']} QR coupon(s) -> {out}/")
    return coupons, str(info["fingerprint"])


def start_central(children: Children, central: Path, port: int) -> tuple[Child, str]:
    cmd = [*TOOLS["redeem-central"], "serve", *at_central(central)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    # One store, a few tills: the publisher may tick often (a chain keeps the 5 s default).
    cmd += ["--publish-interval-s", "0.5"]
    child = children.start(
        "central",
        cmd,
        clean_env(REDEEM_CENTRAL_LOG_LEVEL="warning"),
        OUT / "central.log",
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            health = requests.get(url + "/healthz", timeout=1)
            if health.status_code == 200:
                return child, url
        except requests.ConnectionError:
            pass
        if child.proc.poll() is not None or time.monotonic() > deadline:
            raise DemoFailed(f"redeem-central serve did not start; see {OUT}/central.log")
        time.sleep(0.05)


def console_login(central: Path, url: str) -> str:
    """An admin user for the head-office console with a new random password, printed with
    the console's address (the demo serves on 127.0.0.1 only, so the password goes no
    further than this terminal)."""
    password = secrets.token_urlsafe(12)
    args = ("user", "add", *at_central(central), "--name", "admin", "--role", "admin")
    run("redeem-central", *args, "--password-stdin", stdin=password + "\n")
    say("setup", f"console: {url}/ (log in as admin, password {password})")
    return password


def enroll(central: Path, url: str, till: Path, fingerprint: str) -> str:
    code = run_json("redeem-central", "enroll-code", *at_central(central), "--store", STORE)
    done = run_json(
        "redeem",
        "enroll",
        "--data",
        str(till),
        "--central",
        url,
        "--code",
        code["code"],
        "--store",
        STORE,
        "--fingerprint",
        fingerprint,
    )
    first = done["first_sync"] or {}
    version = (first.get("ledger") or {}).get("to")
    say(
        "setup",
        f"redeem enroll --code {code['code']}: terminal {done['terminal']} of store "
        f"{done['store']}, anchor checked, ledger v{version}",
    )
    return str(done["terminal"])


# ---------------------------------------------------------------- terminal A


def start_daemon(children: Children, cfg: Path, till: Path, name: str = "daemon") -> Child:
    child = children.start(
        name, [*TOOLS["redeem"], "run", "--config", str(cfg)], clean_env(), OUT / f"{name}.log"
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            if control.request(till, {"op": "status"}, timeout=2).get("ok"):
                return child
        except (OSError, ValueError):
            pass
        if child.proc.poll() is not None or time.monotonic() > deadline:
            raise DemoFailed(f"the {name} did not start; see {OUT}/{name}.log")
        time.sleep(0.05)


def kiosk_port(wanted: int) -> int:
    if port_free(wanted):
        return wanted
    port = free_port()
    say("setup", f"NOTE: port {wanted} is taken on 127.0.0.1; the kiosk uses port {port}")
    return port


# ---------------------------------------------------------------- the summary


def summary(day: Day, report: dict[str, Any], central_dir: Path) -> None:
    say(
        "summary",
        f"central report (redeem-central report {' '.join(at_central(central_dir))} --json):",
    )
    for t in report["by_terminal"]:
        till = next(k for k, v in day.names.items() if v == t["terminal"])
        say(
            "",
            f"    terminal {till} {t['terminal']}: {t['redemptions']} redemptions, "
            f"{yuan(t['discount_minor'])} off",
        )
    for till in ("A", "B", "C"):
        reasons = ", ".join(f"{r} x{n}" for r, n in sorted(day.refusals[till].items()))
        say("", f"    refused at {till}: {reasons or 'none'}")
    kinds = report["open_flags_by_kind"]
    say(
        "",
        "    fraud flags at the central: "
        + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())),
    )
    for till in ("A", "B", "C"):
        s = day.backlog(till)
        say(
            "",
            f"    sync {till}: backlog {s['backlog']}, acknowledged #{s['acked_seq']} of "
            f"#{s['head_seq']}, ledger v{s['ledger_version']}, clock "
            f"{'ok' if s['clock_ok'] else 'UNTRUSTED'}",
        )
    say("", f"    central ledger version: v{report['ledger_version']}")


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    children = Children()
    tag: Type2Tag | None = None
    scanner: Pty | None = None
    code = 0
    try:
        if OUT.exists():
            shutil.rmtree(OUT)
        OUT.mkdir()
        out = OUT.resolve()
        central_dir, a, b = out / "central", out / "terminal-a", out / "terminal-b"
        c = out / "terminal-c"
        print(f"edge-redeem demo: store {STORE}, three tills, one central; output in {out}/")
        coupons, fingerprint = set_up_central(central_dir)
        port = args.central_port if port_free(args.central_port) else free_port()
        holder: dict[str, Child] = {}
        holder["central"], url = start_central(children, central_dir, port)
        say("setup", f"redeem-central serve: {url} (pid {holder['central'].pid})")
        console_password = console_login(central_dir, url)
        names = {"A": enroll(central_dir, url, a, fingerprint)}
        names["B"] = enroll(central_dir, url, b, fingerprint)
        names["C"] = enroll(central_dir, url, c, fingerprint)

        pin = f"{secrets.randbelow(10**6):06d}"
        run("redeem", "manager", "set-pin", "--data", str(a), env=clean_env(REDEEM_MANAGER_PIN=pin))
        pos_token = run_json("redeem", "pos-token", "--data", str(a), "--till", "pos-1")["token"]
        c_token = run_json("redeem", "pos-token", "--data", str(c), "--till", "pos-2")["token"]
        udp = {"A": live.free_udp_port(), "C": live.free_udp_port()}

        shown = [coupons["SPEND100"][0], "https://shop.example.com/menu", coupons["PCT15"][0]]
        video, frames = live.make_video(out / "video", shown)
        tag = Type2Tag(
            bytes.fromhex("04a1b2c3d4e5f6"), live.tag_message(coupons["NEW10"][0]), "NTAG215"
        )
        tag.start()
        tag.remove()  # on the counter, not on the reader yet
        scanner = Pty(out / "scanner")
        kport = kiosk_port(args.kiosk_port)
        peers_a = live.peers_section(udp["A"], {names["C"]: udp["C"]})
        cfg = live.write_config(
            out / "terminal-a.toml", a, video, tag.port, scanner.path, kport, url, peers_a
        )
        daemon = start_daemon(children, cfg, a)
        c_port = free_port()
        peers_c = live.peers_section(udp["C"], {names["A"]: udp["A"]})
        cfg_c = live.write_till_c(out / "terminal-c.toml", c, c_port, url, peers_c)
        daemon_c = start_daemon(children, cfg_c, c, "daemon-c")
        kiosk = f"http://127.0.0.1:{kport}"
        say(
            "setup",
            f"redeem run --config {cfg} (pid {daemon.pid}): camera plays {video} "
            f"({frames} frames at {live.FPS} fps), NFC on udp:127.0.0.1:{tag.port}, "
            f"scanner on {scanner.path}",
        )
        say(
            "setup",
            f"redeem run --config {cfg_c} (pid {daemon_c.pid}): terminal C, POS API on "
            f"127.0.0.1:{c_port}; A and C are a store group (UDP {udp['A']} and {udp['C']})",
        )
        print(
            "\n"
            + "=" * 72
            + f"\n  Kiosk (terminal A):  {kiosk}/\n  Manager dashboard:   {kiosk}/manager"
            + f"\n  Manager PIN:         {pin}\n"
            + "=" * 72
            + f"\npids: central {holder['central'].pid} daemon {daemon.pid} "
            + f"daemon-c {daemon_c.pid}\n",
            flush=True,
        )

        def central_down() -> None:
            stopped = children.stop(holder["central"])
            say(
                "offline",
                f"the central goes away: SIGTERM, pid {stopped.pid} {stopped.ended()} "
                f"in {stopped.took_s:.2f} s",
            )

        def central_up() -> None:
            holder["central"], _ = start_central(children, central_dir, port)
            say("online", f"the central is back on {url} (pid {holder['central'].pid})")
            print(f"pids: central {holder['central'].pid}", flush=True)

        def central_report() -> dict[str, Any]:
            doc: dict[str, Any] = run_json("redeem-central", "report", *at_central(central_dir))
            return doc

        day = Day(
            out=out,
            a=a,
            b=b,
            names=names,
            coupons=coupons,
            decisions=live.Decisions(a, say),
            tag=tag,
            scanner=scanner,
            kiosk_url=kiosk,
            pos_token=pos_token,
            c=c,
            c_url=f"http://127.0.0.1:{c_port}",
            c_token=c_token,
            central_down=central_down,
            central_up=central_up,
        )
        play(day, central_report)
        summary(day, central_report(), central_dir)
        console.show_day(url, console_password, out)
        say("", f"    elapsed: {time.monotonic() - started:.1f} s")
        if not args.no_wait:
            print(
                f"\nThe kiosk stays up at {kiosk}/ (manager PIN {pin}). Press Ctrl-C to stop.",
                flush=True,
            )
            while True:
                for child in children.running:
                    if child.proc.poll() is not None:
                        raise DemoFailed(f"the {child.name} exited {child.proc.returncode}")
                time.sleep(0.5)
    except Stop as why:
        print(f"\n{why}: stopping", flush=True)
    except (DemoFailed, TimeoutError, OSError, ValueError, requests.RequestException) as exc:
        print(f"demo failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        print(
            f"(logs: {OUT}/central.log, {OUT}/daemon.log, {OUT}/daemon-c.log)",
            file=sys.stderr,
            flush=True,
        )
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for child in children.stop_all():
            say(
                "stop",
                f"{child.name} (pid {child.pid}) {child.ended()} in {child.took_s:.2f} s",
            )
            if not child.clean:
                code = 1
        if tag is not None:
            tag.stop()
            say("stop", "NFC tag emulator stopped")
        if scanner is not None:
            scanner.close()
    say("stop", f"done in {time.monotonic() - started:.1f} s, exit code {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
