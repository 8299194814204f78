"""Terminal A's devices and the daemon's side of the demo: a generated video of coupons held
up to the camera, an NTAG215 emulated through nfcpy's udp: frontend, the daemon's config,
and reading the decisions the daemon publishes over its control socket."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import ndef
import numpy as np
import segno

from terminal.daemon import control

FPS = 15
HOLD_FRAMES = 15  # a shopper holds a phone up for a second
GAP_FRAMES = 20  # and takes it away for 1.3 s: longer than the camera's debounce
LEAD_FRAMES = 30  # 2 s of an empty counter while the daemon starts
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


def make_video(folder: Path, shown: list[str]) -> tuple[str, int]:
    """A video file (Motion-JPEG in AVI, what many USB webcams send): an empty counter, then
    each code held up in turn. Returns the camera source (the file) and its frame count."""
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
    path = folder / "counter.avi"
    video = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), FPS, (640, 480), False)
    if not video.isOpened():
        raise OSError(f"OpenCV cannot write {path}")
    try:
        for frame in frames:
            noisy = np.clip(frame.astype(np.int16) + rng.integers(-6, 7, frame.shape), 0, 255)
            video.write(noisy.astype(np.uint8))
    finally:
        video.release()
    return str(path), len(frames)


def tag_message(token: str) -> bytes:
    return b"".join(ndef.message_encoder([ndef.Record(COUPON_MIME, "", token.encode())]))


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peers_section(listen: int, others: dict[str, int]) -> str:
    """`[peers]` for a till of the demo's store group: its UDP port on loopback and the
    other tills' (docs/store-peers.md); no mDNS, the addresses are given."""
    book = ", ".join(f'"{t}@127.0.0.1:{port}"' for t, port in others.items())
    return (
        f'[peers]\nenabled = true\nlisten = "127.0.0.1:{listen}"\naddresses = [{book}]\n'
        "discovery = false\n"
    )


def _write_till(
    path: Path, name: str, till: Path, cashier: str, body: str, kiosk_port: int, central: str,
    peers: str,
) -> Path:  # fmt: skip
    """A till's daemon config: `body` holds its inputs and outputs (none for a till rung up
    through its POS API only)."""
    path.write_text(f"""# Terminal {name} of the demo: written by demo/live.py
[terminal]
data = "{till}"
lang = "en"
mode = "standalone"
currency = "CNY"
cashier = "{cashier}"
{body}
[kiosk]
host = "127.0.0.1"
port = {kiosk_port}

[sync]
central = "{central}"
interval_s = 30
retry_base_s = 2
max_backoff_s = 10
connect_timeout_s = 2
read_timeout_s = 10

{peers}
[log]
format = "text"
level = "WARNING"
""")
    return path


def write_till_c(path: Path, till: Path, kiosk_port: int, central: str, peers: str) -> Path:
    """Terminal C: the till beside A, rung up through its POS API, in A's store group."""
    return _write_till(path, "C", till, "C21", "", kiosk_port, central, peers)


def write_config(
    path: Path,
    till: Path,
    video: str,
    nfc_port: int,
    scanner: Path,
    kiosk_port: int,
    central: str,
    peers: str = "",
) -> Path:
    devices = f"""
[[input]]
name = "counter-camera"
kind = "camera"
source = "{video}"
fps = {FPS}

[[input]]
name = "nfc-reader"
kind = "nfc"
path = "udp:127.0.0.1:{nfc_port}"

[[input]]
name = "hand-scanner"
kind = "serial"
port = "{scanner}"

[[output]]
name = "log"
kind = "log"
"""
    return _write_till(path, "A", till, "C07", devices, kiosk_port, central, peers)


class Decisions:
    """The decisions terminal A's daemon publishes (control socket, long poll)."""

    def __init__(self, till: Path, say: Callable[[str, str], None]) -> None:
        self.till, self.say = till, say
        self.seen = 0

    def _poll(self, wait_s: float) -> list[dict[str, Any]]:
        reply = control.request(
            self.till, {"op": "decisions", "after": self.seen, "wait_s": wait_s}
        )
        pubs: list[dict[str, Any]] = reply["decisions"]
        if pubs:
            self.seen = pubs[-1]["number"]
        return pubs

    def next(self, source: str, timeout: float = 20.0) -> dict[str, Any]:
        """The next decision published for a scan from the input `source` that is not an
        'enter the total' notice (the feed also carries the POS API's decisions); ignored
        scans (not coupons) are shown on the way."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pub in self._poll(max(0.1, min(5.0, deadline - time.monotonic()))):
                d = pub["decision"]
                if d is None:
                    self.say("", f"    {pub['source']}: not a coupon (a web link), ignored")
                elif pub["source"] == source and d["reason"] != "needs_total":
                    return pub
        raise TimeoutError("no decision from the daemon in time")

    def sale(self, total_minor: int, **customer: Any) -> None:
        """The cashier keys in the shopper's total (a new standalone sale)."""
        doc: dict[str, Any] = {"currency": "CNY", "total_minor": total_minor}
        if customer:
            doc["customer"] = customer
        control.request(self.till, {"op": "basket", "basket": doc})
