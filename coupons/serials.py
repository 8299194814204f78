"""A set of 64-bit coupon serials, and its two wire forms: the sorted 8-byte list and the
serialized roaring bitmap (docs/central-scale.md). Serials numbered within a campaign cost
well under a byte each in a bitmap and old random serials 22 bytes (8 in a sorted array),
so a `SerialSet` keeps each kind where it is cheap and `pack_best` sends whichever wire
form is smaller."""

from __future__ import annotations

import bisect
import heapq
import operator
import sys
from array import array
from collections.abc import Iterable, Iterator
from itertools import compress, islice, repeat, takewhile, tee
from typing import Literal, TypeGuard

from pyroaring import AbstractBitMap64, BitMap64

# Additions wait beside a base (in a small bitmap or set) until there are this many, then
# join it: copying a set (every ledger delta does) costs only what waits.
MERGE_AT = 50_000
# A serialized bitmap is refused past these. The bytes as a whole ledger file may be
# (coupons.ledger_store); the count because runs make a small blob hold billions of
# serials, which one write in the 8-byte list form would turn into gigabytes.
MAX_RB_BYTES = 64 * 1024 * 1024
MAX_RB_SERIALS = 100_000_000  # twenty times the 5,000,000 a store's scope is sized for
U64_END = 2**64
# A serial whose low 32 bits are below this is numbered and lives in the bitmap: campaigns
# count their coupons from 1, and 16.7 million is more than one prints. A random serial
# falls below it one time in 256 and lives there too, at 22 bytes instead of 8; a count
# past it lives in the array. Either way each serial has exactly one home.
NUMBERED_END = 2**24
LOW_MASK = 2**32 - 1
BUCKET = 2**32  # the serials sharing their high 32 bits: a campaign's, for numbered ones
# The fewest bytes one bucket adds to a serialized BitMap64: its 4-byte key, then a 32-bit
# roaring bitmap of one container (cookie, run flags, header: 9 bytes; one run: 6).
RB_BUCKET_MIN_BYTES = 19

Form = Literal["list", "rb"]


def pack(serials: Iterable[int]) -> bytes:
    """Wire form: sorted, unique, big-endian uint64."""
    if isinstance(serials, SerialSet):
        arr = serials.sorted_array()
    elif isinstance(serials, AbstractBitMap64):
        arr = serials.to_array()  # already sorted and unique
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
    if isinstance(serials, SerialSet):
        # Random serials each make a bucket of their own: when those alone outweigh the
        # list, the list is the answer without building their bitmap (22 bytes a serial).
        n = len(serials)
        if 8 + RB_BUCKET_MIN_BYTES * _buckets(serials.random_array()) >= 8 * n:
            return "list", pack(serials)
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


def _buckets(sorted_serials: array[int]) -> int:
    """How many distinct high 32 bits sorted serials have."""
    if not sorted_serials:
        return 0
    this, after = tee(map(operator.rshift, sorted_serials, repeat(32)))
    next(after)
    changes: int = sum(map(operator.ne, this, after))
    return 1 + changes


def _in_range(serial: object) -> TypeGuard[int]:
    return isinstance(serial, int) and 0 <= serial < U64_END


def _numbered(serial: int) -> bool:
    return serial & LOW_MASK < NUMBERED_END


def _is_sorted(arr: array[int]) -> bool:
    return all(map(operator.lt, arr, islice(arr, 1, None)))


def _numbered_among(serials: Iterable[int]) -> Iterator[int]:
    """The numbered ones among `serials`, tested without a Python call per serial."""
    this, test = tee(serials)
    low = map(operator.and_, test, repeat(LOW_MASK))
    return compress(this, map(operator.lt, low, repeat(NUMBERED_END)))


def split_numbered(serials: Iterable[int]) -> tuple[AbstractBitMap64, array[int]]:
    """(the numbered serials as a bitmap, the random ones as a sorted array); neither may
    be changed afterwards (either can be a part of `serials` itself)."""
    if isinstance(serials, SerialSet):
        return serials.bitmap_of_numbered(), serials.random_array()
    return _split(serials, owned=False)


def _split(serials: Iterable[int], owned: bool) -> tuple[AbstractBitMap64, array[int]]:
    """(the numbered serials, the random ones as a sorted array). A part may be `serials`
    itself when it holds only that kind, so it must not change afterwards; an `owned`
    array may be reused here."""
    if isinstance(serials, AbstractBitMap64):
        return _split_bitmap(serials)
    if isinstance(serials, array) and serials.typecode == "Q" and _is_sorted(serials):
        return _split_sorted(serials, owned)
    values = serials if isinstance(serials, list | set | frozenset) else list(serials)
    numbered = BitMap64([s for s in values if _numbered(s)])
    return numbered, array("Q", sorted({s for s in values if not _numbered(s)}))


def _split_bitmap(bitmap: AbstractBitMap64) -> tuple[AbstractBitMap64, array[int]]:
    # Find the first serial of each bucket holding numbered ones (numbered serials come
    # first in their bucket), jumping over the rest of it; the random serials are read
    # between their numbered ranges straight into the array.
    firsts: list[int] = []
    rest: Iterator[int] = iter(bitmap)
    while (hit := next(_numbered_among(rest), None)) is not None:
        firsts.append(hit)
        bucket_end = hit - (hit & LOW_MASK) + BUCKET
        if bucket_end >= U64_END:
            break
        rest = bitmap.iter_equal_or_larger(bucket_end)
    random = array("Q")
    at = 0
    for first in firsts:
        random.extend(takewhile(first.__gt__, bitmap.iter_equal_or_larger(at)))
        at = first - (first & LOW_MASK) + NUMBERED_END
    random.extend(bitmap.iter_equal_or_larger(at))
    if not random:
        return bitmap, random
    # A campaign's serials are cut out by a range (runs: cheap); the odd random serial in
    # the numbered range of a bucket of its own is taken one by one, since a range over
    # all 256 containers of thousands of such buckets would cost 80 MB.
    numbered = BitMap64()
    mask = BitMap64()
    for first in firsts:
        end = first - (first & LOW_MASK) + NUMBERED_END
        few = list(islice(takewhile(end.__gt__, bitmap.iter_equal_or_larger(first)), 65))
        if len(few) <= 64:
            numbered.update(few)
        else:
            mask.add_range(first, end)
    if mask:
        numbered |= bitmap & mask
    _compact(numbered)
    return numbered, random


def _split_sorted(arr: array[int], owned: bool) -> tuple[AbstractBitMap64, array[int]]:
    # A bucket's numbered serials are one slice of a sorted array: find where each begins,
    # then bisect to its end. The random ones are the slices between, moved to the front
    # of an owned array (no second array of them at the peak), else copied.
    numbered = BitMap64()
    random = arr if owned else array("Q")
    kept = 0
    with memoryview(arr) as view:
        at, end = 0, len(arr)
        while at < end:
            hit = next(_numbered_among(view[at:]), None)
            start = end if hit is None else bisect.bisect_left(arr, hit, at)
            if start == end and at == 0:
                return numbered, arr  # all random: the array itself
            if owned:
                view[kept : kept + start - at] = view[at:start]
            else:
                random.frombytes(view[at:start].cast("B"))
            kept += start - at
            if hit is None:
                break
            at = bisect.bisect_left(arr, hit - (hit & LOW_MASK) + NUMBERED_END, start)
            numbered |= BitMap64(arr[start:at])
    if owned:
        del arr[kept:]  # the view is released: the array may shrink
    _compact(numbered)
    return numbered, random


def _compact(bitmap: AbstractBitMap64) -> None:
    """Reshape a new bitmap, not yet shared: the one moment it may be changed."""
    if isinstance(bitmap, BitMap64):
        bitmap.run_optimize()
        bitmap.shrink_to_fit()


def _merged(base: array[int], extra: array[int]) -> array[int]:
    """Two sorted arrays without common serials as one new sorted array."""
    small, big = (extra, base) if len(extra) <= len(base) else (base, extra)
    if len(small) * 4 > len(big):  # comparable: one pass over both
        return array("Q", heapq.merge(small, big))
    # Few into many: bisect each one's place and copy the runs between in bulk.
    out = array("Q", [0]) * (len(base) + len(extra))
    into, view, at, written = memoryview(out), memoryview(big), 0, 0
    for serial in small:
        i = bisect.bisect_left(big, serial, at)
        into[written : written + i - at] = view[at:i]
        written += i - at
        out[written] = serial
        written += 1
        at = i
    into[written:] = view[at:]
    return out


def _without(base: array[int], drop: list[int]) -> array[int]:
    """A sorted array less `drop`, sorted serials all in it, as a new array."""
    out = array("Q", [0]) * (len(base) - len(drop))
    into, view, at, written = memoryview(out), memoryview(base), 0, 0
    for serial in drop:
        i = bisect.bisect_left(base, serial, at)
        into[written : written + i - at] = view[at:i]
        written += i - at
        at = i + 1
    into[written:] = view[at:]
    return out


def _has(arr: array[int], serial: int) -> bool:
    i = bisect.bisect_left(arr, serial)
    return i < len(arr) and arr[i] == serial


class SerialSet:
    """Revoked or redeemed serials, each in one home by its low 32 bits: numbered ones in a
    bitmap, random ones in a sorted array. Each home has a base shared with copies and
    never changed in place (a change makes a new one), and its own additions not in the
    base waiting beside it, so copying a set (every ledger delta does) costs only what
    waits."""

    def __init__(self, base: Iterable[int] | None = None) -> None:
        """`base` may be a BitMap64 (as `unpack_rb` returns) or a sorted array (as `unpack`
        does): it is taken over, not copied (an array loses its numbered serials to the
        bitmap in place), so the caller must not use it afterwards. Another SerialSet is
        copied, sharing its bases."""
        self._numbered: AbstractBitMap64 = BitMap64()
        self._numbered_len = 0  # a bitmap counts by walking its containers
        self._numbered_recent = BitMap64()
        self._random: array[int] = array("Q")
        self._random_recent: set[int] = set()
        if isinstance(base, SerialSet):
            self._share(base)
        elif base is not None:
            numbered, self._random = _split(base, owned=True)
            self._set_numbered(numbered, fresh=numbered is not base)

    def __contains__(self, serial: object) -> bool:
        # BitMap64 would take 1.5 for 1 and raise on -1; the old set answered False.
        # Inline, not through the helpers: every scanned coupon asks.
        if not isinstance(serial, int) or not 0 <= serial < U64_END:
            return False
        if serial & LOW_MASK < NUMBERED_END:
            return serial in self._numbered_recent or serial in self._numbered
        if serial in self._random_recent:
            return True
        base = self._random
        i = bisect.bisect_left(base, serial)
        return i < len(base) and base[i] == serial

    def __len__(self) -> int:
        return (
            self._numbered_len
            + len(self._numbered_recent)
            + len(self._random)
            + len(self._random_recent)
        )

    def add_many(self, serials: Iterable[int]) -> None:
        numbered, random = self._parts_of(serials)
        if numbered:
            self._numbered_recent |= numbered
            self._numbered_recent -= self._numbered  # kept apart, so the length is a sum
            if len(self._numbered_recent) >= MERGE_AT:
                self._merge_numbered()
        if random:
            recent, base = self._random_recent, self._random
            recent.update(s for s in random if s not in recent and not _has(base, s))
            if len(recent) >= MERGE_AT:
                self._merge_random()

    def discard_many(self, serials: Iterable[int]) -> None:
        if not isinstance(serials, SerialSet | AbstractBitMap64):
            serials = [s for s in serials if _in_range(s)]
        numbered, random = self._parts_of(serials)
        if numbered:
            self._numbered_recent -= numbered
            if self._numbered.intersect(numbered):
                self._set_numbered(self._numbered - numbered, fresh=True)
        if random:
            self._random_recent.difference_update(random)
            present = [s for s in random if _has(self._random, s)]
            if present:
                self._random = _without(self._random, present)

    def bitmap(self) -> AbstractBitMap64:
        """Every serial in one bitmap: read it, never change it (it may be this set's own).
        Random serials cost 22 bytes each there; `sorted_array` costs 8."""
        self._merge_numbered()
        random = self.random_array()
        if not random:
            return self._numbered
        out = BitMap64(random)
        out |= self._numbered
        return out

    def bitmap_of_numbered(self) -> AbstractBitMap64:
        """The numbered serials: read it, never change it (it may be this set's own)."""
        self._merge_numbered()
        return self._numbered

    def sorted_array(self) -> array[int]:
        """Every serial, sorted, in a new array of its own."""
        self._merge_numbered()
        numbered, random = self._numbered.to_array(), self.random_array()
        return _merged(numbered, random) if random else numbered

    def random_array(self) -> array[int]:
        """The serials not numbered, sorted, shared with this set: read it, never change it."""
        self._merge_random()
        return self._random

    def copy(self) -> SerialSet:
        other = SerialSet.__new__(SerialSet)
        other._share(self)
        return other

    def __iter__(self) -> Iterator[int]:
        self._merge_numbered()
        numbered: Iterator[int] = iter(self._numbered)
        if not self._random and not self._random_recent:
            return numbered
        random: Iterator[int] = iter(self._random)
        if self._random_recent:
            random = heapq.merge(random, sorted(self._random_recent))
        return heapq.merge(numbered, random)

    def _share(self, other: SerialSet) -> None:
        # The bases are never changed in place: sharing them is safe.
        self._numbered, self._numbered_len = other._numbered, other._numbered_len
        self._numbered_recent = other._numbered_recent.copy()
        self._random = other._random
        self._random_recent = set(other._random_recent)

    def _parts_of(self, serials: Iterable[int]) -> tuple[AbstractBitMap64, array[int]]:
        if isinstance(serials, SerialSet):
            serials._merge_numbered()
            return serials._numbered, serials.random_array()
        return _split(serials, owned=False)

    def _merge_numbered(self) -> None:
        if self._numbered_recent:
            self._set_numbered(self._numbered | self._numbered_recent, fresh=True)
            self._numbered_recent = BitMap64()

    def _merge_random(self) -> None:
        if self._random_recent:
            self._random = _merged(self._random, array("Q", sorted(self._random_recent)))
            self._random_recent = set()

    def _set_numbered(self, numbered: AbstractBitMap64, fresh: bool) -> None:
        if fresh:
            _compact(numbered)
        self._numbered = numbered
        self._numbered_len = len(numbered)
