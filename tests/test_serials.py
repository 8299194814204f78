"""SerialSet: the revoked/redeemed serial lists the terminal checks every coupon against."""

from __future__ import annotations

import bisect
import heapq
import random
import struct
from array import array
from collections.abc import Iterable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroaring import BitMap64

from coupons import serials
from coupons.serials import SerialSet, pack, unpack

U64 = st.integers(min_value=0, max_value=2**64 - 1)
# a narrow range as well, so adds and discards hit the same serials often
SERIAL = st.one_of(st.integers(min_value=0, max_value=40), U64)


def test_membership_from_a_base_array() -> None:
    s = SerialSet(unpack(pack([5, 1, 2**64 - 1, 0])))
    assert {0, 1, 5, 2**64 - 1} == set(s)
    for x in (0, 1, 5, 2**64 - 1):
        assert x in s
    for x in (2, 4, 6, 2**64 - 2, -1, 2**64):
        assert x not in s
    assert len(s) == 4


def test_non_integers_are_never_members() -> None:
    s = SerialSet(unpack(pack([1, 2])))
    s.add_many([3])
    for x in ("1", b"\x01", 1.5, None, (1,)):
        assert x not in s


def test_empty_set() -> None:
    s = SerialSet()
    assert len(s) == 0 and list(s) == [] and 0 not in s
    s.discard_many([])
    s.discard_many([1])
    assert len(s) == 0


def test_add_many_ignores_duplicates_and_members() -> None:
    s = SerialSet(unpack(pack([10, 20])))
    s.add_many([20, 30, 30, 40])
    assert list(s) == [10, 20, 30, 40]
    assert len(s) == 4


def test_discard_many_from_base_and_recent() -> None:
    s = SerialSet(unpack(pack([10, 20, 30])))
    s.add_many([40, 50])
    s.discard_many([20, 50, 99])
    assert list(s) == [10, 30, 40]
    assert len(s) == 3
    assert 20 not in s and 50 not in s


def test_merge_keeps_every_serial(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serials, "MERGE_AT", 3)
    s = SerialSet(unpack(pack([2, 8])))
    s.add_many([5, 1])  # below the threshold: stays in the recent set
    s.add_many([9, 3, 8])  # 8 already present; 9 and 3 push it to 4 recent -> merge
    assert list(s) == [1, 2, 3, 5, 8, 9]
    assert len(s) == 6
    for x in (1, 2, 3, 5, 8, 9):
        assert x in s
    s.discard_many([1, 9])
    assert list(s) == [2, 3, 5, 8]
    s.add_many([100, 0, 50])  # exactly MERGE_AT new ones: merges again
    assert list(s) == [0, 2, 3, 5, 8, 50, 100]
    assert len(s) == 7


def test_copy_is_independent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serials, "MERGE_AT", 2)
    original = SerialSet(unpack(pack([1, 2, 3])))
    original.add_many([7])
    clone = original.copy()
    clone.add_many([10, 11])  # merges the clone's base
    clone.discard_many([1, 7])
    assert list(original) == [1, 2, 3, 7]
    assert list(clone) == [2, 3, 10, 11]
    original.discard_many([2])
    assert 2 in clone


def test_pack_wire_form_is_sorted_unique_big_endian() -> None:
    data = pack([3, 1, 3, 2**64 - 1])
    assert data == struct.pack(">QQQ", 1, 3, 2**64 - 1)
    assert list(unpack(data)) == [1, 3, 2**64 - 1]
    assert pack([]) == b"" and list(unpack(b"")) == []


def test_unpack_rejects_unsorted() -> None:
    with pytest.raises(ValueError, match="not sorted"):
        unpack(struct.pack(">QQ", 5, 4))


def test_unpack_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="not sorted"):
        unpack(struct.pack(">QQQ", 1, 4, 4))


@pytest.mark.parametrize("cut", [1, 7, 9, 15])
def test_unpack_rejects_partial_entries(cut: int) -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        unpack(struct.pack(">QQ", 1, 2)[:cut])


@settings(max_examples=200, deadline=None)
@given(st.lists(U64, max_size=50))
def test_pack_unpack_round_trip(values: list[int]) -> None:
    assert list(unpack(pack(values))) == sorted(set(values))


OPS = st.lists(
    st.tuples(st.sampled_from(["add", "discard", "copy"]), st.lists(SERIAL, max_size=6)),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(base=st.lists(SERIAL, max_size=20), ops=OPS, merge_at=st.integers(1, 6))
def test_behaves_like_a_python_set(
    base: list[int], ops: list[tuple[str, list[int]]], merge_at: int
) -> None:
    old = serials.MERGE_AT
    serials.MERGE_AT = merge_at  # hypothesis and function-scoped monkeypatch do not mix
    try:
        s = SerialSet(unpack(pack(base)))
        model = set(base)
        left_behind: list[tuple[SerialSet, list[int]]] = []
        for op, values in ops:
            if op == "add":
                s.add_many(values)
                model |= set(values)
            elif op == "discard":
                s.discard_many(values)
                model -= set(values)
            else:
                left_behind.append((s, sorted(model)))
                s = s.copy()
            assert len(s) == len(model)
            assert list(s) == sorted(model)
            for v in values:
                assert (v in s) == (v in model)
        for v in list(model)[:10]:
            assert v in s
        for old_set, old_model in left_behind:  # changing a copy never changes the original
            assert list(old_set) == old_model
    finally:
        serials.MERGE_AT = old


# ---------------------------------------------------------------- the roaring form

# Serials numbered within a campaign: the campaign's number high, a count low.
NUMBER = st.sampled_from([1, 0x1234_5678, 0xFFFF_FFFF])
NUMBERED = st.builds(lambda c, n: (c << 32) | n, NUMBER, st.integers(1, 70_000))
ANY_SERIAL = st.one_of(NUMBERED, U64, st.integers(0, 40))


def numbered(number: int, first: int, last: int, step: int = 1) -> list[int]:
    return [(number << 32) | n for n in range(first, last + 1, step)]


@settings(max_examples=200, deadline=None)
@given(st.lists(ANY_SERIAL, max_size=80))
def test_rb_round_trip(values: list[int]) -> None:
    blob = serials.pack_rb(values)
    assert list(serials.unpack_rb(blob)) == sorted(set(values))
    s = SerialSet(serials.unpack_rb(blob))
    assert list(s) == sorted(set(values)) and len(s) == len(set(values))
    # the same bytes whatever holds the serials
    assert serials.pack_rb(s) == blob == serials.pack_rb(BitMap64(values))
    assert serials.pack(s) == pack(values)


def test_rb_round_trip_of_runs_and_extremes() -> None:
    values = numbered(7, 1, 200_000) + numbered(0xFFFF_FFFF, 1, 100_000, 3) + [0, 2**64 - 1]
    blob = serials.pack_rb(values)
    assert len(blob) < 20_000  # runs and bitsets, not 8 bytes a serial
    back = serials.unpack_rb(blob)
    assert len(back) == len(values) and list(back) == sorted(values)


def test_rb_truncated_is_refused_at_every_length() -> None:
    blob = serials.pack_rb(numbered(9, 1, 5000, 2) + [3, 2**63, 2**64 - 1])
    for cut in range(len(blob)):
        with pytest.raises(ValueError, match="corrupt"):
            serials.unpack_rb(blob[:cut])


def test_rb_trailing_bytes_are_refused() -> None:
    blob = serials.pack_rb([1, 2, 3])
    for extra in (b"\x00", b"\xff" * 9, blob):
        with pytest.raises(ValueError, match="trailing"):
            serials.unpack_rb(blob + extra)


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(ANY_SERIAL, min_size=1, max_size=40),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_rb_corrupt_is_refused_or_still_exact(
    values: list[int], edits: list[tuple[int, int]]
) -> None:
    """A changed byte either fails to decode (ValueError, nothing else) or decodes to a
    bitmap whose serialization is exactly the changed bytes; signatures do the rest."""
    data = bytearray(serials.pack_rb(values))
    for at, byte in edits:
        data[at % len(data)] = byte
    try:
        back = serials.unpack_rb(bytes(data))
    except ValueError:
        return
    assert back.serialize() == bytes(data)


@pytest.mark.parametrize("blob", [b"", b"\x00", b"\xff" * 8, b"\x01" + b"\x00" * 7, b"junk" * 10])
def test_rb_garbage_is_refused(blob: bytes) -> None:
    with pytest.raises(ValueError, match="corrupt"):
        serials.unpack_rb(blob)


def test_rb_bounds() -> None:
    blob = serials.pack_rb(numbered(5, 1, 1000, 7))
    assert len(serials.unpack_rb(blob, limit_bytes=len(blob))) == 143
    with pytest.raises(ValueError, match="more than"):
        serials.unpack_rb(blob, limit_bytes=len(blob) - 1)
    with pytest.raises(ValueError, match="holds 143 serials, more than 142"):
        serials.unpack_rb(blob, max_serials=142)
    # a few bytes of runs claiming 2**32 serials: refused by count, not by size
    huge = BitMap64()
    huge.add_range(2**40, 2**40 + 2**32)
    small = huge.serialize()
    assert len(small) < 1_000_000
    with pytest.raises(ValueError, match="more than 100000000"):
        serials.unpack_rb(small)
    with pytest.raises(ValueError, match="more than 67108864"):
        serials.unpack_rb(b"\x00" * (serials.MAX_RB_BYTES + 1))


@settings(max_examples=150, deadline=None)
@given(st.lists(ANY_SERIAL, max_size=60))
def test_pack_best_chooses_the_smaller_form(values: list[int]) -> None:
    form, blob = serials.pack_best(values)
    as_list, as_rb = pack(values), serials.pack_rb(values)
    assert len(blob) == min(len(as_list), len(as_rb))
    assert (form, blob) == (("list", as_list) if len(as_list) <= len(as_rb) else ("rb", as_rb))
    read = unpack(blob) if form == "list" else serials.unpack_rb(blob)
    assert list(read) == sorted(set(values))


def test_pack_best_picks_rb_for_numbered_and_list_for_random() -> None:
    assert serials.pack_best([]) == ("list", b"")
    form, blob = serials.pack_best(SerialSet(numbered(0xABCD, 1, 30_000)))
    assert form == "rb" and len(blob) < 100  # one run
    form, blob = serials.pack_best(numbered(0xABCD, 1, 90_000, 3))  # one in three
    assert form == "rb" and len(blob) / 30_000 < 1
    rng = random.Random(5)
    form, blob = serials.pack_best([rng.getrandbits(64) for _ in range(1000)])
    assert form == "list" and len(blob) == 8000


def test_a_bitmap_given_to_a_set_is_taken_over_and_copies_stay_apart() -> None:
    bitmap = serials.unpack_rb(serials.pack_rb([1, 2, 3]))
    s = SerialSet(bitmap)
    s.add_many(BitMap64([4, 5]))
    s.discard_many(BitMap64([1, 9]))
    clone = s.copy()
    clone.discard_many([2, 4])
    clone.add_many([10])
    assert list(s) == [2, 3, 4, 5] and len(s) == 4
    assert list(clone) == [3, 5, 10] and len(clone) == 3


def test_out_of_range_values_are_never_members_nor_errors() -> None:
    s = SerialSet([0, 1, 2**64 - 1])
    for x in (-1, 2**64, 2**70, 1.0, 1.5):
        assert x not in s
    s.discard_many([-1, 2**64])
    assert len(s) == 3


# The sorted-array SerialSet this module had before the bitmap: the reference the bitmap
# one must agree with, serial for serial.
class OldSerialSet:
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

    def add_many(self, serials_: Iterable[int]) -> None:
        self._recent.update(s for s in serials_ if s not in self)
        if len(self._recent) >= 4:
            self._base = array("Q", heapq.merge(self._base, sorted(self._recent)))
            self._recent = set()

    def discard_many(self, serials_: Iterable[int]) -> None:
        drop = set(serials_)
        self._recent -= drop
        if any(s in self for s in drop):
            self._base = array("Q", (s for s in self._base if s not in drop))

    def copy(self) -> OldSerialSet:
        other = OldSerialSet(self._base)
        other._recent = set(self._recent)
        return other

    def __iter__(self) -> Iterator[int]:
        return heapq.merge(self._base, sorted(self._recent))


def _probes(values: list[int]) -> list[int]:
    """The values and their neighbours: members and near misses, in and across campaigns."""
    near = {v + d for v in values for d in (-1, 1, 1 << 32, -(1 << 32))}
    return [*values, *(v for v in near if 0 <= v < 2**64)]


@settings(max_examples=200, deadline=None)
@given(
    base=st.lists(ANY_SERIAL, max_size=30),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["add", "add_rb", "discard", "discard_rb", "copy"]),
            st.lists(ANY_SERIAL, max_size=8),
        ),
        max_size=20,
    ),
    merge_at=st.integers(1, 6),
)
def test_agrees_with_the_old_sorted_array_set(
    base: list[int], ops: list[tuple[str, list[int]]], merge_at: int
) -> None:
    old_merge_at = serials.MERGE_AT
    serials.MERGE_AT = merge_at
    try:
        new = SerialSet(serials.unpack_rb(serials.pack_rb(base)))
        old = OldSerialSet(unpack(pack(base)))
        seen = list(base)
        for op, values in ops:
            seen += values
            if op.startswith("add"):
                new.add_many(BitMap64(values) if op == "add_rb" else values)
                old.add_many(values)
            elif op.startswith("discard"):
                new.discard_many(BitMap64(values) if op == "discard_rb" else values)
                old.discard_many(values)
            else:
                new, old = new.copy(), old.copy()
            assert len(new) == len(old)
            for v in _probes(values):
                assert (v in new) == (v in old)
        assert list(new) == list(old)
        assert all((v in new) == (v in old) for v in _probes(seen))
        assert serials.pack(new) == pack(old)
    finally:
        serials.MERGE_AT = old_merge_at


# ------------------------------------------ numbered in the bitmap, random in the array

# Serials on both sides of the line between the two homes, in shared and separate buckets.
EDGE_LOW = st.sampled_from([0, 1, 2, 2**24 - 1, 2**24, 2**24 + 1, 2**31, 2**32 - 1])
BUCKET = st.sampled_from([0, 1, 0xABCD, 2**32 - 1])
MIXED = st.one_of(
    NUMBERED,
    U64,  # random: nearly all in the array, one in 256 in the bitmap
    st.builds(lambda b, low: (b << 32) | low, BUCKET, EDGE_LOW),
    st.integers(2**24 - 3, 2**24 + 3),
)
# What a set is built from or given: every form callers use.
FORMS = st.sampled_from(["list", "set", "array", "bitmap", "serialset", "generator"])


def as_form(values: list[int], form: str) -> Iterable[int]:
    if form == "list":
        return list(values)
    if form == "set":
        return set(values)
    if form == "array":
        return unpack(pack(values))
    if form == "bitmap":
        return serials.unpack_rb(serials.pack_rb(values))
    if form == "serialset":
        return SerialSet(values)
    return iter(values)


def homes(s: SerialSet) -> tuple[set[int], set[int]]:
    """(the serials in the bitmap home, those in the array home), read from the inside."""
    in_bitmap = set(s._numbered) | set(s._numbered_recent)
    in_array = set(s._random) | s._random_recent
    return in_bitmap, in_array


def assert_homes(s: SerialSet) -> None:
    in_bitmap, in_array = homes(s)
    assert not in_bitmap & in_array  # one home each, so the length is a sum
    assert all(v & 0xFFFF_FFFF < 2**24 for v in in_bitmap)
    assert all(v & 0xFFFF_FFFF >= 2**24 for v in in_array)
    assert list(s._random) == sorted(set(s._random))
    assert not set(s._numbered) & set(s._numbered_recent)
    assert not set(s._random) & s._random_recent


@settings(max_examples=300, deadline=None)
@given(
    base=st.lists(MIXED, max_size=30),
    base_form=FORMS,
    ops=st.lists(
        st.tuples(st.sampled_from(["add", "discard", "copy"]), st.lists(MIXED, max_size=8), FORMS),
        max_size=25,
    ),
    merge_at=st.integers(1, 6),
)
def test_numbered_and_random_together_behave_like_a_python_set(
    base: list[int], base_form: str, ops: list[tuple[str, list[int], str]], merge_at: int
) -> None:
    old = serials.MERGE_AT
    serials.MERGE_AT = merge_at
    try:
        s = SerialSet(as_form(base, base_form))
        model = set(base)
        left_behind: list[tuple[SerialSet, list[int]]] = []
        for op, values, form in ops:
            if op == "add":
                s.add_many(as_form(values, form))
                model |= set(values)
            elif op == "discard":
                s.discard_many(as_form(values, form))
                model -= set(values)
            else:
                left_behind.append((s, sorted(model)))
                s = s.copy()
            assert_homes(s)
            assert len(s) == len(model)
            for v in _probes(values):
                assert (v in s) == (v in model)
        assert list(s) == sorted(model)
        assert all((v in s) == (v in model) for v in _probes(sorted(model)))
        assert serials.pack(s) == pack(model)
        assert serials.pack_rb(s) == serials.pack_rb(model)
        assert serials.pack_best(s) == serials.pack_best(model)
        for old_set, old_model in left_behind:  # changing a copy never changes the original
            assert list(old_set) == old_model and len(old_set) == len(old_model)
    finally:
        serials.MERGE_AT = old


@settings(max_examples=200, deadline=None)
@given(values=st.lists(MIXED, max_size=60), form=FORMS)
def test_every_serial_gets_its_home_whatever_it_comes_in(values: list[int], form: str) -> None:
    s = SerialSet(as_form(values, form))
    assert_homes(s)
    in_bitmap, in_array = homes(s)
    assert in_bitmap | in_array == set(values)
    assert list(s) == sorted(set(values)) and len(s) == len(set(values))


def test_numbered_serials_stay_in_the_bitmap_and_random_ones_in_the_array() -> None:
    rng = random.Random(7)
    numbered_ = numbered(0xC0FFEE, 1, 50_000) + numbered(3, 10, 20_000, 2)
    random_ = [v for v in (rng.getrandbits(64) for _ in range(3000)) if v & 0xFFFF_FFFF >= 2**24]
    random_ += [(3 << 32) | 2**24, (3 << 32) | (2**32 - 1)]  # in a campaign's bucket
    for form in ("bitmap", "array", "list"):
        s = SerialSet(as_form(numbered_ + random_, form))
        assert len(s._numbered) == len(numbered_) and not s._numbered_recent
        assert list(s._random) == sorted(random_)
        assert list(s) == sorted(numbered_ + random_)


def test_a_bitmap_of_only_numbered_serials_is_taken_over_as_it_is() -> None:
    bitmap = serials.unpack_rb(serials.pack_rb(numbered(9, 1, 1000)))
    s = SerialSet(bitmap)
    assert s._numbered is bitmap and len(s._random) == 0
    arr = unpack(pack([2**40 + 2**30, 2**63 + 2**30]))
    s = SerialSet(arr)
    assert s._random is arr and not s._numbered


def test_an_unsorted_array_is_sorted_not_trusted() -> None:
    s = SerialSet(array("Q", [2**63, 5, 2**40 + 2**30, 5, (7 << 32) | 1]))
    assert list(s) == [5, (7 << 32) | 1, 2**40 + 2**30, 2**63] and len(s) == 4


def test_adding_a_set_to_a_set_adds_both_homes_and_leaves_it_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(serials, "MERGE_AT", 1000)
    mine = SerialSet(numbered(1, 1, 10) + [2**63 + 2**30])
    theirs = SerialSet(numbered(1, 5, 20) + [2**62 + 2**30])
    theirs.add_many([2**61 + 2**30, (2 << 32) | 1])  # waiting beside the bases
    before = list(theirs)
    mine.add_many(theirs)
    assert list(theirs) == before
    assert list(mine) == sorted({*numbered(1, 1, 20), 2**63 + 2**30, *before})
    mine.discard_many(theirs)
    assert list(mine) == [*numbered(1, 1, 4), 2**63 + 2**30]


def test_pack_best_of_many_random_serials_skips_the_bitmap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(3)
    s = SerialSet([rng.getrandbits(64) for _ in range(5000)] + numbered(4, 1, 100))

    def no_bitmap() -> None:
        raise AssertionError("built a bitmap of the random serials")

    monkeypatch.setattr(s, "bitmap", no_bitmap)
    form, blob = serials.pack_best(s)
    assert form == "list" and blob == pack(list(s))


@settings(max_examples=200, deadline=None)
@given(st.lists(MIXED, min_size=1, max_size=60))
def test_a_bucket_costs_a_serialized_bitmap_at_least_its_minimum(values: list[int]) -> None:
    """What lets pack_best answer "list" for random serials without their bitmap."""
    buckets = len({v >> 32 for v in values})
    assert len(serials.pack_rb(values)) >= 8 + serials.RB_BUCKET_MIN_BYTES * buckets
    assert serials._buckets(unpack(pack(values))) == buckets
