"""Part two of the demo: the real daemon (`redeem run`) with a camera that plays a generated
video of coupons held up to it and an NFC reader with a tag on it (nfcpy's udp: frontend and
an emulated NTAG215). The demo plays the cashier: it keys in each shopper's total over the
daemon's control socket and prints every decision as the daemon publishes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import ndef
import numpy as np
import segno

from drivers.nfc.emulator import Type2Tag
from terminal.daemon import control

FPS = 15
HOLD_FRAMES = 20  # a shopper holds a phone up for about 1.3 s
GAP_FRAMES = 25  # and takes it away for 1.7 s: longer than the camera's debounce
LEAD_FRAMES = 45  # 3 s of an empty counter while the daemon starts
COUPON_MIME = "application/vnd.edge-redeem.coupon"


def qr_image(text: str, size: int) -> np.ndarray:
    matrix = np.array(
        [
            [0 if dark else 255 for dark in row]
            for row in segno.make(text, error="m", micro=False).matrix
        ],
        dtype=np.uint8,
    )
    matrix = np.pad(matrix, 4, constant_values=255)
    return cv2.resize(matrix, (size, size), interpolation=cv2.INTER_NEAREST)


def make_video(folder: Path, shown: list[str]) -> str:
    """An image sequence: an empty counter, then each code held up in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    counter = np.full((480, 640), 200, dtype=np.uint8)
    frames: list[np.ndarray] = [counter] * LEAD_FRAMES
    for i, text in enumerate(shown):
        code = qr_image(text, 300)
        held = counter.copy()
        x, y = 170 + 20 * (i % 3), 90
        held[y : y + 300, x : x + 300] = code
        frames += [held] * HOLD_FRAMES + [counter] * GAP_FRAMES
    for n, frame in enumerate(frames):
        noisy = np.clip(frame.astype(np.int16) + rng.integers(-6, 7, frame.shape), 0, 255)
        cv2.imwrite(str(folder / f"{n:05d}.png"), noisy.astype(np.uint8))
    return str(folder / "%05d.png")


def tag_message(token: str) -> bytes:
    return b"".join(ndef.message_encoder([ndef.Record(COUPON_MIME, "", token.encode())]))


def config(path: Path, till: Path, video: str, nfc_port: int) -> Path:
    path.write_text(f"""# The demo daemon: written by demo/live.py
[terminal]
data = "{till}"
lang = "en"
mode = "standalone"
currency = "CNY"
cashier = "C07"

[[input]]
name = "counter-camera"
kind = "camera"
source = "{video}"
fps = {FPS}

[[input]]
name = "nfc-reader"
kind = "nfc"
path = "udp:127.0.0.1:{nfc_port}"

[[output]]
name = "log"
kind = "log"

[log]
format = "text"
level = "WARNING"
""")
    return path


class Live:
    def __init__(
        self,
        out: Path,
        till: Path,
        tools: dict[str, list[str]],
        now: str,
        say: Callable[[str, str], None],
    ) -> None:
        self.out, self.till, self.tools, self.now, self.say = out, till, tools, now, say
        self.seen = 0

    def _decisions(self, wait_s: float) -> list[dict[str, Any]]:
        reply = control.request(
            self.till, {"op": "decisions", "after": self.seen, "wait_s": wait_s}
        )
        pubs: list[dict[str, Any]] = reply["decisions"]
        if pubs:
            self.seen = pubs[-1]["number"]
        return pubs

    def next_decision(self, timeout: float = 20.0) -> dict[str, Any]:
        """The next published decision that is not an 'enter the total' notice; ignored
        scans (not coupons) are shown on the way."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pub in self._decisions(min(5.0, deadline - time.monotonic())):
                d = pub["decision"]
                if d is None:
                    self.say("  live", f"{pub['source']}: not a coupon (a web link), ignored")
                elif d["reason"] != "needs_total":
                    return pub
        raise TimeoutError("no decision from the daemon in time")

    def sale(self, total_minor: int, **customer: Any) -> None:
        doc: dict[str, Any] = {"currency": "CNY", "total_minor": total_minor}
        if customer:
            doc["customer"] = customer
        control.request(self.till, {"op": "basket", "basket": doc})

    def show(self, label: str, pub: dict[str, Any]) -> dict[str, Any]:
        d = pub["decision"]
        if d["accepted"]:
            verdict = f"ACCEPTED  -¥{d['discount_minor'] // 100}.{d['discount_minor'] % 100:02d}"
        else:
            verdict = f'REFUSED   {d["reason"]}: "{d["message"]}"'
        self.say(
            "  live",
            f"{label:<46} {verdict}  [{pub['source']}, "
            f"{pub['latency_ms']:.1f} ms, journal #{d['journal_seq']}]",
        )
        return d


def run_live(
    out: Path,
    till: Path,
    tools: dict[str, list[str]],
    now: str,
    coupons: dict[str, str],
    forged: str,
    say: Callable[[str, str], None],
) -> int:
    """Returns the number of decisions that went as the story expects (all of them)."""
    shown = [
        coupons["SPEND100"],
        coupons["PCT15"],
        "https://shop.example.com/menu",
        coupons["SPEND100"],
        forged,
    ]
    video = make_video(out / "video", shown)
    tag = Type2Tag(bytes.fromhex("04a1b2c3d4e5f6"), tag_message(coupons["NEW10"]), "NTAG215")
    tag.start()
    tag.remove()  # on the counter, not on the reader yet
    cfg = config(out / "daemon.toml", till, video, tag.port)
    say(
        "live",
        f"redeem run --config {cfg}: camera plays {len(os.listdir(out / 'video'))} "
        f"frames at {FPS} fps, NFC reader on udp:127.0.0.1:{tag.port}",
    )
    env = {**os.environ, "REDEEM_NOW": now}
    log_file = open(out / "daemon.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [*tools["redeem"], "run", "--config", str(cfg)],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    good = 0
    live = Live(out, till, tools, now, say)
    try:
        deadline = time.monotonic() + 20
        while not (till / "control.sock").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the daemon did not start; see demo-out/daemon.log")
            time.sleep(0.05)
        story: list[tuple[str, int, dict[str, Any], str]] = [
            ("camera: SPEND100 on a phone, ¥128.00 sale", 12800, {}, "ok"),
            ("camera: PCT15 on paper, ¥400.00 sale", 40000, {}, "ok"),
            ("camera: the SPEND100 phone again, ¥150.00", 15000, {}, "already_redeemed"),
            ("camera: a forged SPEND100, ¥150.00", 15000, {}, "bad_signature"),
        ]
        for label, total, customer, expect in story:
            live.sale(total, **customer)
            good += live.show(label, live.next_decision())["reason"] == expect
        live.sale(5000, new=True)
        tag.place()
        good += (
            live.show("nfc: NEW10 card tapped, new shopper, ¥50.00", live.next_decision())["reason"]
            == "ok"
        )
        status = control.request(till, {"op": "status"})
        say(
            "  live",
            "inputs: "
            + ", ".join(f"{n} {h['state']} ({h['detail']})" for n, h in status["inputs"].items()),
        )
    finally:
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        took = time.monotonic() - started
        log_file.close()
        tag.stop()
    say("live", f"SIGTERM: the daemon stopped in {took:.2f} s with exit code {code}")
    return good if code == 0 else -1


if __name__ == "__main__":  # pragma: no cover - run through demo.run
    sys.exit("run `python -m demo.run`")
