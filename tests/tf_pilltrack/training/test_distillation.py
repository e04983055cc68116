"""The distiller on a tiny problem: only the student learns, and each loss term, trained alone,
goes down."""

from __future__ import annotations

import numpy as np
import pytest

import tf_pilltrack  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

tf = pytest.importorskip("tensorflow")
import tf_keras  # noqa: E402

from tf_pilltrack.training import distiller, models  # noqa: E402
from tf_pilltrack.training.distiller import batch_mean  # noqa: E402

SIZE = 32
EMBEDDING = 8
TINY_STAGES = [(1, 8, 1, 1), (4, 16, 1, 2), (4, 24, 1, 2)]


def _problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    # 4 classes of 8 images: a class-specific colour plus noise, in the normalised range.
    colours = rng.uniform(-0.8, 0.8, size=(4, 1, 1, 3))
    labels = np.repeat(np.arange(4), 8).astype(np.int32)
    images = colours[labels] + rng.normal(0, 0.1, size=(32, SIZE, SIZE, 3))
    return tf.constant(images, tf.float32), tf.constant(labels)


def _models():
    tf_keras.utils.set_random_seed(1)
    teacher = models.build_teacher(SIZE, EMBEDDING, [8, 8, 16, 16], [1, 1, 1, 1])
    student = models.build_student(SIZE, 0.35, 16, EMBEDDING, TINY_STAGES)
    return teacher, student


def _distiller(teacher, student, embedding=0.0, relation=0.0, triplet=0.0):
    model = distiller.Distiller(student, teacher, embedding, relation, triplet, triplet_margin=0.1, mixup=0.0)
    model.compile(optimizer=tf_keras.optimizers.Adam(0.01))
    return model


def test_train_step_changes_only_the_student():
    teacher, student = _models()
    images, labels = _problem()
    teacher_before = [w.copy() for w in teacher.get_weights()]
    student_before = [w.copy() for w in student.get_weights()]
    distiller = _distiller(teacher, student, embedding=1.0, relation=1.0, triplet=1.0)
    for _ in range(3):
        distiller.train_on_batch(images, labels)
    for before, after in zip(teacher_before, teacher.get_weights()):
        np.testing.assert_array_equal(before, after)  # BatchNorm statistics included
    changed = [not np.array_equal(b, a) for b, a in zip(student_before, student.get_weights())]
    assert sum(changed) > len(changed) // 2


@pytest.mark.parametrize("term", ["embedding", "relation", "triplet"])
def test_each_loss_term_decreases_when_trained_alone(term):
    teacher, student = _models()
    images, labels = _problem()
    distiller = _distiller(teacher, student, **{term: 1.0})
    # Measured as trained (BatchNorm on batch statistics): a few steps do not move the moving
    # averages that inference uses far enough to compare.
    before = float(distiller.compute_terms(images, labels, training=True)[f"{term}_loss"])
    for _ in range(25):
        distiller.train_on_batch(images, labels)
    after = float(distiller.compute_terms(images, labels, training=True)[f"{term}_loss"])
    assert after < 0.8 * before, (term, before, after)


@pytest.mark.parametrize("triplet", [0.0, 0.5])
def test_triplet_term_is_computed_only_when_its_weight_is_above_zero(monkeypatch, triplet):
    teacher, student = _models()
    images, labels = _problem()
    distiller = _distiller(teacher, student, embedding=1.0, relation=2.0, triplet=triplet)
    triplet_loss, calls = distiller.triplet, []

    def spy(*args):
        calls.append(args)
        return triplet_loss(*args)

    monkeypatch.setattr(distiller, "triplet", spy)
    terms = distiller.compute_terms(images, labels, training=False)
    # the total is the weighted sum it always was; a triplet term of weight 0 added nothing to it
    student_embeddings = models.l2_normalise(student(images, training=False))
    expected = 1.0 * terms["embedding_loss"] + 2.0 * terms["relation_loss"]
    if triplet > 0:
        expected += triplet * batch_mean(triplet_loss(labels, student_embeddings))
    assert float(terms["loss"]) == pytest.approx(float(expected), rel=1e-6)
    logs = distiller.train_on_batch(images, labels, return_dict=True)
    assert bool(calls) == (triplet > 0)
    assert ("triplet_loss" in terms) == ("triplet_loss" in logs) == (triplet > 0)


def test_loss_terms_are_zero_for_identical_embeddings():
    embeddings = tf.math.l2_normalize(tf.random.normal([6, EMBEDDING], seed=3), axis=-1)
    assert float(distiller.embedding_loss(embeddings, embeddings)) == pytest.approx(0.0, abs=1e-6)
    assert float(distiller.relation_loss(embeddings, embeddings)) == pytest.approx(0.0, abs=1e-6)
    other = tf.math.l2_normalize(tf.random.normal([6, EMBEDDING], seed=4), axis=-1)
    assert float(distiller.embedding_loss(embeddings, other)) > 0.1
    assert float(distiller.relation_loss(embeddings, other)) > 0.0


def test_relation_loss_ignores_a_global_rotation():
    """Pairwise geometry is what the relational term compares: rotating every student
    embedding by the same orthogonal matrix leaves it at zero."""
    embeddings = tf.math.l2_normalize(tf.random.normal([6, EMBEDDING], seed=5), axis=-1)
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(EMBEDDING, EMBEDDING)))
    rotated = tf.matmul(embeddings, tf.constant(rotation, tf.float32))
    assert float(distiller.relation_loss(embeddings, rotated)) == pytest.approx(0.0, abs=1e-5)
    assert float(distiller.embedding_loss(embeddings, rotated)) > 0.05


def test_negative_weights_are_refused():
    teacher, student = _models()
    with pytest.raises(ValueError, match="relation_weight"):
        distiller.Distiller(student, teacher, 1.0, -1.0, 0.0, 0.1, 0.0)
    with pytest.raises(ValueError, match="positive"):
        distiller.Distiller(student, teacher, 0.0, 0.0, 0.0, 0.1, 0.0)


def test_student_has_no_ops_microcontrollers_lack():
    _, student = _models()
    kinds = {type(layer).__name__ for layer in student.layers}
    assert kinds <= {"InputLayer", "ZeroPadding2D", "Conv2D", "BatchNormalization", "ReLU",
                     "DepthwiseConv2D", "Add", "GlobalAveragePooling2D", "Dense"}
    with pytest.raises(ValueError, match="stage"):
        models.build_student(SIZE, 0.35, 16, EMBEDDING, [(6, 16, 1, 3)])


def test_a_data_set_with_fewer_classes_than_a_batch_asks_for_still_trains():
    """A pharmacy's own photo set may hold fewer training classes than classes_per_batch (16):
    the sampler then draws every class, instead of failing."""
    import dataclasses

    from loopback import ROOT
    from tf_pilltrack import params as params_module
    from tf_pilltrack import settings
    from tf_pilltrack.data import dataset
    from tf_pilltrack.training import distribution

    rng = np.random.default_rng(0)
    labels = np.repeat(np.array(["a", "b", "c"]), 6)
    split = dataset.Split(rng.integers(0, 256, size=(18, SIZE, SIZE, 3), dtype=np.uint8), labels,
                          labels, labels)
    every = settings.from_params(params_module.load(ROOT / "tests" / "params_small.yaml"))
    batches = dataclasses.replace(every.distill, classes_per_batch=16, examples_per_class=2, steps_per_epoch=1)
    augment = settings.Augment(brightness=0.1, contrast=0.1, colour_cast=0.1, saturation=0.1, rotate=True, zoom=0.1)
    data = dataclasses.replace(every.data, mix_ratio=0.0, reference_share=0.5)
    training = dataclasses.replace(every.training, distribution="none", input="memory")
    pixels, batch_labels = distribution.training_input(training, batches, augment, data, every.base.seed, split,
                                                       dataset.empty_split(SIZE))[0]
    assert len(pixels) == 3 * 2 and len(set(np.asarray(batch_labels).tolist())) == 3
    assert dataset.batch_classes(16, labels) == 3 and dataset.batch_classes(2, labels) == 2
    with pytest.raises(ValueError, match="at least 2"):
        dataset.batch_classes(16, np.array(["a", "a"]))


def test_mix_images_blends_each_image_with_one_other_of_its_batch():
    tf_keras.utils.set_random_seed(3)
    images = tf.reshape(tf.eye(8), [8, 1, 1, 8])  # image i is the one-hot vector e_i
    mixed = distiller.mix_images(images, 0.4).numpy().reshape(8, 8)
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, rtol=1e-6)  # a convex blend of two images
    assert np.all(np.diag(mixed) >= 0.6 - 1e-6)  # its own image keeps at least 1 - mixup
    others = mixed - np.diag(np.diag(mixed))
    assert np.all((others > 0).sum(axis=1) <= 1)  # at most one other image in each blend
    assert np.any(others > 0)


def test_mix_images_at_zero_weight_changes_nothing():
    images, _ = _problem()
    np.testing.assert_array_equal(distiller.mix_images(images, 0.0).numpy(), images.numpy())


def test_mixup_changes_what_the_student_learns_from_a_batch():
    images, labels = _problem()
    trained = []
    for mixup in (0.0, 0.5):
        teacher, student = _models()
        model = distiller.Distiller(student, teacher, 1.0, 1.0, 0.0, triplet_margin=0.1, mixup=mixup)
        model.compile(optimizer=tf_keras.optimizers.Adam(0.01))
        model.train_on_batch(images, labels)
        trained.append(student.get_weights())
    assert any(not np.array_equal(a, b) for a, b in zip(*trained))


def test_mixup_outside_zero_to_one_is_refused():
    teacher, student = _models()
    with pytest.raises(ValueError, match="mixup"):
        distiller.Distiller(student, teacher, 1.0, 0.0, 0.0, 0.1, 1.5)
