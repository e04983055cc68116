"""The live view: drawing a result on a frame, and an OpenCV window to show it in.

Drawing is a pure function of the frame and the result, kept out of the capture loop.
"""

from __future__ import annotations

import os
import sys

import cv2
import numpy as np

from edge_runtime.gallery import UNKNOWN

_GREEN, _ORANGE, _WHITE = (60, 200, 60), (0, 140, 255), (255, 255, 255)  # BGR


class DisplayUnavailable(RuntimeError):
    """No window can be shown here."""


def annotate(bgr: np.ndarray, result, announced: str | None, fps: float) -> np.ndarray:
    """A copy of a BGR frame with the pill's box, the announced name (or "unknown"), the
    best match's distance and the frame rate drawn on it."""
    canvas = draw_box(bgr, result, announced)
    if announced is None:
        text = "no pill"
    elif result.distance is None:
        text = announced
    else:
        text = f"{announced}  d={result.distance:.3f}"
        if result.lookalike is not None and announced == result.label and result.top_k:
            text += f"  {result.top_k[0].label} or {result.lookalike}? turn it over"
    for line, (x, y) in ((text, (8, 24)), (f"{fps:.1f} FPS", (8, canvas.shape[0] - 10))):
        cv2.putText(canvas, line, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3,
                    cv2.LINE_AA)
        cv2.putText(canvas, line, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, _WHITE, 1, cv2.LINE_AA)
    return canvas


def draw_box(bgr: np.ndarray, result, announced: str | None) -> np.ndarray:
    """A copy of a BGR frame with the pill's box drawn: green when a pill is announced, orange
    for "unknown" or none yet. The counter page streams frames drawn so, the answer beside them."""
    canvas = bgr.copy()
    if result.box is not None:
        colour = _ORANGE if announced in (None, UNKNOWN) else _GREEN
        left, top, right, bottom = result.box
        cv2.rectangle(canvas, (left, top), (right - 1, bottom - 1), colour, 2)
    return canvas


class Window:
    """An OpenCV window; `show` returns False once the user pressed q or Esc."""

    def __init__(self, title: str = "PillTrack"):
        if sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        ):
            raise DisplayUnavailable("no display available (DISPLAY is not set); "
                                     "run with --headless for JSON lines instead")
        try:
            cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE)
        except cv2.error:
            raise DisplayUnavailable("no display available (this OpenCV build has no GUI "
                                     "support); run with --headless for JSON lines "
                                     "instead") from None
        self.title = title

    def show(self, bgr: np.ndarray) -> bool:
        cv2.imshow(self.title, bgr)
        return cv2.waitKey(1) & 0xFF not in (ord("q"), 27)

    def close(self) -> None:
        cv2.destroyWindow(self.title)
