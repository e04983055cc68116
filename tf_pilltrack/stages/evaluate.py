"""`pilltrack evaluate`: embed every model's crops and score them (tf_pilltrack.scoring.evaluation), write
metrics/evaluation.json, reports/episode_answers.json and reports/recall_at_k.csv, print the tables."""

from __future__ import annotations

import json
import time
from typing import Callable

from edge_runtime.storage import write_atomically
from tf_pilltrack import params as params_module
from tf_pilltrack import paths
from tf_pilltrack import settings as settings_module
from tf_pilltrack.scoring.evaluation import (EPISODE_MODELS, RECALL_CURVE_DEPTH, Inputs, embed_all, episode_table,
                                             load_inputs, score_all)
from tf_pilltrack.scoring.results import (VIEWS, episode_figures, episode_run, episode_runs, model_figures, shots_key,
                                          views_scored)
from tf_pilltrack.settings import Episodes, Settings
from tf_pilltrack.training import tracking

LOGGED = ("base", "profiles", "prepare", "episodes")  # the params sections its MLflow run logs


def write_results(run_params: tracking.RunParams, settings: Episodes, results: dict, curves: dict,
                  answers: dict) -> None:
    """metrics/evaluation.json, reports/episode_answers.json and reports/recall_at_k.csv, each
    written atomically, and the stage's MLflow run of `run_params` (headline metrics, both JSON
    files, the shipped model registered with its figures); `settings` is the `episodes` section."""
    paths.METRICS.mkdir(exist_ok=True)
    write_atomically(paths.METRICS / "evaluation.json", json.dumps(results, indent=2).encode())
    paths.REPORTS.mkdir(exist_ok=True)
    write_atomically(paths.REPORTS / "episode_answers.json", json.dumps(answers, indent=1).encode())
    shipped_metrics = {f"novel_{key}": float(value) for key, value in model_figures(results, "student_int8").items()}
    episode_metrics = {
        f"episodes_{data}_k{shots}_{views}_{model}_{key}": figures[key]
        for data in episode_runs(results) for shots in settings.shots for model in EPISODE_MODELS
        for views in views_scored(episode_run(results, data), shots, model)
        for figures in [episode_figures(results, data, shots, model, views)]
        for key in ("recall_at_1", "false_accept_rate_episode", "false_accept_rate_bundle") if key in figures}
    with tracking.stage_run("evaluate", run_params) as mlflow:
        mlflow.log_metrics(shipped_metrics)
        mlflow.log_metrics(episode_metrics)
        mlflow.log_metrics({f"{name}_recall_at_1": model_figures(results, name)["recall_at_1"] for name in curves})
        mlflow.log_artifact(str(paths.METRICS / "evaluation.json"))
        mlflow.log_artifact(str(paths.REPORTS / "episode_answers.json"))
        tracking.register_model(paths.STUDENT_QAT_TFLITE, f"pilltrack-student-{run_params.profile}",
                                shipped_metrics)
    names = list(curves)
    rows = ["k," + ",".join(names)] + [
        f"{k + 1}," + ",".join(f"{curves[name][k]:.4f}" for name in names) for k in range(RECALL_CURVE_DEPTH)]
    write_atomically(paths.REPORTS / "recall_at_k.csv", ("\n".join(rows) + "\n").encode())


def print_tables(every: Settings, inputs: Inputs, results: dict, answers: dict, seconds: float,
                 echo: Callable[[str], None]) -> None:
    """The stage's figures as text: fixed-split retrieval, the bundle's open-set rates and parity,
    the episode table, the naming rule, close calls and the hardest pills."""
    settings, loaded = every.episodes, inputs.loaded
    shots = max(settings.shots)
    echo(f"\nNovel-class retrieval ({len(inputs.queries)} queries, {every.prepare.reference_shots}-shot gallery):")
    echo(f"{'model':<20} {'Recall@1':>9} {'Recall@5':>9} {'mAP@R':>7}")
    for name in ("baseline_colour_shape", "imagenet_frozen", "teacher", "student_float", "student_qat_keras",
                 "student_ptq_int8", "student_int8"):
        row = model_figures(results, name)
        echo(f"{name:<20} {row['recall_at_1']:>9.3f} {row['recall_at_5']:>9.3f} {row['map_at_r']:>7.3f}")
    shipped_row, parity = model_figures(results, "student_int8"), results["parity"]
    echo(f"int8 via bundle: false accepts of gallery-absent pills {shipped_row['false_accept_rate']:.3f}, "
         f"correct accepts {shipped_row['correct_accept_rate']:.3f} at threshold {shipped_row['unknown_threshold']:.3f}, "
         f"AUROC {shipped_row.get('auroc_known_vs_absent', float('nan')):.3f}; float/int8 top-1 agreement "
         f"{parity['float_vs_int8_top1_agreement']:.3f}, QAT Keras/int8 "
         f"{parity['qat_keras_vs_int8_top1_agreement']:.3f} (every disagreement a near tie: the Keras "
         f"model's top two pills within {parity['qat_keras_vs_int8_largest_disagreeing_margin']:.4f} "
         f"cosine distance, as on {parity['qat_keras_vs_int8_near_tie_share']:.1%} of queries); int8 size "
         f"{results['sizes']['student_int8_bytes'] / 1024:.1f} KiB ({seconds:.0f} s)")
    echo(f"\nFew-shot episodes on novel classes ({settings.count} per row, mean ± sample std; K shots per known "
         f"pill, by source photo; Recall@k over distinct pills; {settings.absent_classes:.0%} of the classes "
         f"absent from the gallery; FAR = gallery-absent queries accepted; FAR@bundle at the int8 bundle's "
         f"calibrated threshold {loaded.unknown_threshold:.3f}, FAR@episode at the threshold keeping "
         f"{settings.keep_correct:.0%} of the episode's correct answers):")
    for row in episode_table(results, settings):
        echo(row)
    echo(f"\nNaming rule of the bundle (name the nearest pill within {loaded.unknown_threshold:.3f} when no other pill "
         f"is within {loaded.lookalike_margin:.4f} of it; else unknown), int8, {shots}-shot episodes:")
    for data in episode_runs(results):
        for views in VIEWS:
            row = episode_figures(results, data, shots, "student_int8", views) or {}
            if "named_share_bundle" in row:
                echo(f"  {data:<10} {views:<7} names {row['named_share_bundle']:.1%} of enrolled pills' photos, "
                     f"{row['named_correct_bundle']:.1%} of named answers right, {row['absent_named_bundle']:.1%} of "
                     f"absent pills' photos named")
    echo(f"\nClose calls (runner-up pill within the bundle's look-alike margin {loaded.lookalike_margin:.4f}), int8:")
    rows = [("synthetic novel, bundle (Annoy)", shipped_row)] + [
        (f"{data} episodes, {shots}-shot, {views}", episode_figures(results, data, shots, "student_int8", views))
        for data in episode_runs(results) for views in VIEWS]
    for name, row in rows:
        echo(f"  {name:<36} flagged {row['lookalike_flagged']:.1%} of answers, catching "
             f"{row['lookalike_errors_caught']:.1%} of the wrong ones; Recall@1 of the rest "
             f"{row['recall_at_1_unflagged']:.3f} (all: {row['recall_at_1']:.3f})")
    echo(f"\nLook-alikes of the int8 model, {shots}-shot single view (all pairs: {paths.REPORTS / 'episode_answers.json'}):")
    for data, tally in answers.items():
        tally = tally[shots_key(shots)]
        hardest = sorted(tally["recall_at_1_by_pill"].items(), key=lambda item: (item[1], item[0]))[:3]
        echo(f"  {data}: lowest Recall@1 " + ", ".join(f"{pill} {value:.2f}" for pill, value in hardest)
             + "; most frequent false accepts " + ", ".join(
                 f"{pill} as {other} ({share:.0%} of its queries)" for pill, other, _, share in tally["false_accepts"][:3]))


def announce(settings: Episodes, inputs: Inputs, echo: Callable[[str], None]) -> None:
    """What the stage evaluates on, and the real photos it skipped."""
    references, absent, report = inputs.references, inputs.absent, inputs.real_report
    echo(f"evaluate: {len(set(references.labels.tolist()))} novel pills, {len(references)} gallery photos, "
         f"{len(inputs.queries)} queries, {len(absent)} photos of {len(set(absent.labels.tolist()))} gallery-absent pills")
    echo(f"evaluate: real set {settings.real_source}: {report['crops_used']} crops of "
         f"{report['classes']} pills from {report['photos']} photos; localisation finds no pill in "
         f"{report['localisation_no_pill_found']} of {report['images']} images"
         + (f"; {report['trained_classes_left_out']} pills left out, the models trained on them"
            if report["trained_classes_left_out"] else "")
         + {False: " (localisation off for the episodes: tight crops)",
            "auto": " (localisation auto for the episodes: photos whose pill touches the edge used whole)"}
         .get(inputs.loaded.preprocess.localise, ""))
    for entry in inputs.real_skipped[:10]:
        echo(f"  skipped {entry['file']}: {entry['reason']}")


def run(params: dict, echo: Callable[[str], None] = print) -> dict:
    """The stage: embed every model's crops, score them, write the figures, print them."""
    started = time.time()
    every = settings_module.from_params(params)
    inputs = load_inputs(every.episodes.real_source)
    announce(every.episodes, inputs, echo)
    fixed, pools = embed_all(every.profile, every.teacher, inputs)
    results, curves, answers = score_all(every.episodes, inputs, fixed, pools)
    run_params = params_module.run_params(params, LOGGED)
    write_results(run_params, every.episodes, results, curves, answers)
    print_tables(every, inputs, results, answers, time.time() - started, echo)
    return results
