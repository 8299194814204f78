"""Scan-to-decision latency through the real daemon: a camera (cv2.VideoCapture on a
generated image sequence, paced like a live camera) shows 1,000 different coupons one
after another; each is decoded, handed to the engine worker, redeemed durably (journal
committed, synchronous=FULL) and published. Latency runs from the frame being available to
the decoder to the decision being published. Goal: p99 under 15 ms.

    .venv/bin/python bench/scan_latency.py [--scans N] [--fps F]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import segno  # noqa: E402

from bench._world import (  # noqa: E402
    T0,
    goal,
    machine,
    new_central,
    percentile,
    scratch,
    terminal_for_daemon,
    timed,
)
from coupons.clock import FixedClock  # noqa: E402
from coupons.ledger import Policy  # noqa: E402
from coupons.rules import Basket  # noqa: E402
from terminal.daemon import config as config_mod  # noqa: E402
from terminal.daemon.runner import Daemon, Published  # noqa: E402


def frame_with(text: str) -> np.ndarray:
    matrix = np.array(segno.make(text, error="m", micro=False).matrix, dtype=np.uint8)
    code = np.pad((1 - matrix) * 255, 4, constant_values=255).astype(np.uint8)
    code = cv2.resize(code, (300, 300), interpolation=cv2.INTER_NEAREST)
    frame = np.full((480, 640), 190, dtype=np.uint8)
    frame[90:390, 170:470] = code
    return frame


def write_frames(frames: Path, tokens: list[str], blanks: int = 15) -> None:
    """An image sequence for cv2.VideoCapture: `blanks` empty counters, then one frame per
    coupon."""
    frames.mkdir()
    blank = np.full((480, 640), 190, dtype=np.uint8)
    shown = itertools.chain([blank] * blanks, (frame_with(token) for token in tokens))
    for n, frame in enumerate(shown):  # one frame in memory at a time
        cv2.imwrite(str(frames / f"{n:05d}.png"), frame)


class DecisionTimer:
    """A daemon listener: the latency and reason of each decision the daemon publishes, a
    new sale rung up after each (the cashier's next shopper), `done` after `want`."""

    def __init__(self, daemon: Daemon, want: int) -> None:
        self.daemon, self.want = daemon, want
        self.basket = Basket.from_dict({"currency": "CNY", "total_minor": 12800})
        self.latencies: list[float] = []
        self.outcomes: dict[str, int] = {}
        self.done = threading.Event()
        daemon.listeners.append(self)

    def __call__(self, pub: Published) -> None:
        if pub.decision is None:
            return
        self.latencies.append(pub.latency_s)
        reason = pub.decision.reason.value
        self.outcomes[reason] = self.outcomes.get(reason, 0) + 1
        self.daemon.start_sale(self.basket)
        if len(self.latencies) >= self.want:
            self.done.set()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scans", type=int, default=1000)
    ap.add_argument("--fps", type=float, default=50.0)
    args = ap.parse_args()
    print(f"bench/scan_latency.py: {machine()}")
    with scratch("latency") as root:
        clock = FixedClock(T0)
        central = new_central(
            root, clock, Policy(burst_per_terminal=0, burst_per_cashier=0, burst_per_coupon=0)
        )
        central.add_campaign(
            {
                "id": "FIVE",
                "kind": "fixed",
                "currency": "CNY",
                "amount_minor": 500,
                "stacking": "any",
            }
        )
        _, issued = timed(f"issue {args.scans} coupons", lambda: central.issue("FIVE", args.scans))
        tokens = [i.token for i in issued]  # type: ignore[attr-defined]
        data = terminal_for_daemon(root, clock, central)
        frames = root / "frames"
        timed(f"write {args.scans} frames", lambda: write_frames(frames, tokens))
        cfg_path = root / "daemon.toml"
        cfg_path.write_text(f"""
[terminal]
data = "{data}"
[[input]]
name = "cam"
kind = "camera"
source = "{frames}/%05d.png"
fps = {args.fps}
debounce_s = 0.0
[log]
level = "WARNING"
""")
        daemon = Daemon(config_mod.load(cfg_path), clock)
        timer = DecisionTimer(daemon, args.scans)
        started = time.monotonic()
        daemon.start()
        daemon.set_basket(timer.basket)
        timer.done.wait(args.scans / args.fps * 3 + 30)
        wall = time.monotonic() - started
        daemon.stop()
    latencies, outcomes = timer.latencies, timer.outcomes
    ms = sorted(x * 1000 for x in latencies)
    print(
        f"\n{len(ms)} decisions in {wall:.1f} s from a camera paced at {args.fps:g} fps "
        f"(640x480, default decoder): {outcomes}"
    )
    print(
        f"{'scan-to-decision latency':<28} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'mean ms':>8}"
    )
    print(
        f"{'frame ready -> published':<28} {percentile(ms, 50):8.2f} {percentile(ms, 90):8.2f} "
        f"{percentile(ms, 99):8.2f} {ms[-1]:8.2f} {statistics.fmean(ms):8.2f}"
    )
    goal(
        "scan-to-decision p99 < 15 ms",
        len(ms) >= args.scans and percentile(ms, 99) < 15,
        f"p99 {percentile(ms, 99):.2f} ms over {len(ms)} scans",
    )


if __name__ == "__main__":
    main()
