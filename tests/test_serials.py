"""SerialSet: the revoked/redeemed serial lists the terminal checks every coupon against."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
