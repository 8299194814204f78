"""The camera's decoding pipeline and debounce on generated frames (real pyzbar, zxing-cpp)."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from drivers.camera.debounce import Debouncer
from drivers.camera.decode import Code, DecoderUnavailable, Pipeline
from tests.camera_media import code128, coupon_text, ean13, put, qr, scene

COUPON = coupon_text(7)
DECODERS = ("cascade", "zxing", "pyzbar")
TYPES = ["QRCODE", "EAN13", "CODE128"]


@pytest.mark.parametrize("decoder", DECODERS)
def test_every_decoder_names_symbologies_alike(decoder: str) -> None:
    p = Pipeline(decoder, TYPES)
    frames = {
        "QRCODE": put(scene(1), qr(COUPON, 4), 320, 240),
        "EAN13": put(scene(1), ean13("400638133393"), 320, 240),
        "CODE128": put(scene(1), code128("CPN-0042", 2), 320, 240),
    }
    expected = {"QRCODE": COUPON, "EAN13": "4006381333931", "CODE128": "CPN-0042"}
    for name, frame in frames.items():
        assert p(frame) == [Code(expected[name].encode(), name)]


@pytest.mark.parametrize("decoder", DECODERS)
def test_only_the_configured_symbologies_are_read(decoder: str) -> None:
    p = Pipeline(decoder, ["QRCODE"])
    assert p(put(scene(2), ean13("590123412345"), 320, 240)) == []


@pytest.mark.parametrize("decoder", DECODERS)
def test_the_same_code_twice_in_a_frame_is_one_code(decoder: str) -> None:
    code = qr("https://shop.example/p/1", 3)
    frame = put(put(scene(3), code, 160, 240), code, 480, 240)
    assert len(Pipeline(decoder, TYPES)(frame)) == 1


def test_a_small_code_far_away_is_read_at_full_size_by_the_cascade() -> None:
    """3 px a module at 1280x720 is 1.5 px after scaling to 640: the quick pass sees a code
    it cannot read, and the thorough pass on the full-size frame reads it."""
    frame = put(scene(4, 1280, 720), qr(COUPON, 3), 640, 360)
    cascade = Pipeline("cascade", TYPES, max_width=640, hard_every=0)
    assert cascade(frame) == [Code(COUPON.encode(), "QRCODE")]
    assert (cascade.hard_passes, cascade.rescued) == (1, 1)
    assert Pipeline("pyzbar", TYPES, max_width=640)(frame) == []


def test_the_cascade_runs_its_thorough_pass_only_when_needed() -> None:
    p = Pipeline("cascade", TYPES, max_width=640, hard_every=8)
    easy = put(scene(5, 1280, 720), qr(COUPON, 6), 640, 360)
    empty = scene(6, 1280, 720)
    for _ in range(16):
        assert p(easy)
    assert p.hard_passes == 0  # read by the quick pass every time
    for _ in range(16):
        assert p(empty) == []
    assert p.hard_passes == 2  # the periodic look, every 8th frame


def test_a_region_of_interest_in_fractions() -> None:
    frame = put(put(scene(7), qr("LEFT", 4), 160, 240), qr("RIGHT", 4), 480, 240)
    payloads = {c.payload for c in Pipeline("cascade", TYPES, roi=[0.5, 0, 0.5, 1])(frame)}
    assert payloads == {b"RIGHT"}
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    assert {c.payload for c in Pipeline("pyzbar", TYPES, roi=[0, 0, 0.5, 1])(grey)} == {b"LEFT"}


def test_unreadable_frames_give_nothing() -> None:
    p = Pipeline("cascade", TYPES, hard_every=1)  # thorough pass on every frame
    rng = np.random.default_rng(8)
    noise = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    blurred = cv2.GaussianBlur(put(scene(8), qr(COUPON, 3), 320, 240), (0, 0), 6)
    assert p(noise) == [] and p(blurred) == [] and p(np.zeros((480, 640), np.uint8)) == []


def test_without_pyzbar_zxing_still_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyzbar not installed, or Debian's libzbar0 missing (pyzbar fails at import): the
    zxing-cpp decoders do not need it; choosing pyzbar says what is missing."""
    monkeypatch.setitem(sys.modules, "pyzbar", None)
    monkeypatch.setitem(sys.modules, "pyzbar.pyzbar", None)
    frame = put(scene(9), qr(COUPON, 4), 320, 240)
    for decoder in ("zxing", "cascade"):
        assert Pipeline(decoder, TYPES)(frame) == [Code(COUPON.encode(), "QRCODE")]
    with pytest.raises(DecoderUnavailable) as caught:
        Pipeline("pyzbar", TYPES)
    assert "decoder 'pyzbar'" in str(caught.value) and "libzbar0" in str(caught.value)


def test_without_zxing_cpp_pyzbar_still_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zxingcpp", None)
    frame = put(scene(9), qr(COUPON, 4), 320, 240)
    assert Pipeline("pyzbar", TYPES)(frame) == [Code(COUPON.encode(), "QRCODE")]
    with pytest.raises(DecoderUnavailable, match="decoder 'cascade'.*zxing-cpp"):
        Pipeline("cascade", TYPES)


def test_debounce_counts_a_held_code_once_and_again_after_it_left() -> None:
    d = Debouncer(1.0)
    held = [d.admit("A", t / 30) for t in range(60)]  # 2 s in view at 30 fps
    assert held == [True] + [False] * 59
    assert not d.admit("A", 2.9)  # out of view 0.93 s: the same showing
    assert d.admit("B", 2.9)  # another code counts on its own
    assert d.admit("A", 4.0)  # out of view 1.1 s: shown again
    d.forget_old(10.0)
    assert d.admit("A", 10.0) and d.admit("B", 10.0)
