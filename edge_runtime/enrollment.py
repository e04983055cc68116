"""Enrollment: add a pill to a bundle's gallery, remove one, list them.

Each change runs under the bundle's exclusive lock, reads the current gallery, rebuilds the
index deterministically (same trees and seed) and commits a new bundle atomically; the model
file is not rewritten. Embeddings come from `interpreter.embed` on preprocessed photos.
"""

from __future__ import annotations

import collections
import os

import numpy as np

from edge_runtime import gallery, limits
from edge_runtime.bundle import load_bundle, update_gallery
from edge_runtime.interpreter import l2_normalise
from edge_runtime.limits import shown


def enroll(bundle_dir: str | os.PathLike, label: str, embeddings: np.ndarray, new_gallery: bool = False) -> int:
    """Add rows of `embeddings` (N, E) to the gallery under `label`; a label enrolled before
    gains the new rows. With `new_gallery`, they replace the whole gallery instead (every pill
    enrolled before is removed in the same atomic change). Returns how many rows the label has now.

    Labels are normalised and matched as gallery.check_label and gallery.label_key say: a label
    enrolled before under another case (`Ibuprofen`, `ibuprofen`) gains the rows under its first
    spelling. More than limits.MAX_ENROLL_PHOTOS rows, or a gallery over limits.MAX_GALLERY_ROWS
    rows or limits.MAX_PILLS pills, is refused before anything is written."""
    label = gallery.check_label(label)
    embeddings = l2_normalise(gallery.check_embeddings(embeddings))
    if len(embeddings) > limits.MAX_ENROLL_PHOTOS:
        raise ValueError(f"{len(embeddings)} photos in one enroll, over the limit of {limits.MAX_ENROLL_PHOTOS}")
    spelling = label

    def add(current, labels):
        nonlocal spelling
        if embeddings.shape[1] != current.shape[1]:
            raise ValueError(f"embeddings have {embeddings.shape[1]} dimensions, "
                             f"the gallery's {current.shape[1]}")
        if new_gallery:
            return embeddings, [label] * len(embeddings)
        spelling = gallery.find_label(dict.fromkeys(labels), label) or label
        if len(labels) + len(embeddings) > limits.MAX_GALLERY_ROWS:
            raise ValueError(f"the gallery would have {len(labels) + len(embeddings)} rows (photos), over the "
                             f"limit of {limits.MAX_GALLERY_ROWS}; remove a pill first")
        return np.concatenate([current, embeddings]), list(labels) + [spelling] * len(embeddings)

    sidecar = update_gallery(bundle_dir, add)
    return sidecar["rows"].count(sidecar["labels"].index(spelling))


def enrolled_spelling(labels, label: str) -> str:
    """The spelling under which the normalised `label` is enrolled among `labels` (any case, as
    gallery.find_label matches), or ValueError saying it is not enrolled."""
    spelling = gallery.find_label(dict.fromkeys(labels), label)
    if spelling is None:
        raise ValueError(f"{shown(label)} is not enrolled")
    return spelling


def remove(bundle_dir: str | os.PathLike, label: str) -> int:
    """Remove every row of `label` (matched as gallery.label_key says: `IBUPROFEN` removes
    `Ibuprofen`) from the gallery; returns how many were removed.
    Raises ValueError when the label is not enrolled or is the gallery's only one."""
    label = gallery.normalise_label(label)
    removed = 0

    def drop(current, labels):
        nonlocal removed
        spelling = enrolled_spelling(labels, label)
        keep = np.array([existing != spelling for existing in labels])
        removed = int((~keep).sum())
        if not keep.any():
            raise ValueError(f"{spelling!r} is the only enrolled pill; a gallery cannot be empty")
        return current[keep], [existing for existing in labels if existing != spelling]

    update_gallery(bundle_dir, drop)
    return removed


def list_labels(bundle_dir: str | os.PathLike) -> dict[str, int]:
    """Enrolled labels, sorted, with their number of gallery rows (photos)."""
    counts = collections.Counter(load_bundle(bundle_dir, verify_model=False).labels)
    return dict(sorted(counts.items()))
