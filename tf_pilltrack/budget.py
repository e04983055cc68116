"""Stage `check`: the shipped int8 model against its profile's budgets.

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
from typing import Callable

import numpy as np

from edge_runtime.storage import write_atomically
from tf_pilltrack import micro, paths
from tf_pilltrack import params as params_module
from tf_pilltrack.timing import REPEATS, time_invocations



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


def measure(params: dict) -> dict:
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
        "recall_at_1": evaluation["student_int8"]["recall_at_1"],
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


def compare(measured: dict, budget: dict) -> list[dict]:
    """One row per budget with a limit and a measured figure: name, measured, limit, passed. A
    null limit (no limit for this profile) or a figure not measured (None: the firmware was not
    built) gives no row; `not_judged` lists those."""
    rows = []
    for name, key, budget_key in _BUDGET_ROWS:
        value, limit = measured[key], budget[budget_key]
        if value is None or limit is None:
            continue
        passed = value <= limit if budget_key.startswith("max_") else value >= limit
        rows.append({"budget": name, "measured": value, "limit": limit, "passed": passed})
    return rows


def not_judged(measured: dict, budget: dict) -> list[dict]:
    """The budgets `compare` leaves out, each with why."""
    rows = []
    for name, key, budget_key in _BUDGET_ROWS:
        if budget[budget_key] is None:
            rows.append({"budget": name, "reason": f"no limit: {budget_key} is null for this profile"})
        elif measured[key] is None:
            rows.append({"budget": name, "reason": "not measured: the firmware was not built (missing: "
                                                   + "; ".join(measured["firmware_missing"]) + ")"})
    return rows


def run_reference(params: dict, echo: Callable[[str], None] = print) -> dict:
    """Stage `reference`: convert the reference model once."""
    from tf_pilltrack import conversion  # TensorFlow: only this command of the stage needs it

    model = conversion.build_reference(params["export"]["calibration_images"] // 8 or 1, params["base"]["seed"])
    paths.MODELS.mkdir(exist_ok=True)
    write_atomically(paths.REFERENCE_TFLITE, model)
    echo(f"reference: {paths.REFERENCE_TFLITE} {len(model) / 1024:.0f} KiB")
    return {"bytes": len(model)}


def run(params: dict, echo: Callable[[str], None] = print) -> dict:
    profile = params["base"]["profile"]
    measured = measure(params)
    rows = compare(measured, params_module.budget(params))
    skipped = not_judged(measured, params_module.budget(params))
    report = {"profile": profile, "measured": measured, "budgets": rows, "not_judged": skipped,
              "passed": all(row["passed"] for row in rows)}
    paths.REPORTS.mkdir(exist_ok=True)
    write_atomically(paths.REPORTS / "budget.json", json.dumps(report, indent=2).encode())
    echo(f"\nBudgets of profile {profile!r}:")
    echo(f"{'budget':<40} {'measured':>12} {'limit':>12}  result")
    for row in rows:
        echo(f"{row['budget']:<40} {row['measured']:>12.4g} {row['limit']:>12.4g}  {'ok' if row['passed'] else 'OVER BUDGET'}")
    for row in skipped:
        echo(f"{row['budget']:<40} {'-':>12} {'-':>12}  {row['reason']}")
    latency = measured["latency"]
    echo(f"latency medians: student LiteRT {latency['student_litert_1_thread']['median_ms']:.3f} ms "
         f"(p95 {latency['student_litert_1_thread']['p95_ms']:.3f}), reference {latency['reference_litert_1_thread']['median_ms']:.2f} ms, "
         f"student TFLM {latency['student_tflite_micro']['median_ms']:.2f} ms; reference size {measured['reference_bytes'] / 1024:.0f} KiB")
    if not report["passed"]:
        raise BudgetExceeded(f"profile {profile!r} is over budget: "
                             + ", ".join(row["budget"] for row in rows if not row["passed"]))
    return report
