"""Stage `enroll`: the device bundle, made with the device's own code.

The novel classes' reference shots are embedded by the exported int8 model through
`edge_runtime.interpreter` (the same code path as `pilltrack-edge`), and written with
`edge_runtime.bundle.write_bundle`: model, Annoy index, embeddings and sidecar.

The unknown-pill threshold is calibrated on the calibration classes, which neither training
nor evaluation uses: their reference shots form a gallery, their other photos query it, and
the threshold is the cosine distance that accepts `enroll.target_recall` of the correct
top-1 answers. The look-alike margin is set there too: the gap between the nearest and the
second-nearest pill at or under which `enroll.lookalike_errors` of the wrong top-1 answers
fall; the device flags an answer with so close a runner-up as a close call. Annoy's search_k follows the gallery's size (`gallery.search_k_for_size`, as on
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


def calibrate(gallery_embeddings: np.ndarray, references: dataset.Split, query_embeddings: np.ndarray,
              queries: dataset.Split, target_recall: float, lookalike_errors: float) -> dict:
    """The distance threshold keeping `target_recall` of correct top-1 answers and the
    look-alike margin flagging `lookalike_errors` of wrong ones, with the figures they were
    set from."""
    order, distances = metrics.rank_gallery(query_embeddings, gallery_embeddings, 1)
    correct = references.labels[order[:, 0]] == queries.labels
    threshold = metrics.threshold_for_recall(distances[correct, 0], target_recall)
    margins = metrics.label_margins(query_embeddings, gallery_embeddings, references.labels)
    margin = metrics.margin_for_errors(margins, ~correct, lookalike_errors)
    return {
        "threshold": threshold,
        "lookalike_margin": margin,
        "calibration_recall_at_1": float(correct.mean()),
        "calibration_queries": int(len(queries)),
        "target_recall": target_recall,
        "lookalike_errors": lookalike_errors,
        **metrics.lookalike_rates(margins, correct, margin),
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
        calibration_query_embeddings, calibration_queries, settings["target_recall"], settings["lookalike_errors"])
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
        calibration["threshold"], params_module.preprocess_config(params), settings["annoy_trees"],
        search_k, seed, extra={"profile": params["base"]["profile"], "calibration": calibration,
               "search_k_check": search},
        lookalike_margin=calibration["lookalike_margin"],
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
        "calibration_lookalike_flagged": calibration["lookalike_flagged"],
        "calibration_recall_at_1_unflagged": calibration["recall_at_1_unflagged"],
        "runtime": interpreter.runtime_name(),
        "seconds": round(time.time() - started, 1),
    }
    paths.REPORTS.mkdir(parents=True, exist_ok=True)
    write_atomically(paths.REPORTS / "enroll.json", json.dumps(summary, indent=2).encode())
    echo(f"enroll: {summary['gallery_pills']} novel pills ({summary['gallery_items']} photos) in {paths.BUNDLE}/ "
         f"via {summary['runtime']}; unknown threshold {summary['unknown_threshold']:.3f} (cosine distance, keeps "
         f"{settings['target_recall']:.0%} of correct answers on calibration classes); look-alike margin "
         f"{calibration['lookalike_margin']:.4f} (flags {settings['lookalike_errors']:.0%} of wrong answers there, "
         f"{calibration['lookalike_flagged']:.0%} of all; Recall@1 of the rest {calibration['recall_at_1_unflagged']:.3f}"
         f" vs {calibration['calibration_recall_at_1']:.3f}); search_k {search_k} "
         f"(top-1 agreement with exact search {search['top1_agreement']:.3f} on {search['queries']} calibration "
         f"photos; the smallest reaching {search['target_agreement']} there: "
         f"{search['smallest_search_k_for_target']})")
    return summary
