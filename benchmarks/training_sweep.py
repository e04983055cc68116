"""Compare training settings without touching the pipeline's artefacts: the tables behind
params.yaml's teacher and distill choices (loss, epochs, width, distillation terms).

Run from the project root after `dvc repro prepare` (it reads data/prepared), in the training
environment:

    python -m benchmarks.training_sweep teacher '{"teacher.loss": "triplet"}' --save /tmp/t.h5
    python -m benchmarks.training_sweep distill '{"distill.relation_weight": 0}' --teacher /tmp/t.h5
    python -m benchmarks.training_sweep teacher --train-classes synthetic    # the synthetic pills only
    python -m benchmarks.training_sweep teacher --weights /tmp/t.h5          # score a saved teacher

`teacher` trains a teacher with params.yaml's settings overridden by the JSON object
("section.key": value) and reports its per-epoch calibration-class Recall@1 and its novel-class
figures (all novel classes, and synthetic and composited reference pills each against a gallery
of their own kind). `distill` distils a student from the teacher weights given (default: the pipeline's),
converts it to int8 both ways (QAT and PTQ, as `pilltrack export` does) and reports novel-class
figures of the float, QAT Keras, QAT int8 and PTQ int8 models, and how often the int8 model's
top-1 gallery answer matches its Keras model's. Choose on calibration classes; the novel-class
figures are what the evaluate stage would report. One JSON line per run goes to stdout and is
appended to --out.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import numpy as np

import tf_pilltrack  # first: it sets TF_USE_LEGACY_KERAS before TensorFlow loads
from edge_runtime import interpreter
from tf_pilltrack.tflite import conversion
from tf_pilltrack.data import dataset
from tf_pilltrack.training import distiller, models
from tf_pilltrack.scoring import evaluation, metrics, results
from tf_pilltrack import paths
from tf_pilltrack import params as params_module
from tf_pilltrack import settings
from tf_pilltrack.training import teacher as teacher_stage


def override(params: dict, changes: dict) -> dict:
    """params with each "section.key" of `changes` replaced; an unknown key is an error."""
    for dotted, value in changes.items():
        section, _, key = dotted.partition(".")
        if section not in params or key not in params[section]:
            raise ValueError(f"unknown parameter {dotted!r}")
        params[section][key] = value
    return params


def novel_scores(embed) -> tuple[dict, np.ndarray, np.ndarray]:
    """Novel-class figures (exact search, 5-shot gallery) of an embedding function, and the
    query and gallery embeddings."""
    references, queries = dataset.load_split("references"), dataset.load_split("queries")
    query_embeddings, gallery_embeddings = embed(queries.pixels), embed(references.pixels)
    scores = metrics.evaluate_embeddings(query_embeddings, queries.labels, gallery_embeddings, references.labels)
    return scores, query_embeddings, gallery_embeddings


def novel_scores_by_kind(embed) -> dict:
    """`novel_scores` of the synthetic pills and of the composited reference pills, each against a
    gallery of its own kind."""
    references, queries = dataset.load_split("references"), dataset.load_split("queries")
    result = {}
    for kind in ("synthetic", "reference"):
        gallery, asked = training_classes(references, kind), training_classes(queries, kind)
        if len(gallery) and len(asked):
            result[kind] = metrics.evaluate_embeddings(embed(asked.pixels), asked.labels, embed(gallery.pixels),
                                                       gallery.labels)
    return result


def real_pool(params: dict) -> dataset.Split:
    """The real photo set (episodes.real_source) less the pills the models trained on, as the
    evaluate stage reads it (`evaluation.load_novel_real`)."""
    return evaluation.load_novel_real(params["episodes"]["real_source"], settings.preprocess_config(params))[0]


def real_scores(embed, params: dict, pool: dataset.Split) -> dict:
    """Mean Recall@1 over the evaluate stage's seeded real-photo episodes, per K and view count."""
    episodes = settings.from_params(params).episodes
    result = evaluation.run_episodes("real", pool, {"model": embed(pool.pixels)}, episodes, {}, {})
    return {f"k{shots}_{views}": round(results.run_figures(result, shots, "model", views)["recall_at_1"], 4)
            for shots in episodes.shots for views in results.VIEWS}


def top1(query_embeddings: np.ndarray, gallery_embeddings: np.ndarray) -> np.ndarray:
    return np.argmax(query_embeddings @ gallery_embeddings.T, axis=1)


def training_classes(split: dataset.Split, kind: str) -> dataset.Split:
    """The training split's photos of every class ("all"), of the synthetic pills only or of the
    composited reference pills only (class names dataset.REFERENCE_PREFIX...)."""
    if kind == "all":
        return split
    reference = np.char.startswith(split.labels.astype(str), dataset.REFERENCE_PREFIX)
    keep = reference if kind == "reference" else ~reference
    return dataset.Split(*(field[keep] for field in split))


def sweep_teacher(params: dict, save: str | None, train_classes: str, weights: str | None) -> dict:
    views = params["preprocess"]["symmetry_views"]
    splits = [training_classes(dataset.load_split("train"), train_classes)] + [
        dataset.load_split(name) for name in ("calibration_references", "calibration_queries")]
    every = settings.from_params(params)
    started = time.time()
    if weights:  # evaluate a teacher trained before
        model, history = models.make_teacher(every.profile, every.teacher, start=False), {"calibration_recall_at_1": []}
        model.load_weights(weights)
    else:
        model, history = teacher_stage.train(every.profile, every.teacher, every.training, every.augment, every.data,
                                             every.base.seed, *splits, verbose=0, mix=dataset.load_split("mix"))
    result = {"seconds": round(time.time() - started, 1),
              "calibration_recall_at_1": [round(value, 3) for value in history["calibration_recall_at_1"]],
              "novel": novel_scores(lambda pixels: evaluation.embed_keras(model, pixels, views))[0],
              "novel_by_kind": novel_scores_by_kind(lambda pixels: evaluation.embed_keras(model, pixels, views)),
              "real": real_scores(lambda pixels: evaluation.embed_keras(model, pixels, views), params, real_pool(params))}
    if save:
        model.save_weights(save, save_format="h5")
    return result


def sweep_distill(params: dict, teacher_weights: str) -> dict:
    views = params["preprocess"]["symmetry_views"]
    every = settings.from_params(params)
    teacher = models.make_teacher(every.profile, every.teacher, start=False)
    teacher.load_weights(teacher_weights)
    train_split = dataset.load_split("train")
    splits = [dataset.load_split(name) for name in ("calibration_references", "calibration_queries")]
    started = time.time()
    student, qat_student, history = distiller.train(every.profile, every.teacher, every.distill, every.training,
                                                       every.augment, every.data, every.base.seed, train_split,
                                                       *splits, verbose=0, mix=dataset.load_split("mix"),
                                                       teacher=teacher)
    result = {"seconds": round(time.time() - started, 1),
              "calibration_recall_at_1": [round(value, 3) for value in history["calibration_recall_at_1"]],
              "teacher": novel_scores(lambda pixels: evaluation.embed_keras(teacher, pixels, views))[0]}
    real = real_pool(params)
    calibration = conversion.calibration_sample(train_split, params["export"]["calibration_images"], params["base"]["seed"])
    for name, keras_model, convert in (("qat", qat_student, conversion.convert_qat),
                                       ("ptq", student, conversion.convert_ptq)):
        keras_scores, keras_queries, keras_gallery = novel_scores(
            lambda pixels, model=keras_model: evaluation.embed_keras(model, pixels, views))
        result["float" if name == "ptq" else "qat_keras"] = keras_scores
        with tempfile.TemporaryDirectory() as folder:
            path = pathlib.Path(folder) / f"{name}.tflite"
            path.write_bytes(convert(keras_model, calibration))
            lite = interpreter.make_interpreter(path, threads=1)
            scores, int8_queries, int8_gallery = novel_scores(lambda pixels: interpreter.embed(lite, pixels, views))
            scores["real"] = real_scores(lambda pixels: interpreter.embed(lite, pixels, views), params, real)
        scores["keras_vs_int8_top1_agreement"] = float(np.mean(
            top1(keras_queries, keras_gallery) == top1(int8_queries, int8_gallery)))
        result[f"{name}_int8"] = scores
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("teacher", "distill"))
    parser.add_argument("overrides", nargs="?", default="{}", help='JSON object {"section.key": value}')
    parser.add_argument("--teacher", default=str(paths.TEACHER_WEIGHTS), help="teacher weights for `distill`")
    parser.add_argument("--save", help="where `teacher` saves the weights it trained")
    parser.add_argument("--weights", help="`teacher`: evaluate these teacher weights instead of training one")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--train-classes", choices=("all", "synthetic", "reference"), default="all",
                        help="`teacher`: train on every training class, or on one kind only")
    parser.add_argument("--out", default="reports/training_sweep.jsonl", help="JSON lines appended here")
    args = parser.parse_args()
    changes = json.loads(args.overrides)
    params = override(params_module.load(args.params), changes)
    tf_pilltrack.pin_threads(params["base"]["threads"])
    result = (sweep_teacher(params, args.save, args.train_classes, args.weights) if args.stage == "teacher"
              else sweep_distill(params, args.teacher))
    line = json.dumps({"stage": args.stage, "overrides": changes, "train_classes": args.train_classes, **result})
    print(line)
    with open(args.out, "a") as handle:
        handle.write(line + "\n")


if __name__ == "__main__":
    main()
