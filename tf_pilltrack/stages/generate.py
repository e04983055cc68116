"""`pilltrack generate`: render the synthetic pill photos and the composited reference pills
(tf_pilltrack.synthesis) into data/synthetic."""

from __future__ import annotations

import pathlib
from typing import Callable

import numpy as np

from tf_pilltrack import paths
from tf_pilltrack.synthesis import composition
from tf_pilltrack.synthesis.generation import generate


def run(params: dict, echo: Callable[[str], None] = print) -> dict:
    """Render data.synthetic_* photos into data/synthetic."""
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
                       references=references, reference_photos=settings["reference_photos_per_type"])
    summary["reference_photos_skipped"] = skipped
    echo(f"generate: {summary['images']} photos of {summary['classes']} pill types in "
         f"{summary['families']} look-alike families and {summary['reference_classes']} real reference "
         f"pill classes, {summary['seconds']:.1f} s")
    return summary


def _load_references(params: dict, echo: Callable[[str], None]) -> tuple[list, list[dict]]:
    """data.reference_types of data.reference_source's pill types (a choice seeded with base.seed),
    or none when either count is 0; and the reference photos skipped, with reasons."""
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
