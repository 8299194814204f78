"""Camera decoding: frames per second and success rate of pyzbar, zxing-cpp, OpenCV's QR
detectors and the driver's own pipelines, all on the same generated frames in one run.

Frames at 640x480 and 1280x720: a coupon QR ("CPN1:" + 150 base45 characters) on a till
scene, the scene with no code, and hard frames (rotation, perspective, blur, motion blur,
noise, JPEG artefacts, low contrast, inverted, a phone screen's glare, a small code far
away, and all of it at once).

Goal: the driver's default pipeline decodes at least 8x the frames per second of naive
pyzbar (colour frame, full size, every symbology) on every kind of frame at both sizes, and
reads at least as many of the coupon and the hard frames.

    .venv/bin/python bench/decode.py [--hard N] [--seed N]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import segno  # noqa: E402
import zxingcpp  # noqa: E402
from pyzbar import pyzbar  # noqa: E402

from drivers.camera.decode import Pipeline  # noqa: E402
from drivers.camera.options import CameraOptions  # noqa: E402

SIZES = ((640, 480), (1280, 720))
EASY_FRAMES = 24  # coupon frames and no-code frames per size
EASY_MIN_S = 0.4  # time the easy frames over repeated passes for at least this long
HARD_KINDS = (
    "rotation",
    "perspective",
    "blur",
    "motion",
    "noise",
    "jpeg",
    "low-contrast",
    "inverted",
    "glare",
    "small",
    "all-at-once",
)
BASE45 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
DEFAULTS = CameraOptions(source="0")
SYMBOLOGIES = DEFAULTS.symbologies
GOAL_X = 8.0
# The region of interest measured: the centre 60 % of the frame (x, y, w, h as fractions).
ROI = [0.2, 0.2, 0.6, 0.6]
ROI_NAME = "roi centre 60%"

Decoder = Callable[[np.ndarray], list[bytes]]


# ---------------------------------------------------------------------------- frames


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


def hard_frame(
    rng: np.random.Generator, w: int, h: int, text: str, kind: str
) -> tuple[np.ndarray, np.ndarray]:
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


# ---------------------------------------------------------------------------- decoders


def decoders() -> dict[str, Decoder]:
    symbols = [getattr(pyzbar.ZBarSymbol, s) for s in SYMBOLOGIES]
    formats = zxingcpp.BarcodeFormats(
        [
            zxingcpp.BarcodeFormat.QRCode,
            zxingcpp.BarcodeFormat.EAN13,
            zxingcpp.BarcodeFormat.Code128,
        ]
    )

    def gray(img: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)

    def zx(thorough: bool) -> Decoder:
        def run(img: np.ndarray) -> list[bytes]:
            found = zxingcpp.read_barcodes(
                gray(img),
                formats=formats,
                try_rotate=thorough,
                try_downscale=thorough,
                try_invert=thorough,
            )
            return [bytes(b.bytes) for b in found]

        return run

    def opencv(det: cv2.QRCodeDetector | cv2.QRCodeDetectorAruco) -> Decoder:
        def run(img: np.ndarray) -> list[bytes]:
            text, _, _ = det.detectAndDecode(img)
            return [text.encode()] if text else []

        return run

    def pipeline(decoder: str, max_width: int, roi: list[float] | None = None) -> Decoder:
        p = Pipeline(decoder, SYMBOLOGIES, max_width, roi, DEFAULTS.hard_every)
        PIPELINES[f"driver {decoder} @{max_width}" + (f" roi {roi}" if roi else "")] = p
        return lambda img: [c.payload for c in p(img)]

    out: dict[str, Decoder] = {
        "pyzbar naive (colour, full, all types)": lambda img: [d.data for d in pyzbar.decode(img)],
        "pyzbar grey full": lambda img: [d.data for d in pyzbar.decode(gray(img), symbols)],
        "zxing quick grey full": zx(False),
        "zxing thorough grey full": zx(True),
        "opencv QRCodeDetector": opencv(cv2.QRCodeDetector()),
    }
    if hasattr(cv2, "QRCodeDetectorAruco"):
        out["opencv QRCodeDetectorAruco"] = opencv(cv2.QRCodeDetectorAruco())
    out["driver pyzbar @640"] = pipeline("pyzbar", 640)
    out["driver zxing @640"] = pipeline("zxing", 640)
    out["driver cascade full size"] = pipeline("cascade", 0)
    out["driver cascade @960"] = pipeline("cascade", 960)
    # A fixed mount configured to decode only the counter area where coupons are shown.
    out[f"driver cascade @640 {ROI_NAME}"] = pipeline("cascade", 640, ROI)
    out[DEFAULT] = pipeline(DEFAULTS.decoder, DEFAULTS.max_width)
    return out


PIPELINES: dict[str, Pipeline] = {}
DEFAULT = f"DEFAULT: driver {DEFAULTS.decoder} @{DEFAULTS.max_width}"
NAIVE = "pyzbar naive (colour, full, all types)"


def inside_roi(quad: np.ndarray, w: int, h: int) -> bool:
    x, y, rw, rh = ROI
    return bool(
        (quad[:, 0] >= x * w).all()
        and (quad[:, 0] <= (x + rw) * w).all()
        and (quad[:, 1] >= y * h).all()
        and (quad[:, 1] <= (y + rh) * h).all()
    )


@dataclass
class Run:
    fps: float
    hits: list[bool]  # per frame: the expected payload was read
    wrong: int  # frames where something other than the expected payload came out

    @property
    def rate(self) -> float:
        return sum(self.hits) / len(self.hits) if self.hits else 0.0


def measure(fn: Decoder, frames: list[tuple[np.ndarray, str | None]], min_s: float) -> Run:
    """Reads from the first pass over `frames`; the rate over as many passes as fill min_s."""
    hits, wrong, n = [], 0, 0
    t0 = time.perf_counter()
    while not n or time.perf_counter() - t0 < min_s:
        for img, expected in frames:
            got = fn(img)
            if not n:
                hit = expected is not None and expected.encode() in got
                hits.append(hit)
                wrong += bool(got) and not hit
        n += 1
    return Run(n * len(frames) / (time.perf_counter() - t0), hits, wrong)


Frames = list[tuple[np.ndarray, str | None]]
Sets = dict[tuple[int, int], dict[str, Frames]]
# Per size and set, per frame: the whole code lies inside ROI (no code: False).
Inside = dict[tuple[int, int], dict[str, list[bool]]]


def generate(rng: np.random.Generator, hard_720: int) -> tuple[Sets, Inside]:
    texts = [coupon_text(rng) for _ in range(16)]
    sets: Sets = {}
    inside: Inside = {}
    for w, h in SIZES:
        n_hard = hard_720 if w == 1280 else hard_720 // 2
        coupon: Frames = []
        in_coupon, in_hard = [], []
        for i in range(EASY_FRAMES):
            img, quad = coupon_frame(rng, w, h, texts[i % 16])
            coupon.append((img, texts[i % 16]))
            in_coupon.append(inside_roi(quad, w, h))
        none: Frames = [(jpeg(scene(rng, w, h), 85), None) for _ in range(EASY_FRAMES)]
        hard: Frames = []
        for i in range(n_hard):
            text = texts[i % 16]
            img, quad = hard_frame(rng, w, h, text, HARD_KINDS[i % len(HARD_KINDS)])
            hard.append((img, text))
            in_hard.append(inside_roi(quad, w, h))
        sets[(w, h)] = {"coupon": coupon, "none": none, "hard": hard}
        inside[(w, h)] = {"coupon": in_coupon, "none": [False] * EASY_FRAMES, "hard": in_hard}
    return sets, inside


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--hard", type=int, default=550, help="hard frames at 1280x720 (half at 640)")
    ap.add_argument("--seed", type=int, default=20261125)
    args = ap.parse_args()
    cv2.setNumThreads(1)  # the driver decodes on one thread; the same for every library
    print(
        f"bench/decode.py: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"OpenCV {cv2.__version__}, seed {args.seed}, cv2 threads 1"
    )
    t0 = time.perf_counter()
    sets, inside = generate(np.random.default_rng(args.seed), args.hard)
    n_hard = sum(len(s["hard"]) for s in sets.values())
    took = time.perf_counter() - t0
    print(f"generated {n_hard} hard frames and {4 * EASY_FRAMES} easy ones in {took:.1f} s")

    runs: dict[str, dict[tuple[int, int], dict[str, Run]]] = defaultdict(dict)
    for name, fn in decoders().items():
        for size, frames in sets.items():
            fn(frames["coupon"][0][0])  # warm-up
            runs[name][size] = {
                k: measure(fn, v, 0.0 if k == "hard" else EASY_MIN_S) for k, v in frames.items()
            }

    for size in SIZES:
        print(f"\n{size[0]}x{size[1]}: frames/s (x naive) and frames read")
        print(
            f"{'decoder':40} {'coupon fps':>15} {'no-code fps':>15} {'hard fps':>15} "
            f"{'coupon':>7} {'hard':>6} {'wrong':>5}"
        )
        base = runs[NAIVE][size]
        for name, by_size in runs.items():
            r = by_size[size]
            cells = [
                f"{r[k].fps:7.0f} ({r[k].fps / base[k].fps:4.1f}x)"
                for k in ("coupon", "none", "hard")
            ]
            wrong = sum(x.wrong for x in r.values())
            print(
                f"{name:40} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15} "
                f"{r['coupon'].rate:7.0%} {r['hard'].rate:6.1%} {wrong:5d}"
            )

    print(f"\nhard frames read, by kind ({n_hard} frames, both sizes)")
    print(f"{'decoder':40} " + " ".join(f"{k[:8]:>8}" for k in HARD_KINDS) + f" {'all':>6}")
    for name, by_size in runs.items():
        hit: dict[str, int] = defaultdict(int)
        total: dict[str, int] = defaultdict(int)
        for size in SIZES:
            for i, h in enumerate(by_size[size]["hard"].hits):
                kind = HARD_KINDS[i % len(HARD_KINDS)]
                hit[kind] += h
                total[kind] += 1
        cells = " ".join(f"{hit[k] / total[k]:8.0%}" for k in HARD_KINDS)
        print(f"{name:40} {cells} {sum(hit.values()) / n_hard:6.1%}")

    p = PIPELINES[f"driver {DEFAULTS.decoder} @{DEFAULTS.max_width}"]
    print(
        f"\n{DEFAULT}: {p.frames} frames, thorough pass on {p.hard_passes} "
        f"(every {DEFAULTS.hard_every}th frame or a hint), which read {p.rescued} frames the quick "
        "pass could not"
    )
    roi_row = runs[f"driver cascade @640 {ROI_NAME}"]
    print(f"\nROI {ROI} (x, y, w, h) against {DEFAULT}:")
    for size in SIZES:
        speed = " ".join(
            f"{k} {roi_row[size][k].fps / runs[DEFAULT][size][k].fps:.2f}x"
            for k in ("coupon", "none", "hard")
        )
        reads = []
        for k in ("coupon", "hard"):
            flags = inside[size][k]
            n_in = sum(flags)
            got_roi = sum(roi_row[size][k].hits)
            got_def = sum(runs[DEFAULT][size][k].hits)
            in_roi = sum(h for h, f in zip(roi_row[size][k].hits, flags, strict=True) if f)
            in_def = sum(h for h, f in zip(runs[DEFAULT][size][k].hits, flags, strict=True) if f)
            reads.append(
                f"{k} read {got_roi}/{len(flags)} (default {got_def}); code inside the ROI "
                f"in {n_in}, read {in_roi} (default {in_def})"
            )
        print(f"  {size[0]}x{size[1]}: speed {speed}; " + "; ".join(reads))
    worst = min(
        runs[DEFAULT][s][k].fps / runs[NAIVE][s][k].fps
        for s in SIZES
        for k in ("coupon", "none", "hard")
    )
    reads = all(
        sum(runs[DEFAULT][s][k].hits) >= sum(runs[NAIVE][s][k].hits)
        for s in SIZES
        for k in ("coupon", "hard")
    )
    d_hard = sum(sum(runs[DEFAULT][s]["hard"].hits) for s in SIZES) / n_hard
    n_hard_rate = sum(sum(runs[NAIVE][s]["hard"].hits) for s in SIZES) / n_hard
    print(
        f"\nGOAL {'met' if worst >= GOAL_X and reads else 'not met'}: {DEFAULT} is at least "
        f"{worst:.1f}x naive pyzbar on every kind of frame at both sizes (goal {GOAL_X:g}x); "
        f"reads {d_hard:.1%} of hard frames vs {n_hard_rate:.1%} "
        f"({'not fewer' if reads else 'FEWER'} coupon or hard frames at either size); "
        f"total {time.perf_counter() - t0:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
