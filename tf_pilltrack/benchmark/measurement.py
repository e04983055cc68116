"""Measuring a model: its multiply-accumulates (from a TFLite graph or a Keras model) and its
invoke latency under each runtime (LiteRT and tflite-runtime through the device client's own
interpreter, TFLite Micro, TensorFlow, NumPy for the baseline).

Imports no TensorFlow at the top: `interpreter_timings` also runs in the edge environments."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Callable

import numpy as np

from tf_pilltrack.tflite import micro
from tf_pilltrack.tflite.parity import run_in_tflite_runtime, runtime_version
from tf_pilltrack.tflite.timing import time_invocations

# Ops whose multiply-accumulates are counted; the rest (ADD, MEAN, QUANTIZE...) are negligible.
MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
INPUT_FILL = 128  # every timed invocation sees a mid-grey uint8 input, as `pilltrack check`'s


# ---------------------------------------------------------------------------------------------
# Counting: multiply-accumulates of a TFLite graph or a Keras model
# ---------------------------------------------------------------------------------------------


def graph_macs(model: bytes) -> dict:
    """Multiply-accumulates of one invocation, from the TFLite graph's tensor shapes:
    CONV_2D out_elements x kh x kw x in_channels (per group), DEPTHWISE_CONV_2D out_elements x
    kh x kw, FULLY_CONNECTED out_elements x in_features. Returns the total and per op."""
    interpreter = micro._lite_interpreter(model)
    shapes = {detail["index"]: [int(v) for v in detail["shape"]] for detail in interpreter.get_tensor_details()}
    by_op = {name: 0 for name in MAC_OPS}
    for op in interpreter._get_ops_details():
        name = op["op_name"]
        if name not in by_op:
            continue
        output, weights = shapes[op["outputs"][0]], shapes[op["inputs"][1]]
        if name == "CONV_2D":  # filter [out, kh, kw, in / groups]
            per_output = weights[1] * weights[2] * weights[3]
        elif name == "DEPTHWISE_CONV_2D":  # filter [1, kh, kw, out]
            per_output = weights[1] * weights[2]
        else:  # weights [out, in]
            per_output = weights[1]
        by_op[name] += math.prod(output) * per_output
    return {"total": sum(by_op.values()), "by_op": by_op}


def keras_macs(model) -> int:
    """Multiply-accumulates of one image through a Keras model's Conv2D, DepthwiseConv2D and
    Dense layers (the same count as `graph_macs` of its TFLite conversion)."""
    from tf_keras import layers

    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.DepthwiseConv2D):
            _, height, width, channels = layer.output_shape
            total += height * width * channels * layer.kernel_size[0] * layer.kernel_size[1]
        elif isinstance(layer, layers.Conv2D):
            _, height, width, channels = layer.output_shape
            inputs = layer.input_shape[-1] // layer.groups
            total += height * width * channels * layer.kernel_size[0] * layer.kernel_size[1] * inputs
        elif isinstance(layer, layers.Dense):
            total += math.prod(layer.output_shape[1:-1]) * layer.units * layer.input_shape[-1]
    return int(total)


# ---------------------------------------------------------------------------------------------
# Timing under each runtime
# ---------------------------------------------------------------------------------------------


def interpreter_timings(jobs: list[list], repeats: int) -> dict:
    """Invoke latency of TFLite models, each job [name, model path, threads], with the device
    client's own interpreter (`edge_runtime.interpreter`: LiteRT, else tflite-runtime). Imports
    no TensorFlow, so it also runs in the edge environments (see `tflite_runtime_timings`)."""
    from edge_runtime import interpreter as runtime

    timings = {}
    for name, path, threads in jobs:
        model = runtime.make_interpreter(path, threads=int(threads))
        detail = model.get_input_details()[0]
        model.set_tensor(detail["index"], np.full(detail["shape"], INPUT_FILL, detail["dtype"]))
        timings[name] = time_invocations(model.invoke, repeats)
    return {"runtime": runtime.runtime_name(), "version": runtime_version(runtime.runtime_name()), "timings": timings}


_SUBPROCESS_SCRIPT = (
    "import json, sys\n"
    "from tf_pilltrack.benchmark.measurement import interpreter_timings\n"
    "print(json.dumps(interpreter_timings(json.loads(sys.argv[1]), int(sys.argv[2]))))\n"
)


def tflite_runtime_timings(python: pathlib.Path, jobs: list[list], repeats: int) -> dict:
    """`interpreter_timings` in the tflite-runtime environment, as a subprocess of that
    environment's interpreter. {"error": reason} where it is not installed or fails."""
    return run_in_tflite_runtime(python, _SUBPROCESS_SCRIPT, [json.dumps(jobs), str(repeats)])


def micro_timing(model: bytes, repeats: int) -> dict:
    """Invoke latency under the TFLite Micro interpreter (x86 host build, reference kernels)."""
    interpreter = micro.micro_interpreter(model)
    detail = interpreter.get_input_details(0)
    pixels = np.full(detail["shape"], INPUT_FILL, detail["dtype"])

    def invoke():
        interpreter.set_input(pixels, 0)
        interpreter.invoke()

    return time_invocations(invoke, repeats)


def keras_timing(model, repeats: int) -> dict:
    """One image through a Keras model as a traced tf.function (TensorFlow's own threads)."""
    import tensorflow as tf

    function = tf.function(lambda pixels: model(pixels, training=False))
    pixels = tf.zeros([1, *model.input_shape[1:]], tf.float32)  # normalised mid-grey
    return time_invocations(lambda: function(pixels).numpy(), repeats)


def numpy_timing(describe: Callable[[np.ndarray], np.ndarray], crop: np.ndarray, repeats: int) -> dict:
    return time_invocations(lambda: describe(crop), repeats)
