"""A compact set of 64-bit coupon serials: a sorted array plus a small set of recent
additions, so a million serials take 8 MB and a lookup is a binary search."""

from __future__ import annotations

import bisect
import heapq
import operator
import sys
from array import array
from collections.abc import Iterable, Iterator
from itertools import islice

MERGE_AT = 50_000


def pack(serials: Iterable[int]) -> bytes:
    """Wire form: sorted, unique, big-endian uint64."""
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


class SerialSet:
    def __init__(self, base: array[int] | None = None) -> None:
        self._base: array[int] = base if base is not None else array("Q")
        self._recent: set[int] = set()

    def __contains__(self, serial: object) -> bool:
        if not isinstance(serial, int):
            return False
        if serial in self._recent:
            return True
        base = self._base
        i = bisect.bisect_left(base, serial)
        return i < len(base) and base[i] == serial

    def __len__(self) -> int:
        return len(self._base) + len(self._recent)

    def add_many(self, serials: Iterable[int]) -> None:
        self._recent.update(s for s in serials if s not in self)
        if len(self._recent) >= MERGE_AT:
            self._merge()

    def discard_many(self, serials: Iterable[int]) -> None:
        drop = set(serials)
        if not drop:
            return
        self._recent -= drop
        if any(s in self for s in drop):
            self._base = array("Q", (s for s in self._base if s not in drop))

    def _merge(self) -> None:
        self._base = array("Q", heapq.merge(self._base, sorted(self._recent)))
        self._recent = set()

    def copy(self) -> SerialSet:
        other = SerialSet(self._base)  # the base array is never mutated in place
        other._recent = set(self._recent)
        return other

    def __iter__(self) -> Iterator[int]:
        return heapq.merge(self._base, sorted(self._recent))
