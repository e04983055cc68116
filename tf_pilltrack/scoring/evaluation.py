"""The scoring of stage `evaluate` (tf_pilltrack/stages/evaluate.py): open-set retrieval on the
novel classes, which no model trained on.

The gallery is the novel classes' reference shots, the queries their other photos. Each model
embeds both; queries are answered by nearest neighbour. Reported per model: Recall@1,
Recall@5 and mAP@R. The shipped int8 model is evaluated through the device bundle exactly as
`pilltrack-edge` answers (LiteRT interpreter, Annoy search with the bundle's search_k).
Open set: photos of novel classes kept out of the gallery must come back "unknown"; at the
bundle's threshold we report the false-accept rate, the correct-accept rate of known pills and
the AUROC of known vs absent.

Few-shot episodes (`tf_pilltrack/scoring/episodes.py`, settings `episodes` in
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

from typing import NamedTuple

import numpy as np

from edge_runtime import bundle as bundle_module
from edge_runtime import gallery, interpreter
from edge_runtime.preprocessing import PreprocessConfig
from tf_pilltrack import paths
from tf_pilltrack.data import dataset
from tf_pilltrack.scoring import baseline, episodes, metrics
from tf_pilltrack.scoring.results import VIEWS, episode_figures, episode_runs, shots_key
from tf_pilltrack.settings import Episodes, Profile, Teacher
from tf_pilltrack.training import efficientnet, models

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


def draw(name: str, pool: dataset.Split, shots: int, settings: Episodes) -> list[episodes.Episode]:
    """The seeded K-shot episodes of `settings` over `pool`; an error names the data set."""
    try:
        return episodes.draw_episodes(pool.labels, pool.groups, shots, settings.absent_classes,
                                      settings.views, settings.count, settings.seed)
    except ValueError as error:
        raise ValueError(f"{name} episodes: {error}") from None


def tally_episodes(name: str, pool: dataset.Split, embeddings: np.ndarray, settings: Episodes) -> dict:
    """`episodes.tally_answers` of one model over the same episodes as `run_episodes`, per K."""
    return {shots_key(shots): episodes.tally_answers(embeddings, pool.labels, draw(name, pool, shots, settings),
                                                     settings.keep_correct)
            for shots in settings.shots}


def run_episodes(name: str, pool: dataset.Split, embeddings: dict[str, np.ndarray], settings: Episodes,
                 thresholds: dict[str, dict[str, float]], lookalike_margins: dict[str, float]) -> dict:
    """Every model's figures over `settings.count` seeded episodes per K (shots_<K>), each
    as {"single": summary, "multi": summary} (episodes.summarise, plus the episode count), with
    the classes and the mean query counts of the episodes."""
    result = {"classes": len(set(pool.labels.tolist())), "crops": len(pool), "photos": len(set(pool.groups.tolist()))}
    for shots in settings.shots:
        drawn = draw(name, pool, shots, settings)
        entry = {"known_classes": len(drawn[0].known_classes), "absent_classes": len(drawn[0].absent_classes),
                 "classes_with_too_few_photos": result["classes"] - len(drawn[0].known_classes) - len(drawn[0].absent_classes),
                 "queries": float(np.mean([len(episode.queries) for episode in drawn])),
                 "absent_queries": float(np.mean([len(episode.absent) for episode in drawn])),
                 "multi_view_queries": float(np.mean([len(episode.query_views) for episode in drawn])),
                 "absent_multi_view_queries": float(np.mean([len(episode.absent_views) for episode in drawn]))}
        for model, model_embeddings in embeddings.items():
            scored = [episodes.score_episode(model_embeddings, pool.labels, episode, settings.keep_correct,
                                             thresholds.get(model), lookalike_margins.get(model)) for episode in drawn]
            entry[model] = {}
            for views in VIEWS:
                present = [figures[views] for figures in scored if views in figures]
                if present:
                    entry[model][views] = {"episodes": len(present), **episodes.summarise(present)}
        result[shots_key(shots)] = entry
    return result


EPISODE_MODELS = ("baseline_colour_shape", "imagenet_frozen", "teacher", "student_ptq_int8", "student_int8")


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


def episode_table(evaluation: dict, settings: Episodes) -> list[str]:
    """The episode figures of an evaluation (`score_all`'s results) as text rows, mean ± std."""
    def cell(summary: dict, key: str) -> str:
        return f"{summary[key]:.3f}±{summary[key + '_std']:.3f}" if key in summary else "-"

    rows = [f"{'data':<10}{'K':>3} {'query':<9}{'model':<22}{'Recall@1':>13}{'Recall@5':>13}{'mAP@R':>13}"
            f"{'AUROC':>13}{'FAR@episode':>13}{'FAR@bundle':>13}"]
    for data in episode_runs(evaluation):
        for shots in settings.shots:
            for views in VIEWS:
                for model in EPISODE_MODELS:
                    summary = episode_figures(evaluation, data, shots, model, views)
                    if summary is None:
                        continue
                    label = "1 view" if views == "single" else f"{settings.views} views"
                    rows.append(f"{data:<10}{shots:>3} {label:<9}{model:<22}" + "".join(
                        f"{cell(summary, key):>13}" for key in ("recall_at_1", "recall_at_5", "map_at_r",
                                                                "auroc_known_vs_absent", "false_accept_rate_episode",
                                                                "false_accept_rate_bundle")))
    return rows


RISK_COVERAGE_POINTS = 20


def risk_coverage_curve(pool: dataset.Split, embeddings: np.ndarray, shots: int, settings: Episodes,
                        margin: float) -> dict:
    """The naming rule's risk-coverage curve over the single-view answers of the K = `shots`
    episodes (pooled): at the bundle's look-alike `margin`, RISK_COVERAGE_POINTS thresholds."""
    answers = episodes.pooled_answers(embeddings, pool.labels, draw("real", pool, shots, settings))
    return {"shots": shots, "margin": margin, "points": metrics.risk_coverage(
        answers["best"], answers["margins"], answers["correct"], answers["absent_best"],
        answers["absent_margins"], margin, RISK_COVERAGE_POINTS)}


def load_novel_real(real_source: str, config: PreprocessConfig) -> tuple[dataset.Split, dict, list[dict]]:
    """The real photo set `real_source` (params.yaml's episodes.real_source; `episodes.load_real` with
    `config`), less every pill a model trained on: when the real set is also the training source
    (data.source) or the mix set (data.mix_source), its episodes keep only the pills that no
    model trained on (by class name, training and mix splits). The report counts the pills left
    out as `trained_classes_left_out`."""
    pool, report, skipped = episodes.load_real(real_source, config)
    trained_labels = np.concatenate([dataset.load_split(name).labels for name in ("train", "mix")])
    trained = np.isin(pool.labels, trained_labels)
    if trained.all():
        raise ValueError(f"{real_source}: every pill of episodes.real_source was trained on "
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


def load_inputs(real_source: str) -> Inputs:
    references = dataset.load_split("references")
    queries = dataset.load_split("queries")
    absent = dataset.load_split("absent_queries")
    loaded = bundle_module.load_bundle(paths.BUNDLE)
    real_pool, real_report, real_skipped = load_novel_real(real_source, loaded.preprocess)
    return Inputs(references, queries, absent, concatenate(references, queries, absent), loaded,
                  real_pool, real_report, real_skipped)


def embed_all(profile: Profile, teacher: Teacher, inputs: Inputs) -> tuple[dict, dict]:
    """Every model's embeddings, each crop over the bundle's symmetry views as the device embeds:
    (`fixed`: model -> (query, reference) embeddings of the fixed splits, `pools`: "novel" and
    "real" -> model -> embeddings of the synthetic pool and of the real photos). The teacher,
    baseline and int8 models embed the pools and their fixed splits are slices of them; the
    float and QAT Keras students embed the fixed splits only. The Keras models are those of
    `profile` and the `teacher` section."""
    views = inputs.loaded.preprocess.symmetry_views
    cut, end = len(inputs.references), len(inputs.references) + len(inputs.queries)
    embedders = {
        "teacher": lambda pixels, model=models.load_teacher(profile, teacher): embed_keras(model, pixels, views),
        "student_float": lambda pixels, model=models.load_float_student(profile, teacher.embedding_size): embed_keras(model, pixels, views),
        "student_qat_keras": lambda pixels, model=models.load_qat_student(profile, teacher.embedding_size): embed_keras(model, pixels, views),
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


def score_all(settings: Episodes, inputs: Inputs, fixed: dict, pools: dict) -> tuple[dict, dict, dict]:
    """The figures of evaluation.json (fixed-split retrieval per model, parity, sizes, episodes),
    the Recall@k curves and the int8 model's answers per pill (episode_answers.json); `settings`
    is the `episodes` section."""
    loaded, queries, references = inputs.loaded, inputs.queries, inputs.references
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
        "count": settings.count,
        "views": settings.views,
        "keep_correct": settings.keep_correct,
        "bundle_unknown_threshold": loaded.unknown_threshold,
        "bundle_lookalike_margin": loaded.lookalike_margin,
        **{data: run_episodes(data, pool, embeddings[data], settings, thresholds, lookalike_margins)
           for data, pool in pools_by_data.items()},
        "real": {**inputs.real_report, **run_episodes(f"real ({settings.real_source})", real_pool,
                                                      embeddings["real"], settings, thresholds, lookalike_margins)},
    }
    shots = max(settings.shots)
    real_int8, real_teacher = (episode_figures(results, "real", shots, model, "single")["recall_at_1"]
                               for model in ("student_int8", "teacher"))
    results["parity"]["real_int8_vs_teacher_recall_at_1"] = real_int8 / max(real_teacher, 1e-9)
    results["episodes"]["real"]["risk_coverage"] = risk_coverage_curve(
        real_pool, embeddings["real"]["student_int8"], shots, settings, loaded.lookalike_margin)
    answers = {data: tally_episodes(data, pool, embeddings[data]["student_int8"], settings)
               for data, pool in {**pools_by_data, "real": real_pool}.items()}
    return results, curves, answers
