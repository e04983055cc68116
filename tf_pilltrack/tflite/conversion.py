"""Keras student to full-integer int8 TFLite: the converter the export stage, the budget check
and the benchmark share, the reference model converted the same way, and the description of a converted model (size, I/O, ops, TFLite
Micro arena, Edge TPU check)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras

from edge_runtime.preprocessing import normalise
from edge_runtime.quiet import native_stderr_silenced
from tf_pilltrack.data import dataset
from tf_pilltrack.tflite import micro


def converter(model, calibration_pixels: np.ndarray):
    """TFLite's converter of a Keras student to full-integer int8 (uint8 in, int8 out), with
    `calibration_pixels` (uint8 crops) as its representative data."""
    # A fixed batch of one: static shapes, as the Edge TPU compiler and TFLite Micro want.
    signature = tf.TensorSpec([1, *model.input_shape[1:]], tf.float32)
    function = tf.function(lambda pixels: model(pixels, training=False), input_signature=[signature])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.int8
    if len(calibration_pixels) == 0:
        raise ValueError("full-integer conversion needs calibration images")

    def representative():
        for pixels in calibration_pixels:
            yield [normalise(pixels[None].astype(np.float32))]

    converter.representative_dataset = representative
    return converter


def quietly_converted(model_converter) -> bytes:
    """The TFLite flatbuffer of `model_converter.convert()`, with TFLite's quantiser kept off file
    descriptor 2 (it prints "fully_quantize: 0, inference_type: 6, ..." once per model); a failed
    conversion still raises."""
    with native_stderr_silenced():
        return model_converter.convert()


def convert_qat(qat_student, calibration_pixels: np.ndarray) -> bytes:
    """int8 TFLite from a quantization-aware student. Its fake-quantised layers carry the
    ranges learned in training; the converter still wants sample inputs for full-integer
    conversion of the remaining tensors."""
    return quietly_converted(converter(qat_student, calibration_pixels))


def convert_ptq(float_student, calibration_pixels: np.ndarray) -> bytes:
    """int8 TFLite from a float student, ranges calibrated on `calibration_pixels`."""
    return quietly_converted(converter(float_student, calibration_pixels))


def calibration_sample(split: dataset.Split, count: int, seed: int) -> np.ndarray:
    """`count` crops of `split` drawn with `seed`, in the split's order."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(split), size=min(count, len(split)), replace=False)
    return split.pixels[np.sort(chosen)]


def describe(model: bytes) -> dict:
    """Size, I/O, ops, TFLM arena and the Edge TPU check of an int8 model."""
    return {
        "bytes": len(model),
        "io": micro.io_details(model),
        "ops": micro.operators(model),
        "micro_arena_bytes": micro.measure_arena(model),
        "edgetpu": micro.edgetpu_report(model),
    }


def build_reference(calibration_images: int, seed: int) -> bytes:
    """MobileNetV2 1.0 at 224 px (the size of model the seed project shipped), untrained,
    converted to uint8-in/int8-out exactly as the student is."""
    tf_keras.utils.set_random_seed(seed)
    model = tf_keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=1.0, include_top=False,
                                              weights=None, pooling="avg")
    rng = np.random.default_rng(seed)
    calibration = rng.integers(0, 256, size=(calibration_images, 224, 224, 3), dtype=np.uint8)
    return quietly_converted(converter(model, calibration))
