"""The camera's decoding pipeline and debounce on generated frames (real pyzbar, zxing-cpp)."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from coupons import tokens
from drivers.camera.debounce import Debouncer
from drivers.camera.decode import Code, DecoderUnavailable, Pipeline
from drivers.camera.options import CameraOptions
from tests.camera_media import (
    code128,
    coupon_text,
    ean13,
    inverted,
    mirrored,
    phone_dark_mode,
    photo,
    put,
    qr,
    scene,
)

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


def default_pipeline() -> Pipeline:
    """The pipeline a till runs with no camera options set."""
    o = CameraOptions(source="0")
    return Pipeline(o.decoder, o.symbologies, o.max_width, o.roi, o.hard_every)


def test_a_small_code_far_away_is_read_at_full_size_by_the_cascade() -> None:
    """3 px a module at 1280x720 is 1.5 px after scaling to 640: the QR look at the
    full-size frame reads it, with no thorough pass."""
    frame = put(scene(4, 1280, 720), qr(COUPON, 3), 640, 360)
    cascade = Pipeline("cascade", TYPES, max_width=640, hard_every=0)
    assert cascade(frame) == [Code(COUPON.encode(), "QRCODE")]
    assert (cascade.detailed, cascade.hard_passes) == (1, 0)
    assert Pipeline("pyzbar", TYPES, max_width=640)(frame) == []


@pytest.mark.parametrize("size", [(640, 480), (1280, 720)])
def test_an_inverted_coupon_is_read_on_its_first_frame(size: tuple[int, int]) -> None:
    """Light modules on dark: read by the quick pass itself, not by a periodic look."""
    w, h = size
    p = default_pipeline()
    assert p(put(scene(10, w, h), inverted(qr(COUPON, 5)), w // 2, h // 2)) == [
        Code(COUPON.encode(), "QRCODE")
    ]
    assert (p.frames, p.hard_passes) == (1, 0)


@pytest.mark.parametrize("size", [(640, 480), (1280, 720)])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_phone_in_dark_mode_is_read_on_its_first_frame(size: tuple[int, int], seed: int) -> None:
    """A phone screen in dark mode with moire, a reflection and perspective, at the same
    size in pixels in either frame."""
    p = default_pipeline()
    assert p(phone_dark_mode(seed, COUPON, *size)) == [Code(COUPON.encode(), "QRCODE")]
    assert p.hard_passes == 0


@pytest.mark.parametrize("place", [(300, 240), (900, 200), (640, 500)])
def test_a_photo_of_a_code_is_read_on_the_first_frame_at_720p_as_at_480p(
    place: tuple[int, int],
) -> None:
    """A photo of a printed code (3 px a module) placed at its own size: 640x480 reads it
    without scaling; 1280x720 is scaled to 640 (1.5 px a module), and must still read it
    on its first frame, not at the next periodic look."""
    code = qr(COUPON, 3)
    small = photo(11, 640, 480, code, 320, 240)
    large = photo(11, 1280, 720, code, *place)
    for frame in (small, large):
        p = default_pipeline()
        assert p(frame) == [Code(COUPON.encode(), "QRCODE")]
        assert p.hard_passes == 0  # the quick passes read it: no thorough pass's cost


def test_inverted_or_mirrored_garbage_is_no_coupon() -> None:
    """What the camera hands on from a code that is not a coupon, however it is shown,
    is refused by the coupon parser like any other garbage: the decode step reads the
    code's own bytes or nothing, never something that turns into a token."""
    rng = np.random.default_rng(12)
    fake = "CPN1:" + "".join(rng.choice(list("0123456789ABCDEF"), 120))  # not base45 COSE
    shown = {
        "fake token, dark mode": put(scene(13), inverted(qr(fake, 4)), 320, 240),
        "fake token, mirrored": put(scene(13), mirrored(qr(fake, 4)), 320, 240),
        "fake token, both": put(scene(13), inverted(mirrored(qr(fake, 4))), 320, 240),
        "a URL, mirrored": put(scene(14), mirrored(qr("https://shop.example/p/9", 5)), 320, 240),
        "noise, dark": 255 - np.random.default_rng(15).integers(0, 256, (480, 640, 3), np.uint8),
    }
    p = Pipeline("cascade", TYPES, hard_every=1)  # every pass on every frame
    read = {name: [c.payload for c in p(frame)] for name, frame in shown.items()}
    assert read["fake token, dark mode"] == [fake.encode()]  # handed on, for the parser
    for name, payloads in read.items():
        for payload in payloads:
            assert payload in (fake.encode(), b"https://shop.example/p/9"), name
            text = payload.decode()
            if tokens.extract(text) is not None:
                with pytest.raises(tokens.TokenMalformed):
                    tokens.parse(text)


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
