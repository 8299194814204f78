"""Options of a serial barcode scanner input (`kind = "serial"`); no device library here."""

from __future__ import annotations

from dataclasses import dataclass

from drivers.options import OptionError

PARITIES = ("N", "E", "O", "M", "S")
LINE_ENDS = frozenset("\r\n")


@dataclass(frozen=True)
class SerialOptions:
    # /dev/ttyACM0 (USB CDC-ACM), /dev/ttyUSB0 (USB-RS-232 adapter), /dev/ttyS0 or
    # /dev/ttyAMA0 (a UART); prefer the stable /dev/serial/by-id/... link udev makes.
    port: str
    # A USB CDC scanner ignores the line settings; an RS-232 one must match its own.
    baudrate: int = 9600
    bytesize: int = 8  # 5..8
    parity: str = "N"  # N(one), E(ven), O(dd), M(ark), S(pace)
    stopbits: float = 1  # 1, 1.5 or 2
    # What ends a scan. Any mix of CR and LF (the default "\r\n", or "\r", or "\n")
    # accepts a CR, an LF or CR LF; anything else (e.g. "\t") must appear exactly.
    terminator: str = "\r\n"
    # Stripped from the front / end of a line when present (a scanner's configured
    # prefix/suffix, e.g. STX "\u0002" ... ETX "\u0003"); lines without them pass as they are.
    prefix: str = ""
    suffix: str = ""
    # The scanner sends an AIM symbology identifier ("]Q1" QR, "]E0" EAN-13, "]C1"
    # GS1-128): strip it from the payload and report it as meta "symbology".
    aim_id: bool = False
    # A line longer than this many bytes is discarded (and counted) up to its terminator,
    # so a scanner that never sends a terminator cannot grow memory.
    max_line: int = 4096
    # How often a blocked read looks up; stop wakes it sooner anyway.
    read_timeout_s: float = 0.5
    # After an unplug or a failed open: first retry after min, doubling up to max.
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 5.0
    # Lock the port (flock) so a second reader (scan-test beside the daemon) is refused
    # instead of silently stealing half the bytes.
    exclusive: bool = True

    def check(self) -> None:
        if not self.port:
            raise OptionError("port", "must not be empty")
        if self.baudrate <= 0:
            raise OptionError("baudrate", "must be positive")
        if self.bytesize not in (5, 6, 7, 8):
            raise OptionError("bytesize", "must be 5, 6, 7 or 8")
        if self.parity not in PARITIES:
            raise OptionError("parity", f"must be one of {', '.join(PARITIES)}")
        if self.stopbits not in (1, 1.5, 2):
            raise OptionError("stopbits", "must be 1, 1.5 or 2")
        if not self.terminator:
            raise OptionError("terminator", "must not be empty")
        if self.max_line < 16:
            raise OptionError("max_line", "must be at least 16")
        if self.read_timeout_s <= 0:
            raise OptionError("read_timeout_s", "must be positive")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise OptionError("reconnect_min_s", "must be positive and at most reconnect_max_s")

    @property
    def any_line_end(self) -> bool:
        """True when the terminator is made of CR/LF only: then any CR, LF or CR LF ends."""
        return set(self.terminator) <= LINE_ENDS
