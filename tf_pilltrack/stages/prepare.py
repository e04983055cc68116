"""`pilltrack prepare`: crop the photos of data.source and split them by class
(tf_pilltrack.data.preparation) into data/prepared; write reports/data_report.json."""

from __future__ import annotations

import json
import pathlib
import shutil
import time
from collections import Counter
from typing import Callable

import numpy as np

from edge_runtime.storage import write_atomically
from tf_pilltrack import paths, settings
from tf_pilltrack.data import dataset
from tf_pilltrack.data.ingestion import empty_class_folders, ingest, list_source
from tf_pilltrack.data.preparation import make_splits, prepare_mix


def run(params: dict, echo: Callable[[str], None] = print) -> dict:
    """Ingest data.source, write the splits and reports/data_report.json; return the report."""
    started = time.time()
    every = settings.from_params(params)
    config = every.preprocess_config
    source = pathlib.Path(every.data.source)
    images, groups, skipped = list_source(source)
    echo(f"prepare: {len(images)} images in {len({image.label for image in images})} class folders of {source}")

    def progress(done: int, total: int) -> None:
        if done % 1000 == 0 or done == total:
            echo(f"  read {done}/{total}")

    ingested = ingest(images, groups, config, progress)
    skipped.extend(ingested.skipped)
    empty = sorted({image.label for image in images} - set(ingested.crops))
    splits, partition = make_splits(ingested.crops, every.prepare, every.profile.image_size, every.base.seed)
    mix = prepare_mix(every.data, config, every.base.seed, source, echo)
    splits["mix"] = mix["split"]
    paths.PREPARED.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        dataset.save_split(paths.split_file(name), split)
    if every.training.input == "stream":  # the training stages then read these, not the splits
        from tf_pilltrack.data import shards  # TensorFlow, for its TFRecord writer: only when it is needed

        shards.write_shards(splits["train"], splits["mix"], paths.SHARDS)
    else:
        shutil.rmtree(paths.SHARDS, ignore_errors=True)  # a stream run's files would be stale
    sizes = np.array(ingested.sizes or [(0, 0)])
    report = {
        "source": str(source),
        "images_found": len(images),
        "images_used": int(sum(len(items) for items in ingested.crops.values())),
        "skipped": skipped,
        "skipped_by_reason": dict(Counter(entry["reason"].split(" (")[0] for entry in skipped)),
        "classes_without_usable_images": empty,
        "empty_class_folders": empty_class_folders(source),
        "classes": {label: len(items) for label, items in sorted(ingested.crops.items())},
        "class_partition": partition,
        "split_sizes": {name: len(split) for name, split in splits.items()},
        "image_size_spread": {
            "width": {"min": int(sizes[:, 0].min()), "median": float(np.median(sizes[:, 0])), "max": int(sizes[:, 0].max())},
            "height": {"min": int(sizes[:, 1].min()), "median": float(np.median(sizes[:, 1])), "max": int(sizes[:, 1].max())},
        },
        # null without localisation; most crops at the edge: the photos are likely tight crops already
        # (with localise: auto, these photos were used whole)
        "localised_pill_at_image_edge": ingested.at_edge if config.localise else None,
        "mix": mix["report"],
        "seconds": round(time.time() - started, 1),
    }
    paths.REPORTS.mkdir(parents=True, exist_ok=True)
    write_atomically(paths.REPORTS / "data_report.json", json.dumps(report, indent=2).encode())
    for entry in skipped[:20]:
        echo(f"  skipped {entry['file']}: {entry['reason']}")
    if len(skipped) > 20:
        echo(f"  ... and {len(skipped) - 20} more skipped files (reports/data_report.json)")
    if config.localise is True and ingested.at_edge > report["images_used"] / 2:
        echo(f"prepare: in {ingested.at_edge} of {report['images_used']} crops the pill found touches the photo's "
             "edge: if the photos are tight crops of one pill already, set preprocess.localise: auto or false "
             "(the localiser looks for a pill against a background, and finds a part of a tight crop's pill)")
    echo(
        f"prepare: {report['images_used']} crops used, {len(skipped)} skipped; classes: "
        f"{len(partition['train'])} training, {len(partition['calibration'])} calibration, "
        f"{len(partition['novel'])} novel in gallery, {len(partition['absent'])} absent; "
        + ", ".join(f"{name} {size}" for name, size in report["split_sizes"].items())
    )
    return report
