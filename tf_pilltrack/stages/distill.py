"""`pilltrack distill`: distil the teacher into the quantization-aware student
(tf_pilltrack.training.distiller), write models/student_*.weights.h5 and their figures."""

from __future__ import annotations

import contextlib
import time
from typing import Callable

import numpy as np

from tf_pilltrack import paths
from tf_pilltrack.data import dataset
from tf_pilltrack.training import distribution, monitor, tracking
from tf_pilltrack.training.distiller import train

SECTIONS = ("profiles", "teacher", "distill", "augment", "data", "training")


def run(params: dict, echo: Callable[[str], None] = print) -> dict:
    started = time.time()
    train_split, mix, train_labels, mix_labels = distribution.load_training_set(params)
    references = dataset.load_split("calibration_references")
    queries = dataset.load_split("calibration_queries")
    settings = params["distill"]
    echo(f"distill: {settings['float_epochs']} float + {settings['qat_epochs']} quantization-aware epochs "
         f"x {settings['steps_per_epoch']} steps on {len(train_labels)} crops"
         + (f" + {len(mix_labels)} mix crops" if len(mix_labels) else ""))
    chief = distribution.is_chief()
    with tracking.stage_run("distill", params, SECTIONS) if chief else contextlib.nullcontext() as mlflow:
        student, qat_student, history = train(params, train_split, references, queries,
                                              callbacks=[tracking.epoch_logger("distill_")] if chief else [], mix=mix)
        for model, path in ((student, paths.STUDENT_FLOAT_WEIGHTS), (qat_student, paths.STUDENT_QAT_WEIGHTS)):
            distribution.save_weights(model, path)
        if not chief:  # the chief writes the models and the figures
            echo("distill: trained as a worker; the chief writes the models")
            return {}
        epochs = settings["float_epochs"] + settings["qat_epochs"]
        classes = dataset.batch_classes(settings["classes_per_batch"], np.concatenate([train_labels, mix_labels]))
        images = epochs * settings["steps_per_epoch"] * classes * settings["examples_per_class"]
        summary = monitor.record_training("distill", history, student, images, started, mlflow,
                                           paths.STUDENT_QAT_WEIGHTS)
    echo(f"distill: calibration-class Recall@1 {summary['calibration_recall_at_1']:.3f} (quantization-aware "
         f"student), {summary['images_per_second']} images/s, {summary['seconds']} s")
    return summary
