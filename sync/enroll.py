"""`redeem enroll`: the terminal makes (or is given) its own Ed25519 device key, registers
it with a one-time code, receives its terminal id, store and the trust anchor, checks the
anchor against the fingerprint the installer was given (or pins it on first use), writes
its data directory as `redeem init` does, and pulls the first ledger. With a fingerprint or
an anchor file it first fetches the central's published root key (GET /v1/trust-anchor)
and checks it, so the wrong central never spends the code or registers the key."""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from coupons import setup
from coupons.clock import Clock
from coupons.keys import CertError, TrustAnchor
from sync import protocol
from sync.client import RoundResult, run_once
from sync.device import CA_FILE, Settings, ensure_device_key
from sync.http import CentralLink, Link, SyncError

# GET, unauthenticated: {"trust_anchor": {...}, "fingerprint"} (belongs in sync/protocol.py
# beside ENROLL; the reference central serves it, sync/central/app.py TRUST_ANCHOR).
TRUST_ANCHOR = protocol.TRUST_ANCHOR


class EnrollError(Exception):
    pass


@dataclass
class Enrolled:
    terminal: str
    store: str
    fingerprint: str
    pinned: str  # "fingerprint", "trust-anchor" or "tofu" (trust on first use)
    key_path: str
    key_created: bool
    first_round: RoundResult | None


def normalise_fingerprint(text: str) -> str:
    """'SHA256:356a:a7d9:...' as printed, any case, colons or spaces or none."""
    text = re.sub(r"[\s:]", "", text.lower())
    return text.removeprefix("sha256")  # "s" is not a hex digit: never part of the digest


def fingerprint_matches(anchor: TrustAnchor, given: str) -> bool:
    want = normalise_fingerprint(given)
    full = normalise_fingerprint(anchor.fingerprint)
    # The printed fingerprint is the first 128 bits of SHA-256; the whole digest also works.
    digest = hashlib.sha256(anchor.public_key).hexdigest()
    return bool(want) and want in (full, digest)


def _reply(doc: object) -> tuple[str, str, TrustAnchor]:
    if not isinstance(doc, dict):
        raise EnrollError("the central's enrollment answer is not a JSON object")
    terminal = doc.get("terminal") or doc.get("terminal_id")
    store = doc.get("store")
    anchor_doc = doc.get("trust_anchor", doc.get("root_public_key"))
    if isinstance(anchor_doc, dict):
        anchor_doc = anchor_doc.get("root_public_key")
    if not isinstance(terminal, str) or not isinstance(store, str) or not terminal or not store:
        raise EnrollError("the central's enrollment answer names no terminal id and store")
    try:
        key = bytes.fromhex(anchor_doc) if isinstance(anchor_doc, str) else b""
    except ValueError:
        key = b""
    if len(key) != 32:
        raise EnrollError("the central's enrollment answer holds no trust anchor (root key)")
    return terminal, store, TrustAnchor(key)


def enroll(
    data: Path,
    central: str,
    code: str,
    clock: Clock,
    store: str | None = None,
    fingerprint: str | None = None,
    anchor_file: Path | None = None,
    ca: Path | None = None,
    connect_timeout_s: float = 5.0,
    read_timeout_s: float = 20.0,
    first_sync: bool = True,
) -> Enrolled:
    setup.check_not_initialised(data)
    expected: TrustAnchor | None = None
    if anchor_file is not None:
        try:
            expected = TrustAnchor.load(anchor_file)
        except CertError as exc:
            raise EnrollError(str(exc)) from None
    if ca is not None and not ca.is_file():
        raise EnrollError(f"CA bundle {ca} is not a file")
    link = Link(
        central,
        str(ca) if ca else None,
        connect_timeout_s=connect_timeout_s,
        read_timeout_s=read_timeout_s,
    )
    key, key_path, created = ensure_device_key(data)
    try:
        # Not retried: the code is good for one enrollment; a lost answer needs a new code.
        http = CentralLink(link, None, None, clock, retry=False)
        try:
            if fingerprint is not None or expected is not None:
                # The wrong central is told apart before it spends the code and registers
                # our key (a central without the endpoint is checked after, as before).
                early = _published_anchor(http)
                if early is not None:
                    _check_anchor(early, fingerprint, expected, anchor_file)
            answer = http.post_json(
                protocol.ENROLL, {"code": code, "device_key": key.public.hex()}, signed=False
            )
        finally:
            http.close()
        terminal, got_store, anchor = _reply(answer.json())
        _check_anchor(anchor, fingerprint, expected, anchor_file)
        if store is not None and store != got_store:
            raise EnrollError(f"the code enrolls into store {got_store}, not {store}: not enrolled")
    except SyncError as exc:
        _forget(key_path, created)
        raise EnrollError(f"enrollment failed: {exc.message}") from None
    except EnrollError:
        _forget(key_path, created)
        raise
    pinned = "fingerprint" if fingerprint else "trust-anchor" if expected else "tofu"
    data.mkdir(parents=True, exist_ok=True)
    if ca is not None:
        shutil.copyfile(ca, data / CA_FILE)
    setup.init_enrolled(data, anchor, got_store, terminal)
    Settings(
        central=central,
        ca=CA_FILE if ca is not None else None,
        fingerprint=anchor.fingerprint,
        enrolled_at=clock.now(),
    ).save(data)
    first = first_round(data, clock) if first_sync else None
    return Enrolled(terminal, got_store, anchor.fingerprint, pinned, str(key_path), created, first)


def _published_anchor(http: CentralLink) -> TrustAnchor | None:
    """The root key the central publishes at GET TRUST_ANCHOR; None when it has no such
    endpoint (404/405: a retailer's own central may not)."""
    try:
        answer = http.request(
            "GET", TRUST_ANCHOR, headers={"Accept": "application/json"}, signed=False
        )
    except SyncError as exc:
        if exc.status in (404, 405):
            return None
        raise
    doc = answer.json()
    if not isinstance(doc, dict):
        raise EnrollError("the central's trust anchor answer is not a JSON object")
    anchor_doc = doc.get("trust_anchor")
    hex_key = anchor_doc.get("root_public_key") if isinstance(anchor_doc, dict) else None
    try:
        root = bytes.fromhex(hex_key) if isinstance(hex_key, str) else b""
    except ValueError:
        root = b""
    if len(root) != 32:
        raise EnrollError("the central's trust anchor answer holds no root key")
    return TrustAnchor(root)


def _check_anchor(
    anchor: TrustAnchor,
    fingerprint: str | None,
    expected: TrustAnchor | None,
    anchor_file: Path | None,
) -> None:
    if fingerprint is not None and not fingerprint_matches(anchor, fingerprint):
        raise EnrollError(
            f"the central's trust anchor {anchor.fingerprint} does not match the "
            f"fingerprint given ({fingerprint}): not enrolled; is this the right central?"
        )
    if expected is not None and expected.public_key != anchor.public_key:
        raise EnrollError(
            f"the central's trust anchor {anchor.fingerprint} is not the one in "
            f"{anchor_file} ({expected.fingerprint}): not enrolled"
        )


def _forget(key_path: Path, created: bool) -> None:
    """A refused enrollment leaves the data directory as it was."""
    if created:
        key_path.unlink(missing_ok=True)


FIRST_LEDGER_WAIT_S = 30.0  # a store enrolled moments ago gets its ledger at the next tick


def first_round(data: Path, clock: Clock, wait_s: float = FIRST_LEDGER_WAIT_S) -> RoundResult:
    """The first sync round after enrolling. The first till of a new store may ask before
    the central's publisher has made the store's ledger (503 `ledger-not-ready`, one
    publish interval at most): the installer waits here instead of leaving a till that
    refuses every coupon until its next round."""
    engine = setup.open_engine(data, clock)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            result = run_once(data, engine)
            waiting = not result.ok and "not published yet" in (result.error or "")
            if not waiting or time.monotonic() >= deadline:
                return result
            time.sleep(1.0)
    finally:
        engine.db.close()
