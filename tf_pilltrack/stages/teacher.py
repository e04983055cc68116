"""`pilltrack teacher`: train the teacher (tf_pilltrack.training.teacher) on the training classes,
write models/teacher.weights.h5 and its figures."""

from __future__ import annotations

import contextlib
import time
from typing import Callable

import numpy as np

from tf_pilltrack import params as params_module
from tf_pilltrack import paths
from tf_pilltrack import settings as settings_module
from tf_pilltrack.data import dataset
from tf_pilltrack.training import distribution, monitor, tracking
from tf_pilltrack.training.teacher import train

LOGGED = ("base", "profiles", "teacher", "augment", "data", "training")  # the params sections its MLflow run logs


def run(params: dict, echo: Callable[[str], None] = print) -> dict:
    started = time.time()
    every = settings_module.from_params(params)
    settings = every.teacher
    loaded = distribution.load_training_set(every.training.input)
    classes = dataset.batch_classes(settings.classes_per_batch, np.concatenate([loaded.train_labels, loaded.mix_labels]))
    echo(f"teacher: {len(loaded.train_labels)} training crops of {len(set(loaded.train_labels))} classes"
         + (f" + {len(loaded.mix_labels)} crops of {len(set(loaded.mix_labels))} mix classes ({every.data.mix_source})"
            if len(loaded.mix_labels) else "") + "; "
         f"{settings.loss} loss, {settings.epochs} epochs x {settings.steps_per_epoch} steps of "
         f"{classes} classes x {settings.examples_per_class} crops"
         + (f" (fewer training classes than teacher.classes_per_batch {settings.classes_per_batch})"
            if classes < settings.classes_per_batch else ""))
    chief = distribution.is_chief()
    run_params = params_module.run_params(params, LOGGED)
    with tracking.stage_run("teacher", run_params) if chief else contextlib.nullcontext() as mlflow:
        model, history = train(every.profile, settings, every.training, every.augment, every.data, every.base.seed,
                               loaded.train, loaded.references, loaded.queries,
                               callbacks=[tracking.epoch_logger("teacher_")] if chief else [], mix=loaded.mix)
        distribution.save_weights(model, paths.TEACHER_WEIGHTS, optimizer_state=False)  # kept in git: layers only
        if not chief:  # the chief writes the model and the figures
            echo("teacher: trained as a worker; the chief writes the model")
            return {}
        images = settings.epochs * settings.steps_per_epoch * classes * settings.examples_per_class
        summary = monitor.record_training("teacher", history, model, images, started, mlflow, paths.TEACHER_WEIGHTS)
    echo(f"teacher: calibration-class Recall@1 {summary['calibration_recall_at_1']:.3f}, "
         f"{summary['images_per_second']} images/s, {summary['seconds']} s")
    return summary
