"""Which rule should decide when the device names a pill? Each rule is calibrated on the
calibration classes exactly as the enroll stage calibrates the shipped one (counter-sized
galleries, `calibration.draw_calibration_galleries`, some pills of each kept out of it;
`--calibration-gallery-pills` changes their size), `metrics.choose_rule` for enroll.min_named_correct and
enroll.max_absent_named), then scored on the real photo set's K-shot episodes (the answers of
every episode pooled): the share of enrolled pills' photos named, the share of named answers
that are right (an absent pill named counts as wrong) and the share of absent pills' photos
named. The embedding is the shipped int8 model's, through the device code.

Rules (a photo's nearest pill at cosine distance d1, the runner-up pill at d2; `spread` is the
mean distance of a pill's enrolled shots to their mean, known on the device at enrollment):
- `distance + margin` (shipped): d1 <= t and d2 - d1 > m;
- `distance + ratio`: d1 <= t and 1 - d1 / d2 > r;
- `spread-scaled distance + ratio`: d1 / spread(nearest pill) <= t and 1 - d1 / d2 > r;
and, for reference, `oracle`: the best (t, m) of the first rule chosen on the real answers
themselves, which no device can know.

    python -m benchmarks.naming_rules              # project root, after dvc repro; reports/naming_rules.json
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

import tf_pilltrack  # noqa: F401  (first: it sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from edge_runtime import interpreter
from edge_runtime.bundle import load_bundle
from tf_pilltrack.scoring import calibration, episodes, evaluation, metrics
from tf_pilltrack.data import dataset
from tf_pilltrack import paths
from tf_pilltrack import params as params_module
from tf_pilltrack import settings as pilltrack_settings


def spreads(embeddings: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Each pill's mean cosine distance of its gallery embeddings to their normalised mean."""
    result = {}
    for label in sorted(set(labels.tolist())):
        rows = embeddings[labels == label]
        centre = rows.mean(axis=0)
        centre /= max(np.linalg.norm(centre), 1e-12)
        result[label] = float(np.mean(1.0 - rows @ centre))
    return result


def answers(queries: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray,
            truth: np.ndarray | None) -> dict[str, np.ndarray]:
    """d1, d2, the nearest pill's spread and (with `truth`) whether the nearest is right."""
    names = sorted(set(gallery_labels.tolist()))
    distances = 1.0 - queries @ gallery.T
    per_pill = np.stack([distances[:, gallery_labels == name].min(axis=1) for name in names], axis=1)
    order = np.argsort(per_pill, axis=1)
    rows = np.arange(len(queries))
    d1 = per_pill[rows, order[:, 0]]
    d2 = per_pill[rows, order[:, 1]] if len(names) > 1 else np.full(len(queries), 2.0)
    spread = spreads(gallery, gallery_labels)
    nearest = np.array(names)[order[:, 0]]
    out = {"d1": d1, "d2": d2, "spread": np.array([max(spread[name], 1e-4) for name in nearest])}
    if truth is not None:
        out["correct"] = nearest == truth
    return out


def rule_inputs(rule: str, known: dict, absent: dict) -> tuple[np.ndarray, ...]:
    """(score, sureness, correct, absent score, absent sureness) for `metrics.choose_rule`, whose
    rule names a photo when score <= t and sureness > m."""
    def parts(side: dict) -> tuple[np.ndarray, np.ndarray]:
        if rule == "distance + margin":
            return side["d1"], side["d2"] - side["d1"]
        ratio = 1.0 - side["d1"] / np.maximum(side["d2"], 1e-12)
        if rule == "distance + ratio":
            return side["d1"], ratio
        return side["d1"] / side["spread"], ratio

    score, sure = parts(known)
    absent_score, absent_sure = parts(absent)
    return score, sure, known["correct"], absent_score, absent_sure


RULES = ("distance + margin", "distance + ratio", "spread-scaled distance + ratio")


def leave_out_answers(gallery: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> tuple[dict, dict]:
    """What the device could calibrate on from its own gallery alone: each enrolled shot asks the
    gallery without its own photo (a known pill), and each pill's shots ask the gallery without
    that pill (an absent one)."""
    known, absent = [], []
    for row in range(len(gallery)):
        keep = groups != groups[row]
        if len(set(labels[keep].tolist())) >= 2 and labels[row] in set(labels[keep].tolist()):
            known.append(answers(gallery[row:row + 1], gallery[keep], labels[keep], labels[row:row + 1]))
    for name in sorted(set(labels.tolist())):
        keep = labels != name
        if len(set(labels[keep].tolist())) >= 2:
            absent.append(answers(gallery[~keep], gallery[keep], labels[keep], None))
    return ({key: np.concatenate([part[key] for part in known]) for key in known[0]},
            {key: np.concatenate([part[key] for part in absent]) for key in absent[0]})


def gallery_calibrated(embeddings: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                       drawn: list[episodes.Episode], settings: dict) -> dict:
    """Each episode's rule (distance + margin) calibrated on its own gallery by `leave_out_answers`,
    then applied to that episode's queries; the rates of all episodes' answers pooled. Each
    answer's distance and margin are taken relative to its episode's (threshold, margin), so the
    pooled answers are scored by one `metrics.selective_rates` at (0, 0)."""
    parts = []
    for episode in drawn:
        rows = episode.references
        known, absent = leave_out_answers(embeddings[rows], labels[rows], groups[rows])
        chosen = metrics.choose_rule(*rule_inputs(RULES[0], known, absent), settings["min_named_correct"],
                                     settings["max_absent_named"], settings["rule_steps"])
        score, sure, correct, absent_score, absent_sure = rule_inputs(RULES[0], *pooled(embeddings, labels, [episode]))
        parts.append((score - chosen["threshold"], sure - chosen["margin"], correct,
                      absent_score - chosen["threshold"], absent_sure - chosen["margin"]))
    return metrics.selective_rates(*(np.concatenate(values) for values in zip(*parts)), 0.0, 0.0)


def pooled(embeddings: np.ndarray, labels: np.ndarray, drawn: list[episodes.Episode]) -> tuple[dict, dict]:
    known, absent = [], []
    for episode in drawn:
        gallery, gallery_labels = embeddings[episode.references], labels[episode.references]
        known.append(answers(embeddings[episode.queries], gallery, gallery_labels, labels[episode.queries]))
        absent.append(answers(embeddings[episode.absent], gallery, gallery_labels, None))
    return ({key: np.concatenate([part[key] for part in known]) for key in known[0]},
            {key: np.concatenate([part[key] for part in absent]) for key in absent[0]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default=str(paths.REPORTS / "naming_rules.json"))
    parser.add_argument("--calibration-gallery-pills", type=int, default=None,
                        help="pills enrolled in each calibration gallery instead of enroll.calibration_gallery_pills "
                             "(0: every calibration pill in one gallery)")
    args = parser.parse_args()
    params = params_module.load(args.params)
    settings, calibration_settings = pilltrack_settings.from_params(params).episodes, params["enroll"]
    loaded = load_bundle(paths.BUNDLE)
    lite = interpreter.make_interpreter(loaded.model_path, threads=1)
    views = loaded.preprocess.symmetry_views

    references, queries = (dataset.load_split(name) for name in ("calibration_references", "calibration_queries"))
    if args.calibration_gallery_pills is not None:  # 0: every calibration pill in one gallery (as before the per-gallery rule)
        calibration_settings = {**calibration_settings, "calibration_gallery_pills": args.calibration_gallery_pills
                                or 10 * len(references)}
    galleries = calibration.draw_calibration_galleries(
        sorted(set(references.labels.tolist())), calibration_settings["calibration_gallery_pills"],
        calibration_settings["calibration_galleries"], calibration_settings["calibration_absent"], params["base"]["seed"])
    embedded_references = interpreter.embed(lite, references.pixels, views)
    asked = interpreter.embed(lite, queries.pixels, views)
    known_parts, absent_parts = [], []
    for enrolled, kept_out in galleries:
        gallery_rows = np.isin(references.labels, enrolled)
        gallery, gallery_labels = embedded_references[gallery_rows], references.labels[gallery_rows].astype(str)
        query_known, query_absent = np.isin(queries.labels, enrolled), np.isin(queries.labels, kept_out)
        known_parts.append(answers(asked[query_known], gallery, gallery_labels, queries.labels[query_known].astype(str)))
        absent_parts.append(answers(asked[query_absent], gallery, gallery_labels, None))
    calibration_known, calibration_absent = (
        {key: np.concatenate([part[key] for part in parts]) for key in parts[0]} for parts in (known_parts, absent_parts))
    print(f"calibration: {len(galleries)} galleries of {len(galleries[0][0])} pills enrolled, "
          f"{len(galleries[0][1])} absent")

    real_pool, _, _ = evaluation.load_novel_real(settings.real_source, loaded.preprocess)
    real_embeddings = interpreter.embed(lite, real_pool.pixels, views)
    report = {"shots": {}, "targets": {key: calibration_settings[key] for key in ("min_named_correct", "max_absent_named")}}
    for shots in settings.shots:
        drawn = evaluation.draw("real", real_pool, shots, settings)
        real_known, real_absent = pooled(real_embeddings, real_pool.labels.astype(str), drawn)
        rows = {}
        for rule in RULES:
            chosen = metrics.choose_rule(*rule_inputs(rule, calibration_known, calibration_absent),
                                         calibration_settings["min_named_correct"],
                                         calibration_settings["max_absent_named"], calibration_settings["rule_steps"])
            real = metrics.selective_rates(*rule_inputs(rule, real_known, real_absent), chosen["threshold"],
                                           chosen["margin"])
            rows[rule] = {"calibration": chosen, "real": real}
        if shots >= 2:  # a pill needs a second shot to be asked as a known pill
            rows["distance + margin calibrated on each episode's own gallery (leave one shot / pill out)"] = {
                "real": gallery_calibrated(real_embeddings, real_pool.labels.astype(str), real_pool.groups.astype(str),
                                           drawn, calibration_settings)}
        oracle = metrics.choose_rule(*rule_inputs(RULES[0], real_known, real_absent),
                                     calibration_settings["min_named_correct"],
                                     calibration_settings["max_absent_named"], calibration_settings["rule_steps"])
        rows["oracle (distance + margin chosen on the real answers)"] = {"real": oracle}
        report["shots"][str(shots)] = rows
        print(f"\nreal {shots}-shot episodes ({settings.count}, answers pooled), rules calibrated on the "
              f"calibration classes for >= {calibration_settings['min_named_correct']:.0%} named right, <= "
              f"{calibration_settings['max_absent_named']:.0%} absent named:")
        print(f"{'rule':<56}{'named':>8}{'right':>8}{'absent':>8}   calibration: named / right / absent")
        for rule, row in rows.items():
            real, calibrated = row["real"], row.get("calibration")
            tail = (f"   {calibrated['named_share']:.3f} / {calibrated['named_correct']:.3f} / "
                    f"{calibrated['absent_named']:.3f}" if calibrated else "")
            print(f"{rule:<56}{real['named_share']:>8.3f}{real['named_correct']:>8.3f}{real['absent_named']:>8.3f}{tail}")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
