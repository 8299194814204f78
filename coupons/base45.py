"""Base45 (RFC 9285): binary as QR-alphanumeric text."""

from __future__ import annotations

import struct

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}


class Base45Error(ValueError):
    pass


def encode(data: bytes) -> str:
    out = []
    a = ALPHABET
    for i in range(0, len(data) - 1, 2):
        n = (data[i] << 8) | data[i + 1]
        e, n = divmod(n, 2025)
        d, c = divmod(n, 45)
        out.append(a[c] + a[d] + a[e])
    if len(data) % 2:
        d, c = divmod(data[-1], 45)
        out.append(a[c] + a[d])
    return "".join(out)


def _decode_slow(text: str) -> bytes:
    """The reference decoder: one character and one group at a time. Used to report the
    first bad character; `decode` must always agree with it."""
    v = _VALUE
    try:
        vals = [v[c] for c in text]
    except KeyError as exc:
        raise Base45Error(f"character {exc.args[0]!r} is not base45") from None
    n = len(vals)
    if n % 3 == 1:
        raise Base45Error("base45 length is invalid")
    out = bytearray()
    for i in range(0, n - 2, 3):
        x = vals[i] + vals[i + 1] * 45 + vals[i + 2] * 2025
        if x > 0xFFFF:
            raise Base45Error("base45 group out of range")
        out += x.to_bytes(2, "big")
    if n % 3 == 2:
        x = vals[-2] + vals[-1] * 45
        if x > 0xFF:
            raise Base45Error("base45 group out of range")
        out.append(x)
    return bytes(out)


_ALPHABET_BYTES = ALPHABET.encode("ascii")
_TO_VALUE = bytes(_VALUE.get(chr(b), 0) for b in range(256))


def decode(text: str) -> bytes:
    """Same result and same errors as `_decode_slow`, with the per-group work done by
    bytes.translate, slicing and struct instead of a Python loop (it is on the hot path
    of every coupon check)."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        return _decode_slow(text)  # raises for the first non-ASCII character
    if raw.translate(None, _ALPHABET_BYTES):
        return _decode_slow(text)  # raises for the first character outside the alphabet
    n = len(raw)
    if n % 3 == 1:
        raise Base45Error("base45 length is invalid")
    vals = raw.translate(_TO_VALUE)
    full = n - n % 3
    groups = [
        a + b * 45 + c * 2025
        for a, b, c in zip(vals[0:full:3], vals[1:full:3], vals[2:full:3], strict=True)
    ]
    if groups and max(groups) > 0xFFFF:
        raise Base45Error("base45 group out of range")
    out = struct.pack(f">{len(groups)}H", *groups)
    if n % 3 == 2:
        x = vals[-2] + vals[-1] * 45
        if x > 0xFF:
            raise Base45Error("base45 group out of range")
        out += bytes((x,))
    return out
