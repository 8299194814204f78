"""The camera input's options (light module: no OpenCV, no decoder libraries)."""

from __future__ import annotations

from dataclasses import dataclass, field

from drivers.options import OptionError

DECODERS = ("cascade", "zxing", "pyzbar")
# Symbologies both decoders read, by the names the Scan meta carries (zbar's spelling).
SYMBOLOGIES = ("QRCODE", "EAN13", "EAN8", "UPCA", "UPCE", "CODE128", "CODE39", "I25")


@dataclass(frozen=True)
class CameraOptions:
    # What to read: a device index ("0") or /dev/videoN; a video file; an image sequence
    # pattern ("frames/%04d.png"); an rtsp:// or http(s):// URL; a GStreamer pipeline (has
    # "!"; needs an OpenCV built with GStreamer); or a named pipe carrying MJPEG.
    source: str | int
    # cascade: zxing-cpp quick pass, thorough pass only on hard frames (docs/camera.md);
    # zxing: the thorough pass on every frame; pyzbar: zbar on every frame.
    decoder: str = "cascade"
    # Barcode types to read; fewer types decode faster and misread less.
    symbologies: list[str] = field(default_factory=lambda: ["QRCODE", "EAN13", "CODE128"])
    # Frames wider than this are scaled down before decoding (0 = never); the cascade's
    # thorough pass looks at the full-size frame.
    max_width: int = 640
    # Region of interest [x, y, w, h] as fractions of the frame, e.g. [0.25, 0, 0.5, 1]
    # for a mount that only ever sees codes in the middle; none = the whole frame.
    roi: list[float] | None = None
    # cascade: run the thorough pass every Nth frame even with no hint of a code, so a
    # linear code turned on its side is still read within N frames (0 = only on hints).
    # Light-on-dark and small codes no longer need it (docs/camera.md).
    hard_every: int = 30
    # A code counts again only after it was out of view this long.
    debounce_s: float = 1.0
    # Files: start again at the end instead of stopping.
    loop: bool = False
    # Files: pace frames at the file's rate like a live camera (default); false = every
    # frame, as fast as the decoder goes (replays, benchmarks).
    realtime: bool = True
    # Files: frame rate when the file states none (image sequences); 0 = 30.
    fps: float = 0.0
    # Devices: capture size to ask for (0 = the device's default).
    width: int = 0
    height: int = 0
    # No frame for this long restarts the capture (also the open/read timeout for URLs).
    stall_s: float = 5.0
    # At most this many restarts of a capture that had been delivering frames, within
    # restart_window_s; one more and the input is down (the daemon's supervisor takes over).
    restart_budget: int = 3
    restart_window_s: float = 60.0
    # A source that does not open (camera unplugged, stream not up yet, file not there):
    # the input is degraded and tries again after min, doubling up to max, for as long as
    # it takes; it is never down for that.
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 10.0

    def check(self) -> None:
        if isinstance(self.source, str) and not self.source.strip():
            raise OptionError("source", "must not be empty")
        if self.decoder not in DECODERS:
            raise OptionError("decoder", f"must be one of {', '.join(DECODERS)}")
        if not self.symbologies:
            raise OptionError("symbologies", "name at least one")
        for name in self.symbologies:
            if name not in SYMBOLOGIES:
                raise OptionError("symbologies", f"unknown {name!r} (known: {SYMBOLOGIES})")
        if self.max_width and self.max_width < 160:
            raise OptionError("max_width", "must be 0 (never scale) or at least 160")
        if self.roi is not None:
            if len(self.roi) != 4 or not all(0.0 <= v <= 1.0 for v in self.roi):
                raise OptionError("roi", "must be [x, y, w, h], fractions from 0 to 1")
            x, y, w, h = self.roi
            if w <= 0 or h <= 0 or x + w > 1.0 + 1e-9 or y + h > 1.0 + 1e-9:
                raise OptionError("roi", "must lie inside the frame and not be empty")
        for name in ("hard_every", "width", "height", "restart_budget"):
            if getattr(self, name) < 0:
                raise OptionError(name, "must not be negative")
        for name in ("debounce_s", "fps"):
            if getattr(self, name) < 0:
                raise OptionError(name, "must not be negative")
        for name in ("stall_s", "restart_window_s"):
            if getattr(self, name) <= 0:
                raise OptionError(name, "must be positive")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise OptionError("reconnect_min_s", "must be positive and at most reconnect_max_s")
