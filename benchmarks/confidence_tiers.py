"""The counter page's "likely — check it" tier, decided by measurement on real held-out photos (issue 36).

The photos: the shipped pushin_pill phone-photo crops (17 pills, never trained on), each placed on
the demo clip's grey tray as a counter camera would see it (`scripts/demo_clip.py`'s `place`) and
embedded by the device code as a live frame is (`Identifier.embed_image`: localise, crop, invoke);
`--cropped` embeds the crops whole instead, as `pilltrack-edge --cropped` does.

The episodes: the 17 pills are split into two seeded halves (pill-disjoint folds). In each episode
of a fold, GALLERY_PILLS of its pills are enrolled from SHOTS photos each (each from another source
photo), the fold's other pills are absent; the queries are the enrolled pills' photos from source
photos not in the gallery, and every photo of the absent pills. Each query is answered as the page
answers: the nearest pills by their nearest gallery photo, named by the bundle's own rule, else
"likely" when the nearest is within D and at least G ahead of the runner-up.

(D, G) is chosen on one fold's episodes: the most enrolled-pill queries answered right (named, or
likely with the right pill first) such that "likely" answers of enrolled pills are right at least
--likely-right (0.90) of the time and absent pills reach "likely" on at most --absent-likely (5%) of
their photos. It is then scored on the other fold's episodes (pills it never saw), both ways; the
figures reported are those held-out scores (mean of the two folds). The thresholds written are
chosen on both folds together. When no (D, G) meets the targets on a fold, "likely" is off
(likely_distance -1): the page then answers named or unsure only.

Writes `tiers.json` into the bundle (what the counter page reads, for this model only), and prints
the figures:

    .venv-edge/bin/python -m benchmarks.confidence_tiers --bundle bundle      # project root
    .venv-edge/bin/python -m benchmarks.confidence_tiers --bundle /tmp/b --report /tmp/tiers_report.json
"""

from __future__ import annotations

import argparse
import collections
import csv
import importlib.util
import io
import json
import os
import pathlib
import sys
import zipfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE = ROOT / "data" / "real" / "pushin_pill.zip"
GALLERY_PILLS = 5  # pills enrolled per episode: a counter's own gallery, as in the report
SHOTS = 5  # photos per enrolled pill
EPISODES = 40  # per fold
SEED = 36
GAPS = (0.0, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2)


def demo_clip():
    spec = importlib.util.spec_from_file_location("demo_clip", ROOT / "scripts" / "demo_clip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def embed_photos(identifier, source: str, cropped: bool, seed: int = SEED, render=None,
                 keep_missed: bool = False) -> dict:
    """Every crop of the set: pill, source photo and embedding (photos where no pill is found are
    counted and left out, or with `keep_missed` kept with a zero embedding and `found` False).
    `render(clip, crop, generator)` makes the frame each crop is shown in (default: the demo clip's
    tray at its scale, placed and turned at random)."""
    clip = demo_clip()
    archive = zipfile.ZipFile(source)
    with archive.open("pushin_pill/manifest.csv") as handle:
        rows = list(csv.DictReader(io.TextIOWrapper(handle, encoding="utf-8")))
    generator = np.random.default_rng(seed)
    pills, sources, embeddings, hits, missed = [], [], [], [], 0
    for row in sorted(rows, key=lambda r: r["crop"]):
        crop = clip.crop_rgb(archive, row)
        if cropped:
            image = crop
        elif render is not None:
            image = render(clip, crop, generator)
        else:
            centre = (clip.WIDTH / 2 + generator.uniform(-80, 80), clip.HEIGHT / 2 + generator.uniform(-60, 60))
            image = clip.place(clip.tray(generator), crop, centre, generator.uniform(-45, 45))
        found = identifier.embed_image(image)
        if found is None:
            missed += 1
            if not keep_missed:
                continue
            embedding = np.zeros(identifier.bundle.embeddings.shape[1], np.float32)
        else:
            embedding = found[0] / max(float(np.linalg.norm(found[0])), 1e-12)
        pills.append(row["class_folder"])
        sources.append(row["source_photo"])
        embeddings.append(embedding)
        hits.append(found is not None)
    return {"pills": np.array(pills), "sources": np.array(sources), "embeddings": np.stack(embeddings),
            "found": np.array(hits), "missed": missed}


def episode_answers(data: dict, pills: list, generator: np.random.Generator, threshold: float, margin: float,
                    gallery_pills: int = GALLERY_PILLS, gallery_data: dict | None = None) -> dict:
    """One episode over `pills`: `gallery_pills` enrolled, the rest absent. Per query: d1, d2, whether
    the nearest pill is right, whether the bundle's rule names it, and whether the pill is enrolled.
    `gallery_data`: the same photos (row for row) embedded another way, to enrol from (default:
    `data`). A photo whose pill was not found (`found` False) is never enrolled, and as a query it
    is answered wrong and never named (the live path answers "no pill")."""
    gallery_data = data if gallery_data is None else gallery_data
    if not np.array_equal(gallery_data["pills"], data["pills"]):
        raise ValueError("gallery_data must hold the same photos as data, row for row")
    found = data.get("found", np.ones(len(data["pills"]), bool))
    enrollable = gallery_data.get("found", np.ones(len(data["pills"]), bool))
    order = list(generator.permutation(pills))
    enrolled, absent = order[:gallery_pills], order[gallery_pills:]
    gallery_rows, gallery_labels, query_rows = [], [], []
    for pill in enrolled:
        rows = np.flatnonzero(data["pills"] == pill)
        by_source = collections.OrderedDict()
        for row in generator.permutation(rows[enrollable[rows]]):
            by_source.setdefault(data["sources"][row], row)
        chosen_sources = list(by_source)[:SHOTS]
        gallery_rows += [by_source[s] for s in chosen_sources]
        gallery_labels += [pill] * len(chosen_sources)
        query_rows += [row for row in rows if data["sources"][row] not in chosen_sources]
    for pill in absent:
        query_rows += list(np.flatnonzero(data["pills"] == pill))
    gallery = gallery_data["embeddings"][gallery_rows]
    labels = np.array(gallery_labels)
    queries = data["embeddings"][query_rows]
    distances = 1.0 - queries @ gallery.T
    names = list(enrolled)
    per_pill = np.stack([distances[:, labels == name].min(axis=1) for name in names], axis=1)
    ranked = np.argsort(per_pill, axis=1)
    rows = np.arange(len(query_rows))
    d1, d2 = per_pill[rows, ranked[:, 0]], per_pill[rows, ranked[:, 1]]
    truth = data["pills"][query_rows]
    nearest = np.array(names)[ranked[:, 0]]
    seen = found[query_rows]
    return {"d1": d1, "d2": d2, "right": (nearest == truth) & seen,
            "named": (d1 <= threshold) & (d2 - d1 > margin) & seen, "enrolled": np.isin(truth, enrolled)}


def pooled(data: dict, pills: list, episodes: int, seed: int, threshold: float, margin: float, **options) -> dict:
    """`episodes` seeded episodes' answers, pooled; `options` go to `episode_answers`."""
    generator = np.random.default_rng(seed)
    parts = [episode_answers(data, pills, generator, threshold, margin, **options) for _ in range(episodes)]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def score(answers: dict, distance: float, gap: float) -> dict:
    """The page's tiers on pooled answers, for a "likely" rule (distance, gap)."""
    enrolled, absent = answers["enrolled"], ~answers["enrolled"]
    named = answers["named"]
    likely = ~named & (answers["d1"] <= distance) & (answers["d2"] - answers["d1"] >= gap)
    right = answers["right"]

    def share(part, whole):
        return float(part.sum() / whole.sum()) if whole.sum() else None

    return {
        "enrolled_queries": int(enrolled.sum()), "absent_queries": int(absent.sum()),
        "named_share": share(named & enrolled, enrolled),
        "named_right": share(named & enrolled & right, named),  # an absent pill named is wrong
        "likely_share": share(likely & enrolled, enrolled),
        "likely_right": share(likely & enrolled & right, likely & enrolled),
        "absent_likely": share(likely & absent, absent),
        "absent_named": share(named & absent, absent),
        "offered_right": share((named | likely) & enrolled & right, enrolled),  # named or likely, right pill first
        "first_right": share(right & enrolled, enrolled),  # the right pill ranked first, whatever the tier
    }


def choose(answers: dict, likely_right: float, absent_likely: float) -> tuple[float, float]:
    """The (distance, gap) that offers the most right answers within the targets; (-1, 0) if none does."""
    candidates = np.unique(np.quantile(answers["d1"], np.linspace(0.0, 1.0, 101)))
    best, best_rule = -1.0, (-1.0, 0.0)
    for distance in candidates:
        for gap in GAPS:
            figures = score(answers, float(distance), gap)
            if figures["likely_right"] is None or figures["likely_share"] == 0:
                continue
            if figures["likely_right"] >= likely_right and figures["absent_likely"] <= absent_likely:
                if figures["offered_right"] > best:
                    best, best_rule = figures["offered_right"], (float(distance), float(gap))
    return best_rule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="bundle", help="the bundle whose model to measure (default: bundle)")
    parser.add_argument("--source", default=str(SOURCE), help="real photos (default: the shipped pushin_pill zip)")
    parser.add_argument("--cropped", action="store_true", help="embed the crops whole, not placed on the tray")
    parser.add_argument("--likely-right", type=float, default=0.90, help="target: likely answers right at least this")
    parser.add_argument("--absent-likely", type=float, default=0.05, help="target: absent pills likely at most this")
    parser.add_argument("--episodes", type=int, default=EPISODES)
    parser.add_argument("--report", help="also write the full report here (JSON)")
    parser.add_argument("--dry-run", action="store_true", help="print, but do not write tiers.json")
    args = parser.parse_args()

    from edge_runtime.evidence import TIERS_FILE
    from edge_runtime.identification import Identifier
    from edge_runtime.storage import write_atomically

    identifier = Identifier.open(args.bundle, threads=1)
    bundle = identifier.bundle
    data = embed_photos(identifier, args.source, args.cropped)
    pills = sorted(set(data["pills"].tolist()))
    halves = [sorted(half) for half in np.array_split(np.random.default_rng(SEED).permutation(pills), 2)]
    threshold, margin = identifier.threshold, bundle.lookalike_margin
    folds = [pooled(data, half, args.episodes, SEED + i, threshold, margin) for i, half in enumerate(halves)]
    held_out = []
    for chosen_on, scored_on in ((0, 1), (1, 0)):
        rule = choose(folds[chosen_on], args.likely_right, args.absent_likely)
        figures = score(folds[scored_on], *rule) if rule[0] >= 0 else score(folds[scored_on], -1.0, 0.0)
        held_out.append({"chosen_on": halves[chosen_on], "scored_on": halves[scored_on],
                         "likely_distance": rule[0], "likely_gap": rule[1], **figures})
    both = {key: np.concatenate([fold[key] for fold in folds]) for key in folds[0]}
    distance, gap = choose(both, args.likely_right, args.absent_likely)

    def mean(key):
        values = [fold[key] for fold in held_out if fold[key] is not None]
        return round(float(np.mean(values)), 4) if values else None

    measured = {key: mean(key) for key in ("named_share", "named_right", "likely_share", "likely_right",
                                           "absent_likely", "absent_named", "offered_right", "first_right")}
    measured.update(enrolled_queries=sum(f["enrolled_queries"] for f in held_out),
                    absent_queries=sum(f["absent_queries"] for f in held_out),
                    episodes_per_fold=args.episodes, gallery_pills=GALLERY_PILLS, shots=SHOTS,
                    photos="cropped" if args.cropped else "on the tray, localised", no_pill_found=data["missed"],
                    targets={"likely_right": args.likely_right, "absent_likely": args.absent_likely})
    tiers = {"likely_distance": distance, "likely_gap": gap, "model_sha256": bundle.model_sha256,
             "measured": measured, "made_by": "python -m benchmarks.confidence_tiers " + " ".join(sys.argv[1:])}
    print(json.dumps({"likely_distance": distance, "likely_gap": gap, "bundle_threshold": threshold,
                      "lookalike_margin": margin, "held_out": measured}, indent=1))
    for fold in held_out:
        print(f"fold chosen on {len(fold['chosen_on'])} pills, scored on {len(fold['scored_on'])}: likely within "
              f"{fold['likely_distance']:.4f}, gap {fold['likely_gap']:.3f}: likely right {fold['likely_right']}, "
              f"absent likely {fold['absent_likely']}, offered right {fold['offered_right']}")
    if args.report:
        with open(args.report, "w") as handle:
            json.dump({"tiers": tiers, "folds": held_out}, handle, indent=1)
    if not args.dry_run:
        path = os.path.join(args.bundle, TIERS_FILE)
        write_atomically(path, (json.dumps(tiers, indent=1) + "\n").encode("utf-8"))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
