"""The demo's long-running children (the central, the daemon): each in its own session, so
a Ctrl-C at the keyboard (SIGINT to the foreground process group) reaches the demo only;
the demo then stops them in reverse order with SIGTERM and waits for each."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    exit_code: int | None = None
    took_s: float = 0.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def clean(self) -> bool:
        return self.exit_code == 0

    def ended(self) -> str:
        return f"exited {self.exit_code}"


@dataclass
class Children:
    running: list[Child] = field(default_factory=list)

    def start(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> Child:
        out = open(log, "ab")  # noqa: SIM115 (closed in stop)
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        child = Child(name, proc, out)
        self.running.append(child)
        return child

    def stop(self, child: Child, timeout: float = 10.0) -> Child:
        """SIGTERM, wait; SIGKILL only if it does not stop in time (then exit code -9)."""
        started = time.monotonic()
        if child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
            try:
                child.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(5)
        child.took_s = time.monotonic() - started
        child.exit_code = child.proc.returncode
        child.log.close()
        if child in self.running:
            self.running.remove(child)
        return child

    def stop_all(self) -> list[Child]:
        return [self.stop(c) for c in reversed(list(self.running))]
