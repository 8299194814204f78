"""CPU the daemon uses with a 30 fps camera and no code in view: `redeem run` as its own
process, the camera playing a looped 640x480 MJPEG video of an empty counter with sensor
noise at 30 fps; CPU time read from /proc/<pid>/stat over a measuring window after a
warm-up. Goal: under 25 % of one core.

    .venv/bin/python bench/daemon_cpu.py [--seconds S] [--decoder cascade|zxing|pyzbar]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from bench._world import T0, goal, machine, new_central, scratch, terminal_for_daemon  # noqa: E402
from coupons.clock import FixedClock  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def empty_counter_video(path: Path, frames: int = 300) -> None:
    rng = np.random.default_rng(3)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (640, 480))
    base = np.full((480, 640, 3), 185, dtype=np.uint8)
    cv2.rectangle(base, (60, 300), (580, 470), (120, 110, 100), -1)  # the counter top
    for _ in range(frames):
        noise = rng.integers(-8, 9, base.shape, dtype=np.int16)
        writer.write(np.clip(base.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    writer.release()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=4.0)
    ap.add_argument("--decoder", default="cascade")
    args = ap.parse_args()
    print(f"bench/daemon_cpu.py: {machine()}")
    with scratch("cpu") as root:
        clock = FixedClock(T0)
        data = terminal_for_daemon(root, clock, new_central(root, clock))
        video = root / "counter.avi"
        empty_counter_video(video)
        cfg = root / "daemon.toml"
        cfg.write_text(f"""
[terminal]
data = "{data}"
[[input]]
name = "cam"
kind = "camera"
source = "{video}"
loop = true
decoder = "{args.decoder}"
[log]
level = "WARNING"
""")
        env = {**os.environ, "REDEEM_NOW": str(T0)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "terminal.cli", "run", "--config", str(cfg)],
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
        )
        try:
            time.sleep(args.warmup)
            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(args.seconds)
            c1, t1 = cpu_seconds(proc.pid), time.monotonic()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    share = (c1 - c0) / (t1 - t0) * 100
    print(
        f"\ndaemon with a 30 fps 640x480 camera, no code in view, decoder {args.decoder}: "
        f"{c1 - c0:.2f} s CPU in {t1 - t0:.1f} s = {share:.1f} % of one core"
    )
    goal("daemon CPU < 25 % of one core", share < 25, f"{share:.1f} %")


if __name__ == "__main__":
    main()
