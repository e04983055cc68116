"""Fixtures of the edge client's tests: a tiny int8 TFLite embedding model and pill photos.

The model needs TensorFlow, so it is made by running this file as a script (conftest.py does
that in a subprocess and caches the result), which keeps TensorFlow out of the test process:

    python tests/edge_fixtures.py tiny_int8.tflite

Set PILLTRACK_EDGE_TEST_MODEL to a model made this way to run the edge tests where only the
edge client is installed.
"""

from __future__ import annotations

import os
import sys

import cv2
import numpy as np

from edge_runtime.preprocessing import normalise

IMAGE_SIZE = 32  # side of the tiny model's square input, pixels
EMBEDDING_SIZE = 8  # dimension of the tiny model's embedding

# Pills of the tests: name -> RGB colour of an ellipse on a plain grey background. Through
# the tiny untrained model, `pill_photos` of one colour lie within about 0.05 cosine distance
# of each other and about 0.2 or more from every other colour here (measured on 50 photos
# each), so THRESHOLD = 0.1 tells them apart.
PILL_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 70, 220),
    "cyan": (40, 200, 200),
    "black": (20, 20, 20),
}
GALLERY_PILLS = ("red", "green", "blue")  # enrolled in conftest's `edge_bundle`, 3 photos each
THRESHOLD = 0.1  # unknown threshold of `edge_bundle`, a cosine distance
LOOKALIKE_MARGIN = 0.02  # look-alike margin of `edge_bundle`, a cosine distance


def make_tiny_model(path: str, seed: int = 0) -> None:
    """Write a full-int8 TFLite model (uint8 input, int8 output) of a tiny untrained CNN:
    (32, 32, 3) normalised float input, one convolution, global pooling, a dense layer to 8."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    import tf_keras
    from tf_keras import layers

    tf_keras.utils.set_random_seed(seed)
    inputs = tf_keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    features = layers.Conv2D(16, 3, strides=2, activation="relu")(inputs)
    features = layers.GlobalAveragePooling2D()(features)
    outputs = layers.Dense(EMBEDDING_SIZE)(features)
    model = tf_keras.Model(inputs, outputs)

    generator = np.random.default_rng(seed)

    def representative_dataset():
        for _ in range(32):
            pixels = generator.integers(0, 256, (1, IMAGE_SIZE, IMAGE_SIZE, 3))
            yield [normalise(pixels).astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.int8
    with open(path, "wb") as handle:
        handle.write(converter.convert())


def pill_photo(colour, size: int = 96, centre=None, axes=None, angle: float = 0.0,
               background=(128, 128, 128)) -> np.ndarray:
    """An (size, size, 3) uint8 RGB photo of one ellipse ("pill") on a plain background."""
    photo = np.empty((size, size, 3), np.uint8)
    photo[:] = background
    centre = centre or (size // 2, size // 2)
    axes = axes or (size // 4, size // 6)
    cv2.ellipse(photo, centre, axes, angle, 0, 360, tuple(int(c) for c in colour), -1)
    return photo


def pill_photos(name: str, count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` 96-pixel photos of the pill `name` (a key of PILL_COLOURS), each placed, sized
    and turned differently."""
    generator = np.random.default_rng([seed, sorted(PILL_COLOURS).index(name)])
    return [
        pill_photo(
            PILL_COLOURS[name],
            centre=(int(generator.integers(30, 66)), int(generator.integers(30, 66))),
            axes=(int(generator.integers(16, 28)), int(generator.integers(9, 16))),
            angle=float(generator.integers(0, 180)),
        )
        for _ in range(count)
    ]


def write_photo(path: str, rgb: np.ndarray) -> str:
    """Save an RGB photo (PNG or JPEG by suffix) and return its path."""
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")
    return str(path)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/edge_fixtures.py OUTPUT.tflite")
    make_tiny_model(sys.argv[1])
