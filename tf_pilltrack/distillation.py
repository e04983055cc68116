"""Stage `distill`: the MobileNet student learns the teacher's embedding space.

`Distiller` is a Keras model with its own `train_step`: the teacher runs with
`training=False` and is never updated; gradients flow only to the student's variables. The
loss is a weighted sum of
- embedding: 1 - cos(student, teacher), per image;
- relation: relational knowledge distillation (Park et al. 2019, distance-wise): the
  student's pairwise cosine distances within the batch, each divided by their mean, match the
  teacher's under a Huber loss, so the geometry between pills carries over, not only points;
- triplet: the student's own TF-Similarity triplet loss on the labels (optional).
Training runs `distill.float_epochs` in float, then wraps the student with
tensorflow-model-optimization's `quantize_model` and continues for `distill.qat_epochs` with
fake quantisation, so the int8 export keeps what was learned.
"""

from __future__ import annotations

import random
import time
from typing import Callable

import numpy as np
import tensorflow as tf
import tensorflow_similarity as tfsim
import tf_keras

from edge_runtime.storage import atomic_path
from tf_pilltrack import dataset, models, paths, sampling, tracking, training

SECTIONS = ("profiles", "teacher", "distill", "augment", "data")


def embedding_loss(teacher_embeddings: tf.Tensor, student_embeddings: tf.Tensor) -> tf.Tensor:
    """Mean of 1 - cos between each image's student and teacher embedding (both normalised)."""
    return tf.reduce_mean(1.0 - tf.reduce_sum(teacher_embeddings * student_embeddings, axis=-1))


def _normalised_distances(embeddings: tf.Tensor) -> tf.Tensor:
    distances = 1.0 - tf.matmul(embeddings, embeddings, transpose_b=True)
    count = tf.shape(embeddings)[0]
    off_diagonal = tf.logical_not(tf.eye(count, dtype=tf.bool))
    values = tf.boolean_mask(distances, off_diagonal)
    return values / (tf.reduce_mean(values) + 1e-8)


def relation_loss(teacher_embeddings: tf.Tensor, student_embeddings: tf.Tensor) -> tf.Tensor:
    """Distance-wise relational distillation loss (Huber on mean-normalised pairwise distances)."""
    huber = tf_keras.losses.Huber(delta=1.0, reduction="sum_over_batch_size")
    return huber(_normalised_distances(teacher_embeddings), _normalised_distances(student_embeddings))


class Distiller(tf_keras.Model):
    """Trains `student` to reproduce the embedding space of the frozen `teacher`."""

    def __init__(self, student, teacher, embedding_weight: float, relation_weight: float,
                 triplet_weight: float, triplet_margin: float, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("embedding_weight", embedding_weight), ("relation_weight", relation_weight),
                            ("triplet_weight", triplet_weight)):
            if value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")
        if embedding_weight + relation_weight + triplet_weight <= 0:
            raise ValueError("at least one distillation loss weight must be positive")
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.weights_by_term = {"embedding": embedding_weight, "relation": relation_weight,
                                "triplet": triplet_weight}
        self.triplet = tfsim.losses.TripletLoss(distance="cosine", margin=triplet_margin)
        self.trackers = {name: tf_keras.metrics.Mean(name=name)
                         for name in ("loss", "embedding_loss", "relation_loss", "triplet_loss")}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, inputs, training=False):
        return self.student(inputs, training=training)

    def compute_terms(self, pixels, labels, training: bool) -> dict[str, tf.Tensor]:
        teacher_embeddings = models.l2_normalise(self.teacher(pixels, training=False))
        student_embeddings = models.l2_normalise(self.student(pixels, training=training))
        terms = {
            "embedding_loss": embedding_loss(teacher_embeddings, student_embeddings),
            "relation_loss": relation_loss(teacher_embeddings, student_embeddings),
            "triplet_loss": self.triplet(labels, student_embeddings),
        }
        terms["loss"] = (self.weights_by_term["embedding"] * terms["embedding_loss"]
                         + self.weights_by_term["relation"] * terms["relation_loss"]
                         + self.weights_by_term["triplet"] * terms["triplet_loss"])
        return terms

    def _record(self, terms: dict) -> dict:
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, data):
        pixels, labels = data
        with tf.GradientTape() as tape:
            terms = self.compute_terms(pixels, labels, training=True)
        variables = self.student.trainable_variables
        gradients = tape.gradient(terms["loss"], variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._record(terms)

    def test_step(self, data):
        pixels, labels = data
        return self._record(self.compute_terms(pixels, labels, training=False))


def make_sampler(params: dict, split: dataset.Split, mix: dataset.Split | None = None):
    """Class-balanced batches (several shots per class, so the triplet term has positives),
    augmented and normalised exactly as the teacher's, with the mix split's share of classes."""
    return sampling.make_sampler(params["distill"], params["augment"], split,
                                 mix if mix is not None else dataset.empty_split(split.pixels.shape[1]),
                                 params["data"]["mix_ratio"], params["data"]["reference_share"])


def _fit_phase(student, teacher, params: dict, sampler, epochs: int, learning_rate: float,
               monitor, callbacks: list, verbose: int) -> dict:
    settings = params["distill"]
    distiller = Distiller(student, teacher, settings["embedding_weight"], settings["relation_weight"],
                          settings["triplet_weight"], settings["triplet_margin"])
    schedule = tf_keras.optimizers.schedules.CosineDecay(learning_rate, max(1, epochs * settings["steps_per_epoch"]))
    distiller.compile(optimizer=tf_keras.optimizers.Adam(schedule))
    monitor.model_to_embed = student
    history = distiller.fit(sampler, epochs=epochs, verbose=verbose, callbacks=[monitor] + callbacks)
    return history.history


def train(params: dict, teacher, train_split: dataset.Split, references: dataset.Split,
          queries: dataset.Split, callbacks: list | None = None, verbose: int = 2,
          mix: dataset.Split | None = None):
    """Float then quantization-aware distillation on the training split (and the mix split);
    returns (float student, QAT student, history)."""
    settings = params["distill"]
    seed = params["base"]["seed"]
    random.seed(seed)
    tf_keras.utils.set_random_seed(seed)
    sampler = make_sampler(params, train_split, mix)
    monitor = training.OpenSetMonitor(references, queries)
    student = models.make_student(params)
    history: dict[str, list] = {}
    if settings["float_epochs"]:
        history = _fit_phase(student, teacher, params, sampler, settings["float_epochs"],
                             settings["learning_rate"], monitor, list(callbacks or []), verbose)
        history["quantization_aware"] = [0.0] * settings["float_epochs"]
    qat_student = models.quantize(student)
    if settings["qat_epochs"]:
        qat_history = _fit_phase(qat_student, teacher, params, sampler, settings["qat_epochs"],
                                 settings["qat_learning_rate"], monitor, list(callbacks or []), verbose)
        qat_history["quantization_aware"] = [1.0] * settings["qat_epochs"]
        for key, values in qat_history.items():
            history[key] = history.get(key, []) + list(values)
    return student, qat_student, history


def run(params: dict, echo: Callable[[str], None] = print) -> dict:
    started = time.time()
    train_split, mix = dataset.load_split("train"), dataset.load_split("mix")
    references = dataset.load_split("calibration_references")
    queries = dataset.load_split("calibration_queries")
    settings = params["distill"]
    teacher = models.load_teacher(params)
    echo(f"distill: {settings['float_epochs']} float + {settings['qat_epochs']} quantization-aware epochs "
         f"x {settings['steps_per_epoch']} steps on {len(train_split)} crops"
         + (f" + {len(mix)} mix crops" if len(mix) else ""))
    with tracking.stage_run("distill", params, SECTIONS) as mlflow:
        student, qat_student, history = train(params, teacher, train_split, references, queries,
                                              callbacks=[tracking.epoch_logger("distill_")], mix=mix)
        paths.MODELS.mkdir(parents=True, exist_ok=True)
        for model, path in ((student, paths.STUDENT_FLOAT_WEIGHTS), (qat_student, paths.STUDENT_QAT_WEIGHTS)):
            with atomic_path(path) as temporary:
                model.save_weights(temporary, save_format="h5")
        epochs = settings["float_epochs"] + settings["qat_epochs"]
        classes = dataset.batch_classes(settings["classes_per_batch"], np.concatenate([train_split.labels, mix.labels]))
        images = epochs * settings["steps_per_epoch"] * classes * settings["examples_per_class"]
        summary = training.record_training("distill", history, student, images, started, mlflow,
                                           paths.STUDENT_QAT_WEIGHTS)
    echo(f"distill: calibration-class Recall@1 {summary['calibration_recall_at_1']:.3f} (quantization-aware "
         f"student), {summary['images_per_second']} images/s, {summary['seconds']} s")
    return summary

