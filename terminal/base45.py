"""Base45 (RFC 9285): binary as QR-alphanumeric text."""

from __future__ import annotations

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


def decode(text: str) -> bytes:
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
