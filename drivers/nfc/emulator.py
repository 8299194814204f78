"""The NFC input's simulated twin: tags on loopback for nfcpy's `udp:` frontend. The reader
side is the real NfcDriver on nfcpy (`path = "udp:127.0.0.1:PORT"`); these play the card side
of the same datagram protocol ("<brty> <hex frame>", "RFOFF" when the reader's field goes
off; see nfc/clf/udp.py), for tests, demos and installers with no tag at hand.

- Type2Tag: an NXP NTAG213/215/216 (ISO 14443-3A anticollision, READ, GET_VERSION, READ_SIG).
- Type4Tag: an NTAG 424 DNA-like ISO-DEP card (RATS, I/R/S blocks with response chaining,
  the NFC Forum NDEF application: SELECT by AID, CC file E103, NDEF file E104, READ BINARY).
  Its message may be a function called at every tap, as SUN (SDM) tags produce a fresh URL.
- Type3Tag: a FeliCa card with the NDEF system, its commands answered by nfcpy's own
  Type3TagEmulation (polling, request response, read without encryption).

Each holds a UID and an NDEF message (None: not NDEF formatted); it can be removed (stops
answering) and placed again, pulled away in the middle of a read, stopped and restarted on
the same port."""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
from collections.abc import Callable
from functools import reduce
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    import nfc.tag.tt3

from drivers.nfc.options import udp_port_usable

log = logging.getLogger(__name__)

NdefSource = bytes | Callable[[], bytes] | None
_SAME = object()


def free_udp_port() -> int:
    """A free loopback UDP port that nfcpy's udp: frontend can use (not a named service)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if udp_port_usable(port):
            return port


def _xor(data: bytes) -> int:
    return reduce(lambda a, b: a ^ b, data, 0)


class _Emulator:
    """A thread answering the reader's datagrams on one UDP port for a tag that may be in
    the field."""

    brty = "106A"

    def __init__(self, uid: bytes, ndef: NdefSource, port: int = 0) -> None:
        self.uid = uid
        self.ndef = ndef
        self.port = port or free_udp_port()
        self.present = True
        self._cut = False  # leave the field at the next NDEF data read
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        return f"udp:127.0.0.1:{self.port}"

    def place(self, ndef: NdefSource | object = _SAME, uid: bytes | None = None) -> None:
        """Put a tag (this one, or one with another UID and message) on the reader."""
        with self._lock:
            if ndef is not _SAME:
                self.ndef = cast(NdefSource, ndef)  # anything but the marker is a source
            if uid is not None:
                self.uid = uid
            self._cut = False
            self._reset()
            self.present = True

    def remove(self) -> None:
        with self._lock:
            self.present = False

    def pull_during_read(self) -> None:
        """The tag leaves right after the first part of its NDEF message was read."""
        with self._lock:
            self._cut = True

    def _message(self) -> bytes | None:
        return self.ndef() if callable(self.ndef) else self.ndef

    def _reset(self) -> None:
        """The field went off or the tag was (re)placed: back to the idle state."""

    def start(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", self.port))
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name=f"tag-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        self._sock.close()

    def __enter__(self) -> _Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not select.select([self._sock], [], [], 0.05)[0]:
                continue
            try:
                data, addr = self._sock.recvfrom(4096)
            except OSError:
                continue
            with self._lock:
                reply = self._datagram(data)
            if reply is not None:
                self._sock.sendto(reply, addr)

    def _datagram(self, data: bytes) -> bytes | None:
        if data.startswith(b"RFOFF"):
            self._reset()
            return None
        fields = data.split()
        if len(fields) != 2 or fields[0].decode("ascii", "replace") != self.brty:
            return None  # another technology's poll, or not for a card at all
        if not self.present:
            return None
        frame = bytes.fromhex(fields[1].decode("ascii"))
        log.debug("%s <<< %s", type(self).__name__, frame.hex())
        rsp = self.respond(frame)
        if rsp is None:
            return None
        log.debug("%s >>> %s", type(self).__name__, rsp.hex())
        return b"%s %s" % (self.brty.encode(), rsp.hex().encode())

    def respond(self, frame: bytes) -> bytes | None:
        raise NotImplementedError


class _TypeA(_Emulator):
    """ISO 14443-3A: SENS_REQ/ALL_REQ, anticollision and select for 4- or 7-byte UIDs."""

    sens_res = b"\x44\x00"
    sel_res = 0x00  # the SAK of the fully selected card

    def _reset(self) -> None:
        self.active = False

    def _cascade(self) -> list[bytes]:
        uid = self.uid
        if len(uid) == 4:
            return [uid + bytes([_xor(uid)])]
        cl1 = b"\x88" + uid[:3]
        return [cl1 + bytes([_xor(cl1)]), uid[3:7] + bytes([_xor(uid[3:7])])]

    def respond(self, frame: bytes) -> bytes | None:
        if frame in (b"\x26", b"\x52"):
            self.active = False
            return self.sens_res
        levels = self._cascade()
        for n, (sel, part) in enumerate(zip((0x93, 0x95), levels, strict=False)):
            if frame == bytes([sel, 0x20]):
                return part
            if frame == bytes([sel, 0x70]) + part:
                if n < len(levels) - 1:
                    return b"\x04"  # cascade bit: the UID is not complete yet
                self.active = True
                self._selected()
                return bytes([self.sel_res])
        if frame[:1] == b"\x50":  # HLTA
            self.active = False
            return None
        return self.command(frame) if self.active else None

    def _selected(self) -> None:
        """Hook: the card was just selected."""

    def command(self, frame: bytes) -> bytes | None:
        raise NotImplementedError


# ---------------------------------------------------------------- Type 2: NTAG213/215/216

NTAG = {
    # product: (GET_VERSION response, user memory bytes (CC size * 8), pages in total)
    "NTAG213": (bytes.fromhex("0004040201000f03"), 144, 45),
    "NTAG215": (bytes.fromhex("0004040201001103"), 496, 135),
    "NTAG216": (bytes.fromhex("0004040201001303"), 872, 231),
}
NAK = b"\x00"


class Type2Tag(_TypeA):
    """An NTAG213/215/216: 4-byte pages, READ (0x30) returns 16 bytes, with roll-over at the end
    of memory as the chip does. Read-only: WRITE is refused."""

    def __init__(
        self, uid: bytes, ndef: NdefSource, product: str = "NTAG213", port: int = 0
    ) -> None:
        if len(uid) != 7:
            raise ValueError("an NTAG has a 7-byte UID")
        super().__init__(uid, ndef, port)
        self.product = product
        self.active = False
        self._memory = b""
        self._user_reads = 0

    def _selected(self) -> None:
        self._memory = self._image()
        self._user_reads = 0

    def _image(self) -> bytes:
        version, size, pages = NTAG[self.product]
        uid = self.uid
        head = (
            uid[:3]
            + bytes([0x88 ^ _xor(uid[:3])])
            + uid[3:7]
            + bytes([_xor(uid[3:7]), 0x48, 0x00, 0x00])
        )
        msg = self._message()
        if msg is None:
            cc, data = b"\x00\x00\x00\x00", b""  # not NDEF formatted
        else:
            cc = bytes([0xE1, 0x10, size // 8, 0x00])
            length = bytes([len(msg)]) if len(msg) < 255 else b"\xff" + struct.pack(">H", len(msg))
            data = b"\x03" + length + msg + b"\xfe"
            if len(data) > size:
                raise ValueError(f"NDEF message too long for an {self.product}")
        user = data.ljust(size, b"\x00")
        config = bytes(4) + b"\x04\x00\x00\xff" + bytes(4 * 3)  # lock, CFG0 (AUTH0=FF), ...
        return (head + cc + user + config).ljust(pages * 4, b"\x00")[: pages * 4]

    def command(self, frame: bytes) -> bytes | None:
        cmd = frame[0]
        if cmd == 0x30 and len(frame) == 2:  # READ
            page = frame[1]
            if page >= len(self._memory) // 4:
                return NAK
            if page >= 4 and self._cut:
                if self._user_reads:
                    self.present = False  # pulled away in the middle of the message
                    return None
                self._user_reads += 1
            return (self._memory + self._memory)[page * 4 : page * 4 + 16]
        if cmd == 0x60:  # GET_VERSION
            return NTAG[self.product][0]
        if cmd == 0x3C:  # READ_SIG: an emulator has no originality signature
            return bytes(32)
        # AUTHENTICATE (Ultralight C), PWD_AUTH, WRITE...: NAK, and the tag goes idle.
        self.active = False
        return NAK


# ---------------------------------------------------------------- Type 4: ISO-DEP, NDEF app

NDEF_AID = bytes.fromhex("D2760000850101")
CC_FILE, NDEF_FILE = b"\xe1\x03", b"\xe1\x04"
SW_OK = b"\x90\x00"
SW_NOT_FOUND, SW_WRONG_OFFSET, SW_NO_EF = b"\x6a\x82", b"\x6b\x00", b"\x69\x86"
SW_DENIED, SW_INS = b"\x69\x82", b"\x6d\x00"


class Type4Tag(_TypeA):
    """An NTAG 424 DNA-like Type 4A tag. ATS says FSCI 7 (128-byte frames) and FWI 8
    (77 ms: a Python responder is no 13.56 MHz chip; the chip's own ATS says FWI 7).
    The CC announces MLe 256, so a long READ BINARY answer is sent as chained blocks."""

    sens_res = b"\x44\x03"
    sel_res = 0x20  # ISO/IEC 14443-4 compliant
    ats = bytes.fromhex("067777810280")

    def __init__(self, uid: bytes, ndef: NdefSource, port: int = 0) -> None:
        super().__init__(uid, ndef, port)
        self.active = False
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        self._dep = False  # RATS done: ISO-DEP blocks from now on
        self._fsd = 256
        self._chain = b""  # command chaining from the reader
        self._pending: list[bytes] = []  # response chunks still to send
        self._last: bytes | None = None  # last I-block sent, for retransmission
        self._app = False
        self._file: bytes | None = None
        self._files: dict[bytes, bytes] = {}
        self._ndef_reads = 0

    def command(self, frame: bytes) -> bytes | None:
        if not self._dep:
            if frame[:1] == b"\xe0" and len(frame) == 2:  # RATS
                self._dep = True
                self._fsd = (16, 24, 32, 40, 48, 64, 96, 128, 256)[min(frame[1] >> 4, 8)]
                msg = self._message()
                if msg is not None:
                    size = max(256, len(msg) + 2)
                    self._files = {
                        CC_FILE: bytes.fromhex("000f2001000080")
                        + b"\x04\x06"
                        + NDEF_FILE
                        # max NDEF file size, read access free, write access never
                        + struct.pack(">H", size)
                        + b"\x00\xff",
                        NDEF_FILE: struct.pack(">H", len(msg)) + msg,
                    }
                return self.ats
            return None
        pcb = frame[0]
        if pcb & 0xE2 == 0x02:  # I-block
            number = pcb & 1
            if pcb & 0x10:  # the reader chains a long command
                self._chain += frame[1:]
                return bytes([0xA2 | number])
            apdu, self._chain = self._chain + frame[1:], b""
            rsp = self._apdu(apdu)
            if rsp is None:
                return None
            size = self._fsd - 3  # PCB and CRC take the rest of a frame
            self._pending = [rsp[i : i + size] for i in range(0, len(rsp), size)]
            return self._next_chunk(number)
        if pcb & 0xF6 == 0xA2:  # R(ACK): the reader wants the next chained chunk
            number = pcb & 1
            if self._pending:
                return self._next_chunk(number)
            return self._last if self._last and self._last[0] & 1 == number else None
        if pcb & 0xF6 == 0xB2:  # R(NAK): retransmit, or (a presence check) acknowledge
            number = pcb & 1
            if self._last is not None and self._last[0] & 1 == number:
                return self._last
            return bytes([0xA2 | number])
        if pcb == 0xC2:  # S(DESELECT)
            self._reset()
            return b"\xc2"
        return None

    def _next_chunk(self, number: int) -> bytes:
        chunk = self._pending.pop(0)
        more = 0x10 if self._pending else 0x00
        self._last = bytes([0x02 | more | number]) + chunk
        return self._last

    def _apdu(self, apdu: bytes) -> bytes | None:
        cla, ins, p1, p2 = apdu[:4]
        body = apdu[5 : 5 + apdu[4]] if len(apdu) > 5 else b""
        if ins == 0xA4 and p1 == 0x04:  # SELECT by name
            self._app = body == NDEF_AID and bool(self._files)
            self._file = None
            return SW_OK if self._app else SW_NOT_FOUND
        if ins == 0xA4 and p1 == 0x00:  # SELECT by file id
            self._file = body if self._app and body in self._files else None
            return SW_OK if self._file else SW_NOT_FOUND
        if ins == 0xB0:  # READ BINARY
            if self._file is None:
                return SW_NO_EF
            offset = (p1 & 0x7F) << 8 | p2
            le = (apdu[4] or 256) if len(apdu) == 5 else 256
            data = self._files[self._file]
            if offset > len(data):
                return SW_WRONG_OFFSET
            if self._file == NDEF_FILE and self._cut:
                self._ndef_reads += 1
                if self._ndef_reads > 1:  # the length was read, then the tag left
                    self.present = False
                    return None
            return data[offset : offset + le] + SW_OK
        if ins == 0xD6:  # UPDATE BINARY: this tag is read-only
            return SW_DENIED
        return SW_INS


# ---------------------------------------------------------------- Type 3: FeliCa

# PMm: IC code 01 (a FeliCa Standard card, as nfcpy reads it); the response-time bytes
# are larger than a real card's (request response, read): a Python responder needs slack.
FELICA_PMM = bytes.fromhex("03014b8f4f8f93ff")


class Type3Tag(_Emulator):
    """A FeliCa card with the NFC Forum NDEF system (12FC); `ndef=None` makes one without it
    (a transit card, system 0003). The commands (polling, request response, read without
    encryption) are answered by nfcpy's own Type3TagEmulation.

    Why not nfcpy's udp listener (clf.connect(card=...)) as well: it listens in windows and
    rebinds its port between them, and a reader command arriving as a window closes is lost,
    so a tag there is sometimes found but not read; a card answers whenever it is in the
    field, which is what the tests need to rely on."""

    brty = "212F"

    def __init__(self, idm: bytes, ndef: NdefSource, port: int = 0) -> None:
        if len(idm) != 8 or idm[:2] == b"\x01\xfe":
            raise ValueError("IDm is 8 bytes and 01FE... would be a P2P device")
        super().__init__(idm, ndef, port)
        self._card: nfc.tag.tt3.Type3TagEmulation | None = None

    def _reset(self) -> None:
        self._card = None

    def respond(self, frame: bytes) -> bytes | None:
        if not frame or frame[0] != len(frame):
            return None
        if self._card is None:
            self._card = self._emulation()
        rsp = self._card.process_command(bytearray(frame))
        return None if rsp is None or not self.present else bytes(rsp)

    def _emulation(self) -> nfc.tag.tt3.Type3TagEmulation:
        import nfc.clf
        import nfc.tag.tt3

        msg = self._message()
        system = b"\x12\xfc" if msg is not None else b"\x00\x03"
        target = nfc.clf.LocalTarget("212F")
        target.sensf_res = b"\x01" + self.uid + FELICA_PMM + system
        target.tt3_cmd = b""
        card = nfc.tag.tt3.Type3TagEmulation(None, target)
        if msg is not None:
            blocks = self._blocks(msg)
            served = [0]

            def read(block: int, rb: bool, re: bool) -> bytes | None:
                if block >= len(blocks):
                    return None
                if block >= 1 and self._cut:
                    served[0] += 1
                    if served[0] > 1:
                        self.present = False  # pulled away after the first data block
                return blocks[block]

            card.add_service(0x0009, read, lambda *args: False)  # NDEF read/write service
            card.add_service(0x000B, read, lambda *args: False)  # NDEF read-only service
        return card

    @staticmethod
    def _blocks(msg: bytes) -> list[bytes]:
        nblocks = (len(msg) + 15) // 16
        # Attribute block: version 1.0, 4 blocks per read, 1 per write, capacity, not
        # being written (WriteF 0), read-only (RW 0), the message length; then a checksum.
        attr = bytearray(16)
        attr[0:5] = struct.pack(">BBBH", 0x10, 4, 1, max(nblocks, 1))
        attr[11:14] = struct.pack(">I", len(msg))[1:]
        attr[14:16] = struct.pack(">H", sum(attr[0:14]))
        data = msg.ljust(nblocks * 16, b"\x00")
        return [bytes(attr)] + [data[i : i + 16] for i in range(0, len(data), 16)]
