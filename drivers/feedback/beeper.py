"""An audible/visual signal after a decision: one short beep (or flash) for accept, two long
ones for refuse, through a serial beeper (configured bytes) or a GPIO line on a Pi."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Protocol

from drivers.feedback.port import SerialWriter

log = logging.getLogger(__name__)

SYSFS_GPIO = Path("/sys/class/gpio")
# On/off durations in seconds, starting with "on": accept is one short pulse, refuse two
# long ones, so the two can be told apart without looking.
ACCEPT_PULSES: tuple[float, ...] = (0.08,)
REFUSE_PULSES: tuple[float, ...] = (0.3, 0.15, 0.3)
# Serial beeper: byte strings written one after another, `gap_s` apart. BEL is what most
# displays and serial buzzers beep on; a tower light wants its own "on"/"off" codes.
ACCEPT_BYTES: tuple[bytes, ...] = (b"\x07",)
REFUSE_BYTES: tuple[bytes, ...] = (b"\x07", b"\x07")


class GpioUnavailable(OSError):
    pass


class GpioLine(Protocol):
    def set(self, on: bool) -> None: ...

    def close(self) -> None: ...


class _GpiodV2:
    """libgpiod 2.x Python binding (`pip install gpiod`)."""

    def __init__(self, gpiod: ModuleType, chip: str, line: int, level: bool) -> None:
        from gpiod.line import Direction, Value

        self._line, self._on, self._off = line, Value.ACTIVE, Value.INACTIVE
        settings = gpiod.LineSettings(
            direction=Direction.OUTPUT, output_value=self._on if level else self._off
        )
        self._request = gpiod.request_lines(chip, consumer="edge-redeem", config={line: settings})

    def set(self, on: bool) -> None:
        self._request.set_value(self._line, self._on if on else self._off)

    def close(self) -> None:
        self._request.release()


class _GpiodV1:
    """libgpiod 1.x Python binding (Debian's and Raspberry Pi OS's python3-libgpiod)."""

    def __init__(self, gpiod: ModuleType, chip: str, line: int, level: bool) -> None:
        self._chip = gpiod.Chip(chip)
        self._line = self._chip.get_line(line)
        self._line.request(
            consumer="edge-redeem", type=gpiod.LINE_REQ_DIR_OUT, default_vals=[int(level)]
        )

    def set(self, on: bool) -> None:
        self._line.set_value(1 if on else 0)

    def close(self) -> None:
        self._line.release()
        self._chip.close()


class _Sysfs:
    """The deprecated /sys/class/gpio interface, for kernels and images without gpiod."""

    def __init__(self, root: Path, line: int, level: bool) -> None:
        number = _sysfs_base(root) + line
        pin = root / f"gpio{number}"
        if not pin.exists():
            (root / "export").write_text(str(number))
        # udev may take a moment to make a freshly exported pin writable.
        deadline = time.monotonic() + 1.0
        while True:
            try:
                # Output and its first level in one step: no glitch before the first set.
                (pin / "direction").write_text("high" if level else "low")
                break
            except PermissionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._value = pin / "value"

    def set(self, on: bool) -> None:
        self._value.write_text("1" if on else "0")

    def close(self) -> None:
        return None  # the pin stays exported at its idle level


def _sysfs_base(root: Path) -> int:
    """First sysfs number of the SoC's pin controller: 0 on old kernels, 512 and up on new
    ones, so `gpio` means the same line (the BCM number on a Pi) everywhere."""
    chips = []
    for chip in root.glob("gpiochip*"):
        try:
            label = (chip / "label").read_text().strip()
            chips.append((not label.startswith("pinctrl-"), int((chip / "base").read_text())))
        except (OSError, ValueError):
            continue
    return min(chips)[1] if chips else 0


def open_gpio(line: int, chip: str, level: bool = False) -> GpioLine:
    """The line as an output at `level` (True: high), through gpiod if importable, else
    sysfs; GpioUnavailable says why neither worked."""
    why = []
    try:
        import gpiod
    except ImportError:
        why.append("the gpiod Python module is not installed")
    else:
        try:
            if hasattr(gpiod, "request_lines"):
                return _GpiodV2(gpiod, chip, line, level)
            return _GpiodV1(gpiod, chip, line, level)
        except (OSError, ValueError, TypeError) as exc:
            why.append(f"gpiod on {chip}: {exc}")
    if SYSFS_GPIO.is_dir():
        try:
            return _Sysfs(SYSFS_GPIO, line, level)
        except OSError as exc:
            why.append(f"{SYSFS_GPIO}: {exc}")
    else:
        why.append(f"no {SYSFS_GPIO}")
    raise GpioUnavailable("; ".join(why))


class NullBeeper:
    """The beeper when none is configured: silent."""

    def show(self, accepted: bool, lines: tuple[str, str]) -> None:
        return None

    def close(self) -> None:
        return None


class Beeper:
    """Signals a decision on a serial beeper, a GPIO line (buzzer or LED), or both. A GPIO
    that cannot be had is one warning, then silence; a serial beeper that is unplugged is
    reopened on the next signal. Never raises into the caller."""

    def __init__(
        self,
        port: str | None = None,
        gpio: int | None = None,
        baudrate: int = 9600,
        *,
        chip: str = "/dev/gpiochip0",  # the GPIO character device holding `gpio`
        active_low: bool = False,  # the buzzer/LED sounds when the line is low
        accept_bytes: Sequence[bytes] = ACCEPT_BYTES,
        refuse_bytes: Sequence[bytes] = REFUSE_BYTES,
        gap_s: float = 0.2,  # between the byte strings of one serial signal
        accept_pulses: Sequence[float] = ACCEPT_PULSES,
        refuse_pulses: Sequence[float] = REFUSE_PULSES,
    ) -> None:
        self.gpio, self.chip, self.active_low = gpio, chip, active_low
        self.accept_bytes, self.refuse_bytes, self.gap_s = accept_bytes, refuse_bytes, gap_s
        self.accept_pulses, self.refuse_pulses = accept_pulses, refuse_pulses
        self._serial = SerialWriter("beeper", port, baudrate) if port else None
        self._line: GpioLine | None = None
        self._gpio_failed = False
        self._lock = threading.Lock()
        if port is None and gpio is None:
            log.warning("beeper has neither a port nor a gpio line configured; it stays silent")

    def show(self, accepted: bool, lines: tuple[str, str]) -> None:
        with self._lock:
            if self._serial is not None:
                self._serial_signal(self.accept_bytes if accepted else self.refuse_bytes)
            if self.gpio is not None:
                self._gpio_signal(self.accept_pulses if accepted else self.refuse_pulses)

    def _serial_signal(self, parts: Sequence[bytes]) -> None:
        assert self._serial is not None
        for i, part in enumerate(parts):
            if i:
                time.sleep(self.gap_s)
            if not self._serial.write(part):
                return  # unplugged: warned once; the next signal tries again

    def _gpio_signal(self, pulses: Sequence[float]) -> None:
        line = self._gpio_line()
        if line is None:
            return
        try:
            for i, seconds in enumerate(pulses):
                line.set((i % 2 == 0) != self.active_low)
                time.sleep(seconds)
            line.set(self.active_low)
        except OSError as exc:
            log.warning("beeper gpio %s failed: %s; it stays silent", self.gpio, exc)
            self._release()
            self._gpio_failed = True

    def _gpio_line(self) -> GpioLine | None:
        if self._line is None and not self._gpio_failed and self.gpio is not None:
            try:
                self._line = open_gpio(self.gpio, self.chip, level=self.active_low)
            except OSError as exc:
                log.warning("beeper gpio %s unavailable (%s); it stays silent", self.gpio, exc)
                self._gpio_failed = True
        return self._line

    def _release(self) -> None:
        line, self._line = self._line, None
        if line is not None:
            try:
                line.close()
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            self._release()
            if self._serial is not None:
                self._serial.close()
