"""PillTrack's device client: identify pills with a TFLite embedding model and an Annoy
gallery, enroll new ones, without TensorFlow (numpy, Annoy, OpenCV, Pillow and a TFLite
runtime only). The training pipeline imports it too, to embed images and write the bundle."""

from edge_runtime.bundle import Bundle, BundleError, check_model, load_bundle, write_bundle
from edge_runtime.enrollment import enroll, list_labels, remove
from edge_runtime.gallery import (
    UNKNOWN,
    Match,
    angular_to_cosine,
    build_index,
    choose_search_k,
    cosine_to_angular,
    identify,
    search,
    search_k_for_size,
)
from edge_runtime.identification import Identifier, Result, Smoother
from edge_runtime.interpreter import (
    ModelError,
    embed,
    embedding_size,
    input_size,
    make_interpreter,
    runtime_name,
)
from edge_runtime.preprocessing import ImageError, PreprocessConfig, preprocess, read_image

__all__ = [
    "UNKNOWN", "Bundle", "BundleError", "Identifier", "ImageError", "Match", "ModelError",
    "PreprocessConfig", "Result", "Smoother", "angular_to_cosine", "build_index",
    "check_model", "choose_search_k", "cosine_to_angular", "embed", "embedding_size", "enroll",
    "identify", "input_size", "list_labels", "load_bundle", "make_interpreter", "preprocess",
    "read_image", "remove", "runtime_name", "search", "search_k_for_size", "write_bundle",
]
