"""`pilltrack enroll`: embed the novel classes' reference shots with the int8 model, calibrate the naming
rule (tf_pilltrack.scoring.calibration) and write the device bundle, `bundle/`; then choose the counter
page's confidence tiers for its model on real held-out photos (tf_pilltrack.scoring.tiers) and write
them into the bundle as `tiers.json`, their held-out figures to `reports/enroll.json` under `tiers`."""

from __future__ import annotations

import json
import time
from typing import Callable

from edge_runtime import bundle as bundle_module
from edge_runtime import gallery, interpreter
from edge_runtime.storage import write_atomically
from tf_pilltrack import paths, settings
from tf_pilltrack.data import dataset
from tf_pilltrack.scoring import tiers
from tf_pilltrack.scoring.calibration import calibrate, embed_split


def run(params: dict, echo: Callable[[str], None] = print) -> dict:
    started = time.time()
    every = settings.from_params(params)
    enroll = every.enroll
    seed = every.base.seed
    views = every.preprocess_config.symmetry_views
    model_interpreter = interpreter.make_interpreter(paths.STUDENT_QAT_TFLITE, threads=1)
    calibration_references = dataset.load_split("calibration_references")
    calibration_queries = dataset.load_split("calibration_queries")
    calibration_query_embeddings = embed_split(model_interpreter, calibration_queries, views)
    calibration = calibrate(
        embed_split(model_interpreter, calibration_references, views), calibration_references,
        calibration_query_embeddings, calibration_queries, enroll, seed)
    references = dataset.load_split("references")
    embeddings = embed_split(model_interpreter, references, views)
    # search_k follows the gallery's size, as it does when the device enrolls more pills; it is
    # checked here on real photos of pills outside the gallery (the calibration classes').
    search_k = gallery.search_k_for_size(len(embeddings), enroll.annoy_trees)
    index = gallery.build_index(embeddings, enroll.annoy_trees, seed)
    search = {
        "search_k": search_k,
        "top1_agreement": gallery.top1_agreement(index, embeddings, calibration_query_embeddings, search_k),
        "smallest_search_k_for_target": gallery.choose_search_k(
            embeddings, enroll.annoy_trees, enroll.search_k_agreement, seed,
            queries=calibration_query_embeddings),
        "target_agreement": enroll.search_k_agreement,
        "queries": int(len(calibration_query_embeddings)),
    }
    index.unload()
    bundle_module.write_bundle(
        paths.BUNDLE, paths.STUDENT_QAT_TFLITE, embeddings, [str(label) for label in references.labels],
        threshold=calibration["threshold"], lookalike_margin=calibration["lookalike_margin"],
        preprocess=every.preprocess_config, annoy_trees=enroll.annoy_trees,
        search_k=search_k, seed=seed,
        extra={"profile": every.base.profile, "calibration": calibration, "search_k_check": search},
    )
    # the counter page's "likely" tier for this bundle's model, measured on real photos: bundle/tiers.json
    tier_report = tiers.choose_for_bundle(paths.BUNDLE, enroll.tiers, every.episodes.real_source,
                                          made_by="pilltrack enroll (params.yaml enroll.tiers)")
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
        "tiers": tier_report,
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
         f">= {enroll.min_named_correct:.0%} right, <= {enroll.max_absent_named:.0%} absent named: "
         f"{'met' if calibration['targets_met'] else 'NOT met, the most precise rule taken'}); search_k {search_k} "
         f"(top-1 agreement with exact search {search['top1_agreement']:.3f} on {search['queries']} calibration "
         f"photos; the smallest reaching {search['target_agreement']} there: "
         f"{search['smallest_search_k_for_target']})")
    echo(tiers.describe(tier_report))
    return summary
