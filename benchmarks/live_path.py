"""What the live view loses against the crops, condition by condition (issue 36).

The photos: the shipped pushin_pill phone-photo crops (data/real/pushin_pill.zip, 557 crops of 17
pills, never trained on). Each is shown to the device's own code path as a live frame
(`Identifier.embed_image`: localise, crop, invoke, with the bundle's model and preprocessing
constants) in one condition at a time, the others as on the demo clip (a 640x480 grey tray, the
crop's longer side 150 px, turned up to 45 degrees, at a random place, still, the bundle's crop
margin):

- the crops embedded whole (`pilltrack-edge --cropped`): the ceiling;
- on the grey tray at the clip's scale: the live path today; and not turned;
- scale: the crop's longer side at SIDES px in the frame;
- motion blur: a straight blur BLURS px long, in a random direction;
- crop margin: the localiser's margin around the pill (the bundle's `preprocess.crop_margin`,
  changed here only: a margin that training used too cannot be changed without retraining);
- the trays of benchmarks/live_localisation.py;
- symmetric views: the crops whole embedded in VIEWS quarter turns averaged instead of the bundle's
  `preprocess.symmetry_views` (gallery and queries alike, as a device with that setting would):
  per identification a microcontroller runs one inference per view.

Every condition draws the same places and turns (one seeded generator), and its own tray noise.

Beside the score, the capture guidance the page shows for each frame (`evidence.frame_guidance`,
the counter's own call): the share of frames told to bring the camera nearer (the pill small in the
view, or no pill found but one too far away), and the same on EMPTY_FRAMES empty frames of each
tray (a false alarm).

The score: real 5-shot Recall@1. In each seeded episode every pill is enrolled from 5 photos, each
from another source photo (tf_pilltrack.scoring.tiers.episode_answers), and every photo of the
pills from the other source photos is a query; right when the nearest enrolled pill (by its nearest
gallery photo) is the pill. The photos, the seed and the shots are the enroll stage's tiers'
(`episodes.real_source`, `enroll.tiers.seed`, `enroll.tiers.shots` of --params). A frame where no pill is found is answered wrong. Two galleries: one
enrolled in the same condition as the queries (a counter that enrols through the same camera), and
one enrolled as on the page today (grey tray, 150 px, still): the queries' condition against a
gallery made the usual way.

    .venv-edge/bin/python -m benchmarks.live_path                       # project root; 10 minutes on 2 busy cores
    .venv-edge/bin/python -m benchmarks.live_path --bundle bundle --episodes 20 --out /tmp/live_path.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys

import cv2
import numpy as np

from benchmarks.live_localisation import tray_image
from tf_pilltrack import params as params_module
from tf_pilltrack.scoring import tray as demo_tray  # the demo clip's tray and placing
from tf_pilltrack.scoring.tiers import embed_photos, pooled

GREY = "grey (the clip's)"
TRAYS = (GREY, "white paper", "blue tray", "green mat", "wood texture", "the pill's own colour")
SIDES = (60, 80, 100, 150, 250)  # the crop's longer side in the 640x480 frame, px (the clip's: 150)
BLURS = (0, 5, 11, 21)  # motion blur length, px
MARGINS = (0.0, 0.05, 0.15, 0.3)  # the localiser's crop margin (the bundle's: 0.15)
VIEWS = (1, 2, 4)  # symmetric views averaged per photo (the bundle's: preprocess.symmetry_views)
EPISODES = 20
EMPTY_FRAMES = 100  # empty frames of each tray, for the guidance's false alarms


@dataclasses.dataclass(frozen=True)
class Condition:
    name: str
    group: str
    cropped: bool = False  # the crops whole, not placed in a frame
    tray: str = GREY
    side: int = 150
    turned: bool = True
    blur: int = 0
    margin: float | None = None  # None: the bundle's
    views: int | None = None  # symmetric views; None: the bundle's


def conditions(bundle_margin: float, bundle_views: int) -> list[Condition]:
    """The conditions measured, the live path today second (the reference of every group)."""
    found = [Condition("crops whole (--cropped): the ceiling", "ceiling", cropped=True),
             Condition("grey tray, 150 px, still: the live path today", "today"),
             Condition("grey tray, not turned", "turn", turned=False)]
    found += [Condition(f"pill {side} px", "scale", side=side) for side in SIDES if side != 150]
    found += [Condition(f"motion blur {length} px", "blur", blur=length) for length in BLURS if length]
    found += [Condition(f"crop margin {margin:g}", "margin", margin=margin) for margin in MARGINS
              if not math.isclose(margin, bundle_margin)]
    found += [Condition(f"tray: {tray}", "tray", tray=tray) for tray in TRAYS if tray != GREY]
    found += [Condition(f"crops whole, {views} views", "views", cropped=True, views=views) for views in VIEWS
              if views != bundle_views]
    return found


def motion_blur(frame: np.ndarray, length: int, angle: float) -> np.ndarray:
    """A straight motion blur `length` px long at `angle` degrees (the camera or the pill moving
    during the exposure); length 0 or 1 leaves the frame as it is."""
    if length <= 1:
        return frame
    kernel = np.zeros((length, length), np.float32)
    centre, radians = (length - 1) / 2.0, math.radians(angle)
    dx, dy = math.cos(radians) * centre, math.sin(radians) * centre
    cv2.line(kernel, (round(centre - dx), round(centre - dy)), (round(centre + dx), round(centre + dy)), 1.0, 1)
    kernel /= kernel.sum()
    return cv2.filter2D(frame, -1, kernel, borderType=cv2.BORDER_REFLECT)


def renderer(condition: Condition, seed: int):
    """`render(crop, generator)` for embed_photos: the crop placed on the condition's tray.
    The place, turn and blur direction come from `generator` (the same draws in every condition),
    the tray's noise from a generator of its own."""
    noise = np.random.default_rng(seed + 1)

    def render(crop, generator):
        clip = demo_tray
        square = math.ceil(condition.side * math.sqrt(2)) + 2  # the turned crop's canvas, at most
        reach_x = max(0.0, min(80.0, (clip.WIDTH - square) / 2 - 1))
        reach_y = max(0.0, min(60.0, (clip.HEIGHT - square) / 2 - 1))
        place_x, place_y, turn, direction = generator.uniform(-1, 1), generator.uniform(-1, 1), \
            generator.uniform(-45, 45), generator.uniform(0, 180)
        centre = (clip.WIDTH / 2 + place_x * reach_x, clip.HEIGHT / 2 + place_y * reach_y)
        frame = clip.place(tray_image(condition.tray, noise, clip, crop), crop, centre,
                           turn if condition.turned else 0.0, side=condition.side)
        return motion_blur(frame, condition.blur, direction)

    return render


def identifier_for(identifier, condition: Condition):
    """The device's Identifier for a condition: the same interpreter and bundle, the crops whole
    (`cropped`), or the bundle's preprocessing constants with another crop margin."""
    from edge_runtime.identification import Identifier

    bundle = identifier.bundle
    if condition.margin is not None:
        bundle = dataclasses.replace(bundle, preprocess=dataclasses.replace(bundle.preprocess,
                                                                            crop_margin=condition.margin))
    if condition.views is not None:
        bundle = dataclasses.replace(bundle, preprocess=dataclasses.replace(bundle.preprocess,
                                                                            symmetry_views=condition.views))
    return Identifier(identifier.interpreter, bundle, cropped=condition.cropped)


class Observed:
    """An Identifier whose `embed_image` also notes the capture guidance the page shows for the frame."""

    def __init__(self, identifier):
        self.identifier, self.bundle, self.tips = identifier, identifier.bundle, []

    def embed_image(self, rgb):
        from edge_runtime import evidence

        found = self.identifier.embed_image(rgb)
        self.tips.append(evidence.frame_guidance(rgb, None if found is None else found[1].box,
                                                 self.identifier.preprocess, moving=False))
        return found


def told_nearer(tips: list) -> float:
    """The share of frames whose guidance asks for the camera nearer."""
    from edge_runtime import evidence

    nearer = [any(tip == evidence.FAR_PILL_TIP or "bring the camera nearer" in tip for tip in frame) for frame in tips]
    return float(np.mean(nearer)) if nearer else float("nan")


def recall_at_1(answers: dict) -> tuple[float, int]:
    """Recall@1 of the enrolled pills' queries in pooled episode answers, and their number."""
    enrolled = answers["enrolled"]
    count = int(enrolled.sum())
    return (float(answers["right"][enrolled].mean()) if count else float("nan")), count


def empty_trays(identifier, seed: int) -> dict:
    """For each tray, the share of EMPTY_FRAMES empty frames told to bring the camera nearer."""
    clip, shares = demo_tray, {}
    for tray in TRAYS:
        noise, observed = np.random.default_rng(seed), Observed(identifier)
        colour = np.full((8, 8, 3), (200, 190, 170), np.uint8)  # "the pill's own colour": a pale pill's
        for _ in range(EMPTY_FRAMES):
            observed.embed_image(tray_image(tray, noise, clip, colour))
        shares[tray] = told_nearer(observed.tips)
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="bundle", help="the bundle whose model to measure (default: bundle)")
    parser.add_argument("--params", default="params.yaml", help="settings: episodes.real_source, enroll.tiers")
    parser.add_argument("--episodes", type=int, default=EPISODES, help=f"seeded episodes (default {EPISODES})")
    parser.add_argument("--only", help="measure only the conditions of these groups (comma-separated: "
                                       "ceiling, today, turn, scale, blur, margin, tray, views)")
    parser.add_argument("--out", help="also write the figures here (JSON)")
    args = parser.parse_args()
    params = params_module.load(args.params)
    source, seed, shots = params["episodes"]["real_source"], params["enroll"]["tiers"]["seed"], params["enroll"]["tiers"]["shots"]

    from edge_runtime.identification import Identifier

    base = Identifier.open(args.bundle, threads=1)
    chosen = conditions(base.bundle.preprocess.crop_margin, base.bundle.preprocess.symmetry_views)
    if args.only:
        groups = {"today", *args.only.split(",")}
        chosen = [condition for condition in chosen if condition.group in groups]
    embedded, nearer = {}, {}
    for condition in chosen:
        identifier = Observed(identifier_for(base, condition))
        embedded[condition.name] = embed_photos(identifier, source, seed, condition.cropped,
                                                None if condition.cropped else renderer(condition, seed),
                                                keep_missed=True)
        nearer[condition.name] = None if condition.cropped else told_nearer(identifier.tips)
        print(f"embedded: {condition.name}", file=sys.stderr, flush=True)
    today = next(condition.name for condition in chosen if condition.group == "today")
    pills = sorted(set(embedded[today]["pills"].tolist()))
    rows, ceiling = [], None
    for condition in chosen:
        data = embedded[condition.name]
        figures = {"condition": condition.name, "group": condition.group, "no_pill_found": data["missed"],
                   "photos": len(data["pills"]), "told_nearer": nearer[condition.name]}
        for key, gallery in (("same_gallery", data), ("today_gallery", embedded[today])):
            answers = pooled(data, pills, args.episodes, len(pills), shots, seed, 0.0, 0.0, gallery_data=gallery)
            figures[key], figures["queries"] = recall_at_1(answers)
        if condition.group == "ceiling":
            ceiling = figures["same_gallery"]
        rows.append(figures)
    print(f"real {shots}-shot, every pill enrolled ({len(pills)} pills), {args.episodes} seeded episodes; Recall@1, "
          f"with the gallery enrolled in the same condition / as on the page today; Δ against the crops' ceiling")
    print(f"{'condition':<48} {'same':>6} {'Δ':>7} {'today':>6} {'Δ':>7} {'queries':>8} {'no pill':>8} {'nearer':>7}")
    for figures in rows:
        if ceiling is not None:
            figures["delta_same"] = figures["same_gallery"] - ceiling
            figures["delta_today"] = figures["today_gallery"] - ceiling
        shown = "" if figures["told_nearer"] is None else f"{figures['told_nearer']:7.1%}"
        print(f"{figures['condition']:<48} {figures['same_gallery']:6.3f} {figures.get('delta_same', math.nan):+7.3f} "
              f"{figures['today_gallery']:6.3f} {figures.get('delta_today', math.nan):+7.3f} "
              f"{figures['queries']:8d} {figures['no_pill_found'] / figures['photos']:8.1%} {shown:>7}")
    empty = empty_trays(base, seed)
    print(f"empty trays ({EMPTY_FRAMES} frames each), told to bring the camera nearer: "
          + ", ".join(f"{tray} {share:.1%}" for tray, share in empty.items()))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"made_by": "python -m benchmarks.live_path " + " ".join(sys.argv[1:]),
                       "episodes": args.episodes, "pills": len(pills), "shots": shots, "rows": rows,
                       "empty_trays_told_nearer": empty}, handle, indent=1)


if __name__ == "__main__":
    main()
