"""Native libraries kept off stderr, so that it carries only the product's own lines.

LiteRT prints a delegate banner ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.") when
an interpreter is made, and OpenCV's video and camera back ends (FFmpeg, V4L2, GStreamer) print
warnings on a file they cannot read or a camera they cannot open. They write to file descriptor
2 directly, past Python's sys.stderr, so `native_stderr_silenced` points that descriptor at
/dev/null around the native call; their failures still reach the product as return values or
exceptions, which it reports in one line of its own.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator


def silence_opencv() -> None:
    """OpenCV's own log (the "[ WARN:0@0.01] global cap_v4l.cpp ..." lines) off, unless the
    user set OPENCV_LOG_LEVEL. OpenCV reads it when it first logs, so this works after import."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 points at /dev/null for the block (sys.stderr is flushed first, and
    Python's own writes to it are not lost: keep the block to the native call)."""
    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 at all: nothing to silence
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 2)
        finally:
            os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
