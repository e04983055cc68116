"""`pilltrack teacher`: train the teacher (tf_pilltrack.training.teacher) on the training classes,
write models/teacher.weights.h5 and its figures."""

from __future__ import annotations

import contextlib
import time
from typing import Callable

import numpy as np

from tf_pilltrack import paths
from tf_pilltrack.data import dataset
from tf_pilltrack.training import distribution, monitor, tracking
from tf_pilltrack.training.teacher import train

SECTIONS = ("profiles", "teacher", "augment", "data", "training")


def run(params: dict, echo: Callable[[str], None] = print) -> dict:
    started = time.time()
    train_split, mix, train_labels, mix_labels = distribution.load_training_set(params)
    references = dataset.load_split("calibration_references")
    queries = dataset.load_split("calibration_queries")
    settings = params["teacher"]
    classes = dataset.batch_classes(settings["classes_per_batch"], np.concatenate([train_labels, mix_labels]))
    echo(f"teacher: {len(train_labels)} training crops of {len(set(train_labels))} classes"
         + (f" + {len(mix_labels)} crops of {len(set(mix_labels))} mix classes ({params['data']['mix_source']})"
            if len(mix_labels) else "") + "; "
         f"{settings['loss']} loss, {settings['epochs']} epochs x {settings['steps_per_epoch']} steps of "
         f"{classes} classes x {settings['examples_per_class']} crops"
         + (f" (fewer training classes than teacher.classes_per_batch {settings['classes_per_batch']})"
            if classes < settings["classes_per_batch"] else ""))
    chief = distribution.is_chief()
    with tracking.stage_run("teacher", params, SECTIONS) if chief else contextlib.nullcontext() as mlflow:
        model, history = train(params, train_split, references, queries,
                               callbacks=[tracking.epoch_logger("teacher_")] if chief else [], mix=mix)
        distribution.save_weights(model, paths.TEACHER_WEIGHTS, optimizer_state=False)  # kept in git: layers only
        if not chief:  # the chief writes the model and the figures
            echo("teacher: trained as a worker; the chief writes the model")
            return {}
        images = settings["epochs"] * settings["steps_per_epoch"] * classes * settings["examples_per_class"]
        summary = monitor.record_training("teacher", history, model, images, started, mlflow, paths.TEACHER_WEIGHTS)
    echo(f"teacher: calibration-class Recall@1 {summary['calibration_recall_at_1']:.3f}, "
         f"{summary['images_per_second']} images/s, {summary['seconds']} s")
    return summary
