"""The camera driver end to end: generated videos, image sequences and a named pipe of MJPEG
read through cv2.VideoCapture, decoded by pyzbar / zxing-cpp, and the Scans that come out."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coupons.clock import FixedClock
from coupons.rules import Basket
from drivers import registry
from drivers.camera.driver import CameraDriver
from drivers.options import OptionError
from drivers.scan import DEGRADED, DOWN, OK, STOPPED, Health, Scan
from terminal.daemon import config as config_mod
from terminal.daemon.runner import Daemon
from tests import test_daemon as daemon_tests
from tests.camera_media import (
    code128,
    coupon_text,
    ean13,
    jpeg_bytes,
    put,
    qr,
    scene,
    write_sequence,
    write_video,
)
from tests.conftest import T0, World

COUPON = coupon_text(1)
OTHER = coupon_text(2)
URL = "https://shop.example/promo?c=SPRING26&store=0042"
BG = scene(0)


def driver(source: str | Path, **options: Any) -> CameraDriver:
    """Built the way the daemon builds it: options through the registry, then create()."""
    opts = registry.options_for("camera", {"source": str(source), **options})
    made = registry.create("front-camera", "camera", opts, time.time)
    assert isinstance(made, CameraDriver), made.health()
    return made


def run_to_end(
    source: str | Path, timeout: float = 10.0, **options: Any
) -> tuple[list[Scan], Health]:
    """Run the driver on a file until it ends (or `timeout`); the scans and final health."""
    options.setdefault("realtime", False)
    d = driver(source, **options)
    scans: list[Scan] = []
    d.start(scans.append)
    deadline = time.monotonic() + timeout
    while d.alive and time.monotonic() < deadline:
        time.sleep(0.02)
    d.stop(1.0)
    return scans, d.health()


def texts(scans: list[Scan]) -> list[str]:
    return [s.text() for s in scans]


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# --------------------------------------------------------------------------- what comes out


@pytest.fixture(scope="module")
def till_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 fps: nothing; a coupon held 1 s with a 0.3 s hand-over-code gap; gone 1.5 s; the
    same coupon again; a damaged code; a coupon and a URL side by side; an EAN-13."""
    coupon = put(BG, qr(COUPON, 5), 320, 240)
    damaged = coupon.copy()
    damaged[150:330, 230:330] = 40  # a thumb over two finder patterns and the data
    two = put(put(BG, qr(COUPON, 3), 170, 240), qr(URL, 4), 480, 240)
    product = put(BG, ean13("590123412345"), 320, 240)
    frames = (
        [BG] * 10  # 0-9
        + [coupon] * 15  # 10-24 held ...
        + [BG] * 9  # 25-33 ... a hand passes (0.3 s) ...
        + [coupon] * 15  # 34-48 ... still the same showing: counted once
        + [BG] * 45  # 49-93 gone for 1.5 s
        + [coupon] * 10  # 94-103 shown again: counted again
        + [BG] * 40  # 104-143
        + [damaged] * 15  # 144-158 nothing
        + [BG] * 5  # 159-163
        + [two] * 10  # 164-173 both
        + [BG] * 5  # 174-178
        + [product] * 10  # 179-188
        + [BG] * 5  # 189-193
    )
    return write_video(tmp_path_factory.mktemp("video") / "till.avi", frames)


@pytest.mark.parametrize("decoder", ["cascade", "zxing", "pyzbar"])
def test_a_till_video_gives_one_scan_per_showing(till_video: Path, decoder: str) -> None:
    scans, health = run_to_end(till_video, decoder=decoder)
    assert texts(scans) == [COUPON, COUPON, COUPON, URL, "5901234123457"]
    first, again, pair_a, pair_b, product = scans
    assert 10 <= first.meta["frame"] <= 12
    assert 94 <= again.meta["frame"] <= 96
    assert pair_a.meta["frame"] == pair_b.meta["frame"] and 164 <= pair_a.meta["frame"] <= 166
    assert product.meta["symbology"] == "EAN13"
    assert {s.meta["symbology"] for s in scans[:4]} == {"QRCODE"}
    assert all(s.meta["camera"] == str(till_video) for s in scans)
    assert all(s.kind == "camera" and s.source == "front-camera" for s in scans)
    assert (health.state, health.detail) == (STOPPED, "stopped: end of file")
    assert health.counters["frames"] == 194  # not paced: every frame decoded


def test_no_code_and_a_damaged_code_give_nothing(tmp_path: Path) -> None:
    code = qr(COUPON, 5)
    torn = put(BG, code, 320, 240)
    torn[140:340, 300:340] = 255  # a torn-off strip through the middle, quiet-zone white
    smudged = put(BG, code, 320, 240)
    smudged[200:300, 200:440] = 90
    frames = [scene(s) for s in range(1, 20)] + [torn] * 10 + [smudged] * 10
    scans, health = run_to_end(write_video(tmp_path / "nothing.avi", frames))
    assert scans == []
    assert health.state == STOPPED


def test_code128_on_a_printed_coupon(tmp_path: Path) -> None:
    frames = [BG] * 3 + [put(BG, code128("CPN-2026-0042", 2), 320, 240)] * 5
    for decoder in ("cascade", "pyzbar"):
        scans, _ = run_to_end(write_video(tmp_path / "c128.avi", frames), decoder=decoder)
        assert [(s.text(), s.meta["symbology"]) for s in scans] == [("CPN-2026-0042", "CODE128")]


def test_an_inverted_code_is_read_on_its_first_frame(tmp_path: Path) -> None:
    """Light on dark, as phones in dark mode show codes: read on the first frame it is
    shown (the quick pass tries the inverted image), once per showing, through a real
    video file and cv2.VideoCapture."""
    inverted = put(BG, 255 - qr(COUPON, 5), 320, 240)
    frames = [BG] * 5 + [inverted] * 12
    scans, _ = run_to_end(write_video(tmp_path / "dark.avi", frames), hard_every=8)
    assert texts(scans) == [COUPON]
    assert scans[0].meta["frame"] == 5


def test_roi_limits_decoding_to_part_of_the_frame(tmp_path: Path) -> None:
    two = put(put(BG, qr(COUPON, 3), 170, 240), qr(OTHER, 3), 470, 240)
    video = write_video(tmp_path / "two.avi", [two] * 4)
    left, _ = run_to_end(video, roi=[0.0, 0.0, 0.5, 1.0])
    both, _ = run_to_end(video)
    assert texts(left) == [COUPON]
    assert sorted(texts(both)) == sorted([COUPON, OTHER])


def test_an_image_sequence_loops_and_each_pass_counts_again(tmp_path: Path) -> None:
    coupon = put(BG, qr(URL, 4), 320, 240)
    pattern = write_sequence(tmp_path / "frames", [coupon] * 3 + [BG] * 40)  # 1.3 s gone
    d = driver(pattern, loop=True, realtime=False)
    scans: list[Scan] = []
    d.start(scans.append)
    assert wait_for(lambda: len(scans) >= 3, 10.0)
    t = time.monotonic()
    d.stop(2.0)
    assert time.monotonic() - t < 1.0
    assert set(texts(scans)) == {URL}
    frames = [s.meta["frame"] for s in scans[:3]]
    assert frames == [0, 43, 86]  # the n-th pass starts at frame 43 * n
    assert d.health().state == STOPPED


def test_a_file_plays_in_real_time_and_reports_fps(tmp_path: Path) -> None:
    frames = [put(BG, qr(COUPON, 4), 320, 240)] * 2 + [BG] * 43
    video = write_video(tmp_path / "rt.avi", frames, fps=30)
    d = driver(video)  # realtime is the default for files
    scans: list[Scan] = []
    t0 = time.monotonic()
    d.start(scans.append)
    assert wait_for(lambda: d.health().state == OK and "fps" in d.health().detail, 1.5)
    health = d.health()
    assert "cascade" in health.detail and "of 30 fps" in health.detail
    assert wait_for(lambda: not d.alive, 3.0)
    took = time.monotonic() - t0
    assert 1.3 < took < 2.5  # 45 frames at 30 fps
    assert texts(scans) == [COUPON]
    assert d.health().detail == "stopped: end of file"


def test_stop_is_prompt_while_playing(tmp_path: Path) -> None:
    video = write_video(tmp_path / "long.avi", [BG] * 10, fps=5)
    d = driver(video, loop=True)
    d.start(lambda scan: None)
    time.sleep(0.3)
    t = time.monotonic()
    d.stop(2.0)
    assert time.monotonic() - t < 1.0
    assert not d.alive and d.health().state == STOPPED


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("source", "detail"),
    [
        ("/dev/video37", "cannot open /dev/video37"),
        ("37", "cannot open 37"),
        ("/nonexistent/coupon.avi", "cannot open /nonexistent/coupon.avi: no such file"),
        ("/nonexistent/%04d.png", "cannot open /nonexistent/%04d.png: no such directory"),
        ("libcamerasrc ! videoconvert ! appsink", "built without GStreamer"),
    ],
)
def test_a_source_that_cannot_open_is_degraded_says_why_and_keeps_trying(
    source: str, detail: str
) -> None:
    """Not there is a health warning, never DOWN: the daemon's supervisor must not restart
    the input (and in the end the whole till) for a camera that is unplugged."""
    errors: list[threading.ExceptHookArgs] = []
    hook, threading.excepthook = threading.excepthook, errors.append
    d = driver(source, reconnect_min_s=0.05, reconnect_max_s=0.2)
    seen: list[str] = []
    try:
        d.start(lambda scan: None)
        assert wait_for(
            lambda: (
                seen.append(d.health().state) or d.health().counters.get("open_failures", 0) >= 3
            ),
            10.0,
        ), d.health()
        health = d.health()
        assert health.state == DEGRADED and d.alive
        assert detail in health.detail and "retrying in" in health.detail
        assert DOWN not in seen
    finally:
        d.stop(1.0)
        threading.excepthook = hook
    assert d.health().state == STOPPED and errors == []


def test_a_file_that_is_not_a_video_is_degraded(tmp_path: Path) -> None:
    junk = tmp_path / "coupon.avi"
    junk.write_bytes(b"not a video" * 100)
    d = driver(junk, reconnect_min_s=0.05)
    d.start(lambda scan: None)
    try:
        assert wait_for(lambda: d.health().state == DEGRADED and "retrying" in d.health().detail, 5)
        assert d.health().detail.startswith(f"cannot open {junk};")
    finally:
        d.stop(1.0)


@pytest.mark.parametrize("kind", ["video", "images"])
def test_a_source_that_appears_later_is_read_without_a_restart(tmp_path: Path, kind: str) -> None:
    """The camera plugged in (here: the file written) after the driver started: it opens by
    itself on a retry and the scans flow."""
    frames = [BG] * 3 + [put(BG, qr(COUPON, 4), 320, 240)] * 5
    if kind == "video":
        source = tmp_path / "later.avi"
        made = write_video(tmp_path / "staging.avi", frames)
    else:
        source = tmp_path / "later" / "%04d.png"
        made = Path(write_sequence(tmp_path / "staging", frames)).parent
    d = driver(source, realtime=False, reconnect_min_s=0.05, reconnect_max_s=0.2)
    scans: list[Scan] = []
    d.start(scans.append)
    try:
        assert wait_for(lambda: d.health().counters.get("open_failures", 0) >= 2, 5.0)
        assert d.health().state == DEGRADED and "cannot open" in d.health().detail
        os.replace(made, source if kind == "video" else source.parent)
        assert wait_for(lambda: not d.alive, 10.0), d.health()
    finally:
        d.stop(1.0)
    assert texts(scans) == [COUPON]
    assert d.health().detail == "stopped: end of file"
    assert d.health().counters["frames"] == len(frames)


def test_opencv_warnings_stay_out_of_the_log() -> None:
    """OpenCV's own "[ WARN:0@0.02] global cap.cpp..." lines would break the structured log;
    the failure is in the input's health instead."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "terminal.cli",
            "scan-test",
            "--camera",
            "/dev/video99",
            "--seconds",
            "1",
            "--verbose",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
        env={k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"},
    )
    assert "health: degraded cannot open /dev/video99; retrying in" in out.stderr
    assert "WARN" not in out.stderr and "VIDEOIO" not in out.stderr, out.stderr
    assert "0 scan(s)" in out.stdout


def test_without_pyzbar_the_zxing_decoders_still_read(
    till_video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyzbar (or Debian's libzbar0) missing takes only the pyzbar decoder with it."""
    monkeypatch.setitem(sys.modules, "pyzbar", None)
    monkeypatch.setitem(sys.modules, "pyzbar.pyzbar", None)
    for decoder in ("zxing", "cascade"):
        scans, _ = run_to_end(till_video, decoder=decoder)
        assert texts(scans) == [COUPON, COUPON, COUPON, URL, "5901234123457"]
    opts = registry.options_for("camera", {"source": str(till_video), "decoder": "pyzbar"})
    failed = registry.create("front-camera", "camera", opts, time.time)
    assert isinstance(failed, registry.FailedDriver)
    detail = failed.health().detail
    assert "decoder 'pyzbar'" in detail and "libzbar0" in detail and 'decoder = "cascade"' in detail


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "camera.mjpeg"
    os.mkfifo(path)
    yield path


class PipeCamera:
    """What `rpicam-vid --codec mjpeg -o FIFO` does: JPEG after JPEG into a named pipe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1
        self.opened = threading.Event()
        threading.Thread(target=self._open, daemon=True).start()

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY)  # blocks until the driver opens it
        self.opened.set()

    def send(self, frames: list[np.ndarray], fps: float = 30.0) -> None:
        assert self.opened.wait(5.0), "the driver never opened the pipe"
        for f in frames:
            os.write(self.fd, jpeg_bytes(f))
            time.sleep(1 / fps)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)


def test_a_stalled_camera_is_restarted_within_budget_then_down(fifo: Path) -> None:
    d = driver(fifo, stall_s=0.4, restart_budget=2, restart_window_s=30)
    scans: list[Scan] = []
    seen: list[str] = []
    d.start(scans.append)
    camera = PipeCamera(fifo)
    try:
        camera.send([BG] * 3 + [put(BG, qr(COUPON, 4), 320, 240)] * 8)
        assert wait_for(lambda: d.health().state == OK, 2.0)
        assert texts(scans) == [COUPON]
        # The camera stops sending but keeps the pipe open: reads block, no frames.
        assert wait_for(lambda: seen.append(d.health().state) or d.health().state == DOWN, 5.0), (
            d.health()
        )
        health = d.health()
        assert DEGRADED in seen  # while restarting
        assert health.counters["restarts"] == 2
        assert "no frames from" in health.detail and "gave up after 2 restart(s)" in health.detail
        assert wait_for(lambda: not d.alive, 1.0)  # run() returned: the supervisor's turn
    finally:
        camera.close()
        d.stop(1.0)


def test_a_camera_that_comes_back_after_a_restart_is_ok_again(fifo: Path) -> None:
    d = driver(fifo, stall_s=0.3, restart_budget=3, debounce_s=0.2)
    scans: list[Scan] = []
    d.start(scans.append)
    camera = PipeCamera(fifo)
    coupon = put(BG, qr(COUPON, 4), 320, 240)
    try:
        camera.send([coupon] * 5)
        assert wait_for(lambda: d.health().counters.get("restarts") == 1, 3.0)
        assert d.health().state == DEGRADED
        assert "restarting capture: no frames from" in d.health().detail
        camera.send([BG] * 3 + [coupon] * 5)
        assert wait_for(lambda: len(scans) == 2, 2.0)
        assert texts(scans) == [COUPON, COUPON]  # out of view 0.3 s+ while stalled
        assert d.health().state == OK
        assert d.health().counters["restarts"] == 1 and d.alive
    finally:
        d.stop(1.0)
        camera.close()


def test_a_pipe_whose_camera_is_not_up_yet_waits_for_it(fifo: Path) -> None:
    """rpicam-vid started after the daemon: silence from a pipe that never carried a frame
    is waiting for it (degraded, pipe kept open), not a stall that spends the budget."""
    d = driver(fifo, stall_s=0.3, restart_budget=1)
    scans: list[Scan] = []
    d.start(scans.append)
    camera = None
    try:
        assert wait_for(lambda: "waiting for frames" in d.health().detail, 5.0), d.health()
        health = d.health()
        assert health.state == DEGRADED and "none since it opened" in health.detail
        assert "restarts" not in health.counters and d.alive
        camera = PipeCamera(fifo)
        camera.send([BG] * 3 + [put(BG, qr(COUPON, 4), 320, 240)] * 8)
        assert wait_for(lambda: texts(scans) == [COUPON], 3.0), d.health()
        assert d.health().state == OK and "restarts" not in d.health().counters
    finally:
        d.stop(1.0)
        if camera is not None:
            camera.close()


def test_a_pipe_made_after_the_driver_started_is_read_as_a_pipe(tmp_path: Path) -> None:
    """The camera's unit runs mkfifo after the daemon started: not there yet, then a pipe."""
    path = tmp_path / "camera.mjpeg"
    d = driver(path, reconnect_min_s=0.05, reconnect_max_s=0.2)
    scans: list[Scan] = []
    d.start(scans.append)
    camera = None
    try:
        assert wait_for(lambda: d.health().counters.get("open_failures", 0) >= 2, 5.0)
        assert d.health().state == DEGRADED and "no such file" in d.health().detail
        os.mkfifo(path)
        camera = PipeCamera(path)
        camera.send([BG] * 3 + [put(BG, qr(COUPON, 4), 320, 240)] * 8)
        assert wait_for(lambda: texts(scans) == [COUPON], 3.0), d.health()
        assert d.health().state == OK
    finally:
        d.stop(1.0)
        if camera is not None:
            camera.close()


def test_stop_is_prompt_while_the_camera_is_stalled(fifo: Path) -> None:
    d = driver(fifo, stall_s=5.0)
    d.start(lambda scan: None)
    camera = PipeCamera(fifo)
    try:
        camera.send([BG] * 4)
        time.sleep(0.3)
        t = time.monotonic()
        d.stop(2.0)
        assert time.monotonic() - t < 1.0
        assert d.health().state == STOPPED
    finally:
        camera.close()


def test_scan_test_command_shows_what_the_camera_reads(till_video: Path) -> None:
    """`redeem scan-test --camera FILE`, as an installer runs it."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "terminal.cli",
            "scan-test",
            "--camera",
            str(till_video),
            "--option",
            "realtime=false",
            "--option",
            "decoder=pyzbar",
            "--count",
            "5",
            "--seconds",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert f"camera: '{URL}' camera={till_video} symbology=QRCODE" in lines[3]
    assert "'5901234123457'" in lines[4] and "symbology=EAN13" in lines[4]
    assert lines[-1].startswith("5 scan(s); input health:")


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"source": "0", "decoder": "zbar"}, "decoder"),
        ({"source": "0", "roi": [0.5, 0, 0.6, 1]}, "roi"),
        ({"source": "0", "roi": [0, 0, 1]}, "roi"),
        ({"source": "0", "symbologies": ["QRCODE", "AZTEC"]}, "symbologies"),
        ({"source": "0", "stall_s": 0}, "stall_s"),
        ({"source": "0", "max_width": 100}, "max_width"),
        ({"source": "0", "fps_limit": 10}, "fps_limit"),
        ({"source": "0", "loop": "yes"}, "loop"),
        ({}, "source"),
    ],
)
def test_bad_options_name_the_key(doc: dict[str, Any], key: str) -> None:
    with pytest.raises(OptionError) as caught:
        registry.options_for("camera", doc)
    assert caught.value.key == key


def test_options_defaults() -> None:
    opts = registry.options_for("camera", {"name": "cam", "kind": "camera", "source": 0})
    assert (opts.decoder, opts.max_width, opts.debounce_s, opts.realtime) == (
        "cascade",
        640,
        1.0,
        True,
    )


# --------------------------------------------------------------------------- in the daemon


def test_the_daemon_serves_on_with_no_camera_plugged_in(world: World, tmp_path: Path) -> None:
    """A camera at /dev/video99 that is not there: the daemon keeps running, says the camera
    is degraded, does not restart it or exit, and the other input still redeems."""
    (token, *_) = daemon_tests.prepare(world)
    body = daemon_tests.fifo_input(tmp_path / "f") + (
        '\n[[input]]\nname = "cam"\nkind = "camera"\nsource = "/dev/video99"\n'
        "reconnect_min_s = 0.05\nreconnect_max_s = 0.2\n"
        "\n[watchdog]\nrestart_budget = 1\n\n[kiosk]\nenabled = false\n"
    )
    cfg = config_mod.load(daemon_tests.write_config(tmp_path / "d.toml", world.data, body))
    daemon = Daemon(cfg, FixedClock(T0))
    daemon.start()
    try:
        pipe, cam = daemon.inputs
        assert isinstance(cam, CameraDriver)
        for _ in range(5):  # the supervisor's rounds while the camera keeps failing to open
            assert wait_for(lambda: cam.health().counters.get("open_failures", 0) >= 2, 5.0)
            daemon.supervise_once()
        status = daemon.status()
        assert status["inputs"]["cam"]["state"] == "degraded"
        assert "cannot open /dev/video99" in status["inputs"]["cam"]["detail"]
        assert status["healthy"] and daemon.healthy()
        assert daemon.inputs[1] is cam and cam.alive  # not restarted
        assert daemon.exit_code == 0
        daemon.set_basket(Basket.from_dict({"currency": "CNY", "total_minor": 12800}))
        pipe.feed(token)
        daemon_tests.wait_for(lambda: daemon.published_count == 1)
        decision = daemon.recent[0].decision
        assert decision is not None and decision.accepted
    finally:
        daemon.stop()
