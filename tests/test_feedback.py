"""The pole display and the beeper through real pyserial on a pseudo-terminal: the exact
bytes the device receives, Chinese on a GB display, unplugged devices, absent GPIO."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coupons.decision import Decision
from coupons.reasons import Reason
from drivers.feedback import beeper as beeper_mod
from drivers.feedback.beeper import Beeper, NullBeeper
from drivers.feedback.pole import NullDisplay, PoleDisplay, fit
from terminal.daemon import feedback
from terminal.daemon.config import OutputSection
from tests.ptys import Pty

INIT = b"\x1b@\x1f\x01"  # ESC @ initialise, US MD1 overwrite mode
CLEAR_HOME = b"\x0c\x0b"  # CLR, HOM
LINE_2 = b"\x1f$\x01\x02"  # US $ 1 2: column 1, row 2


@pytest.fixture
def pty(tmp_path: Path) -> Iterator[Pty]:
    p = Pty(tmp_path / "device")
    yield p
    p.close()


def warnings_from(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= 30]


def test_accept_then_refusal_exact_bytes(pty: Pty) -> None:
    display = PoleDisplay(str(pty.path), 9600, 20)
    display.show(True, ("Coupon accepted", "-10.00 CNY"))
    want = INIT + CLEAR_HOME + b"Coupon accepted     " + LINE_2 + b"-10.00 CNY          "
    assert pty.read(len(want)) == want
    display.show(False, ("Coupon refused", "This coupon has already been used."))
    want = CLEAR_HOME + b"Coupon refused      " + LINE_2 + b"This coupon has alre"
    assert pty.read(len(want)) == want
    assert pty.idle()
    display.close()


def test_chinese_on_a_gb18030_display_cuts_at_whole_characters(pty: Pty) -> None:
    display = PoleDisplay(str(pty.path), 9600, 20, encoding="gb18030")
    display.show(False, ("优惠券被拒绝", "此优惠券已经被使用过了，请换一张"))
    line1 = "优惠券被拒绝".encode("gb18030") + b" " * 8  # six Hanzi, two columns each
    line2 = "此优惠券已经被使用过".encode("gb18030")  # ten Hanzi fill the 20 columns
    want = INIT + CLEAR_HOME + line1 + LINE_2 + line2
    assert pty.read(len(want)) == want
    assert pty.idle()
    display.close()


def test_fitting_text_to_the_display() -> None:
    assert fit("优惠券", 5, "gb18030") == "优惠".encode("gb18030") + b" "  # no half Hanzi
    assert fit("Café ✓ 优惠", 12, "ascii") == b"Cafe ? ??   "
    assert fit("A\x1b@B\nC", 8, "ascii") == b"A @B C  "  # no command smuggled in
    assert fit("x" * 30, 4, "ascii") == b"xxxx"


def test_cd5220_command_set(pty: Pty) -> None:
    display = PoleDisplay(str(pty.path), 9600, 8, protocol="cd5220")
    display.show(True, ("OK", "-5.00"))
    want = b"\x1b@" + b"\x0c\x1bQAOK      \r\x1bQB-5.00   \r"
    assert pty.read(len(want)) == want
    display.close()


def test_unplugged_display_warns_once_and_comes_back(
    pty: Pty, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    display = PoleDisplay(str(pty.path), 9600, 4)
    display.show(True, ("A", "B"))
    assert pty.read(len(INIT) + 14).startswith(INIT)
    pty.unplug()
    display.show(True, ("C", "D"))  # the old fd fails, the reopen finds nothing: no raise
    display.show(True, ("E", "F"))
    assert len(warnings_from(caplog, "drivers.feedback.port")) == 1
    pty.plug()
    display.show(False, ("G", "H"))
    want = INIT + CLEAR_HOME + b"G   " + LINE_2 + b"H   "  # a fresh display is initialised
    assert pty.read(len(want)) == want
    assert len(warnings_from(caplog, "drivers.feedback.port")) == 1
    assert any("is back" in r.getMessage() for r in caplog.records)
    display.close()


def test_display_replugged_between_updates_shows_the_next_one(pty: Pty) -> None:
    display = PoleDisplay(str(pty.path), 9600, 4)
    display.show(True, ("A", "B"))
    assert pty.read(len(INIT) + 14).startswith(INIT)
    pty.unplug()
    pty.plug()
    display.show(True, ("C", "D"))  # the old fd is dead; a fresh open carries this update
    want = INIT + CLEAR_HOME + b"C   " + LINE_2 + b"D   "
    assert pty.read(len(want)) == want
    display.close()


def test_display_absent_from_the_start_does_not_raise(tmp_path: Path) -> None:
    display = PoleDisplay(str(tmp_path / "no-such-port"), 9600, 20)
    display.show(True, ("Coupon accepted", "-1.00"))
    display.close()


def test_daemon_output_shows_a_decision_on_the_display(pty: Pty) -> None:
    spec = OutputSection(name="pole", kind="pole-display", port=str(pty.path), width=20)
    out = feedback.create(spec, "en")
    out.start()
    out.show(Decision(accepted=True, reason=Reason.OK, discount_minor=1250, currency="CNY"))
    # An ASCII display has no ¥: the amount with the currency's code, never a "?".
    want = INIT + CLEAR_HOME + b"Coupon accepted     " + LINE_2 + b"-CNY 12.50          "
    assert pty.read(len(want)) == want
    out.stop()


def test_no_port_and_null_twins_do_nothing(caplog: pytest.LogCaptureFixture) -> None:
    PoleDisplay("", 9600, 20).show(True, ("a", "b"))
    Beeper().show(False, ("a", "b"))
    assert len(caplog.records) == 2  # each says once that it has nothing to drive
    for twin in (NullDisplay(), NullBeeper()):
        twin.show(True, ("a", "b"))
        twin.close()


def test_serial_beeper_patterns(pty: Pty) -> None:
    beeper = Beeper(port=str(pty.path), gap_s=0.05)
    beeper.show(True, ("", ""))
    assert pty.read(1) == b"\x07"
    assert pty.idle()
    t0 = time.monotonic()
    beeper.show(False, ("", ""))
    assert time.monotonic() - t0 >= 0.05  # two beeps, not one merged
    assert pty.read(2) == b"\x07\x07"
    assert pty.idle()
    beeper.close()


def test_serial_beeper_configured_bytes_and_replug(pty: Pty) -> None:
    # e.g. a tower light: green + buzzer on, then all off
    beeper = Beeper(port=str(pty.path), accept_bytes=(b"\x14\x18", b"\x24\x28"), gap_s=0.01)
    beeper.show(True, ("", ""))
    assert pty.read(4) == b"\x14\x18\x24\x28"
    pty.unplug()
    beeper.show(True, ("", ""))  # no raise
    pty.plug()
    beeper.show(True, ("", ""))
    assert pty.read(4) == b"\x14\x18\x24\x28"
    beeper.close()


def test_gpio_absent_is_one_warning_then_silence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(beeper_mod, "SYSFS_GPIO", tmp_path / "no-sysfs-gpio")
    beeper = Beeper(gpio=17, chip=str(tmp_path / "no-gpiochip"))
    t0 = time.monotonic()
    for accepted in (True, False, True):
        beeper.show(accepted, ("", ""))
    assert time.monotonic() - t0 < 0.1  # a no-op, not pulses into nothing
    (warning,) = warnings_from(caplog, "drivers.feedback.beeper")
    assert "gpio 17" in warning and "no-sysfs-gpio" in warning
    beeper.close()


def test_gpio_through_sysfs_uses_the_pin_controllers_numbering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A kernel 6.6 Raspberry Pi: the SoC's lines start at 512 in sysfs.
    root = tmp_path / "gpio"
    for name, label, base in (("gpiochip512", "pinctrl-bcm2711", 512), ("gpiochip504", "x", 504)):
        (root / name).mkdir(parents=True)
        (root / name / "label").write_text(label + "\n")
        (root / name / "base").write_text(f"{base}\n")
    pin = root / "gpio529"  # line 17, already exported
    pin.mkdir()
    (pin / "direction").write_text("in")
    (pin / "value").write_text("0")
    monkeypatch.setattr(beeper_mod, "SYSFS_GPIO", root)
    beeper = Beeper(gpio=17, chip=str(tmp_path / "no-gpiochip"), accept_pulses=(0.01,))
    beeper.show(True, ("", ""))
    assert (pin / "direction").read_text() == "low"
    assert (pin / "value").read_text() == "0"  # back to idle after the pulse
    assert not warnings_from(caplog, "drivers.feedback.beeper")
    beeper.close()
