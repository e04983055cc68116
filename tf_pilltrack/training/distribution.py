"""How the teacher and the distiller run (params.yaml `training`): in one process, on every GPU of
one host, or across hosts, with TensorFlow's own engine (`tf.distribute`), and which input feeds them.

- `none`: TensorFlow's default strategy, one process: today's path.
- `mirrored`: `tf.distribute.MirroredStrategy`, one replica per GPU of this host (one on a CPU).
- `multi_worker`: `tf.distribute.MultiWorkerMirroredStrategy`, one process per host, each started
  with its TF_CONFIG (the cluster's workers, this process's index). Variables are mirrored and
  gradients all-reduced every step, so every worker holds the same weights.

Distributed runs need `training.input: stream` (tf_pilltrack.data.shards: each worker reads its share of
every global batch from the shard files; TF-Similarity's memory samplers cannot be split) and keep
their training state each epoch in `training.backup`/<stage> (Keras' BackupAndRestore): a worker
started again after a crash resumes from the last finished epoch. Only the chief (TF_CONFIG's
`chief` task, else worker 0) writes models, metrics and MLflow runs; the others write nothing.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from dataclasses import dataclass

import h5py
import numpy as np
import tensorflow as tf
import tf_keras

from edge_runtime.storage import atomic_path
from tf_pilltrack import paths
from tf_pilltrack.data import dataset, sampling, shards
from tf_pilltrack.settings import Augment, Data, Distill, Teacher, Training


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy named by `training.distribution` (`name`); multi_worker reads TF_CONFIG (an error names it)."""
    config = _tf_config()
    tasks = sum(len(addresses) for addresses in config.get("cluster", {}).values())
    if name != "multi_worker" and tasks > 1:  # each process would train alone, the chief's model the only one kept
        raise ValueError(f"TF_CONFIG names a cluster of {tasks} tasks and training.distribution is {name}: "
                         "set it to multi_worker (params.yaml) to train across them")
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if not config:
        raise ValueError("training.distribution is multi_worker and TF_CONFIG is not set: give each process "
                         "the cluster and its task (see docs/pipeline.md, Training on several GPUs or machines)")
    _configure_coordination()
    return tf.distribute.MultiWorkerMirroredStrategy()


# How long a worker may go without a heartbeat before the cluster counts it as failed. TensorFlow's
# 10 s default failed a two-worker test run on a loaded 2-core machine (one run in about seven);
# a killed worker is then noticed up to this late.
HEARTBEAT_TIMEOUT_S = 60


def _configure_coordination() -> None:
    """TensorFlow's coordination service as MultiWorkerMirroredStrategy configures it (which it
    skips when one is configured already), with HEARTBEAT_TIMEOUT_S. No public API sets it."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.distribute.cluster_resolver import TFConfigClusterResolver
    from tensorflow.python.eager import context

    if context.context().coordination_service is not None:
        return
    cluster = TFConfigClusterResolver().cluster_spec()
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster.num_tasks(job))
            for job in ("chief", "worker") if job in cluster.jobs]
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(cluster),
        coordinated_jobs=jobs, heartbeat_timeout_in_ms=HEARTBEAT_TIMEOUT_S * 1000)


def _tf_config() -> dict:
    """TF_CONFIG as a dict ({} when unset); not JSON is an error that says so."""
    try:
        return json.loads(os.environ.get("TF_CONFIG") or "{}")
    except ValueError as error:
        raise ValueError(f"TF_CONFIG is not JSON ({error})") from None


def is_chief() -> bool:
    """Whether this process writes the run's outputs: always in one process; under TF_CONFIG,
    the `chief` task, or worker 0 when the cluster has no chief."""
    config = _tf_config()
    task = config.get("task") or {}
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and "chief" not in config.get("cluster", {})


def training_input(training: Training, batches: Teacher | Distill, augment: Augment, data: Data, seed: int,
                   train: dataset.Split | None = None, mix: dataset.Split | None = None):
    """What `fit` trains on with the batches of the `teacher` or `distill` section (`batches`:
    classes_per_batch, examples_per_class, steps_per_epoch): the memory sampler of the `train` and
    `mix` splits, or for `training.input: stream` the shard files `prepare` wrote (paths.SHARDS; the
    splits are not needed) read by tf.data (a DatasetCreator under a distribution strategy, so that
    each worker builds its own share of each batch), both augmented as `augment` says and mixed as
    `data` says (mix_ratio, reference_share); `seed` is base.seed."""
    if training.input == "memory":
        mix = mix if mix is not None else dataset.empty_split(train.pixels.shape[1])
        return sampling.make_sampler(batches.classes_per_batch, batches.examples_per_class, batches.steps_per_epoch,
                                     augment, train, mix, data.mix_ratio, data.reference_share)
    shards.read_index(paths.SHARDS)  # there, or an error saying how it is made

    def make(context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
        pipelines, pipeline = (context.num_input_pipelines, context.input_pipeline_id) if context else (1, 0)
        return shards.make_dataset(paths.SHARDS, batches.classes_per_batch, batches.examples_per_class, augment,
                                   data.mix_ratio, data.reference_share, seed, pipelines, pipeline)

    if training.distribution == "none":
        return make()
    return tf_keras.utils.experimental.DatasetCreator(make)


@dataclass(frozen=True)
class TrainingSet:
    """What a training stage trains and monitors on: the `train` and `mix` splits (both None for the
    stream input, whose shard files hold the photos), their labels, and the calibration splits
    (calibration_references, calibration_queries) of the open-set monitor."""
    train: dataset.Split | None
    mix: dataset.Split | None
    train_labels: np.ndarray
    mix_labels: np.ndarray
    references: dataset.Split
    queries: dataset.Split


def load_training_set(data_input: str) -> TrainingSet:
    """Load what a training stage needs for `training.input` (`data_input`): the `train` and `mix`
    splits in RAM for the memory input, only their labels for the stream input; and the
    calibration splits."""
    if data_input == "memory":
        train, mix = dataset.load_split("train"), dataset.load_split("mix")
        train_labels, mix_labels = train.labels, mix.labels
    else:
        train, mix, train_labels, mix_labels = None, None, dataset.load_labels("train"), dataset.load_labels("mix")
    return TrainingSet(train, mix, train_labels, mix_labels, dataset.load_split("calibration_references"),
                       dataset.load_split("calibration_queries"))


def fit_options(training: Training, steps_per_epoch: int, stage: str) -> tuple[list, dict]:
    """`fit`'s extra callbacks and arguments: under distribution the BackupAndRestore callback of
    this stage (`training.backup`/<stage>); for a tf.data input the steps of an epoch
    (`steps_per_epoch`; the input never ends)."""
    callbacks = ([tf_keras.callbacks.BackupAndRestore(str(pathlib.Path(training.backup) / stage))]
                 if training.distribution != "none" else [])
    return callbacks, ({"steps_per_epoch": steps_per_epoch} if training.input == "stream" else {})


def save_weights(model, path: pathlib.Path, optimizer_state: bool = True) -> None:
    """The chief writes `model`'s weights to `path` (h5, atomically, its folder made); every other
    worker saves them to a scratch file it deletes, since reading a replicated variable (BatchNorm's
    statistics) is a collective that every worker must join. Without `optimizer_state` the file
    holds the layers' weights alone, not the optimizer's moments (twice the weights again, for
    Adam), which only resuming training would need."""
    if is_chief():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            if optimizer_state:
                model.save_weights(temporary, save_format="h5")
            else:
                with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
                    full = os.path.join(scratch, path.name)
                    model.save_weights(full, save_format="h5")
                    copy_without_optimizer(full, temporary)
        return
    with tempfile.TemporaryDirectory() as scratch:
        model.save_weights(os.path.join(scratch, path.name), save_format="h5")


def copy_without_optimizer(source: str, target: str) -> None:
    """Copy the weights file `source` (tf_keras' .weights.h5 layout) to `target`, less its
    `optimizer` group. The copy is the same bytes for the same weights (no timestamps)."""
    with h5py.File(source, "r") as read, h5py.File(target, "w") as written:
        for key, value in read.attrs.items():
            written.attrs[key] = value
        for name in read:
            if name != "optimizer":
                read.copy(read[name], written, name)


