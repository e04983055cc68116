"""Training-time augmentation, per image within a batch: what a phone or a Pi camera changes
between two photos of the same pill (framing, exposure, contrast, colour cast and saturation,
orientation). Works on float pixels in 0..255; `normalise` follows it."""

from __future__ import annotations

import tensorflow as tf

from tf_pilltrack.settings import Augment


def _uniform(batch: tf.Tensor, low: float, high: float) -> tf.Tensor:
    return tf.random.uniform([batch, 1, 1, 1], low, high)


def _where_random(x: tf.Tensor, transformed: tf.Tensor) -> tf.Tensor:
    pick = tf.random.uniform([tf.shape(x)[0], 1, 1, 1]) < 0.5
    return tf.where(pick, transformed, x)


def reframe(x: tf.Tensor, zoom: float) -> tf.Tensor:
    """Crop each image to a random square of side 1 - U(0, zoom) (of the image side) at a random
    place, resized back: a tighter or off-centre framing of the pill, as a hand-cut box or a
    detector's gives (`augment` reframes half the images and keeps the localiser's framing for
    the other half)."""
    batch, size = tf.shape(x)[0], tf.shape(x)[1]
    side = 1.0 - tf.random.uniform([batch], 0.0, zoom)
    top = tf.random.uniform([batch]) * (1.0 - side)
    left = tf.random.uniform([batch]) * (1.0 - side)
    boxes = tf.stack([top, left, top + side, left + side], axis=1)
    return tf.image.crop_and_resize(x, boxes, tf.range(batch), tf.stack([size, size]))


def augment(pixels: tf.Tensor, settings: Augment) -> tf.Tensor:
    """Randomly perturb a (B, S, S, 3) batch of float pixels (0..255), each image on its own.

    `settings` is the `augment` section of params.yaml."""
    x = tf.cast(pixels, tf.float32) / 255.0
    batch = tf.shape(x)[0]
    if settings.zoom > 0:
        x = _where_random(x, reframe(x, settings.zoom))
    if settings.rotate:  # the 8 symmetries of the square: pills lie any way up
        x = _where_random(x, tf.transpose(x, [0, 2, 1, 3]))
        x = _where_random(x, tf.reverse(x, axis=[2]))
        x = _where_random(x, tf.reverse(x, axis=[1]))
    gray = tf.reduce_mean(x, axis=3, keepdims=True)
    saturation = settings.saturation
    x = gray + (x - gray) * _uniform(batch, 1.0 - saturation, 1.0 + saturation)
    cast = settings.colour_cast
    x = x * tf.random.uniform([batch, 1, 1, 3], 1.0 - cast, 1.0 + cast)
    contrast = settings.contrast
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = mean + (x - mean) * _uniform(batch, 1.0 - contrast, 1.0 + contrast)
    x = x + _uniform(batch, -settings.brightness, settings.brightness)
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0
