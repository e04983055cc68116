"""Real pill crops placed on a counting tray, as a counter camera sees them (issue 36).

The shipped demo clip (`scripts/demo_clip.py`) and the `enroll` stage's confidence tiers
(`tf_pilltrack/scoring/tiers.py`) both show the pushin_pill phone-photo crops this way: a crop scaled to
PILL_SIDE pixels, turned, and pasted on a plain grey WIDTH x HEIGHT tray with a little sensor
noise. One definition, so the tiers are measured on the frames the demo clip shows.

Needs numpy and OpenCV only (the edge client's own dependencies): the demo clip script runs in
the edge environments.
"""

from __future__ import annotations

import csv
import io
import math
import os
import zipfile

import cv2
import numpy as np

WIDTH, HEIGHT = 640, 480
PILL_SIDE = 150  # the pill crop's longer side in the frame, pixels (a pill under a counter camera)
TRAY = (178, 182, 186)  # RGB of the plain tray
MANIFEST = "manifest.csv"


def read_set(path: str | os.PathLike) -> tuple[zipfile.ZipFile, list[dict]]:
    """A real photo set as shipped (a .zip holding <folder>/manifest.csv, one row a crop: crop,
    class_folder, source_photo, ...): the open archive and the manifest's rows, each with its
    crop's member name in the zip under "member"."""
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a .zip of crops with a {MANIFEST} (the shipped real photo set's form)")
    archive = zipfile.ZipFile(path)
    manifests = sorted(name for name in archive.namelist()
                       if name == MANIFEST or (name.endswith("/" + MANIFEST) and name.count("/") == 1))
    if len(manifests) != 1:
        raise ValueError(f"{path}: expected one {MANIFEST} at the top or in one top folder, found {len(manifests)}")
    folder = manifests[0][:-len(MANIFEST)]
    with archive.open(manifests[0]) as handle:
        rows = list(csv.DictReader(io.TextIOWrapper(handle, encoding="utf-8")))
    for row in rows:
        row["member"] = folder + row["crop"]
    return archive, rows


def crop_rgb(archive: zipfile.ZipFile, row: dict) -> np.ndarray:
    data = np.frombuffer(archive.read(row["member"]), np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{row['crop']}: not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def tray(generator: np.random.Generator) -> np.ndarray:
    """A plain tray with a little sensor noise, as a camera sees one."""
    frame = np.empty((HEIGHT, WIDTH, 3), np.float32)
    frame[:] = TRAY
    frame += generator.normal(0.0, 2.0, frame.shape)
    return np.clip(frame, 0, 255).astype(np.uint8)


def place(frame: np.ndarray, pill: np.ndarray, centre: tuple[float, float], angle: float,
          side: int = PILL_SIDE) -> np.ndarray:
    """The pill crop scaled to `side` (its longer side, pixels), turned by `angle` degrees about its
    centre and pasted at `centre` (its corners outside the turned crop stay tray)."""
    scale = side / max(pill.shape[:2])
    height, width = max(1, round(pill.shape[0] * scale)), max(1, round(pill.shape[1] * scale))
    pill = cv2.resize(pill, (width, height), interpolation=cv2.INTER_AREA)
    square = int(math.ceil(math.hypot(width, height))) + 2
    canvas = np.zeros((square, square, 3), np.uint8)
    mask = np.zeros((square, square), np.uint8)
    top, left = (square - height) // 2, (square - width) // 2
    canvas[top:top + height, left:left + width] = pill
    mask[top:top + height, left:left + width] = 255
    turn = cv2.getRotationMatrix2D((square / 2, square / 2), angle, 1.0)
    canvas = cv2.warpAffine(canvas, turn, (square, square), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(mask, turn, (square, square), flags=cv2.INTER_LINEAR)
    x0, y0 = int(round(centre[0] - square / 2)), int(round(centre[1] - square / 2))
    region = frame[y0:y0 + square, x0:x0 + square]
    alpha = (mask[:region.shape[0], :region.shape[1], None] / 255.0)
    region[:] = (alpha * canvas[:region.shape[0], :region.shape[1]] + (1 - alpha) * region).astype(np.uint8)
    return frame


def on_tray(pill: np.ndarray, generator: np.random.Generator) -> np.ndarray:
    """A frame of `pill` on a fresh tray, somewhere near the middle and turned at random (a pill
    put down under the camera): the demo clip's enrolment photos and the tiers' photos."""
    centre = (WIDTH / 2 + generator.uniform(-80, 80), HEIGHT / 2 + generator.uniform(-60, 60))
    return place(tray(generator), pill, centre, generator.uniform(-45, 45))
