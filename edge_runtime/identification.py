"""Identification: one photo or frame in, which pill it shows out.

`Identifier` holds an interpreter and a verified bundle; `identify_image` localises the pill,
crops it, embeds it and searches the gallery, timing each stage. "No pill found" is a result
(label None), not an exception. `identify_embedding` answers for an embedding made elsewhere:
`combine_views` of several photos of one pill (its two faces), the rule of the evaluation's
multi-photo queries. `Smoother` votes over recent frames so a live view announces a new pill
only once it has been seen steadily.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from typing import NamedTuple

import numpy as np

from edge_runtime import gallery, limits
from edge_runtime.bundle import Bundle, check_model, load_bundle
from edge_runtime.interpreter import embed, make_interpreter
from edge_runtime.preprocessing import Box, Crop, check_rgb, choose_box, crop_square

STAGES = ("localise", "preprocess", "invoke", "search")


class Result(NamedTuple):
    label: str | None  # an enrolled label, gallery.UNKNOWN, or None when no pill was found
    distance: float | None  # cosine distance of the best match; None when no pill was found
    top_k: list  # gallery.Match list, best first, one per distinct label
    box: Box | None  # where the pill is in the image
    timings: dict  # seconds per stage of STAGES that ran
    lookalike: str | None  # a close call, answered unknown: the runner-up within the bundle's look-alike margin
    # of a best match within the threshold (top_k[0] is the other candidate), else None


class Identifier:
    """An interpreter and a bundle, ready to identify pills."""

    def __init__(self, interpreter, bundle: Bundle, top_k: int = 3,
                 threshold: float | None = None, cropped: bool = False):
        """`cropped`: the images are already cropped to one pill (a data set's tight crops, a
        close-up that the pill fills), so the whole image is embedded, never localised. A tight
        crop's border is pill, not background, and the localiser would find a part of it."""
        check_model(bundle, interpreter)
        if not 1 <= top_k <= limits.MAX_TOP_K:
            raise ValueError(f"top_k must be within [1, {limits.MAX_TOP_K}], got {top_k}")
        if threshold is not None and not 0.0 <= threshold <= 2.0:
            raise ValueError(f"threshold must be a cosine distance within [0, 2], got {threshold}")
        self.interpreter = interpreter
        self.bundle = bundle
        self.top_k = top_k
        self.given_threshold = threshold  # None: the bundle's, which a changed gallery keeps
        self.cropped = cropped
        self.threshold = bundle.unknown_threshold if threshold is None else float(threshold)
        # the bundle's preprocessing constants, less localisation for cropped images
        self.preprocess = dataclasses.replace(bundle.preprocess, localise=False) if cropped else bundle.preprocess

    @classmethod
    def open(cls, bundle_dir: str | os.PathLike, threads: int, edgetpu: bool = False,
             top_k: int = 3, threshold: float | None = None, cropped: bool = False) -> "Identifier":
        """Load and verify the bundle, then make its interpreter."""
        bundle = load_bundle(bundle_dir, verify_model=False)
        interpreter = make_interpreter(bundle.model_path, threads, edgetpu)
        return cls(interpreter, bundle, top_k, threshold, cropped)

    def reload(self) -> "Identifier":
        """The same interpreter and settings on the bundle as it is on disk now (after an enroll
        or a remove changed its gallery; the model file is never rewritten, and is checked)."""
        return Identifier(self.interpreter, load_bundle(self.bundle.directory, verify_model=False), self.top_k,
                          self.given_threshold, self.cropped)

    def warm_up(self) -> None:
        """Run each stage once, so that one-off initialisation (OpenCV's, the interpreter's)
        does not count in the first frame's timings."""
        side = 2 * self.bundle.preprocess.image_size
        self._crop(np.zeros((side, side, 3), np.uint8), {})
        size = self.bundle.preprocess.image_size
        embed(self.interpreter, np.zeros((size, size, 3), np.uint8), self.bundle.preprocess.symmetry_views)

    def crop(self, rgb: np.ndarray) -> Crop | None:
        """The model input for an RGB image, or None when no pill is found; the same result
        as `preprocessing.preprocess` with the bundle's constants (localisation off when
        `cropped`)."""
        return self._crop(rgb, {})

    def embed_image(self, rgb: np.ndarray) -> tuple[np.ndarray, Crop] | None:
        """(embedding (E,), crop) of the pill in an RGB image, or None when none is found."""
        crop = self.crop(rgb)
        if crop is None:
            return None
        return embed(self.interpreter, crop.pixels, self.bundle.preprocess.symmetry_views)[0], crop

    def identify_image(self, rgb: np.ndarray) -> Result:
        """Which enrolled pill an (H, W, 3) uint8 RGB image shows."""
        timings: dict[str, float] = {}
        crop = self._crop(rgb, timings)
        if crop is None:
            return Result(None, None, [], None, timings, None)
        start = time.perf_counter()
        embedding = embed(self.interpreter, crop.pixels, self.bundle.preprocess.symmetry_views)[0]
        timings["invoke"] = time.perf_counter() - start
        return self.identify_embedding(embedding, crop.box, timings)

    def identify_embedding(self, embedding: np.ndarray, box: Box | None = None,
                           timings: dict | None = None) -> Result:
        """Which enrolled pill an embedding (E,) is: the gallery search and the naming rule of
        `identify_image`, for an embedding made elsewhere (`combine_views` of several photos).
        `box` and `timings` (to which the search's is added) go into the Result as given."""
        timings = {} if timings is None else timings
        start = time.perf_counter()
        # at least two pills, so a close call between them can be seen
        matches = gallery.search(self.bundle.index, self.bundle.labels, embedding, max(self.top_k, 2),
                                 self.bundle.search_k, self.bundle.rows_per_label)
        label = gallery.identify(matches, self.threshold, self.bundle.lookalike_margin)
        timings["search"] = time.perf_counter() - start
        distance = matches[0].distance if matches else None
        within = bool(matches) and matches[0].distance <= self.threshold
        lookalike = gallery.lookalike(matches, self.bundle.lookalike_margin) if within else None
        return Result(label, distance, matches[:self.top_k], box, timings, lookalike)

    def _crop(self, rgb: np.ndarray, timings: dict) -> Crop | None:
        # preprocessing.preprocess in two timed steps; a test checks they agree.
        check_rgb(rgb)
        config = self.preprocess
        start = time.perf_counter()
        chosen = choose_box(rgb, config)
        timings["localise"] = time.perf_counter() - start
        if chosen is None:
            return None
        box, margin = chosen
        start = time.perf_counter()
        pixels = crop_square(rgb, box, margin, config.image_size)
        timings["preprocess"] = time.perf_counter() - start
        return Crop(pixels, box)


def combine_views(embeddings: np.ndarray) -> np.ndarray:
    """One embedding (E,) for several views (N, E) of one pill, such as its two faces: the mean
    of the views' L2-normalised embeddings, L2-normalised. The evaluation scores its two-photo
    queries by this rule (tf_pilltrack.scoring.episodes.combine_views; one photo against two in
    docs/results.md); a test checks that the two agree."""
    views = gallery.check_embeddings(embeddings)
    views = views / np.maximum(np.linalg.norm(views, axis=1, keepdims=True), 1e-12)
    mean = views.mean(axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


class Smoother:
    """Announces a label once it wins a majority of the last `window` frames' votes, and keeps
    announcing it until another label does; None (no pill) votes too."""

    def __init__(self, window: int = 5):
        if window < 1:
            raise ValueError(f"window must be at least 1 frame, got {window}")
        self.window = window
        self.recent: collections.deque = collections.deque(maxlen=window)
        self.announced: str | None = None

    def update(self, label: str | None) -> str | None:
        """Add one frame's label; return the label announced now."""
        self.recent.append(label)
        leader, votes = collections.Counter(self.recent).most_common(1)[0]
        if votes > self.window // 2:
            self.announced = leader
        return self.announced
