"""A fault-injecting UDP proxy on loopback, in front of one till's peer port: datagrams sent
to it go on to `upstream`, or are dropped, delayed or sent twice. One way only: store peers
answer to the address book, never to the source address, so each till's book lists the
proxies of the others. A proxy forwards from the sender's own loopback address (the till
behind it sees each peer's IP), and `drop_from` drops one sender's datagrams whatever the
mode: dropping at a till's proxy and its address at the others' cuts it off both ways
(tests/peers_harness.py Store.partition), where a blocked proxy alone stops only what
reaches it, not the hellos it sends.

It keeps every datagram it saw in `captured` (for replays) and can `inject` any bytes
(garbage, oversized, a replay) as if a peer had sent them."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter

MODES = ("pass", "drop", "delay", "dup")
_MAX = 65_535


class UdpFaultProxy:
    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self.mode = "pass"  # one of MODES; may be switched while traffic flows
        self.delay_s = 0.2
        self.counts: Counter[str] = Counter()
        self.captured: list[bytes] = []
        self.keep = 10_000  # at most this many captured datagrams (the newest)
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        self._sock.settimeout(0.2)
        self.drop_from: set[str] = set()  # source hosts dropped whatever the mode
        self._host = host
        self._outs: dict[str, socket.socket] = {}  # per source host: the till keeps its IP
        self.address: tuple[str, int] = self._sock.getsockname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="udpproxy")

    @property
    def hostport(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def start(self) -> UdpFaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()
        for out in self._outs.values():
            out.close()

    def __enter__(self) -> UdpFaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
        self.mode = mode

    def inject(self, data: bytes, source: str | None = None) -> None:
        """Send `data` upstream as it is, whatever the mode (an attacker on the LAN), from
        the loopback address `source` (default: the proxy's own)."""
        self._send(data, source or self._host)
        with self._lock:
            self.counts["injected"] += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, (src, _) = self._sock.recvfrom(_MAX)
            except TimeoutError:
                continue
            except OSError:
                return
            mode = "drop" if src in self.drop_from else self.mode
            with self._lock:
                self.counts[mode] += 1
                self.captured.append(data)
                del self.captured[: -self.keep]
            if mode == "drop":
                continue
            if mode == "delay":
                timer = threading.Timer(self.delay_s, self._send, (data, src))
                timer.daemon = True
                timer.start()
                continue
            self._send(data, src)
            if mode == "dup":
                self._send(data, src)

    def _send(self, data: bytes, src: str) -> None:
        """Forward from a socket on the sender's own loopback address, so that the till
        behind the proxy sees each peer's IP (its per-source rate limit needs it)."""
        try:
            with self._lock:
                out = self._outs.get(src)
                if out is None:
                    out = self._outs[src] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    out.bind((src, 0))
            out.sendto(data, self.upstream)
        except OSError:
            pass  # the proxy stopped, or the till is down: a lost datagram, as on a LAN


def wait_for(predicate: object, timeout_s: float = 5.0, step_s: float = 0.01) -> bool:
    """Poll `predicate()` until it is true or `timeout_s` passed; no timed assertion."""
    assert callable(predicate)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step_s)
    return bool(predicate())
