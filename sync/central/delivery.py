"""Serving the ledger over HTTP: deltas after the terminal's version or the snapshot when it
is far behind, with ETags (version + chain hash), 304/204 when current, gzip, and byte
ranges of the exact representation sent so a big snapshot download can be resumed."""

from __future__ import annotations

import gzip
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from coupons.ledger import ledger_file
from sync import protocol
from sync.central import metrics
from sync.central.store import Central

GZIP_MIN = 512
CACHE_BYTES = 64 * 1024 * 1024
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class Ahead(Exception):
    """The terminal claims a version the central never published."""


@dataclass
class LedgerAnswer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class _Cache:
    """Representations by (version, since, encoding). They are pure functions of the
    database (snapshots are signed once, gzip has no timestamp), so every instance builds
    the same bytes; this only saves rebuilding them."""

    def __init__(self, limit: int = CACHE_BYTES) -> None:
        self.limit = limit
        self.items: OrderedDict[tuple[int, int, bool], bytes] = OrderedDict()
        self.size = 0
        self.lock = threading.Lock()

    def get(self, key: tuple[int, int, bool]) -> bytes | None:
        with self.lock:
            data = self.items.get(key)
            if data is not None:
                self.items.move_to_end(key)
            return data

    def put(self, key: tuple[int, int, bool], data: bytes) -> None:
        with self.lock:
            if key in self.items or len(data) > self.limit:
                return
            self.items[key] = data
            self.size += len(data)
            while self.size > self.limit:
                _, old = self.items.popitem(last=False)
                self.size -= len(old)


def _tags(header: str) -> list[str]:
    out = []
    for part in header.split(","):
        tag = part.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        out.append(tag.strip('"'))
    return out


def accepts_gzip(header: str | None) -> bool:
    for part in (header or "").split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() in ("gzip", "x-gzip", "*"):
            q = params.strip().lower()
            return not (q.startswith("q=") and q[2:].strip() in ("0", "0.0", "0.00", "0.000"))
    return False


def _byte_range(header: str, size: int) -> tuple[int, int] | None | bool:
    """(first, last) of a single `bytes=` range; None to ignore the header (malformed or
    several ranges: the whole body is sent), False when it cannot be satisfied."""
    m = _RANGE.fullmatch(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # the last N bytes
        n = int(m.group(2))
        if n == 0:
            return False
        return max(0, size - n), size - 1
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else size - 1
    if m.group(2) and last < first:
        return None
    if first >= size:
        return False
    return first, min(last, size - 1)


class Delivery:
    def __init__(self, central: Central) -> None:
        self.central = central
        self.cache = _Cache()

    def answer(self, since: int, headers: Mapping[str, str]) -> LedgerAnswer:
        central = self.central
        # Changes made by the CLI, an admin or another instance reach terminals at their
        # next pull: no background task, nothing per process.
        if central.changed():
            metrics.publish(central)
        latest = central.latest()
        assert latest is not None
        version = int(latest.version)
        core = f"{version}-{bytes(latest.chain).hex()[:32]}"
        base = {"X-Ledger-Version": str(version), "Cache-Control": "no-cache"}
        inm = headers.get("if-none-match")
        if inm and any(t == "*" or t == core or t.startswith(core + "-") for t in _tags(inm)):
            return LedgerAnswer(304, {**base, "ETag": f'"{core}"'})
        if since == version:
            return LedgerAnswer(204, {**base, "ETag": f'"{core}"'})
        if since > version:
            raise Ahead(f"version {since} is newer than the central's latest ({version})")
        snapshot = since == 0 or version - since > protocol.SNAPSHOT_AFTER
        gz = accepts_gzip(headers.get("accept-encoding"))
        body = self._body(version, 0 if snapshot else since, gz)
        if gz and body is None:  # too small to be worth compressing
            gz = False
        if body is None:
            body = self._body(version, 0 if snapshot else since, False)
            assert body is not None
        etag = f'"{core}-{"s" if snapshot else f"d{since}"}{"-gz" if gz else ""}"'
        out = {
            **base,
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "Vary": "Accept-Encoding",
            "Content-Type": protocol.LEDGER_MEDIA_TYPE,
            "X-Ledger-Kind": "snapshot" if snapshot else "delta",
        }
        if gz:
            out["Content-Encoding"] = "gzip"
        rng = headers.get("range")
        if_range = headers.get("if-range")
        if rng and (if_range is None or if_range.strip() == etag):
            span = _byte_range(rng, len(body))
            if span is False:
                return LedgerAnswer(416, {**out, "Content-Range": f"bytes */{len(body)}"})
            if span is not None and not isinstance(span, bool):
                first, last = span
                out["Content-Range"] = f"bytes {first}-{last}/{len(body)}"
                return LedgerAnswer(206, out, body[first : last + 1])
        return LedgerAnswer(200, out, body)

    def _body(self, version: int, since: int, gz: bool) -> bytes | None:
        key = (version, since, gz)
        data = self.cache.get(key)
        if data is not None:
            return data
        if gz:
            plain = self._body(version, since, False)
            assert plain is not None
            if len(plain) < GZIP_MIN:
                return None
            data = gzip.compress(plain, compresslevel=6, mtime=0)
        elif since == 0:
            data = ledger_file([self.central.snapshot_of(version)])
        else:
            data = ledger_file(self.central.deltas(since, version))
        self.cache.put(key, data)
        return data
