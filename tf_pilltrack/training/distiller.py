"""Distillation (stage `distill`, tf_pilltrack/stages/distill.py): the MobileNet student learns the
teacher's embedding space.

`Distiller` is a Keras model with its own `train_step`: the teacher runs with
`training=False` and is never updated; gradients flow only to the student's variables. The
loss is a weighted sum of
- embedding: 1 - cos(student, teacher), per image;
- relation: relational knowledge distillation (Park et al. 2019, distance-wise): the
  student's pairwise cosine distances within the batch, each divided by their mean, match the
  teacher's under a Huber loss, so the geometry between pills carries over, not only points;
- triplet: the student's own TF-Similarity triplet loss on the labels (optional: computed, and
  recorded in the history, only when `distill.triplet_weight` is above 0).
With `distill.mixup` above 0, each training batch is first blended with itself in a shuffled order
(`mix_images`), and teacher and student both see the blend: the student matches the teacher's
function on images between the training photos too ("function matching", Beyer et al. 2022).
Training runs `distill.float_epochs` in float, then wraps the student with
tensorflow-model-optimization's `quantize_model` and continues for `distill.qat_epochs` with
fake quantisation, so the int8 export keeps what was learned.
"""

from __future__ import annotations

import random

import tensorflow as tf
import tensorflow_similarity as tfsim
import tf_keras

from tf_pilltrack.data import dataset
from tf_pilltrack.settings import Augment, Data, Distill, Profile, Teacher, Training
from tf_pilltrack.training import distribution, models, monitor


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
    """Distance-wise relational distillation loss (Huber on mean-normalised pairwise distances).
    Keras' Huber of two vectors is their mean already; no Keras reduction, which tf.distribute
    refuses in a custom train_step."""
    huber = tf_keras.losses.Huber(delta=1.0, reduction="none")
    return huber(_normalised_distances(teacher_embeddings), _normalised_distances(student_embeddings))


def mix_images(pixels: tf.Tensor, mixup: float) -> tf.Tensor:
    """Each image blended with another image of the batch (a random pairing):
    (1 - w) * image + w * other, with a weight w drawn uniformly from [0, mixup] per image."""
    count = tf.shape(pixels)[0]
    others = tf.gather(pixels, tf.random.shuffle(tf.range(count)))
    weights = tf.random.uniform([count, 1, 1, 1], 0.0, mixup, dtype=pixels.dtype)
    return (1.0 - weights) * pixels + weights * others


def batch_mean(losses: tf.Tensor) -> tf.Tensor:
    """The mean of per-image losses as Keras' sum_over_batch_size computes it (sum, then divide)."""
    return tf.math.divide_no_nan(tf.reduce_sum(losses), tf.cast(tf.size(losses), losses.dtype))


class Distiller(tf_keras.Model):
    """Trains `student` to reproduce the embedding space of the frozen `teacher`."""

    def __init__(self, student, teacher, embedding_weight: float, relation_weight: float,
                 triplet_weight: float, triplet_margin: float, mixup: float, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("embedding_weight", embedding_weight), ("relation_weight", relation_weight),
                            ("triplet_weight", triplet_weight)):
            if value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")
        if embedding_weight + relation_weight + triplet_weight <= 0:
            raise ValueError("at least one distillation loss weight must be positive")
        if not 0.0 <= mixup <= 1.0:
            raise ValueError(f"mixup must be within [0, 1], got {mixup}")
        self.mixup = mixup
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.weights_by_term = {"embedding": embedding_weight, "relation": relation_weight,
                                "triplet": triplet_weight}
        self.triplet = tfsim.losses.TripletLoss(distance="cosine", margin=triplet_margin, reduction="none")
        names = ("loss", "embedding_loss", "relation_loss") + (("triplet_loss",) if triplet_weight > 0 else ())
        self.trackers = {name: tf_keras.metrics.Mean(name=name) for name in names}

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
        }
        loss = (self.weights_by_term["embedding"] * terms["embedding_loss"]
                + self.weights_by_term["relation"] * terms["relation_loss"])
        if self.weights_by_term["triplet"] > 0:
            terms["triplet_loss"] = batch_mean(self.triplet(labels, student_embeddings))
            loss = loss + self.weights_by_term["triplet"] * terms["triplet_loss"]
        terms["loss"] = loss
        return terms

    def _record(self, terms: dict) -> dict:
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, data):
        pixels, labels = data
        if self.mixup > 0:
            pixels = mix_images(pixels, self.mixup)
        with tf.GradientTape() as tape:
            terms = self.compute_terms(pixels, labels, training=True)
            # each replica's mean over its share of the batch; the replicas' gradients are summed
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            loss = terms["loss"] / replicas if replicas > 1 else terms["loss"]
        variables = self.student.trainable_variables
        gradients = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._record(terms)

    def test_step(self, data):
        pixels, labels = data
        return self._record(self.compute_terms(pixels, labels, training=False))


def _fit_phase(student, teacher, settings: Distill, training: Training, batches, epochs: int, learning_rate: float,
               open_set, callbacks: list, verbose: int, strategy, phase: str) -> dict:
    with strategy.scope():
        distiller = Distiller(student, teacher, settings.embedding_weight, settings.relation_weight,
                              settings.triplet_weight, settings.triplet_margin, settings.mixup)
        schedule = tf_keras.optimizers.schedules.CosineDecay(learning_rate,
                                                             max(1, epochs * settings.steps_per_epoch))
        distiller.compile(optimizer=tf_keras.optimizers.Adam(schedule))
    open_set.model_to_embed = student
    backup, options = distribution.fit_options(training, settings.steps_per_epoch, f"distill_{phase}")
    history = distiller.fit(batches, epochs=epochs, verbose=verbose, callbacks=[open_set] + callbacks + backup,
                            **options)
    return history.history


def train(profile: Profile, teacher_settings: Teacher, settings: Distill, training: Training, augment: Augment,
          data: Data, seed: int, train_split: dataset.Split | None, references: dataset.Split,
          queries: dataset.Split, callbacks: list | None = None, verbose: int = 2,
          mix: dataset.Split | None = None, teacher=None):
    """Float then quantization-aware distillation, as the `distill` section (`settings`) says, of a
    student of `profile` on the training split (and the mix split), augmented as `augment` says and
    seeded with `seed` (base.seed), as the `training` section says (tf_pilltrack.training.distribution;
    the stream input reads prepare's shard files and takes no split); returns (float student, QAT
    student, history). The teacher is the trained one of `teacher_settings` (models.load_teacher,
    built under the strategy) unless `teacher` is given (one process only)."""
    strategy = distribution.make_strategy(training.distribution)  # before any other TensorFlow op
    with strategy.scope():  # built before the seeds are set, so that the student's draws do not depend on it
        teacher = teacher if teacher is not None else models.load_teacher(profile, teacher_settings)
    random.seed(seed)
    tf_keras.utils.set_random_seed(seed)
    batches = distribution.training_input(training, settings, augment, data, seed, train_split, mix)
    open_set = monitor.OpenSetMonitor(references, queries)
    with strategy.scope():
        student = models.make_student(profile, teacher_settings.embedding_size)
    history: dict[str, list] = {}
    if settings.float_epochs:
        history = _fit_phase(student, teacher, settings, training, batches, settings.float_epochs,
                             settings.learning_rate, open_set, list(callbacks or []), verbose, strategy, "float")
        history["quantization_aware"] = [0.0] * settings.float_epochs
    with strategy.scope():
        qat_student = models.quantize(student)
    if settings.qat_epochs:
        qat_history = _fit_phase(qat_student, teacher, settings, training, batches, settings.qat_epochs,
                                 settings.qat_learning_rate, open_set, list(callbacks or []), verbose, strategy,
                                 "qat")
        qat_history["quantization_aware"] = [1.0] * settings.qat_epochs
        for key, values in qat_history.items():
            history[key] = history.get(key, []) + list(values)
    return student, qat_student, history
