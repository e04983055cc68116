"""The shipped demo clip for the counter page (issue 36), made from the shipped real photos.

`data/demo/counter_demo.mp4`: seven real pills (pushin_pill phone-photo crops, CC BY 4.0, terms in
data/real/README.md) shown one after another on a plain grey tray, each held for HOLD_S seconds
with a slight drift and turn (a hand settling it under the camera), an empty tray between them;
640x480, FPS frames a second, MPEG-4. `data/demo/counter_demo.json` says which pill each frame
shows (the truth a test scores the page's answers against) and which source photos the clip's
crops come from.

Five of the pills are meant to be enrolled (ENROLLED), two never are (ABSENT: a never-enrolled
Tylenol among them, as in the issue's report). `--enroll-photos DIR` writes, for each enrolled pill,
ENROLL_PHOTOS photos from *other* source photos than the clip's, rendered on the same tray
(DIR/<pill>/<n>.jpg), for `pilltrack-edge enroll` or the page's "Enroll from the photos".

    .venv-edge/bin/python scripts/demo_clip.py                        # rewrites data/demo/ (deterministic)
    .venv-edge/bin/python scripts/demo_clip.py --enroll-photos /tmp/demo_enroll --no-clip

Needs numpy and OpenCV only (the edge client's own dependencies); the tray and the placing are
`tf_pilltrack/scoring/tray.py`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib

import cv2
import numpy as np

# the tray and the placing, shared with the enroll stage's confidence tiers
from tf_pilltrack.scoring.tray import HEIGHT, PILL_SIDE, TRAY, WIDTH, crop_rgb, on_tray, place, read_set, tray  # noqa: F401

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE = ROOT / "data" / "real" / "pushin_pill.zip"
OUT = ROOT / "data" / "demo"
FPS = 10
HOLD_S = 3.0  # each pill in view, still but for a slight drift
GAP_S = 0.6  # the empty tray between pills
ENROLLED = ("advil", "altoid", "midol", "pepto-bismol", "tylenol-er")
ABSENT = ("tylenol", "vitamin")
ORDER = ("advil", "tylenol", "altoid", "midol", "vitamin", "pepto-bismol", "tylenol-er")
ENROLL_PHOTOS = 5
SEED = 36


def choose(rows: list[dict], generator: np.random.Generator) -> dict:
    """For each pill of ORDER: the clip's crop, and (enrolled pills) ENROLL_PHOTOS crops from
    other source photos than the clip crop's."""
    by_pill: dict[str, list[dict]] = {}
    for row in rows:
        by_pill.setdefault(row["class_folder"], []).append(row)
    chosen = {}
    for pill in ORDER:
        candidates = sorted(by_pill[pill], key=lambda row: row["crop"])
        clip_row = candidates[int(generator.integers(len(candidates)))]
        others = [row for row in candidates if row["source_photo"] != clip_row["source_photo"]]
        picks = [] if pill in ABSENT else [others[i] for i in generator.choice(len(others), ENROLL_PHOTOS, replace=False)]
        chosen[pill] = {"clip": clip_row, "enroll": sorted(picks, key=lambda row: row["crop"])}
    return chosen


def write_clip(archive, chosen: dict, path: pathlib.Path, generator: np.random.Generator) -> list:
    """The clip; returns each frame's truth (the pill's name, or None for the empty tray)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write MPEG-4 (mp4v) here")
    truth = []
    hold, gap = round(HOLD_S * FPS), round(GAP_S * FPS)
    try:
        for pill in ORDER:
            for _ in range(gap):
                writer.write(cv2.cvtColor(tray(generator), cv2.COLOR_RGB2BGR))
                truth.append(None)
            crop = crop_rgb(archive, chosen[pill]["clip"])
            start = (WIDTH / 2 + generator.uniform(-60, 60), HEIGHT / 2 + generator.uniform(-40, 40))
            drift = generator.uniform(-0.6, 0.6, 2)  # pixels a frame: slight motion
            angle, turn = generator.uniform(-30, 30), generator.uniform(-0.3, 0.3)  # degrees, degrees a frame
            for step in range(hold):
                centre = (start[0] + drift[0] * step, start[1] + drift[1] * step)
                frame = place(tray(generator), crop, centre, angle + turn * step)
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
                truth.append(pill)
    finally:
        writer.release()
    return truth


def write_enroll_photos(archive, chosen: dict, folder: pathlib.Path, generator: np.random.Generator) -> None:
    for pill in ENROLLED:
        (folder / pill).mkdir(parents=True, exist_ok=True)
        for number, row in enumerate(chosen[pill]["enroll"]):
            frame = on_tray(crop_rgb(archive, row), generator)
            cv2.imwrite(str(folder / pill / f"{number}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 90])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=str(SOURCE), help="the pushin_pill zip (default: the shipped one)")
    parser.add_argument("--out", default=str(OUT), help="folder of the clip and its truth (default: data/demo)")
    parser.add_argument("--enroll-photos", metavar="DIR", help="also write the enrolled pills' photos here")
    parser.add_argument("--no-clip", action="store_true", help="write only --enroll-photos")
    args = parser.parse_args()
    archive, rows = read_set(pathlib.Path(args.source))
    generator = np.random.default_rng(SEED)
    chosen = choose(rows, generator)
    if not args.no_clip:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        truth = write_clip(archive, chosen, out / "counter_demo.mp4", np.random.default_rng(SEED + 1))
        info = {
            "clip": "counter_demo.mp4", "fps": FPS, "size": [WIDTH, HEIGHT], "frames": len(truth),
            "enrolled": list(ENROLLED), "absent": list(ABSENT), "truth": truth,
            "clip_crops": {pill: chosen[pill]["clip"]["crop"] for pill in ORDER},
            "clip_source_photos": {pill: chosen[pill]["clip"]["source_photo"] for pill in ORDER},
            "enroll_crops": {pill: [row["crop"] for row in chosen[pill]["enroll"]] for pill in ENROLLED},
            "made_by": "scripts/demo_clip.py", "credit": "pushin-pill, jason136, Roboflow Universe, CC BY 4.0",
        }
        (out / "counter_demo.json").write_text(json.dumps(info, indent=1) + "\n")
        print(f"{out / 'counter_demo.mp4'}: {len(truth)} frames, {os.path.getsize(out / 'counter_demo.mp4'):,} bytes")
    if args.enroll_photos:
        write_enroll_photos(archive, chosen, pathlib.Path(args.enroll_photos), np.random.default_rng(SEED + 2))
        print(f"{args.enroll_photos}: {ENROLL_PHOTOS} photos of each of {', '.join(ENROLLED)}")


if __name__ == "__main__":
    main()
