"""Training batches for the teacher and the distiller: class-balanced (several photos of each
of several pills, so metric losses have positives and negatives in every batch), augmented and
normalised as the models expect, with an optional second photo set (`data.mix_source`) taking
a fixed share of each batch's classes (`data.mix_ratio`).

The mix set exists for small own-photo sets: a pharmacy's dozen real pills train alongside
the 240 synthetic ones, and the ratio keeps the real pills from being drowned (sampled by
class count alone, 12 real classes among 252 would fill 5% of a batch)."""

from __future__ import annotations

import random

import numpy as np
import tensorflow_similarity as tfsim

from edge_runtime.preprocessing import normalise
from tf_pilltrack.data import dataset
from tf_pilltrack.data.augmentation import augment
from tf_pilltrack.settings import Augment

MIX_PREFIX = "mix:"  # mix-set classes are their own classes, even where a folder name repeats


class MixedSampler(tfsim.samplers.MultiShotMemorySampler):
    """MultiShotMemorySampler whose batches take a fixed number of classes from each group of
    classes: `quotas` is [(class ids, classes per batch), ...], drawn in that order
    (TF-Similarity draws classes uniformly from one list)."""

    def __init__(self, x, y, quotas: list[tuple[list[int], int]], **kwargs):
        super().__init__(x, y, **kwargs)
        self.quotas = [(sorted(ids), count) for ids, count in quotas if count > 0]

    def _get_examples(self, batch_id, num_classes, examples_per_class):
        every_class = self.class_list
        self.class_list = [chosen for ids, count in self.quotas for chosen in random.sample(ids, k=count)]
        try:  # the parent samples `num_classes` of class_list: exactly the ones chosen here
            return super()._get_examples(batch_id, len(self.class_list), examples_per_class)
        finally:
            self.class_list = every_class


def mix_classes(classes_per_batch: int, ratio: float, main_count: int, mix_count: int) -> int:
    """Classes of each batch drawn from the mix set: `ratio` of the batch, rounded, kept between
    what the other set cannot fill and leaving that set at least one class; none without a mix set."""
    if mix_count == 0:
        return 0
    low = max(1 if ratio > 0 else 0, classes_per_batch - main_count)
    high = min(mix_count, classes_per_batch - 1)
    return int(min(max(round(ratio * classes_per_batch), low), high))


def class_quotas(names: list[str], classes: int, mix_ratio: float,
                 reference_share: float) -> list[tuple[list[int], int]]:
    """How a batch of `classes` pills is drawn from the class `names` (ids: their indices): [(class
    ids, pills drawn from them)], in draw order. The mix set (names MIX_PREFIX...) takes `mix_ratio`
    of the pills; of the rest, `reference_share` are composited reference pills (names
    dataset.REFERENCE_PREFIX...) when there are both kinds. Groups drawing none are left out."""
    mix_ids = [index for index, name in enumerate(names) if name.startswith(MIX_PREFIX)]
    reference_ids = [index for index, name in enumerate(names) if name.startswith(dataset.REFERENCE_PREFIX)]
    other_ids = sorted(set(range(len(names))) - set(mix_ids) - set(reference_ids))
    taken = mix_classes(classes, mix_ratio, len(names) - len(mix_ids), len(mix_ids))
    if reference_ids and other_ids:
        rest = classes - taken
        references = mix_classes(rest, reference_share, len(other_ids), len(reference_ids))
        quotas = [(mix_ids, taken), (reference_ids, references), (other_ids, rest - references)]
    else:
        quotas = [(mix_ids, taken), (reference_ids + other_ids, classes - taken)]
    return [(ids, count) for ids, count in quotas if count > 0]


def make_sampler(classes_per_batch: int, examples_per_class: int, steps_per_epoch: int, augment_settings: Augment,
                 train: dataset.Split, mix: dataset.Split, mix_ratio: float, reference_share: float):
    """The sampler of a training section of params.yaml (`teacher` or `distill`: its classes_per_batch,
    examples_per_class and steps_per_epoch) over the training split plus the mix split, its photos
    augmented as `augment_settings` (the `augment` section) says. The mix set
    takes `mix_ratio` of each batch's classes; of the rest, `reference_share` are composited
    reference pills (class names dataset.REFERENCE_PREFIX...) when the training split has both kinds.
    Its draws use Python's `random` module (TF-Similarity's): seed it first."""
    labels = np.concatenate([train.labels.astype(str), np.char.add(MIX_PREFIX, mix.labels.astype(str))])
    pixels = np.concatenate([train.pixels, mix.pixels]) if len(mix) else train.pixels
    targets, names = dataset.label_indices(labels)
    classes = dataset.batch_classes(classes_per_batch, labels)
    quotas = class_quotas(names, classes, mix_ratio, reference_share)

    def augmenter(x, y, examples_per_class, is_warmup):
        return normalise(augment(x, augment_settings)), y

    common = dict(classes_per_batch=classes, examples_per_class_per_batch=examples_per_class,
                  steps_per_epoch=steps_per_epoch, augmenter=augmenter)
    if len(quotas) == 1 and len(quotas[0][0]) == len(names):  # every class alike: TF-Similarity's own draw
        return tfsim.samplers.MultiShotMemorySampler(pixels, targets, **common)
    return MixedSampler(pixels, targets, quotas, **common)
