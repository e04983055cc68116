"""Frame sources: a camera, a video file, still images; each yields RGB Frames.

A camera is anything with `read() -> (ok, bgr_frame)` and `release()` (cv2.VideoCapture's
protocol); `open_camera` makes one (Picamera2 on a Raspberry Pi with a camera module,
otherwise OpenCV), and `camera_frames` takes the opener as a parameter so tests can hand it a
fake camera. Failed reads are retried with exponential backoff; too many in a row raise
CaptureError. A video file that cannot be read is bad input: VideoError. OpenCV's native
warnings are kept off stderr (`quiet`); the errors here say what failed, in one line.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from typing import Callable, Iterable, Iterator, NamedTuple

import cv2
import numpy as np

from edge_runtime import limits, storage
from edge_runtime.preprocessing import ImageError, read_image
from edge_runtime.quiet import native_stderr_silenced, silence_opencv

silence_opencv()


class CaptureError(RuntimeError):
    """A camera that cannot deliver frames; the message says which and why."""


class VideoError(ValueError):
    """A video file that cannot be used (not a regular file, not a video OpenCV can decode):
    bad input, where CaptureError is a device failing while it runs."""


class Frame(NamedTuple):
    rgb: np.ndarray  # (H, W, 3) uint8
    source: str  # image path, video path or "camera:<index>"
    index: int  # position in its source, from 0


class _OpenCVCamera:
    def __init__(self, index: int):
        with native_stderr_silenced():
            self._capture = cv2.VideoCapture(index)
            opened = self._capture.isOpened()
            if not opened:
                self._capture.release()
        if not opened:
            raise CaptureError(f"camera {index}: cannot be opened (is it connected, and not "
                               "in use by another program?)")

    def read(self):
        with native_stderr_silenced():
            return self._capture.read()

    def release(self):
        with native_stderr_silenced():
            self._capture.release()


class _PiCamera:
    """A Raspberry Pi camera module through Picamera2."""

    def __init__(self, index: int):
        from picamera2 import Picamera2

        self._camera = Picamera2(index)
        # libcamera's "RGB888" is laid out B, G, R in memory: the BGR order OpenCV uses.
        self._camera.configure(self._camera.create_preview_configuration(
            main={"format": "RGB888", "size": (640, 480)}))
        self._camera.start()

    def read(self):
        try:
            return True, self._camera.capture_array()
        except Exception:  # Picamera2 raises many types; the retry loop reports the failure
            return False, None

    def release(self):
        self._camera.stop()
        self._camera.close()


def open_camera(index: int):
    """Open camera `index`: a Pi camera module via Picamera2 where one is attached and the
    library is installed, otherwise OpenCV's device /dev/video<index>."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= limits.MAX_CAMERA_INDEX:
        raise ValueError(f"camera index must be within [0, {limits.MAX_CAMERA_INDEX}], got {limits.shown(index)}")
    if importlib.util.find_spec("picamera2") is not None:
        from picamera2 import Picamera2

        if index < len(Picamera2.global_camera_info()):
            return _PiCamera(index)
    return _OpenCVCamera(index)


def to_rgb(frame: np.ndarray) -> np.ndarray:
    """A camera's BGR, BGRA or grayscale frame as (H, W, 3) uint8 RGB."""
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


# A camera's read retries (camera_frames): the first wait, doubling up to the longest, and how many
# failed reads in a row end in CaptureError. The counter page reopens a failed camera after the longest.
BACKOFF_S = 0.1
MAX_BACKOFF_S = 2.0
MAX_FAILURES = 10


def camera_frames(index: int, opener: Callable = open_camera, max_failures: int = MAX_FAILURES,
                  backoff_s: float = BACKOFF_S, max_backoff_s: float = MAX_BACKOFF_S,
                  sleep: Callable[[float], None] = time.sleep) -> Iterator[Frame]:
    """Frames from camera `index` until the consumer stops.

    A failed read waits `backoff_s`, doubling each consecutive failure up to `max_backoff_s`,
    with one line on stderr; `max_failures` failures in a row raise CaptureError."""
    if max_failures < 1:
        raise ValueError(f"max_failures must be at least 1, got {max_failures}")
    source = f"camera:{index}"
    camera = opener(index)
    try:
        failures, count = 0, 0
        while True:
            ok, frame = camera.read()
            if ok and frame is not None and frame.size:
                failures = 0
                yield Frame(to_rgb(frame), source, count)
                count += 1
                continue
            failures += 1
            if failures >= max_failures:
                raise CaptureError(f"camera {index}: {failures} reads in a row failed; check "
                                   "its cable and that no other program is using it")
            wait = min(max_backoff_s, backoff_s * 2 ** (failures - 1))
            print(f"camera {index}: read failed ({failures}/{max_failures}), "
                  f"retrying in {wait:.1f} s", file=sys.stderr)
            sleep(wait)
    finally:
        camera.release()


def video_frames(path: str | os.PathLike, max_pixels: int = limits.MAX_IMAGE_PIXELS) -> Iterator[Frame]:
    """Frames of a video file, to its end. A path that is not a regular file (a FIFO, a device)
    is refused before OpenCV opens it, and a file it cannot open or decode a frame of raises
    VideoError.

    Frames are held to `max_pixels` (width x height), as still images are (the bundle's
    max_image_pixels): a video whose container declares larger frames is refused before a frame
    is decoded, and any decoded frame over the limit (a container that understates its size, a
    stream whose frames grow) raises VideoError before it is used."""
    source = os.fspath(path)
    try:
        problem = storage.not_regular(os.stat(source).st_mode)
    except OSError as error:
        raise VideoError(f"{source}: cannot be read ({error.strerror or error})") from None
    if problem:
        raise VideoError(f"{source}: {problem}")
    with native_stderr_silenced():
        capture = cv2.VideoCapture(source)
    try:
        with native_stderr_silenced():
            opened = capture.isOpened()
            declared = (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) if opened else None
        if not opened:
            raise VideoError(f"{source}: not a video this client can decode (cannot be opened)")
        problem = _over_pixel_limit(*declared, max_pixels)
        if problem:
            raise VideoError(f"{source}: {problem} (its frames' size, as the video declares it)")
        count = 0
        while True:
            with native_stderr_silenced():
                ok, frame = capture.read()
            if not ok or frame is None or not frame.size:
                break
            problem = _over_pixel_limit(frame.shape[1], frame.shape[0], max_pixels)
            if problem:
                raise VideoError(f"{source}: frame {count}: {problem}")
            yield Frame(to_rgb(frame), source, count)
            count += 1
        if count == 0:
            raise VideoError(f"{source}: not a video this client can decode (no frame could be decoded)")
    finally:
        with native_stderr_silenced():
            capture.release()


def _over_pixel_limit(width: float, height: float, max_pixels: int) -> str | None:
    """"WxH pixels exceeds the limit of N pixels" (preprocessing.decode_image's words), or None. A
    size that is not a positive finite number (a container that declares none: 0) is not judged."""
    if not (np.isfinite(width) and np.isfinite(height) and width > 0 and height > 0):
        return None
    if width * height <= max_pixels:
        return None
    return f"{int(width)}x{int(height)} pixels exceeds the limit of {max_pixels} pixels"


def image_frames(paths: Iterable[str | os.PathLike], max_pixels: int,
                 on_error: Callable[[ImageError], None] | None = None) -> Iterator[Frame]:
    """One frame per image file, in order. An unreadable file raises ImageError, or, given
    `on_error`, is passed to it and skipped."""
    for count, path in enumerate(paths):
        try:
            rgb = read_image(path, max_pixels)
        except ImageError as error:
            if on_error is None:
                raise
            on_error(error)
            continue
        yield Frame(rgb, os.fspath(path), count)
