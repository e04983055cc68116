"""Export parity on a tiny student: Keras (QAT) vs LiteRT int8 vs TFLite Micro int8 (embeddings;
every op alone within the per-op tolerance of tf_pilltrack/tflite/parity.py), the micro C array, and the
Edge TPU op check."""

from __future__ import annotations

import numpy as np
import pytest

import tf_pilltrack  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

pytest.importorskip("tensorflow")
import tf_keras  # noqa: E402

from edge_runtime import interpreter as edge_interpreter  # noqa: E402
from edge_runtime.preprocessing import normalise  # noqa: E402
from tf_pilltrack.tflite import conversion, micro, parity  # noqa: E402
from tf_pilltrack.training import models

SIZE = 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tf_keras.utils.set_random_seed(0)
    student = models.build_student(SIZE, 0.35, 16, 8, [(1, 8, 1, 1), (4, 16, 1, 2), (4, 24, 1, 2)])
    qat = models.quantize(student)
    rng = np.random.default_rng(0)
    calibration = rng.integers(0, 256, size=(16, SIZE, SIZE, 3), dtype=np.uint8)
    # Forward passes in training mode settle BatchNorm's moving statistics and the QAT ranges,
    # as training would; an untrained network's inference-mode outputs would all quantise to 0.
    batch = normalise(calibration.astype(np.float32))
    for _ in range(200):
        qat(batch, training=True)
    model_bytes = conversion.convert_qat(qat, calibration)
    path = tmp_path_factory.mktemp("export") / "tiny.tflite"
    path.write_bytes(model_bytes)
    pixels = rng.integers(0, 256, size=(6, SIZE, SIZE, 3), dtype=np.uint8)
    return {"qat": qat, "student": student, "bytes": model_bytes, "path": path, "pixels": pixels,
            "calibration": calibration}


def test_model_is_full_integer(tiny):
    details = micro.io_details(tiny["bytes"])
    assert details["input"]["dtype"] == "uint8" and details["output"]["dtype"] == "int8"
    assert details["input"]["shape"] == [1, SIZE, SIZE, 3]
    report = micro.edgetpu_report(tiny["bytes"])
    assert report["float_tensors"] == [] and report["dynamic_tensors"] == []
    assert report["batch"] == 1
    assert report["cpu_ops"] == [] and report["compatible"]


def test_keras_litert_and_micro_agree(tiny):
    lite = edge_interpreter.make_interpreter(tiny["path"], threads=1)
    litert = edge_interpreter.embed(lite, tiny["pixels"], 1)
    keras = np.array(tiny["qat"](normalise(tiny["pixels"].astype(np.float32)), training=False))
    keras /= np.linalg.norm(keras, axis=1, keepdims=True)
    cosine = np.sum(keras * litert, axis=1)
    assert cosine.min() > 0.98, cosine

    micro_interpreter = micro.micro_interpreter(tiny["bytes"])
    for pixels in tiny["pixels"]:
        raw_micro = micro.micro_invoke(micro_interpreter, pixels[None])
        raw_device = _invoke(lite, pixels)  # what the device runs: LiteRT with XNNPACK
        micro_unit = raw_micro.astype(float).ravel() / np.linalg.norm(raw_micro.astype(float))
        device_unit = raw_device.astype(float).ravel() / np.linalg.norm(raw_device.astype(float))
        assert micro_unit @ device_unit > 0.99


def test_every_op_agrees_within_one_step_between_runtimes(tiny):
    """The stated tolerance (tf_pilltrack/tflite/parity.py) on the student's own op types (ReLU6 and
    linear convolutions, depthwise convolutions, MEAN, FULLY_CONNECTED): each op alone, given identical
    inputs, within 1 int8 step between LiteRT with XNNPACK, its builtin and reference kernels and
    TFLite Micro. Whole-model outputs are not bounded in steps: the per-op differences accumulate."""
    divergence = parity.measure_op_divergence(tiny["bytes"], tiny["pixels"])
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "MEAN", "FULLY_CONNECTED"} <= {op["type"] for op in divergence["ops"]}
    assert all(divergence["exposed_output_identical"].values())
    for pair, figures in parity.summarise_op_divergence(divergence).items():
        assert figures["within_per_op_tolerance"], (pair, figures)


def _invoke(interpreter, pixels):
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels[None])
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()


def test_ptq_conversion_needs_calibration(tiny):
    with pytest.raises(ValueError, match="calibration"):
        conversion.convert_ptq(tiny["student"], tiny["calibration"][:0])
    ptq = conversion.convert_ptq(tiny["student"], tiny["calibration"])
    assert micro.io_details(ptq)["output"]["dtype"] == "int8"


def test_micro_arena_and_c_array(tiny, tmp_path):
    arena = micro.measure_arena(tiny["bytes"])
    assert 1000 < arena < 200_000
    ops = micro.operators(tiny["bytes"])
    assert "CONV_2D" in ops and "DEPTHWISE_CONV_2D" in ops and "DELEGATE" not in ops
    micro.write_c_array(tmp_path, tiny["bytes"], arena, micro.io_details(tiny["bytes"]), ops)
    source = (tmp_path / "model_data.cc").read_text()
    values = [int(token, 16) for token in source.split("{", 1)[1].split("}", 1)[0].replace(",", " ").split()]
    assert bytes(values) == tiny["bytes"]
    header = (tmp_path / "model_data.h").read_text()
    assert f"kPilltrackOpCount = {len(ops)};" in header
    assert "kPilltrackArenaSize" in header and "kPilltrackInputZeroPoint" in header
    assert "resolver.AddDepthwiseConv2D()" in (tmp_path / "main.cc").read_text()


def test_c_bytes_lays_out_the_rows_both_c_arrays_use():
    """model_data.cc (12 bytes a row) and the firmware's crops.cc (16) share this layout."""
    assert micro.c_bytes(bytes([0, 1, 171, 255, 16]), per_line=2) == "    0x00, 0x01,\n    0xab, 0xff,\n    0x10,"
    assert micro.c_bytes(bytes(range(13))).splitlines() == [
        "    " + ", ".join(f"0x{value:02x}" for value in range(12)) + ",", "    0x0c,"]
    assert micro.c_bytes(b"") == ""


def test_resolver_calls_follow_tflm_names():
    assert micro.resolver_calls(["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MEAN", "QUANTIZE"]) == [
        "AddConv2D", "AddDepthwiseConv2D", "AddFullyConnected", "AddMean", "AddQuantize"]
