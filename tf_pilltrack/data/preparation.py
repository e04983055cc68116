"""The splits of stage `prepare` (tf_pilltrack/stages/prepare.py): read a photo folder (or a zip of
one), crop each pill with the shared preprocessing, and split by class into training, calibration
and novel classes.

Sources are read by `tf_pilltrack.data.ingestion` (folder or zip, manifest, bad files reported and
skipped, the shared preprocessing's crops).

Splits (all deterministic from base.seed):
- training classes: `train` (every usable photo of each class);
- calibration classes (never trained on): `calibration_references` / `calibration_queries`,
  used only to set the unknown-pill threshold;
- novel classes (never trained on): `references` (enrolled in the gallery) and `queries`;
  a fraction of them are absent from the gallery entirely (`absent_queries`, open-set test).
"""

from __future__ import annotations

import pathlib
from collections import defaultdict
from typing import Callable

import numpy as np

from edge_runtime.preprocessing import PreprocessConfig
from tf_pilltrack import paths
from tf_pilltrack.data import dataset
from tf_pilltrack.data.ingestion import ingest, list_source
from tf_pilltrack.settings import Data, Prepare


def _shuffled(items: list, rng: np.random.Generator) -> list:
    order = rng.permutation(len(items))
    return [items[index] for index in order]


def _split_by_group(items: list, count: int, rng: np.random.Generator) -> tuple[list, list]:
    """Take whole photo groups (in seeded order) until `count` items are chosen; the chosen
    ones and the items of the remaining groups. Crops of a chosen group beyond `count` are
    left out of both, so no photo feeds both sides."""
    by_group: dict[str, list] = defaultdict(list)
    for item in items:
        by_group[item[2]].append(item)
    chosen, rest = [], []
    for group in _shuffled(sorted(by_group), rng):
        members = by_group[group]
        if len(chosen) < count:
            chosen.extend(members[: count - len(chosen)])
        else:
            rest.extend(members)
    return chosen, rest


def split_classes(labels: list[str], novel: float, calibration: float, absent: float,
                  rng: np.random.Generator) -> dict[str, list[str]]:
    """Partition class names into training, calibration, novel-in-gallery and absent classes."""
    order = _shuffled(sorted(labels), rng)
    total = len(order)
    novel_count = max(2, round(novel * total))
    calibration_count = max(1, round(calibration * total))
    absent_count = min(novel_count - 1, round(absent * novel_count))
    if novel_count + calibration_count >= total:
        raise ValueError(
            f"{total} usable classes are too few for {novel_count} novel and "
            f"{calibration_count} calibration classes plus training classes"
        )
    # absent classes are a seeded choice among the novel ones, not the first by name: in a set that
    # mixes kinds of pill (pill_..., ref-...) those would all be of one kind
    return {
        "absent": sorted(order[:absent_count]),
        "novel": sorted(order[absent_count:novel_count]),
        "calibration": sorted(order[novel_count:novel_count + calibration_count]),
        "train": sorted(order[novel_count + calibration_count:]),
    }


def _to_split(items: list[tuple[np.ndarray, str, str]], labels: list[str], image_size: int) -> dataset.Split:
    if not items:
        return dataset.empty_split(image_size)
    return dataset.Split(
        np.stack([item[0] for item in items]).astype(np.uint8),
        np.array(labels, dtype=str),
        np.array([item[1] for item in items], dtype=str),
        np.array([item[2] for item in items], dtype=str),
    )


def make_splits(crops: dict[str, list], prepare: Prepare, image_size: int,
                seed: int) -> tuple[dict[str, dataset.Split], dict]:
    """Split the cropped images by the `prepare` section, a choice seeded with base.seed; returns
    the splits (of `image_size` crops) and the class partition."""
    shots = prepare.reference_shots
    rng = np.random.default_rng(seed)
    usable = [label for label, items in crops.items() if len(items) > shots]
    partition = split_classes(usable, prepare.novel_classes, prepare.calibration_classes,
                              prepare.absent_classes, rng)
    parts: dict[str, tuple[list, list]] = {name: ([], []) for name in paths.SPLITS}

    def add(split: str, label: str, items: list) -> None:
        parts[split][0].extend(items)
        parts[split][1].extend([label] * len(items))

    for label in partition["train"]:
        add("train", label, crops[label])
    for kind, references, queries in (("calibration", "calibration_references", "calibration_queries"),
                                      ("novel", "references", "queries")):
        for label in partition[kind]:
            chosen, rest = _split_by_group(crops[label], shots, rng)
            add(references, label, chosen)
            add(queries, label, rest)
    for label in partition["absent"]:
        add("absent_queries", label, crops[label])
    splits = {name: _to_split(items, labels, image_size) for name, (items, labels) in parts.items()}
    partition["too_few_images"] = sorted(set(crops) - set(usable))
    return splits, partition


def prepare_mix(data: Data, config: PreprocessConfig, seed: int, source: pathlib.Path,
                echo: Callable[[str], None]) -> dict:
    """The `mix` split: the usable crops of data.mix_source's training pills, when
    data.mix_ratio is above zero (else empty); {"split", "report"}. data.mix_train_classes of
    its pills train, a seeded choice (at least one); the others are left out of every split, so
    that a real set that is also `episodes.real_source` keeps novel pills to evaluate. The same
    preprocessing as data.source (`config`); the seed is base.seed."""
    image_size = config.image_size
    if data.mix_ratio <= 0:
        return {"split": dataset.empty_split(image_size), "report": None}
    mix_source = pathlib.Path(data.mix_source)
    if mix_source.resolve() == source.resolve():
        raise ValueError(f"{mix_source}: data.mix_source is data.source itself; its novel classes would be "
                         "trained on (set mix_ratio: 0, or another set)")
    if not mix_source.exists():
        raise FileNotFoundError(f"{mix_source}: data.mix_source not found (mix_ratio is {data.mix_ratio})")
    images, groups, skipped = list_source(mix_source)
    ingested = ingest(images, groups, config)
    skipped.extend(ingested.skipped)
    if not ingested.crops:
        raise ValueError(f"{mix_source}: no usable image in data.mix_source")
    trained = choose_mix_classes(sorted(ingested.crops), data.mix_train_classes, seed)
    items = [(label, item) for label in trained for item in ingested.crops[label]]
    split = _to_split([item for _, item in items], [label for label, _ in items], image_size)
    held_out = sorted(set(ingested.crops) - set(trained))
    echo(f"prepare: mix set {mix_source}: {len(split)} crops of {len(trained)} training classes"
         + (f" ({len(held_out)} more left out for evaluation)" if held_out else "")
         + f", {len(skipped)} files skipped; {data.mix_ratio:.0%} of each batch's classes")
    return {"split": split, "report": {
        "source": str(mix_source), "images_found": len(images), "crops_used": len(split),
        "classes": {label: len(ingested.crops[label]) for label in trained},
        "classes_left_out": held_out,
        "skipped": skipped}}


def choose_mix_classes(labels: list[str], fraction: float, seed: int) -> list[str]:
    """`fraction` of `labels` (rounded, at least one), chosen in the order of a permutation
    seeded with `seed`; returned sorted."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"data.mix_train_classes must be within (0, 1], got {fraction}")
    count = min(len(labels), max(1, int(round(fraction * len(labels)))))
    order = np.random.default_rng(seed).permutation(len(labels))
    return sorted(labels[index] for index in order[:count])
