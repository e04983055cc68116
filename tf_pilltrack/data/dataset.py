"""Prepared splits on disk: uint8 pill crops with their labels and source files (one .npz per
split), written atomically. No TensorFlow here."""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from edge_runtime.storage import atomic_writer
from tf_pilltrack import paths

# Class names of real reference pills composited into the synthetic scenes (stage `generate`,
# tf_pilltrack/synthesis/composition.py): REFERENCE_PREFIX + type; the other synthetic classes are drawn pills.
REFERENCE_PREFIX = "ref-"


class Split(NamedTuple):
    pixels: np.ndarray  # (N, S, S, 3) uint8 RGB crops, the output of preprocessing.preprocess
    labels: np.ndarray  # (N,) str class names
    sources: np.ndarray  # (N,) str source file of each crop
    groups: np.ndarray  # (N,) str source photo of each crop (crops of one photo share it)

    def __len__(self) -> int:
        return len(self.labels)


def empty_split(image_size: int) -> Split:
    return Split(
        np.zeros((0, image_size, image_size, 3), np.uint8),
        np.zeros((0,), str),
        np.zeros((0,), str),
        np.zeros((0,), str),
    )


def save_split(path: str | os.PathLike, split: Split) -> None:
    with atomic_writer(path) as handle:
        np.savez(
            handle,
            pixels=split.pixels,
            labels=split.labels.astype(str),
            sources=split.sources.astype(str),
            groups=split.groups.astype(str),
        )


def load_split(name: str) -> Split:
    """Load a prepared split by name (see paths.SPLITS)."""
    with _open_split(name) as data:
        return Split(data["pixels"], data["labels"], data["sources"], data["groups"])


def load_labels(name: str) -> np.ndarray:
    """A prepared split's labels alone: its photos are not read (an .npz member is read when asked for)."""
    with _open_split(name) as data:
        return data["labels"]


def _open_split(name: str):
    path = paths.split_file(name)
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; run `dvc repro prepare` first") from None


def label_indices(labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Integer class ids in sorted-name order, and the names."""
    names = sorted(set(labels.tolist()))
    lookup = {name: index for index, name in enumerate(names)}
    return np.array([lookup[label] for label in labels.tolist()], np.int32), names


def batch_classes(requested: int, labels: np.ndarray) -> int:
    """Classes each training batch samples: `requested` (`classes_per_batch` in params.yaml), or
    every training class when a data set has fewer (a pharmacy's own set of a dozen pills), since
    the sampler cannot draw more classes than exist. Needs at least two classes."""
    count = len(set(np.asarray(labels).tolist()))
    if count < 2:
        raise ValueError(f"training needs photos of at least 2 pill classes, the training split has {count}")
    return min(int(requested), count)
