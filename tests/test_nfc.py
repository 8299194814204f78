"""The NFC input end to end at byte level: the real NfcDriver on nfcpy's `udp:` frontend
against tag emulators on loopback (drivers/nfc/emulator.py) that speak the same datagrams
a card would. What is checked is what a cashier or installer would notice: a tap gives one
scan with the tag's UID, a tag left on the reader is not redeemed twice, a bad tag gives
nothing and the reader keeps going, an unplugged reader comes back by itself."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import ndef
import pytest

from coupons import tokens
from coupons.decision import Context
from coupons.journal import Entry
from drivers import registry
from drivers.nfc import emulator as tag_emulator
from drivers.nfc.driver import NfcDriver
from drivers.nfc.options import COUPON_MIME, udp_port_usable
from drivers.options import OptionError
from drivers.scan import Scan
from tests.conftest import World, basket
from tests.nfc_emulation import Type2Tag, Type3Tag, Type4Tag, free_udp_port

# Shaped like an issued token (the driver does not read it; the terminal does).
TOKEN = "CPN1:NCFOXN%TSMAHN-H3O4KWEJ4LT 0.4F:*4IKO-S7X9N5OB*U"

UIDS = {
    "type2": bytes.fromhex("04a1b2c3d4e5f6"),
    "type3": bytes.fromhex("012e4cde12345678"),  # a FeliCa IDm
    "type4": bytes.fromhex("04112233445566"),
}
TAG_TYPE = {"type2": "Type2Tag", "type3": "Type3Tag", "type4": "Type4Tag"}
TARGETS = {"type2": ["106A"], "type3": ["212F"], "type4": ["106A"]}


def message(*records: Any) -> bytes:
    return b"".join(ndef.message_encoder(list(records)))


def mime(payload: bytes) -> bytes:
    return message(ndef.Record(COUPON_MIME, "", payload))


def other_uid(uid: bytes, n: int) -> bytes:
    return uid[:-1] + bytes([(uid[-1] + n) % 256])


def emulator(kind: str, ndef_: Any, port: int = 0) -> Any:
    uid = UIDS[kind]
    if kind == "type2":
        return Type2Tag(uid, ndef_, "NTAG215", port=port)
    if kind == "type3":
        return Type3Tag(uid, ndef_, port=port)
    return Type4Tag(uid, ndef_, port=port)


class Sink:
    """Collects scans from the driver's thread."""

    def __init__(self) -> None:
        self.scans: list[Scan] = []
        self._cond = threading.Condition()

    def __call__(self, scan: Scan) -> None:
        with self._cond:
            self.scans.append(scan)
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = 6.0) -> list[Scan]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.scans) >= count, timeout)
            assert len(self.scans) >= count, f"{len(self.scans)} scan(s), wanted {count}"
            return list(self.scans)


def wait_until(check: Callable[[], bool], timeout: float = 6.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture
def reader() -> Iterator[Callable[..., tuple[NfcDriver, Sink]]]:
    """Start a real NfcDriver, built the way the daemon builds it (registry, options)."""
    started: list[NfcDriver] = []

    def start(path: str, **options: Any) -> tuple[NfcDriver, Sink]:
        opts = registry.options_for("nfc", {"path": path, **options})
        driver = registry.create("front-nfc", "nfc", opts, time.time)
        assert isinstance(driver, NfcDriver), driver.health()
        sink = Sink()
        driver.start(sink)
        started.append(driver)
        return driver, sink

    yield start
    for driver in started:
        driver.stop()


@pytest.fixture
def tags() -> Iterator[Callable[..., Any]]:
    made: list[Any] = []

    def make(kind: str, ndef_: Any, port: int = 0) -> Any:
        emu = emulator(kind, ndef_, port)
        emu.start()
        made.append(emu)
        return emu

    yield make
    for emu in made:
        emu.stop()


def removed(emu: Any, driver: NfcDriver, seconds: float = 0.8) -> None:
    """Take the tag away long enough for the reader to notice."""
    emu.remove()
    time.sleep(seconds)


@pytest.mark.parametrize("kind", ["type2", "type3", "type4"])
def test_a_tap_gives_one_scan_per_coupon_record_with_the_tag_uid(kind: str, tags, reader):
    uid = UIDS[kind]
    emu = tags(kind, mime(TOKEN.encode()))
    driver, sink = reader(emu.path, targets=TARGETS[kind])

    (scan,) = sink.wait(1)
    assert scan.kind == "nfc" and scan.source == "front-nfc"
    assert scan.payload == TOKEN.encode()
    assert dict(scan.meta) == {"tag_uid": uid.hex(), "tag_type": TAG_TYPE[kind], "record": "mime"}

    # Left on the reader, it is not read again.
    time.sleep(1.2)
    assert len(sink.scans) == 1

    # A phone-style URI record that carries the token, on another tag.
    url = "https://coupons.example/r?c=" + urllib.parse.quote(TOKEN, safe=":")
    removed(emu, driver)
    emu.place(message(ndef.UriRecord(url)), uid=other_uid(uid, 1))
    scan = sink.wait(2)[1]
    assert scan.text() == url and scan.meta["record"] == "uri"
    assert scan.meta["tag_uid"] == other_uid(uid, 1).hex()
    assert tokens.extract(scan.text()) == TOKEN  # what the terminal makes of it

    # A Text record (and a record that carries nothing the reader delivers).
    removed(emu, driver)
    emu.place(
        message(ndef.TextRecord(TOKEN, "en"), ndef.Record("image/png", "", b"\x89PNG")),
        uid=other_uid(uid, 2),
    )
    scan = sink.wait(3)[2]
    assert scan.text() == TOKEN and scan.meta["record"] == "text"

    # Taken away and tapped again: that is a second scan.
    removed(emu, driver)
    emu.place()
    scan = sink.wait(4)[3]
    assert scan.text() == TOKEN and scan.meta["tag_uid"] == other_uid(uid, 2).hex()
    assert len(sink.scans) == 4
    health = driver.health()
    assert health.state == "ok"
    assert health.counters["scans"] == 4 and health.counters["tags"] == 4


def test_a_form_encoded_coupon_link_on_a_tag_redeems_as_the_genuine_coupon(
    world: World, tags, reader
):
    """A link a shop wrote with urlencode or URLSearchParams (a space as '+', a '+' as
    %2B), on an NTAG215: tapped, it redeems; no forgery is flagged against the shopper."""
    world.campaign(id="TEN", amount_minor=1000, stacking="any")
    token = next(t for t in world.issue("TEN", 20) if " " in t and "+" in t)
    world.sync_ledger()
    url = "https://coupons.example/r?" + urllib.parse.urlencode({"c": token, "src": "tag"})
    emu = tags("type2", message(ndef.UriRecord(url)))
    driver, sink = reader(emu.path, targets=["106A"])
    (scan,) = sink.wait(1)
    assert scan.text() == url and scan.meta["record"] == "uri"
    code = tokens.extract(scan.text())
    assert code is not None
    ctx = Context(source=scan.kind, tag_uid=bytes.fromhex(scan.meta["tag_uid"]))
    d = world.engine.redeem(code, basket(5000), ctx)
    assert d.accepted and d.discount_minor == 1000, (d.reason, d.detail)
    assert not Entry.select().where(Entry.kind == "flag").exists()


def test_a_coupon_mime_record_wins_over_the_phone_link_on_the_same_tag(tags, reader):
    emu = tags(
        "type2",
        message(ndef.UriRecord("https://coupons.example/app"), ndef.Record(COUPON_MIME, "", b"X1")),
    )
    driver, sink = reader(emu.path, targets=["106A"])
    (scan,) = sink.wait(1)
    assert scan.payload == b"X1" and scan.meta["record"] == "mime"
    time.sleep(0.5)
    assert len(sink.scans) == 1


@pytest.mark.parametrize("kind", ["type2", "type3", "type4"])
def test_bad_tags_give_nothing_and_the_next_good_tag_is_read(kind: str, tags, reader):
    uid = UIDS[kind]
    long_token = (TOKEN + "-" + "A" * 120).encode()  # spans several reads on every type
    emu = tags(kind, None)  # not NDEF formatted
    driver, sink = reader(emu.path, targets=TARGETS[kind])

    def counter(name: str) -> int:
        return driver.health().counters.get(name, 0)

    wait_until(lambda: counter("no_ndef") == 1)

    removed(emu, driver)
    good = mime(long_token)
    assert good[0] & 0x10  # a short record: byte 2 is the payload length
    broken = good[:2] + bytes([good[2] + 40]) + good[3:]  # a payload past the end
    emu.place(broken, uid=other_uid(uid, 1))
    wait_until(lambda: counter("malformed_ndef") == 1)

    removed(emu, driver)
    emu.place(good, uid=other_uid(uid, 2))
    emu.pull_during_read()
    wait_until(lambda: counter("read_interrupted") == 1)

    assert sink.scans == []
    health = driver.health()
    assert health.state == "ok", health
    assert counter("tags") == 3

    time.sleep(0.3)
    emu.place(good, uid=other_uid(uid, 3))
    (scan,) = sink.wait(1)
    assert scan.payload == long_token and scan.meta["tag_uid"] == other_uid(uid, 3).hex()


def test_a_tag_pulled_mid_read_and_put_back_at_once_is_read(tags, reader):
    emu = tags("type4", mime((TOKEN + "-" + "B" * 200).encode()))
    emu.pull_during_read()
    driver, sink = reader(emu.path, targets=["106A"])
    wait_until(lambda: driver.health().counters.get("read_interrupted", 0) == 1)
    emu.place()  # straight back, well within same_tag_gap_s
    (scan,) = sink.wait(1)
    assert scan.payload.startswith(TOKEN.encode())


def test_the_reader_recovers_by_itself_when_the_emulator_comes_back(tags, reader):
    port = free_udp_port()
    emu = tags("type2", mime(b"first"), port=port)
    driver, sink = reader(emu.path, targets=["106A"], reconnect_max_s=1.0)
    sink.wait(1)

    emu.stop()  # the reader is unplugged, as far as nfcpy's udp: frontend can tell
    wait_until(lambda: driver.health().state == "degraded")
    health = driver.health()
    assert "lost" in health.detail or "not available" in health.detail
    assert health.counters.get("reader_errors", 0) + health.counters.get("open_failures", 0) >= 1
    time.sleep(1.0)  # it stays degraded, retrying
    assert driver.health().state == "degraded"

    back = tags("type2", mime(b"second"), port=port)
    back.place(uid=other_uid(UIDS["type2"], 9))
    scan = sink.wait(2, timeout=8.0)[1]
    assert scan.payload == b"second"
    assert driver.health().state == "ok"
    assert driver.alive


@pytest.mark.parametrize("tag_on_reader", [False, True])
def test_stop_returns_within_about_a_second(tag_on_reader: bool, tags, reader):
    emu = tags("type4", mime(b"x"))
    if not tag_on_reader:
        emu.remove()
    driver, sink = reader(emu.path, targets=["106A", "212F"])
    if tag_on_reader:
        sink.wait(1)
    else:
        time.sleep(1.5)  # in the middle of sensing (each udp: sense waits up to 1 s)
    started = time.monotonic()
    driver.stop()
    assert time.monotonic() - started < 1.3
    assert not driver.alive
    assert driver.health().state == "stopped"


def test_an_absent_reader_is_degraded_not_a_crash(reader):
    port = free_udp_port()  # nothing listens there
    driver, sink = reader(f"udp:127.0.0.1:{port}", reconnect_max_s=0.5)
    wait_until(lambda: driver.health().counters.get("open_failures", 0) >= 2)
    health = driver.health()
    assert health.state == "degraded" and "not available" in health.detail
    assert driver.alive and sink.scans == []


@pytest.mark.parametrize(
    "doc, key",
    [
        ({"path": "pcsc:0"}, "path"),
        ({"path": "udp:localhost:99999"}, "path"),
        ({"path": "usb", "targets": ["106A", "424X"]}, "targets"),
        ({"path": "usb", "targets": []}, "targets"),
        ({"path": "usb", "reconnect_min_s": 5.0, "reconnect_max_s": 1.0}, "reconnect_min_s"),
        ({"path": "usb", "poll_every": 1}, "poll_every"),
    ],
)
def test_bad_options_name_the_key(doc: dict[str, Any], key: str) -> None:
    with pytest.raises(OptionError) as err:
        registry.options_for("nfc", doc)
    assert err.value.key == key


def test_a_port_nfcpy_would_read_as_a_service_name_is_refused_and_never_handed_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # /etc/services names 57000 "dircproxy", for one; nfcpy's udp: frontend crashes on it.
    named = next((p for p in range(32768, 61000) if not udp_port_usable(p)), None)
    if named is None:
        pytest.skip("no /etc/services on this machine: every port reads as a number")
    with pytest.raises(OptionError) as err:
        registry.options_for("nfc", {"path": f"udp:127.0.0.1:{named}"})
    assert err.value.key == "path" and "/etc/services" in str(err.value)
    # The emulator's port picker: the kernel's first two picks are (taken to be) named.
    seen: list[int] = []

    def usable(port: int) -> bool:
        seen.append(port)
        return len(seen) > 2

    monkeypatch.setattr(tag_emulator, "udp_port_usable", usable)
    assert free_udp_port() == seen[-1] and len(seen) == 3


def test_scan_test_prints_what_a_tag_carries(tags):
    uid = UIDS["type2"]
    emu = tags("type2", mime(TOKEN.encode()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDEEM_")}
    proc = subprocess.run(
        [sys.executable, "-m", "terminal.cli", "scan-test", "--nfc", emu.path, "--count", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    line = next(x for x in proc.stdout.splitlines() if " nfc: " in x)
    assert repr(TOKEN) in line
    assert f"tag_uid={uid.hex()}" in line and "tag_type=Type2Tag" in line and "record=mime" in line
    assert "1 scan(s)" in proc.stdout
