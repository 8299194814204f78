"""Media for the camera tests: QR codes (segno), EAN-13 drawn from the standard tables,
Code 128 (zxing-cpp's writer), a till scene, and videos / image sequences written with
OpenCV so the driver reads them back through cv2.VideoCapture."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import segno
import zxingcpp

BASE45 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
W, H = 640, 480

# EAN-13: left-hand digits in L (odd) or G (even parity), right-hand in R; the first digit
# is not drawn, it picks the L/G pattern of the left six.
_L = ["0001101", "0011001", "0010011", "0111101", "0100011",
      "0110001", "0101111", "0111011", "0110111", "0001011"]  # fmt: skip
_R = ["".join("1" if b == "0" else "0" for b in code) for code in _L]
_G = [code[::-1] for code in _R]
_PARITY = ["LLLLLL", "LLGLGG", "LLGGLG", "LLGGGL", "LGLLGG",
           "LGGLLG", "LGGGLL", "LGLGLG", "LGLGGL", "LGGLGL"]  # fmt: skip


def coupon_text(seed: int) -> str:
    """Looks like a coupon token: the prefix and 150 base45 characters."""
    rng = np.random.default_rng(seed)
    return "CPN1:" + "".join(rng.choice(list(BASE45), 150))


def qr(text: str, module: int = 4) -> np.ndarray:
    """A QR code with its quiet zone, `module` pixels a module, grey (0 ink, 255 paper)."""
    buf = io.BytesIO()
    segno.make(text, error="m", micro=False).save(buf, kind="png", scale=module, border=4)
    return cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_GRAYSCALE)


def ean13_check(digits12: str) -> str:
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(digits12))
    return str((10 - total % 10) % 10)


def ean13(digits12: str, module: int = 3, height: int = 120) -> np.ndarray:
    """An EAN-13 symbol with quiet zones, drawn bar by bar."""
    code = digits12 + ean13_check(digits12)
    bits = "101"
    for parity, d in zip(_PARITY[int(code[0])], code[1:7], strict=True):
        bits += (_L if parity == "L" else _G)[int(d)]
    bits += "01010" + "".join(_R[int(d)] for d in code[7:]) + "101"
    bits = "0" * 11 + bits + "0" * 11
    row = np.array([0 if b == "1" else 255 for b in bits], np.uint8)
    return np.repeat(np.tile(row, (height, 1)), module, axis=1)


def code128(text: str, scale: int = 3) -> np.ndarray:
    image = zxingcpp.write_barcode_to_image(
        zxingcpp.create_barcode(text, zxingcpp.BarcodeFormat.Code128), scale=scale
    )
    return cv2.copyMakeBorder(np.asarray(image), 20, 20, 40, 40, cv2.BORDER_CONSTANT, value=255)


def scene(seed: int = 0, w: int = W, h: int = H) -> np.ndarray:
    """A till counter without a code: soft colours, price labels, some shapes."""
    rng = np.random.default_rng(seed)
    blobs = rng.normal(120, 35, (h // 40 + 2, w // 40 + 2, 3)).clip(0, 255).astype(np.uint8)
    img = cv2.resize(blobs, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(6):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        cv2.rectangle(img, (x, y), (x + int(rng.integers(20, 160)), y + 30), colour, -1)
    cv2.putText(img, "SALE -20%", (20, h - 30), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (20, 20, 20), 2)
    return img


def put(frame: np.ndarray, code: np.ndarray, cx: int, cy: int) -> np.ndarray:
    """Paste a grey code centred at (cx, cy) onto a copy of the colour frame."""
    out = frame.copy()
    h, w = code.shape
    x, y = cx - w // 2, cy - h // 2
    out[y : y + h, x : x + w] = code[..., None]
    return out


def inverted(code: np.ndarray) -> np.ndarray:
    """Light modules on dark, as a phone in dark mode shows a code."""
    return 255 - code


def mirrored(code: np.ndarray) -> np.ndarray:
    """The code seen in a mirror (left and right swapped)."""
    return np.ascontiguousarray(code[:, ::-1])


def photo(
    seed: int, w: int, h: int, code: np.ndarray, cx: int, cy: int, blur: float = 0.7
) -> np.ndarray:
    """A code pasted at its own size in pixels, the way a photo of one is placed in a frame
    of any size: slightly turned, softened by the lens, JPEG-compressed like a camera's."""
    rng = np.random.default_rng(seed)
    frame = scene(seed, w, h)
    ch, cw = code.shape
    turn = cv2.getRotationMatrix2D((cw / 2, ch / 2), float(rng.uniform(-8, 8)), 1.0)
    turn[:, 2] += (cx - cw / 2, cy - ch / 2)
    ink = cv2.warpAffine(code, turn, (w, h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.full_like(code, 255), turn, (w, h), flags=cv2.INTER_LINEAR)
    a = (mask.astype(np.float32) / 255)[..., None]
    out = (frame * (1 - a) + ink[..., None] * a).astype(np.uint8)
    out = cv2.GaussianBlur(out, (0, 0), blur)
    return cv2.imdecode(np.frombuffer(jpeg_bytes(out, 80), np.uint8), cv2.IMREAD_COLOR)


def phone_dark_mode(seed: int, text: str, w: int = W, h: int = H, module: int = 4) -> np.ndarray:
    """A phone in dark mode held up at the till: light modules on a dark screen, a black
    bezel, moire from the screen's pixel grid, a reflection, the phone tilted in
    perspective; `module` pixels a module whatever the frame size (a photo of a phone)."""
    rng = np.random.default_rng(seed)
    code = qr(text, module)
    side = code.shape[0]
    screen = np.full((side * 2, int(side * 1.25)), 30, np.uint8)
    x0, y0 = (screen.shape[1] - side) // 2, int(side * 0.6)
    screen[y0 : y0 + side, x0 : x0 + side] = np.where(code < 128, 215, 30)
    cv2.putText(screen, "-20 CNY", (x0, y0 // 2), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 215, 2)
    yy, xx = np.mgrid[0 : screen.shape[0], 0 : screen.shape[1]].astype(np.float32)
    screen = (screen * (1 + 0.12 * np.sin((xx * 0.8 + yy * 0.6) * 2 * np.pi / 7))).clip(0, 255)
    phone = cv2.copyMakeBorder(screen.astype(np.uint8), *[12] * 4, cv2.BORDER_CONSTANT, value=8)
    ph, pw = phone.shape
    scale = min(1.0, 0.95 * h / ph)
    src = np.float32([[0, 0], [pw, 0], [pw, ph], [0, ph]])
    cx, cy = w / 2, h / 2
    dst = np.float32([[-pw, -ph], [pw, -ph], [pw, ph], [-pw, ph]]) * scale / 2 + [cx, cy]
    dst += rng.uniform(-0.08, 0.08, (4, 2)).astype(np.float32) * side * scale
    m = cv2.getPerspectiveTransform(src, dst.astype(np.float32))
    ink = cv2.warpPerspective(phone, m, (w, h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.full_like(phone, 255), m, (w, h), flags=cv2.INTER_LINEAR)
    a = (mask.astype(np.float32) / 255)[..., None]
    out = scene(seed, w, h) * (1 - a) + ink[..., None] * a
    glare = np.zeros((h, w), np.float32)
    cv2.ellipse(glare, (int(cx + side * 0.15), int(cy)), (side // 3, side // 10), 30, 0, 360, 1, -1)
    out += cv2.GaussianBlur(glare, (0, 0), side * 0.08)[..., None] * 110
    out = cv2.GaussianBlur(out.clip(0, 255).astype(np.uint8), (0, 0), 0.8)
    return cv2.imdecode(np.frombuffer(jpeg_bytes(out, 80), np.uint8), cv2.IMREAD_COLOR)


def write_video(path: Path, frames: Iterable[np.ndarray], fps: float = 30.0) -> Path:
    """Motion-JPEG in AVI: written and read back by the FFmpeg inside opencv-python."""
    frames = list(frames)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened(), "this OpenCV cannot write MJPG/AVI"
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def write_sequence(folder: Path, frames: Iterable[np.ndarray]) -> str:
    """PNG files 0000.png, 0001.png, ...; returns the printf pattern OpenCV's CAP_IMAGES reads."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:04d}.png"), f)
    return str(folder / "%04d.png")


def jpeg_bytes(frame: np.ndarray, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()
