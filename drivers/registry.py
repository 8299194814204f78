"""Driver families by the config's `kind`, imported only when used: a missing library or an
absent device becomes a driver that reports itself down, and the terminal serves on."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

from drivers.options import parse_options
from drivers.scan import DOWN, Driver, Health, Now, ScanSink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    options: str  # "module:Class" of the options dataclass (light import, no device libs)
    driver: str  # "module:Class" of the driver; its constructor takes (name, options, now)


# Each real family has a simulated twin selected by kind (the twin runs the real library
# against a simulated device where one exists: a video file, nfcpy's udp: frontend, a pty).
FAMILIES: dict[str, Family] = {
    "camera": Family("drivers.camera.options:CameraOptions", "drivers.camera.driver:CameraDriver"),
    "nfc": Family("drivers.nfc.options:NfcOptions", "drivers.nfc.driver:NfcDriver"),
    "serial": Family(
        "drivers.scanner.options:SerialOptions", "drivers.scanner.driver:SerialScannerDriver"
    ),
    "fake": Family("drivers.fake:FakeOptions", "drivers.fake:FakeDriver"),
}
COMMON = ("name", "kind", "enabled")


def _load(path: str) -> object:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def options_for(kind: str, doc: Mapping[str, object]) -> object:
    """Validate an input's options (raises OptionError / KeyError naming the problem)."""
    if kind not in FAMILIES:
        raise KeyError(f"unknown input kind '{kind}' (known: {', '.join(sorted(FAMILIES))})")
    options = cast("type[object]", _load(FAMILIES[kind].options))  # FAMILIES names a dataclass
    return parse_options(options, doc, ignore=COMMON)


class FailedDriver:
    """Stands in for a driver that could not be created; reports why, does nothing."""

    def __init__(self, name: str, kind: str, reason: str, now: Now) -> None:
        self.name, self.kind = name, kind
        self._health = Health(DOWN, reason, now())

    def start(self, sink: ScanSink) -> None:
        log.warning("input %s (%s) is down: %s", self.name, self.kind, self._health.detail)

    def stop(self, timeout: float = 2.0) -> None:
        return None

    def health(self) -> Health:
        return self._health


def create(name: str, kind: str, options: object, now: Now) -> Driver:
    try:
        cls = cast("Callable[..., Driver]", _load(FAMILIES[kind].driver))  # a driver class
        return cls(name, options, now)
    except Exception as exc:  # ImportError, a missing libzbar, a device that is not there
        log.warning("input %s (%s) could not load: %s", name, kind, exc)
        return FailedDriver(name, kind, f"could not load: {exc}", now)
