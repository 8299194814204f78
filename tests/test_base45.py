"""Base45 (RFC 9285): the published examples, refusals, and round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coupons import base45
from coupons.base45 import ALPHABET, Base45Error

RFC_EXAMPLES = [
    (b"AB", "BB8"),
    (b"Hello!!", "%69 VD92EX0"),
    (b"base-45", "UJCLQE7W581"),
    (b"ietf!", "QED8WEX0"),
]


@pytest.mark.parametrize(("raw", "text"), RFC_EXAMPLES)
def test_rfc9285_examples_encode(raw: bytes, text: str) -> None:
    assert base45.encode(raw) == text


@pytest.mark.parametrize(("raw", "text"), RFC_EXAMPLES)
def test_rfc9285_examples_decode(raw: bytes, text: str) -> None:
    assert base45.decode(text) == raw


def test_empty_is_empty() -> None:
    assert base45.encode(b"") == ""
    assert base45.decode("") == b""


def test_edge_values() -> None:
    assert base45.encode(b"\x00\x00") == "000"
    assert base45.encode(b"\xff\xff") == "FGW"  # 65535 = 15 + 15*45 + 32*2025
    assert base45.encode(b"\xff") == "U5"  # 255 = 30 + 5*45
    assert base45.decode("FGW") == b"\xff\xff"
    assert base45.decode("U5") == b"\xff"


@pytest.mark.parametrize("text", ["bb8", "BB8!", "BB\u00e98", "BB\n", "QED8WEX0#", "\x00AB"])
def test_decode_rejects_characters_outside_the_alphabet(text: str) -> None:
    with pytest.raises(Base45Error, match="not base45"):
        base45.decode(text)


@pytest.mark.parametrize("text", ["A", "ABCD", "BB8B", "QED8WEX0AB"])
def test_decode_rejects_impossible_length(text: str) -> None:
    with pytest.raises(Base45Error, match="length"):
        base45.decode(text)


@pytest.mark.parametrize(
    "text",
    [
        "GGW",  # RFC 9285 section 4.2: 65536 does not fit two bytes
        ":::",  # 44 + 44*45 + 44*2025: the largest triple
        "ZZZ",
        "BB8GGW",  # a bad group after a good one
        "V5",  # 256 does not fit one byte
        "::",
        "BB8::",
    ],
)
def test_decode_rejects_out_of_range_groups(text: str) -> None:
    with pytest.raises(Base45Error, match="out of range"):
        base45.decode(text)


def test_errors_are_value_errors() -> None:
    # callers that only know ValueError still catch damaged input
    with pytest.raises(ValueError):
        base45.decode("GGW")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_round_trip(data: bytes) -> None:
    text = base45.encode(data)
    assert set(text) <= set(ALPHABET)
    assert len(text) == len(data) // 2 * 3 + len(data) % 2 * 2
    assert base45.decode(text) == data


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=60))
def test_decoding_is_canonical(text: str) -> None:
    """Every byte string has exactly one base45 text: a text that decodes at all is the
    encoding of what it decodes to (no second spelling of the same token)."""
    try:
        data = base45.decode(text)
    except Base45Error:
        return
    assert base45.encode(data) == text
