"""MLflow tracking, all in one place: one run per stage, tagged with the pipeline's git commit.

The tracking URI comes from MLFLOW_TRACKING_URI; when it is unset, runs go to a local SQLite
store `mlruns/mlflow.db` in the project (gitignored), artefacts beside it in `mlruns/artifacts`.
It is set when a stage starts, never at import.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
from typing import Iterator

LOCAL_STORE = pathlib.Path("mlruns")


def _flatten(values: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def _git_commit() -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"


def _configure(experiment: str):
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        LOCAL_STORE.mkdir(exist_ok=True)
        uri = f"sqlite:///{(LOCAL_STORE / 'mlflow.db').resolve()}"
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        location = None
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            location = (LOCAL_STORE / "artifacts").resolve().as_uri()
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return mlflow


@contextlib.contextmanager
def stage_run(stage: str, params: dict, sections: tuple[str, ...]) -> Iterator[object]:
    """An MLflow run for one pipeline stage, logging the params sections it depends on.
    Yields the `mlflow` module for logging metrics and artefacts inside the run."""
    mlflow = _configure(params["tracking"]["experiment"])
    tags = {
        "stage": stage,
        "git_commit": _git_commit(),
        "pipeline_id": os.environ.get("PILLTRACK_PIPELINE_ID", _git_commit()),
        "profile": params["base"]["profile"],
    }
    with mlflow.start_run(run_name=stage, tags=tags):
        logged = {"base": params["base"]}
        logged.update({section: params[section] for section in sections})
        mlflow.log_params(_flatten(logged))
        yield mlflow


def epoch_logger(prefix: str):
    """A Keras callback that logs every epoch's metrics to the active MLflow run."""
    import mlflow
    import tf_keras

    class EpochLogger(tf_keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            values = {f"{prefix}{key}": float(value) for key, value in (logs or {}).items()}
            if values:
                mlflow.log_metrics(values, step=epoch)

    return EpochLogger()
