"""What keeps a noisy or hostile peer cheap: token buckets, the replay seen-cache, flag
throttling and the claim latency histogram."""

from __future__ import annotations

import time
from collections import OrderedDict

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0)


class TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.at = time.monotonic()

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Buckets:
    """One bucket per source; the least recently used go when there are too many."""

    def __init__(self, rate: float, burst: float, most: int = 4096) -> None:
        self.rate, self.burst, self.most = rate, burst, most
        self._b: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, source: str, now: float) -> bool:
        bucket = self._b.get(source)
        if bucket is None:
            bucket = self._b[source] = TokenBucket(self.rate, self.burst)
            if len(self._b) > self.most:
                self._b.popitem(last=False)
        self._b.move_to_end(source)
        return bucket.take(now)


class SeenCache:
    """(sender, nonce) of messages taken within the replay window; an older message is
    refused as stale anyway, so nothing older needs remembering."""

    def __init__(self, window_s: float, most: int = 100_000) -> None:
        self.window_s, self.most = window_s, most
        self._seen: OrderedDict[tuple[str, bytes], float] = OrderedDict()

    def add(self, sender: str, nonce: bytes, now: float) -> bool:
        """False if it was seen already."""
        k = (sender, nonce)
        if k in self._seen:
            return False
        self._seen[k] = now
        self.purge(now)
        return True

    def purge(self, now: float) -> None:
        # Two windows: the sender's clock and ours may disagree by up to one.
        while self._seen:
            k, at = next(iter(self._seen.items()))
            if at > now - 2 * self.window_s and len(self._seen) <= self.most:
                break
            self._seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)


class Throttle:
    """At most one event per key per period (a flag per kind per sender per minute)."""

    def __init__(self, period_s: float = 60.0) -> None:
        self.period_s = period_s
        self._last: dict[tuple[str, str], float] = {}

    def allow(self, kind: str, who: str, now: float) -> bool:
        last = self._last.get((kind, who))
        if last is not None and now - last < self.period_s:
            return False
        if len(self._last) > 10_000:
            self._last.clear()
        self._last[(kind, who)] = now
        return True


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum_s = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.sum_s += seconds
        self.count += 1
        for i, le in enumerate(LATENCY_BUCKETS):
            if seconds <= le:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    def to_json(self) -> dict[str, object]:
        buckets: list[list[object]] = []
        running = 0
        for le, n in zip((*LATENCY_BUCKETS, "+Inf"), self.counts, strict=True):
            running += n
            buckets.append([le, running])
        return {"buckets": buckets, "sum_s": round(self.sum_s, 6), "count": self.count}
