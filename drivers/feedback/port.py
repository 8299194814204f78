"""A serial port an output writes to: opened on first use, reopened after an unplug; a
failure is one warning per outage, never an exception into the caller."""

from __future__ import annotations

import logging
import threading

import serial

log = logging.getLogger(__name__)
traffic = logging.getLogger("edge_redeem.traffic.feedback")


class SerialWriter:
    def __init__(
        self,
        what: str,
        port: str,
        baudrate: int = 9600,
        on_open: bytes = b"",
        write_timeout_s: float = 1.0,
    ) -> None:
        self.what = what  # "pole display", "beeper": how the log names the device
        self.port = port
        self.baudrate = baudrate
        self.on_open = on_open  # sent after every (re)open: the device may have lost power
        self.write_timeout_s = write_timeout_s  # a stalled port fails, never hangs an output
        self._serial: serial.Serial | None = None
        self._lock = threading.Lock()
        self._failing = False

    def write(self, data: bytes) -> bool:
        """Write `data`; False (and a warning, once per outage) if the device is not there."""
        with self._lock:
            try:
                self._write(data)
            except (serial.SerialException, OSError) as exc:
                self._drop()
                if not self._failing:
                    log.warning("%s %s: %s; retrying on the next update", self.what, self.port, exc)
                self._failing = True
                return False
            if self._failing:
                log.info("%s %s is back", self.what, self.port)
            self._failing = False
            return True

    def _write(self, data: bytes) -> None:
        if self._serial is not None:
            try:
                self._send(self._serial, data)
                return
            except (serial.SerialException, OSError):
                # The fd may be from before an unplug; one fresh open decides.
                self._drop()
        port = serial.Serial(self.port, self.baudrate, write_timeout=self.write_timeout_s)
        self._serial = port
        self._send(port, self.on_open + data)

    def _send(self, port: serial.Serial, data: bytes) -> None:
        traffic.debug("%s > %r", self.port, data)
        port.write(data)

    def _drop(self) -> None:
        port, self._serial = self._serial, None
        if port is not None:
            try:
                port.close()
            except OSError:  # already gone with the device
                pass

    def close(self) -> None:
        with self._lock:
            self._drop()
