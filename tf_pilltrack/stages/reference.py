"""`pilltrack reference`: convert the reference model (MobileNetV2 1.0 at 224 px, int8) that the latency
budget compares with (paths.REFERENCE_TFLITE)."""

from __future__ import annotations

from typing import Callable

from edge_runtime.storage import write_atomically
from tf_pilltrack import paths, settings
from tf_pilltrack.tflite import conversion



def run(params: dict, echo: Callable[[str], None] = print) -> dict:
    """Convert the reference model once."""
    every = settings.from_params(params)
    model = conversion.build_reference(every.export.calibration_images // 8 or 1, every.base.seed)
    paths.MODELS.mkdir(exist_ok=True)
    write_atomically(paths.REFERENCE_TFLITE, model)
    echo(f"reference: {paths.REFERENCE_TFLITE} {len(model) / 1024:.0f} KiB")
    return {"bytes": len(model)}
