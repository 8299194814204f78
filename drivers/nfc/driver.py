"""NFC reader through nfcpy: Type 2 (NTAG21x), Type 3 (FeliCa) and Type 4 (NTAG 424 DNA)
tags are sensed, their NDEF message read, and each record that can carry a coupon becomes a
scan. A tag counts once while it stays on the reader; a reader that fails is closed and
reopened with backoff until it is back."""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Iterator

import ndef
import nfc.clf
import nfc.tag

from drivers.nfc.options import NfcOptions
from drivers.scan import DEGRADED, OK, LoopDriver, Now

log = logging.getLogger(__name__)

# A datagram nfcpy's udp frontend ignores (two fields, an unknown bitrate-technology): sent
# only to learn whether anything is bound to the peer's port.
_UDP_PROBE = b"PROBE 00"


class ReaderLost(Exception):
    """The reader cannot be used now (unplugged, failed, nothing at the udp peer)."""


def udp_listening(host: str, port: int, wait_s: float = 0.05) -> bool:
    """Whether a UDP socket is bound at host:port. A connected UDP socket sees the ICMP
    port-unreachable that an unconnected one (nfcpy's) never reports, so a udp: reader can
    tell "no tag" from "no emulator" the way a USB reader tells it from "unplugged"."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((socket.gethostbyname(host), port))
            probe.send(_UDP_PROBE)
            if select.select([probe], [], [], wait_s)[0]:
                probe.recv(64)
        except ConnectionRefusedError:
            return False
        except OSError as exc:
            log.debug("udp probe of %s:%d: %s", host, port, exc)
            return False
    return True


def _is_p2p(target: nfc.clf.RemoteTarget) -> bool:
    """A phone offering NFC-DEP (peer to peer) rather than a tag; nfcpy's connect() skips
    these the same way."""
    if target.sel_res and target.sel_res[0] & 0x40:
        return True
    return bool(target.sensf_res and target.sensf_res[1:3] == b"\x01\xfe")


class NfcDriver(LoopDriver):
    kind = "nfc"

    def __init__(self, name: str, options: NfcOptions, now: Now = time.time) -> None:
        super().__init__(name, now)
        self.options = options
        self._targets = [nfc.clf.RemoteTarget(t) for t in options.targets]
        # The last tag that was read in full, and when it left the reader (monotonic).
        self._last_uid: bytes | None = None
        self._left_at = float("-inf")

    # ------------------------------------------------------------ the reader

    def run(self, stop: threading.Event) -> None:
        o = self.options
        delay = o.reconnect_min_s
        while not stop.is_set():
            try:
                clf = self._open()
            except (OSError, ReaderLost) as exc:
                self._down("open_failures", f"not available: {exc}", delay)
            else:
                opened = time.monotonic()
                self.state.set(OK, f"reader {clf}")
                log.info("nfc %s: using %s", self.name, clf)
                try:
                    self._serve(clf, stop)
                except (OSError, nfc.clf.Error, ReaderLost) as exc:
                    if time.monotonic() - opened > o.reconnect_max_s:
                        delay = o.reconnect_min_s  # it had worked: a fresh outage
                    self._down("reader_errors", f"lost: {exc}", delay)
                finally:
                    try:
                        clf.close()
                    except OSError as exc:  # an unplugged reader fails to close, too
                        log.debug("closing %s: %s", o.path, exc)
            if stop.wait(delay):
                return
            delay = min(delay * 2, o.reconnect_max_s)

    def _down(self, counter: str, why: str, delay: float) -> None:
        was = self.state.get().state
        self.state.count(counter)
        self.state.set(DEGRADED, f"reader {self.options.path} {why}; retrying in {delay:g} s")
        # Warned once per outage; the retries go to the debug log.
        (log.warning if was != DEGRADED else log.debug)(
            "nfc %s: reader %s %s", self.name, self.options.path, why
        )

    def _open(self) -> nfc.clf.ContactlessFrontend:
        clf = nfc.clf.ContactlessFrontend(self.options.path)  # OSError (ENODEV) when absent
        try:
            self._check_peer()
        except ReaderLost:
            clf.close()
            raise
        return clf

    def _check_peer(self) -> None:
        peer = self.options.udp_peer
        if peer is None:
            return
        if udp_listening(*peer):
            return
        time.sleep(0.1)  # and once more: nfcpy's own tag emulation rebinds between listens
        if udp_listening(*peer):
            return
        raise ReaderLost(f"nothing listens at udp {peer[0]}:{peer[1]}")

    def _serve(self, clf: nfc.clf.ContactlessFrontend, stop: threading.Event) -> None:
        targets = list(self._targets)
        while not stop.is_set():
            self._check_peer()
            found = None
            # One technology per sense() call: stop is honoured between them, and one
            # sensing timeout is the longest stop waits for.
            for target in list(targets):
                if stop.is_set():
                    return
                try:
                    found = clf.sense(target, iterations=1)
                except nfc.clf.UnsupportedTargetError as exc:
                    log.warning("nfc %s: %s cannot sense %s: %s", self.name, clf, target, exc)
                    targets.remove(target)
                    if not targets:
                        raise ReaderLost(f"reader senses none of {self.options.targets}") from None
                    continue
                if found is not None:
                    break
            if found is None or _is_p2p(found):
                stop.wait(self.options.poll_interval_s)
                continue
            self._tap(clf, found, stop)

    # ------------------------------------------------------------ a tag

    def _tap(
        self, clf: nfc.clf.ContactlessFrontend, target: nfc.clf.RemoteTarget, stop: threading.Event
    ) -> None:
        tag = nfc.tag.activate(clf, target)
        if tag is None:
            self.state.count("activation_failed")
            log.info("nfc %s: a tag was found but not activated (gone, or unsupported)", self.name)
            return
        uid = bytes(tag.identifier)
        if uid == self._last_uid and time.monotonic() - self._left_at < self.options.same_tag_gap_s:
            log.debug("nfc %s: tag %s back within the gap, same tap", self.name, uid.hex())
        else:
            self._last_uid = uid if self._read(tag, uid) else None
        while not stop.wait(self.options.presence_interval_s):
            if not self._present(tag):
                break
        self._left_at = time.monotonic()

    def _read(self, tag: nfc.tag.Tag, uid: bytes) -> bool:
        """Read the NDEF message and emit its coupon records; False when the tag left
        before its message was read (so it is read afresh when it comes back)."""
        self.state.count("tags")
        try:
            found = tag.ndef  # None both for "no NDEF" and for a read cut short
            octets = None if found is None else bytes(found.octets)
        except OSError:
            raise
        except Exception:  # a library fault on one odd tag must not end the reader
            self.state.count("read_faults")
            log.exception("nfc %s: reading tag %s failed", self.name, uid.hex())
            return True
        if octets is None:
            if not self._present(tag):
                self.state.count("read_interrupted")
                log.info("nfc %s: tag %s left before it was read", self.name, uid.hex())
                return False
            self.state.count("no_ndef")
            log.info("nfc %s: tag %s (%s) holds no NDEF message", self.name, uid.hex(), tag)
            return True
        try:
            # Relaxed as nfcpy reads: a writer that forgot the message begin/end flags still
            # gives its records; a record running past the data is malformed either way.
            records = list(ndef.message_decoder(octets, errors="relax"))
        except (ndef.DecodeError, ValueError) as exc:
            # ndeflib lets a ValueError through for some damage even when relaxed (a record
            # type that is not ASCII: UnicodeDecodeError); the tag is malformed all the same.
            self.state.count("malformed_ndef")
            log.warning(
                "nfc %s: tag %s has a malformed NDEF message: %s", self.name, uid.hex(), exc
            )
            return True
        payloads = list(self._payloads(records))
        if not payloads:
            self.state.count("no_coupon_record")
            log.info("nfc %s: tag %s holds no MIME, URI or Text record", self.name, uid.hex())
        for payload, record in payloads:
            self.emit(payload, tag_uid=uid.hex(), tag_type=tag.type, record=record)
        return True

    def _payloads(self, records: list[ndef.Record]) -> Iterator[tuple[bytes, str]]:
        mime = self.options.mime_type.lower()
        coupons = [r for r in records if str(r.type).lower() == mime]
        if coupons:
            for r in coupons:
                yield bytes(r.data), "mime"
            return
        for r in records:
            if isinstance(r, ndef.UriRecord):
                yield r.iri.encode("utf-8"), "uri"
            elif isinstance(r, ndef.SmartposterRecord) and r.resource is not None:
                yield r.resource.iri.encode("utf-8"), "uri"
            elif isinstance(r, ndef.TextRecord):
                yield r.text.encode("utf-8"), "text"

    def _present(self, tag: nfc.tag.Tag) -> bool:
        try:
            return bool(tag.is_present)
        except (nfc.tag.TagCommandError, nfc.clf.CommunicationError) as exc:
            log.debug("nfc %s: presence check: %s", self.name, exc)
            return False
