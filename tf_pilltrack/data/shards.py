"""The streaming input of the teacher and the distiller (`training.input: stream`): the training
photos written once as one TFRecord file per pill, and class-balanced batches read from them with
tf.data, so that memory stays flat however many pills the training set holds.

The `prepare` stage writes the shard folder (paths.SHARDS, inside data/prepared) when
`training.input` is `stream`, so the training stages read the files and never load the split.
Layout: `index.json` (the image side and, per pill, its class name, file and photo count) and
`pill-00000.tfrecord`...: each record one photo, its uint8 pixels and its class id. Only the
`train` and `mix` splits are written: no calibration, novel or absent pill can reach a batch.
A folder is written in a staging folder and renamed into place (edge_runtime.storage.atomic_folder),
so a crash leaves the previous folder (or none), never a half-made one.

Batches are drawn as `sampling.make_sampler`'s are: `classes_per_batch` pills, `examples_per_class`
photos of each (without repeats while the pill has enough photos), the mix set's and the reference
pills' shares of classes by `sampling.mix_classes`. The draws are a numpy generator seeded by
`base.seed`, so every worker draws the same global batch; with N input pipelines (workers), pipeline
i takes the classes i, i + N, ... of each batch: the union of the workers' batches is the
single-process batch. Reading a batch opens its pills' files only: a file holds one pill's photos.
"""

from __future__ import annotations

import json
import pathlib
from typing import Iterator

import numpy as np
import tensorflow as tf

from edge_runtime.preprocessing import normalise
from edge_runtime.storage import atomic_folder
from tf_pilltrack.data import dataset, sampling
from tf_pilltrack.data.augmentation import augment
from tf_pilltrack.settings import Augment

INDEX = "index.json"
STREAM = 0x5354_524D  # "STRM": the batch draws use default_rng([seed, STREAM])


def _example(pixels: np.ndarray, label: int) -> bytes:
    feature = {"pixels": tf.train.Feature(bytes_list=tf.train.BytesList(value=[pixels.tobytes()])),
               "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_shards(train: dataset.Split, mix: dataset.Split, folder: pathlib.Path) -> pathlib.Path:
    """Write the shard folder `folder` of these training splits (replacing one there): one
    TFRecord file per pill of `train` and `mix` (mix pills named sampling.MIX_PREFIX + name, as
    the memory sampler names them), in class-id order (sorted names). Returns `folder`."""
    labels = np.concatenate([train.labels.astype(str), np.char.add(sampling.MIX_PREFIX, mix.labels.astype(str))])
    pixels = [train.pixels, mix.pixels]
    offsets = len(train)
    targets, names = dataset.label_indices(labels)
    with atomic_folder(folder) as staging:
        pills = []
        for class_id, name in enumerate(names):
            rows = np.flatnonzero(targets == class_id)
            file = f"pill-{class_id:05d}.tfrecord"
            with tf.io.TFRecordWriter(str(staging / file)) as writer:
                for row in rows:
                    photo = pixels[0][row] if row < offsets else pixels[1][row - offsets]
                    writer.write(_example(np.ascontiguousarray(photo, np.uint8), class_id))
            pills.append({"name": str(name), "file": file, "photos": int(len(rows))})
        index = {"image_size": int(train.pixels.shape[1]), "pills": pills}
        (staging / INDEX).write_text(json.dumps(index, indent=1))
    return folder


def read_index(folder: pathlib.Path) -> dict:
    """The shard folder's index; a missing folder is an error that says how it is made."""
    if not (folder / INDEX).is_file():
        raise FileNotFoundError(f"{folder}: no shard folder ({INDEX} missing); `pilltrack prepare` writes it "
                                "when params.yaml's training.input is stream")
    return json.loads((folder / INDEX).read_text())


def batch_quotas(index: dict, classes_per_batch: int, mix_ratio: float,
                 reference_share: float) -> list[tuple[list[int], int]]:
    """`sampling.class_quotas` of the shard folder's pills."""
    names = [pill["name"] for pill in index["pills"]]
    classes = dataset.batch_classes(classes_per_batch, np.array(names))
    return sampling.class_quotas(names, classes, mix_ratio, reference_share)


def draw_batches(index: dict, classes_per_batch: int, examples_per_class: int, mix_ratio: float,
                 reference_share: float, seed: int) -> Iterator[list[tuple[int, np.ndarray]]]:
    """Endless global batches: [(class id, photo indices within its file)] per batch, with the
    memory sampler's class count and shares; photos without repeats where the pill has enough."""
    pills = index["pills"]
    quotas = batch_quotas(index, classes_per_batch, mix_ratio, reference_share)
    shots = examples_per_class
    rng = np.random.default_rng([seed, STREAM])
    while True:
        batch = []
        for ids, count in quotas:
            for class_id in rng.choice(ids, size=count, replace=False):
                photos = pills[int(class_id)]["photos"]
                batch.append((int(class_id), rng.choice(photos, size=shots, replace=photos < shots)))
        yield batch


def make_dataset(folder: pathlib.Path, classes_per_batch: int, examples_per_class: int, augment_settings: Augment,
                 mix_ratio: float, reference_share: float, seed: int, pipelines: int = 1,
                 pipeline: int = 0) -> tf.data.Dataset:
    """Endless (pixels, class ids) batches from a shard folder, augmented (`augment_settings`, the
    `augment` section) and normalised as the memory sampler's; pipeline `pipeline` of `pipelines` yields its share of each global batch."""
    index = read_index(folder)
    size, files = index["image_size"], tf.constant([str(folder / pill["file"]) for pill in index["pills"]])
    counts = tf.constant([pill["photos"] for pill in index["pills"]], tf.int64)
    shots = examples_per_class
    classes = sum(count for _, count in batch_quotas(index, classes_per_batch, mix_ratio, reference_share))
    if not 1 <= pipelines <= classes or not 0 <= pipeline < pipelines:
        raise ValueError(f"{pipelines} input pipelines for batches of {classes} pills: each needs one pill at least")
    local = len(range(pipeline, classes, pipelines))

    def choices():
        for batch in draw_batches(index, classes_per_batch, examples_per_class, mix_ratio, reference_share, seed):
            for class_id, photos in batch[pipeline::pipelines]:
                yield class_id, photos.astype(np.int64)

    def parse(record):
        parsed = tf.io.parse_single_example(record, {"pixels": tf.io.FixedLenFeature([], tf.string),
                                                      "label": tf.io.FixedLenFeature([], tf.int64)})
        return tf.reshape(tf.io.decode_raw(parsed["pixels"], tf.uint8), [size, size, 3]), parsed["label"]

    def photos_of(class_id, photos):
        pill = tf.data.TFRecordDataset(tf.gather(files, class_id)).map(parse).batch(tf.gather(counts, class_id))
        return pill.map(lambda pixels, labels: (tf.gather(pixels, photos), tf.gather(labels, photos)))

    def augmented(pixels, labels):
        return normalise(augment(tf.reshape(pixels, [-1, size, size, 3]), augment_settings)), tf.reshape(labels, [-1])

    signature = (tf.TensorSpec([], tf.int64), tf.TensorSpec([shots], tf.int64))
    stream = tf.data.Dataset.from_generator(choices, output_signature=signature)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF  # sliced above
    options.deterministic = True
    return (stream.flat_map(photos_of).batch(local, drop_remainder=True).map(augmented)
            .prefetch(2).with_options(options))
