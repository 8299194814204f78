"""Frames to codes: grayscale, region of interest, downscale, then pyzbar, zxing-cpp or the
cascade (a quick zxing-cpp pass on every frame, light-on-dark codes included; a QR-only look
at the full-size frame when the scaled one held none; a thorough pass on the full-size frame
only when a code was seen but not read, then on an evened-out and a smoothed copy; and
every `hard_every`th frame)."""

from __future__ import annotations

import types
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

# Our symbology names are zbar's (pyzbar.ZBarSymbol members); zxing-cpp's BarcodeFormat
# members by our names. The libraries themselves are imported by the reader that needs
# them, so a missing one disables only the decoders that use it (pyzbar also needs Debian's
# libzbar0 at import).
_ZXING = {
    "QRCODE": "QRCode",
    "EAN13": "EAN13",
    "EAN8": "EAN8",
    "UPCA": "UPCA",
    "UPCE": "UPCE",
    "CODE128": "Code128",
    "CODE39": "Code39",
    "I25": "ITF",
}
_ZXING_NAMES = {"QRCODE": "QRCODE", "QRCODEMODEL2": "QRCODE", "ITF": "I25"}


class DecoderUnavailable(ImportError):
    """A library the chosen decoder needs is missing; the message says which and how to
    get it (it becomes the input's health detail)."""


def _import_pyzbar() -> types.ModuleType:
    try:
        from pyzbar import pyzbar
    except (ImportError, OSError) as exc:  # OSError: some builds fail loading libzbar.so
        raise DecoderUnavailable(
            "the pyzbar library cannot be loaded (install the pyzbar package and Debian's "
            f'libzbar0, or set decoder = "cascade"): {exc}'
        ) from exc
    lib: types.ModuleType = pyzbar  # untyped library
    return lib


def _import_zxingcpp() -> types.ModuleType:
    try:
        import zxingcpp
    except ImportError as exc:
        raise DecoderUnavailable(
            "the zxing-cpp library cannot be loaded (install the zxing-cpp package, or set "
            f'decoder = "pyzbar"): {exc}'
        ) from exc
    return zxingcpp


Image = np.ndarray


@dataclass(frozen=True)
class Code:
    payload: bytes
    symbology: str  # QRCODE, EAN13, CODE128, ...


def gray(frame: Image) -> Image:
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame


def crop(image: Image, roi: Sequence[float] | None) -> Image:
    """The region of interest (fractions x, y, w, h) as a view, no copy."""
    if roi is None:
        return image
    h, w = image.shape[:2]
    x0, y0 = int(roi[0] * w), int(roi[1] * h)
    x1, y1 = max(x0 + 1, int((roi[0] + roi[2]) * w)), max(y0 + 1, int((roi[1] + roi[3]) * h))
    return image[y0:y1, x0:x1]


def shrink(image: Image, max_width: int) -> Image:
    h, w = image.shape[:2]
    if not max_width or w <= max_width:
        return image
    size = (max_width, max(1, round(h * max_width / w)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _unique(codes: list[Code]) -> list[Code]:
    """One code per payload: both libraries may report a code twice (e.g. at two scales)."""
    seen: set[tuple[str, bytes]] = set()
    out = []
    for c in codes:
        if (c.symbology, c.payload) not in seen:
            seen.add((c.symbology, c.payload))
            out.append(c)
    return out


class Pyzbar:
    """zbar through pyzbar, limited to the configured symbologies."""

    name = "pyzbar"

    def __init__(self, symbologies: Sequence[str]) -> None:
        self.lib = _import_pyzbar()
        self.symbols = [getattr(self.lib.ZBarSymbol, s) for s in symbologies]

    def read(self, image: Image) -> list[Code]:
        found = self.lib.decode(image, symbols=self.symbols)
        return _unique([Code(bytes(d.data), d.type) for d in found])


class Zxing:
    """zxing-cpp; `thorough` adds its rotated and downscaled tries. Both try the inverted
    image (light modules on dark: phones in dark mode): zxing-cpp inverts the bit matrix it
    already binarized and runs the readers again, which costs the quick pass ~5-10 % on a
    frame without a code (docs/camera.md), far less than a second pass over an inverted
    copy of the frame."""

    def __init__(self, symbologies: Sequence[str], thorough: bool, invert: bool = True) -> None:
        self.lib = _import_zxingcpp()
        # A plain list: a BarcodeFormats object alive at interpreter exit makes nanobind
        # print leak warnings.
        self.formats = [getattr(self.lib.BarcodeFormat, _ZXING[s]) for s in symbologies]
        self.thorough = thorough
        self.invert = invert
        self.name = "zxing" if thorough else "zxing-quick"

    def scan(self, image: Image) -> tuple[list[Code], bool]:
        """The codes read, and whether the detector saw a code it could not read."""
        found = self.lib.read_barcodes(
            image,
            formats=self.lib.BarcodeFormats(self.formats),
            try_rotate=self.thorough,
            try_downscale=self.thorough,
            try_invert=self.invert,
            return_errors=True,
        )
        codes = []
        for b in found:
            if b.valid:
                name = b.format.name.upper()
                codes.append(Code(bytes(b.bytes), _ZXING_NAMES.get(name, name)))
        return _unique(codes), len(codes) < len(found)

    def read(self, image: Image) -> list[Code]:
        return self.scan(image)[0]


class Pipeline:
    """Decodes one frame at a time; keeps the cascade's frame counter and pass statistics."""

    def __init__(
        self,
        decoder: str,
        symbologies: Sequence[str],
        max_width: int = 640,
        roi: Sequence[float] | None = None,
        hard_every: int = 30,
    ) -> None:
        if decoder not in ("cascade", "zxing", "pyzbar"):
            raise ValueError(f"unknown decoder {decoder!r}")
        self.decoder = decoder
        self.max_width = max_width
        self.roi = list(roi) if roi is not None else None
        self.hard_every = hard_every
        # Only the readers this decoder uses: without pyzbar (or libzbar0) the zxing-cpp
        # decoders still work, and the other way round.
        self.quick: Zxing | None = None  # cascade: QR, with the inverted try
        self.linear: Zxing | None = None  # cascade: the linear codes, on every other row
        self.thorough: Zxing | None = None
        self.zbar: Pyzbar | None = None
        try:
            if decoder == "pyzbar":
                self.zbar = Pyzbar(symbologies)
            else:
                self.thorough = Zxing(symbologies, thorough=True)
                if decoder == "cascade":
                    linear = [s for s in symbologies if s != "QRCODE"]
                    if "QRCODE" in symbologies:
                        self.quick = Zxing(["QRCODE"], thorough=False)
                    if linear:
                        self.linear = Zxing(linear, thorough=False, invert=False)
        except DecoderUnavailable as exc:
            raise DecoderUnavailable(f"decoder {decoder!r}: {exc}") from exc.__cause__
        self.frames = 0
        self.hard_passes = 0  # thorough passes the cascade ran
        self.rescued = 0  # frames only the thorough pass could read
        self.detailed = 0  # frames only the full-size QR look could read
        self.retouched = 0  # of the rescued, frames read only after `_retouched`
        self.clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))

    def describe(self) -> str:
        size = f"max_width {self.max_width}" if self.max_width else "full size"
        roi = f", roi {self.roi}" if self.roi else ""
        return f"{self.decoder}, {size}{roi}"

    def __call__(self, frame: Image) -> list[Code]:
        self.frames += 1
        full = crop(gray(frame), self.roi)
        small = shrink(full, self.max_width)
        if self.zbar is not None:
            return self.zbar.read(small)
        assert self.thorough is not None
        if self.decoder == "zxing":
            return self.thorough.read(small)
        codes, hint = self._quick(small)
        if codes:
            return codes
        if self.quick is not None and small is not full:
            # Scaled down, a code of a few pixels a module (a phone further away, a 720p
            # camera) is too fine to read or even to see. QR alone at full size costs about
            # a third of the three-format quick pass (the linear readers are the expensive
            # part), so a code in a 1280x720 frame is read on its first frame as at 640x480,
            # and most codes seen but not read at the small size need no thorough pass.
            codes, seen = self.quick.scan(full)
            if codes:
                self.detailed += 1
                return codes
            hint = hint or seen
        periodic = self.hard_every > 0 and self.frames % self.hard_every == 0
        if not (hint or periodic):
            return []
        # A hard frame: the detector saw something it could not read (look at the full-size
        # frame with every try), or it is time for the periodic look for codes the quick
        # passes cannot see at all (a linear code turned on its side, one only a downscaled
        # try reads).
        self.hard_passes += 1
        # (zbar after it read none of bench/decode.py's 825 hard frames: not worth its time.)
        # The periodic look needs no full size (small codes were looked for at full size
        # above), and at 720p the scaled frame costs a quarter as much.
        codes = self.thorough.read(full if hint else small)
        if not codes and hint:
            codes = self._retouched(full)
        if codes:
            self.rescued += 1
        return codes

    def _quick(self, small: Image) -> tuple[list[Code], bool]:
        """QR on the scaled frame, the linear codes on every other row of it: a linear code
        is read along a row, and half the rows lose none of a bar's width while they halve
        what its readers cost (the larger part of the quick pass, docs/camera.md)."""
        codes: list[Code] = []
        hint = False
        for reader, image in ((self.quick, small), (self.linear, small[::2])):
            if reader is not None:
                found, seen = reader.scan(image)
                codes += found
                hint = hint or seen
        return _unique(codes), hint

    def _retouched(self, full: Image) -> list[Code]:
        """A code seen but not read even by the thorough pass: once more with the contrast
        evened out locally (a reflection over part of a phone's screen), then smoothed
        (sensor noise, JPEG blocks). Only frames with a hint pay for it; a frame with no
        code never gives one (docs/camera.md)."""
        assert self.thorough is not None
        for image in (self.clahe.apply(full), cv2.GaussianBlur(full, (0, 0), 1.2)):
            codes = self.thorough.read(image)
            if codes:
                self.retouched += 1
                return codes
        return []
