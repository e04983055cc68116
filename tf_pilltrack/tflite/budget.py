"""The shipped int8 model against its profile's budgets: the measures of stages `check` and
`reference` (tf_pilltrack/stages/check.py, reference.py).

Measured here, in one run: int8 file size; TFLite Micro arena (the real TFLM interpreter);
invoke latency under LiteRT with one thread and under TFLM, median and spread over repeated
invocations, and the same for a fixed reference model (MobileNetV2 1.0 at 224 px, untrained,
converted to int8 the same way; stage `reference`), because absolute times on a shared machine
are noisy while the ratio to a model measured alongside is not; and the novel-class Recall@1
of the int8 model from the evaluation; and the Cortex-M firmware's flash and RAM as stage
`firmware` measured them (metrics/firmware.json; a firmware not built is listed as not judged,
with why). Exit status 1 when any figure breaks its budget.
"""

from __future__ import annotations

import json

import numpy as np

from tf_pilltrack import paths
from tf_pilltrack.scoring.results import model_figures
from tf_pilltrack.settings import Budget
from tf_pilltrack.tflite import micro
from tf_pilltrack.tflite.timing import REPEATS, time_invocations


class BudgetExceeded(RuntimeError):
    """At least one measured figure is over its budget."""


def litert_latency(model_path, threads: int = 1) -> dict:
    from edge_runtime.interpreter import make_interpreter

    interpreter = make_interpreter(model_path, threads=threads)
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.full(detail["shape"], 128, detail["dtype"]))
    return time_invocations(interpreter.invoke)


def micro_latency(model: bytes) -> dict:
    interpreter = micro.micro_interpreter(model)
    detail = interpreter.get_input_details(0)
    pixels = np.full(detail["shape"], 128, detail["dtype"])

    def invoke():
        interpreter.set_input(pixels, 0)
        interpreter.invoke()

    return time_invocations(invoke, repeats=max(20, REPEATS // 10))


def measure() -> dict:
    model = paths.STUDENT_QAT_TFLITE.read_bytes()
    export = json.loads((paths.REPORTS / "export.json").read_text())
    evaluation = json.loads((paths.METRICS / "evaluation.json").read_text())
    firmware = json.loads((paths.METRICS / "firmware.json").read_text())
    student = litert_latency(paths.STUDENT_QAT_TFLITE)
    reference = litert_latency(paths.REFERENCE_TFLITE)
    return {
        # stage `firmware`'s measured image; None when it was not built (firmware.required false)
        "firmware_flash_bytes": firmware["flash_bytes"] if firmware["built"] else None,
        "firmware_ram_bytes": firmware["ram_bytes"] if firmware["built"] else None,
        "firmware_missing": [] if firmware["built"] else firmware["missing"],
        "model_bytes": len(model),
        "arena_bytes": export["qat"]["micro_arena_bytes"],
        "invoke_ms": student["median_ms"],
        "reference_ratio": student["median_ms"] / reference["median_ms"],
        "recall_at_1": model_figures(evaluation, "student_int8")["recall_at_1"],
        "latency": {"student_litert_1_thread": student, "reference_litert_1_thread": reference,
                    "student_tflite_micro": micro_latency(model)},
        "reference_bytes": paths.REFERENCE_TFLITE.stat().st_size,
    }


# (row name, measured key, budget key in params.yaml); max_ budgets are ceilings, min_ floors.
_BUDGET_ROWS = (
    ("int8 model size (bytes)", "model_bytes", "max_model_bytes"),
    ("TFLite Micro arena (bytes)", "arena_bytes", "max_arena_bytes"),
    ("LiteRT invoke, 1 thread (ms, median)", "invoke_ms", "max_invoke_ms"),
    ("invoke time / reference model", "reference_ratio", "max_reference_ratio"),
    ("novel-class Recall@1 (int8)", "recall_at_1", "min_recall_at_1"),
    ("Cortex-M firmware flash (bytes)", "firmware_flash_bytes", "max_firmware_flash_bytes"),
    ("Cortex-M firmware RAM (bytes)", "firmware_ram_bytes", "max_firmware_ram_bytes"),
)


def compare(measured: dict, budget: Budget) -> list[dict]:
    """One row per budget with a limit and a measured figure: name, measured, limit, passed. A
    null limit (no limit for this profile) or a figure not measured (None: the firmware was not
    built) gives no row; `not_judged` lists those."""
    rows = []
    for name, key, budget_key in _BUDGET_ROWS:
        value, limit = measured[key], getattr(budget, budget_key)
        if value is None or limit is None:
            continue
        passed = value <= limit if budget_key.startswith("max_") else value >= limit
        rows.append({"budget": name, "measured": value, "limit": limit, "passed": passed})
    return rows


def not_judged(measured: dict, budget: Budget) -> list[dict]:
    """The budgets `compare` leaves out, each with why."""
    rows = []
    for name, key, budget_key in _BUDGET_ROWS:
        if getattr(budget, budget_key) is None:
            rows.append({"budget": name, "reason": f"no limit: {budget_key} is null for this profile"})
        elif measured[key] is None:
            rows.append({"budget": name, "reason": "not measured: the firmware was not built (missing: "
                                                   + "; ".join(measured["firmware_missing"]) + ")"})
    return rows
