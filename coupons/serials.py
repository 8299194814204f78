"""A set of 64-bit coupon serials in a roaring bitmap (pyroaring's BitMap64), and its two
wire forms: the sorted 8-byte list and the serialized bitmap (docs/central-scale.md).
Serials numbered within a campaign cost well under a byte each in a bitmap; old random
serials cost more there than in the list, so `pack_best` sends whichever is smaller."""

from __future__ import annotations

import operator
import sys
from array import array
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Literal, TypeGuard

from pyroaring import AbstractBitMap64, BitMap64

# Additions wait in a small bitmap until there are this many, then join the shared one:
# copying a set (every ledger delta does) costs only what waits.
MERGE_AT = 50_000
# A serialized bitmap is refused past these. The bytes as a whole ledger file may be
# (coupons.ledger_store); the count because runs make a small blob hold billions of
# serials, which one write in the 8-byte list form would turn into gigabytes.
MAX_RB_BYTES = 64 * 1024 * 1024
MAX_RB_SERIALS = 100_000_000  # twenty times the 5,000,000 a store's scope is sized for
U64_END = 2**64

Form = Literal["list", "rb"]


def pack(serials: Iterable[int]) -> bytes:
    """Wire form: sorted, unique, big-endian uint64."""
    if isinstance(serials, SerialSet | AbstractBitMap64):
        arr = _bitmap_of(serials).to_array()  # already sorted and unique
    else:
        arr = array("Q", sorted(set(serials)))
    if sys.byteorder == "little":
        arr.byteswap()
    return arr.tobytes()


def unpack(data: bytes) -> array[int]:
    if len(data) % 8:
        raise ValueError("serial list length is not a multiple of 8")
    arr = array("Q")
    arr.frombytes(data)
    if sys.byteorder == "little":
        arr.byteswap()
    if not all(map(operator.lt, arr, islice(arr, 1, None))):
        raise ValueError("serial list is not sorted")
    return arr


def pack_rb(serials: Iterable[int]) -> bytes:
    """Wire form: a BitMap64 in the portable roaring serialization, runs optimized."""
    return _bitmap_of(serials).serialize()


def unpack_rb(
    data: bytes, limit_bytes: int = MAX_RB_BYTES, max_serials: int = MAX_RB_SERIALS
) -> BitMap64:
    """A serialized BitMap64, read strictly: corrupt, truncated, trailing bytes or an
    encoding other than the one it re-serializes to are refused, as are blobs past the
    bounds, with ValueError."""
    if len(data) > limit_bytes:
        raise ValueError(f"serial bitmap is {len(data)} bytes, more than {limit_bytes}")
    if not data:  # pyroaring answers IndexError
        raise ValueError("serial bitmap is corrupt: no bytes")
    try:
        bitmap = BitMap64.deserialize(data)
    except (ValueError, IndexError, OverflowError) as exc:
        raise ValueError(f"serial bitmap is corrupt: {exc}") from None
    # The deserializer ignores trailing bytes; signed data means exactly what it says.
    if bitmap.serialize() != data:
        raise ValueError("serial bitmap has trailing or non-canonical bytes")
    if len(bitmap) > max_serials:
        raise ValueError(f"serial bitmap holds {len(bitmap)} serials, more than {max_serials}")
    return bitmap


def pack_best(serials: Iterable[int]) -> tuple[Form, bytes]:
    """The smaller wire form: ("rb", pack_rb(...)) or ("list", pack(...)); the list on a
    tie, since every till reads it."""
    bitmap = _bitmap_of(serials)
    rb = bitmap.serialize()
    if len(rb) < 8 * len(bitmap):
        return "rb", rb
    return "list", pack(bitmap)


def _bitmap_of(serials: Iterable[int]) -> AbstractBitMap64:
    """Serials as one bitmap, to read and never change (it may be a set's own)."""
    if isinstance(serials, SerialSet):
        return serials.bitmap()
    if isinstance(serials, AbstractBitMap64):
        return serials
    return BitMap64(serials)  # optimize=True: consecutive serials become runs


def _in_range(serial: object) -> TypeGuard[int]:
    return isinstance(serial, int) and 0 <= serial < U64_END


class SerialSet:
    """Revoked or redeemed serials: a bitmap shared with copies and never changed in place
    (a change makes a new one), plus a small bitmap of additions not in it."""

    def __init__(self, base: Iterable[int] | None = None) -> None:
        """`base` may be a BitMap64 (as `unpack_rb` returns): it is taken over, not
        copied, so the caller must not change it afterwards."""
        if base is None:
            self._base: AbstractBitMap64 = BitMap64()
        elif isinstance(base, AbstractBitMap64):
            self._base = base
        else:
            self._base = BitMap64(base)
        self._base_len = len(self._base)  # a bitmap counts by walking its containers
        self._recent = BitMap64()

    def __contains__(self, serial: object) -> bool:
        # BitMap64 would take 1.5 for 1 and raise on -1; the old set answered False.
        if not _in_range(serial):
            return False
        return serial in self._recent or serial in self._base

    def __len__(self) -> int:
        return self._base_len + len(self._recent)

    def add_many(self, serials: Iterable[int]) -> None:
        new = serials if isinstance(serials, AbstractBitMap64) else BitMap64(serials)
        self._recent |= new
        self._recent -= self._base  # kept apart, so the length is a sum
        if len(self._recent) >= MERGE_AT:
            self._merge()

    def discard_many(self, serials: Iterable[int]) -> None:
        if isinstance(serials, AbstractBitMap64):
            drop = serials
        else:
            drop = BitMap64(s for s in serials if _in_range(s))
        if not drop:
            return
        self._recent -= drop
        if self._base.intersect(drop):
            self._set_base(self._base - drop)

    def bitmap(self) -> AbstractBitMap64:
        """Every serial in one bitmap, shared with this set: read it, never change it."""
        if self._recent:
            self._merge()
        return self._base

    def _merge(self) -> None:
        self._set_base(self._base | self._recent)
        self._recent = BitMap64()

    def _set_base(self, base: AbstractBitMap64) -> None:
        # A new bitmap, not yet shared: the one moment it may be reshaped.
        if isinstance(base, BitMap64):
            base.run_optimize()
            base.shrink_to_fit()
        self._base = base
        self._base_len = len(base)

    def copy(self) -> SerialSet:
        other = SerialSet.__new__(SerialSet)
        other._base = self._base  # never changed in place: sharing it is safe
        other._base_len = self._base_len
        other._recent = self._recent.copy()
        return other

    def __iter__(self) -> Iterator[int]:
        return iter(self.bitmap())
