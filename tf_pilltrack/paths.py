"""Fixed artefact paths of the pipeline, relative to the project root (dvc.yaml names the same
paths; tests/test_pipeline_definition.py checks that they agree)."""

import pathlib

SYNTHETIC = pathlib.Path("data/synthetic")
PREPARED = pathlib.Path("data/prepared")
SHARDS = PREPARED / "shards"  # the training splits as TFRecord files (training.input: stream)
MODELS = pathlib.Path("models")
TEACHER_WEIGHTS = MODELS / "teacher.weights.h5"
STUDENT_FLOAT_WEIGHTS = MODELS / "student_float.weights.h5"
STUDENT_QAT_WEIGHTS = MODELS / "student_qat.weights.h5"
STUDENT_QAT_TFLITE = MODELS / "student_int8.tflite"
STUDENT_PTQ_TFLITE = MODELS / "student_ptq_int8.tflite"
MICRO = MODELS / "micro"
REFERENCE_TFLITE = MODELS / "reference_mobilenetv2_224_int8.tflite"  # stage `reference`
BUNDLE = pathlib.Path("bundle")
METRICS = pathlib.Path("metrics")
REPORTS = pathlib.Path("reports")

SPLITS = ("train", "calibration_references", "calibration_queries",
          "references", "queries", "absent_queries", "mix")


def split_file(name: str) -> pathlib.Path:
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
    return PREPARED / f"{name}.npz"
