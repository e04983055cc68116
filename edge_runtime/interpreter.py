"""The TFLite interpreter: make one, and turn pixel crops into L2-normalised embeddings.

The interpreter comes from LiteRT (`ai_edge_litert`) where it is installed, otherwise from
`tflite_runtime`; TensorFlow itself is never imported.

Model input, written out once. A crop's uint8 pixels become the models' float range

    x = pixel * PIXEL_SCALE + PIXEL_OFFSET                       (preprocessing.normalise)

and a quantised (uint8 or int8) input takes

    q = clip(round(x / scale) + zero_point, dtype min, dtype max)

with the input tensor's scale and zero point, rounding halves away from zero as TFLite's own
quantize kernel does. One exception: a uint8 input whose scale is PIXEL_SCALE and whose zero
point is within half a step of -PIXEL_OFFSET / PIXEL_SCALE (127.5; the converter picks 128) takes
the pixels themselves. The formula would put every pixel on a tie (q = pixel + 0.5) and round it
up, while a firmware passes the camera's pixels unchanged (models/micro/main.cc); both are
within half a step of x, and taking the pixels keeps this client and the firmware identical. A quantised output is dequantised as (q - zero_point) * scale; the
embedding is then divided by its L2 norm.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Callable

import numpy as np

from edge_runtime import limits, storage
from edge_runtime.preprocessing import PIXEL_OFFSET, PIXEL_SCALE, normalise, shown_error, symmetric_views
from edge_runtime.quiet import native_stderr_silenced

EDGETPU_LIBRARY = "libedgetpu.so.1"


class ModelError(ValueError):
    """A model file the interpreter cannot use; the message names the file and the reason."""


def _runtime():
    """(Interpreter class, load_delegate, name) of the first TFLite runtime installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter, load_delegate

        return Interpreter, load_delegate, "ai_edge_litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter, load_delegate

        return Interpreter, load_delegate, "tflite_runtime"
    except ImportError:
        raise ImportError(
            "no TFLite runtime: install ai-edge-litert (pip install 'pilltrack[edge]') "
            "or tflite-runtime (pip install 'pilltrack[edge-tflite]')"
        ) from None


def runtime_name() -> str:
    """Which library runs the models: "ai_edge_litert" or "tflite_runtime"."""
    return _runtime()[2]


def make_interpreter(model_path: str | os.PathLike, threads: int, edgetpu: bool = False):
    """An interpreter for the model at `model_path` with its tensors allocated.

    `threads` is always passed to the runtime. With `edgetpu`, the Edge TPU delegate is
    loaded; where its library or the device is missing, one warning line goes to stderr and the
    model runs on the CPU. Raises ModelError when the model cannot be loaded. The runtime's own
    output (the delegate banner) is kept off stderr (`quiet`).
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= limits.MAX_THREADS:
        raise ValueError(f"threads must be an integer within [1, {limits.MAX_THREADS}], got {limits.shown(threads)}")
    interpreter_class, load_delegate, _ = _runtime()
    delegates = []
    if edgetpu:
        try:
            # Probing with ctypes first spares a missing library the runtime's noisy failure.
            ctypes.CDLL(EDGETPU_LIBRARY)
            with native_stderr_silenced():
                delegates.append(load_delegate(EDGETPU_LIBRARY))
        except (OSError, ValueError, RuntimeError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            print(
                f"warning: Edge TPU unavailable ({reason}); running on the CPU "
                f"with {threads} threads",
                file=sys.stderr,
            )
    source = os.fspath(model_path)
    try:
        problem = storage.not_regular(os.stat(source).st_mode)
    except OSError as error:
        raise ModelError(f"{source}: cannot be read ({error.strerror or error})") from None
    if problem:  # the runtime would block on a FIFO
        raise ModelError(f"{source}: {problem}")
    try:
        with native_stderr_silenced():
            interpreter = interpreter_class(
                model_path=source, experimental_delegates=delegates or None, num_threads=threads
            )
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError, OSError) as error:
        raise ModelError(f"{source}: cannot be loaded as a TFLite model ({shown_error(error)})") from None
    return interpreter


def input_size(interpreter) -> int:
    """Side of the model's square input in pixels; the input must be (1, S, S, 3)."""
    shape = tuple(interpreter.get_input_details()[0]["shape"])
    if len(shape) != 4 or shape[0] != 1 or shape[1] != shape[2] or shape[3] != 3:
        raise ModelError(f"model input must be (1, S, S, 3), got {shape}")
    return int(shape[1])


def embedding_size(interpreter) -> int:
    """Dimension of the model's embedding; the output must be (1, E)."""
    shape = tuple(interpreter.get_output_details()[0]["shape"])
    if len(shape) != 2 or shape[0] != 1:
        raise ModelError(f"model output must be (1, E), got {shape}")
    return int(shape[1])


def takes_pixels(detail: dict) -> bool:
    """Whether a model input takes uint8 pixels as they are: uint8, scale PIXEL_SCALE and zero
    point within half a step of the pixel that normalises to 0 (see the module docstring)."""
    if np.dtype(detail["dtype"]) != np.uint8:
        return False
    scale, zero_point = detail["quantization"]
    return (scale > 0 and abs(scale / PIXEL_SCALE - 1.0) < 1e-4
            and abs(zero_point + PIXEL_OFFSET / PIXEL_SCALE) <= 0.5)


def quantise_input(pixels: np.ndarray, detail: dict) -> np.ndarray:
    """uint8 pixels -> the input tensor's dtype, by the formula in the module docstring."""
    x = normalise(pixels.astype(np.float32))
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return x.astype(np.float32)
    scale, zero_point = detail["quantization"]
    if dtype not in (np.uint8, np.int8) or scale == 0:
        raise ModelError(f"unsupported model input: {dtype.name} with scale {scale}")
    if takes_pixels(detail):
        return np.ascontiguousarray(pixels, dtype=np.uint8)
    scaled = x / scale
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
    limits = np.iinfo(dtype)
    return np.clip(rounded + zero_point, limits.min, limits.max).astype(dtype)


def dequantise_output(values: np.ndarray, detail: dict) -> np.ndarray:
    """The output tensor as float32: (q - zero_point) * scale for a quantised output."""
    if np.dtype(detail["dtype"]) == np.float32:
        return values.astype(np.float32)
    scale, zero_point = detail["quantization"]
    if scale == 0:
        raise ModelError(f"model output is {np.dtype(detail['dtype']).name} but not quantised")
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def l2_normalise(embeddings: np.ndarray) -> np.ndarray:
    """Divide each row by its L2 norm (an all-zero row stays zero)."""
    norms = np.linalg.norm(embeddings, axis=-1, keepdims=True)
    return (embeddings / np.maximum(norms, 1e-12)).astype(np.float32)


def embed(interpreter, pixels: np.ndarray, views: int) -> np.ndarray:
    """L2-normalised float32 embeddings (N, E) of uint8 crops, (S, S, 3) or (N, S, S, 3), each
    the mean of its `views` symmetric views' normalised embeddings (`symmetric_views`; the
    bundle's `preprocess.symmetry_views`).

    The models take one image at a time, so the interpreter runs once per crop and view."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 3:
        pixels = pixels[None]
    size = input_size(interpreter)
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
        raise ValueError(
            f"expected uint8 crops of shape ({size}, {size}, 3), "
            f"got {pixels.dtype} {pixels.shape}"
        )
    input_detail = interpreter.get_input_details()[0]
    output_detail = interpreter.get_output_details()[0]
    dimensions = embedding_size(interpreter)  # the details are looked up once: they cost as much as an invoke

    def embed_view(view: np.ndarray) -> np.ndarray:
        embeddings = np.empty((len(view), dimensions), np.float32)
        for row, crop in enumerate(view):
            interpreter.set_tensor(input_detail["index"], quantise_input(crop[None], input_detail))
            interpreter.invoke()
            output = interpreter.get_tensor(output_detail["index"])
            embeddings[row] = dequantise_output(output, output_detail)[0]
        return embeddings

    return embed_views(embed_view, pixels, views)


def embed_views(embed_view: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, views: int) -> np.ndarray:
    """The mean of `embed_view`'s L2-normalised embeddings (N, E) of each of the crops' `views`
    symmetric views (N, S, S, 3), normalised: how every model, TFLite or Keras, embeds a crop."""
    per_view = [l2_normalise(embed_view(view)) for view in symmetric_views(pixels, views)]
    return per_view[0] if views == 1 else l2_normalise(np.sum(per_view, axis=0))
