"""The models the benchmark measures and their entries in the report: a profile's four models
(from a pipeline run's artefacts, or built from params.yaml untrained and exported to int8 here),
the reference model, the int8 throughput convolution; each entry's size, arena, MACs, ops and
accuracy (from metrics/evaluation.json), and the figures derived from its timings (ratio to the
reference, compute floor, device step)."""

from __future__ import annotations

import dataclasses
import pathlib
import tempfile
from typing import Callable, NamedTuple

import numpy as np

from edge_runtime.preprocessing import PreprocessConfig
from tf_pilltrack import paths
from tf_pilltrack.benchmark.measurement import graph_macs, keras_macs
from tf_pilltrack.scoring import results
from tf_pilltrack.settings import Profile, Teacher

NOT_TRAINED = "not trained in this run"
NOT_MEASURED = "not measured"


# ---------------------------------------------------------------------------------------------
# The models
# ---------------------------------------------------------------------------------------------


class Calibration(NamedTuple):
    """How a profile built untrained here is calibrated for int8: `images` training photos drawn
    with `seed` from the photos of `source` (data.source), preprocessed with `preprocess` (the
    pipeline's preprocessing; the image size is the profile's)."""
    preprocess: PreprocessConfig
    source: str
    images: int
    seed: int


def calibration_pixels(profile: Profile, calibration: Calibration) -> np.ndarray:
    """`calibration.images` training photos (the crops `pilltrack export` would calibrate on)
    preprocessed again at `profile`'s image size, as `pilltrack prepare` does for that profile;
    where a source photo is not a readable file (a zip source) or no pill is found, the prepared
    crop resized."""
    import cv2

    from edge_runtime import preprocessing
    from tf_pilltrack.data import dataset

    train = dataset.load_split("train")
    rng = np.random.default_rng(calibration.seed)  # the same draw as conversion.calibration_sample
    indices = np.sort(rng.choice(len(train), size=min(calibration.images, len(train)), replace=False))
    config = dataclasses.replace(calibration.preprocess, image_size=profile.image_size)
    crops = []
    for index in indices:
        photo_path = pathlib.Path(calibration.source) / str(train.sources[index])
        crop = None
        if photo_path.is_file():
            crop = preprocessing.preprocess(preprocessing.read_image(photo_path, config.max_image_pixels), config)
        crops.append(crop.pixels if crop is not None else cv2.resize(
            train.pixels[index], (config.image_size, config.image_size), interpolation=cv2.INTER_AREA))
    return np.stack(crops).astype(np.uint8)


SHIPPED_MODEL = "student_int8"  # the QAT int8 student the device runs, as metrics/evaluation.json names it

# The model of metrics/evaluation.json whose figures are a model's accuracy, where the names differ.
EVALUATION_NAMES = {"baseline": "baseline_colour_shape"}
MODEL_LABELS = {
    "teacher": "teacher (ResNet, Keras)",
    "student_float": "student, float (Keras)",
    "student_int8": "student, QAT int8",
    "student_ptq_int8": "student, PTQ int8",
    "reference": "reference MobileNetV2 1.0 224 px",
    "baseline": "colour/shape baseline",
    "peak_conv": "int8 3x3 convolution (throughput)",
}


def entry_id(profile: str | None, model: str) -> str:
    """A report entry's id: "<profile>/<model>", or the model alone where it has no profile."""
    return f"{profile}/{model}" if profile else model


def accuracy_of(evaluation: dict | None, model: str, note: str | None = None, shots: int = 5) -> dict:
    """Synthetic novel-class accuracy of `model` from an evaluation.json and its real-photo
    episode accuracy where evaluated: `shots` reference shots (the largest K evaluated where that
    K is not), single-view queries; None for each with the reason in `note`."""
    if evaluation is None:
        return {"synthetic": None, "real": None, "note": note or NOT_TRAINED}
    key = EVALUATION_NAMES.get(model, model)
    synthetic = results.model_figures(evaluation, key)
    evaluated = results.shots_evaluated(results.episode_run(evaluation, "real"))
    chosen = shots if shots in evaluated else (evaluated[-1] if evaluated else None)
    real = results.episode_figures(evaluation, "real", chosen, key, "single") if chosen is not None else None
    real_what = (f"real photos (episodes.real_source), {chosen}-shot few-shot episodes, single-view queries, "
                 "mean over episodes")
    pick = ("recall_at_1", "recall_at_5", "map_at_r", "recall_at_1_std", "map_at_r_std")
    return {
        "synthetic": {name: float(synthetic[name]) for name in pick if name in synthetic} if synthetic else None,
        "real": {name: float(real[name]) for name in pick if name in real} if real else None,
        "real_what": real_what if real else None,
        "note": None,
    }


def make_entry(profile: str | None, model: str, **fields) -> dict:
    entry = {"id": entry_id(profile, model), "profile": profile, "model": model,
             "label": MODEL_LABELS[model], "format": None, "trained": None, "source": None, "bytes": None,
             "size_kind": None, "arena_bytes": None, "macs": None, "ops": None, "edgetpu": None,
             "accuracy": {"synthetic": None, "real": None, "note": None}, "latency": {}}
    entry.update(fields)
    return entry


def int8_entry(profile: str | None, model: str, tflite: bytes, source: str, trained: bool | None,
                accuracy: dict) -> dict:
    from tf_pilltrack.tflite import conversion

    described = conversion.describe(tflite)
    return make_entry(profile, model, format="int8 TFLite", trained=trained, source=source, bytes=described["bytes"],
                  size_kind="int8 file", arena_bytes=described["micro_arena_bytes"], macs=graph_macs(tflite)["total"],
                  ops=described["ops"], edgetpu=described["edgetpu"], io=described["io"], accuracy=accuracy)


def keras_entry(profile: str | None, model: str, keras_model, source: str, trained: bool | None,
                 accuracy: dict) -> dict:
    return make_entry(profile, model, format="Keras float32", trained=trained, source=source,
                  bytes=int(keras_model.count_params()) * 4, size_kind="float32 weights",
                  macs=keras_macs(keras_model), accuracy=accuracy)


def profile_models(profile: str, architecture: Profile, teacher: Teacher, shots: int, artefacts: pathlib.Path | None,
                   calibration: Calibration, workdir: pathlib.Path,
                   echo: Callable[[str], None]) -> tuple[list[dict], dict, dict]:
    """Profile `profile`'s four models: entries, their int8 files {id: path} and Keras models {id: model}.
    `architecture` is its params.yaml profile, `teacher` the teacher section; the accuracy
    figures are those of `shots` reference shots (prepare.reference_shots).

    `artefacts` is the project directory of a pipeline run with this profile (its models/ and
    metrics/), or None: then the architectures are built untrained and exported to int8 here,
    calibrated as `calibration` says."""
    from tf_pilltrack.tflite import conversion
    from tf_pilltrack.training import models

    keras_models = {"teacher": models.make_teacher(architecture, teacher),
                    "student_float": models.make_student(architecture, teacher.embedding_size)}
    files: dict[str, pathlib.Path] = {}
    if artefacts is not None:
        evaluation_path = artefacts / paths.METRICS / "evaluation.json"
        evaluation = results.read_evaluation(evaluation_path)
        note = None if evaluation else f"{evaluation_path} missing"
        for model, path in (("student_int8", paths.STUDENT_QAT_TFLITE), ("student_ptq_int8", paths.STUDENT_PTQ_TFLITE)):
            if not (artefacts / path).is_file():
                raise FileNotFoundError(f"{artefacts / path}: missing; run `dvc repro` with base.profile: {profile}")
            files[model] = artefacts / path
        source, trained = f"pipeline artefacts in {artefacts}", True
    else:
        echo(f"bench: profile {profile!r}: no artefacts, building its student untrained and exporting it to int8")
        pixels = calibration_pixels(architecture, calibration)
        float_student = keras_models["student_float"]
        for model, convert, keras_model in (("student_int8", conversion.convert_qat, models.quantize(float_student)),
                                            ("student_ptq_int8", conversion.convert_ptq, float_student)):
            files[model] = workdir / f"{profile}_{model}.tflite"
            files[model].write_bytes(convert(keras_model, pixels))
        evaluation, note = None, NOT_TRAINED
        source, trained = f"built from params.yaml profiles.{profile}, untrained; int8 calibrated on {len(pixels)} photos", False
    entries = [
        keras_entry(profile, name, keras_models[name], source, trained, accuracy_of(evaluation, name, note, shots))
        for name in ("teacher", "student_float")
    ] + [
        int8_entry(profile, name, files[name].read_bytes(), str(files[name]) if trained else source, trained,
                    accuracy_of(evaluation, name, note, shots))
        for name in ("student_int8", "student_ptq_int8")
    ]
    return (entries, {entry_id(profile, name): path for name, path in files.items()},
            {entry_id(profile, name): model for name, model in keras_models.items()})


def reference_model(calibration_images: int, seed: int) -> tuple[pathlib.Path, object]:
    """The reference int8 file (stage `reference`; converted here if absent, calibrated on an eighth
    of `calibration_images`, export.calibration_images, as that stage does) and the same
    architecture in Keras (float32, for the TensorFlow ratio)."""
    import tf_keras

    from tf_pilltrack.tflite import conversion

    path = paths.REFERENCE_TFLITE
    if not path.is_file():
        path = pathlib.Path(tempfile.mkdtemp()) / paths.REFERENCE_TFLITE.name
        path.write_bytes(conversion.build_reference(max(calibration_images // 8, 1), seed))
    keras_model = tf_keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=1.0, include_top=False,
                                                    weights=None, pooling="avg")
    return path, keras_model


def peak_conv_model(side: int, in_channels: int, out_channels: int, seed: int) -> bytes:
    """One 3x3 int8 convolution, `side` x `side` x `in_channels` -> `out_channels`, converted
    exactly as the students are (conversion.converter, uint8 in / int8 out): the most
    multiply-accumulates per second an int8 runtime reaches on this machine."""
    import tf_keras

    from tf_pilltrack.tflite.conversion import converter

    tf_keras.utils.set_random_seed(seed)
    inputs = tf_keras.layers.Input((side, side, in_channels))
    outputs = tf_keras.layers.Conv2D(out_channels, 3, padding="same", use_bias=False)(inputs)
    model = tf_keras.Model(inputs, outputs)
    calibration = np.random.default_rng(seed).integers(0, 256, size=(4, side, side, in_channels), dtype=np.uint8)
    return converter(model, calibration).convert()


# ---------------------------------------------------------------------------------------------
# Figures derived from the timings
# ---------------------------------------------------------------------------------------------


def derive_figures(entries: list[dict], peak: dict) -> None:
    """Ratio to the reference under the same runtime; compute floor (MACs / the runtime's
    measured int8 throughput) and the fraction of it each invoke reaches."""
    reference = next(entry for entry in entries if entry["model"] == "reference")
    for entry in entries:
        for runtime, timing in entry["latency"].items():
            if "median_ms" not in timing:
                continue
            base = reference["latency"].get(runtime, {})
            timing["reference_ratio"] = (timing["median_ms"] / base["median_ms"]
                                         if "median_ms" in base and entry["model"] != "peak_conv" else None)
            throughput = peak.get(runtime)
            if throughput and entry["macs"]:
                timing["floor_ms"] = entry["macs"] / throughput * 1000.0
                timing["floor_fraction"] = timing["floor_ms"] / timing["median_ms"]
            else:
                timing["floor_ms"] = timing["floor_fraction"] = None


def attach_device_step(entries: list[dict], step: dict | None, shipped_id: str) -> None:
    """Device step (preprocess + invoke + search, ms, LiteRT 1 thread) per int8 student: the
    search benchmark's measured one for the shipped model; for the others an estimate, that
    measurement with the shipped model's bare invoke median replaced by theirs (the device
    step's invoke also quantises the input and dequantises the output, which stays)."""
    shipped = next((entry for entry in entries if entry["id"] == shipped_id), None)
    shipped_invoke = (shipped or {}).get("latency", {}).get("litert_1", {}).get("median_ms")
    for entry in entries:
        entry["device_step"] = None
        invoke = entry["latency"].get("litert_1", {}).get("median_ms")
        if step is None or shipped_invoke is None or invoke is None or not entry["model"].startswith("student_"):
            continue
        total = step["total_without_localise"]
        if entry["id"] == shipped_id:
            entry["device_step"] = {"median_ms": total["median_ms"], "p95_ms": total.get("p95_ms"), "measured": True,
                                    "with_localise_median_ms": step.get("total", {}).get("median_ms"),
                                    "gallery_size": step.get("gallery_size")}
        else:
            entry["device_step"] = {"median_ms": total["median_ms"] - shipped_invoke + invoke, "p95_ms": None,
                                    "measured": False, "with_localise_median_ms": None,
                                    "gallery_size": step.get("gallery_size")}
