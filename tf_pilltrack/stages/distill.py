"""`pilltrack distill`: distil the teacher into the quantization-aware student
(tf_pilltrack.training.distiller), write models/student_*.weights.h5 and their figures."""

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
from tf_pilltrack.training.distiller import train

LOGGED = ("base", "profiles", "teacher", "distill", "augment", "data", "training")  # what its MLflow run logs


def run(params: dict, echo: Callable[[str], None] = print) -> dict:
    started = time.time()
    every = settings_module.from_params(params)
    settings = every.distill
    loaded = distribution.load_training_set(every.training.input)
    echo(f"distill: {settings.float_epochs} float + {settings.qat_epochs} quantization-aware epochs "
         f"x {settings.steps_per_epoch} steps on {len(loaded.train_labels)} crops"
         + (f" + {len(loaded.mix_labels)} mix crops" if len(loaded.mix_labels) else ""))
    chief = distribution.is_chief()
    run_params = params_module.run_params(params, LOGGED)
    with tracking.stage_run("distill", run_params) if chief else contextlib.nullcontext() as mlflow:
        student, qat_student, history = train(
            every.profile, every.teacher, settings, every.training, every.augment, every.data, every.base.seed,
            loaded.train, loaded.references, loaded.queries,
            callbacks=[tracking.epoch_logger("distill_")] if chief else [], mix=loaded.mix)
        for model, path in ((student, paths.STUDENT_FLOAT_WEIGHTS), (qat_student, paths.STUDENT_QAT_WEIGHTS)):
            distribution.save_weights(model, path)
        if not chief:  # the chief writes the models and the figures
            echo("distill: trained as a worker; the chief writes the models")
            return {}
        epochs = settings.float_epochs + settings.qat_epochs
        classes = dataset.batch_classes(settings.classes_per_batch,
                                        np.concatenate([loaded.train_labels, loaded.mix_labels]))
        images = epochs * settings.steps_per_epoch * classes * settings.examples_per_class
        summary = monitor.record_training("distill", history, student, images, started, mlflow,
                                           paths.STUDENT_QAT_WEIGHTS)
    echo(f"distill: calibration-class Recall@1 {summary['calibration_recall_at_1']:.3f} (quantization-aware "
         f"student), {summary['images_per_second']} images/s, {summary['seconds']} s")
    return summary
