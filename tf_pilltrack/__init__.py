"""PillTrack training package: `stages/` (one module per `pilltrack` command) over the libraries
`data/`, `synthesis/`, `training/`, `tflite/`, `scoring/`, `firmware/` and `benchmark/`.

TF-Similarity and tensorflow-model-optimization need Keras 2 (tf-keras). TensorFlow reads
TF_USE_LEGACY_KERAS when it is first imported, so the package sets it here, before any module
of the package imports TensorFlow; users never have to.
"""

import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pin_threads(threads: int) -> None:
    """Run TensorFlow's kernels on `threads` threads (params.yaml's base.threads), however many
    cores the machine has. A kernel splits its sums across its threads and the split changes their
    rounding, so without this the same params train other weights on a machine with other cores.
    Before TensorFlow starts: the environment variables it reads then; after its import but before
    its first op: its threading config; after its first op TensorFlow refuses (RuntimeError)."""
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = str(threads)
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        if (tf.config.threading.get_intra_op_parallelism_threads(),
                tf.config.threading.get_inter_op_parallelism_threads()) != (threads, threads):
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)

__version__ = "0.1.0"
