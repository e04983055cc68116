"""Stage `export`: the student as full-integer int8 TFLite, and its TFLite Micro C array.

Two int8 models come out, so quantisation-aware training can be compared with the simpler
alternative: `student_int8.tflite` from the QAT student (what ships), and
`student_ptq_int8.tflite` by post-training quantisation of the float student, calibrated on
`export.calibration_images` training crops. Both take uint8 pixels and return int8
embeddings. The export report records size, ops, TFLM arena and the Edge TPU op check.
"""

from __future__ import annotations

import json
import time
from typing import Callable

import numpy as np

import tf_pilltrack  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import tensorflow as tf

from edge_runtime.preprocessing import normalise
from edge_runtime.storage import write_atomically
from tf_pilltrack import dataset, distillation, micro, paths


def _converter(model, calibration_pixels: np.ndarray):
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


def convert_qat(qat_student, calibration_pixels: np.ndarray) -> bytes:
    """int8 TFLite from a quantization-aware student. Its fake-quantised layers carry the
    ranges learned in training; the converter still wants sample inputs for full-integer
    conversion of the remaining tensors."""
    return _converter(qat_student, calibration_pixels).convert()


def convert_ptq(float_student, calibration_pixels: np.ndarray) -> bytes:
    """int8 TFLite from a float student, ranges calibrated on `calibration_pixels`."""
    return _converter(float_student, calibration_pixels).convert()


def calibration_sample(split: dataset.Split, count: int, seed: int) -> np.ndarray:
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


def run(params: dict, echo: Callable[[str], None] = print) -> dict:
    started = time.time()
    train_split = dataset.load_split("train")
    calibration = calibration_sample(train_split, params["export"]["calibration_images"], params["base"]["seed"])
    qat_model = convert_qat(distillation.load_qat_student(params), calibration)
    ptq_model = convert_ptq(distillation.load_float_student(params), calibration)
    write_atomically(paths.STUDENT_QAT_TFLITE, qat_model)
    write_atomically(paths.STUDENT_PTQ_TFLITE, ptq_model)
    report = {"qat": describe(qat_model), "ptq": describe(ptq_model)}
    micro.write_c_array(paths.MICRO, qat_model, report["qat"]["micro_arena_bytes"], report["qat"]["io"], report["qat"]["ops"])
    report["seconds"] = round(time.time() - started, 1)
    paths.REPORTS.mkdir(parents=True, exist_ok=True)
    write_atomically(paths.REPORTS / "export.json", json.dumps(report, indent=2).encode())
    qat = report["qat"]
    echo(f"export: {paths.STUDENT_QAT_TFLITE} {qat['bytes'] / 1024:.1f} KiB, TFLM arena "
         f"{qat['micro_arena_bytes'] / 1024:.1f} KiB, ops {', '.join(qat['ops'])}; Edge TPU "
         + ("compatible" if qat["edgetpu"]["compatible"] else f"CPU fallback for {qat['edgetpu']['cpu_ops']}")
         + f"; PTQ model {report['ptq']['bytes'] / 1024:.1f} KiB; C array in {paths.MICRO}/")
    return report
