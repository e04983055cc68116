"""The counter page's confidence tiers, chosen by measurement on real held-out photos (issue 36).

The page answers "named" when the bundle's naming rule names the pill, "likely — check it" when
it does not but the nearest pill lies within a distance D and at least a gap G ahead of the
runner-up, and "not one of your pills / unsure" otherwise (`edge_runtime.evidence`). This module
chooses (D, G) for a bundle's model and writes them to the bundle's `tiers.json`; the `enroll`
stage calls it right after writing the bundle, with `params.yaml`'s `enroll.tiers`.

The photos: the real photo set's crops (`episodes.real_source`, the pushin_pill phone photos,
never trained on), each placed on the demo clip's grey tray as a counter camera would see it
(`tray.on_tray`) and embedded by the device code as a live frame is (`Identifier.embed_image`:
localise, crop, invoke); `cropped` embeds the crops whole instead, as `pilltrack-edge --cropped`
does. A photo where no pill is found is counted and left out.

The episodes: the pills are split into two seeded halves (pill-disjoint folds). In each episode
of a fold, `gallery_pills` of its pills are enrolled from `shots` photos each (each from another
source photo), the fold's other pills are absent; the queries are the enrolled pills' photos from
source photos not in the gallery, and every photo of the absent pills. Each query is answered as
the page answers: the nearest pills by their nearest gallery photo, named by the bundle's own
rule, else "likely" when the nearest is within D and at least G ahead of the runner-up.

The choice (`choose`): among D at `distance_steps` quantiles of the nearest distances and G in
`gaps`, the most enrolled-pill queries answered right (named, or likely with the right pill first)
such that "likely" answers of enrolled pills are right at least `likely_right` of the time and
absent pills reach "likely" on at most `absent_likely` of their photos. (D, G) is chosen on one
fold's episodes and scored on the other fold's (pills it never saw), both ways; the figures
reported are those held-out scores (mean of the two folds). The thresholds written are chosen on
both folds together. When no (D, G) meets the targets, "likely" is off (likely_distance -1): the
page then answers named or unsure only.
"""

from __future__ import annotations

import collections
import json
import os
import time

import numpy as np

from edge_runtime.evidence import TIERS_FILE
from edge_runtime.identification import Identifier
from edge_runtime.storage import write_atomically
from tf_pilltrack.scoring import tray
from tf_pilltrack.settings import Tiers

OFF = (-1.0, 0.0)  # (likely_distance, likely_gap) when no rule meets the targets: no answer is "likely"
SHARES = ("named_share", "named_right", "likely_share", "likely_right", "absent_likely", "absent_named",
          "offered_right", "first_right")


def embed_photos(identifier: Identifier, source: str | os.PathLike, seed: int, cropped: bool = False,
                 render=None, keep_missed: bool = False) -> dict:
    """Every crop of the real photo set `source` (`tray.read_set`): its pill, source photo and
    unit embedding, placed on the tray (a generator seeded `seed` draws where) unless `cropped`, or
    shown in the frame `render(crop, generator)` makes; "missed" counts the photos where no pill
    was found, left out, or with `keep_missed` kept with a zero embedding and `found` False."""
    archive, rows = tray.read_set(source)
    generator = np.random.default_rng(seed)
    pills, sources, embeddings, hits, missed = [], [], [], [], 0
    for row in sorted(rows, key=lambda r: r["crop"]):
        crop = tray.crop_rgb(archive, row)
        if cropped:
            image = crop
        elif render is not None:
            image = render(crop, generator)
        else:
            image = tray.on_tray(crop, generator)
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
    if not any(hits):
        raise ValueError(f"{source}: no pill found in any of its {len(rows)} photos")
    return {"pills": np.array(pills), "sources": np.array(sources), "embeddings": np.stack(embeddings),
            "found": np.array(hits), "missed": missed}


def episode_answers(data: dict, pills: list, generator: np.random.Generator, gallery_pills: int, shots: int,
                    threshold: float, margin: float, gallery_data: dict | None = None) -> dict:
    """One episode over `pills`: `gallery_pills` of them enrolled from `shots` photos each, the
    rest absent. Per query: d1 and d2 (the nearest and the runner-up pill's distances), whether the
    nearest pill is right, whether the bundle's rule (`threshold`, `margin`) names it, and whether
    the query's pill is enrolled. `gallery_data`: the same photos (row for row) embedded another
    way, to enrol from (default: `data`). A photo whose pill was not found (`found` False) is never
    enrolled, and as a query it is answered wrong and never named (the live path answers "no pill")."""
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
        chosen_sources = list(by_source)[:shots]
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


def pooled(data: dict, pills: list, episodes: int, gallery_pills: int, shots: int, seed: int, threshold: float,
           margin: float, gallery_data: dict | None = None) -> dict:
    """`episodes` episodes over `pills` (a generator seeded `seed`) of `gallery_pills` pills enrolled
    with `shots` photos each, their answers pooled; `gallery_data` as in `episode_answers`."""
    generator = np.random.default_rng(seed)
    parts = [episode_answers(data, pills, generator, gallery_pills, shots, threshold, margin,
                             gallery_data) for _ in range(episodes)]
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


def choose(answers: dict, settings: Tiers) -> tuple[float, float]:
    """The (distance, gap) that offers the most right answers within `settings`' targets
    (likely_right, absent_likely); OFF if none does."""
    candidates = np.unique(np.quantile(answers["d1"], np.linspace(0.0, 1.0, settings.distance_steps)))
    best, best_rule = -1.0, OFF
    for distance in candidates:
        for gap in settings.gaps:
            figures = score(answers, float(distance), gap)
            if figures["likely_right"] is None or figures["likely_share"] == 0:
                continue
            if figures["likely_right"] >= settings.likely_right and figures["absent_likely"] <= settings.absent_likely:
                if figures["offered_right"] > best:
                    best, best_rule = figures["offered_right"], (float(distance), float(gap))
    return best_rule


def measure(data: dict, settings: Tiers, threshold: float, margin: float) -> dict:
    """The tiers chosen on `data` (`embed_photos`) for a bundle naming by (`threshold`, `margin`):
    the rule chosen on both folds, the held-out figures (mean of the two folds) and each fold's."""
    seed = settings.seed
    pills = sorted(set(data["pills"].tolist()))
    if len(pills) < 2 * (settings.gallery_pills + 1):
        raise ValueError(f"{len(pills)} pills in the real photos: two folds of enrolled and absent pills need at least "
                         f"{2 * (settings.gallery_pills + 1)} (enroll.tiers.gallery_pills {settings.gallery_pills})")
    halves = [sorted(half) for half in np.array_split(np.random.default_rng(seed).permutation(pills), 2)]
    folds = [pooled(data, half, settings.episodes, settings.gallery_pills, settings.shots, seed + i, threshold, margin)
             for i, half in enumerate(halves)]
    held_out = []
    for chosen_on, scored_on in ((0, 1), (1, 0)):
        rule = choose(folds[chosen_on], settings)
        held_out.append({"chosen_on": halves[chosen_on], "scored_on": halves[scored_on],
                         "likely_distance": rule[0], "likely_gap": rule[1], **score(folds[scored_on], *rule)})
    both = {key: np.concatenate([fold[key] for fold in folds]) for key in folds[0]}
    distance, gap = choose(both, settings)

    def mean(key):
        values = [fold[key] for fold in held_out if fold[key] is not None]
        return round(float(np.mean(values)), 4) if values else None

    measured = {key: mean(key) for key in SHARES}
    measured.update(enrolled_queries=sum(fold["enrolled_queries"] for fold in held_out),
                    absent_queries=sum(fold["absent_queries"] for fold in held_out),
                    episodes_per_fold=settings.episodes, gallery_pills=settings.gallery_pills,
                    shots=settings.shots, no_pill_found=data["missed"],
                    targets={"likely_right": settings.likely_right, "absent_likely": settings.absent_likely})
    return {"likely_distance": distance, "likely_gap": gap, "likely_on": distance >= 0,
            "measured": measured, "folds": held_out}


def choose_for_bundle(bundle_dir: str | os.PathLike, settings: Tiers, source: str | os.PathLike,
                      made_by: str, cropped: bool = False, write: bool = True) -> dict:
    """Measure the tiers of the bundle in `bundle_dir` on the real photos `source` with
    `settings` (params.yaml's enroll.tiers) and, with `write`, write them to its TIERS_FILE
    atomically (what the counter page reads, for this bundle's model only). Returns the report:
    the rule, the bundle's naming rule, the held-out figures, each fold's, and the seconds taken."""
    started = time.time()
    identifier = Identifier.open(bundle_dir, threads=1)
    bundle = identifier.bundle
    data = embed_photos(identifier, source, settings.seed, cropped)
    threshold, margin = identifier.threshold, bundle.lookalike_margin
    chosen = measure(data, settings, threshold, margin)
    chosen["measured"]["photos"] = "cropped" if cropped else "on the tray, localised"
    tiers = {"likely_distance": chosen["likely_distance"], "likely_gap": chosen["likely_gap"],
             "model_sha256": bundle.model_sha256, "measured": chosen["measured"], "made_by": made_by}
    if write:
        write_atomically(os.path.join(bundle_dir, TIERS_FILE), (json.dumps(tiers, indent=1) + "\n").encode("utf-8"))
    return {"likely_distance": chosen["likely_distance"], "likely_gap": chosen["likely_gap"],
            "likely": "on" if chosen["likely_on"] else "off: no (distance, gap) met the targets on the real photos",
            "bundle_threshold": threshold, "lookalike_margin": margin, "held_out": chosen["measured"],
            "folds": chosen["folds"],
            "seconds": round(time.time() - started, 1)}


def describe(report: dict) -> str:
    """One line of a `choose_for_bundle` report, for the stage's output."""
    held = report["held_out"]
    targets = held["targets"]
    if report["likely_distance"] < 0:
        rule = (f"\"likely\" is OFF: no (distance, gap) gave likely right >= {targets['likely_right']:.0%} with absent "
                f"pills likely <= {targets['absent_likely']:.0%}")
    else:
        rule = f"\"likely\" within {report['likely_distance']:.4f} and {report['likely_gap']:.3f} ahead of the runner-up"

    def percent(key):
        return "n/a" if held[key] is None else f"{held[key]:.1%}"

    return (f"tiers: {rule}; held out ({held['enrolled_queries']} enrolled-pill and {held['absent_queries']} absent-pill "
            f"answers, {held['photos']}): likely right {percent('likely_right')}, absent pills likely "
            f"{percent('absent_likely')}, named or likely right {percent('offered_right')} "
            f"({report['seconds']:.1f} s)")
