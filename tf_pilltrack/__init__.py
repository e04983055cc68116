"""PillTrack training package: data, teacher, distillation, export, enrollment, evaluation.

TF-Similarity and tensorflow-model-optimization need Keras 2 (tf-keras). TensorFlow reads
TF_USE_LEGACY_KERAS when it is first imported, so the package sets it here, before any module
of the package imports TensorFlow; users never have to.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
