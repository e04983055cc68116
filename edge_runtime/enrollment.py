"""Enrollment: add a pill to a bundle's gallery, remove one, list them.

Each change runs under the bundle's exclusive lock, reads the current gallery, rebuilds the
index deterministically (same trees and seed) and commits a new bundle atomically; the model
file is not rewritten. Embeddings come from `interpreter.embed` on preprocessed photos.
"""

from __future__ import annotations

import collections
import os

import numpy as np

from edge_runtime import gallery
from edge_runtime.bundle import load_bundle, update_gallery
from edge_runtime.interpreter import l2_normalise


def enroll(bundle_dir: str | os.PathLike, label: str, embeddings: np.ndarray, new_gallery: bool = False) -> int:
    """Add rows of `embeddings` (N, E) to the gallery under `label`; a label enrolled before
    gains the new rows. With `new_gallery`, they replace the whole gallery instead (every pill
    enrolled before is removed in the same atomic change). Returns how many rows the label has now."""
    label = gallery.check_label(label)
    embeddings = l2_normalise(gallery.check_embeddings(embeddings))

    def add(current, labels):
        if embeddings.shape[1] != current.shape[1]:
            raise ValueError(f"embeddings have {embeddings.shape[1]} dimensions, "
                             f"the gallery's {current.shape[1]}")
        if new_gallery:
            return embeddings, [label] * len(embeddings)
        return np.concatenate([current, embeddings]), list(labels) + [label] * len(embeddings)

    sidecar = update_gallery(bundle_dir, add)
    return sidecar["labels"].count(label)


def remove(bundle_dir: str | os.PathLike, label: str) -> int:
    """Remove every row of `label` from the gallery; returns how many were removed.
    Raises ValueError when the label is not enrolled or is the gallery's only one."""
    removed = 0

    def drop(current, labels):
        nonlocal removed
        keep = np.array([existing != label for existing in labels])
        removed = int((~keep).sum())
        if removed == 0:
            raise ValueError(f"{label!r} is not enrolled")
        if not keep.any():
            raise ValueError(f"{label!r} is the only enrolled pill; a gallery cannot be empty")
        return current[keep], [existing for existing in labels if existing != label]

    update_gallery(bundle_dir, drop)
    return removed


def list_labels(bundle_dir: str | os.PathLike) -> dict[str, int]:
    """Enrolled labels, sorted, with their number of gallery rows (photos)."""
    counts = collections.Counter(load_bundle(bundle_dir, verify_model=False).labels)
    return dict(sorted(counts.items()))
