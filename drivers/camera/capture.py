"""Opening a camera source with OpenCV and reading it in its own thread into a one-slot
handoff: the decoder always takes the newest frame and no backlog can grow."""

from __future__ import annotations

import logging
import os
import select
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from drivers.camera.options import CameraOptions

log = logging.getLogger(__name__)

# OpenCV writes its warnings straight to stderr ("[ WARN:0@0.02] global cap.cpp:212 open
# VIDEOIO(V4L2)..."), which breaks the structured log; every failure they describe reaches
# the input's health detail and our own log instead. OPENCV_LOG_LEVEL still wins, for
# debugging a capture by hand.
if "OPENCV_LOG_LEVEL" not in os.environ:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

DEVICE, FILE, IMAGES, URL, PIPELINE, PIPE = "device", "file", "images", "url", "pipeline", "pipe"
DEFAULT_FPS = 30.0
PIPE_BUFFER_MAX = 16 << 20  # bytes of a pipe without one whole JPEG: not MJPEG, start over


class CaptureError(Exception):
    """The source could not be opened; the message is what the health detail says."""


def classify(source: str | int) -> str:
    if isinstance(source, int) or source.strip().isdigit():
        return DEVICE
    if source.startswith("/dev/video"):
        return DEVICE
    if "!" in source:
        return PIPELINE
    if "://" in source:
        return URL
    if "%" in source:
        return IMAGES
    try:
        if stat.S_ISFIFO(os.stat(source).st_mode):
            return PIPE
    except OSError:
        pass
    return FILE


def is_file(kind: str) -> bool:
    return kind in (FILE, IMAGES)


class PipeReader:
    """MJPEG from a named pipe, as `rpicam-vid -t 0 --codec mjpeg -o FIFO` writes it (the Pi
    camera without GStreamer): JPEG after JPEG, split at the JPEG markers, decoded with
    cv2.imdecode. Opened read-write so a writer that comes and goes is silence (a stall for
    the watchdog), never an end of file, and a read never blocks past its timeout."""

    def __init__(self, path: str) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        except OSError as exc:
            raise CaptureError(f"cannot open {path}: {exc.strerror}") from None
        self.buf = bytearray()
        self.skipped = 0  # whole frames passed over for a newer one

    def read(self, retired: threading.Event, wait_s: float) -> np.ndarray | None:
        """The newest complete frame, or None if none came within wait_s."""
        deadline = time.monotonic() + wait_s
        while not retired.is_set():
            jpegs = self._split()
            if jpegs:
                self.skipped += len(jpegs) - 1
                image = cv2.imdecode(np.frombuffer(jpegs[-1], np.uint8), cv2.IMREAD_COLOR)
                if image is not None:
                    return image
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.1))
            if ready:
                try:
                    self.buf += os.read(self.fd, 1 << 20)
                except BlockingIOError:  # another reader (a retiring capture) took it
                    continue
        return None

    def _split(self) -> list[bytes]:
        jpegs: list[bytes] = []
        while True:
            start = self.buf.find(b"\xff\xd8")
            if start < 0:
                del self.buf[:-1]  # keep a trailing 0xff: it may start a marker
                return jpegs
            end = self.buf.find(b"\xff\xd9", start + 2)
            if end < 0:
                del self.buf[:start]
                if len(self.buf) > PIPE_BUFFER_MAX:
                    self.buf.clear()
                return jpegs
            jpegs.append(bytes(self.buf[start : end + 2]))
            del self.buf[: end + 2]

    def release(self) -> None:
        os.close(self.fd)


def open_source(source: str | int, kind: str, options: CameraOptions) -> cv2.VideoCapture:
    """A VideoCapture that is open, or CaptureError saying why not."""
    text = str(source).strip()
    if kind == DEVICE:
        target: str | int = int(text) if text.isdigit() else text
        cap = cv2.VideoCapture(target, cv2.CAP_V4L2)
        if cap.isOpened():
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver's queue, not the device's
            if options.width and options.height:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, options.width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, options.height)
    elif kind == PIPELINE:
        if not cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
            raise CaptureError(
                "cannot open GStreamer pipeline: this OpenCV is built without GStreamer "
                "(use a named pipe of MJPEG instead, see docs/camera.md)"
            )
        cap = cv2.VideoCapture(text, cv2.CAP_GSTREAMER)
    elif kind == URL:
        ms = int(options.stall_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        cap = cv2.VideoCapture(text, cv2.CAP_FFMPEG, params)
    elif kind == IMAGES:
        if not Path(text % 0).parent.is_dir():
            raise CaptureError(f"cannot open {text}: no such directory")
        cap = cv2.VideoCapture(text, cv2.CAP_IMAGES)
    else:
        if not Path(text).is_file():
            raise CaptureError(f"cannot open {text}: no such file")
        cap = cv2.VideoCapture(text)
    if not cap.isOpened():
        cap.release()
        raise CaptureError(f"cannot open {text}")
    return cap


@dataclass(frozen=True)
class Frame:
    n: int  # frames read from the source since the driver started (0, 1, 2, ...)
    t: float  # the camera's time in seconds: file position for files, monotonic if live
    image: np.ndarray
    # When the frame became available to the decoder (time.monotonic): the start of the
    # scan-to-decision latency.
    ready: float = field(default_factory=time.monotonic)


class FrameSlot:
    """A one-frame handoff. Live: a new frame replaces one not yet taken (counted as
    dropped). `lossless` (files not paced): the reader waits until the slot is free."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self.dropped = 0

    def put(
        self, frame: Frame, lossless: bool = False, retired: threading.Event | None = None
    ) -> None:
        with self._cond:
            while lossless and self._frame is not None:
                if retired is not None and retired.is_set():
                    return
                self._cond.wait(0.05)
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._cond.notify_all()

    def skip(self, n: int) -> None:
        with self._cond:
            self.dropped += n

    def take(self, timeout: float) -> Frame | None:
        with self._cond:
            if self._frame is None:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            if frame is not None:
                self._cond.notify_all()
            return frame


class Capture(threading.Thread):
    """One opening of the source, read until the end, a failure or `retire()`. A read that
    blocks (a camera or URL gone quiet: V4L2 gives up after 10 s, a URL after stall_s)
    leaves this thread waiting; the watchdog does not wait for it but starts another, and
    this one releases its capture when the read returns."""

    def __init__(
        self,
        source: str | int,
        kind: str,
        options: CameraOptions,
        slot: FrameSlot,
        first_n: int = 0,
        first_t: float = 0.0,
    ) -> None:
        super().__init__(name=f"capture-{source}", daemon=True)
        self.source, self.kind, self.options, self.slot = source, kind, options, slot
        self.status = "opening"  # opening, running, eof, failed
        self.reason = ""
        self.fps = 0.0  # the source's own rate, where it states one
        self.first_n = first_n
        self.next_n = first_n
        self._t0 = first_t  # files: where this opening's timeline starts
        self.last_frame_at = time.monotonic()  # the watchdog's clock
        self.retired = threading.Event()

    @property
    def delivered(self) -> bool:
        """Whether this opening has handed over a frame yet."""
        return self.next_n > self.first_n

    def retire(self) -> None:
        self.retired.set()

    def run(self) -> None:
        try:
            self._run_pipe() if self.kind == PIPE else self._run_capture()
        except Exception as exc:  # reported to the watchdog, which restarts or gives up
            log.exception("capture of %s failed", self.source)
            self.reason, self.status = f"{self.source}: {type(exc).__name__}: {exc}", "failed"

    def _run_capture(self) -> None:
        try:
            cap = open_source(self.source, self.kind, self.options)
        except CaptureError as exc:
            self.reason, self.status = str(exc), "failed"
            return
        except cv2.error as exc:
            self.reason, self.status = f"cannot open {self.source}: {exc}", "failed"
            return
        try:
            self._read(cap)
        except cv2.error as exc:
            self.reason, self.status = f"{self.source}: {exc}", "failed"
        finally:
            cap.release()

    def _run_pipe(self) -> None:
        try:
            pipe = PipeReader(str(self.source))
        except CaptureError as exc:
            self.reason, self.status = str(exc), "failed"
            return
        self.status = "running"
        try:
            while not self.retired.is_set():
                image = pipe.read(self.retired, 0.2)
                if pipe.skipped:
                    self.slot.skip(pipe.skipped)
                    pipe.skipped = 0
                if image is None:
                    continue  # silence: the watchdog decides when it is a stall
                self.last_frame_at = now = time.monotonic()
                self.slot.put(Frame(self.next_n, now, image))
                self.next_n += 1
        finally:
            pipe.release()

    def _read(self, cap: cv2.VideoCapture) -> None:
        file = is_file(self.kind)
        stated = cap.get(cv2.CAP_PROP_FPS) if file else 0.0
        self.fps = self.options.fps or (stated if 0 < stated < 1000 else DEFAULT_FPS)
        paced = file and self.options.realtime
        lossless = file and not self.options.realtime
        self.status = "running"
        start, k = time.monotonic(), 0  # pacing: frame k is due at start + k / fps
        while not self.retired.is_set():
            ok, image = cap.read()
            if self.retired.is_set():
                return
            if not ok or image is None:
                if not file:
                    self.reason, self.status = f"{self.source}: no frame from the source", "failed"
                    return
                if not self.options.loop or k == 0:
                    self.status = "eof"
                    return
                cap.release()  # reopening works for files and image sequences alike
                cap.open(str(self.source), cv2.CAP_IMAGES if self.kind == IMAGES else cv2.CAP_ANY)
                self._t0 += k / self.fps
                start, k = time.monotonic(), 0
                continue
            now = time.monotonic()
            t = self._t0 + k / self.fps if file else now
            self.last_frame_at = now
            self.slot.put(Frame(self.next_n, t, image), lossless, self.retired)
            self.next_n += 1
            k += 1
            if paced:
                delay = start + k / self.fps - time.monotonic()
                if delay < -1.0:  # fell far behind (a paused VM): do not race to catch up
                    start, k = time.monotonic(), 0
                elif delay > 0 and self.retired.wait(delay):
                    return
