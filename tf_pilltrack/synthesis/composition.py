"""Real pills in camera-like scenes: reference photos of real pill types (a studio photo of each
face, the pill on a plain background) cut out and composited by the synthesis renderer into the
scenes it draws for synthetic pills: surfaces, palms, shadows, tilt, light, blur, sensor noise
and JPEG. The model then learns real pill appearance (colours, shapes, imprints, coatings) seen
the way a counter camera sees it.

Source layout (`data.reference_source`): `<pill type>/<photo>` in a folder or a zip, as
`prepare` reads, with an optional `manifest.csv` whose `file` and `side` (front/back) columns
name each photo's face. Without a side, a type's photos are taken as its faces in name order.

`data.reference_faces` decides what a class is: `together` (a pill type is one class, photos of
either face) or `apart` (each face its own class, `<type>~front`, `<type>~back`).
"""

from __future__ import annotations

import math
import pathlib
from typing import NamedTuple

import cv2
import numpy as np

from edge_runtime.preprocessing import decode_image
from tf_pilltrack.data import dataset, ingestion
from tf_pilltrack.synthesis.face import Face
from tf_pilltrack.synthesis.photo import write_photos

PREFIX = dataset.REFERENCE_PREFIX  # class folders of composited reference pills: ref-<type>
FACE_MODES = ("together", "apart")
_STREAM = 0x5246_524E  # "RFRN": photos draw from default_rng([seed, _STREAM, type, photo])
_MIN_AREA = 0.01  # a cut-out pill covers at least this fraction of its photo ...
_MAX_AREA = 0.95  # ... and at most this


class ReferenceType(NamedTuple):
    name: str  # class folder of its composited photos: PREFIX + type (+ ~face when apart)
    source: str  # the pill type's folder in the reference source
    faces: tuple  # (side, image name, encoded bytes), one per face, front first


def load(source: pathlib.Path, faces: str, max_pixels: int) -> tuple[list[ReferenceType], list[dict]]:
    """The reference types of `source` and the photos skipped (file and reason): unreadable,
    duplicated, or no pill found against a plain background."""
    if faces not in FACE_MODES:
        raise ValueError(f"data.reference_faces must be one of {', '.join(FACE_MODES)}, got {faces!r}")
    images, _groups, skipped = ingestion.list_source(source)
    sides = ingestion.read_sides(source)
    by_type: dict[str, list] = {}
    for image, rgb in ingestion.decode_images(images, max_pixels, skipped):
        if cut_out(rgb) is None:
            skipped.append({"file": image.name, "reason": "no pill found against a plain background"})
            continue
        by_type.setdefault(image.label, []).append(image)
    types = []
    for label in sorted(by_type):
        photos = sorted(by_type[label], key=lambda image: image.name)
        chosen: dict[str, object] = {}
        for position, image in enumerate(photos):
            side = sides.get(image.name) or ("front" if position == 0 else "back")
            chosen.setdefault(side if side in ("front", "back") else "back", image)
        entries = tuple((side, image.name, image.read()) for side, image in sorted(chosen.items(), reverse=True))
        if faces == "together":
            types.append(ReferenceType(PREFIX + label, label, entries))
        else:
            types.extend(ReferenceType(f"{PREFIX}{label}~{entry[0]}", label, (entry,)) for entry in entries)
    return types, skipped


def cut_out(rgb: np.ndarray) -> Face | None:
    """The pill of a reference photo as a flat face the renderer can pose and light (its own
    studio shading kept), or None when no single pill stands out from a plain background.

    The background colour is the median of the photo's border; the pill is the largest region
    that differs from it by more than most of the border does, holes filled."""
    height, width = rgb.shape[:2]
    pixels = rgb.astype(np.float32)
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                             pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    spread = np.abs(border - background).max(axis=1)
    threshold = max(24.0, float(np.percentile(spread, 75)) + 12.0)  # the pill may touch the border
    mask = (np.abs(pixels - background).max(axis=2) > threshold).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, components, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    mask = (components == largest).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    mask = np.zeros_like(mask)
    cv2.drawContours(mask, [contour], -1, 1, thickness=cv2.FILLED)  # holes filled
    area = float(mask.sum()) / (height * width)
    if not _MIN_AREA <= area <= _MAX_AREA:
        return None
    (_, _), (side_a, side_b), _ = cv2.minAreaRect(contour)
    length = float(max(side_a, side_b))
    # A square patch centred on the pill, as synthesis draws its faces.
    left, top, box_w, box_h = cv2.boundingRect(contour)
    side = int(math.ceil(max(box_w, box_h) * 1.08)) + 8
    shift_x = side / 2.0 - (left + box_w / 2.0)
    shift_y = side / 2.0 - (top + box_h / 2.0)
    move = np.float32([[1, 0, shift_x], [0, 1, shift_y]])
    patch = cv2.warpAffine(pixels * (1.0 / 255.0), move, (side, side), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    alpha = cv2.warpAffine(mask.astype(np.float32), move, (side, side), flags=cv2.INTER_LINEAR)
    alpha = cv2.GaussianBlur(cv2.erode(alpha, np.ones((3, 3), np.uint8)), (0, 0), 0.8)
    premultiplied = patch * alpha[:, :, None]
    outline = (contour.astype(np.float32) + np.float32([shift_x, shift_y])).reshape(-1, 1, 2)
    flat = np.zeros((side, side), np.float32)
    return Face(
        premultiplied_albedo=tuple(np.ascontiguousarray(premultiplied[:, :, c]) for c in range(3)),
        alpha=alpha,
        normals=(flat, flat, np.ones((side, side), np.float32)),  # flat: the photo keeps its own light
        outline=outline,
        length=length,
    )


def describe(reference: ReferenceType, index: int, seed: int) -> tuple[dict, dict]:
    """The renderer's description of a reference type (its size in the frame and thickness drawn
    from its own generator, its colour measured) and its faces, keyed as the renderer's cache."""
    rng = np.random.default_rng([seed, _STREAM, index])
    faces = {side: cut_out(decode_image(data, name, 1 << 26)) for side, name, data in reference.faces}
    first = next(iter(faces.values()))
    inside = first.alpha > 0.5
    colour = [np.median(plane[inside] / first.alpha[inside]) * 255.0 for plane in first.premultiplied_albedo]
    short, long_ = _extent(first)
    pill_type = {
        "name": reference.name,
        "source": reference.source,
        "shape": "photo",
        "aspect": round(short / long_, 3),
        "size": round(float(rng.uniform(0.26, 0.37)), 3),
        "rgb": [[int(np.clip(round(value), 0, 255)) for value in colour]],
        "gloss": 0.0,  # the studio photo carries its own highlights
        "shininess": 50,
        "thickness": round(float(rng.uniform(0.25, 0.45)), 3),
    }
    return pill_type, faces


def _extent(face: Face) -> tuple[float, float]:
    (_, _), (side_a, side_b), _ = cv2.minAreaRect(face.outline.reshape(-1, 2))
    return float(min(side_a, side_b)), float(max(side_a, side_b, 1.0))


def render_job(job) -> dict[str, list[int]]:
    """Write the composited photos of one reference type (a worker's job of synthesis.generate):
    photo i draws from default_rng([seed, _STREAM, index, i]); its face is front or back at
    random (the one face it has, when faces are apart)."""
    staging, reference, index, photos, photo_size, seed = job
    pill_type, faces = describe(reference, index, seed)
    length = pill_type["size"] * 1.15 * 2 * photo_size  # the renderer's cache key for this type's faces
    cache = {(which, round(length, 3)): faces.get(which, next(iter(faces.values())))
             for which in ("front", "back")}
    return write_photos(pathlib.Path(staging), pill_type, photos, photo_size, cache,
                                  lambda image: np.random.default_rng([seed, _STREAM, index, image]))
