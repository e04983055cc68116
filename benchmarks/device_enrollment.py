"""Enrollment at the counter, end to end through the device code, on a photo set of real pills.

In each seeded episode (`tf_pilltrack.scoring.episodes.draw_episodes`: whole source photos as
references, some pills kept out of the gallery), a fresh copy of the device bundle enrolls
K photos of every known pill exactly as `pilltrack-edge enroll` does (`Identifier.embed_image`,
`enrollment.enroll`: Annoy index rebuilt, written atomically), then `Identifier.identify_image`
answers every other photo, as `pilltrack-edge --image` does: localisation, the bundle's unknown
threshold and look-alike margin, Annoy search. Each episode runs three ways (WAYS):
- the first pill enrolled with `--new-gallery`, so the gallery holds the photo set's pills
  only, and each photo localised as the bundle says (`preprocess.localise`: with "auto", a
  photo whose pill touches its edge is taken as a tight crop and embedded whole);
- the same with `--cropped` (the whole photo embedded): a data set's tight crops have no
  background for the localiser to find the pill against;
- `--cropped`, keeping the bundle's own enrolled pills (the pipeline's synthetic novel pills)
  in the gallery beside the new ones, as distractors.

    python -m benchmarks.device_enrollment                       # from the project root; data/real/pushin_pill.zip
    python -m benchmarks.device_enrollment --photos my_pills/ --shots 3

Reported per way of cropping, mean ± sample std over the episodes: Recall@1 of the known pills'
photos (a photo answered "unknown" or "no pill found" counts as wrong), the share answered
"unknown", the share where no pill was found, the share that was a close call (answered "unknown", both candidates shown), the share
answered with a pill the bundle had enrolled before (not of the photo set), the share given
any name, the share of the absent pills' photos accepted as some enrolled pill (false accepts),
and the share of named answers that are right (an absent pill named counts as wrong). The JSON report goes
to --out.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import tempfile

import numpy as np

from edge_runtime import enrollment, gallery
from edge_runtime.identification import Identifier
from edge_runtime.bundle import load_bundle
from edge_runtime.storage import write_atomically
from tf_pilltrack.scoring import episodes
from tf_pilltrack.data import ingestion

ROOT = pathlib.Path(__file__).resolve().parents[1]  # the project root: the defaults' paths

WAYS = {  # name -> (Identifier's `cropped`, `enroll --new-gallery`)
    "bundle_localisation": (False, True),
    "cropped": (True, True),
    "cropped_with_bundle_pills": (True, False),
}


def load_photos(source: pathlib.Path, max_pixels: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Decoded photos of a <class>/<image> folder or zip, their labels and source-photo groups,
    read as `prepare` reads them (`ingestion.decode_images`); files skipped are reported on stderr."""
    images, groups, skipped = ingestion.list_source(source)
    decoded = list(ingestion.decode_images(images, max_pixels, skipped))
    for entry in skipped:
        print(f"skipped {entry['file']}: {entry['reason']}", file=sys.stderr)
    return ([rgb for _, rgb in decoded], np.array([image.label for image, _ in decoded], dtype=str),
            np.array([groups.get(image.name, image.name) for image, _ in decoded], dtype=str))


def run_episode(bundle_dir: pathlib.Path, photos: list, labels: np.ndarray, episode: episodes.Episode,
                cropped: bool, new_gallery: bool, threads: int) -> dict[str, float]:
    """Enroll the episode's references into `bundle_dir` (changed in place; the first pill with
    `new_gallery`), answer its queries and absent photos; the figures of the module docstring."""
    identifier = Identifier.open(bundle_dir, threads, cropped=cropped)
    enrolled = {}
    for index in episode.references:
        found = identifier.embed_image(photos[index])
        if found is not None:
            enrolled.setdefault(labels[index], []).append(found[0])
    for position, (label, embeddings) in enumerate(enrolled.items()):
        enrollment.enroll(bundle_dir, label, np.stack(embeddings), new_gallery and position == 0)
    identifier = Identifier.open(bundle_dir, threads, cropped=cropped)
    answers = [identifier.identify_image(photos[index]) for index in episode.queries]
    absent = [identifier.identify_image(photos[index]) for index in episode.absent]
    truth = labels[episode.queries]
    not_bundle_pills = {None, gallery.UNKNOWN, *labels.tolist()}  # answers that are no pill of the bundle's own
    figures = {
        "references_without_pill": 1.0 - sum(map(len, enrolled.values())) / len(episode.references),
        "recall_at_1": float(np.mean([answer.label == label for answer, label in zip(answers, truth)])),
        "unknown": float(np.mean([answer.label == gallery.UNKNOWN for answer in answers])),
        "no_pill_found": float(np.mean([answer.label is None for answer in answers])),
        "close_calls": float(np.mean([answer.lookalike is not None for answer in answers])),
        "bundle_pill": float(np.mean([answer.label not in not_bundle_pills for answer in answers])),
    }
    named = [answer.label not in (None, gallery.UNKNOWN) for answer in answers]
    figures["named"] = float(np.mean(named))
    absent_named = [answer.label not in (None, gallery.UNKNOWN) for answer in absent]
    if absent:
        figures["false_accept_rate"] = float(np.mean(absent_named))
    right = sum(answer.label == label for answer, label in zip(answers, truth))
    if sum(named) + sum(absent_named):  # an absent pill's photo named counts as a wrong name
        figures["named_correct"] = right / (sum(named) + sum(absent_named))
    return figures


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--bundle", default=str(ROOT / "bundle"), help="device bundle (default: the pipeline's bundle/)")
    add("--photos", default=str(ROOT / "data/real/pushin_pill.zip"),
        help="photos <class>/<image>, folder or zip, with an optional manifest.csv (default: the shipped real set)")
    add("--shots", type=int, default=5, help="photos enrolled per pill (default 5)")
    add("--episodes", type=int, default=5, help="seeded episodes (default 5)")
    add("--seed", type=int, default=7, help="episode i draws with numpy's generator seeded [seed, i] (default 7)")
    add("--absent", type=float, default=0.2, help="fraction of the pills kept out of the gallery (default 0.2)")
    add("--threads", type=int, default=1, help="interpreter threads (default 1)")
    add("--out", default=str(ROOT / "reports/device_enrollment.json"),
        help="JSON report (default reports/device_enrollment.json)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_arguments(argv)
    bundle_dir = pathlib.Path(args.bundle)
    max_pixels = load_bundle(bundle_dir, verify_model=False).preprocess.max_image_pixels
    photos, labels, groups = load_photos(pathlib.Path(args.photos), max_pixels)
    # views=2 only shapes the multi-view tuples, which the device does not use here
    drawn = episodes.draw_episodes(labels, groups, args.shots, args.absent, 2, args.episodes, args.seed)
    results = {}
    for way, (cropped, new_gallery) in WAYS.items():
        scored = []
        for episode in drawn:
            with tempfile.TemporaryDirectory() as scratch:
                copy = pathlib.Path(scratch) / "bundle"
                shutil.copytree(bundle_dir, copy)
                scored.append(run_episode(copy, photos, labels, episode, cropped, new_gallery, args.threads))
        results[way] = episodes.summarise(scored)
    report = {"photos": args.photos, "images": len(photos), "pills": len(set(labels.tolist())),
              "shots": args.shots, "episodes": args.episodes, "seed": args.seed,
              "known_pills": len(drawn[0].known_classes), "absent_pills": len(drawn[0].absent_classes),
              "queries": float(np.mean([len(episode.queries) for episode in drawn])), "results": results}
    keys = [key for key in results["bundle_localisation"] if not key.endswith(("_std", "_episodes"))]
    print(f"{len(photos)} photos of {report['pills']} pills, {args.shots}-shot, {args.episodes} episodes, "
          f"{report['absent_pills']} pills absent from the gallery")
    print(f"{'way':<26}" + "".join(f"{key:>26}" for key in keys))
    for way, figures in results.items():
        print(f"{way:<26}" + "".join(f"{figures[key]:>18.3f} ± {figures[key + '_std']:.3f}" for key in keys))
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, json.dumps(report, indent=2).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
