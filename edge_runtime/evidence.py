"""What the counter page answers from: a pill's frames gathered while it stays still,
and a confidence level in words whose thresholds were measured on real photos.

`Track` follows one pill from frame to frame: as long as its box stays where it was (it has not
moved) and its embedding stays near the track's (it has not been swapped or turned over), each
frame's embedding joins the track, and the answer comes from all of them together, by the rule
of the evaluation's multi-photo queries (`identification.combine_views`), instead of frame by
frame. A pill that moves, leaves or changes starts a new track.

`Tiers` are the page's confidence levels beyond the bundle's naming rule:
- "named": the bundle's rule names the pill (unchanged: sure, or unknown);
- "likely — check it": not named, but the nearest pill is near enough, and far enough ahead of the
  runner-up, that answers like it were right at a measured rate on real held-out photos;
- "not one of your pills / unsure": anything else.
Their thresholds are chosen by the pipeline's `enroll` stage (`tf_pilltrack/scoring/tiers.py`), which
writes them, with what it measured, to TIERS_FILE in the bundle directory, for one model (its
sha256): a bundle whose model has no measured tiers has no "likely" tier (named or unsure only),
and the page says so.

The device client (the counter page) uses this module; the pipeline imports only TIERS_FILE.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import NamedTuple

import numpy as np

from edge_runtime import gallery, storage
from edge_runtime.identification import Result, combine_views
from edge_runtime.preprocessing import Box, PreprocessConfig, localise, touches_edge

TIERS_FILE = "tiers.json"  # in the bundle directory, written by the enroll stage (tf_pilltrack/scoring/tiers.py)
MAX_TIERS_BYTES = 1 << 20
WORDS = {"named": "named", "likely": "likely — check it", "unsure": "not one of your pills / unsure",
         "none": "no pill"}

TRACK_FRAMES = 30  # at most this many recent frames of a still pill are combined
MOVE_FRACTION = 0.25  # the box's centre moving more than this share of its size: the pill moved
RESIZE_FRACTION = 0.3  # the box's side changing by more than this share: another pill, or moved nearer
# A box under this share of the frame: the pill is too small to see well. benchmarks/live_path.py,
# real 5-shot Recall@1 on a 640x480 frame: the crop's longer side 60 px (boxes 1.1% of the frame,
# median) loses 0.21 against 150 px (6.9%), 100 px (2.9%) 0.02; the localiser's own smallest pill
# (the bundle's min_pill_fraction, 0.5%) is under it, so a tip below that could never be shown.
SMALL_FRACTION = 0.015
# Where no pill is found: a blob that stands out as a pill does, under the bundle's smallest pill
# (min_pill_fraction) but at least this share of it, is a pill too far away (60 px: 26% of the frames
# find no pill, every one such a blob; empty trays: none).
FAR_PILL_SHARE = 0.2
LARGE_FRACTION = 0.6  # a box over this share of the frame: too close


class Tiers(NamedTuple):
    likely_distance: float  # "likely": the nearest pill at cosine distance at most this...
    likely_gap: float  # ...and the runner-up at least this much farther
    model_sha256: str  # the model they were measured with
    measured: dict  # what the benchmark measured on held-out photos (shown on the page)


def worth_turning_over(result: Result, level: str) -> bool:
    """Whether the page asks for the pill turned over (its close-call panel): not named, and either
    two enrolled pills about as near (a look-alike), or a "likely" answer that the other face can
    confirm. An unsure answer is not: it is most often a pill that is not enrolled, and another
    face seldom changes that."""
    return level != "named" and (result.lookalike is not None or level == "likely")


def load_tiers(bundle_dir: str, model_sha256: str) -> tuple[Tiers | None, str]:
    """The bundle's measured tiers and a line saying where they come from; (None, why) when the
    bundle has none for its model. A file that is there but malformed is reported the same way
    (the page keeps answering, named or unsure only), naming the problem."""
    path = os.path.join(bundle_dir, TIERS_FILE)
    try:
        data = storage.read_regular(path, MAX_TIERS_BYTES)
    except FileNotFoundError:
        return None, f"no measured tiers for this bundle ({TIERS_FILE} missing): named or unsure only"
    except (OSError, ValueError) as error:
        return None, f"{path}: cannot be read ({error}); named or unsure only"
    try:
        values = json.loads(data)
        tiers = Tiers(float(values["likely_distance"]), float(values["likely_gap"]), str(values["model_sha256"]),
                      dict(values.get("measured", {})))
    except (ValueError, KeyError, TypeError) as error:
        return None, f"{path}: not tiers this client can use ({type(error).__name__}: {error}); named or unsure only"
    if not all(math.isfinite(v) for v in (tiers.likely_distance, tiers.likely_gap)):
        return None, f"{path}: thresholds must be finite numbers; named or unsure only"
    if tiers.model_sha256 != model_sha256:
        return None, (f"{path}: measured for another model ({tiers.model_sha256[:16]}, this bundle's is "
                      f"{model_sha256[:16]}); named or unsure only: the enroll stage (dvc repro) or "
                      "benchmarks/confidence_tiers.py measures them")
    if tiers.likely_distance < 0:
        return tiers, "measured: no threshold reached the targets on held-out photos, so no answer is \"likely\""
    return tiers, "measured on held-out real photos"


def tier(result: Result, tiers: Tiers | None) -> str:
    """"named", "likely", "unsure", or "none" (no pill found) for one answer."""
    if result.label is None or result.distance is None:
        return "none"
    if result.label != gallery.UNKNOWN:
        return "named"
    if tiers is not None and result.top_k and is_likely(result.top_k, tiers):
        return "likely"
    return "unsure"


def is_likely(top_k, tiers: Tiers) -> bool:
    """The "likely" rule on a ranked list of matches (label, distance), best first."""
    first = top_k[0].distance
    second = top_k[1].distance if len(top_k) > 1 else 2.0
    return first <= tiers.likely_distance and second - first >= tiers.likely_gap


class Track:
    """One pill followed from frame to frame while it stays still (the module docstring)."""

    def __init__(self, frames: int = TRACK_FRAMES, change_distance: float = 0.5):
        """`change_distance`: a frame's embedding this far (cosine) from the track's combined one is
        another pill, or another face of it: a new track."""
        if frames < 1:
            raise ValueError(f"a track combines at least 1 frame, got {frames}")
        self.frames = frames
        self.change_distance = change_distance
        self.box: Box | None = None
        self.embeddings: list[np.ndarray] = []
        self.started = 0  # tracks begun so far (the page tells one pill's answer from the next)

    def reset(self) -> None:
        self.box, self.embeddings = None, []

    def update(self, box: Box | None, embedding: np.ndarray | None) -> tuple[np.ndarray | None, int, str | None]:
        """Add one frame (its box and embedding; None, None: no pill). Returns the combined
        embedding of the track's frames, how many, and why a new track began (None: it went on)."""
        if box is None or embedding is None:
            self.reset()
            return None, 0, None
        why = None
        if self.box is not None:
            why = moved(self.box, box)
            if why is None and self.embeddings:
                current = combine_views(np.stack(self.embeddings))
                unit = embedding / max(float(np.linalg.norm(embedding)), 1e-12)
                if 1.0 - float(unit @ current) > self.change_distance:
                    why = "changed"
        if self.box is None or why is not None:
            self.embeddings = []
            self.started += 1
        self.box = box
        self.embeddings = (self.embeddings + [np.asarray(embedding, np.float32)])[-self.frames:]
        return combine_views(np.stack(self.embeddings)), len(self.embeddings), why


def moved(before: Box, after: Box) -> str | None:
    """"moved" when the box's centre moved by more than MOVE_FRACTION of its size, or its size
    changed by more than RESIZE_FRACTION; else None."""
    size = max(before.right - before.left, before.bottom - before.top, 1)
    shift = math.hypot((after.left + after.right - before.left - before.right) / 2,
                       (after.top + after.bottom - before.top - before.bottom) / 2)
    side = max(after.right - after.left, after.bottom - after.top, 1)
    if shift > MOVE_FRACTION * size or abs(side - size) > RESIZE_FRACTION * size:
        return "moved"
    return None


FAR_PILL_TIP = "no pill found, but something small is in view: if it is a pill, bring the camera nearer"


def far_pill_in_view(rgb, config: PreprocessConfig) -> bool:
    """Whether a frame in which the localiser found no pill shows a blob that stands out as a pill
    does but is smaller than the bundle's smallest pill, down to FAR_PILL_SHARE of it: a pill too
    far from the camera. Only the guidance uses it: what is cropped and answered is unchanged (the
    device localises with the bundle's constants, as training did)."""
    if not config.localise:
        return False
    smaller = dataclasses.replace(config, min_pill_fraction=config.min_pill_fraction * FAR_PILL_SHARE)
    return localise(rgb, smaller) is not None


def frame_guidance(rgb, box: Box | None, config: PreprocessConfig, moving: bool) -> list[str]:
    """`guidance` for a frame and the box found in it (None: no pill found, when it looks for a pill
    too far away with the preprocessing constants `config`)."""
    height, width = rgb.shape[:2]
    return guidance(box, width, height, moving, far_pill=box is None and far_pill_in_view(rgb, config))


def guidance(box: Box | None, width: int, height: int, moving: bool, far_pill: bool = False) -> list[str]:
    """What the frame says about how the pill is shown, in words staff can act on. `far_pill`: no
    pill was found (`box` None) but `far_pill_in_view` saw a small one."""
    if box is None:
        return [FAR_PILL_TIP] if far_pill else []
    tips = []
    share = (box.right - box.left) * (box.bottom - box.top) / float(max(width * height, 1))
    if touches_edge(box, width, height):
        tips.append("the pill is partly out of view (or merges with the background): move it to the middle "
                    "of a plain tray of another colour")
    elif share < SMALL_FRACTION:
        tips.append("the pill is small in the view: bring the camera nearer")
    elif share > LARGE_FRACTION:
        tips.append("the pill is too close: move the camera back")
    if moving:
        tips.append("hold the pill still: the answer gathers evidence while it does not move")
    return tips
