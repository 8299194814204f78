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


# 0xFF in the low byte of every 3-byte lane, for as many lanes as a long token has groups;
# decode() builds a longer one for longer input.
_MASK_GROUPS = 1024
_LOW_BYTES = int.from_bytes(b"\xff\x00\x00" * _MASK_GROUPS, "little")


def decode(text: str) -> bytes:
    """Same result and same errors as `_decode_slow`, with no Python loop over the groups
    (it is on the hot path of every coupon check): bytes.translate, slicing and big-integer
    arithmetic do the per-group work in C."""
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
    groups = full // 3
    out = b""
    if groups:
        # Read as one little-endian integer, the groups are 3-byte lanes c*65536 + b*256 +
        # a; masks and shifts take each digit out of every lane at once, and one multiply-
        # add gives every group's value in its own lane: a group is at most 44 + 44*45 +
        # 44*2025 = 91124 < 2**24, so no lane carries into the next.
        mask = (
            _LOW_BYTES
            if groups <= _MASK_GROUPS
            else int.from_bytes(b"\xff\x00\x00" * groups, "little")
        )
        lanes = int.from_bytes(vals[:full], "little")
        value = (lanes & mask) + ((lanes >> 8) & mask) * 45 + ((lanes >> 16) & mask) * 2025
        values = value.to_bytes(full, "little")  # per group: low byte, high byte, overflow
        if values[2::3].count(0) != groups:  # a group above 0xFFFF
            raise Base45Error("base45 group out of range")
        pairs = bytearray(2 * groups)
        pairs[0::2] = values[1::3]
        pairs[1::2] = values[0::3]
        out = bytes(pairs)
    if n % 3 == 2:
        x = vals[-2] + vals[-1] * 45
        if x > 0xFF:
            raise Base45Error("base45 group out of range")
        out += bytes((x,))
    return out
