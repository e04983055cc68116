"""Stage `evaluate`: open-set retrieval on the novel classes, which no model trained on.

The gallery is the novel classes' reference shots, the queries their other photos. Each model
embeds both; queries are answered by nearest neighbour. Reported per model: Recall@1,
Recall@5 and mAP@R. The shipped int8 model is evaluated through the device bundle exactly as
`pilltrack-edge` answers (LiteRT interpreter, Annoy search with the bundle's search_k).
Open set: photos of novel classes kept out of the gallery must come back "unknown"; at the
bundle's threshold we report the false-accept rate, the correct-accept rate of known pills and
the AUROC of known vs absent.

Few-shot episodes (issue #3's protocol, `tf_pilltrack/episodes.py`, settings `episodes` in
params.yaml), in the same run: on the synthetic novel classes (their reference, query and
absent photos pooled and re-drawn in every episode) and on the embedded real photo set
(`episodes.real_source`: 17 real pill types, all novel to a model trained on synthetic pills),
for K = each of `episodes.shots`, with single-view and multi-view queries, for the shipped int8
model (embedded by the device code, `interpreter.embed`), the teacher, the colour/shape
baseline and the anchor `imagenet_frozen` (EfficientNet-Lite0's ImageNet features, pooled, never
trained on a pill: what training buys is the distance above it) on the same episodes. Real images go through the same ingest and preprocessing as
`prepare` (with the bundle's preprocessing constants). Search is exact. False accepts of
gallery-absent pills are reported at two thresholds: "bundle", the int8 bundle's unknown
threshold calibrated on the synthetic calibration classes (int8 only), and "episode", the one
keeping `episodes.keep_correct` of the episode's own correct answers.

`run` goes load → embed → score → write → print (`load_inputs`, `embed_all`, `score_all`,
`write_results`, `print_tables`). About 440 lines: the stage's helpers above them are used by the
benchmarks too (`benchmarks/training_sweep.py`, `naming_rules.py`), and `print_tables` is long
because the stage prints every figure it writes.
"""

from __future__ import annotations

import json
import time
from typing import Callable, NamedTuple

import numpy as np

from edge_runtime import bundle as bundle_module
from edge_runtime import gallery, interpreter
from edge_runtime.preprocessing import PreprocessConfig
from edge_runtime.storage import write_atomically
from tf_pilltrack import baseline, dataset, efficientnet, episodes, metrics, models, paths, tracking

RECALL_CURVE_DEPTH = 10


def _recall_curve(ranked_labels: np.ndarray, query_labels: np.ndarray) -> list[float]:
    hits = ranked_labels == query_labels[:, None]
    return [float(hits[:, :k].any(axis=1).mean()) for k in range(1, ranked_labels.shape[1] + 1)]


def score(query_embeddings: np.ndarray, query_labels: np.ndarray,
          gallery_embeddings: np.ndarray, gallery_labels: np.ndarray) -> tuple[dict, list[float], np.ndarray]:
    """Metrics by exact search, the Recall@k curve, and each query's top-1 label."""
    result = metrics.evaluate_embeddings(query_embeddings, query_labels, gallery_embeddings, gallery_labels)
    order, _ = metrics.rank_gallery(query_embeddings, gallery_embeddings, len(gallery_embeddings))
    curve = _recall_curve(episodes.distinct_labels(gallery_labels[order], RECALL_CURVE_DEPTH), query_labels)
    return result, curve, gallery_labels[order[:, 0]]


def keras_int8_agreement(keras_queries: np.ndarray, keras_references: np.ndarray, int8_queries: np.ndarray,
                   reference_labels: np.ndarray, keras_top1: np.ndarray, int8_top1: np.ndarray) -> dict:
    """How far an int8 model's answers follow its Keras model's, and why they differ: the median
    cosine similarity of the two models' embeddings of a query, the largest Keras margin
    (`metrics.label_margins`) among the queries whose top-1 pill differs (0 when none), and the share
    of queries whose Keras margin is no larger: the near ties where disagreements happen."""
    margins = metrics.label_margins(keras_queries, keras_references, reference_labels)
    disagree = keras_top1 != int8_top1
    largest = float(margins[disagree].max()) if disagree.any() else 0.0
    return {
        "embedding_cosine_median": float(np.median(np.sum(keras_queries * int8_queries, axis=1))),
        "largest_disagreeing_margin": largest,
        "near_tie_share": float(np.mean(margins <= largest)) if disagree.any() else 0.0,
    }


def evaluate_bundle(loaded, query_embeddings: np.ndarray, queries: dataset.Split,
                    absent_embeddings: np.ndarray) -> dict:
    """The shipped path: int8 embeddings (of `queries` and of the gallery-absent photos, by the
    bundle's model), Annoy search with the bundle's search_k, threshold."""
    labels = np.array(loaded.labels)
    ranked, best, margins = [], [], []
    for embedding in query_embeddings:
        matches = gallery.search(loaded.index, loaded.labels, embedding, 5, loaded.search_k)
        ranked.append([match.label for match in matches] + [""] * (5 - len(matches)))
        best.append(matches[0].distance)
        margins.append(matches[1].distance - matches[0].distance if len(matches) > 1 else 2.0)
    ranked = np.array(ranked, dtype=object)
    result = metrics.retrieval_metrics(ranked, queries.labels.astype(object), labels)
    # mAP@R needs every gallery item's rank, which the per-label Annoy answer does not give:
    # rank the bundle's own int8 embeddings exactly.
    result["map_at_r"] = metrics.evaluate_embeddings(query_embeddings, queries.labels, loaded.embeddings, labels)["map_at_r"]
    exact_order, _ = metrics.rank_gallery(query_embeddings, loaded.embeddings, 1)
    result["annoy_exact_top1_agreement"] = float(np.mean(labels[exact_order[:, 0]] == ranked[:, 0]))
    absent_best, absent_margins = [], []
    for embedding in absent_embeddings:
        matches = gallery.search(loaded.index, loaded.labels, embedding, 2, loaded.search_k)
        absent_best.append(matches[0].distance)
        absent_margins.append(matches[1].distance - matches[0].distance if len(matches) > 1 else 2.0)
    correct = ranked[:, 0] == queries.labels.astype(object)
    result.update(metrics.open_set_rates(np.array(best), correct, np.array(absent_best), loaded.unknown_threshold))
    result["unknown_threshold"] = loaded.unknown_threshold
    result.update(metrics.lookalike_rates(np.array(margins), correct, loaded.lookalike_margin))
    result.update(metrics.selective_rates(np.array(best), np.array(margins), correct, np.array(absent_best),
                                          np.array(absent_margins), loaded.unknown_threshold, loaded.lookalike_margin))
    result["lookalike_margin"] = loaded.lookalike_margin
    return result


def embed_keras(model, pixels: np.ndarray, views: int) -> np.ndarray:
    """A Keras model's embeddings of crops over `views` symmetric views, as the device's."""
    return interpreter.embed_views(lambda view: models.embed(model, view), pixels, views)


def concatenate(*splits: dataset.Split) -> dataset.Split:
    return dataset.Split(*(np.concatenate([getattr(split, field) for split in splits]) for field in dataset.Split._fields))


def draw(name: str, pool: dataset.Split, shots: int, settings: dict) -> list[episodes.Episode]:
    """The seeded K-shot episodes of `settings` over `pool`; an error names the data set."""
    try:
        return episodes.draw_episodes(pool.labels, pool.groups, shots, settings["absent_classes"],
                                      settings["views"], settings["count"], settings["seed"])
    except ValueError as error:
        raise ValueError(f"{name} episodes: {error}") from None


def tally_episodes(name: str, pool: dataset.Split, embeddings: np.ndarray, settings: dict) -> dict:
    """`episodes.tally_answers` of one model over the same episodes as `run_episodes`, per K."""
    return {f"shots_{shots}": episodes.tally_answers(embeddings, pool.labels, draw(name, pool, shots, settings),
                                                     settings["keep_correct"])
            for shots in settings["shots"]}


def run_episodes(name: str, pool: dataset.Split, embeddings: dict[str, np.ndarray], settings: dict,
                 thresholds: dict[str, dict[str, float]], lookalike_margins: dict[str, float]) -> dict:
    """Every model's figures over `settings["count"]` seeded episodes per K (shots_<K>), each
    as {"single": summary, "multi": summary} (episodes.summarise, plus the episode count), with
    the classes and the mean query counts of the episodes."""
    result = {"classes": len(set(pool.labels.tolist())), "crops": len(pool), "photos": len(set(pool.groups.tolist()))}
    for shots in settings["shots"]:
        drawn = draw(name, pool, shots, settings)
        entry = {"known_classes": len(drawn[0].known_classes), "absent_classes": len(drawn[0].absent_classes),
                 "classes_with_too_few_photos": result["classes"] - len(drawn[0].known_classes) - len(drawn[0].absent_classes),
                 "queries": float(np.mean([len(episode.queries) for episode in drawn])),
                 "absent_queries": float(np.mean([len(episode.absent) for episode in drawn])),
                 "multi_view_queries": float(np.mean([len(episode.query_views) for episode in drawn])),
                 "absent_multi_view_queries": float(np.mean([len(episode.absent_views) for episode in drawn]))}
        for model, model_embeddings in embeddings.items():
            scored = [episodes.score_episode(model_embeddings, pool.labels, episode, settings["keep_correct"],
                                             thresholds.get(model), lookalike_margins.get(model)) for episode in drawn]
            entry[model] = {}
            for views in ("single", "multi"):
                present = [figures[views] for figures in scored if views in figures]
                if present:
                    entry[model][views] = {"episodes": len(present), **episodes.summarise(present)}
        result[f"shots_{shots}"] = entry
    return result


EPISODE_MODELS = ("baseline_colour_shape", "imagenet_frozen", "teacher", "student_ptq_int8", "student_int8")
EPISODE_DATA = ("synthetic", "reference", "real")  # synthetic pills, composited reference pills, real photos


def split_novel_pool(pool: dataset.Split, embeddings: dict[str, dict[str, np.ndarray]]
                     ) -> tuple[dict[str, dataset.Split], dict[str, dict[str, np.ndarray]]]:
    """The novel classes' photos (and each model's embeddings of them, `embeddings["novel"]`)
    split into synthetic pills and composited reference pills (class names dataset.REFERENCE_PREFIX...);
    a kind without any novel class is left out. `embeddings` keeps its other entries."""
    is_reference = np.array([str(label).startswith(dataset.REFERENCE_PREFIX) for label in pool.labels], bool)
    pools, split = {}, {key: value for key, value in embeddings.items() if key != "novel"}
    for data, chosen in (("synthetic", ~is_reference), ("reference", is_reference)):
        if chosen.any():
            pools[data] = dataset.Split(*(field[chosen] for field in pool))
            split[data] = {model: values[chosen] for model, values in embeddings["novel"].items()}
    return pools, split


def episode_table(results: dict, settings: dict) -> list[str]:
    """The episode figures as text rows, mean ± std."""
    def cell(summary: dict, key: str) -> str:
        return f"{summary[key]:.3f}±{summary[key + '_std']:.3f}" if key in summary else "-"

    rows = [f"{'data':<10}{'K':>3} {'query':<9}{'model':<22}{'Recall@1':>13}{'Recall@5':>13}{'mAP@R':>13}"
            f"{'AUROC':>13}{'FAR@episode':>13}{'FAR@bundle':>13}"]
    for data in (data for data in EPISODE_DATA if data in results):
        for shots in settings["shots"]:
            entry = results[data][f"shots_{shots}"]
            for views in ("single", "multi"):
                for model in EPISODE_MODELS:
                    summary = entry.get(model, {}).get(views)
                    if summary is None:
                        continue
                    label = "1 view" if views == "single" else f"{settings['views']} views"
                    rows.append(f"{data:<10}{shots:>3} {label:<9}{model:<22}" + "".join(
                        f"{cell(summary, key):>13}" for key in ("recall_at_1", "recall_at_5", "map_at_r",
                                                                "auroc_known_vs_absent", "false_accept_rate_episode",
                                                                "false_accept_rate_bundle")))
    return rows


RISK_COVERAGE_POINTS = 20


def risk_coverage_curve(pool: dataset.Split, embeddings: np.ndarray, shots: int, settings: dict,
                        margin: float) -> dict:
    """The naming rule's risk-coverage curve over the single-view answers of the K = `shots`
    episodes (pooled): at the bundle's look-alike `margin`, RISK_COVERAGE_POINTS thresholds."""
    answers = episodes.pooled_answers(embeddings, pool.labels, draw("real", pool, shots, settings))
    return {"shots": shots, "margin": margin, "points": metrics.risk_coverage(
        answers["best"], answers["margins"], answers["correct"], answers["absent_best"],
        answers["absent_margins"], margin, RISK_COVERAGE_POINTS)}


def load_novel_real(settings: dict, config: PreprocessConfig) -> tuple[dataset.Split, dict, list[dict]]:
    """The real photo set of params.yaml's `episodes` section (`episodes.load_real` with
    `config`), less every pill a model trained on: when the real set is also the training source
    (data.source) or the mix set (data.mix_source), its episodes keep only the pills that no
    model trained on (by class name, training and mix splits). The report counts the pills left
    out as `trained_classes_left_out`."""
    pool, report, skipped = episodes.load_real(settings["real_source"], config)
    trained_labels = np.concatenate([dataset.load_split(name).labels for name in ("train", "mix")])
    trained = np.isin(pool.labels, trained_labels)
    if trained.all():
        raise ValueError(f"{settings['real_source']}: every pill of episodes.real_source was trained on "
                         "(data.source or data.mix_source): no novel real pill is left to evaluate")
    report["trained_classes_left_out"] = len(set(pool.labels[trained].tolist()))
    return dataset.Split(*(field[~trained] for field in pool)), report, skipped


class Inputs(NamedTuple):
    """What `evaluate` reads: the novel classes' fixed splits, their pool (references, queries
    and absent photos in that order), the shipped bundle and the real photo set."""
    references: dataset.Split
    queries: dataset.Split
    absent: dataset.Split
    synthetic_pool: dataset.Split
    loaded: object
    real_pool: dataset.Split
    real_report: dict
    real_skipped: list[dict]


def load_inputs(settings: dict) -> Inputs:
    references = dataset.load_split("references")
    queries = dataset.load_split("queries")
    absent = dataset.load_split("absent_queries")
    loaded = bundle_module.load_bundle(paths.BUNDLE)
    real_pool, real_report, real_skipped = load_novel_real(settings, loaded.preprocess)
    return Inputs(references, queries, absent, concatenate(references, queries, absent), loaded,
                  real_pool, real_report, real_skipped)


def embed_all(params: dict, inputs: Inputs) -> tuple[dict, dict]:
    """Every model's embeddings, each crop over the bundle's symmetry views as the device embeds:
    (`fixed`: model -> (query, reference) embeddings of the fixed splits, `pools`: "novel" and
    "real" -> model -> embeddings of the synthetic pool and of the real photos). The teacher,
    baseline and int8 models embed the pools and their fixed splits are slices of them; the
    float and QAT Keras students embed the fixed splits only."""
    views = inputs.loaded.preprocess.symmetry_views
    cut, end = len(inputs.references), len(inputs.references) + len(inputs.queries)
    embedders = {
        "teacher": lambda pixels, model=models.load_teacher(params): embed_keras(model, pixels, views),
        "student_float": lambda pixels, model=models.load_float_student(params): embed_keras(model, pixels, views),
        "student_qat_keras": lambda pixels, model=models.load_qat_student(params): embed_keras(model, pixels, views),
        "baseline_colour_shape": baseline.embed,
        "imagenet_frozen": lambda pixels, model=efficientnet.load_pretrained(inputs.references.pixels.shape[1]):
            embed_keras(model, pixels, views),
        "student_ptq_int8": lambda pixels, model=interpreter.make_interpreter(paths.STUDENT_PTQ_TFLITE, threads=1):
            interpreter.embed(model, pixels, views),
        "student_int8": lambda pixels, model=interpreter.make_interpreter(inputs.loaded.model_path, threads=1):
            interpreter.embed(model, pixels, views),
    }
    fixed, pools = {}, {"novel": {}, "real": {}}
    for name, embed in embedders.items():
        if name in ("student_float", "student_qat_keras"):
            fixed[name] = (embed(inputs.queries.pixels), embed(inputs.references.pixels))
            continue
        pooled = embed(inputs.synthetic_pool.pixels)
        pools["novel"][name] = pooled
        pools["real"][name] = embed(inputs.real_pool.pixels)
        fixed[name] = (pooled[cut:end], pooled[:cut])
    return fixed, pools


def score_all(params: dict, inputs: Inputs, fixed: dict, pools: dict) -> tuple[dict, dict, dict]:
    """The figures of evaluation.json (fixed-split retrieval per model, parity, sizes, episodes),
    the Recall@k curves and the int8 model's answers per pill (episode_answers.json)."""
    settings, loaded, queries, references = params["episodes"], inputs.loaded, inputs.queries, inputs.references
    results, curves, top1 = {}, {}, {}
    for name in ("teacher", "student_float", "student_qat_keras", "baseline_colour_shape", "imagenet_frozen",
                 "student_ptq_int8"):
        query_embeddings, reference_embeddings = fixed[name]
        results[name], curves[name], top1[name] = score(query_embeddings, queries.labels,
                                                        reference_embeddings, references.labels)
    top1.pop("baseline_colour_shape"), top1.pop("imagenet_frozen")
    shipped_queries = fixed["student_int8"][0]
    absent_embeddings = pools["novel"]["student_int8"][len(references) + len(queries):]  # the pool's last part
    results["student_int8"] = evaluate_bundle(loaded, shipped_queries, queries, absent_embeddings)
    _, curves["student_int8"], top1["student_int8"] = score(
        shipped_queries, queries.labels, loaded.embeddings, np.array(loaded.labels))
    results["parity"] = {
        "float_vs_int8_top1_agreement": float(np.mean(top1["student_float"] == top1["student_int8"])),
        "qat_keras_vs_int8_top1_agreement": float(np.mean(top1["student_qat_keras"] == top1["student_int8"])),
        "int8_vs_teacher_recall_at_1": results["student_int8"]["recall_at_1"] / max(results["teacher"]["recall_at_1"], 1e-9),
        **{f"qat_keras_vs_int8_{key}": value for key, value in keras_int8_agreement(
            *fixed["student_qat_keras"], shipped_queries, references.labels,
            top1["student_qat_keras"], top1["student_int8"]).items()},
    }
    results["sizes"] = {"student_int8_bytes": paths.STUDENT_QAT_TFLITE.stat().st_size,
                        "student_ptq_int8_bytes": paths.STUDENT_PTQ_TFLITE.stat().st_size}
    results["queries"] = int(len(queries))
    thresholds = {"student_int8": {"bundle": loaded.unknown_threshold}}
    lookalike_margins = {"student_int8": loaded.lookalike_margin}
    # Novel classes are synthetic pills and real reference pills composited into scenes: episodes of each.
    pools_by_data, embeddings = split_novel_pool(inputs.synthetic_pool, pools)
    real_pool = inputs.real_pool
    results["episodes"] = {
        "count": settings["count"],
        "views": settings["views"],
        "keep_correct": settings["keep_correct"],
        "bundle_unknown_threshold": loaded.unknown_threshold,
        "bundle_lookalike_margin": loaded.lookalike_margin,
        **{data: run_episodes(data, pool, embeddings[data], settings, thresholds, lookalike_margins)
           for data, pool in pools_by_data.items()},
        "real": {**inputs.real_report, **run_episodes(f"real ({settings['real_source']})", real_pool,
                                                      embeddings["real"], settings, thresholds, lookalike_margins)},
    }
    shots = max(settings["shots"])
    real_best = results["episodes"]["real"][f"shots_{shots}"]
    results["parity"]["real_int8_vs_teacher_recall_at_1"] = (
        real_best["student_int8"]["single"]["recall_at_1"] / max(real_best["teacher"]["single"]["recall_at_1"], 1e-9))
    results["episodes"]["real"]["risk_coverage"] = risk_coverage_curve(
        real_pool, embeddings["real"]["student_int8"], shots, settings, loaded.lookalike_margin)
    answers = {data: tally_episodes(data, pool, embeddings[data]["student_int8"], settings)
               for data, pool in {**pools_by_data, "real": real_pool}.items()}
    return results, curves, answers


def write_results(params: dict, results: dict, curves: dict, answers: dict) -> None:
    """metrics/evaluation.json, reports/episode_answers.json and reports/recall_at_k.csv, each
    written atomically, and the stage's MLflow run (headline metrics, both JSON files, the
    shipped model registered with its figures)."""
    paths.METRICS.mkdir(exist_ok=True)
    write_atomically(paths.METRICS / "evaluation.json", json.dumps(results, indent=2).encode())
    paths.REPORTS.mkdir(exist_ok=True)
    write_atomically(paths.REPORTS / "episode_answers.json", json.dumps(answers, indent=1).encode())
    settings = params["episodes"]
    shipped_metrics = {f"novel_{key}": float(value) for key, value in results["student_int8"].items()}
    episode_metrics = {
        f"episodes_{data}_k{shots}_{views}_{model}_{key}": results["episodes"][data][f"shots_{shots}"][model][views][key]
        for data in EPISODE_DATA if data in results["episodes"] for shots in settings["shots"] for model in EPISODE_MODELS
        for views in results["episodes"][data][f"shots_{shots}"][model]
        for key in ("recall_at_1", "false_accept_rate_episode", "false_accept_rate_bundle")
        if key in results["episodes"][data][f"shots_{shots}"][model][views]}
    with tracking.stage_run("evaluate", params, ("profiles", "prepare", "episodes")) as mlflow:
        mlflow.log_metrics(shipped_metrics)
        mlflow.log_metrics(episode_metrics)
        mlflow.log_metrics({f"{name}_recall_at_1": results[name]["recall_at_1"] for name in curves})
        mlflow.log_artifact(str(paths.METRICS / "evaluation.json"))
        mlflow.log_artifact(str(paths.REPORTS / "episode_answers.json"))
        tracking.register_model(paths.STUDENT_QAT_TFLITE, f"pilltrack-student-{params['base']['profile']}",
                                shipped_metrics)
    names = list(curves)
    rows = ["k," + ",".join(names)] + [
        f"{k + 1}," + ",".join(f"{curves[name][k]:.4f}" for name in names) for k in range(RECALL_CURVE_DEPTH)]
    write_atomically(paths.REPORTS / "recall_at_k.csv", ("\n".join(rows) + "\n").encode())


def print_tables(params: dict, inputs: Inputs, results: dict, answers: dict, seconds: float,
                 echo: Callable[[str], None]) -> None:
    """The stage's figures as text: fixed-split retrieval, the bundle's open-set rates and parity,
    the episode table, the naming rule, close calls and the hardest pills."""
    settings, loaded = params["episodes"], inputs.loaded
    shots = max(settings["shots"])
    echo(f"\nNovel-class retrieval ({len(inputs.queries)} queries, {params['prepare']['reference_shots']}-shot gallery):")
    echo(f"{'model':<20} {'Recall@1':>9} {'Recall@5':>9} {'mAP@R':>7}")
    for name in ("baseline_colour_shape", "imagenet_frozen", "teacher", "student_float", "student_qat_keras",
                 "student_ptq_int8", "student_int8"):
        row = results[name]
        echo(f"{name:<20} {row['recall_at_1']:>9.3f} {row['recall_at_5']:>9.3f} {row['map_at_r']:>7.3f}")
    shipped_row, parity = results["student_int8"], results["parity"]
    echo(f"int8 via bundle: false accepts of gallery-absent pills {shipped_row['false_accept_rate']:.3f}, "
         f"correct accepts {shipped_row['correct_accept_rate']:.3f} at threshold {shipped_row['unknown_threshold']:.3f}, "
         f"AUROC {shipped_row.get('auroc_known_vs_absent', float('nan')):.3f}; float/int8 top-1 agreement "
         f"{parity['float_vs_int8_top1_agreement']:.3f}, QAT Keras/int8 "
         f"{parity['qat_keras_vs_int8_top1_agreement']:.3f} (every disagreement a near tie: the Keras "
         f"model's top two pills within {parity['qat_keras_vs_int8_largest_disagreeing_margin']:.4f} "
         f"cosine distance, as on {parity['qat_keras_vs_int8_near_tie_share']:.1%} of queries); int8 size "
         f"{results['sizes']['student_int8_bytes'] / 1024:.1f} KiB ({seconds:.0f} s)")
    echo(f"\nFew-shot episodes on novel classes ({settings['count']} per row, mean ± sample std; K shots per known "
         f"pill, by source photo; Recall@k over distinct pills; {settings['absent_classes']:.0%} of the classes "
         f"absent from the gallery; FAR = gallery-absent queries accepted; FAR@bundle at the int8 bundle's "
         f"calibrated threshold {loaded.unknown_threshold:.3f}, FAR@episode at the threshold keeping "
         f"{settings['keep_correct']:.0%} of the episode's correct answers):")
    for row in episode_table(results["episodes"], settings):
        echo(row)
    echo(f"\nNaming rule of the bundle (name the nearest pill within {loaded.unknown_threshold:.3f} when no other pill "
         f"is within {loaded.lookalike_margin:.4f} of it; else unknown), int8, {shots}-shot episodes:")
    for data in (data for data in EPISODE_DATA if data in results["episodes"]):
        for views in ("single", "multi"):
            row = results["episodes"][data][f"shots_{shots}"]["student_int8"].get(views, {})
            if "named_share_bundle" in row:
                echo(f"  {data:<10} {views:<7} names {row['named_share_bundle']:.1%} of enrolled pills' photos, "
                     f"{row['named_correct_bundle']:.1%} of named answers right, {row['absent_named_bundle']:.1%} of "
                     f"absent pills' photos named")
    echo(f"\nClose calls (runner-up pill within the bundle's look-alike margin {loaded.lookalike_margin:.4f}), int8:")
    rows = [("synthetic novel, bundle (Annoy)", shipped_row)] + [
        (f"{data} episodes, {shots}-shot, {views}", results["episodes"][data][f"shots_{shots}"]["student_int8"][views])
        for data in EPISODE_DATA if data in results["episodes"] for views in ("single", "multi")]
    for name, row in rows:
        echo(f"  {name:<36} flagged {row['lookalike_flagged']:.1%} of answers, catching "
             f"{row['lookalike_errors_caught']:.1%} of the wrong ones; Recall@1 of the rest "
             f"{row['recall_at_1_unflagged']:.3f} (all: {row['recall_at_1']:.3f})")
    echo(f"\nLook-alikes of the int8 model, {shots}-shot single view (all pairs: {paths.REPORTS / 'episode_answers.json'}):")
    for data, tally in answers.items():
        tally = tally[f"shots_{shots}"]
        hardest = sorted(tally["recall_at_1_by_pill"].items(), key=lambda item: (item[1], item[0]))[:3]
        echo(f"  {data}: lowest Recall@1 " + ", ".join(f"{pill} {value:.2f}" for pill, value in hardest)
             + "; most frequent false accepts " + ", ".join(
                 f"{pill} as {other} ({share:.0%} of its queries)" for pill, other, _, share in tally["false_accepts"][:3]))


def announce(settings: dict, inputs: Inputs, echo: Callable[[str], None]) -> None:
    """What the stage evaluates on, and the real photos it skipped."""
    references, absent, report = inputs.references, inputs.absent, inputs.real_report
    echo(f"evaluate: {len(set(references.labels.tolist()))} novel pills, {len(references)} gallery photos, "
         f"{len(inputs.queries)} queries, {len(absent)} photos of {len(set(absent.labels.tolist()))} gallery-absent pills")
    echo(f"evaluate: real set {settings['real_source']}: {report['crops_used']} crops of "
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
    inputs = load_inputs(params["episodes"])
    announce(params["episodes"], inputs, echo)
    fixed, pools = embed_all(params, inputs)
    results, curves, answers = score_all(params, inputs, fixed, pools)
    write_results(params, results, curves, answers)
    print_tables(params, inputs, results, answers, time.time() - started, echo)
    return results
