"""TensorFlow Lite Micro and Edge TPU checks of an int8 model, and the firmware C array.

- `measure_arena` runs the model under the real TFLM interpreter (the `tflite-micro` Python
  package, x86 host) and reads the arena its recording allocator reports.
- `operators` lists the model's builtin ops (from the LiteRT interpreter), `resolver_calls`
  turns them into `MicroMutableOpResolver::Add...()` calls, generated, not hand-written.
- `edgetpu_report` checks the Edge TPU compiler's rules that can be checked without it.
- `write_c_array` emits model_data.h / model_data.cc and an example main for a TFLM project
  (example_main.cc beside this module, its op resolver filled in).
"""

from __future__ import annotations

import os
import pathlib
import re
import string
import tempfile

import numpy as np

from edge_runtime.storage import write_atomically

# Ops the Edge TPU compiler maps to the TPU (coral.ai/docs/edgetpu/models-intro, "Supported
# operations"); any other op runs on the CPU, and everything after it too.
EXAMPLE_MAIN = pathlib.Path(__file__).parent / "example_main.cc"  # models/micro/main.cc, filled by string.Template
EDGETPU_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS",
    "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAXIMUM", "MAX_POOL_2D", "MEAN",
    "MINIMUM", "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "DEQUANTIZE", "REDUCE_MAX", "REDUCE_MIN",
    "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR",
    "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT", "SQUEEZE", "STRIDED_SLICE", "SUB",
    "SUM", "SQUARED_DIFFERENCE", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
})

_ARENA_PATTERN = re.compile(r"Arena allocation total (\d+) bytes")


def _lite_interpreter(model: bytes):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # Without the default XNNPACK delegate: it would replace the model's ops by one DELEGATE op.
    interpreter = Interpreter(model_content=model, num_threads=1,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    return interpreter


def operators(model: bytes) -> list[str]:
    """The builtin op names the model uses, in first-use order."""
    names: list[str] = []
    for op in _lite_interpreter(model)._get_ops_details():
        if op["op_name"] not in names:
            names.append(op["op_name"])
    return names


def resolver_calls(op_names: list[str]) -> list[str]:
    """`MicroMutableOpResolver` method names for the ops: CONV_2D -> AddConv2D."""
    return ["Add" + name.title().replace("_", "") for name in op_names]


def io_details(model: bytes) -> dict:
    """Shape, type and quantisation of the input and output tensors."""
    interpreter = _lite_interpreter(model)
    result = {}
    for kind, detail in (("input", interpreter.get_input_details()[0]), ("output", interpreter.get_output_details()[0])):
        scale, zero_point = detail["quantization"]
        result[kind] = {
            "shape": [int(v) for v in detail["shape"]],
            "shape_signature": [int(v) for v in detail["shape_signature"]],
            "dtype": np.dtype(detail["dtype"]).name,
            "scale": float(scale),
            "zero_point": int(zero_point),
        }
    return result


def edgetpu_report(model: bytes) -> dict:
    """The Edge TPU compiler's checkable rules: every tensor 8-bit (no float compute), static
    shapes, batch 1, and the ops it maps. `cpu_ops` would fall back to the CPU."""
    interpreter = _lite_interpreter(model)
    tensors = interpreter.get_tensor_details()
    float_tensors = [t["name"] for t in tensors if np.dtype(t["dtype"]) in (np.float32, np.float16)]
    dynamic = [t["name"] for t in tensors if any(v < 0 for v in t.get("shape_signature", t["shape"]))]
    details = io_details(model)
    op_names = operators(model)
    cpu_ops = [name for name in op_names if name not in EDGETPU_OPS]
    return {
        "ops": op_names,
        "cpu_ops": cpu_ops,
        "float_tensors": float_tensors,
        "dynamic_tensors": dynamic,
        "batch": details["input"]["shape"][0],
        "compatible": not cpu_ops and not float_tensors and not dynamic and details["input"]["shape"][0] == 1,
    }


def _capture_stderr(action) -> str:
    """Run `action()` and return what C++ code wrote to file descriptor 2 meanwhile."""
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            action()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        return sink.read().decode("utf-8", "replace")


def micro_interpreter(model: bytes):
    from tflite_micro import runtime

    return runtime.Interpreter.from_bytes(model)


def micro_invoke(interpreter, pixels: np.ndarray) -> np.ndarray:
    """Run the TFLM interpreter on one quantised input tensor; returns the raw output."""
    interpreter.set_input(pixels, 0)
    interpreter.invoke()
    return np.array(interpreter.get_output(0))


def measure_arena(model: bytes) -> int:
    """Bytes of tensor arena TFLM used for one inference (its recording allocator's total)."""
    interpreter = micro_interpreter(model)
    details = interpreter.get_input_details(0)
    micro_invoke(interpreter, np.zeros(details["shape"], details["dtype"]))
    report = _capture_stderr(interpreter.print_allocations)
    match = _ARENA_PATTERN.search(report)
    if not match:
        raise RuntimeError(f"TFLite Micro did not report its arena use: {report[:500]!r}")
    return int(match.group(1))


def c_bytes(data: bytes, per_line: int = 12) -> str:
    """`data` as the body of a C array initialiser: `per_line` bytes (0x..) a line, each line
    indented by four spaces and ending in a comma; the lines joined by newlines, no final one."""
    return "\n".join("    " + ", ".join(f"0x{byte:02x}" for byte in data[start:start + per_line]) + ","
                     for start in range(0, len(data), per_line))


def write_c_array(directory: pathlib.Path, model: bytes, arena_bytes: int, details: dict, op_names: list[str]) -> None:
    """model_data.h / model_data.cc (16-byte aligned model array and its facts) and main.cc."""
    directory.mkdir(parents=True, exist_ok=True)
    arena_reserve = (arena_bytes * 5 // 4 + 15) // 16 * 16  # 25% headroom: kernels differ by target
    input_detail, output_detail = details["input"], details["output"]
    shape = input_detail["shape"]
    calls = resolver_calls(op_names)
    header = f"""// Generated by `pilltrack export` from the int8 PillTrack student. Do not edit.
#ifndef PILLTRACK_MODEL_DATA_H_
#define PILLTRACK_MODEL_DATA_H_

#include <cstddef>
#include <cstdint>

extern const unsigned char g_pilltrack_model[];
extern const unsigned int g_pilltrack_model_len;

// Input: {'x'.join(map(str, shape))} {input_detail['dtype']} RGB pixels of the preprocessed pill crop.
constexpr int kPilltrackInputHeight = {shape[1]};
constexpr int kPilltrackInputWidth = {shape[2]};
constexpr int kPilltrackInputChannels = {shape[3]};
// Quantisation, written once: q = round(x / scale) + zero_point, x = pixel * (1 / 127.5) - 1.
constexpr float kPilltrackInputScale = {input_detail['scale']!r}f;
constexpr int kPilltrackInputZeroPoint = {input_detail['zero_point']};
// Output: {output_detail['shape'][-1]} {output_detail['dtype']} values; embedding = (q - zero_point) * scale, then L2-normalise.
constexpr int kPilltrackEmbeddingSize = {output_detail['shape'][-1]};
constexpr float kPilltrackOutputScale = {output_detail['scale']!r}f;
constexpr int kPilltrackOutputZeroPoint = {output_detail['zero_point']};
// Tensor arena to reserve: TFLM's measured use on the host ({arena_bytes} bytes) plus 25%.
constexpr size_t kPilltrackArenaSize = {arena_reserve};
// Builtin operators the model needs (MicroMutableOpResolver<kPilltrackOpCount>).
constexpr int kPilltrackOpCount = {len(calls)};

#endif  // PILLTRACK_MODEL_DATA_H_
"""
    source = f"""// Generated by `pilltrack export` from the int8 PillTrack student. Do not edit.
#include "model_data.h"

alignas(16) const unsigned char g_pilltrack_model[] = {{
{c_bytes(model)}
}};
const unsigned int g_pilltrack_model_len = {len(model)};
"""
    resolver = "\n".join(f"  if (resolver.{call}() != kTfLiteOk) return 1;" for call in calls)
    example = string.Template(EXAMPLE_MAIN.read_text(encoding="utf-8")).substitute(RESOLVER=resolver)
    write_atomically(directory / "model_data.h", header.encode())
    write_atomically(directory / "model_data.cc", source.encode())
    write_atomically(directory / "main.cc", example.encode())
