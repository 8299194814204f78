"""Frames for bench/decode.py: a till scene, a coupon QR held up like a phone, and the hard
kinds (bench/decode.py's docstring lists them), all generated from one seeded generator."""

from __future__ import annotations

import io

import cv2
import numpy as np
import segno

BASE45 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"


def coupon_text(rng: np.random.Generator) -> str:
    return "CPN1:" + "".join(rng.choice(list(BASE45), 150))


def qr_modules(text: str) -> np.ndarray:
    """The QR code with its 4-module quiet zone, one pixel per module (0 black, 255 white)."""
    buf = io.BytesIO()
    segno.make(text, error="m", micro=False).save(buf, kind="png", scale=1, border=4)
    return cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_GRAYSCALE)


def noisy(img: np.ndarray, sd: float) -> np.ndarray:
    noise = np.empty(img.shape, np.int16)
    cv2.randn(noise, 0, sd)
    return cv2.add(img, noise, dtype=cv2.CV_8U)


_BACKDROPS: dict[tuple[int, int], list[np.ndarray]] = {}


def scene(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A till counter: soft coloured shapes, price labels, shelf edges, sensor noise."""
    backdrops = _BACKDROPS.setdefault((w, h), [])
    if len(backdrops) < 8:
        backdrops.append(backdrop(rng, w, h))
    return noisy(backdrops[int(rng.integers(0, len(backdrops)))], 3)


def backdrop(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    blobs = rng.normal(120, 35, (h // 40 + 2, w // 40 + 2, 3)).clip(0, 255).astype(np.uint8)
    img = cv2.resize(blobs, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(10):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        size = (int(rng.integers(20, w // 4)), int(rng.integers(5, h // 8)))
        cv2.rectangle(img, (x, y), (x + size[0], y + size[1]), colour, -1)
    for _ in range(6):
        org = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        scale = float(rng.uniform(0.4, 1.4)) * w / 1280
        cv2.putText(img, "SALE -20%  4.99", org, cv2.FONT_HERSHEY_SIMPLEX, scale, (25, 25, 25), 2)
    return img


def place(img: np.ndarray, code: np.ndarray, quad: np.ndarray, invert: bool = False) -> np.ndarray:
    """Warp `code` (grey, with quiet zone) onto the quadrilateral `quad` of `img`."""
    h, w = code.shape
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    m = cv2.getPerspectiveTransform(src, np.float32(quad))
    size = (img.shape[1], img.shape[0])
    ink = cv2.warpPerspective(255 - code if invert else code, m, size, flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.full_like(code, 255), m, size, flags=cv2.INTER_LINEAR)
    a = (mask.astype(np.float32) / 255)[..., None]
    out = img.astype(np.float32) * (1 - a) + ink[..., None].astype(np.float32) * a
    return out.clip(0, 255).astype(np.uint8)


def square(cx: float, cy: float, side: float, angle: float) -> np.ndarray:
    s = side / 2
    t = np.deg2rad(angle)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return np.array([[-s, -s], [s, -s], [s, s], [-s, s]]) @ rot.T + [cx, cy]


def coupon_frame(
    rng: np.random.Generator, w: int, h: int, text: str
) -> tuple[np.ndarray, np.ndarray]:
    """What the camera sees when a customer holds a phone up: a clear code, a little tilt;
    and where the code is (its corners)."""
    modules = qr_modules(text)
    side = min(w, h) * rng.uniform(0.45, 0.7)
    scale = max(1, int(round(side / modules.shape[0] * 2)))
    code = cv2.resize(modules, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    cx, cy = w / 2 + rng.uniform(-0.15, 0.15) * w, h / 2 + rng.uniform(-0.1, 0.1) * h
    quad = square(cx, cy, side, rng.uniform(-12, 12))
    return jpeg(place(scene(rng, w, h), code, quad), 85), quad


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def rectangle(cx: float, cy: float, rw: float, rh: float, angle: float) -> np.ndarray:
    t = np.deg2rad(angle)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    corners = np.array([[-rw, -rh], [rw, -rh], [rw, rh], [-rw, rh]]) / 2
    return corners @ rot.T + [cx, cy]


def phone_dark_frame(
    rng: np.random.Generator, w: int, h: int, text: str
) -> tuple[np.ndarray, np.ndarray]:
    """A phone in dark mode held up at the till: light modules on a dark screen, a black
    bezel, the screen's pixel grid beating with the camera's (moire), a reflection, the
    phone tilted. Its size is in pixels, as a photo of a phone pasted at its own size:
    3-5 pixels a module at either frame size (a 720p camera sees it no larger)."""
    modules = qr_modules(text)
    px = int(rng.integers(3, 6))
    dark, light = rng.uniform(12, 45), rng.uniform(170, 235)
    code = cv2.resize(modules, None, fx=px, fy=px, interpolation=cv2.INTER_NEAREST)
    code = np.where(code < 128, light, dark).astype(np.uint8)
    side = code.shape[0]
    sw, sh = int(side * 1.25), int(side * 2.0)  # the screen, portrait
    screen = np.full((sh, sw), dark, np.uint8)
    y0, x0 = int(sh * 0.3), (sw - side) // 2
    screen[y0 : y0 + side, x0 : x0 + side] = code
    cv2.putText(screen, "-20 CNY", (x0, y0 // 2), cv2.FONT_HERSHEY_SIMPLEX, side / 220, light, 2)
    screen = screen.astype(np.float32)
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    t = rng.uniform(0, np.pi)
    period = rng.uniform(5, 11)
    wave = np.sin((xx * np.cos(t) + yy * np.sin(t)) * 2 * np.pi / period)
    screen *= 1 + rng.uniform(0.06, 0.15) * wave
    bezel = int(side * 0.06)
    phone = cv2.copyMakeBorder(screen.clip(0, 255).astype(np.uint8), *[bezel] * 4,
                               cv2.BORDER_CONSTANT, value=8)  # fmt: skip
    ph, pw = phone.shape
    scale = min(1.0, 0.95 * h / ph)  # a phone taller than the frame is cut at the screen
    cx, cy = w / 2 + rng.uniform(-0.2, 0.2) * w, h / 2 + rng.uniform(-0.05, 0.05) * h
    quad = rectangle(cx, cy, pw * scale, ph * scale, rng.uniform(-20, 20))
    quad = quad + rng.uniform(-0.12, 0.12, (4, 2)) * side * scale
    img = place(scene(rng, w, h), phone, quad)
    glare = np.zeros((h, w), np.float32)
    gx, gy = quad.mean(0) + rng.uniform(-0.25, 0.25, 2) * side
    axes = (int(side * rng.uniform(0.2, 0.5)), int(side * rng.uniform(0.06, 0.15)))
    cv2.ellipse(glare, (int(gx), int(gy)), axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
    glare = cv2.GaussianBlur(glare, (0, 0), side * 0.08)
    img = (img.astype(np.float32) + glare[..., None] * rng.uniform(60, 140)).clip(0, 255)
    img = cv2.GaussianBlur(img.astype(np.uint8), (0, 0), rng.uniform(0.5, 1.1))
    code_quad = quad  # the whole phone: what must lie inside a region of interest
    return jpeg(noisy(img, 4), int(rng.uniform(70, 88))), code_quad


def photo_frame(
    rng: np.random.Generator, w: int, h: int, text: str
) -> tuple[np.ndarray, np.ndarray]:
    """A photo of a printed code pasted at its own size: 3-4.5 pixels a module whatever the
    frame size, so a 1280x720 frame must read it as a 640x480 one does."""
    modules = qr_modules(text)
    side = modules.shape[0] * rng.uniform(3.0, 4.5)
    scale = max(1, int(round(side / modules.shape[0] * 2)))
    code = cv2.resize(modules, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    cx, cy = w / 2 + rng.uniform(-0.25, 0.25) * w, h / 2 + rng.uniform(-0.15, 0.15) * h
    quad = square(cx, cy, side, rng.uniform(-10, 10))
    img = place(scene(rng, w, h), code, quad)
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 0.9))
    return jpeg(img, int(rng.uniform(70, 88))), quad


def hard_frame(
    rng: np.random.Generator, w: int, h: int, text: str, kind: str
) -> tuple[np.ndarray, np.ndarray]:
    if kind == "phone-dark-mode":
        return phone_dark_frame(rng, w, h, text)
    if kind == "photo":
        return photo_frame(rng, w, h, text)
    every = kind == "all-at-once"
    modules = qr_modules(text)
    n = modules.shape[0]
    side = min(w, h) * rng.uniform(0.45, 0.7)
    if kind == "small":  # about 3 pixels a module at 1280x720, 1.5 at 640x480
        side = n * rng.uniform(2.6, 3.4) * w / 1280
    scale = max(1, int(round(side / n * 2)))
    code = cv2.resize(modules, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    cx, cy = w / 2 + rng.uniform(-0.2, 0.2) * w, h / 2 + rng.uniform(-0.15, 0.15) * h
    angle = rng.uniform(0, 360) if kind == "rotation" or every else rng.uniform(-15, 15)
    quad = square(cx, cy, side, angle)
    if kind == "perspective" or every:
        quad = quad + rng.uniform(-0.28, 0.28, (4, 2)) * side / 2
    quad[:, 0] = quad[:, 0].clip(2, w - 3)
    quad[:, 1] = quad[:, 1].clip(2, h - 3)
    img = scene(rng, w, h)
    if kind == "glare":  # a phone: dark body around the screen
        body = square(cx, cy, side * 1.25, angle)
        img = cv2.fillConvexPoly(img, body.astype(np.int32), (30, 30, 30))
    img = place(img, code, quad, invert=kind == "inverted")
    if kind == "blur":
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(1.5, 3.5) * w / 1280)
    if kind == "motion" or every:
        length = int(rng.uniform(5, 13) * w / 1280) | 1
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0
        turn = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), rng.uniform(0, 180), 1)
        kernel = cv2.warpAffine(kernel, turn, (length, length))
        img = cv2.filter2D(img, -1, kernel / kernel.sum())
    if kind == "noise" or every:
        img = noisy(img, 15 if every else rng.uniform(20, 45))
    if kind == "low-contrast" or every:
        low, span = rng.uniform(60, 110), 70 if every else rng.uniform(25, 45)
        img = (low + img.astype(np.float32) * span / 255).astype(np.uint8)
    if kind == "glare":  # a bright reflection over part of the screen, clipped to white
        glare = np.zeros((h, w), np.float32)
        gx, gy = quad.mean(0) + rng.uniform(-0.3, 0.3, 2) * side
        axes = (int(side * rng.uniform(0.2, 0.4)), int(side * rng.uniform(0.08, 0.2)))
        cv2.ellipse(glare, (int(gx), int(gy)), axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
        glare = cv2.GaussianBlur(glare, (0, 0), side * 0.06)
        bright = glare[..., None] * rng.uniform(150, 260)
        img = (img.astype(np.float32) + bright).clip(0, 255).astype(np.uint8)
    if kind == "jpeg":
        return jpeg(img, int(rng.uniform(8, 20))), quad
    return jpeg(img, 35 if every else 85), quad


def mirrored_frame(rng: np.random.Generator, w: int, h: int, text: str) -> np.ndarray:
    """A coupon frame whose code is seen in a mirror (a selfie camera's preview, a code
    printed on the back of a transparent sheet)."""
    modules = qr_modules(text)[:, ::-1]
    side = min(w, h) * rng.uniform(0.45, 0.7)
    scale = max(1, int(round(side / modules.shape[0] * 2)))
    code = cv2.resize(modules, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    cx, cy = w / 2 + rng.uniform(-0.15, 0.15) * w, h / 2 + rng.uniform(-0.1, 0.1) * h
    return jpeg(place(scene(rng, w, h), code, square(cx, cy, side, rng.uniform(-12, 12))), 85)
