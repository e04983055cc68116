"""Reading back metrics/evaluation.json (stage `evaluate`, tf_pilltrack.scoring.evaluation.score_all):
the one place that knows its layout. Every reader of a result (the stages `evaluate`, `check` and
`summary`, `pilltrack bench`, the studies in benchmarks/) goes through these functions.

The layout: a model's fixed-split figures at the top level (`evaluation[model]`: recall_at_1,
recall_at_5, map_at_r, ...); the few-shot episodes under `episodes`, one run per data set
(`EPISODE_DATA`), each with one entry per K reference shots (`shots_key(K)`) holding each model's
figures per query kind (`"single"`, `"multi"`): mean and `<figure>_std` over the episodes.

A function given a missing step returns None (or an empty list), never raises: a run may lack a
data set (a profile without real photos) or a model (the episodes do not evaluate every model).
Nothing here writes; `score_all` writes the same layout, with `shots_key` for its K keys.
"""

from __future__ import annotations

import json
import pathlib

EPISODE_DATA = ("synthetic", "reference", "real")  # synthetic pills, composited reference pills, real photos
VIEWS = ("single", "multi")  # one photo per query; several photos of the same pill per query
_SHOTS_PREFIX = "shots_"


def read_evaluation(path: pathlib.Path) -> dict | None:
    """An evaluation.json as a dict, or None where the file is absent."""
    return json.loads(path.read_text()) if path.is_file() else None


def shots_key(shots: int) -> str:
    """The key of the K = `shots` entry of an episode run ("shots_5")."""
    return f"{_SHOTS_PREFIX}{shots}"


def model_figures(evaluation: dict | None, model: str) -> dict | None:
    """`model`'s fixed-split figures (novel synthetic classes: recall_at_1, recall_at_5, map_at_r, ...)."""
    figures = (evaluation or {}).get(model)
    return figures if isinstance(figures, dict) else None


def episode_runs(evaluation: dict | None) -> list[str]:
    """The data sets of `EPISODE_DATA` the evaluation has episodes of, in that order."""
    runs = (evaluation or {}).get("episodes")
    return [data for data in EPISODE_DATA if isinstance(runs, dict) and isinstance(runs.get(data), dict)]


def episode_run(evaluation: dict | None, data: str) -> dict | None:
    """The episode run of data set `data` (as `scoring.evaluation.run_episodes` returns it)."""
    runs = (evaluation or {}).get("episodes")
    run = runs.get(data) if isinstance(runs, dict) else None
    return run if isinstance(run, dict) else None


def shots_evaluated(run: dict | None) -> list[int]:
    """The K values (reference shots) an episode run has, ascending."""
    return sorted(int(key[len(_SHOTS_PREFIX):]) for key in (run or {}) if key.startswith(_SHOTS_PREFIX))


def shots_entry(run: dict | None, shots: int) -> dict | None:
    """The K = `shots` entry of an episode run: every model's figures, the class and query counts."""
    entry = (run or {}).get(shots_key(shots))
    return entry if isinstance(entry, dict) else None


def views_scored(run: dict | None, shots: int, model: str) -> list[str]:
    """The query kinds ("single", "multi") `model` has figures for at K = `shots`, as written."""
    per_views = (shots_entry(run, shots) or {}).get(model)
    return [views for views, figures in per_views.items() if isinstance(figures, dict)] if isinstance(per_views, dict) else []


def run_figures(run: dict | None, shots: int, model: str, views: str) -> dict | None:
    """`model`'s figures in an episode run at K = `shots` for `views` queries (mean and `_std`)."""
    per_views = (shots_entry(run, shots) or {}).get(model)
    figures = per_views.get(views) if isinstance(per_views, dict) else None
    return figures if isinstance(figures, dict) else None


def episode_figures(evaluation: dict | None, data: str, shots: int, model: str, views: str) -> dict | None:
    """`model`'s episode figures on data set `data` at K = `shots` for `views` queries."""
    return run_figures(episode_run(evaluation, data), shots, model, views)


def episode_figure(evaluation: dict | None, data: str, shots: int, model: str, views: str,
                   figure: str) -> float | None:
    """One number of `episode_figures` ("recall_at_1", "recall_at_1_std", ...), or None where absent
    or not a number."""
    value = (episode_figures(evaluation, data, shots, model, views) or {}).get(figure)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
