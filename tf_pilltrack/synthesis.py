"""Synthetic pill photos: the project's default, embedded data set.

`generate` writes `classes` pill types with `images_per_class` photos each:

    out_dir/pill_0000/pill_0000_000.jpg ...
    out_dir/pill_types.json     what each pill type is (shape, colours, imprint, family ...)
    out_dir/boxes.json          where the pill is in each photo: [left, top, right, bottom]

Pill types differ the way real pills do: shape (round, oval, oblong, two-tone capsule, rounded
polygons), aspect, size, colour and shade, coating gloss, a debossed or printed imprint (text or a
simple logo) on one or both faces and score lines. Types come in *families* that share the whole
body (shape, aspect, size, colours, gloss, font) and differ only in their imprints and score
lines, like the strengths of one medicine: the hard negatives a pill identifier must tell apart.

Each photo is a different shot of its pill, as a phone or Raspberry Pi camera would take it:
either face up, rotated, tilted in perspective, scaled, anywhere in the frame (always wholly
inside it), on a tray, palm, paper, cloth or wood, with a lighting gradient, colour cast, soft
shadow, defocus or motion blur, sensor noise and JPEG compression of random quality. Photos are
rendered at twice their size and reduced with area interpolation.

Output is byte-identical for the same arguments: every photo draws from its own generator,
`numpy.random.default_rng([seed, class_index, image_index])`, and every family from
`default_rng([seed, _FAMILY_STREAM, family_index])`, so classes render independently, in any
order and with any number of worker processes. Only numpy, OpenCV and Pillow are used.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import pathlib
import shutil
import tempfile
import time
from typing import Callable, NamedTuple

import cv2
import numpy as np

TYPES_FILE = "pill_types.json"
BOXES_FILE = "boxes.json"
FORMAT_VERSION = 1

MAX_CLASSES = 10_000  # class names carry four digits
MAX_IMAGES_PER_CLASS = 1_000  # image names carry three digits
MIN_PHOTO_SIZE = 32
MAX_PHOTO_SIZE = 1024

# Family descriptions draw from default_rng([seed, _FAMILY_STREAM, family]); photos from
# default_rng([seed, class, image]) with class < MAX_CLASSES, so the two never share a stream.
_FAMILY_STREAM = 0x5049_4C4C  # "PILL"

# Only pools for jobs at least this big: starting workers costs more than small jobs take.
_POOL_MIN_IMAGES = 300

# --- pill bodies -------------------------------------------------------------------------------

# Tablet colours (sRGB) and how often they occur; white and off-white dominate as in real life.
_TABLET_COLOURS = {
    "white": ((246, 246, 243), 0.22),
    "off-white": ((236, 228, 206), 0.10),
    "light-yellow": ((246, 232, 160), 0.05),
    "yellow": ((240, 206, 84), 0.07),
    "peach": ((246, 196, 160), 0.05),
    "pink": ((240, 168, 186), 0.08),
    "orange": ((236, 132, 56), 0.07),
    "red": ((192, 46, 50), 0.05),
    "light-blue": ((160, 196, 232), 0.06),
    "blue": ((62, 104, 192), 0.07),
    "green": ((92, 166, 110), 0.07),
    "brown": ((138, 90, 56), 0.05),
    "purple": ((146, 104, 174), 0.06),
}
# Capsule shells add dark colours; two halves of different colours are the common case.
_CAPSULE_COLOURS = {
    **{name: value for name, value in _TABLET_COLOURS.items()},
    "navy": ((40, 54, 112), 0.06),
    "maroon": ((126, 32, 48), 0.06),
    "dark-green": ((30, 98, 62), 0.05),
    "grey": ((150, 152, 156), 0.04),
}
_SHAPES = {
    "round": 0.26,
    "oval": 0.15,
    "oblong": 0.15,
    "capsule": 0.16,
    "hexagon": 0.05,
    "pentagon": 0.05,
    "triangle": 0.05,
    "diamond": 0.04,
    "square": 0.05,
    "octagon": 0.04,
}
_FONTS = {
    "simplex": cv2.FONT_HERSHEY_SIMPLEX,
    "duplex": cv2.FONT_HERSHEY_DUPLEX,
    "triplex": cv2.FONT_HERSHEY_TRIPLEX,
    "complex": cv2.FONT_HERSHEY_COMPLEX,
}
_LOGOS = ("ring", "triangle", "heart", "star", "plus", "crescent", "diamond", "wave", "arrow")
_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"
_STRENGTHS = ("1", "2", "4", "5", "8", "10", "12", "15", "20", "25", "30", "40", "50", "75", "80",
              "100", "150", "200", "250", "300", "500")
_INKS = {"black": (28, 28, 30), "dark-blue": (30, 40, 96), "white": (240, 240, 236)}

# --- photo surroundings ------------------------------------------------------------------------

_TRAY_COLOURS = (
    (236, 236, 232), (200, 202, 204), (128, 132, 136), (44, 46, 50), (18, 18, 20),
    (52, 92, 170), (26, 52, 104), (60, 140, 96), (30, 88, 70), (40, 130, 140),
    (226, 206, 166), (176, 58, 48), (232, 170, 60), (150, 110, 180),
)
_SKIN_COLOURS = (
    (236, 196, 170), (226, 176, 144), (204, 144, 112), (170, 112, 80), (122, 80, 56),
    (86, 56, 40),
)
_PAPER_COLOURS = ((246, 246, 242), (240, 236, 224), (232, 232, 236), (226, 214, 190))
_CLOTH_COLOURS = (
    (60, 80, 120), (40, 50, 70), (150, 40, 50), (90, 120, 80), (200, 190, 170),
    (120, 120, 124), (70, 60, 56), (180, 150, 110), (30, 30, 34), (170, 90, 120),
)
_WOOD_COLOURS = ((204, 164, 114), (170, 120, 76), (130, 84, 52), (96, 62, 40), (222, 196, 156))
_BACKGROUNDS = {"tray": 0.34, "skin": 0.2, "paper": 0.16, "cloth": 0.16, "wood": 0.14}

# A background whose colour is closer than this to a pill colour (CIE76 Lab distance) is
# drawn again: a pill the colour of its background would be an unfair photo. Textured
# surfaces need more, their texture hides a pill of a nearby colour.
_MIN_BACKGROUND_CONTRAST = {"tray": 26.0, "paper": 28.0, "skin": 30.0, "cloth": 34.0, "wood": 36.0}


class PhotoFacts(NamedTuple):
    """What `render_photo` drew: the pill's box in photo pixels (right and bottom exclusive)."""

    left: int
    top: int
    right: int
    bottom: int


# ================================================================================================
# Public API
# ================================================================================================


def generate(
    out_dir: pathlib.Path,
    classes: int,
    images_per_class: int,
    photo_size: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
    background_chroma: float = 1.0,
    surface_grain: float = 0.0,
    references: list | None = None,
    reference_photos: int = 0,
) -> dict:
    """Write the synthetic data set to `out_dir`; return {"classes", "families", "images",
    "seconds"}.

    The set is built in a temporary sibling folder and renamed into place at the end, so a crash
    leaves no half data set; an existing `out_dir` is replaced, but only when it is empty or a
    previous synthetic data set (it holds pill_types.json). `progress(done, total)` is called
    with counts of photos. `workers` processes render classes in parallel (default: one per CPU);
    the output does not depend on it. `background_chroma` scales the colourfulness of the
    surfaces the pills lie on and `surface_grain` speckles tablets (see `render_photo`).
    `references` (composition.ReferenceType) are real pills composited into the same scenes,
    `reference_photos` photos each, in class folders of their own (see tf_pilltrack.composition).
    """
    started = time.perf_counter()
    _check_count("classes", classes, 1, MAX_CLASSES)
    _check_count("images_per_class", images_per_class, 1, MAX_IMAGES_PER_CLASS)
    _check_count("photo_size", photo_size, MIN_PHOTO_SIZE, MAX_PHOTO_SIZE)
    _check_count("seed", seed, 0, None)
    _check_fraction("background_chroma", background_chroma)
    _check_fraction("surface_grain", surface_grain)
    if workers is None:
        workers = os.cpu_count() or 1
    _check_count("workers", workers, 1, None)
    classes, images_per_class, photo_size, seed, workers = (
        int(classes), int(images_per_class), int(photo_size), int(seed), int(workers))
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be callable or None, got {progress!r}")
    try:
        out_dir = pathlib.Path(out_dir)
    except TypeError:
        raise ValueError(f"out_dir must be a path, got {out_dir!r}") from None
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / TYPES_FILE).is_file():
        raise ValueError(
            f"out_dir {out_dir} is a non-empty folder without {TYPES_FILE}; refusing to replace "
            "what is not a synthetic data set"
        )

    references = list(references or [])
    if references:
        _check_count("reference_photos", reference_photos, 1, MAX_IMAGES_PER_CLASS)
    pill_types = describe_pill_types(classes, seed)
    total = classes * images_per_class + len(references) * reference_photos
    out_dir = out_dir.absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; the data set is not
    try:
        jobs = [
            ("synthetic", (str(staging), pill_type, index, images_per_class, photo_size, seed,
                           float(background_chroma), float(surface_grain)))
            for index, pill_type in enumerate(pill_types)
        ] + [
            ("reference", (str(staging), reference, index, int(reference_photos), photo_size, seed,
                           float(background_chroma)))
            for index, reference in enumerate(references)
        ]
        boxes: dict[str, list[int]] = {}
        done = 0
        if progress is not None:
            progress(0, total)
        workers = min(workers, len(jobs))
        if workers > 1 and total >= _POOL_MIN_IMAGES:
            context = multiprocessing.get_context(
                "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            )
            with context.Pool(workers, initializer=_start_worker) as pool:
                for class_boxes in pool.imap(_run_job, jobs, chunksize=4):
                    boxes.update(class_boxes)
                    done += len(class_boxes)
                    if progress is not None:
                        progress(done, total)
        else:
            threads = cv2.getNumThreads()
            cv2.setNumThreads(1)
            try:
                for job in jobs:
                    class_boxes = _run_job(job)
                    boxes.update(class_boxes)
                    done += len(class_boxes)
                    if progress is not None:
                        progress(done, total)
            finally:
                cv2.setNumThreads(threads)
        families = sorted({pill_type["family"] for pill_type in pill_types})
        description = {
            "format": FORMAT_VERSION,
            "generator": "tf_pilltrack.synthesis",
            "seed": seed,
            "classes": classes,
            "images_per_class": images_per_class,
            "photo_size": photo_size,
            # only when set: the description of a data set with the listed palettes is unchanged
            **({} if background_chroma == 1.0 else {"background_chroma": float(background_chroma)}),
            **({} if surface_grain == 0.0 else {"surface_grain": float(surface_grain)}),
            "families": len(families),
            "size_unit": "size: length of the pill's long axis as a fraction of the photo side",
            "types": pill_types,
            **({} if not references else {
                "reference_photos": int(reference_photos),
                "reference_types": [{"name": reference.name, "source": reference.source,
                                     "faces": [name for _, name, _ in reference.faces]}
                                    for reference in references]}),
        }
        (staging / TYPES_FILE).write_text(json.dumps(description, indent=1) + "\n",
                                          encoding="utf-8")
        box_lines = ",\n".join(
            f' "{name}": {json.dumps(box)}' for name, box in sorted(boxes.items()))
        (staging / BOXES_FILE).write_text("{\n" + box_lines + "\n}\n", encoding="utf-8")
        _replace_folder(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {
        "classes": classes,
        "families": len(families),
        "reference_classes": len(references),
        "images": total,
        "seconds": round(time.perf_counter() - started, 3),
    }


def describe_pill_types(classes: int, seed: int) -> list[dict]:
    """The first `classes` pill types for `seed`: a list of JSON-ready dictionaries.

    Types are made family by family, each family from its own generator, so the first N types
    are the same whatever `classes` is.
    """
    _check_count("classes", classes, 1, MAX_CLASSES)
    _check_count("seed", seed, 0, None)
    classes, seed = int(classes), int(seed)
    types: list[dict] = []
    seen: set[str] = set()
    family = 0
    while len(types) < classes:
        rng = np.random.default_rng([seed, _FAMILY_STREAM, family])
        for member in _describe_family(rng, family, seen):
            if len(types) == classes:
                break
            member = {"name": f"pill_{len(types):04d}", **member}
            types.append(member)
        family += 1
    return types


def render_photo(pill_type: dict, photo_size: int, rng: np.random.Generator,
                 cache: dict | None = None,
                 background_chroma: float = 1.0,
                 surface_grain: float = 0.0) -> tuple[np.ndarray, PhotoFacts, int]:
    """One photo of `pill_type` (an item of `describe_pill_types`), drawn from `rng`:
    (photo_size x photo_size x 3 uint8 RGB, the pill's box, the JPEG quality to save it with).

    `cache` keeps what photos of one pill type share (its drawn faces) between calls: pass the
    same dict for photos of the same type, or None. It never changes the result.

    `background_chroma` scales the chroma (CIE Lab a*, b*) of every surface colour but skin's
    before the surface is chosen: 1 keeps the palettes as they are, 0 makes trays, paper,
    cloth and wood neutral greys of the same lightness, as the tables and paper of real pill
    photos mostly are. `surface_grain` speckles the body of tablets (not capsules) like pressed
    powder: the shading is multiplied by 1 + smooth noise of standard deviation up to
    `surface_grain` (0: smooth, as before); its noise comes from a generator spawned from `rng`,
    which leaves every other draw, and so the rest of the photo, as it is.
    """
    _check_count("photo_size", photo_size, MIN_PHOTO_SIZE, MAX_PHOTO_SIZE)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {rng!r}")
    _check_fraction("background_chroma", background_chroma)
    _check_fraction("surface_grain", surface_grain)
    return _render_photo(pill_type, int(photo_size), rng, {} if cache is None else cache,
                         float(background_chroma), float(surface_grain))


# ================================================================================================
# Pill types
# ================================================================================================


def _describe_family(rng: np.random.Generator, family: int, seen: set[str]) -> list[dict]:
    """One family: a body and 1-3 members that differ only in imprint and score lines."""
    shape = _pick(rng, _SHAPES)
    capsule = shape == "capsule"
    if shape == "round":
        aspect = 1.0
    elif shape == "oval":
        aspect = rng.uniform(0.55, 0.8)
    elif shape == "oblong":
        aspect = rng.uniform(0.38, 0.56)
    elif capsule:
        aspect = rng.uniform(0.33, 0.45)
    elif shape == "diamond":
        aspect = rng.uniform(0.6, 0.85)
    elif shape == "triangle":
        aspect = rng.uniform(0.9, 1.0)
    else:
        aspect = 1.0
    size = rng.uniform(0.3, 0.39) if capsule else rng.uniform(0.26, 0.37)
    palette = _CAPSULE_COLOURS if capsule else _TABLET_COLOURS
    colour_names = [_pick(rng, palette)]
    if capsule and rng.random() < 0.7:
        other = _pick(rng, palette)
        while other == colour_names[0]:
            other = _pick(rng, palette)
        colour_names.append(other)
    elif capsule:
        colour_names.append(colour_names[0])
    colours = []
    for name in colour_names:
        spread = 2.0 if name in ("white", "off-white") else 7.0
        base = np.array(palette[name][0], dtype=np.float64)
        colours.append([int(v) for v in np.clip(np.round(base + rng.normal(0, spread, 3)), 0, 255)])
    if capsule and colour_names[0] == colour_names[1]:
        colours[1] = colours[0]
    if capsule:
        gloss = rng.uniform(0.45, 0.9)
        style = "printed"
    else:
        gloss = rng.uniform(0.05, 0.55)
        style = "printed" if rng.random() < 0.18 else "debossed"
    dark = min(_luminance(colour) for colour in colours) < 110
    ink = None
    if style == "printed":
        ink = "white" if dark else ("dark-blue" if rng.random() < 0.2 else "black")
    body = {
        "family": f"family_{family:04d}",
        "shape": shape,
        "aspect": round(float(aspect), 3),
        "size": round(float(size), 3),
        "colours": colour_names,
        "rgb": colours,
        "gloss": round(float(gloss), 3),
        "shininess": int(rng.integers(50, 160)),
        "dome": round(float(0.0 if capsule else rng.uniform(0.0, 0.1)), 3),
        "thickness": round(float(1.0 if capsule else rng.uniform(0.25, 0.45)), 3),
        "imprint_style": style,
        "ink": ink,
        "ink_rgb": list(_INKS[ink]) if ink else None,
        "font": str(rng.choice(list(_FONTS))),
        "weight": round(float(rng.uniform(0.8, 1.3)), 3),
        "capsule_split": round(float(rng.uniform(-0.06, 0.06)), 3) if capsule else None,
    }
    members = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    texts = _family_texts(rng, members)
    logo_front = rng.random() < 0.12
    logos = [str(logo) for logo in rng.permutation(_LOGOS)[:members]]
    scored = not capsule and shape != "triangle" and rng.random() < 0.45
    # Most families share the back face and score lines too: then only the front tells them apart.
    shared_back = rng.random() < 0.65
    family_back, family_score = _describe_back(rng, scored)
    out = []
    for index in range(members):
        for attempt in range(20):
            if logo_front and attempt == 0:
                front = {"kind": "logo", "logo": logos[index]}
            else:
                front = {"kind": "text", "text": texts[index]}
            if shared_back:
                back, score = family_back, family_score
            else:
                back, score = _describe_back(rng, scored)
            member = {**body, "front": front, "back": back, **score}
            signature = json.dumps([member[key] for key in sorted(member) if key != "family"])
            if signature not in seen:
                break
            texts[index] = _random_code(rng, int(rng.integers(2, 5)))
        seen.add(signature)
        out.append(member)
    return out


def _describe_back(rng: np.random.Generator, scored: bool) -> tuple[dict, dict]:
    """The back face's imprint and the score lines: ({"kind": ...}, {"score", "score_face"})."""
    roll = rng.random()
    if roll < 0.45:
        back = {"kind": "none"}
    elif roll < 0.8:
        back = {"kind": "text", "text": _random_code(rng, int(rng.integers(1, 4)))}
    else:
        back = {"kind": "logo", "logo": str(rng.choice(_LOGOS))}
    score = {"score": "none", "score_face": None}
    if scored and rng.random() < 0.75:
        score = {"score": "cross" if rng.random() < 0.25 else "line",
                 "score_face": "back" if rng.random() < 0.65 else "front"}
    return back, score


def _family_texts(rng: np.random.Generator, count: int) -> list[str]:
    """Distinct front imprints for a family: a shared prefix and different strengths, or
    codes that differ in one or two characters."""
    texts: list[str] = []
    scheme = rng.random()
    prefix = _random_letters(rng, int(rng.choice([0, 1, 1, 2, 2, 3])))
    while len(texts) < count:
        if scheme < 0.55:
            strength = str(rng.choice([s for s in _STRENGTHS if len(s) + len(prefix) <= 4]))
            text = prefix + strength
        elif scheme < 0.85 or not texts:
            text = _random_code(rng, int(rng.integers(2, 5)))
        else:  # change one character of the first code: the hardest negatives
            chars = list(texts[0])
            position = int(rng.integers(len(chars)))
            chars[position] = _random_code(rng, 1)
            text = "".join(chars)
        if text not in texts:
            texts.append(text)
    return texts


def _random_letters(rng: np.random.Generator, length: int) -> str:
    return "".join(_LETTERS[int(i)] for i in rng.integers(0, len(_LETTERS), length))


def _random_code(rng: np.random.Generator, length: int) -> str:
    alphabet = _LETTERS + "0123456789"
    return "".join(alphabet[int(i)] for i in rng.integers(0, len(alphabet), length))


def _pick(rng: np.random.Generator, weighted: dict) -> str:
    """A key of `weighted` ({name: weight} or {name: (value, weight)}) drawn by weight."""
    table = _PICK_TABLES.get(id(weighted))
    if table is None:
        weights = [v[1] if isinstance(v, tuple) else v for v in weighted.values()]
        table = _PICK_TABLES[id(weighted)] = (list(weighted), np.cumsum(weights) / sum(weights))
    names, cumulative = table
    return names[min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(names) - 1)]


_PICK_TABLES: dict[int, tuple] = {}


def _luminance(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


# ================================================================================================
# Rendering a pill face
# ================================================================================================


class Face(NamedTuple):
    """A pill face drawn once per type, long axis along x, at `length` pixels."""

    premultiplied_albedo: tuple  # three (P, P) float32 planes: red, green, blue times alpha
    alpha: np.ndarray  # (P, P) float32
    normals: tuple  # three (P, P) float32 planes: x, y, z of the unit surface normals
    outline: np.ndarray  # (N, 1, 2) float32 outline points, for placement
    length: float


def _face(pill_type: dict, which: str, length: float) -> Face:
    shape = pill_type["shape"]
    width = length * pill_type["aspect"]
    side = int(math.ceil(length * 1.08)) + 8
    centre = side / 2.0
    outline, core_centre = _outline(shape, length, width, centre)
    mask = np.zeros((side, side), np.uint8)
    cv2.fillPoly(mask, [np.round(outline * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    alpha = mask.astype(np.float32) * (1.0 / 255.0)
    inside = (mask > 127).astype(np.uint8)
    distance = cv2.distanceTransform(inside, cv2.DIST_L2, 5)

    # Height field: a rounded edge (a full half-cylinder for capsules) plus a gentle dome.
    capsule = shape == "capsule"
    bevel = width / 2.0 if capsule else max(2.0, 0.16 * width)
    edge = np.clip(distance / bevel, 0.0, 1.0)
    height = bevel * np.sqrt(1.0 - (1.0 - edge) ** 2) * (1.0 if capsule else 0.6)
    peak = max(float(distance.max()), 1.0)
    height += pill_type["dome"] * width * (1.0 - (1.0 - distance / peak) ** 2)

    albedo = np.empty((side, side, 3), np.float32)
    colours = np.array(pill_type["rgb"], np.float32) / 255.0
    albedo[:] = colours[0]
    groove = np.zeros((side, side), np.uint8)  # debossed marks: imprint and score lines
    ink = np.zeros((side, side), np.uint8)  # printed marks
    if capsule:
        split = int(round(centre + pill_type["capsule_split"] * length))
        albedo[:, split:] = colours[1]
        cv2.line(groove, (split, 0), (split, side), 110, max(1, int(round(0.012 * length))))
    imprint = pill_type[which]
    scored = pill_type["score"] != "none" and pill_type["score_face"] == which
    marks = ink if pill_type["imprint_style"] == "printed" else groove
    stroke = max(1.0, 0.05 * min(width, length) * pill_type["weight"])
    cx, cy = core_centre
    if capsule:
        # printed on one half, centred on it
        half = -1 if pill_type["capsule_split"] >= 0 else 1
        box_centre = (cx + half * 0.24 * length, cy)
        box = (0.36 * length, 0.5 * width)
    elif shape in ("oval", "oblong"):
        box_centre, box = (cx, cy), (0.6 * length, 0.42 * width)
    elif shape == "round":
        box_centre, box = (cx, cy), (0.6 * length, 0.3 * length)
    else:
        box_centre, box = (cx, cy), (0.5 * width, 0.3 * width)
    if scored:
        score_width = max(2, int(round(0.04 * length)))
        reach = int(side)
        cv2.line(groove, (int(round(cx)), -reach), (int(round(cx)), 2 * reach), 255, score_width,
                 cv2.LINE_AA)
        if pill_type["score"] == "cross":
            cv2.line(groove, (-reach, int(round(cy))), (2 * reach, int(round(cy))), 255,
                     score_width, cv2.LINE_AA)
    if imprint["kind"] == "text":
        text = imprint["text"]
        if scored and pill_type["score"] == "line" and len(text) >= 2:
            cut = (len(text) + 1) // 2
            offset = 0.24 * box[0] / 0.6 if shape == "round" else 0.22 * length
            small = (box[0] * 0.4, box[1] * (1.3 if shape == "round" else 1.0))
            _draw_text(marks, text[:cut], (cx - offset, cy), small, pill_type)
            _draw_text(marks, text[cut:], (cx + offset, cy), small, pill_type)
        elif scored and pill_type["score"] == "cross":
            _draw_text(marks, text, (cx, cy - 0.25 * width), (box[0] * 0.5, box[1] * 0.55),
                       pill_type)
        else:
            _draw_text(marks, text, box_centre, box, pill_type)
    elif imprint["kind"] == "logo":
        logo_box = min(box[0], box[1] * 1.6)
        if scored:
            logo_box *= 0.6
            box_centre = (cx - 0.25 * length, cy) if shape != "round" else (cx - 0.22 * length, cy)
        _draw_logo(marks, imprint["logo"], box_centre, logo_box, stroke)

    if groove.any():
        carved = cv2.GaussianBlur(groove.astype(np.float32) * (1.0 / 255.0), (0, 0),
                                  max(0.6, 0.35 * stroke))
        carved *= alpha
        height -= 0.9 * stroke * carved
        albedo *= (1.0 - 0.22 * carved)[:, :, None]
    if ink.any():
        mix = (ink.astype(np.float32) * (1.0 / 255.0) * alpha)[:, :, None]
        ink_colour = np.array(pill_type["ink_rgb"], np.float32) / 255.0
        albedo = albedo * (1.0 - mix) + ink_colour * mix

    gx = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    np.clip(gx, -4.0, 4.0, out=gx)
    np.clip(gy, -4.0, 4.0, out=gy)
    norm = 1.0 / np.sqrt(gx * gx + gy * gy + 1.0)
    premultiplied = albedo * alpha[:, :, None]
    return Face(
        premultiplied_albedo=tuple(np.ascontiguousarray(premultiplied[:, :, c]) for c in range(3)),
        alpha=alpha,
        normals=(-gx * norm, -gy * norm, norm),
        outline=outline.reshape(-1, 1, 2).astype(np.float32),
        length=length,
    )


def _outline(shape: str, length: float, width: float, centre: float):
    """The outline polygon (float (N, 2)) of a shape whose bounding box, length x width, is
    centred on (centre, centre), and the point its imprint is centred on."""
    if shape in ("round", "oval"):
        angles = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        points = np.stack([centre + length / 2 * np.cos(angles),
                           centre + width / 2 * np.sin(angles)], axis=1)
        return points, (centre, centre)
    if shape == "capsule":
        radius = width / 2.0
        core = np.array([[-1.0, 0.0], [1.0, 0.0]]) * (length / 2 - radius)
    elif shape == "oblong":
        radius = 0.38 * width
        core = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
        core *= [length / 2 - radius, width / 2 - radius]
    else:
        sides, start, rounding = {
            "triangle": (3, 0.0, 0.2),
            "pentagon": (5, 0.0, 0.12),
            "hexagon": (6, 0.0, 0.08),
            "octagon": (8, np.pi / 8, 0.07),
            "diamond": (4, 0.0, 0.12),
            "square": (4, np.pi / 4, 0.15),
        }[shape]
        radius = rounding * width
        angles = start + np.arange(sides) * 2 * np.pi / sides
        core = np.stack([np.cos(angles), np.sin(angles)], axis=1)
        low, high = core.min(axis=0), core.max(axis=0)
        core = (core - (low + high) / 2) / (high - low)  # unit box centred on the origin
        core *= [length - 2 * radius, width - 2 * radius]
    circle = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    disc = np.stack([np.cos(circle), np.sin(circle)], axis=1) * radius
    points = (core[:, None, :] + disc[None, :, :]).reshape(-1, 2).astype(np.float32)
    hull = cv2.convexHull(points).reshape(-1, 2) + centre
    if shape in ("triangle", "pentagon"):
        # imprint at the centroid of the vertices, not the box centre
        imprint_centre = (centre + float(core[:, 0].mean()), centre + float(core[:, 1].mean()))
    else:
        imprint_centre = (centre, centre)
    return hull.astype(np.float64), imprint_centre


def _draw_text(canvas: np.ndarray, text: str, centre, box, pill_type: dict):
    font = _FONTS[pill_type["font"]]
    (reference_width, reference_height), _ = cv2.getTextSize(text, font, 1.0, 2)
    scale = min(box[0] / max(reference_width, 1), box[1] / max(reference_height, 1))
    thickness = max(1, int(round(2.0 * scale * pill_type["weight"])))
    (text_width, text_height), _ = cv2.getTextSize(text, font, scale, thickness)
    origin = (int(round(centre[0] - text_width / 2)), int(round(centre[1] + text_height / 2)))
    cv2.putText(canvas, text, origin, font, scale, 255, thickness, cv2.LINE_AA)


def _draw_logo(canvas: np.ndarray, logo: str, centre, size: float, stroke: float):
    cx, cy = centre
    r = size / 2.0
    thickness = max(1, int(round(stroke)))
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)

    def poly(points, closed=True, fill=False):
        pts = [np.round(np.asarray(points) * 16).astype(np.int32)]
        if fill:
            cv2.fillPoly(canvas, pts, 255, cv2.LINE_AA, shift=4)
        else:
            cv2.polylines(canvas, pts, closed, 255, thickness, cv2.LINE_AA, shift=4)

    if logo == "ring":
        poly(np.stack([cx + 0.85 * r * np.cos(t), cy + 0.85 * r * np.sin(t)], 1))
    elif logo == "triangle":
        a = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        poly(np.stack([cx + r * np.cos(a), cy + 0.1 * r + r * np.sin(a)], 1))
    elif logo == "heart":
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        poly(np.stack([cx + x * r / 17, cy + y * r / 17], 1), fill=True)
    elif logo == "star":
        a = -np.pi / 2 + np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, r, 0.42 * r)
        poly(np.stack([cx + radius * np.cos(a), cy + radius * np.sin(a)], 1), fill=True)
    elif logo == "plus":
        w = 0.28 * r
        poly([[cx - w, cy - r], [cx + w, cy - r], [cx + w, cy + r], [cx - w, cy + r]], fill=True)
        poly([[cx - r, cy - w], [cx + r, cy - w], [cx + r, cy + w], [cx - r, cy + w]], fill=True)
    elif logo == "crescent":
        outer = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
        poly(outer, fill=True)
        hole = np.zeros_like(canvas)
        cv2.fillPoly(hole, [np.round((outer + [0.45 * r, -0.15 * r]) * 16).astype(np.int32)],
                     255, cv2.LINE_AA, shift=4)
        np.subtract(canvas, np.minimum(canvas, hole), out=canvas)
    elif logo == "diamond":
        poly([[cx, cy - r], [cx + 0.7 * r, cy], [cx, cy + r], [cx - 0.7 * r, cy]])
    elif logo == "wave":
        x = np.linspace(-r, r, 32)
        poly(np.stack([cx + x, cy + 0.35 * r * np.sin(x / r * 2 * np.pi)], 1), closed=False)
    elif logo == "arrow":
        poly([[cx - r, cy], [cx + r, cy]], closed=False)
        poly([[cx + 0.3 * r, cy - 0.6 * r], [cx + r, cy], [cx + 0.3 * r, cy + 0.6 * r]],
             closed=False)


# ================================================================================================
# Rendering a photo
# ================================================================================================

# Speckles of a tablet's pressed powder are about this many render pixels across: 1.5 photo
# pixels, about 2 pixels of the 64 px crop of a pill of the default sizes.
_GRAIN_CELL = 3

# Sensor noise and background grain come from a fixed bank of Gaussian noise, cut at a random
# place for each photo: drawing fresh normal deviates for every pixel would dominate the cost.
_NOISE_BANKS: dict[int, np.ndarray] = {}


def _noise_bank(photo_size: int) -> np.ndarray:
    side = max(512, photo_size) + 128
    bank = _NOISE_BANKS.get(side)
    if bank is None:
        bank = np.random.default_rng([_FAMILY_STREAM, side]).standard_normal(
            (side, side, 3), dtype=np.float32)
        _NOISE_BANKS[side] = bank
    return bank


def _noise(rng: np.random.Generator, photo_size: int) -> np.ndarray:
    """A (photo_size, photo_size, 3) view of standard normal noise, cut at a random place."""
    bank = _noise_bank(photo_size)
    top, left = rng.integers(0, bank.shape[0] - photo_size + 1, 2)
    return bank[top:top + photo_size, left:left + photo_size]


def _grain(rng: np.random.Generator, side: int, amount: float) -> np.ndarray:
    """A (side, side) float32 factor around 1: speckles of `_GRAIN_CELL` render pixels whose
    standard deviation is `amount` times a per-photo draw in [0.5, 1]."""
    cells = max(1, side // _GRAIN_CELL)
    field = rng.standard_normal((cells, cells), dtype=np.float32)
    field *= np.float32(amount * rng.uniform(0.5, 1.0))
    field = cv2.resize(field, (side, side), interpolation=cv2.INTER_LINEAR)
    field += 1.0
    return field


def _render_photo(pill_type: dict, photo_size: int, rng: np.random.Generator, cache: dict,
                  background_chroma: float, surface_grain: float):
    size = photo_size
    render = 2 * size  # the pill is drawn at twice the size and reduced with area interpolation
    # Every draw happens in a fixed order: the photo depends only on the generator.
    which = "front" if rng.random() < 0.5 else "back"
    scale = rng.uniform(0.86, 1.15)
    rotation = rng.uniform(0.0, 2 * np.pi)
    tilt = rng.uniform(0.0, np.radians(28)) if rng.random() < 0.75 else 0.0
    tilt_axis = rng.uniform(0.0, np.pi)
    focal = render * rng.uniform(1.0, 1.8)
    light_azimuth = rng.uniform(0.0, 2 * np.pi)
    light_elevation = rng.uniform(np.radians(35), np.radians(75))
    ambient = rng.uniform(0.4, 0.6)
    position = rng.random(2)

    # The face is drawn once per type at the largest length a photo may need.
    face_length = pill_type["size"] * 1.15 * render
    key = (which, round(face_length, 3))
    face = cache.get(key)
    if face is None:
        face = cache[key] = _face(pill_type, which, face_length)

    # Pose: patch centre to origin, scale, in-plane rotation, tilt, translation (render pixels).
    side = face.alpha.shape[0]
    pixels = pill_type["size"] * scale * render
    s = pixels / face.length
    cos_r, sin_r = math.cos(rotation), math.sin(rotation)
    pose = np.array([[s * cos_r, -s * sin_r, 0.0], [s * sin_r, s * cos_r, 0.0], [0, 0, 1.0]])
    flat = pose @ np.array([[1, 0, -side / 2.0], [0, 1, -side / 2.0], [0, 0, 1.0]])
    turn, _ = cv2.Rodrigues(np.array([tilt * math.cos(tilt_axis), tilt * math.sin(tilt_axis), 0.0]))
    perspective = np.array([
        [focal * turn[0, 0], focal * turn[0, 1], 0.0],
        [focal * turn[1, 0], focal * turn[1, 1], 0.0],
        [turn[2, 0], turn[2, 1], focal],
    ])
    pose = perspective @ flat
    pose /= pose[2, 2]
    corners = cv2.perspectiveTransform(face.outline, pose).reshape(-1, 2)
    # A tilted tablet shows its side: the far face, `thickness` behind the near one, peeps out.
    wall = None
    if tilt > 0.0 and pill_type["shape"] != "capsule":
        depth = pill_type["thickness"] * pill_type["aspect"] * pixels
        perspective[:, 2] += depth * turn[:, 2] * np.array([focal, focal, 1.0])
        wall = perspective @ flat
        wall /= wall[2, 2]
        corners = np.concatenate(
            [corners, cv2.perspectiveTransform(face.outline, wall).reshape(-1, 2)])
    low, high = corners.min(axis=0), corners.max(axis=0)
    margin = 0.04 * render
    free = np.maximum((render - 2 * margin) - (high - low), 0.0)
    shift = margin - low + free * position
    move = np.array([[1, 0, shift[0]], [0, 1, shift[1]], [0, 0, 1.0]])
    pose = move @ pose
    low, high = low + shift, high + shift

    # Shading in the face's own frame: the light turns with the pill.
    azimuth = light_azimuth - rotation
    lx = math.cos(light_elevation) * math.cos(azimuth)
    ly = math.cos(light_elevation) * math.sin(azimuth)
    lz = math.sin(light_elevation)
    hx, hy, hz = lx, ly, lz + 1.0
    norm = math.sqrt(hx * hx + hy * hy + hz * hz)
    hx, hy, hz = hx / norm, hy / norm, hz / norm
    nx, ny, nz = face.normals
    diffuse = nx * lx
    diffuse += ny * ly
    diffuse += nz * lz
    np.maximum(diffuse, 0.0, out=diffuse)
    shade = diffuse
    shade *= (1.0 - ambient) / lz
    shade += ambient
    specular = nx * hx
    specular += ny * hy
    specular += nz * hz
    np.maximum(specular, 0.0, out=specular)
    specular = cv2.pow(specular, pill_type["shininess"])  # much faster than np.power
    specular *= face.alpha
    specular *= pill_type["gloss"] * 0.85
    if surface_grain > 0.0 and pill_type["shape"] != "capsule":
        shade = shade * _grain(rng.spawn(1)[0], shade.shape[0], surface_grain)
    red, green, blue = face.premultiplied_albedo
    layers = cv2.merge([red * shade + specular, green * shade + specular,
                        blue * shade + specular, face.alpha])

    # Warp only the window around the pill (even-aligned), then halve it.
    left = max(0, (int(low[0]) - 2) & ~1)
    top = max(0, (int(low[1]) - 2) & ~1)
    right = min(render, (int(math.ceil(high[0])) + 3) & ~1)
    bottom = min(render, (int(math.ceil(high[1])) + 3) & ~1)
    window = np.array([[1, 0, -left], [0, 1, -top], [0, 0, 1.0]]) @ pose
    warped = cv2.warpPerspective(layers, window, (right - left, bottom - top),
                                 flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                 borderValue=0)
    pill = cv2.resize(warped, ((right - left) // 2, (bottom - top) // 2),
                      interpolation=cv2.INTER_AREA)
    if wall is not None:  # the side, in the body colour and shaded, behind the near face
        far = cv2.warpPerspective(face.alpha, np.array([[1, 0, -left], [0, 1, -top], [0, 0, 1.0]])
                                  @ move @ wall, (right - left, bottom - top),
                                  flags=cv2.INTER_LINEAR)
        far = cv2.resize(far, ((right - left) // 2, (bottom - top) // 2),
                         interpolation=cv2.INTER_AREA)
        far *= 1.0 - pill[:, :, 3]
        tone = rng.uniform(0.5, 0.8)
        for channel, value in enumerate(pill_type["rgb"][0]):
            pill[:, :, channel] += far * (tone * value / 255.0)
        pill[:, :, 3] += far
    left, top, right, bottom = left // 2, top // 2, right // 2, bottom // 2
    pill_alpha = pill[:, :, 3]

    # Background, far enough in colour from the pill.
    planes = _background(rng, size, pill_type, cache, background_chroma)

    # Soft drop shadow away from the light plus a tight contact shadow, drawn at half size.
    low_size = size // 2
    reach = pixels * rng.uniform(0.05, 0.14) / math.tan(light_elevation)
    offset = -reach * np.array([math.cos(light_azimuth), math.sin(light_azimuth)])
    quarter = np.diag([0.25, 0.25, 1.0])
    moved = quarter @ np.array([[1, 0, offset[0]], [0, 1, offset[1]], [0, 0, 1.0]]) @ pose
    cast = cv2.warpPerspective(face.alpha, moved, (low_size, low_size), flags=cv2.INTER_LINEAR)
    contact = cv2.warpPerspective(face.alpha, quarter @ pose, (low_size, low_size),
                                  flags=cv2.INTER_LINEAR)
    softness = max(0.6, pixels * rng.uniform(0.02, 0.06) / 4)
    shadow = cv2.GaussianBlur(cast, (0, 0), softness)
    shadow *= rng.uniform(0.25, 0.55)
    shadow += 0.35 * cv2.GaussianBlur(contact, (0, 0), max(0.5, pixels * 0.012 / 4))
    np.minimum(shadow, 0.8, out=shadow)
    keep = 1.0 - cv2.resize(shadow, (size, size), interpolation=cv2.INTER_LINEAR)

    # Lighting: a brightness gradient, vignetting, exposure and white balance.
    axis = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    direction = rng.uniform(0, 2 * np.pi)
    strength = rng.uniform(0.0, 0.25)
    vignette = rng.uniform(0.0, 0.25)
    gain_x = strength * math.cos(direction) * axis - vignette * axis * axis
    gain_y = strength * math.sin(direction) * axis - vignette * axis * axis
    exposure = rng.uniform(0.82, 1.12)
    gain = exposure * (1.0 + gain_y[:, None] + gain_x[None, :])
    temperature = rng.normal(0.0, 0.06)
    tint = rng.normal(0.0, 0.025)
    balance = (1.0 + temperature, 1.0 + tint, 1.0 - temperature)

    covered = 1.0 - pill_alpha
    for channel, plane in enumerate(planes):
        plane *= keep
        inside = plane[top:bottom, left:right]
        inside *= covered
        inside += pill[:, :, channel]
        plane *= gain * balance[channel]
    image = cv2.merge(planes)

    # Optics: defocus or motion blur, or none.
    blur = rng.random()
    if blur < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 1.1))
    elif blur < 0.45:
        length = rng.uniform(1.5, 4.0)
        angle = rng.uniform(0, np.pi)
        kernel_side = 2 * int(math.ceil(length / 2)) + 1
        kernel = np.zeros((kernel_side * 4, kernel_side * 4), np.float32)
        middle = kernel_side * 2
        dx, dy = math.cos(angle) * length * 2, math.sin(angle) * length * 2
        cv2.line(kernel, (int(round(middle - dx)), int(round(middle - dy))),
                 (int(round(middle + dx)), int(round(middle + dy))), 1.0, 3, cv2.LINE_AA)
        kernel = cv2.resize(kernel, (kernel_side, kernel_side), interpolation=cv2.INTER_AREA)
        kernel /= kernel.sum()
        image = cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT)

    # Sensor: luminance and colour noise, then 8 bits.
    noise_level = rng.uniform(0.006, 0.03) * 255.0
    chroma = rng.uniform(0.2, 0.6)
    mixing = np.full((3, 3), (1.0 - chroma) / math.sqrt(3.0), np.float32)
    mixing += np.eye(3, dtype=np.float32) * chroma
    noise = cv2.transform(_noise(rng, size), mixing * noise_level)
    image *= 255.0
    image += noise
    image += 0.5
    np.clip(image, 0.0, 255.0, out=image)
    rgb = image.astype(np.uint8)
    quality = int(rng.integers(60, 96))

    rows = np.flatnonzero(pill_alpha.max(axis=1) > 0.5)
    cols = np.flatnonzero(pill_alpha.max(axis=0) > 0.5)
    box = PhotoFacts(left + int(cols[0]), top + int(rows[0]),
                     left + int(cols[-1]) + 1, top + int(rows[-1]) + 1)
    return rgb, box, quality


def _background(rng: np.random.Generator, size: int, pill_type: dict, cache: dict,
                chroma: float) -> list:
    """Three float32 (size, size) planes of an RGB surface in 0..1 that stands out from the pill;
    surface colours other than skin have their chroma scaled by `chroma` (1: as listed)."""
    pill_lab = cache.get("lab")
    if pill_lab is None:
        pill_lab = cache["lab"] = _lab(np.array(pill_type["rgb"], np.float32))
    surfaces, surface_lab = _scale_surface_chroma(chroma)
    for _attempt in range(30):
        kind = _pick(rng, _BACKGROUNDS)
        palette = surfaces[kind]
        choice = int(rng.integers(len(palette)))
        contrast = np.linalg.norm(pill_lab - surface_lab[kind][choice], axis=1)
        # every colour of the pill must stand out, and about as much as the others: otherwise
        # a two-tone capsule looks like half a capsule
        if contrast.min() >= max(_MIN_BACKGROUND_CONTRAST[kind], 0.7 * contrast.max()):
            base = np.array(palette[choice], np.float64) + rng.normal(0, 5, 3)
            break
    else:  # no luck: the plain grey tray that stands out most
        kind = "tray"
        greys = np.array([[20.0] * 3, [128.0] * 3, [236.0] * 3])
        contrast = [np.linalg.norm(pill_lab - lab, axis=1).min() for lab in _lab(greys)]
        base = greys[int(np.argmax(contrast))]
    base = np.clip(base, 0, 255) / 255.0

    def smooth(cells: int, amount: float) -> np.ndarray:
        field = rng.standard_normal((cells, cells), dtype=np.float32)
        field *= amount
        return cv2.resize(field, (size, size), interpolation=cv2.INTER_CUBIC)

    def grain(amount: float) -> np.ndarray:
        return _noise(rng, size)[:, :, 0] * amount

    if kind == "tray":
        shade = smooth(3, 0.03)
        shade += 1.0
    elif kind == "paper":
        shade = smooth(4, 0.02)
        shade += grain(0.02)
        shade += 1.0
    elif kind == "skin":
        shade = smooth(3, 0.03)
        shade += grain(0.012)
        shade += 1.0
        creases = np.zeros((size, size), np.uint8)
        for _ in range(int(rng.integers(0, 3))):
            start, bend, end = rng.uniform(0, size, (3, 2))
            u = np.linspace(0, 1, 12)[:, None]
            curve = (1 - u) ** 2 * start + 2 * u * (1 - u) * bend + u ** 2 * end
            cv2.polylines(creases, [np.round(curve * 16).astype(np.int32)], False, 255,
                          max(1, size // 48), cv2.LINE_AA, shift=4)
        creases = cv2.GaussianBlur(creases, (0, 0), size / 80).astype(np.float32)
        shade *= 1.0 - creases * (rng.uniform(0.05, 0.1) / 255.0)
    elif kind == "cloth":
        period = size * rng.uniform(0.025, 0.05)
        angle = rng.uniform(0, np.pi)
        frequency = 2 * np.pi / period
        axis = np.arange(size, dtype=np.float32)
        # sin(f(x cos a + y sin a)) * sin(f(-x sin a + y cos a)), from separable outer products
        a1, b1 = frequency * math.cos(angle) * axis, frequency * math.sin(angle) * axis
        a2, b2 = -frequency * math.sin(angle) * axis, frequency * math.cos(angle) * axis
        warp = np.outer(np.cos(b1), np.sin(a1)) + np.outer(np.sin(b1), np.cos(a1))
        weft = np.outer(np.cos(b2), np.sin(a2)) + np.outer(np.sin(b2), np.cos(a2))
        shade = (warp * weft).astype(np.float32)
        shade *= rng.uniform(0.04, 0.09)
        shade += smooth(4, 0.06)
        shade += grain(0.03)
        shade += 1.0
    else:  # wood: grain streaks along one axis
        streaks = rng.standard_normal((size // 3, 6), dtype=np.float32)
        streaks = cv2.resize(streaks, (size, size), interpolation=cv2.INTER_CUBIC)
        fine = rng.standard_normal((size, 12), dtype=np.float32)
        fine = cv2.resize(fine, (size, size), interpolation=cv2.INTER_LINEAR)
        shade = 0.05 * streaks + 0.03 * fine
        shade += smooth(3, 0.04)
        shade += 1.0
        if rng.random() < 0.5:
            shade = np.ascontiguousarray(shade.T)
    planes = [shade * np.float32(base[0]), shade * np.float32(base[1]), shade * np.float32(base[2])]
    if kind == "skin":
        planes[0] += smooth(5, 0.025 * base[0])  # blotches of redness
    elif kind == "paper" and rng.random() < 0.3:  # ruled paper
        spacing = size * rng.uniform(0.12, 0.2)
        rows = (np.arange(size) + rng.uniform(0, spacing)) % spacing < max(1.0, size / 170)
        planes[0][rows] *= 0.86
        planes[1][rows] *= 0.9
    return planes


def _lab(rgb: np.ndarray) -> np.ndarray:
    """CIE Lab of (N, 3) sRGB colours in 0..255."""
    values = (np.asarray(rgb, np.float32).reshape(1, -1, 3) / 255.0).astype(np.float32)
    return cv2.cvtColor(values, cv2.COLOR_RGB2LAB).reshape(-1, 3)


_SURFACES = {"tray": _TRAY_COLOURS, "skin": _SKIN_COLOURS, "paper": _PAPER_COLOURS,
             "cloth": _CLOTH_COLOURS, "wood": _WOOD_COLOURS}
_SURFACE_LAB = {kind: _lab(np.array(colours, np.float32)) for kind, colours in _SURFACES.items()}
# Skin keeps its colours whatever the background chroma: palms are not grey in real photos.
_CHROMA_KEPT = ("skin",)
_SCALED_SURFACES: dict[float, tuple[dict, dict]] = {1.0: (_SURFACES, _SURFACE_LAB)}


def _scale_surface_chroma(chroma: float) -> tuple[dict, dict]:
    """The surface palettes ({kind: RGB tuples 0..255}) and their Lab with the chroma of every
    kind but skin's scaled by `chroma`; 1 gives the listed palettes themselves."""
    scaled = _SCALED_SURFACES.get(chroma)
    if scaled is None:
        surfaces, surface_lab = {}, {}
        for kind, colours in _SURFACES.items():
            if kind in _CHROMA_KEPT:
                surfaces[kind], surface_lab[kind] = colours, _SURFACE_LAB[kind]
                continue
            lab = _SURFACE_LAB[kind].copy()
            lab[:, 1:] *= np.float32(chroma)
            rgb = cv2.cvtColor(lab.reshape(1, -1, 3), cv2.COLOR_LAB2RGB).reshape(-1, 3)
            surfaces[kind] = tuple(tuple(float(v) for v in np.clip(colour, 0.0, 1.0) * 255.0)
                                   for colour in rgb)
            surface_lab[kind] = _lab(np.array(surfaces[kind], np.float32))
        scaled = _SCALED_SURFACES[chroma] = (surfaces, surface_lab)
    return scaled


def _check_fraction(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number within [0, 1], got {value!r}")


# ================================================================================================
# Classes, workers, files
# ================================================================================================


def _start_worker() -> None:
    cv2.setNumThreads(1)


def _run_job(job) -> dict[str, list[int]]:
    kind, arguments = job
    if kind == "reference":
        from tf_pilltrack import composition  # it builds on this module
        return composition.render_job(arguments)
    return _render_class_job(arguments)


def _render_class_job(job) -> dict[str, list[int]]:
    (staging, pill_type, class_index, images_per_class, photo_size, seed, background_chroma,
     surface_grain) = job
    return write_photos(pathlib.Path(staging), pill_type, images_per_class, photo_size, {},
                        lambda image: np.random.default_rng([seed, class_index, image]),
                        background_chroma, surface_grain)


def write_photos(staging: pathlib.Path, pill_type: dict, count: int, photo_size: int, faces: dict,
                 generator: Callable[[int], np.random.Generator], background_chroma: float,
                 surface_grain: float) -> dict[str, list[int]]:
    """Render `count` photos of `pill_type` into staging/<name>/, photo i from `generator(i)`;
    `faces` is the renderer's cache of the type's faces (empty: drawn from the description).
    Returns each photo's pill box by file name."""
    folder = staging / pill_type["name"]
    folder.mkdir()
    boxes = {}
    for image_index in range(count):
        rgb, box, quality = _render_photo(pill_type, photo_size, generator(image_index), faces,
                                          background_chroma, surface_grain)
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError(
                f"OpenCV could not encode photo {image_index} of {pill_type['name']}")
        name = f"{pill_type['name']}_{image_index:03d}.jpg"
        (folder / name).write_bytes(data.tobytes())
        boxes[f"{pill_type['name']}/{name}"] = list(box)
    return boxes


def _replace_folder(staging: pathlib.Path, out_dir: pathlib.Path) -> None:
    """Rename the finished `staging` folder to `out_dir`, replacing an old one."""
    old = None
    if out_dir.exists():
        old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
        os.rmdir(old)
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_count(name: str, value, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"within [{low}, {high}]"
        raise ValueError(f"{name} must be {bounds}, got {value}")


def run(params: dict, echo: Callable[[str], None] = print) -> dict:
    """Stage `generate`: render data.synthetic_* photos into data/synthetic."""
    from tf_pilltrack import paths

    settings = params["data"]
    total = settings["synthetic_classes"] * settings["synthetic_images_per_class"]

    printed = [0]

    def progress(done: int, count: int) -> None:  # called once per pill type rendered
        if done - printed[0] >= 1000 or done == count:
            printed[0] = done
            echo(f"  rendered {done}/{count} photos")

    echo(f"generate: {settings['synthetic_classes']} pill types x {settings['synthetic_images_per_class']} "
         f"photos of {settings['synthetic_photo_size']} px ({total} photos)")
    references, skipped = _load_references(params, echo)
    summary = generate(paths.SYNTHETIC, settings["synthetic_classes"], settings["synthetic_images_per_class"],
                       settings["synthetic_photo_size"], params["base"]["seed"], progress=progress,
                       background_chroma=settings["synthetic_background_chroma"],
                       surface_grain=settings["synthetic_surface_grain"],
                       references=references, reference_photos=settings["reference_photos_per_type"])
    summary["reference_photos_skipped"] = skipped
    echo(f"generate: {summary['images']} photos of {summary['classes']} pill types in "
         f"{summary['families']} look-alike families and {summary['reference_classes']} real reference "
         f"pill classes, {summary['seconds']:.1f} s")
    return summary


def _load_references(params: dict, echo: Callable[[str], None]) -> tuple[list, list[dict]]:
    """data.reference_types of data.reference_source's pill types (a choice seeded with base.seed),
    or none when either count is 0; and the reference photos skipped, with reasons."""
    from tf_pilltrack import composition  # it builds on this module

    settings = params["data"]
    if settings["reference_types"] == 0 or settings["reference_photos_per_type"] == 0:
        return [], []
    source = pathlib.Path(settings["reference_source"])
    references, skipped = composition.load(source, settings["reference_faces"], settings["max_image_pixels"])
    if not references:
        raise ValueError(f"{source}: no usable reference photo in data.reference_source")
    sources = sorted({reference.source for reference in references})
    order = np.random.default_rng(params["base"]["seed"]).permutation(len(sources))
    chosen = {sources[index] for index in order[:settings["reference_types"]]}
    references = [reference for reference in references if reference.source in chosen]
    for entry in skipped[:10]:
        echo(f"  reference photo skipped {entry['file']}: {entry['reason']}")
    echo(f"generate: {len(chosen)} real reference pill types of {source} ({len(references)} classes, "
         f"faces {settings['reference_faces']}) x {settings['reference_photos_per_type']} composited photos"
         + (f", {len(skipped)} reference photos skipped" if skipped else ""))
    return references, skipped
