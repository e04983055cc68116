"""MLflow tracking, all in one place: one run per stage, tagged with the pipeline's git commit
and a pipeline id that groups the runs of one `dvc repro`; the int8 model into the registry.

The tracking URI comes from MLFLOW_TRACKING_URI; when it is unset, runs go to a local SQLite
store `mlruns/mlflow.db` in the project (gitignored), artefacts beside it in `mlruns/artifacts`.
It is set when a stage starts, never at import.

Every stage's run carries the tags `stage`, `profile`, `git_commit` (HEAD, or "unknown" outside a
git checkout or before the first commit) and `pipeline_id`, which is PILLTRACK_PIPELINE_ID when
that is set (CI can pass its own run id) and otherwise

    <commit, 12 hex digits>[+<digest of uncommitted code changes, 8>]-<digest of the params, 12>

e.g. `7092535966af-1f0c2b9d4e8a`. The stages of one `dvc repro` run from the same commit, code
and params.yaml, so their runs share it: `tags.pipeline_id = '...'` in the MLflow UI or
`mlflow.search_runs(filter_string=...)` lists them. The params digest is a SHA-256 of the
validated params (tf_pilltrack.params.digest: comments and key order in params.yaml do not count),
which the stage hands over in its `RunParams` (tf_pilltrack.params.run_params); the code digest is one of
`git diff HEAD` over the code and dvc.yaml (dvc.lock and the metrics files, which the stages
themselves rewrite, do not count), so two different uncommitted edits get different ids.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import subprocess
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

LOCAL_STORE = pathlib.Path("mlruns")
# What the code digest of `pipeline_id` covers: the pipeline's code and its definition.
CODE_PATHS = ("tf_pilltrack", "edge_runtime", "dvc.yaml", "pyproject.toml")


@dataclass(frozen=True)
class RunParams:
    """What a stage's MLflow run is filed under, tagged with and logs, read from the params by
    tf_pilltrack.params.run_params: the experiment (tracking.experiment), the `profile` tag (base.profile), the digest of
    the whole validated params (tf_pilltrack.params.digest, the end of the pipeline id) and the
    params sections the run logs, by name, as validated."""
    experiment: str
    profile: str
    params_digest: str
    sections: Mapping[str, Any]


def _flatten(values: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def _git(*arguments: str) -> bytes | None:
    """git's output, or None when git is missing or fails (no checkout, no commit yet)."""
    try:
        result = subprocess.run(["git", *arguments], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def _git_commit() -> str:
    return (_git("rev-parse", "HEAD") or b"").decode(errors="replace").strip() or "unknown"


def pipeline_id(params_digest: str) -> str:
    """The id that groups the runs of one `dvc repro` (see the module's docstring), of the params
    whose digest is `params_digest` (tf_pilltrack.params.digest)."""
    given = os.environ.get("PILLTRACK_PIPELINE_ID")
    if given:
        return given
    commit = _git_commit()
    identity = commit[:12] if commit != "unknown" else commit
    changes = _git("diff", "HEAD", "--no-ext-diff", "--binary", "--", *CODE_PATHS)
    if changes:
        identity += "+" + hashlib.sha256(changes).hexdigest()[:8]
    return f"{identity}-{params_digest}"


def _configure(experiment: str):
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    local = not uri  # decided before set_tracking_uri, which exports MLFLOW_TRACKING_URI itself
    if local:
        LOCAL_STORE.mkdir(exist_ok=True)
        uri = f"sqlite:///{(LOCAL_STORE / 'mlflow.db').resolve()}"
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        location = (LOCAL_STORE / "artifacts").resolve().as_uri() if local else None
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return mlflow


def _tags(stage: str, run_params: RunParams) -> dict[str, str]:
    return {
        "stage": stage,
        "git_commit": _git_commit(),
        "pipeline_id": pipeline_id(run_params.params_digest),
        "profile": run_params.profile,
    }


@contextlib.contextmanager
def stage_run(stage: str, run_params: RunParams) -> Iterator[object]:
    """An MLflow run for one pipeline stage in `run_params`' experiment, tagged as the module's
    docstring says, logging `run_params`' sections (the params sections the stage depends on).
    Yields the `mlflow` module for logging metrics and artefacts inside the run."""
    mlflow = _configure(run_params.experiment)
    with mlflow.start_run(run_name=stage, tags=_tags(stage, run_params)):
        mlflow.log_params(_flatten(dict(run_params.sections)))
        yield mlflow


def epoch_logger(prefix: str):
    """A Keras callback that logs every epoch's metrics to the active MLflow run. Its step counts
    epochs across every `fit` it is given to (distillation's float then quantization-aware
    phases make one history: 0, 1, ... rather than starting again at 0)."""
    import mlflow
    import tf_keras

    class EpochLogger(tf_keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.step = 0

        def on_epoch_end(self, epoch, logs=None):
            values = {f"{prefix}{key}": float(value) for key, value in (logs or {}).items()}
            if values:
                mlflow.log_metrics(values, step=self.step)
            self.step += 1

    return EpochLogger()


def register_model(path: str | os.PathLike, name: str, metrics: Mapping[str, float],
                   run_params: RunParams | None = None, artifact_path: str = "model"):
    """Log the model file at `path` (the int8 TFLite model) as an artefact under `artifact_path`
    and register it as a new version of the registered model `name` (created when missing),
    with `metrics` as the version's tags. Returns the `ModelVersion`.

    Inside a `stage_run` the file goes into that stage's run. Outside one, `run_params` is
    needed: the file goes into a run of its own, `register`, in its experiment, tagged and
    logging its sections like a stage's run."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file {path}")
    if not name.strip():
        raise ValueError("the registered model's name is empty")
    with contextlib.ExitStack() as stack:
        if mlflow.active_run() is None:
            if run_params is None:
                raise ValueError("register_model outside a stage_run needs the pipeline's run params")
            stack.enter_context(stage_run("register", run_params))
        run = mlflow.active_run()
        mlflow.log_artifact(str(path), artifact_path=artifact_path)
        client = mlflow.MlflowClient()
        try:
            client.get_registered_model(name)
        except MlflowException as error:
            if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise
            try:
                client.create_registered_model(name)
            except MlflowException as race:  # made meanwhile by another process
                if race.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
        return client.create_model_version(
            name, source=f"{run.info.artifact_uri}/{artifact_path}", run_id=run.info.run_id,
            tags={key: str(value) for key, value in metrics.items()})
