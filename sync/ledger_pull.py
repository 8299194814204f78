"""Pulling the ledger file: the remembered ETag, a resumable download kept under
<data>/sync/, size caps as sent and once decompressed, and gzip/deflate decoding."""

from __future__ import annotations

import json
import os
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cbor2
import requests

from coupons import ledger
from coupons import sync_state as status
from coupons.engine import Engine
from coupons.journal import set_meta
from coupons.ledger_store import DEFAULT_MAX_FILE_BYTES
from sync.http import SyncError, SyncErrorKind

CHUNK = 64 * 1024


def remember_etag(etag: str, version: int) -> Callable[[Engine], None]:
    """The ETag names the central's latest version; it is sent back (If-None-Match) while
    the terminal still holds `version`, what that answer left it with."""

    def job(engine: Engine) -> None:
        set_meta(status.LEDGER_ETAG, json.dumps({"since": version, "etag": etag}))

    return job


def etag_for(stored: str | None, since: int) -> str | None:
    if not stored:
        return None
    try:
        doc = json.loads(stored)
    except ValueError:
        return None
    if isinstance(doc, dict) and doc.get("since") == since and isinstance(doc.get("etag"), str):
        return str(doc["etag"])
    return None


def content_range_start(value: str) -> int | None:
    # "bytes 1000-4999/5000"
    try:
        unit, rng = value.split(" ", 1)
        return int(rng.split("-", 1)[0]) if unit == "bytes" else None
    except ValueError:
        return None


def decode(raw: bytes, encoding: str, limit: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    try:
        if encoding == "gzip":
            return _inflate(raw, 16 + zlib.MAX_WBITS, limit)
        if encoding == "deflate":
            return _inflate(raw, zlib.MAX_WBITS, limit)
    except (OSError, EOFError, zlib.error) as exc:
        raise SyncError(SyncErrorKind.PROTOCOL, f"ledger download is damaged ({exc})") from None
    if encoding not in ("identity", ""):
        raise SyncError(
            SyncErrorKind.PROTOCOL, f"ledger download uses an unknown encoding {encoding!r}"
        )
    return raw


def _inflate(raw: bytes, wbits: int, limit: int) -> bytes:
    """Decompress (gzip members one after another, like gzip.decompress), refusing past
    `limit` bytes of output: a small download must not unpack into gigabytes."""
    out = bytearray()
    rest = raw
    while rest:
        z = zlib.decompressobj(wbits)
        out += z.decompress(rest, limit + 1 - len(out))
        if len(out) > limit or z.unconsumed_tail:
            raise SyncError(SyncErrorKind.PROTOCOL, _too_large(limit, "once decompressed"))
        if not z.eof:
            raise EOFError("compressed data ended before the end-of-stream marker")
        rest = z.unused_data
    return bytes(out)


def _too_large(limit: int, how: str) -> str:
    return (
        f"the ledger download is larger than {limit / 2**20:g} MiB {how}, the most a ledger"
        " file may be; it was dropped and the ledger is unchanged"
    )


def no_updates(data: bytes) -> bool:
    """A well-formed ledger file holding nothing new (not a refusal worth journaling)."""
    try:
        doc = cbor2.loads(data)
    except Exception:
        return False
    return (
        isinstance(doc, dict)
        and doc.get("format") == ledger.FILE_FORMAT
        and doc.get("updates") in ([], ())
    )


# ---------------------------------------------------------------------- resumable download


@dataclass(frozen=True)
class _Part:
    since: int
    etag: str
    encoding: str
    size: int


class Partial:
    """An interrupted ledger download under <data>/sync/: the bytes as they came over the
    wire (still compressed) and which request they answer, so the next round resumes it
    with Range/If-Range instead of starting over."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.body = directory / "ledger.partial"
        self.meta = directory / "ledger.partial.json"

    def load(self, since: int) -> _Part | None:
        try:
            doc = json.loads(self.meta.read_text())
            size = self.body.stat().st_size
        except (OSError, ValueError):
            return None
        if doc.get("since") != since or not doc.get("etag") or size == 0:
            self.drop()
            return None
        return _Part(since, str(doc["etag"]), str(doc.get("encoding", "identity")), size)

    def receive(
        self,
        resp: requests.Response,
        since: int,
        etag: str,
        encoding: str,
        append: bool,
        stop: threading.Event,
        limit: int = DEFAULT_MAX_FILE_BYTES,
    ) -> bytes:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not append:
            self.drop()
            if etag:  # without a validator a resumed download could mix two versions
                self.meta.write_text(
                    json.dumps({"since": since, "etag": etag, "encoding": encoding})
                )
        mode = "ab" if append else "wb"
        try:
            with open(self.body, mode) as fh:
                size = fh.tell()  # a resumed download counts what it already holds
                for chunk in resp.raw.stream(CHUNK, decode_content=False):
                    size += len(chunk)
                    if size > limit:
                        raise SyncError(SyncErrorKind.PROTOCOL, _too_large(limit, "as sent"))
                    fh.write(chunk)
                    if stop.is_set():
                        raise SyncError(
                            SyncErrorKind.STOPPED, "sync stopped during the ledger download"
                        )
                fh.flush()
                os.fsync(fh.fileno())
        except SyncError as exc:
            if exc.kind != SyncErrorKind.STOPPED:
                self.drop()  # too large: never resumed
            raise
        except Exception as exc:  # urllib3 ProtocolError (cut off), read timeout, reset
            raise SyncError(
                SyncErrorKind.PROTOCOL if "IncompleteRead" in repr(exc) else SyncErrorKind.NETWORK,
                f"ledger download interrupted after {self._size()} bytes ({type(exc).__name__});"
                " the next round resumes it",
            ) from None
        return self.body.read_bytes()

    def _size(self) -> int:
        try:
            return self.body.stat().st_size
        except OSError:
            return 0

    def drop(self) -> None:
        self.body.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)
