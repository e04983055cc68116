"""Stage `enroll`: the device bundle, made with the device's own code.

The novel classes' reference shots are embedded by the exported int8 model through
`edge_runtime.interpreter` (the same code path as `pilltrack-edge`), and written with
`edge_runtime.bundle.write_bundle`: model, Annoy index, embeddings and sidecar.

The naming rule is calibrated on the calibration classes, which neither training nor
evaluation uses, in galleries the size of a counter's: `enroll.calibration_galleries` seeded draws
of `enroll.calibration_gallery_pills` enrolled pills plus absent ones (`enroll.calibration_absent`
of each draw's pills are kept out of its gallery), each gallery made of its pills' reference
shots and queried by all their other photos, the answers of every draw pooled. (A rule's error
rates grow with the number of pills enrolled: calibrated on one gallery of every calibration
class, hundreds of them, it names almost nothing in a gallery of twenty.) When the calibration
classes are no more than one draw, they are one gallery. The rule names the
nearest pill only when it lies within the unknown threshold (cosine distance) and the runner-up
pill lies more than the look-alike margin farther; anything else is "unknown", and a close call
shows both candidates. The pair chosen (`metrics.choose_rule`) names the most photos of the
gallery's pills while at least `enroll.min_named_correct` of named answers are right (an absent
pill named counts as wrong) and at most `enroll.max_absent_named` of absent pills' photos are
named. Annoy's search_k follows the gallery's size (`gallery.search_k_for_size`, as on
the device after enrolling); its top-1 agreement with exact search on the calibration photos,
and the smallest search_k reaching `enroll.search_k_agreement` there, are reported beside it.
"""

from __future__ import annotations

import json
import time
from typing import Callable

import numpy as np

from edge_runtime import bundle as bundle_module
from edge_runtime import gallery, interpreter
from edge_runtime.storage import write_atomically
from tf_pilltrack import dataset, metrics, paths
from tf_pilltrack import params as params_module


def embed_split(model_interpreter, split: dataset.Split, views: int) -> np.ndarray:
    return interpreter.embed(model_interpreter, split.pixels, views)


def draw_calibration_galleries(labels: list[str], settings: dict, seed: int) -> list[tuple[list[str], list[str]]]:
    """(enrolled, absent) calibration pills of each calibration gallery (module docstring): a
    draw of gallery_pills / (1 - calibration_absent) pills, at least one of them absent and two
    enrolled; all the pills in one draw when there are no more than that."""
    if len(labels) < 3:
        raise ValueError(f"{len(labels)} calibration classes: the naming rule needs at least 3")
    fraction = settings["calibration_absent"]
    drawn = int(round(settings["calibration_gallery_pills"] / (1.0 - fraction))) if fraction < 1.0 else len(labels)
    whole = drawn >= len(labels)
    galleries = []
    for number in range(1 if whole else settings["calibration_galleries"]):
        rng = np.random.default_rng(seed if whole else [seed, number])
        chosen = [labels[index] for index in rng.permutation(len(labels))[:min(drawn, len(labels))]]
        count = min(len(chosen) - 2, max(1, int(round(fraction * len(chosen)))))
        galleries.append((sorted(chosen[count:]), sorted(chosen[:count])))
    return galleries


def calibrate(gallery_embeddings: np.ndarray, references: dataset.Split, query_embeddings: np.ndarray,
              queries: dataset.Split, settings: dict, seed: int) -> dict:
    """The naming rule (unknown threshold and look-alike margin) of `settings` (params.yaml's
    `enroll`) on the calibration classes' galleries (`draw_calibration_galleries`), with the
    figures it was set from."""
    galleries = draw_calibration_galleries(sorted(set(references.labels.tolist())), settings, seed)
    best, margins, correct, absent_best, absent_margins = [], [], [], [], []
    for enrolled, absent in galleries:
        in_gallery = np.isin(references.labels, enrolled)
        known, away = np.isin(queries.labels, enrolled), np.isin(queries.labels, absent)
        gallery_rows, gallery_labels = gallery_embeddings[in_gallery], references.labels[in_gallery]
        order, distances = metrics.rank_gallery(query_embeddings[known], gallery_rows, 1)
        best.append(distances[:, 0])
        correct.append(gallery_labels[order[:, 0]] == queries.labels[known])
        margins.append(metrics.label_margins(query_embeddings[known], gallery_rows, gallery_labels))
        absent_best.append(metrics.rank_gallery(query_embeddings[away], gallery_rows, 1)[1][:, 0])
        absent_margins.append(metrics.label_margins(query_embeddings[away], gallery_rows, gallery_labels))
    best, margins, correct, absent_best, absent_margins = (
        np.concatenate(values) for values in (best, margins, correct, absent_best, absent_margins))
    rule = metrics.choose_rule(best, margins, correct, absent_best, absent_margins,
                               settings["min_named_correct"], settings["max_absent_named"], settings["rule_steps"])
    return {
        "threshold": rule["threshold"],
        "lookalike_margin": rule["margin"],
        "targets_met": rule["met"],
        "named_share": rule["named_share"],
        "named_correct": rule["named_correct"],
        "absent_named": rule["absent_named"],
        "calibration_recall_at_1": float(correct.mean()),
        "calibration_galleries": len(galleries),
        "calibration_known_classes": len(galleries[0][0]),
        "calibration_absent_classes": len(galleries[0][1]),
        "calibration_queries": int(len(correct)),
        "calibration_absent_queries": int(len(absent_best)),
        "min_named_correct": settings["min_named_correct"],
        "max_absent_named": settings["max_absent_named"],
        **metrics.lookalike_rates(margins, correct, rule["margin"]),
    }


def run(params: dict, echo: Callable[[str], None] = print) -> dict:
    started = time.time()
    settings = params["enroll"]
    seed = params["base"]["seed"]
    views = params_module.preprocess_config(params).symmetry_views
    model_interpreter = interpreter.make_interpreter(paths.STUDENT_QAT_TFLITE, threads=1)
    calibration_references = dataset.load_split("calibration_references")
    calibration_queries = dataset.load_split("calibration_queries")
    calibration_query_embeddings = embed_split(model_interpreter, calibration_queries, views)
    calibration = calibrate(
        embed_split(model_interpreter, calibration_references, views), calibration_references,
        calibration_query_embeddings, calibration_queries, settings, seed)
    references = dataset.load_split("references")
    embeddings = embed_split(model_interpreter, references, views)
    # search_k follows the gallery's size, as it does when the device enrolls more pills; it is
    # checked here on real photos of pills outside the gallery (the calibration classes').
    search_k = gallery.search_k_for_size(len(embeddings), settings["annoy_trees"])
    index = gallery.build_index(embeddings, settings["annoy_trees"], seed)
    search = {
        "search_k": search_k,
        "top1_agreement": gallery.top1_agreement(index, embeddings, calibration_query_embeddings, search_k),
        "smallest_search_k_for_target": gallery.choose_search_k(
            embeddings, settings["annoy_trees"], settings["search_k_agreement"], seed,
            queries=calibration_query_embeddings),
        "target_agreement": settings["search_k_agreement"],
        "queries": int(len(calibration_query_embeddings)),
    }
    index.unload()
    bundle_module.write_bundle(
        paths.BUNDLE, paths.STUDENT_QAT_TFLITE, embeddings, [str(label) for label in references.labels],
        threshold=calibration["threshold"], lookalike_margin=calibration["lookalike_margin"],
        preprocess=params_module.preprocess_config(params), annoy_trees=settings["annoy_trees"],
        search_k=search_k, seed=seed,
        extra={"profile": params["base"]["profile"], "calibration": calibration, "search_k_check": search},
    )
    summary = {
        "gallery_items": int(len(references)),
        "gallery_pills": int(len(set(references.labels.tolist()))),
        "search_k": int(search_k),
        "search_k_top1_agreement": search["top1_agreement"],
        "smallest_search_k_for_target": search["smallest_search_k_for_target"],
        "unknown_threshold": calibration["threshold"],
        "lookalike_margin": calibration["lookalike_margin"],
        "calibration_recall_at_1": calibration["calibration_recall_at_1"],
        "calibration_named_share": calibration["named_share"],
        "calibration_named_correct": calibration["named_correct"],
        "calibration_absent_named": calibration["absent_named"],
        "calibration_targets_met": calibration["targets_met"],
        "runtime": interpreter.runtime_name(),
        "seconds": round(time.time() - started, 1),
    }
    paths.REPORTS.mkdir(parents=True, exist_ok=True)
    write_atomically(paths.REPORTS / "enroll.json", json.dumps(summary, indent=2).encode())
    echo(f"enroll: {summary['gallery_pills']} novel pills ({summary['gallery_items']} photos) in {paths.BUNDLE}/ "
         f"via {summary['runtime']}; naming rule: within {summary['unknown_threshold']:.3f} cosine distance and "
         f"no other pill within {summary['lookalike_margin']:.4f} of it. On the calibration classes "
         f"({calibration['calibration_galleries']} galleries of {calibration['calibration_known_classes']} enrolled, "
         f"{calibration['calibration_absent_classes']} absent) "
         f"it names {calibration['named_share']:.1%} of enrolled pills' photos, {calibration['named_correct']:.1%} "
         f"of named answers right, {calibration['absent_named']:.1%} of absent pills' photos named (targets "
         f">= {settings['min_named_correct']:.0%} right, <= {settings['max_absent_named']:.0%} absent named: "
         f"{'met' if calibration['targets_met'] else 'NOT met, the most precise rule taken'}); search_k {search_k} "
         f"(top-1 agreement with exact search {search['top1_agreement']:.3f} on {search['queries']} calibration "
         f"photos; the smallest reaching {search['target_agreement']} there: "
         f"{search['smallest_search_k_for_target']})")
    return summary
