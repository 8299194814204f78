"""How fast and how small `redeem ledger import` refuses oversized input: a 2 GB sparse file,
/dev/zero and a FIFO that never ends, each in a fresh child process (seconds from start to
exit, the child's own peak RSS, VmHWM: tests/peak_memory.py).

Goals: each refused in < 1 s with peak RSS < 200 MB (64 MiB default limit).

    .venv/bin/python bench/ledger_import_limits.py
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._world import ROOT, T0, goal, machine, new_central, scratch  # noqa: E402
from coupons import setup  # noqa: E402
from coupons.clock import FixedClock  # noqa: E402
from coupons.ledger import ledger_file  # noqa: E402
from tests import peak_memory  # noqa: E402


def run(data: Path, path: Path | str) -> tuple[int, float, float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDEEM_")}
    env["REDEEM_NOW"] = str(T0)
    report = data.parent / "import.peak"
    report.unlink(missing_ok=True)
    t = time.perf_counter()
    proc = subprocess.Popen(
        peak_memory.command(
            "terminal.cli", ["ledger", "import", str(path), "--data", str(data)], report
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.wait()
    seconds = time.perf_counter() - t
    return proc.returncode, seconds, peak_memory.peak_mb(report), err.strip()


def endless_writer(fifo: Path, stop: threading.Event) -> threading.Thread:
    def write() -> None:
        with contextlib.suppress(OSError), open(fifo, "wb") as fh:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                fh.write(b"\x00" * 65536)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def main() -> None:
    print(machine())
    with scratch("import-limits") as root:
        clock = FixedClock(T0)
        central = new_central(root, clock)
        data = root / "till"
        setup.init(data, root / "central" / "trust-anchor.json", "S1", "T1")
        central.publish()
        good = root / "good.cbor"
        good.write_bytes(ledger_file([central.snapshot()]))
        sparse = root / "sparse.cbor"
        with open(sparse, "wb") as fh:
            fh.truncate(2 * 1024**3)
        fifo = root / "fifo.cbor"
        os.mkfifo(fifo)

        rows = []
        code, s, rss, _ = run(data, good)
        rows.append(("a real ledger file (accepted: the baseline)", code, s, rss))
        for name, path in (("2 GB sparse file", sparse), ("/dev/zero", "/dev/zero")):
            code, s, rss, err = run(data, path)
            assert code == 2 and "larger than" in err, err
            rows.append((name, code, s, rss))
        stop = threading.Event()
        writer = endless_writer(fifo, stop)
        code, s, rss, err = run(data, fifo)
        stop.set()
        writer.join(10)
        assert code == 2 and "larger than" in err, err
        rows.append(("FIFO that never ends", code, s, rss))

    print(f"{'input':<46}{'exit':>5}{'seconds':>9}{'peak RSS':>11}")
    for name, code, s, rss in rows:
        print(f"{name:<46}{code:>5}{s:>9.2f}{rss:>8.1f} MB")
    refused = rows[1:]
    slowest, biggest = max(r[2] for r in refused), max(r[3] for r in refused)
    goal("each refused in < 1 s", slowest < 1.0, f"slowest {slowest:.2f} s")
    goal("peak RSS < 200 MB", biggest < 200, f"largest {biggest:.1f} MB")


if __name__ == "__main__":
    main()
