"""A serial customer pole display (2x20 VFD and alike): two lines fitted to its width and
framed in the Epson ESC/POS customer-display command set, or CD5220's."""

from __future__ import annotations

import codecs
import logging
import unicodedata
from dataclasses import dataclass

from drivers.feedback.port import SerialWriter

log = logging.getLogger(__name__)

ESC, US = b"\x1b", b"\x1f"
CLR, HOM, CR = b"\x0c", b"\x0b", b"\r"


@dataclass(frozen=True)
class CommandSet:
    init: bytes  # sent whenever the port is (re)opened
    head: bytes  # before line 1: clear and home
    line2: bytes  # between line 1 and line 2
    tail: bytes  # after line 2


COMMAND_SETS = {
    # Epson ESC/POS customer display (DM-D series; the "Epson" mode of most clones):
    # ESC @ initialise, US MD1 overwrite mode (so a full lower line never scrolls the
    # display); CLR clear; HOM cursor home; US $ x y cursor to column x, row y.
    "epson": CommandSet(ESC + b"@" + US + b"\x01", CLR + HOM, US + b"$\x01\x02", b""),
    # CD5220: ESC @ initialise; CLR clear; ESC Q A text CR / ESC Q B text CR set the upper /
    # lower line, wherever the cursor is.
    "cd5220": CommandSet(ESC + b"@", CLR + ESC + b"QA", CR + ESC + b"QB", CR),
}


def fit(text: str, width: int, encoding: str) -> bytes:
    """`text` as exactly `width` bytes of `encoding`: cut at a whole character (a Hanzi
    takes two columns in GB encodings), padded with spaces; control characters become
    spaces (they would be commands to the display) and what the display's character set
    lacks becomes its accent-free form ("é" -> "e") or "?"."""
    out = bytearray()
    for ch in text:
        data = _char(ch, encoding)
        if len(out) + len(data) > width:
            break
        out += data
    return bytes(out) + b" " * (width - len(out))


def _char(ch: str, encoding: str) -> bytes:
    if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
        return b" "
    try:
        return ch.encode(encoding)
    except UnicodeEncodeError:
        pass
    base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
    try:
        return base.encode(encoding) if base else b"?"
    except UnicodeEncodeError:
        return b"?"


class NullDisplay:
    """The display when none is configured: shows nothing."""

    def show(self, accepted: bool, lines: tuple[str, str]) -> None:
        return None

    def close(self) -> None:
        return None


class PoleDisplay:
    """Shows two lines after each decision; an unplugged display is a warning and is
    reopened on the next show, never an exception into the caller."""

    def __init__(
        self,
        port: str,
        baudrate: int = 9600,
        width: int = 20,
        *,
        encoding: str = "ascii",  # the display's character set: "gb18030" for Chinese VFDs
        protocol: str = "epson",  # a key of COMMAND_SETS
    ) -> None:
        if width < 1:
            raise ValueError("pole display width must be at least 1")
        if protocol not in COMMAND_SETS:
            raise ValueError(f"pole display protocol must be one of {', '.join(COMMAND_SETS)}")
        self.width = width
        self.encoding = codecs.lookup(encoding).name  # an unknown name fails here, not later
        self.commands = COMMAND_SETS[protocol]
        self._writer: SerialWriter | None = None
        if port:
            self._writer = SerialWriter("pole display", port, baudrate, self.commands.init)
        else:
            log.warning("pole display has no port configured; it will show nothing")

    def frame(self, lines: tuple[str, str]) -> bytes:
        """The bytes that show `lines`: clear, home, line 1, line 2."""
        c = self.commands
        first, second = (fit(t, self.width, self.encoding) for t in lines)
        return c.head + first + c.line2 + second + c.tail

    def show(self, accepted: bool, lines: tuple[str, str]) -> None:
        if self._writer is not None:
            self._writer.write(self.frame(lines))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
