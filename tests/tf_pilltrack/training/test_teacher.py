"""The teacher stage's training on a toy problem: an EfficientNet-Lite0 teacher starts from the
ImageNet weights, keeps its backbone untouched (batch-norm statistics included) for
teacher.frozen_epochs while the embedding head learns, then trains everything."""

from __future__ import annotations

import numpy as np
import pytest

import tf_pilltrack  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

pytest.importorskip("tensorflow")
import tf_keras  # noqa: E402
from loopback import ROOT  # noqa: E402

from tf_pilltrack.data import dataset  # noqa: E402
from tf_pilltrack.training import efficientnet, models
from tf_pilltrack import params as params_module  # noqa: E402
from tf_pilltrack import settings  # noqa: E402
from tf_pilltrack.training import teacher as teacher_stage  # noqa: E402


def toy_split(size: int, classes: int, per_class: int, seed: int) -> dataset.Split:
    rng = np.random.default_rng(seed)
    colours = rng.uniform(30, 220, (classes, 1, 1, 3))
    labels = np.repeat(np.arange(classes), per_class)
    pixels = np.clip(colours[labels] + rng.normal(0, 15, (len(labels), size, size, 3)), 0, 255).astype(np.uint8)
    names = np.array([f"pill_{label}" for label in labels])
    return dataset.Split(pixels, names, names, np.array([f"photo_{i}" for i in range(len(labels))]))


class BackboneWatcher(tf_keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.backbone, self.head = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.backbone.append([w.copy() for w in self.model.get_layer(models.BACKBONE).get_weights()])
        self.head.append([w.copy() for w in self.model.get_layer("embedding").get_weights()])


def test_frozen_epochs_then_the_whole_teacher_trains():
    params = params_module.load(ROOT / "tests" / "params_small.yaml")
    params["teacher"].update(backbone="efficientnet_lite0", pretrained="imagenet", epochs=2, frozen_epochs=1,
                             steps_per_epoch=2, learning_rate=0.001)
    params_module.validate(params)
    size = settings.profile(params)["image_size"]
    imagenet = efficientnet.load_pretrained(size).get_weights()
    watcher = BackboneWatcher()
    every = settings.from_params(params)
    model, history = teacher_stage.train(every.profile, every.teacher, every.training, every.augment, every.data,
                                         every.base.seed, toy_split(size, 6, 6, 0), toy_split(size, 3, 2, 1),
                                         toy_split(size, 3, 2, 1), callbacks=[watcher], verbose=0)
    assert len(history["calibration_recall_at_1"]) == len(history["loss"]) == 2
    for start, frozen in zip(imagenet, watcher.backbone[0]):  # moving means and variances included
        np.testing.assert_array_equal(start, frozen)
    assert any(not np.array_equal(a, b) for a, b in zip(watcher.backbone[0], watcher.backbone[1]))
    assert all(not np.array_equal(a, b) for a, b in zip(watcher.head[0], watcher.head[1]))
    reloaded = models.make_teacher(every.profile, every.teacher, start=False)  # the layout loads the trained weights
    reloaded.set_weights(model.get_weights())
    pixels = toy_split(size, 2, 2, 3).pixels
    np.testing.assert_allclose(models.embed(reloaded, pixels), models.embed(model, pixels), atol=1e-6)
