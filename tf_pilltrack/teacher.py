"""Stage `teacher`: a ResNet trained with TensorFlow Similarity's triplet loss (or
multi-similarity loss) on the training classes, sampled several shots per class per batch.

Every epoch it reports Recall@1 on the calibration classes, which it never trains on: the
open-set ability the product needs, not the training classes' separability.
"""

from __future__ import annotations

import json
import random
import time
from typing import Callable

import numpy as np

import tf_pilltrack  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import tensorflow_similarity as tfsim
import tf_keras

from edge_runtime.preprocessing import normalise
from edge_runtime.storage import atomic_path, write_atomically
from tf_pilltrack import dataset, metrics, models, paths, sampling, tracking
from tf_pilltrack import params as params_module

SECTIONS = ("profiles", "teacher", "augment", "data")


def build(params: dict):
    settings = params["teacher"]
    return models.build_teacher(
        params_module.profile(params)["image_size"], settings["embedding_size"],
        settings["widths"], settings["blocks"],
    )


def load(params: dict):
    """The trained teacher, rebuilt from params and its saved weights."""
    model = build(params)
    model.load_weights(paths.TEACHER_WEIGHTS)
    return model


def embed(model, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """L2-normalised embeddings of uint8 crops by a Keras model (teacher or student)."""
    outputs = []
    for start in range(0, len(pixels), batch_size):
        batch = normalise(pixels[start:start + batch_size].astype(np.float32))
        outputs.append(np.asarray(model(batch, training=False)))
    embeddings = np.concatenate(outputs) if outputs else np.zeros((0, model.output_shape[-1]), np.float32)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return (embeddings / np.maximum(norms, 1e-12)).astype(np.float32)


def make_loss(settings: dict):
    if settings["loss"] == "multisimilarity":
        return tfsim.losses.MultiSimilarityLoss(distance="cosine")
    return tfsim.losses.TripletLoss(
        distance="cosine",
        positive_mining_strategy=settings["positive_mining"],
        negative_mining_strategy=settings["negative_mining"],
        margin=settings["triplet_margin"],
    )


class OpenSetMonitor(tf_keras.callbacks.Callback):
    """Adds `calibration_recall_at_1` (held-out classes, gallery = their reference shots) to the
    epoch's logs, so the history, the progress line and MLflow all carry it."""

    def __init__(self, references: dataset.Split, queries: dataset.Split, model_to_embed=None):
        super().__init__()
        self.references = references
        self.queries = queries
        self.model_to_embed = model_to_embed

    def on_epoch_end(self, epoch, logs=None):
        model = self.model_to_embed or self.model
        gallery = embed(model, self.references.pixels)
        queries = embed(model, self.queries.pixels)
        scores = metrics.evaluate_embeddings(queries, self.queries.labels, gallery, self.references.labels)
        if logs is not None:
            logs["calibration_recall_at_1"] = scores["recall_at_1"]


def write_history(history: dict, path) -> None:
    """Per-epoch metrics as CSV, for `dvc plots`."""
    names = sorted(history)
    rows = ["epoch," + ",".join(names)]
    for epoch in range(len(history[names[0]]) if names else 0):
        rows.append(f"{epoch}," + ",".join(f"{float(history[name][epoch]):.6f}" for name in names))
    write_atomically(path, ("\n".join(rows) + "\n").encode())


def record_training(stage: str, history: dict, model, images: int, started: float, mlflow, artefact) -> dict:
    """A training stage's summary: reports/<stage>_history.csv (per epoch), metrics/<stage>.json
    and the same figures and the weights file in the stage's MLflow run."""
    seconds = time.time() - started
    summary = {
        "calibration_recall_at_1": float(history["calibration_recall_at_1"][-1]),
        "final_loss": float(history["loss"][-1]),
        "seconds": round(seconds, 1),
        "images_per_second": round(images / seconds, 1),
        "parameters": int(model.count_params()),
    }
    paths.REPORTS.mkdir(parents=True, exist_ok=True)
    write_history(history, paths.REPORTS / f"{stage}_history.csv")
    paths.METRICS.mkdir(exist_ok=True)
    write_atomically(paths.METRICS / f"{stage}.json", json.dumps(summary, indent=2).encode())
    mlflow.log_metrics({f"{stage}_{key}": value for key, value in summary.items()})
    mlflow.log_artifact(str(artefact))
    return summary


def train(params: dict, train_split: dataset.Split, references: dataset.Split,
          queries: dataset.Split, callbacks: list | None = None, verbose: int = 2,
          mix: dataset.Split | None = None):
    """Train the teacher on the training split (and the mix split, data.mix_ratio of each
    batch's classes); returns (model, history dict)."""
    settings = params["teacher"]
    seed = params["base"]["seed"]
    random.seed(seed)  # TF-Similarity's samplers draw classes with the `random` module
    tf_keras.utils.set_random_seed(seed)
    sampler = sampling.make_sampler(settings, params["augment"], train_split,
                                    mix if mix is not None else dataset.empty_split(train_split.pixels.shape[1]),
                                    params["data"]["mix_ratio"], params["data"]["reference_share"])
    model = build(params)
    schedule = tf_keras.optimizers.schedules.CosineDecay(
        settings["learning_rate"], settings["epochs"] * settings["steps_per_epoch"])
    model.compile(optimizer=tf_keras.optimizers.Adam(schedule), loss=make_loss(settings))
    history = model.fit(
        sampler, epochs=settings["epochs"], verbose=verbose,
        callbacks=[OpenSetMonitor(references, queries)] + list(callbacks or []),
    )
    return model, history.history


def run(params: dict, echo: Callable[[str], None] = print) -> dict:
    started = time.time()
    train_split, mix = dataset.load_split("train"), dataset.load_split("mix")
    references = dataset.load_split("calibration_references")
    queries = dataset.load_split("calibration_queries")
    settings = params["teacher"]
    classes = dataset.batch_classes(settings["classes_per_batch"], np.concatenate([train_split.labels, mix.labels]))
    echo(f"teacher: {len(train_split)} training crops of {len(set(train_split.labels))} classes"
         + (f" + {len(mix)} crops of {len(set(mix.labels))} mix classes ({params['data']['mix_source']})"
            if len(mix) else "") + "; "
         f"{settings['loss']} loss, {settings['epochs']} epochs x {settings['steps_per_epoch']} steps of "
         f"{classes} classes x {settings['examples_per_class']} crops"
         + (f" (fewer training classes than teacher.classes_per_batch {settings['classes_per_batch']})"
            if classes < settings["classes_per_batch"] else ""))
    with tracking.stage_run("teacher", params, SECTIONS) as mlflow:
        model, history = train(params, train_split, references, queries,
                               callbacks=[tracking.epoch_logger("teacher_")], mix=mix)
        paths.MODELS.mkdir(parents=True, exist_ok=True)
        with atomic_path(paths.TEACHER_WEIGHTS) as temporary:
            model.save_weights(temporary, save_format="h5")
        images = settings["epochs"] * settings["steps_per_epoch"] * classes * settings["examples_per_class"]
        summary = record_training("teacher", history, model, images, started, mlflow, paths.TEACHER_WEIGHTS)
    echo(f"teacher: calibration-class Recall@1 {summary['calibration_recall_at_1']:.3f}, "
         f"{summary['images_per_second']} images/s, {summary['seconds']} s")
    return summary
