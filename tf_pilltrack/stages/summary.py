"""`pilltrack summary`: the headline figures of the last `dvc repro`, on one screen.

Not a dvc stage: it writes nothing, it reads `metrics/evaluation.json` (stage `evaluate`) and
`reports/budget.json` (stage `check`) and prints the figures the README's headline table gives,
for the int8 model through the device's rule. A figure the run did not measure (a profile
without real photos, a run stopped before `check`) is printed as "not measured" with the file
it would come from. The full tables stay one command away: `dvc metrics show`, and
docs/results.md for what each figure means.
"""

from __future__ import annotations

import json
import pathlib
from typing import Callable

from tf_pilltrack import paths
from tf_pilltrack.scoring.results import episode_figure

EVALUATION = paths.METRICS / "evaluation.json"
BUDGET = paths.REPORTS / "budget.json"


def _fraction(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.3f}"


def _spread(evaluation: dict | None, data: str, shots: int, model: str, views: str, figure: str) -> str:
    """An episode figure as "mean ± std" (the mean alone where no std is written)."""
    mean, std = (episode_figure(evaluation, data, shots, model, views, name) for name in (figure, f"{figure}_std"))
    if mean is None:
        return "not measured"
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def _share(value: float | None) -> str:
    return "not measured" if value is None else f"{100 * value:.1f}%"


def _kib(value: float | None) -> str:
    return "not measured" if value is None else f"{value / 1024:.0f} KiB"


def headline_rows(evaluation: dict | None, budget: dict | None, shots: list[int]) -> list[tuple[str, str]]:
    """(figure, value) rows: real photos, trust, novel pills, size and speed. The episodes' figures
    are those of the most reference shots in `shots` (params' episodes.shots), and Recall@1 of the
    fewest too."""
    most, fewest = max(shots), min(shots)

    def real(figure: str) -> float | None:  # the int8 model's, most shots, single view
        return episode_figure(evaluation, "real", most, "student_int8", "single", figure)

    rows = [
        (f"real {most}-shot Recall@1 (int8)", _spread(evaluation, "real", most, "student_int8", "single", "recall_at_1")),
        (f"real {most}-shot, two photos per query",
         _spread(evaluation, "real", most, "student_int8", "multi", "recall_at_1")),
        (f"real {fewest}-shot Recall@1 (int8)",
         _spread(evaluation, "real", fewest, "student_int8", "single", "recall_at_1")),
        ("named answers right (device rule)", _share(real("named_correct_bundle"))),
        ("absent pills' photos named", _share(real("absent_named_bundle"))),
        ("enrolled pills' photos named", _share(real("named_share_bundle"))),
        ("real FAR at 90% of correct kept", _fraction(real("false_accept_rate_episode"))),
        ("real AUROC known vs absent", _fraction(real("auroc_known_vs_absent"))),
    ]
    for name, data in (("novel reference types", "reference"), ("novel synthetic pills", "synthetic")):
        int8, teacher, baseline = (episode_figure(evaluation, data, most, model, "single", "recall_at_1")
                                   for model in ("student_int8", "teacher", "baseline_colour_shape"))
        value = _fraction(int8)
        if int8 is not None:
            value += f" (teacher {_fraction(teacher)}, colour/shape baseline {_fraction(baseline)})"
        rows.append((f"{name}, {most}-shot Recall@1 (int8)", value))
    measured = (budget or {}).get("measured", {})
    rows += [
        ("int8 model / TFLite Micro arena", f"{_kib(measured.get('model_bytes'))} / {_kib(measured.get('arena_bytes'))}"),
        ("LiteRT invoke, one thread", "not measured" if measured.get("invoke_ms") is None
         else f"{measured['invoke_ms']:.2f} ms median"),
        ("budgets", "not judged" if budget is None else ("all passed" if budget.get("passed") else "FAILED")),
    ]
    return rows


def _read(path: pathlib.Path, echo: Callable[[str], None]) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        echo(f"({path} is missing: run `dvc repro`)")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        echo(f"({path} is not readable JSON: {error})")
    return None


def run(params: dict, echo: Callable[[str], None] = print) -> None:
    """Print the headline figures of the profile params.yaml names."""
    evaluation, budget = _read(EVALUATION, echo), _read(BUDGET, echo)
    rows = headline_rows(evaluation, budget, params["episodes"]["shots"])
    width = max(len(name) for name, _ in rows)
    echo(f"PillTrack, profile {params['base']['profile']} ({EVALUATION}, {BUDGET}):")
    for name, value in rows:
        echo(f"  {name:<{width}}  {value}")
    echo("Every figure: `dvc metrics show`; what each means: docs/results.md.")
