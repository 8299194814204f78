"""The camera driver: capture thread -> newest frame -> decode -> debounce -> Scan. A source
that does not open is retried with backoff for ever (DEGRADED); a frame watchdog restarts a
capture that stopped delivering within a budget and then gives up (DOWN)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import cv2
import numpy as np

from drivers.camera.capture import PIPE, Capture, FrameSlot, classify, is_file
from drivers.camera.debounce import Debouncer
from drivers.camera.decode import Pipeline
from drivers.camera.options import CameraOptions
from drivers.scan import DEGRADED, DOWN, OK, STOPPED, LoopDriver, Now

log = logging.getLogger(__name__)

TICK_S = 0.1  # how often the loop looks at stop and the watchdog when no frame comes
HEALTH_EVERY_S = 1.0


class CameraDriver(LoopDriver):
    kind = "camera"

    def __init__(self, name: str, options: CameraOptions, now: Now = time.time) -> None:
        super().__init__(name, now)
        self.options = options
        self.source = str(options.source).strip()
        self.source_kind = classify(options.source)
        self.pipeline = Pipeline(
            options.decoder,
            options.symbologies,
            options.max_width,
            options.roi,
            options.hard_every,
        )
        self.debounce = Debouncer(options.debounce_s)
        self.slot = FrameSlot()
        self._capture: Capture | None = None
        self._restarts: deque[float] = deque()
        self._frames = 0  # frames decoded since start
        self._next_n = 0
        self._fresh = True
        self._last_image: np.ndarray | None = None  # newest decoded frame, for snapshots

    def snapshot(self, max_width: int = 320) -> bytes | None:
        """The newest frame as a small JPEG, for the manager's device-health card (is the
        camera pointed at the counter, in focus, lit?). None before the first frame."""
        image = self._last_image
        if image is None:
            return None
        height, width = image.shape[:2]
        if width > max_width:
            size = (max_width, max(1, round(height * max_width / width)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 70])
        return jpeg.tobytes() if ok else None

    # ------------------------------------------------------------------ the loop

    def run(self, stop: threading.Event) -> None:
        self.state.set(DEGRADED, f"opening {self.source}")
        capture = self._start_capture()
        delay = self.options.reconnect_min_s  # before the next try to open
        outage = False  # the source has not opened since the last warning
        rate_t, rate_n = time.monotonic(), 0
        try:
            while not stop.is_set():
                frame = self.slot.take(TICK_S)
                if frame is not None and not stop.is_set():
                    if self._fresh:  # first frame since (re)opening
                        self._fresh = False
                        delay = self.options.reconnect_min_s
                        if outage:
                            outage = False
                            log.info("camera %s: %s is back", self.name, self.source)
                        self.state.set(OK, f"receiving frames ({self.pipeline.describe()})")
                    self._decode(frame.n, frame.t, frame.image, frame.ready)
                    rate_n += 1
                elapsed = time.monotonic() - rate_t
                if elapsed >= HEALTH_EVERY_S:
                    self._report(capture, rate_n / elapsed)
                    rate_t, rate_n = time.monotonic(), 0
                if frame is not None:
                    continue
                # No frame this tick: has the capture ended, failed or stalled?
                if capture.status == "eof":
                    self.state.set(STOPPED, "stopped: end of file")
                    return
                if self._waiting_on_pipe(capture):
                    continue
                why = self._open_failure(capture)
                if why is not None:
                    # Not there (yet): a camera unplugged, a stream not up, a file not
                    # written. Degraded, never down, so the supervisor leaves the till
                    # alone; try again with backoff for as long as it takes.
                    self.state.count("open_failures")
                    self.state.set(DEGRADED, f"{why}; retrying in {delay:g} s")
                    (log.debug if outage else log.warning)(
                        "camera %s: %s; retrying with backoff", self.name, why
                    )
                    outage = True
                    capture.retire()
                    if stop.wait(delay):
                        return
                    delay = min(delay * 2, self.options.reconnect_max_s)
                    capture = self._start_capture()
                    continue
                reason = self._fault(capture)
                if reason is None:
                    continue
                # It had been delivering frames and stopped: the watchdog's business.
                if not self._may_restart():
                    self.state.set(
                        DOWN,
                        f"{reason}; gave up after {len(self._restarts)} restart(s) "
                        f"in {self.options.restart_window_s:g} s",
                    )
                    log.error("camera %s is down: %s", self.name, reason)
                    return
                log.warning("camera %s: %s; restarting the capture", self.name, reason)
                self.state.count("restarts")
                self.state.set(DEGRADED, f"restarting capture: {reason}")
                capture.retire()
                if capture.status == "failed" and stop.wait(min(1.0, self.options.stall_s)):
                    return
                capture = self._start_capture()
        finally:
            capture.retire()
            capture.join(0.5)  # a read blocked for good stays behind (daemon thread)
            self._sync_counters()

    def _start_capture(self) -> Capture:
        if self._capture is not None:
            self._next_n = max(self._next_n, self._capture.next_n)
        # Again each time: a named pipe made (mkfifo) after the daemon started is a pipe.
        self.source_kind = classify(self.options.source)
        self._capture = Capture(
            self.options.source, self.source_kind, self.options, self.slot, self._next_n
        )
        self._capture.start()
        self._fresh = True
        return self._capture

    def _waiting_on_pipe(self, capture: Capture) -> bool:
        """A named pipe that has never carried a frame: its camera process is not up yet
        (rpicam-vid started after the daemon). Keep the pipe open and wait; closing it
        between tries would give a writer that starts just then a broken pipe."""
        if self.source_kind != PIPE or capture.status != "running" or self._frames:
            return False
        quiet = time.monotonic() - capture.last_frame_at
        if quiet > self.options.stall_s:
            self.state.set(DEGRADED, f"waiting for frames from {self.source}: none since it opened")
        return True

    def _open_failure(self, capture: Capture) -> str | None:
        """Why this opening gave no frame, if it failed or hung before its first one, or
        the source has never given one (a device that opens but does not stream)."""
        if capture.delivered:
            return None
        if capture.status == "failed":
            return capture.reason
        quiet = time.monotonic() - capture.last_frame_at
        if quiet <= self.options.stall_s:
            return None
        if capture.status == "opening":
            return f"cannot open {self.source}: no answer for {quiet:.1f} s"
        if self._frames == 0:
            return f"no frames from {self.source} for {quiet:.1f} s since it opened"
        return None  # it had worked: a stall, the watchdog's business

    def _fault(self, capture: Capture) -> str | None:
        if capture.status == "failed":
            return capture.reason
        quiet = time.monotonic() - capture.last_frame_at
        if quiet > self.options.stall_s:
            doing = "opening" if capture.status == "opening" else "reading"
            return f"no frames from {self.source} for {quiet:.1f} s ({doing})"
        return None

    def _may_restart(self) -> bool:
        now = time.monotonic()
        while self._restarts and self._restarts[0] < now - self.options.restart_window_s:
            self._restarts.popleft()
        if len(self._restarts) >= self.options.restart_budget:
            return False
        self._restarts.append(now)
        return True

    def _decode(self, n: int, t: float, image: np.ndarray, ready: float = 0.0) -> None:
        self._frames += 1
        self._last_image = image
        self.state.count("frames")
        codes = self.pipeline(image)
        for code in codes:
            if self.debounce.admit((code.symbology, code.payload), t):
                self.emit(
                    code.payload,
                    camera=self.source,
                    symbology=code.symbology,
                    frame=n,
                    frame_ready=ready,
                )
        if self._frames % 64 == 0:
            self.debounce.forget_old(t)

    def _sync_counters(self) -> None:
        counters = self.state.get().counters
        for name, value in (
            ("dropped", self.slot.dropped),
            ("hard_passes", self.pipeline.hard_passes),
        ):
            if value > counters.get(name, 0):
                self.state.count(name, value - counters.get(name, 0))

    def _report(self, capture: Capture, fps: float) -> None:
        self._sync_counters()
        recent = capture.delivered and time.monotonic() - capture.last_frame_at < 1.0
        if capture.status == "running" and recent:
            source = f" of {capture.fps:g}" if is_file(self.source_kind) else ""
            self.state.set(OK, f"{fps:.1f}{source} fps decoded ({self.pipeline.describe()})")

    def wake(self) -> None:
        if self._capture is not None:
            self._capture.retire()
