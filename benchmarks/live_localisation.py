"""What the live view's localiser finds on trays of different colours and textures.

A user saw the box cover only the red half of two-colour capsules on a blue tray. This
measures it without any model: every shipped real pill crop (data/real/pushin_pill.zip, 557) is
placed on a tray at the demo clip's scale (`tf_pilltrack/scoring/tray.py`'s `place`, as the demo clip: 150 px, turned), and
the device's localiser (`preprocessing.choose_box`, the bundle's constants) is scored against the
pasted crop's own box: intersection over union (IoU), the share of pills it finds with IoU >= 0.5
(the crop would show the pill), the share where it finds only part of the pill (the box inside the
pill's, under half its area), and no pill found.

Trays: the clip's plain grey, a white paper, a blue counting tray, a green mat, a wood-like texture,
and the pill's own colour (a tray that merges with the pill: the median colour of the crop's border).

    .venv-edge/bin/python -m benchmarks.live_localisation                 # project root
    .venv-edge/bin/python -m benchmarks.live_localisation --bundle bundle --out /tmp/localisation.json
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib

import numpy as np

from tf_pilltrack.scoring import tray as demo_tray  # the demo clip's tray and placing

SOURCE = pathlib.Path(__file__).resolve().parents[1] / "data" / "real" / "pushin_pill.zip"

TRAYS = {"grey (the clip's)": (178, 182, 186), "white paper": (236, 236, 232), "blue tray": (70, 120, 200),
         "green mat": (60, 130, 80)}


def tray_image(kind, generator, clip, pill: np.ndarray) -> np.ndarray:
    if kind == "wood texture":
        rows = np.linspace(0, 40 * math.pi, clip.HEIGHT)[:, None] + generator.normal(0, 0.3, (clip.HEIGHT, clip.WIDTH))
        grain = (np.sin(rows) * 0.5 + 0.5)[..., None]
        frame = (np.array([150, 105, 60]) * (0.75 + 0.35 * grain)).clip(0, 255)
        return frame.astype(np.uint8)
    if kind == "the pill's own colour":
        border = np.concatenate([pill[0], pill[-1], pill[:, 0], pill[:, -1]])
        colour = np.median(border, axis=0)
    else:
        colour = np.array(TRAYS[kind], float)
    frame = np.empty((clip.HEIGHT, clip.WIDTH, 3), np.float32)
    frame[:] = colour
    frame += generator.normal(0.0, 2.0, frame.shape)
    return frame.clip(0, 255).astype(np.uint8)


def pasted_box(clip, pill: np.ndarray, centre, angle) -> tuple[float, float, float, float]:
    """The bounding box of the turned, scaled crop as `place` pastes it."""
    scale = clip.PILL_SIDE / max(pill.shape[:2])
    width, height = pill.shape[1] * scale, pill.shape[0] * scale
    radians = math.radians(angle)
    half_w = (abs(width * math.cos(radians)) + abs(height * math.sin(radians))) / 2
    half_h = (abs(width * math.sin(radians)) + abs(height * math.cos(radians))) / 2
    return centre[0] - half_w, centre[1] - half_h, centre[0] + half_w, centre[1] + half_h


def iou(a, b) -> float:
    left, top, right, bottom = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, right - left) * max(0.0, bottom - top)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="take the localiser's constants from this bundle (default: params.yaml's)")
    parser.add_argument("--out", help="also write the figures here (JSON)")
    args = parser.parse_args()

    from edge_runtime.preprocessing import PreprocessConfig, choose_box, localise

    if args.bundle:
        from edge_runtime.bundle import load_bundle

        config = load_bundle(args.bundle, verify_model=False).preprocess
    else:
        config = PreprocessConfig(64, "auto", 0.005, 0.9, 0.15, 50_000_000, 2)  # params.yaml's preprocess
    clip = demo_tray
    archive, rows = demo_tray.read_set(SOURCE)
    rows = sorted(rows, key=lambda r: r["crop"])
    crops = [clip.crop_rgb(archive, row) for row in rows]
    figures = {}
    for kind in [*TRAYS, "wood texture", "the pill's own colour"]:
        generator = np.random.default_rng(36)
        scores, partial, missed, edge = [], 0, 0, 0
        for pill in crops:
            centre = (clip.WIDTH / 2 + generator.uniform(-80, 80), clip.HEIGHT / 2 + generator.uniform(-60, 60))
            angle = generator.uniform(-45, 45)
            frame = clip.place(tray_image(kind, generator, clip, pill), pill, centre, angle)
            truth = pasted_box(clip, pill, centre, angle)
            found = localise(frame, config)
            chosen = choose_box(frame, config)
            if chosen is None:
                missed += 1
                scores.append(0.0)
                continue
            box = chosen[0]
            if box == (0, 0, clip.WIDTH, clip.HEIGHT):
                edge += 1  # the localiser's box touched the frame's edge: AUTO takes the whole frame
            value = iou(truth, tuple(box))
            scores.append(value)
            if found is not None:
                area = (found.right - found.left) * (found.bottom - found.top)
                truth_area = (truth[2] - truth[0]) * (truth[3] - truth[1])
                if iou(truth, tuple(found)) < 0.5 and area < 0.5 * truth_area:
                    partial += 1
        count = len(crops)
        figures[kind] = {"mean_iou": round(float(np.mean(scores)), 3),
                         "found_iou_0_5": round(float(np.mean(np.array(scores) >= 0.5)), 3),
                         "part_of_the_pill": round(partial / count, 3), "whole_frame": round(edge / count, 3),
                         "no_pill_found": round(missed / count, 3), "pills": count}
        print(f"{kind:<24} IoU {figures[kind]['mean_iou']:.3f}  found (IoU>=0.5) {figures[kind]['found_iou_0_5']:.1%}  "
              f"part only {figures[kind]['part_of_the_pill']:.1%}  whole frame {figures[kind]['whole_frame']:.1%}  "
              f"none {figures[kind]['no_pill_found']:.1%}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(figures, handle, indent=1)


if __name__ == "__main__":
    main()
