"""What both training stages share: the open-set monitor (Recall@1 on held-out classes every
epoch) and the training record (per-epoch history, summary metrics, MLflow)."""

from __future__ import annotations

import json
import time

import tf_keras

from edge_runtime.storage import write_atomically
from tf_pilltrack import paths
from tf_pilltrack.data import dataset
from tf_pilltrack.scoring import metrics
from tf_pilltrack.training import models


class OpenSetMonitor(tf_keras.callbacks.Callback):
    """Adds `calibration_recall_at_1` (held-out classes, gallery = their reference shots) to the
    epoch's logs, so the history, the progress line and MLflow all carry it."""

    def __init__(self, references: dataset.Split, queries: dataset.Split, model_to_embed=None):
        super().__init__()
        self.references = references
        self.queries = queries
        self.model_to_embed = model_to_embed

    def on_epoch_end(self, epoch, logs=None):
        model = self.model_to_embed or self.model
        gallery = models.embed(model, self.references.pixels)
        queries = models.embed(model, self.queries.pixels)
        scores = metrics.evaluate_embeddings(queries, self.queries.labels, gallery, self.references.labels)
        if logs is not None:
            logs["calibration_recall_at_1"] = scores["recall_at_1"]


def write_history(history: dict, path) -> None:
    """Per-epoch metrics as CSV, for `dvc plots`."""
    names = sorted(history)
    rows = ["epoch," + ",".join(names)]
    for epoch in range(len(history[names[0]]) if names else 0):
        rows.append(f"{epoch}," + ",".join(f"{float(history[name][epoch]):.6f}" for name in names))
    write_atomically(path, ("\n".join(rows) + "\n").encode())


def record_training(stage: str, history: dict, model, images: int, started: float, mlflow, artefact) -> dict:
    """A training stage's summary: reports/<stage>_history.csv (per epoch), metrics/<stage>.json
    and the same figures and the weights file in the stage's MLflow run."""
    seconds = time.time() - started
    summary = {
        "calibration_recall_at_1": float(history["calibration_recall_at_1"][-1]),
        "final_loss": float(history["loss"][-1]),
        "seconds": round(seconds, 1),
        "images_per_second": round(images / seconds, 1),
        "parameters": int(model.count_params()),
    }
    paths.REPORTS.mkdir(parents=True, exist_ok=True)
    write_history(history, paths.REPORTS / f"{stage}_history.csv")
    paths.METRICS.mkdir(exist_ok=True)
    write_atomically(paths.METRICS / f"{stage}.json", json.dumps(summary, indent=2).encode())
    mlflow.log_metrics({f"{stage}_{key}": value for key, value in summary.items()})
    mlflow.log_artifact(str(artefact))
    return summary
