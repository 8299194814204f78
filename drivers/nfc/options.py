"""Options of an NFC reader input (`kind = "nfc"`); no device library here."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from drivers.options import OptionError

# nfcpy's bitrate + technology strings: 106A finds Type 2 (NTAG21x) and Type 4A tags
# (NTAG 424 DNA), 106B Type 4B, 212F and 424F Type 3 (FeliCa).
TECHNOLOGIES = ("106A", "106B", "212F", "424F")
PATH_KINDS = ("usb", "tty", "com", "udp")
COUPON_MIME = "application/vnd.edge-redeem.coupon"


def udp_port_usable(port: int) -> bool:
    """nfcpy's udp: frontend turns its port into a service name when /etc/services has one
    (57000 reads as "dircproxy") and then fails on int(); such a port cannot be used."""
    return socket.getnameinfo(("127.0.0.1", port), socket.NI_NUMERICHOST)[1].isdigit()


def _default_targets() -> list[str]:
    return ["106A", "106B", "212F"]


@dataclass(frozen=True)
class NfcOptions:
    # nfcpy device path: "usb" (first supported USB reader), "usb:054c:06c3" (vendor and
    # product id, here a Sony RC-S380), "usb:001:023" (bus and device), "tty:AMA0:pn532"
    # (a PN532 on the Pi's UART), or "udp:127.0.0.1:PORT", nfcpy's simulated frontend that
    # talks to a tag emulator over UDP (the simulated twin: drivers/nfc/emulator.py).
    path: str
    # What to poll for, in order. Each technology with no tag costs one sensing timeout
    # per round (microseconds on a USB reader, a whole second on udp:), so list only the
    # tags the store hands out.
    targets: list[str] = field(default_factory=_default_targets)
    # Pause between polling rounds while no tag is on the reader.
    poll_interval_s: float = 0.05
    # How often a tag left on the reader is checked for presence; it is read again only
    # after it was seen to leave.
    presence_interval_s: float = 0.1
    # The same tag back within this time of leaving is the same tap (a hand wobbling at
    # the edge of the field), not a second one; a tag pulled away mid-read is always reread.
    same_tag_gap_s: float = 0.3
    # After a reader fault or a failed open: first retry after min, doubling up to max.
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 10.0
    # The MIME type of an NDEF record that carries a coupon as is. When a tag holds such a
    # record, only those are delivered: its URI and Text records are then for phones.
    mime_type: str = COUPON_MIME

    def check(self) -> None:
        kind = self.path.split(":", 1)[0]
        if kind not in PATH_KINDS:
            raise OptionError("path", f"must start with one of {', '.join(PATH_KINDS)}")
        if kind == "udp":
            port = self.path.split(":")[2:3]
            if (
                port
                and port[0]
                and not (port[0].isdecimal() and port[0].isascii() and 0 < int(port[0]) < 65536)
            ):
                raise OptionError("path", f"bad udp port {port[0]!r}")
            if port and port[0] and not udp_port_usable(int(port[0])):
                raise OptionError(
                    "path",
                    f"udp port {port[0]} is a named service in /etc/services, which nfcpy "
                    "cannot use; choose another port",
                )
        if not self.targets:
            raise OptionError("targets", "must name at least one technology")
        unknown = [t for t in self.targets if t not in TECHNOLOGIES]
        if unknown:
            raise OptionError(
                "targets", f"unknown {unknown[0]!r} (known: {', '.join(TECHNOLOGIES)})"
            )
        if self.poll_interval_s < 0:
            raise OptionError("poll_interval_s", "must not be negative")
        if self.same_tag_gap_s < 0:
            raise OptionError("same_tag_gap_s", "must not be negative")
        if self.presence_interval_s <= 0:
            raise OptionError("presence_interval_s", "must be positive")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise OptionError("reconnect_min_s", "must be positive and at most reconnect_max_s")
        if "/" not in self.mime_type:
            raise OptionError("mime_type", "must be a MIME type such as type/subtype")

    @property
    def udp_peer(self) -> tuple[str, int] | None:
        """(host, port) of a `udp:` path, with nfcpy's defaults; None for a real reader."""
        if not self.path.startswith("udp"):
            return None
        parts = self.path.split(":")
        host = parts[1] if len(parts) > 1 and parts[1] else "localhost"
        port = int(parts[2]) if len(parts) > 2 and parts[2] else 54321
        return host, port
