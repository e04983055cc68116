"""The teacher (stage `teacher`, tf_pilltrack/stages/teacher.py): a ResNet, or an EfficientNet-Lite0
started from ImageNet weights, trained with TensorFlow Similarity's triplet loss (or
multi-similarity loss) on the training classes, sampled several shots per class per batch. A
pretrained backbone may first stay frozen for `teacher.frozen_epochs` while the embedding head
learns, then everything trains on a cosine schedule.

Every epoch it reports Recall@1 on the calibration classes, which it never trains on: the
open-set ability the product needs, not the training classes' separability.
"""

from __future__ import annotations

import random

import tensorflow_similarity as tfsim
import tf_keras

from tf_pilltrack.data import dataset
from tf_pilltrack.settings import Augment, Data, Profile, Teacher, Training
from tf_pilltrack.training import distribution, models, monitor


def make_loss(settings: Teacher):
    """The loss of the `teacher` section (`settings`): multi-similarity, or triplet with its mining and margin."""
    if settings.loss == "multisimilarity":
        return tfsim.losses.MultiSimilarityLoss(distance="cosine")
    return tfsim.losses.TripletLoss(
        distance="cosine",
        positive_mining_strategy=settings.positive_mining,
        negative_mining_strategy=settings.negative_mining,
        margin=settings.triplet_margin,
    )


def train(profile: Profile, settings: Teacher, training: Training, augment: Augment, data: Data, seed: int,
          train_split: dataset.Split | None, references: dataset.Split, queries: dataset.Split,
          callbacks: list | None = None, verbose: int = 2, mix: dataset.Split | None = None):
    """Train the teacher of `profile` and the `teacher` section (`settings`) on the training split
    (and the mix split, data.mix_ratio of each batch's classes), augmented as `augment` says, seeded
    with `seed` (base.seed), as the `training` section says (one process or distributed, memory or
    streaming input: tf_pilltrack.training.distribution; the stream input reads prepare's shard files
    and takes no split); returns (model, history dict)."""
    strategy = distribution.make_strategy(training.distribution)  # before any other TensorFlow op
    random.seed(seed)  # TF-Similarity's samplers draw classes with the `random` module
    tf_keras.utils.set_random_seed(seed)
    batches = distribution.training_input(training, settings, augment, data, seed, train_split, mix)
    with strategy.scope():
        model = models.make_teacher(profile, settings)
    watchers = [monitor.OpenSetMonitor(references, queries)] + list(callbacks or [])
    frozen, epochs, steps = settings.frozen_epochs, settings.epochs, settings.steps_per_epoch
    history: dict[str, list] = {}
    if frozen:  # the embedding head learns on the backbone's ImageNet features before the backbone moves
        model.get_layer(models.BACKBONE).trainable = False
        _compile(model, strategy, settings, settings.learning_rate)
        backup, options = distribution.fit_options(training, steps, "teacher_frozen")
        _extend(history, model.fit(batches, epochs=frozen, verbose=verbose, callbacks=watchers + backup, **options))
        model.get_layer(models.BACKBONE).trainable = True
    _compile(model, strategy, settings,
             tf_keras.optimizers.schedules.CosineDecay(settings.learning_rate, (epochs - frozen) * steps))
    backup, options = distribution.fit_options(training, steps, "teacher")
    _extend(history, model.fit(batches, epochs=epochs, initial_epoch=frozen, verbose=verbose,
                               callbacks=watchers + backup, **options))
    return model, history


def _compile(model, strategy, settings: Teacher, learning_rate) -> None:
    with strategy.scope():
        model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate), loss=make_loss(settings))


def _extend(history: dict[str, list], fitted) -> None:
    for key, values in fitted.history.items():
        history.setdefault(key, []).extend(values)
