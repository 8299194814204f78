"""The daemon's one TOML config, validated strictly: an unknown key, a wrong type or a bad
value is an error that names the key, the file and the line."""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers import registry
from drivers.options import OptionError, parse_options

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Keys holding a duration, in any section or input: never negative.
DURATION_SUFFIXES = ("_s", "_ms", "_hours")


class ConfigError(ValueError):
    def __init__(self, path: Path, line: int | None, key: str, message: str) -> None:
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {key}: {message}")
        self.path, self.line, self.key = path, line, key


@dataclass(frozen=True)
class TerminalSection:
    data: str = "/var/lib/edge-redeem"  # all state lives here (systemd StateDirectory)
    lang: str = "en"  # language of cashier sentences: en or zh_CN
    mode: str = "standalone"  # standalone (cashier enters the total) or pos (till API)
    currency: str = "CNY"
    cashier: str | None = None  # default cashier id when the till does not say
    void_window_s: float = 300.0  # how long the cashier screen can take back the last coupon

    def check(self) -> None:
        if self.void_window_s < 0:
            raise OptionError("void_window_s", "must be 0 (no voids) or more seconds")
        if self.mode not in ("standalone", "pos"):
            raise OptionError("mode", "must be 'standalone' or 'pos'")
        if self.lang not in ("en", "zh_CN"):
            raise OptionError("lang", "must be 'en' or 'zh_CN'")


@dataclass(frozen=True)
class OutputSection:
    name: str
    kind: str  # pole-display, beeper, log
    port: str | None = None  # serial port of a pole display or beeper
    baudrate: int = 9600
    width: int = 20  # characters per line of a pole display
    encoding: str = "ascii"  # the display's character set: "gb18030" for Chinese VFDs
    protocol: str = "epson"  # pole display command set: epson (ESC/POS) or cd5220
    gpio: int | None = None  # GPIO line of a buzzer/LED (Raspberry Pi)
    chip: str = "/dev/gpiochip0"  # the GPIO character device holding `gpio`
    active_low: bool = False  # the buzzer/LED sounds when the line is low
    accept_hex: list[str] | None = None  # serial beeper: byte strings (hex) for an accept
    refuse_hex: list[str] | None = None  # ... and for a refusal
    enabled: bool = True

    def check(self) -> None:
        if self.kind not in ("pole-display", "beeper", "log"):
            raise OptionError("kind", "must be pole-display, beeper or log")
        if self.protocol not in ("epson", "cd5220"):
            raise OptionError("protocol", "must be epson or cd5220")
        for key in ("accept_hex", "refuse_hex"):
            for value in getattr(self, key) or ():
                try:
                    bytes.fromhex(value)
                except ValueError:
                    raise OptionError(key, f"{value!r} is not hex bytes") from None


@dataclass(frozen=True)
class KioskSection:
    host: str = "127.0.0.1"  # a non-loopback address needs allow_network (docs/kiosk.md)
    port: int = 8080  # 1-65535
    enabled: bool = True
    # Names browsers and tills use to reach the kiosk (the Host header), besides loopback
    # names and `host` itself: a request naming any other host is refused (DNS rebinding).
    hostnames: list[str] = field(default_factory=list)
    # Serving other machines is a decision, not a typo: a non-loopback `host` needs this.
    allow_network: bool = False
    # Client networks let in (CIDR, e.g. "192.168.1.0/24"); 127.0.0.1 and ::1 always are.
    # Required when allow_network is true; every other client gets 403.
    allowed_clients: list[str] = field(default_factory=list)
    # The cashier screen goes back to "Ready for the next coupon" this long after the last
    # decision (a commit, a cancel or a new total end the sale's panel at once); above 0.
    idle_after_s: float = 20.0
    # A short beep in the cashier's browser on an accept or a refusal (Web Audio); the
    # cashier can switch it on or off on the screen itself, which that browser remembers.
    sound: bool = False

    def check(self) -> None:
        if not self.idle_after_s > 0:
            raise OptionError(
                "idle_after_s",
                f"must be more than 0 seconds, not {self.idle_after_s}: the cashier screen"
                " shows a decision this long before it is ready for the next coupon",
            )
        if not 1 <= self.port <= 65535:
            raise OptionError("port", f"must be a TCP port from 1 to 65535, not {self.port}")
        for name in self.hostnames:
            if not name or (any(c in name for c in "/:@ ") and not is_ip(name)):
                raise OptionError("hostnames", f"{name!r} is not a host name (no scheme or port)")
        for net in self.allowed_clients:
            try:
                ipaddress.ip_network(net)
            except ValueError as exc:
                raise OptionError("allowed_clients", f"{net!r}: {exc}") from None
        if not is_loopback(self.host) and not self.allow_network:
            raise OptionError(
                "host",
                f"{self.host!r} is not a loopback address: serving other machines needs"
                " allow_network = true and allowed_clients",
            )
        if self.allow_network and not self.allowed_clients:
            raise OptionError(
                "allowed_clients",
                'must list the client networks let in (e.g. ["192.168.1.0/24"]) when'
                " allow_network is true",
            )


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or name) only ever reaches this machine."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # any other name may resolve to a network address


@dataclass(frozen=True)
class SyncSection:
    central: str | None = None  # https URL of the central service; none: USB ledgers only
    interval_s: float = 60.0  # between rounds that succeeded
    enabled: bool = True
    ca: str | None = None  # PEM bundle pinning the central's CA (default: the one enrolled)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 20.0  # longest silence from the central before a round fails
    retry_base_s: float = 5.0  # after failures: full jitter up to base * 2**(n-1) ...
    max_backoff_s: float = 300.0  # ... capped here

    def check(self) -> None:
        if self.central is not None and not self.central.startswith(("https://", "http://")):
            raise OptionError("central", "must be an https:// URL")
        if self.central is not None:
            try:  # urllib reads 0 and refuses only past 65535, when the first round runs
                port = urllib.parse.urlsplit(self.central).port
            except ValueError:
                port = 0
            if port == 0:
                raise OptionError("central", "has a bad port (must be 1 to 65535)")
        for key in ("interval_s", "connect_timeout_s", "read_timeout_s", "retry_base_s"):
            if getattr(self, key) <= 0:
                raise OptionError(key, "must be positive")
        if self.max_backoff_s < self.retry_base_s:
            raise OptionError("max_backoff_s", "must not be below retry_base_s")


@dataclass(frozen=True)
class WatchdogSection:
    # No input "stall" timeout here: a scanner or NFC reader rightly delivers nothing for
    # hours; the camera watches its own frames (its `stall_s` option).
    restart_budget: int = 5  # input restarts allowed per window before the daemon gives up
    window_s: float = 600.0
    # One engine job (a decision, a ledger import) running longer than this withholds
    # systemd's watchdog pings: a worker hung on a stalled SD-card write gets restarted.
    engine_stall_s: float = 30.0
    # A full disk at start-up: the daemon waits (tells systemd it is up, keeps the watchdog
    # fed) and tries to open the journal again this often, instead of exiting into the
    # unit's start limit: the till comes back by itself once space is freed.
    disk_full_retry_s: float = 10.0

    def check(self) -> None:
        if self.restart_budget < 0:
            raise OptionError("restart_budget", "must not be negative")
        for key in ("window_s", "engine_stall_s", "disk_full_retry_s"):
            if getattr(self, key) <= 0:
                raise OptionError(key, "must be positive")


@dataclass(frozen=True)
class PeersSection:
    """The tills of one store vouch for each other (docs/store-peers.md)."""

    enabled: bool = False
    listen: str = "0.0.0.0:7311"  # UDP host:port the peer messages arrive on
    # The other tills of the store, "S1-002@192.168.1.12:7311" (this till's own entry is
    # skipped, so one list serves the whole store); zeroconf adds the ones it finds.
    addresses: list[str] = field(default_factory=list)
    discovery: bool = True  # find the store's tills with mDNS (_redeem-peers._udp)
    # Longest a sale waits for the peers that are up; a silent peer never makes it longer.
    claim_bound_ms: float = 150.0
    # Also claim per-customer limits and coupon-count budgets, not only single-use coupons.
    claim_counters: bool = True
    hello_interval_s: float = 2.0
    down_after_s: float = 6.0  # a peer silent this long is down: claims stop waiting for it
    replay_window_s: float = 60.0  # messages further from our clock are refused as stale
    rate_per_s: float = 100.0  # messages per second a peer may send (burst: twice that)
    max_datagram: int = 1200  # bytes; under the IPv6 minimum MTU, so never fragmented

    def check(self) -> None:
        from sync.peers.wire import parse_address, parse_book

        try:
            parse_address(self.listen)
        except ValueError as exc:
            raise OptionError("listen", str(exc)) from None
        try:
            parse_book(self.addresses)
        except ValueError as exc:
            raise OptionError("addresses", str(exc)) from None
        for key in ("claim_bound_ms", "hello_interval_s", "down_after_s", "rate_per_s"):
            if getattr(self, key) <= 0:
                raise OptionError(key, "must be positive")
        if self.down_after_s <= self.hello_interval_s:
            raise OptionError("down_after_s", "must be longer than hello_interval_s")
        if not 256 <= self.max_datagram <= 1200:
            raise OptionError("max_datagram", "must be 256 to 1200 bytes")


@dataclass(frozen=True)
class LogSection:
    format: str = "auto"  # json under systemd (JOURNAL_STREAM set), text otherwise
    level: str = "INFO"  # DEBUG, INFO, WARNING, ERROR or CRITICAL; SIGHUP applies a change
    device_traffic: bool = False  # raw bytes from devices on the edge_redeem.traffic logger

    def check(self) -> None:
        if self.format not in ("auto", "json", "text"):
            raise OptionError("format", "must be auto, json or text")
        if self.level.upper() not in LOG_LEVELS:
            raise OptionError("level", f"must be one of {', '.join(LOG_LEVELS)}")


@dataclass(frozen=True)
class InputConfig:
    name: str
    kind: str
    enabled: bool
    options: Any


@dataclass(frozen=True)
class Config:
    path: Path
    terminal: TerminalSection = field(default_factory=TerminalSection)
    inputs: tuple[InputConfig, ...] = ()
    outputs: tuple[OutputSection, ...] = ()
    kiosk: KioskSection = field(default_factory=KioskSection)
    sync: SyncSection = field(default_factory=SyncSection)
    watchdog: WatchdogSection = field(default_factory=WatchdogSection)
    log: LogSection = field(default_factory=LogSection)
    peers: PeersSection = field(default_factory=PeersSection)


SECTIONS: dict[str, type] = {
    "terminal": TerminalSection,
    "kiosk": KioskSection,
    "sync": SyncSection,
    "watchdog": WatchdogSection,
    "log": LogSection,
    "peers": PeersSection,
}
_HEADER = re.compile(r"^\s*\[(\[)?\s*([A-Za-z0-9_.-]+)\s*\]?\]\s*(#.*)?$")


def locate(text: str, table: str, index: int | None, key: str | None) -> int | None:
    """Line number of `key` in table `table` (the index-th `[[table]]`), or of the header."""
    seen = -1
    inside = table == ""
    header_line = None
    for number, line in enumerate(text.splitlines(), start=1):
        m = _HEADER.match(line)
        if m:
            name, is_array = m.group(2), bool(m.group(1))
            if table == "" and name == key:  # a whole section that should not be there
                return number
            if name == table and (not is_array or index is None):
                inside, header_line = True, number
            elif name == table and is_array:
                seen += 1
                inside = seen == index
                header_line = number if inside else header_line
            else:
                inside = False
            continue
        if inside and key and re.match(rf"^\s*\"?{re.escape(key)}\"?\s*=", line):
            return number
    return header_line


def load(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, "file", f"cannot read: {exc}") from None
    try:
        doc = tomllib.loads(text)
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise ConfigError(path, None, "syntax", "values nested too deeply") from None
    except ValueError as exc:  # TOMLDecodeError, or an integer of over 4300 digits
        found = re.search(r"at line (\d+)", str(exc))  # tomllib states the line in its message
        raise ConfigError(
            path, int(found.group(1)) if found else None, "syntax", str(exc)
        ) from None
    return parse(doc, path, text)


def _leaves(doc: dict[str, Any]) -> list[tuple[str, int | None, str, Any]]:
    """(table, index in an array of tables, key, value) for every key of every table: the
    checks that hold whatever the section (TOML has nan and inf literals)."""
    out: list[tuple[str, int | None, str, Any]] = []
    for top, value in doc.items():
        tables = value if isinstance(value, list) else [value]
        for i, table in enumerate(tables):
            if not isinstance(table, dict):
                continue
            index = i if isinstance(value, list) else None
            for key, item in table.items():
                for one in item if isinstance(item, list) else [item]:
                    out.append((top, index, key, one))
    return out


def parse(doc: dict[str, Any], path: Path, text: str = "") -> Config:
    def fail(table: str, index: int | None, key: str, message: str) -> ConfigError:
        shown = f"{table}[{index}].{key}" if index is not None else f"{table}.{key}"
        return ConfigError(path, locate(text, table, index, key), shown.strip("."), message)

    for table, index, key, value in _leaves(doc):
        if isinstance(value, float) and not math.isfinite(value):
            raise fail(table, index, key, f"must be a finite number, not {value}")
        # TOML integers are 64-bit (tomllib reads any size): a larger one is an error.
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise fail(table, index, key, "is too large a number (TOML integers are 64-bit)")
        if isinstance(value, int | float) and key.endswith(DURATION_SUFFIXES) and value < 0:
            raise fail(table, index, key, f"is a duration and must not be negative ({value})")
    sections: dict[str, Any] = {}
    for top, value in doc.items():
        if top in SECTIONS:
            if not isinstance(value, dict):
                raise fail("", None, top, "must be a table")
            try:
                sections[top] = parse_options(SECTIONS[top], value)
            except OptionError as exc:
                raise fail(top, None, exc.key, str(exc).split(": ", 1)[1]) from None
        elif top not in ("input", "output"):
            raise fail(
                "",
                None,
                top,
                f"unknown section (known: {', '.join(sorted([*SECTIONS, 'input', 'output']))})",
            )
    inputs = []
    names: set[str] = set()
    for i, raw in enumerate(doc.get("input", [])):
        if not isinstance(raw, dict):
            raise fail("input", i, "input", "must be a table ([[input]])")
        for key in ("name", "kind"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise fail("input", i, key, "is required (a string)")
        if raw["name"] == "peers":  # the health line of the store peers
            raise fail("input", i, "name", "'peers' is reserved for the store peers")
        if raw["name"] in names:
            raise fail("input", i, "name", f"'{raw['name']}' is used twice")
        names.add(raw["name"])
        enabled = raw.get("enabled", True)
        if not isinstance(enabled, bool):
            raise fail("input", i, "enabled", "must be true or false")
        try:
            options = registry.options_for(raw["kind"], raw)
        except KeyError as exc:
            raise fail("input", i, "kind", str(exc.args[0])) from None
        except OptionError as exc:
            raise fail("input", i, exc.key, str(exc).split(": ", 1)[1]) from None
        inputs.append(InputConfig(raw["name"], raw["kind"], enabled, options))
    outputs: list[OutputSection] = []
    for i, raw in enumerate(doc.get("output", [])):
        if not isinstance(raw, dict):
            raise fail("output", i, "output", "must be a table ([[output]])")
        try:
            output = parse_options(OutputSection, raw)
        except OptionError as exc:
            raise fail("output", i, exc.key, str(exc).split(": ", 1)[1]) from None
        if any(o.name == output.name for o in outputs):
            raise fail("output", i, "name", f"'{output.name}' is used twice")
        outputs.append(output)
    return Config(path, inputs=tuple(inputs), outputs=tuple(outputs), **sections)
