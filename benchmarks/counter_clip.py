"""The counter page on the shipped real-pill clip, scored frame by frame.

The clip is `data/demo/counter_demo.mp4` (seven real pushin_pill pills on a tray, one after another,
`scripts/demo_clip.py`); `counter_demo.json` says which pill each frame shows. On a copy of the
bundle (the given one is never changed), a new gallery of the clip's five enrolled pills is made
through the page's own enroll path (`Counter.enroll_photos`, 5 photos each from other source photos
than the clip's), then every frame of the clip is answered by `Counter.answer_frame`, the code behind
the page's stream of answers, in order (not paced: the answers are the same at any speed). Scored:

- for the enrolled pills' frames: the share answered right, i.e. named right or "likely — check it"
  with the right pill first; the same share leaving out each pill's first second in view (the
  target: >= 90%); and the seconds until the first right answer, per pill;
- wrong names: frames where a pill is named and it is not the pill in view (the tray included);
- for the absent pills' frames: the share that reached "likely", and how many were named;
- the right pill ranked first at all (whatever the tier): what the model knows;
- how often the page asks for the pill turned over (`close_call`), for enrolled and absent pills.

Each run is made twice or more: `--track-frames 1` answers frame by frame, as the page did before
its tiers; 30 answers from all the frames of a still pill together (`evidence.Track`). "before" is
frame by frame, without tiers, with the page's smoothed announcement (what the page showed before its tiers).

    .venv-edge/bin/python -m benchmarks.counter_clip --bundle bundle              # project root
    .venv-edge/bin/python -m benchmarks.counter_clip --bundle bundle --out /tmp/counter_clip.json

The bundle's tiers.json (the enroll stage's, tf_pilltrack/scoring/tiers.py) decides "likely"; without one for its
model, the page answers named or unsure only, and so does this.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLIP = ROOT / "data" / "demo" / "counter_demo.mp4"


def demo_clip():
    spec = importlib.util.spec_from_file_location("demo_clip", ROOT / "scripts" / "demo_clip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def enroll_demo_pills(counter, photos_dir: pathlib.Path, pills) -> None:
    """A new gallery of the clip's enrolled pills, through the page's enroll path."""
    for number, pill in enumerate(pills):
        photos = [(path.name, path.read_bytes()) for path in sorted((photos_dir / pill).iterdir())]
        replaces = len(set(counter.identifier.bundle.labels)) if number == 0 else None
        counter.enroll_photos(pill, photos, new_gallery=number == 0, replaces=replaces)


def play(counter, clip: str) -> list[dict]:
    """Every frame's answer, in order."""
    from edge_runtime import capture

    return [dict(counter.answer_frame(frame).answer) for frame in capture.video_frames(clip)]


def score(answers: list[dict], truth: list, enrolled, absent, fps: float, announced: bool = False) -> dict:
    """The figures of the module docstring. `announced`: judge the page's smoothed announcement
    (state "pill", `announced`) as the page before its tiers showed it, instead of the tiers."""
    def offered(answer):
        if announced:
            return answer.get("announced") if answer.get("state") == "pill" else None
        if answer.get("tier") == "named":
            return answer["label"]
        if answer.get("tier") == "likely":
            return answer["candidates"][0]["label"]
        return None

    def named(answer):
        if announced:
            return answer.get("announced") if answer.get("state") == "pill" else None
        return answer["label"] if answer.get("tier") == "named" else None

    frames_right, settled_right, settled, first_right = [], [], 0, {}
    wrong_names, absent_likely, absent_named, absent_frames, ranked_first = 0, 0, 0, 0, []
    close_calls = {"enrolled": [], "absent": []}
    appeared = {}
    for index, (answer, pill) in enumerate(zip(answers, truth)):
        name = named(answer)
        if name is not None and name != pill:
            wrong_names += 1
        if pill is None:
            continue
        appeared.setdefault(pill, index)
        if pill in enrolled or pill in absent:
            close_calls["enrolled" if pill in enrolled else "absent"].append(bool(answer.get("close_call")))
        if pill in enrolled:
            right = offered(answer) == pill
            frames_right.append(right)
            candidates = answer.get("candidates") or []
            ranked_first.append(bool(candidates) and candidates[0]["label"] == pill)
            if index - appeared[pill] >= fps:  # after the pill's first second in view
                settled += 1
                settled_right.append(right)
            if right and pill not in first_right:
                first_right[pill] = round((index - appeared[pill]) / fps, 2)
        elif pill in absent:
            absent_frames += 1
            absent_likely += answer.get("tier") == "likely" and not announced
            absent_named += name is not None
    return {
        "enrolled_frames": len(frames_right),
        "right": round(float(np.mean(frames_right)), 4) if frames_right else None,
        "right_after_1s": round(float(np.mean(settled_right)), 4) if settled_right else None,
        "seconds_to_first_right": {pill: first_right.get(pill) for pill in enrolled},
        "wrong_names": wrong_names,
        "absent_frames": absent_frames,
        "absent_likely": round(absent_likely / absent_frames, 4) if absent_frames else None,
        "absent_named": absent_named,
        "ranked_first": round(float(np.mean(ranked_first)), 4) if ranked_first else None,
        "close_call": {kind: round(float(np.mean(shown)), 4) if shown else None for kind, shown in close_calls.items()},
        "step_ms_median": round(float(np.median([a["step_ms"] for a in answers if "step_ms" in a])), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="bundle", help="the bundle to copy and measure (default: bundle)")
    parser.add_argument("--clip", default=str(CLIP))
    parser.add_argument("--track-frames", default="1,30", help="comma-separated Track lengths to compare")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also write the figures here (JSON)")
    args = parser.parse_args()

    from edge_runtime import counter as counters
    from edge_runtime import evidence
    from edge_runtime.identification import Identifier, Smoother

    info = json.loads(pathlib.Path(args.clip).with_suffix(".json").read_text())
    clip_module = demo_clip()
    with tempfile.TemporaryDirectory() as scratch:
        bundle = os.path.join(scratch, "bundle")
        shutil.copytree(args.bundle, bundle, ignore=shutil.ignore_patterns(".lock", "thumbnails", "confirmations.jsonl"))
        photos = pathlib.Path(scratch) / "enroll"
        archive, rows = clip_module.read_set(clip_module.SOURCE)
        chosen = clip_module.choose(rows, np.random.default_rng(clip_module.SEED))
        clip_module.write_enroll_photos(archive, chosen, photos, np.random.default_rng(clip_module.SEED + 2))
        identifier = Identifier.open(bundle, args.threads)
        identifier.warm_up()
        counter = counters.Counter(identifier, counters.video_source(args.clip), args.clip)
        enroll_demo_pills(counter, photos, info["enrolled"])
        results = {"clip": os.path.relpath(args.clip, ROOT), "frames": info["frames"], "fps": info["fps"],
                   "model_sha256": counter.identifier.bundle.model_sha256, "tiers_note": counter.tiers_note,
                   "threshold": counter.identifier.threshold, "runs": {}}
        tiers = counter.tiers
        for frames in [int(value) for value in args.track_frames.split(",")]:
            counter.track, counter.smoother, counter.tiers = evidence.Track(frames), Smoother(5), tiers
            answers = play(counter, args.clip)
            results["runs"][f"track {frames}"] = score(answers, info["truth"], info["enrolled"], info["absent"], info["fps"])
            if frames == 1:
                results["runs"]["before (frame by frame, announced)"] = score(
                    answers, info["truth"], info["enrolled"], info["absent"], info["fps"], announced=True)
    print(json.dumps(results, indent=1))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
