"""`pilltrack check`: measure the shipped int8 model and compare it with its profile's budgets
(tf_pilltrack.tflite.budget), write reports/budget.json, print the table; exit status 1 when over."""

from __future__ import annotations

import json
from typing import Callable

from edge_runtime.storage import write_atomically
from tf_pilltrack import paths, settings
from tf_pilltrack.tflite.budget import BudgetExceeded, compare, measure, not_judged


def run(params: dict, echo: Callable[[str], None] = print) -> dict:
    every = settings.from_params(params)
    profile = every.base.profile
    measured = measure()
    rows = compare(measured, every.budget)
    skipped = not_judged(measured, every.budget)
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
