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
