"""What a till reports about itself on the signed requests it already makes (docs/
sync-protocol.md, "Till status"): its journal head (the central counts the backlog from
it, against what it holds), clock offset, device health and app
version in one short header, X-Redeem-Status, signed with the device key in a header of its
own so a central that does not know it (or a retailer's own backend) ignores both and the
request signature is unchanged. Shared by the sync client (format, sign) and the central
(parse, check)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import metadata

from coupons import cose
from sync import protocol

HEADER_STATUS = "X-Redeem-Status"
HEADER_STATUS_SIGNATURE = "X-Redeem-Status-Signature"
MAX_STATUS_CHARS = 256
MAX_COUNT = 10**12  # the journal head; and |clock_ms| (about 31 years)
MAX_VERSION = 2**31 - 1  # ledger versions, as GET /v1/ledger?since= takes them
MAX_UNWELL = 8
HEALTH_STATES = ("ok", "stopped", "degraded", "down")  # worst last
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_APP_RE = re.compile(r"[A-Za-z0-9.+_-]{1,32}")
_INT_RE = re.compile(r"-?[0-9]{1,13}")
_KEY_RE = re.compile(r"[a-z_]{1,16}")


class StatusError(ValueError):
    """A status header that cannot be used; `why` is a short label for the metrics."""

    def __init__(self, why: str, detail: str) -> None:
        super().__init__(detail)
        self.why = why


@dataclass(frozen=True)
class TillStatus:
    """One report. None (or empty) is "not reported": an old till, or a till that cannot
    tell (no daemon running: no device health)."""

    head: int | None = None  # the seq of the last journal entry it has written
    ledger: int | None = None  # the version of its store's ledger it holds
    clock_ms: int | None = None  # the till's clock minus the central's: + when it runs ahead
    health: str | None = None  # the worst state of its inputs (HEALTH_STATES)
    unwell: tuple[str, ...] = ()  # the inputs whose state is not ok, sorted
    app: str | None = None  # the edge-redeem version it runs


def format_status(s: TillStatus) -> str:
    """'head=42;ledger=7;clock_ms=-120;health=degraded;unwell=camera;app=0.1.0' (the set
    fields only)."""
    parts = []
    if s.head is not None:
        parts.append(f"head={s.head}")
    if s.ledger is not None:
        parts.append(f"ledger={s.ledger}")
    if s.clock_ms is not None:
        parts.append(f"clock_ms={s.clock_ms}")
    if s.health is not None:
        parts.append(f"health={s.health}")
    if s.unwell:
        parts.append("unwell=" + ",".join(s.unwell))
    if s.app is not None:
        parts.append(f"app={s.app}")
    text = ";".join(parts)
    parse_status(text)  # what we send, the central must be able to read
    return text


def _count(value: str, key: str, signed: bool) -> int:
    if not _INT_RE.fullmatch(value) or (value.startswith("-") and not signed):
        raise StatusError("value", f"{key} must be a whole number")
    n = int(value)
    if abs(n) > MAX_COUNT:
        raise StatusError("value", f"{key} is out of range")
    return n


def parse_status(text: str) -> TillStatus:
    """The report in a header; StatusError for anything malformed (the whole header is then
    ignored: a half-read report would show a wrong picture). Unknown keys are skipped, so
    a newer till may say more."""
    if not text or len(text) > MAX_STATUS_CHARS or not text.isascii():
        raise StatusError("size", f"the status must be 1-{MAX_STATUS_CHARS} ASCII characters")
    fields: dict[str, str] = {}
    for part in text.split(";"):
        key, eq, value = part.strip().partition("=")
        if not eq or not _KEY_RE.fullmatch(key) or key in fields:
            raise StatusError("syntax", "the status must be key=value pairs joined by ';'")
        fields[key] = value.strip()
    head = ledger = clock = health = app = None
    unwell: tuple[str, ...] = ()
    if "head" in fields:
        head = _count(fields["head"], "head", signed=False)
    if "ledger" in fields:
        ledger = _count(fields["ledger"], "ledger", signed=False)
        if ledger > MAX_VERSION:
            raise StatusError("value", "ledger is out of range")
    if "clock_ms" in fields:
        clock = _count(fields["clock_ms"], "clock_ms", signed=True)
    if "health" in fields:
        health = fields["health"]
        if health not in HEALTH_STATES:
            raise StatusError("value", f"health must be one of {', '.join(HEALTH_STATES)}")
    if "unwell" in fields:
        names = fields["unwell"].split(",")
        if len(names) > MAX_UNWELL or not all(_NAME_RE.fullmatch(n) for n in names):
            raise StatusError("value", f"unwell must name at most {MAX_UNWELL} inputs")
        unwell = tuple(sorted(set(names)))
    if "app" in fields:
        app = fields["app"]
        if not _APP_RE.fullmatch(app):
            raise StatusError("value", "app must be a version such as 0.1.0")
    return TillStatus(head, ledger, clock, health, unwell, app)


def status_signing_string(
    method: str, path_qs: str, timestamp: str, terminal: str, digest: str, status: str
) -> bytes:
    """What the status signature covers: the request it rides on (as the request signature
    names it) and the status, under a first line of its own so neither signature can stand
    for the other."""
    return "\n".join(
        ["EDGE-REDEEM-STATUS-V1", method.upper(), path_qs, timestamp, terminal, digest, status]
    ).encode()


def status_headers(
    key: cose.SigningKey, signed: Mapping[str, str], method: str, path_qs: str, status: str
) -> dict[str, str]:
    """The two status headers for a request whose signature headers are `signed`."""
    message = status_signing_string(
        method,
        path_qs,
        signed[protocol.HEADER_TIMESTAMP],
        signed[protocol.HEADER_TERMINAL],
        signed[protocol.HEADER_DIGEST],
        status,
    )
    return {HEADER_STATUS: status, HEADER_STATUS_SIGNATURE: key.sign(message).hex()}


def read_status(
    headers: Mapping[str, str], method: str, path_qs: str, public_key: bytes
) -> TillStatus | None:
    """The till's report on a request whose signature protocol.check_signature accepted:
    None when it carries none; StatusError when it is malformed or its signature does not
    verify with the terminal's key."""
    text = headers.get(HEADER_STATUS)
    if text is None:
        return None
    status = parse_status(text)
    try:
        signature = bytes.fromhex(headers.get(HEADER_STATUS_SIGNATURE, ""))
    except ValueError:
        raise StatusError("signature", "the status signature is not hex") from None
    message = status_signing_string(
        method,
        path_qs,
        headers.get(protocol.HEADER_TIMESTAMP, ""),
        headers.get(protocol.HEADER_TERMINAL, ""),
        headers.get(protocol.HEADER_DIGEST, ""),
        text,
    )
    if not signature or not cose.verify(public_key, message, signature):
        raise StatusError("signature", "the status signature does not verify")
    return status


def worst_health(states: Mapping[str, str]) -> tuple[str | None, tuple[str, ...]]:
    """The worst state of a till's inputs and the names of those not ok (at most
    MAX_UNWELL, names the header cannot carry left out); (None, ()) with no inputs."""
    if not states:
        return None, ()
    known = {n: s if s in HEALTH_STATES else "down" for n, s in states.items()}
    worst = max(known.values(), key=HEALTH_STATES.index)
    unwell = sorted(n for n, s in known.items() if s != "ok" and _NAME_RE.fullmatch(n))
    return worst, tuple(unwell[:MAX_UNWELL])


@cache
def app_version() -> str | None:
    """The installed edge-redeem version (package metadata), None when not installed."""
    try:
        version = metadata.version("edge-redeem")
    except metadata.PackageNotFoundError:
        return None
    return version if _APP_RE.fullmatch(version) else None


def report(head: int, ledger: int, offset_s: float | None, inputs: Mapping[str, str] | None) -> str:
    """The header a till sends: `offset_s` is central minus ours (the till's own
    convention, coupons.engine), the header's clock_ms ours minus central's."""
    health, unwell = worst_health(inputs) if inputs is not None else (None, ())
    clock_ms = None
    if offset_s is not None and abs(offset_s) * 1000 <= MAX_COUNT:
        clock_ms = -round(offset_s * 1000)
    head = min(max(0, head), MAX_COUNT)
    ledger = min(max(0, ledger), MAX_VERSION)
    return format_status(TillStatus(head, ledger, clock_ms, health, unwell, app_version()))
