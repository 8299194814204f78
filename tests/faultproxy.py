"""A fault-injecting TCP proxy on loopback, between a terminal and the central: it passes
connections through, or drops them, delays them, resets them, truncates the response,
answers 500 itself, accepts and hangs, or cuts a kept-alive connection after a random
amount of traffic. Faults are chosen per connection, from a fixed
mode or at random with a seed, and can be switched while traffic flows."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter

FAULTS = ("drop", "delay", "reset", "truncate", "http500", "hang", "cut")
_500 = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 21\r\nConnection: close\r\n\r\ninjected server error"
)


class FaultProxy:
    def __init__(self, upstream: tuple[str, int], seed: int = 1) -> None:
        self.upstream = upstream
        self.mode = "pass"  # pass, slow, one of FAULTS, or "random"
        self.script: list[str] = []  # faults for the next connections, before `mode` applies
        self.fault_rate = 0.3  # for "random": share of connections that get a fault
        self.delay_s = 0.5
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._hung: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True, name="faultproxy")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        for s in self._hung:
            s.close()

    def _pick(self) -> str:
        with self._lock:
            if self.script:
                return self.script.pop(0)
            if self.mode != "random":
                return self.mode
            if self.rng.random() >= self.fault_rate:
                return "pass"
            return self.rng.choice(FAULTS)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            fault = self._pick()
            self.counts[fault] += 1
            threading.Thread(target=self._serve, args=(client, fault), daemon=True).start()

    def _serve(self, client: socket.socket, fault: str) -> None:
        try:
            if fault == "drop":
                client.close()
                return
            if fault == "reset":
                client.recv(65536)
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                return
            if fault == "http500":
                client.recv(65536)
                client.sendall(_500)
                client.close()
                return
            if fault == "hang":
                self._hung.append(client)  # accepted, read, never answered
                return
            if fault == "delay":
                time.sleep(self.delay_s)
            upstream = socket.create_connection(self.upstream, timeout=30)
            limit = cut = None
            if fault == "truncate":  # the answer stops short
                limit = self.rng.randint(1, 300)
            if fault == "cut":  # Wi-Fi drops after a while: kept-alive requests die mid-way
                cut = self.rng.randint(5_000, 150_000)
            pause = self.delay_s if fault == "slow" else 0.0  # a slow link, every chunk
            t = threading.Thread(target=_pump, args=(client, upstream, cut, pause), daemon=True)
            t.start()
            _pump(upstream, client, limit, pause)
            upstream.close()
            client.close()
        except OSError:
            client.close()


def _pump(src: socket.socket, dst: socket.socket, limit: int | None, pause: float = 0.0) -> None:
    """Copy src to dst until EOF, or until `limit` bytes have gone (then cut both); `pause`
    after every chunk makes a slow link."""
    sent = 0
    try:
        while True:
            data = src.recv(16384 if pause else 65536)
            if pause:
                time.sleep(pause)
            if not data:
                dst.shutdown(socket.SHUT_WR)
                return
            if limit is not None and sent + len(data) >= limit:
                dst.sendall(data[: limit - sent])
                dst.close()
                src.close()
                return
            dst.sendall(data)
            sent += len(data)
    except OSError:
        return
