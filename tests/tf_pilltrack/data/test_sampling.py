"""Training batches (tf_pilltrack/data/sampling.py): the mix set's share of each batch's classes, and
the capture-like augmentation (tf_pilltrack/data/augmentation.py) they go through."""

from __future__ import annotations

import random

import numpy as np
import pytest

import tf_pilltrack  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

import tensorflow as tf  # noqa: E402

from tf_pilltrack.data import augmentation, dataset, sampling  # noqa: E402
from tf_pilltrack.settings import Augment  # noqa: E402

SIZE = 16
CLASSES_PER_BATCH, EXAMPLES_PER_CLASS, STEPS_PER_EPOCH = 6, 2, 4
NO_AUGMENT = Augment(brightness=0.0, contrast=0.0, colour_cast=0.0, saturation=0.0, rotate=False, zoom=0.0)


def _split(names: list[str], per_class: int = 3, value: int = 0) -> dataset.Split:
    labels = np.repeat(np.array(names), per_class)
    pixels = np.full((len(labels), SIZE, SIZE, 3), value, np.uint8)
    return dataset.Split(pixels, labels, labels, labels)


@pytest.mark.parametrize("ratio, expected", [(0.5, 3), (0.2, 1), (0.01, 1), (0.9, 3)])
def test_each_batch_takes_the_mix_share_of_its_classes(ratio, expected):
    """Main pills are black, mix pills white: every batch holds `expected` white classes (0.9
    asks for 5 of 6, but the mix set has only 3)."""
    random.seed(0)
    train = _split([f"main_{index}" for index in range(10)], value=0)
    mix = _split(["mix_a", "mix_b", "main_0"], value=255)  # a folder name may repeat: still its own class
    sampler = sampling.make_sampler(CLASSES_PER_BATCH, EXAMPLES_PER_CLASS, STEPS_PER_EPOCH, NO_AUGMENT, train, mix, ratio, 0.5)
    for step in range(STEPS_PER_EPOCH):
        pixels, labels = sampler[step]
        pixels, labels = np.asarray(pixels), np.asarray(labels)
        white = pixels.reshape(len(pixels), -1).mean(axis=1) > 0  # normalised: black is -1
        assert len(set(labels.tolist())) == CLASSES_PER_BATCH
        assert len(set(labels[white].tolist())) == expected
        assert set(labels[white].tolist()).isdisjoint(labels[~white].tolist())


def test_without_a_mix_set_batches_are_plain_class_balanced_draws():
    random.seed(0)
    sampler = sampling.make_sampler(CLASSES_PER_BATCH, EXAMPLES_PER_CLASS, STEPS_PER_EPOCH, NO_AUGMENT, _split(list("abcdefgh")), dataset.empty_split(SIZE), 0.5, 0.5)
    assert not isinstance(sampler, sampling.MixedSampler)
    _, labels = sampler[0]
    assert len(set(np.asarray(labels).tolist())) == CLASSES_PER_BATCH


@pytest.mark.parametrize("share, expected", [(0.5, 3), (0.34, 2), (1.0, 5), (0.0, 0)])
def test_each_batch_takes_the_reference_share_of_its_classes(share, expected):
    """Synthetic pills are black, composited reference pills (ref-...) white: every batch holds
    `expected` white classes (all 6 would leave no synthetic pill: one stays)."""
    random.seed(0)
    train = dataset.Split(*(np.concatenate(fields) for fields in zip(
        _split([f"pill_{index}" for index in range(8)], value=0), _split([f"ref-{index}" for index in range(8)], value=255))))
    sampler = sampling.make_sampler(CLASSES_PER_BATCH, EXAMPLES_PER_CLASS, STEPS_PER_EPOCH, NO_AUGMENT, train, dataset.empty_split(SIZE), 0.0, share)
    for step in range(STEPS_PER_EPOCH):
        pixels, labels = (np.asarray(part) for part in sampler[step])
        white = pixels.reshape(len(pixels), -1).mean(axis=1) > 0
        assert len(set(labels.tolist())) == CLASSES_PER_BATCH
        assert len(set(labels[white].tolist())) == expected


def test_the_mix_share_comes_first_and_references_share_the_rest():
    random.seed(0)
    train = dataset.Split(*(np.concatenate(fields) for fields in zip(
        _split([f"pill_{index}" for index in range(8)], value=0), _split([f"ref-{index}" for index in range(8)], value=255))))
    sampler = sampling.make_sampler(CLASSES_PER_BATCH, EXAMPLES_PER_CLASS, STEPS_PER_EPOCH, NO_AUGMENT, train, _split(["mix_a", "mix_b"], value=128), 0.34, 0.5)
    pixels, labels = (np.asarray(part) for part in sampler[0])
    mean = pixels.reshape(len(pixels), -1).mean(axis=1)  # normalised: synthetic -1, mix about 0, references 1
    assert len(set(labels.tolist())) == 6
    assert len(set(labels[np.abs(mean) < 0.1].tolist())) == 2  # a third of 6 from the mix set
    assert len(set(labels[mean > 0.9].tolist())) == 2  # half of the other 4


def test_mix_classes_rule():
    assert sampling.mix_classes(16, 0.25, 150, 10) == 4
    assert sampling.mix_classes(16, 0.0, 150, 10) == 0
    assert sampling.mix_classes(16, 0.25, 150, 0) == 0
    assert sampling.mix_classes(16, 0.9, 150, 10) == 10  # no more than the mix set has
    assert sampling.mix_classes(16, 0.1, 3, 40) == 13  # the main set fills only 3
    assert sampling.mix_classes(2, 0.9, 5, 5) == 1  # each set keeps a class


def test_reframe_zooms_in_and_keeps_the_shape():
    tf.random.set_seed(0)
    square = np.zeros((100, SIZE, SIZE, 3), np.float32)
    square[:, 4:12, 4:12] = 255.0  # a pill filling a quarter of the crop
    out = augmentation.reframe(tf.constant(square), zoom=0.5).numpy()
    assert out.shape == square.shape
    filled = (out > 127).mean(axis=(1, 2, 3))
    assert filled.mean() > square[0].mean() / 255.0 * 1.2  # closer framing: the pill fills more
    assert np.array_equal(augmentation.reframe(tf.constant(square[:3]), zoom=0.0).numpy(), square[:3])


def test_augment_with_every_change_off_leaves_the_photo_as_it_is():
    grey = np.full((8, SIZE, SIZE, 3), 128.0, np.float32)
    assert np.array_equal(augmentation.augment(tf.constant(grey), NO_AUGMENT).numpy(), grey)
