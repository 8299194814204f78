"""Serial barcode scanner: lines read through pyserial become scans; an unplugged scanner
is reopened with backoff until it is back."""

from __future__ import annotations

import errno
import logging
import re
import threading
import time
from typing import Any

import serial

from drivers.scan import DEGRADED, OK, HealthState, LoopDriver, Now
from drivers.scanner.options import SerialOptions

log = logging.getLogger(__name__)
traffic = logging.getLogger("edge_redeem.traffic.scanner")

# Bytes a line is trimmed of at both ends: NUL and control noise a scanner or a cable
# emits around a scan (power-up garbage, keep-alive NULs, a stray CR of a CR LF pair).
NOISE = bytes(range(0x20)) + b"\x7f"
ANY_LINE_END = re.compile(rb"[\r\n]")
# An AIM symbology identifier: "]", a code character, a modifier ("]Q1", "]E0", "]d2").
AIM_ID = re.compile(rb"\][A-Za-z][0-9A-Za-z]")
READ_CHUNK = 4096


class LineSplitter:
    """Cuts a byte stream into lines with memory bounded by max_line: a line that grows past
    it is dropped up to its terminator and counted, never kept."""

    def __init__(self, options: SerialOptions, state: HealthState) -> None:
        self._end = (
            ANY_LINE_END
            if options.any_line_end
            else re.compile(re.escape(options.terminator.encode()))
        )
        self._max = options.max_line
        # Bytes kept when dropping an over-long line, so a multi-byte terminator split
        # across two reads is still found.
        self._keep = 0 if options.any_line_end else len(options.terminator.encode()) - 1
        self._state = state
        self._buf = bytearray()
        self._skipping = False  # inside an over-long line: drop until its terminator

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        lines: list[bytes] = []
        while (m := self._end.search(self._buf)) is not None:
            line = bytes(self._buf[: m.start()])
            del self._buf[: m.end()]
            if self._skipping:
                self._skipping = False
            elif len(line) > self._max:
                self._too_long()
            else:
                lines.append(line)
        # The tail may be a line of max_line bytes plus the start of a multi-byte
        # terminator whose end is still on the wire: only past both is the line too long.
        if len(self._buf) > self._max + self._keep:
            if not self._skipping:
                self._too_long()
            self._skipping = True
            del self._buf[: len(self._buf) - self._keep]
        return lines

    def _too_long(self) -> None:
        self._state.count("too_long")
        log.warning("scanner line longer than %d bytes discarded", self._max)

    def reset(self) -> bool:
        """Forget a partial line (the port closed under it); True if a scan was lost."""
        lost = bool(self._buf.strip(NOISE)) and not self._skipping
        self._buf.clear()
        self._skipping = False
        return lost


class SerialScannerDriver(LoopDriver):
    """Reads a scanner in USB CDC-ACM ("USB COM") or RS-232 mode; keyboard-wedge (HID)
    scanners type into whatever window has focus and are not read here."""

    kind = "serial"

    def __init__(self, name: str, options: SerialOptions, now: Now = time.time) -> None:
        super().__init__(name, now)
        self.options = options
        self._port_lock = threading.Lock()
        self._serial: serial.Serial | None = None

    def run(self, stop: threading.Event) -> None:
        opts = self.options
        delay = opts.reconnect_min_s
        outage = False
        while not stop.is_set():
            try:
                port = self._open()
            except (serial.SerialException, OSError) as exc:
                if not outage:
                    log.warning("scanner %s: cannot open %s: %s", self.name, opts.port, exc)
                outage = True
                self.state.set(DEGRADED, f"reconnecting to {opts.port}: {_reason(exc)}")
                if stop.wait(delay):
                    return
                delay = min(delay * 2, opts.reconnect_max_s)
                continue
            if outage:
                log.info("scanner %s: %s is back", self.name, opts.port)
            outage, delay = False, opts.reconnect_min_s
            self.state.set(OK, f"reading {opts.port}")
            splitter = LineSplitter(opts, self.state)
            try:
                self._read(port, splitter, stop)
            except (serial.SerialException, OSError) as exc:
                outage = True
                self.state.count("reconnects")
                self.state.set(DEGRADED, f"reconnecting to {opts.port}: {_reason(exc)}")
                log.warning("scanner %s: %s lost: %s", self.name, opts.port, exc)
            finally:
                self._close()
                if splitter.reset() and not stop.is_set():
                    self.state.count("partial_lost")
                    log.warning("scanner %s: a partial line was lost with the port", self.name)
            if outage and stop.wait(delay):
                return

    def _open(self) -> serial.Serial:
        opts = self.options
        port = serial.Serial(
            opts.port,
            baudrate=opts.baudrate,
            bytesize=opts.bytesize,
            parity=opts.parity,
            stopbits=opts.stopbits,
            timeout=opts.read_timeout_s,
            exclusive=opts.exclusive or None,
        )
        with self._port_lock:
            self._serial = port
        return port

    def _close(self) -> None:
        with self._port_lock:
            port, self._serial = self._serial, None
        if port is not None:
            try:
                port.close()
            except OSError:  # the device is already gone; the fd is released regardless
                pass

    def _read(self, port: serial.Serial, splitter: LineSplitter, stop: threading.Event) -> None:
        while not stop.is_set():
            chunk = port.read(1)  # blocks up to read_timeout_s; wake() cancels it
            if not chunk:
                continue
            waiting = port.in_waiting
            if waiting:
                chunk += port.read(min(waiting, READ_CHUNK))
            # Bytes in but no scans out: the scanner's terminator or framing is set wrong.
            self.state.count("bytes_in", len(chunk))
            traffic.debug("%s < %r", self.options.port, chunk)
            for line in splitter.feed(chunk):
                self._deliver(line)

    def _deliver(self, line: bytes) -> None:
        opts = self.options
        meta: dict[str, Any] = {"port": opts.port}
        line = line.strip(NOISE)
        prefix, suffix = opts.prefix.encode(), opts.suffix.encode()
        if prefix and line.startswith(prefix):
            line = line[len(prefix) :]
        if suffix and line.endswith(suffix):
            line = line[: -len(suffix)]
        if opts.aim_id and (m := AIM_ID.match(line)) is not None:
            meta["symbology"] = m.group().decode("ascii")
            line = line[m.end() :]
        if line:
            self.emit(line, **meta)

    def wake(self) -> None:
        with self._port_lock:
            if self._serial is not None:
                try:
                    self._serial.cancel_read()
                except OSError:  # closing under us; the read timeout still ends the loop
                    pass


def _reason(exc: BaseException) -> str:
    if getattr(exc, "errno", None) == errno.EACCES:
        return f"{exc} (is the service user in the 'dialout' group?)"
    return str(exc)
