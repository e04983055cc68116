"""`pilltrack generate`: render the synthetic pill photos and the composited reference pills
(tf_pilltrack.synthesis) into data/synthetic."""

from __future__ import annotations

import pathlib
from typing import Callable

import numpy as np

from tf_pilltrack import paths, settings as settings_module
from tf_pilltrack.settings import Data
from tf_pilltrack.synthesis import composition
from tf_pilltrack.synthesis.generation import generate


def run(params: dict, echo: Callable[[str], None] = print) -> dict:
    """Render data.synthetic_* photos into data/synthetic."""
    every = settings_module.from_params(params)
    data = every.data
    total = data.synthetic_classes * data.synthetic_images_per_class

    printed = [0]

    def progress(done: int, count: int) -> None:  # called once per pill type rendered
        if done - printed[0] >= 1000 or done == count:
            printed[0] = done
            echo(f"  rendered {done}/{count} photos")

    echo(f"generate: {data.synthetic_classes} pill types x {data.synthetic_images_per_class} "
         f"photos of {data.synthetic_photo_size} px ({total} photos)")
    references, skipped = _load_references(data, every.base.seed, echo)
    summary = generate(paths.SYNTHETIC, data.synthetic_classes, data.synthetic_images_per_class,
                       data.synthetic_photo_size, every.base.seed, progress=progress,
                       references=references, reference_photos=data.reference_photos_per_type)
    summary["reference_photos_skipped"] = skipped
    echo(f"generate: {summary['images']} photos of {summary['classes']} pill types in "
         f"{summary['families']} look-alike families and {summary['reference_classes']} real reference "
         f"pill classes, {summary['seconds']:.1f} s")
    return summary


def _load_references(data: Data, seed: int, echo: Callable[[str], None]) -> tuple[list, list[dict]]:
    """data.reference_types of data.reference_source's pill types (a choice seeded with base.seed),
    or none when either count is 0; and the reference photos skipped, with reasons."""
    if data.reference_types == 0 or data.reference_photos_per_type == 0:
        return [], []
    source = pathlib.Path(data.reference_source)
    references, skipped = composition.load(source, data.reference_faces, data.max_image_pixels)
    if not references:
        raise ValueError(f"{source}: no usable reference photo in data.reference_source")
    sources = sorted({reference.source for reference in references})
    order = np.random.default_rng(seed).permutation(len(sources))
    chosen = {sources[index] for index in order[:data.reference_types]}
    references = [reference for reference in references if reference.source in chosen]
    for entry in skipped[:10]:
        echo(f"  reference photo skipped {entry['file']}: {entry['reason']}")
    echo(f"generate: {len(chosen)} real reference pill types of {source} ({len(references)} classes, "
         f"faces {data.reference_faces}) x {data.reference_photos_per_type} composited photos"
         + (f", {len(skipped)} reference photos skipped" if skipped else ""))
    return references, skipped
