"""The synthetic data set written to a folder (pill_types.json, boxes.json,
one folder of photos per pill type), rendered class by class in worker processes, replaced
atomically."""

from __future__ import annotations

import json
import multiprocessing
import os
import pathlib
import time
from typing import Callable

import cv2
import numpy as np

from edge_runtime.storage import atomic_folder
from tf_pilltrack.synthesis import composition
from tf_pilltrack.synthesis.limits import (
    MAX_CLASSES,
    MAX_IMAGES_PER_CLASS,
    MAX_PHOTO_SIZE,
    MIN_PHOTO_SIZE,
    check_count,
)
from tf_pilltrack.synthesis.photo import write_photos
from tf_pilltrack.synthesis.pill_types import describe_pill_types

TYPES_FILE = "pill_types.json"
BOXES_FILE = "boxes.json"
FORMAT_VERSION = 1

# Only pools for jobs at least this big: starting workers costs more than small jobs take.
_POOL_MIN_IMAGES = 300


def generate(
    out_dir: pathlib.Path,
    classes: int,
    images_per_class: int,
    photo_size: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
    references: list | None = None,
    reference_photos: int = 0,
) -> dict:
    """Write the synthetic data set to `out_dir`; return {"classes", "families", "images",
    "seconds"}.

    The set is built in a temporary sibling folder and renamed into place at the end
    (edge_runtime.storage.atomic_folder), so a crash leaves no half data set; an existing
    `out_dir` is replaced, but only when it is empty or a previous synthetic data set (it holds
    pill_types.json). `progress(done, total)` is called
    with counts of photos. `workers` processes render classes in parallel (default: one per CPU);
    the output does not depend on it.
    `references` (composition.ReferenceType) are real pills composited into the same scenes,
    `reference_photos` photos each, in class folders of their own (see tf_pilltrack.synthesis.composition).
    """
    started = time.perf_counter()
    check_count("classes", classes, 1, MAX_CLASSES)
    check_count("images_per_class", images_per_class, 1, MAX_IMAGES_PER_CLASS)
    check_count("photo_size", photo_size, MIN_PHOTO_SIZE, MAX_PHOTO_SIZE)
    check_count("seed", seed, 0, None)
    if workers is None:
        workers = os.cpu_count() or 1
    check_count("workers", workers, 1, None)
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
        check_count("reference_photos", reference_photos, 1, MAX_IMAGES_PER_CLASS)
    pill_types = describe_pill_types(classes, seed)
    total = classes * images_per_class + len(references) * reference_photos
    with atomic_folder(out_dir) as staging:
        jobs = [
            ("synthetic", (str(staging), pill_type, index, images_per_class, photo_size, seed))
            for index, pill_type in enumerate(pill_types)
        ] + [
            ("reference", (str(staging), reference, index, int(reference_photos), photo_size, seed))
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
    return {
        "classes": classes,
        "families": len(families),
        "reference_classes": len(references),
        "images": total,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _start_worker() -> None:
    cv2.setNumThreads(1)


def _run_job(job) -> dict[str, list[int]]:
    kind, arguments = job
    if kind == "reference":
        return composition.render_job(arguments)
    return _render_class_job(arguments)


def _render_class_job(job) -> dict[str, list[int]]:
    staging, pill_type, class_index, images_per_class, photo_size, seed = job
    return write_photos(pathlib.Path(staging), pill_type, images_per_class, photo_size, {},
                        lambda image: np.random.default_rng([seed, class_index, image]))


