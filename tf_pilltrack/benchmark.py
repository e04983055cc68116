"""`pilltrack bench`: accuracy x size x latency of every model under every runtime, in one run.

Not a dvc stage: its outputs are timings of the machine it runs on, not a function of its inputs.
Run it from the project root after `dvc repro`. It writes `reports/benchmark.md` (tables a
person reads), `reports/benchmark.json` (the same figures for programs) and two plots
(`benchmark_accuracy_vs_size.png`, `benchmark_accuracy_vs_latency.png`).

Rows, for every profile in `bench.profiles`: the teacher and the float student (Keras, under
TensorFlow), the QAT and the PTQ int8 students (LiteRT with 1 and N threads, tflite-runtime in
the edge environment, TFLite Micro on this host). The profile `base.profile` names is measured
on the pipeline's own artefacts, with its accuracy from `metrics/evaluation.json`; any other
profile uses the artefacts given with `--artefacts PROFILE=DIR`, or else is built from its
architecture in params.yaml, untrained, and exported to int8 the way `pilltrack export` does,
calibrated on the pipeline's photos preprocessed at that profile's size: size, arena, MACs, ops
and latency do not depend on trained weights, accuracy does and is marked "not trained".
Besides them: the reference model (MobileNetV2 1.0 at 224 px, int8; stage `reference`) that
speed and size ratios are taken against, the colour/shape baseline (accuracy), and an int8
throughput micro-benchmark (one large 3x3 convolution converted the same way) that gives each
runtime's compute floor: a model's MACs divided by that throughput, the least time its
convolutions can take under that runtime here.

Runtime parity (`tf_pilltrack.parity`): the shipped int8 model embeds the evaluation gallery and
queries under LiteRT (as the device runs it, and with its builtin kernels), tflite-runtime and
TFLite Micro; each runtime's raw int8 outputs are compared with the device's (int8 steps,
bit-identical fractions) and so are its top-1 answers; every op alone is compared under every pair
of kernels, and the runtimes are judged by that stated per-op tolerance.

Search and the device step come from `benchmarks/edge_speed.py`, run as a subprocess with the
gallery sizes of `bench.gallery_sizes`; its JSON is merged into the report.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
from typing import Callable

import numpy as np

from edge_runtime.storage import write_atomically
from tf_pilltrack import micro, paths
from tf_pilltrack.timing import time_invocations
from tf_pilltrack.parity import PARITY_BUILTIN, PARITY_LABEL, run_in_tflite_runtime, runtime_parity, runtime_version

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]  # where the code (and its environments) live
EDGE_SPEED = pathlib.Path("benchmarks") / "edge_speed.py"
NOT_TRAINED = "not trained in this run"
NOT_MEASURED = "not measured"
# Ops whose multiply-accumulates are counted; the rest (ADD, MEAN, QUANTIZE...) are negligible.
MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
INPUT_FILL = 128  # every timed invocation sees a mid-grey uint8 input, as `pilltrack check`'s


# ---------------------------------------------------------------------------------------------
# Counting: multiply-accumulates of a TFLite graph or a Keras model
# ---------------------------------------------------------------------------------------------


def graph_macs(model: bytes) -> dict:
    """Multiply-accumulates of one invocation, from the TFLite graph's tensor shapes:
    CONV_2D out_elements x kh x kw x in_channels (per group), DEPTHWISE_CONV_2D out_elements x
    kh x kw, FULLY_CONNECTED out_elements x in_features. Returns the total and per op."""
    interpreter = micro._lite_interpreter(model)
    shapes = {detail["index"]: [int(v) for v in detail["shape"]] for detail in interpreter.get_tensor_details()}
    by_op = {name: 0 for name in MAC_OPS}
    for op in interpreter._get_ops_details():
        name = op["op_name"]
        if name not in by_op:
            continue
        output, weights = shapes[op["outputs"][0]], shapes[op["inputs"][1]]
        if name == "CONV_2D":  # filter [out, kh, kw, in / groups]
            per_output = weights[1] * weights[2] * weights[3]
        elif name == "DEPTHWISE_CONV_2D":  # filter [1, kh, kw, out]
            per_output = weights[1] * weights[2]
        else:  # weights [out, in]
            per_output = weights[1]
        by_op[name] += math.prod(output) * per_output
    return {"total": sum(by_op.values()), "by_op": by_op}


def keras_macs(model) -> int:
    """Multiply-accumulates of one image through a Keras model's Conv2D, DepthwiseConv2D and
    Dense layers (the same count as `graph_macs` of its TFLite conversion)."""
    from tf_keras import layers

    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.DepthwiseConv2D):
            _, height, width, channels = layer.output_shape
            total += height * width * channels * layer.kernel_size[0] * layer.kernel_size[1]
        elif isinstance(layer, layers.Conv2D):
            _, height, width, channels = layer.output_shape
            inputs = layer.input_shape[-1] // layer.groups
            total += height * width * channels * layer.kernel_size[0] * layer.kernel_size[1] * inputs
        elif isinstance(layer, layers.Dense):
            total += math.prod(layer.output_shape[1:-1]) * layer.units * layer.input_shape[-1]
    return int(total)


# ---------------------------------------------------------------------------------------------
# Timing under each runtime
# ---------------------------------------------------------------------------------------------


def interpreter_timings(jobs: list[list], repeats: int) -> dict:
    """Invoke latency of TFLite models, each job [name, model path, threads], with the device
    client's own interpreter (`edge_runtime.interpreter`: LiteRT, else tflite-runtime). Imports
    no TensorFlow, so it also runs in the edge environments (see `tflite_runtime_timings`)."""
    from edge_runtime import interpreter as runtime

    timings = {}
    for name, path, threads in jobs:
        model = runtime.make_interpreter(path, threads=int(threads))
        detail = model.get_input_details()[0]
        model.set_tensor(detail["index"], np.full(detail["shape"], INPUT_FILL, detail["dtype"]))
        timings[name] = time_invocations(model.invoke, repeats)
    return {"runtime": runtime.runtime_name(), "version": runtime_version(runtime.runtime_name()), "timings": timings}


_SUBPROCESS_SCRIPT = (
    "import json, sys\n"
    "from tf_pilltrack.benchmark import interpreter_timings\n"
    "print(json.dumps(interpreter_timings(json.loads(sys.argv[1]), int(sys.argv[2]))))\n"
)


def tflite_runtime_timings(python: pathlib.Path, jobs: list[list], repeats: int) -> dict:
    """`interpreter_timings` in the tflite-runtime environment, as a subprocess of that
    environment's interpreter. {"error": reason} where it is not installed or fails."""
    return run_in_tflite_runtime(python, _SUBPROCESS_SCRIPT, [json.dumps(jobs), str(repeats)])


def micro_timing(model: bytes, repeats: int) -> dict:
    """Invoke latency under the TFLite Micro interpreter (x86 host build, reference kernels)."""
    interpreter = micro.micro_interpreter(model)
    detail = interpreter.get_input_details(0)
    pixels = np.full(detail["shape"], INPUT_FILL, detail["dtype"])

    def invoke():
        interpreter.set_input(pixels, 0)
        interpreter.invoke()

    return time_invocations(invoke, repeats)


def keras_timing(model, repeats: int) -> dict:
    """One image through a Keras model as a traced tf.function (TensorFlow's own threads)."""
    import tensorflow as tf

    function = tf.function(lambda pixels: model(pixels, training=False))
    pixels = tf.zeros([1, *model.input_shape[1:]], tf.float32)  # normalised mid-grey
    return time_invocations(lambda: function(pixels).numpy(), repeats)


def numpy_timing(describe: Callable[[np.ndarray], np.ndarray], crop: np.ndarray, repeats: int) -> dict:
    return time_invocations(lambda: describe(crop), repeats)


# ---------------------------------------------------------------------------------------------
# The models
# ---------------------------------------------------------------------------------------------


def _profile_params(params: dict, profile: str) -> dict:
    changed = copy.deepcopy(params)
    changed["base"]["profile"] = profile
    return changed


def calibration_pixels(params: dict, profile: str, count: int, seed: int) -> np.ndarray:
    """`count` training photos (the crops `pilltrack export` would calibrate on) preprocessed
    again at `profile`'s image size, as `pilltrack prepare` does for that profile; where a source
    photo is not a readable file (a zip source) or no pill is found, the prepared crop resized."""
    import cv2

    from edge_runtime import preprocessing
    from tf_pilltrack import dataset
    from tf_pilltrack import params as params_module

    train = dataset.load_split("train")
    rng = np.random.default_rng(seed)  # the same draw as conversion.calibration_sample
    indices = np.sort(rng.choice(len(train), size=min(count, len(train)), replace=False))
    config = params_module.preprocess_config(_profile_params(params, profile))
    crops = []
    for index in indices:
        photo_path = pathlib.Path(params["data"]["source"]) / str(train.sources[index])
        crop = None
        if photo_path.is_file():
            crop = preprocessing.preprocess(preprocessing.read_image(photo_path, config.max_image_pixels), config)
        crops.append(crop.pixels if crop is not None else cv2.resize(
            train.pixels[index], (config.image_size, config.image_size), interpolation=cv2.INTER_AREA))
    return np.stack(crops).astype(np.uint8)


# Which figure of metrics/evaluation.json each model's accuracy is.
EVALUATION_KEYS = {
    "teacher": "teacher",
    "student_float": "student_float",
    "student_qat_int8": "student_int8",  # the shipped model, through the device bundle
    "student_ptq_int8": "student_ptq_int8",
    "baseline": "baseline_colour_shape",
}
MODEL_LABELS = {
    "teacher": "teacher (ResNet, Keras)",
    "student_float": "student, float (Keras)",
    "student_qat_int8": "student, QAT int8",
    "student_ptq_int8": "student, PTQ int8",
    "reference": "reference MobileNetV2 1.0 224 px",
    "baseline": "colour/shape baseline",
    "peak_conv": "int8 3x3 convolution (throughput)",
}


def _real_episodes(evaluation: dict, shots: int) -> tuple[dict, str] | tuple[None, None]:
    """The real-photo few-shot episode figures of the evaluation (`episodes.real`), per model,
    for `shots` reference shots (the largest K evaluated where that K is not), single-view
    queries; and what they are, in words."""
    real = (evaluation.get("episodes") or {}).get("real")
    if not isinstance(real, dict):
        return None, None
    evaluated = sorted(int(key.split("_", 1)[1]) for key in real if key.startswith("shots_"))
    if not evaluated:
        return None, None
    chosen = shots if shots in evaluated else evaluated[-1]
    per_model = {model: views["single"] for model, views in real[f"shots_{chosen}"].items()
                 if isinstance(views, dict) and isinstance(views.get("single"), dict)}
    return per_model, f"real photos (episodes.real_source), {chosen}-shot few-shot episodes, single-view queries, mean over episodes"


def _accuracy(evaluation: dict | None, model: str, note: str | None = None, shots: int = 5) -> dict:
    """Synthetic novel-class accuracy of `model` from an evaluation.json and its real-photo
    episode accuracy where evaluated; None for each with the reason in `note`."""
    if evaluation is None:
        return {"synthetic": None, "real": None, "note": note or NOT_TRAINED}
    key = EVALUATION_KEYS[model]
    synthetic = evaluation.get(key)
    real_models, real_what = _real_episodes(evaluation, shots)
    real = (real_models or {}).get(key)
    pick = ("recall_at_1", "recall_at_5", "map_at_r", "recall_at_1_std", "map_at_r_std")
    return {
        "synthetic": {name: float(synthetic[name]) for name in pick if name in synthetic} if synthetic else None,
        "real": {name: float(real[name]) for name in pick if name in real} if real else None,
        "real_what": real_what if real else None,
        "note": None,
    }


def _entry(profile: str | None, model: str, **fields) -> dict:
    entry = {"id": f"{profile}/{model}" if profile else model, "profile": profile, "model": model,
             "label": MODEL_LABELS[model], "format": None, "trained": None, "source": None, "bytes": None,
             "size_kind": None, "arena_bytes": None, "macs": None, "ops": None, "edgetpu": None,
             "accuracy": {"synthetic": None, "real": None, "note": None}, "latency": {}}
    entry.update(fields)
    return entry


def _int8_entry(profile: str | None, model: str, tflite: bytes, source: str, trained: bool | None,
                accuracy: dict) -> dict:
    from tf_pilltrack import conversion

    described = conversion.describe(tflite)
    return _entry(profile, model, format="int8 TFLite", trained=trained, source=source, bytes=described["bytes"],
                  size_kind="int8 file", arena_bytes=described["micro_arena_bytes"], macs=graph_macs(tflite)["total"],
                  ops=described["ops"], edgetpu=described["edgetpu"], io=described["io"], accuracy=accuracy)


def _keras_entry(profile: str | None, model: str, keras_model, source: str, trained: bool | None,
                 accuracy: dict) -> dict:
    return _entry(profile, model, format="Keras float32", trained=trained, source=source,
                  bytes=int(keras_model.count_params()) * 4, size_kind="float32 weights",
                  macs=keras_macs(keras_model), accuracy=accuracy)


def profile_models(params: dict, profile: str, artefacts: pathlib.Path | None, settings: dict,
                   workdir: pathlib.Path, echo: Callable[[str], None]) -> tuple[list[dict], dict, dict]:
    """A profile's four models: entries, their int8 files {id: path} and Keras models {id: model}.

    `artefacts` is the project directory of a pipeline run with this profile (its models/ and
    metrics/), or None: then the architectures are built untrained and exported to int8 here."""
    from tf_pilltrack import conversion, models

    profile_params = _profile_params(params, profile)
    shots = params["prepare"]["reference_shots"]
    keras_models = {"teacher": models.make_teacher(profile_params), "student_float": models.make_student(profile_params)}
    files: dict[str, pathlib.Path] = {}
    if artefacts is not None:
        evaluation_path = artefacts / paths.METRICS / "evaluation.json"
        evaluation = json.loads(evaluation_path.read_text()) if evaluation_path.is_file() else None
        note = None if evaluation else f"{evaluation_path} missing"
        for model, path in (("student_qat_int8", paths.STUDENT_QAT_TFLITE), ("student_ptq_int8", paths.STUDENT_PTQ_TFLITE)):
            if not (artefacts / path).is_file():
                raise FileNotFoundError(f"{artefacts / path}: missing; run `dvc repro` with base.profile: {profile}")
            files[model] = artefacts / path
        source, trained = f"pipeline artefacts in {artefacts}", True
    else:
        echo(f"bench: profile {profile!r}: no artefacts, building its student untrained and exporting it to int8")
        calibration = calibration_pixels(params, profile, settings["calibration_images"], params["base"]["seed"])
        float_student = keras_models["student_float"]
        for model, convert, keras_model in (("student_qat_int8", conversion.convert_qat, models.quantize(float_student)),
                                            ("student_ptq_int8", conversion.convert_ptq, float_student)):
            files[model] = workdir / f"{profile}_{model}.tflite"
            files[model].write_bytes(convert(keras_model, calibration))
        evaluation, note = None, NOT_TRAINED
        source, trained = f"built from params.yaml profiles.{profile}, untrained; int8 calibrated on {len(calibration)} photos", False
    entries = [
        _keras_entry(profile, name, keras_models[name], source, trained, _accuracy(evaluation, name, note, shots))
        for name in ("teacher", "student_float")
    ] + [
        _int8_entry(profile, name, files[name].read_bytes(), str(files[name]) if trained else source, trained,
                    _accuracy(evaluation, name, note, shots))
        for name in ("student_qat_int8", "student_ptq_int8")
    ]
    return entries, {f"{profile}/{name}": path for name, path in files.items()}, {f"{profile}/{name}": model for name, model in keras_models.items()}


def reference_model(params: dict, seed: int) -> tuple[pathlib.Path, object]:
    """The reference int8 file (stage `reference`; converted here if absent) and the same
    architecture in Keras (float32, for the TensorFlow ratio)."""
    import tf_keras

    from tf_pilltrack import conversion

    path = paths.REFERENCE_TFLITE
    if not path.is_file():
        path = pathlib.Path(tempfile.mkdtemp()) / paths.REFERENCE_TFLITE.name
        path.write_bytes(conversion.build_reference(max(params["export"]["calibration_images"] // 8, 1), seed))
    keras_model = tf_keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=1.0, include_top=False,
                                                    weights=None, pooling="avg")
    return path, keras_model


def peak_conv_model(side: int, in_channels: int, out_channels: int, seed: int) -> bytes:
    """One 3x3 int8 convolution, `side` x `side` x `in_channels` -> `out_channels`, converted
    exactly as the students are (conversion.converter, uint8 in / int8 out): the most
    multiply-accumulates per second an int8 runtime reaches on this machine."""
    import tf_keras

    from tf_pilltrack.conversion import converter

    tf_keras.utils.set_random_seed(seed)
    inputs = tf_keras.layers.Input((side, side, in_channels))
    outputs = tf_keras.layers.Conv2D(out_channels, 3, padding="same", use_bias=False)(inputs)
    model = tf_keras.Model(inputs, outputs)
    calibration = np.random.default_rng(seed).integers(0, 256, size=(4, side, side, in_channels), dtype=np.uint8)
    return converter(model, calibration).convert()


# ---------------------------------------------------------------------------------------------
# Search and the device step: benchmarks/edge_speed.py
# ---------------------------------------------------------------------------------------------


def search_benchmark(settings: dict, workdir: pathlib.Path, echo: Callable[[str], None]) -> dict:
    """Run benchmarks/edge_speed.py with the same interpreter on the project's bundle and data
    (the current directory), the device step at the targets' gallery size; its JSON report, or
    {"error": ...}. It runs as `python -m benchmarks.edge_speed` from the code's root (the project
    may be a clone elsewhere), so every path it is given is absolute."""
    script = REPOSITORY / EDGE_SPEED
    module = ".".join(EDGE_SPEED.with_suffix("").parts)
    out = workdir.resolve() / "edge_benchmark.json"
    command = [sys.executable, "-m", module, "--sizes", *map(str, settings["gallery_sizes"]),
               "--frames", str(settings["frames"]), "--bundle", str(paths.BUNDLE.resolve()),
               "--data-root", str(pathlib.Path.cwd()),
               "--device-gallery", str(settings["targets"]["gallery_size"]), "--out", str(out)]
    echo(f"  {' '.join(command[1:])}")
    started = time.time()
    finished = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True)
    for line in finished.stdout.splitlines():
        echo(f"  {line}")
    if finished.returncode != 0 or not out.is_file():
        return {"error": f"{script} failed ({finished.returncode}): {finished.stderr.strip()[-1500:]}"}
    report = json.loads(out.read_text())
    report["seconds"] = round(time.time() - started, 1)
    return report


def _device_step(search: dict) -> dict | None:
    """The device step of the search benchmark's report: gallery size, per-stage and total
    medians (ms), or None where it was not measured."""
    step = search.get("device_step")
    if not isinstance(step, dict) or "stages" not in step:
        return None
    return step


def _search_rows(search: dict) -> list[dict]:
    rows = search.get("search")
    return rows if isinstance(rows, list) else []


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def runtime_labels(threads: int) -> dict:
    """Runtime key -> what the report calls it, in report order."""
    labels = {"tensorflow": "TensorFlow (Keras, float32)", "litert_1": "LiteRT, 1 thread"}
    if threads > 1:
        labels[f"litert_{threads}"] = f"LiteRT, {threads} threads"
    labels.update({"tflite_runtime_1": "tflite-runtime, 1 thread", "tflm": "TFLite Micro (host)",
                   "numpy": "NumPy/OpenCV, per crop"})
    return labels


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "load_average_at_start": [round(value, 2) for value in os.getloadavg()]}


def _read_json(path: pathlib.Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _derive(entries: list[dict], peak: dict) -> None:
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


def _attach_device_step(entries: list[dict], step: dict | None, shipped_id: str) -> None:
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


def evaluate_targets(report: dict, targets: dict) -> list[dict]:
    """The issue's targets for `targets.profile`: one row each, measured value or None."""
    profile = targets["profile"]
    by_id = {entry["id"]: entry for entry in report["models"]}
    shipped = by_id.get(f"{profile}/student_qat_int8")
    reference = by_id["reference"]
    rows = []

    def add(name: str, measured, limit, at_least: bool, unit: str, note: str = "") -> None:
        met = None if measured is None else (measured >= limit if at_least else measured <= limit)
        rows.append({"target": name, "measured": measured, "limit": limit, "at_least": at_least, "unit": unit,
                     "met": met, "note": note})

    gallery = targets["gallery_size"]
    step = (shipped or {}).get("device_step")
    measured_step = step["median_ms"] if step and step["measured"] and step.get("gallery_size") == gallery else None
    note = "" if measured_step is not None else f"device step not measured with a {gallery} gallery for {profile}"
    if step and measured_step is not None and step.get("with_localise_median_ms") is not None:
        note = f"{step['with_localise_median_ms']:.3f} ms with localisation on a full photo"
    add(f"{profile}: device step (preprocess + invoke + search), median, {gallery} gallery", measured_step,
        targets["max_device_step_ms"], False, "ms", note)
    speed = None
    if shipped and "median_ms" in shipped["latency"].get("litert_1", {}):
        speed = reference["latency"]["litert_1"]["median_ms"] / shipped["latency"]["litert_1"]["median_ms"]
    add(f"{profile}: times faster than the reference (LiteRT, 1 thread)", speed, targets["min_speedup"], True, "x")
    size = reference["bytes"] / shipped["bytes"] if shipped else None
    add(f"{profile}: times smaller than the reference (int8 file)", size, targets["min_size_ratio"], True, "x")
    annoy = {row["gallery_size"]: row for row in report["search"] if row.get("library") == "annoy"}
    for size_key in sorted(key for key in annoy if key >= gallery) or [gallery]:
        row = annoy.get(size_key)
        add(f"Annoy top-1 agreement with exact search, {size_key} gallery", row["top1_agreement"] if row else None,
            targets["min_annoy_agreement"], True, "", "" if row else NOT_MEASURED)
    row = annoy.get(gallery)
    add(f"Annoy lookup, median, {gallery} gallery", row["median_us"] if row else None, targets["max_annoy_lookup_us"],
        False, "µs", "" if row else NOT_MEASURED)
    return rows


class _Phases:
    """Wall seconds of each phase of the run, announced as it starts."""

    def __init__(self, echo: Callable[[str], None]):
        self.echo, self.seconds, self._current = echo, {}, None

    def start(self, name: str, message: str) -> None:
        self.stop()
        self._current = (name, time.time())
        self.echo(f"bench: {message}")

    def stop(self) -> None:
        if self._current:
            name, started = self._current
            self.seconds[name] = round(time.time() - started, 1)
            self._current = None


def run(params: dict, echo: Callable[[str], None] = print, artefacts: dict | None = None,
        repro_seconds: float | None = None, out_dir: str | os.PathLike = paths.REPORTS) -> dict:
    started = time.time()
    settings = params["bench"]
    seed = params["base"]["seed"]
    pipeline_profile = params["base"]["profile"]
    given = {name: pathlib.Path(directory) for name, directory in (artefacts or {}).items()}
    for name in given:
        if name not in params["profiles"]:
            raise ValueError(f"--artefacts {name}=...: no profile {name!r} in params.yaml (known: {', '.join(params['profiles'])})")
    given.setdefault(pipeline_profile, pathlib.Path("."))
    for required in (paths.STUDENT_QAT_TFLITE, paths.STUDENT_PTQ_TFLITE, paths.BUNDLE / "bundle.json",
                     paths.METRICS / "evaluation.json", *map(paths.split_file, ("train", "references", "queries"))):
        if not required.exists():
            raise FileNotFoundError(f"{required}: missing; run `dvc repro` before `pilltrack bench`")
    out_dir = pathlib.Path(out_dir)
    threads, repeats = settings["threads"], settings["repeats"]
    labels = runtime_labels(threads)
    report: dict = {"generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "machine": _machine(), "settings": settings, "pipeline_profile": pipeline_profile,
                    "runtimes": labels}
    phases = _Phases(echo)
    with tempfile.TemporaryDirectory(prefix="pilltrack-bench-") as directory:
        workdir = pathlib.Path(directory)
        phases.start("search", "search and device step (benchmarks/edge_speed.py)")
        search = search_benchmark(settings, workdir, echo)
        entries, files, keras_models = [], {}, {}
        phases.start("models", f"models of profiles {', '.join(settings['profiles'])}, the reference, the throughput convolution")
        for profile in dict.fromkeys([pipeline_profile, *settings["profiles"]]):  # the pipeline's always
            profile_entries, profile_files, profile_keras = profile_models(
                params, profile, given.get(profile), settings, workdir, echo)
            entries += profile_entries
            files.update(profile_files)
            keras_models.update(profile_keras)
        reference_path, keras_models["reference"] = reference_model(params, seed)
        files["reference"] = reference_path
        entries.append(_int8_entry(None, "reference", reference_path.read_bytes(), str(reference_path), None,
                                   {"synthetic": None, "real": None, "note": "untrained: speed and size reference"}))
        side, in_channels, out_channels = settings["peak_conv"]
        files["peak_conv"] = workdir / "peak_conv.tflite"
        files["peak_conv"].write_bytes(peak_conv_model(side, in_channels, out_channels, seed))
        peak_entry = _int8_entry(None, "peak_conv", files["peak_conv"].read_bytes(),
                                 f"{side}x{side}x{in_channels} -> {out_channels}, 3x3, untrained", None,
                                 {"synthetic": None, "real": None, "note": "throughput micro-benchmark"})
        entries.append(peak_entry)
        by_id = {entry["id"]: entry for entry in entries}

        phases.start("litert", f"LiteRT, 1 and {threads} threads, {repeats} invocations per model")
        jobs = [[f"{model_id}|{count}", str(path), count] for model_id, path in files.items()
                for count in sorted({1, threads})]
        litert = interpreter_timings(jobs, repeats)
        report["litert_version"] = litert["version"]
        for name, timing in litert["timings"].items():
            model_id, count = name.split("|")
            by_id[model_id]["latency"][f"litert_{count}"] = timing

        python = REPOSITORY / settings["tflite_runtime_python"]
        phases.start("tflite_runtime", f"tflite-runtime ({python}), 1 thread")
        edge = tflite_runtime_timings(python, [[model_id, str(path), 1] for model_id, path in files.items()], repeats)
        report["tflite_runtime"] = {"python": str(python), "version": edge.get("version"), "error": edge.get("error")}
        for model_id in files:
            by_id[model_id]["latency"]["tflite_runtime_1"] = (edge["timings"][model_id] if "timings" in edge
                                                              else {"error": edge["error"]})

        phases.start("tflm", f"TFLite Micro, {settings['micro_repeats']} invocations per model")
        for model_id, path in files.items():
            by_id[model_id]["latency"]["tflm"] = micro_timing(path.read_bytes(), settings["micro_repeats"])

        phases.start("parity", f"runtime parity of {paths.STUDENT_QAT_TFLITE}: gallery and queries under LiteRT, "
                     "tflite-runtime and TFLite Micro; every op alone under every pair of kernels")
        report["parity"] = runtime_parity(paths.STUDENT_QAT_TFLITE, python, settings["parity_queries"], seed, workdir,
                                          params["preprocess"]["symmetry_views"])

        phases.start("tensorflow", f"Keras models under TensorFlow, {repeats} invocations each")
        for model_id, keras_model in keras_models.items():
            by_id[model_id]["latency"]["tensorflow"] = keras_timing(keras_model, repeats)

        phases.start("baseline", "colour/shape baseline, per crop")
        evaluation = _read_json(paths.METRICS / "evaluation.json")
        baseline_entry = _entry(pipeline_profile, "baseline", format="features (no model)", trained=True,
                                source="tf_pilltrack/baseline.py",
                                accuracy=_accuracy(evaluation, "baseline", shots=params["prepare"]["reference_shots"]))
        from tf_pilltrack import baseline, dataset

        crop = dataset.load_split("train").pixels[0]
        baseline_entry["latency"]["numpy"] = numpy_timing(baseline.describe, crop, repeats)
        entries.insert(len([entry for entry in entries if entry["profile"] is not None]), baseline_entry)
        phases.stop()

    peak = {runtime: peak_entry["macs"] / (timing["median_ms"] / 1000.0)
            for runtime, timing in peak_entry["latency"].items() if "median_ms" in timing}
    report["peak_int8_macs_per_second"] = peak
    _derive(entries, peak)
    for entry in entries:  # report order of runtimes
        entry["latency"] = {key: entry["latency"][key] for key in labels if key in entry["latency"]}
    step = _device_step(search)
    _attach_device_step(entries, step, f"{pipeline_profile}/student_qat_int8")
    report["models"] = entries
    report["search"] = _search_rows(search)
    report["device_step"] = step
    report["search_benchmark"] = {key: value for key, value in search.items() if key not in ("search", "device_step")}
    report["training"] = {stage: _read_json(paths.METRICS / f"{stage}.json") for stage in ("teacher", "distill")}
    export_report = _read_json(paths.REPORTS / "export.json")
    report["training"]["export_seconds"] = export_report.get("seconds") if export_report else None
    report["repro_seconds"] = repro_seconds
    report["firmware"] = _read_json(paths.METRICS / "firmware.json")  # stage `firmware`: the Cortex-M (emulated) row
    report["targets"] = evaluate_targets(report, settings["targets"])
    report["phase_seconds"] = phases.seconds
    report["machine"]["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    report["seconds"] = round(time.time() - started, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    report["plots"] = plot(report, out_dir)
    write_atomically(out_dir / "benchmark.json", json.dumps(report, indent=2).encode())
    markdown = to_markdown(report)
    write_atomically(out_dir / "benchmark.md", markdown.encode())
    echo(markdown)
    echo(f"bench: wrote {out_dir / 'benchmark.md'}, {out_dir / 'benchmark.json'} and plots in {report['seconds']:.0f} s")
    if "error" in search:
        raise RuntimeError(f"search benchmark: {search['error']}")
    return report


# ---------------------------------------------------------------------------------------------
# The report: markdown tables and plots
# ---------------------------------------------------------------------------------------------

ACCURACY_RUNTIME = {"Keras float32": "tensorflow", "int8 TFLite": "litert_1", "features (no model)": "numpy"}


def _bytes(value: int | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1024:,.0f} KiB" if value < 10 * 1024 * 1024 else f"{value / 1024 / 1024:,.1f} MiB"


def _macs(value: int | None) -> str:
    if not value:
        return "—"
    return f"{value / 1e9:.2f} G" if value >= 1e9 else f"{value / 1e6:.1f} M"


def _number(value, digits: int = 3, prefix: str = "") -> str:
    return "—" if value is None else f"{prefix}{value:.{digits}f}"


def _params_cell(values) -> str:
    if not isinstance(values, dict):
        return ""
    return ", ".join(f"{key} {value}" for key, value in values.items() if isinstance(value, (int, float, str))
                     and key not in ("call", "seed"))


def _accuracy_cell(entry: dict, kind: str, metric: str) -> str:
    values = entry["accuracy"][kind]
    if values and metric in values:
        return f"{values[metric]:.3f}"
    if entry["model"] in ("reference", "peak_conv"):
        return "—"
    if entry["trained"] is False:
        return "not trained"
    return NOT_MEASURED


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def _share(fraction: float) -> str:
    """A fraction as a percentage; a nonzero one too small for two decimals as "< 0.01%"."""
    return "< 0.01%" if 0.0 < fraction < 0.00005 else f"{fraction:.2%}"


def _parity_lines(parity: dict, labels: dict) -> list[str]:
    """The runtime-parity paragraph and tables: each runtime's raw int8 outputs and top-1 answers
    against the device's (LiteRT, XNNPACK), judged by the per-op tolerance; then each op alone, per
    pair of kernels."""
    labels = dict(labels, **{PARITY_BUILTIN: PARITY_LABEL})
    per_op = parity["per_op"]
    lines = [f"`{parity['model']}` on the evaluation gallery ({parity['gallery']:,} references) and "
             f"{parity['queries']:,} of {parity['queries_available']:,} queries, every runtime given the same uint8 "
             f"crops. Stated tolerance (tf_pilltrack/parity.py): each op alone, given identical inputs, within "
             f"{per_op['tolerance_steps']} int8 step between any two runtimes' kernels; tflite-runtime bit-exact with "
             "LiteRT's builtin kernels (the same kernels). The whole-model differences are those per-op roundings "
             "accumulated over the graph: reported, not judged. Δ: raw int8 output differences (one step: output "
             f"scale {parity['output_scale']:.4g}) from the device's, {labels[parity['reference_runtime']]} (XNNPACK, "
             "as `edge_runtime.interpreter` runs it), and from LiteRT's builtin kernels; per-op Δ: the largest "
             "difference of one op alone between this runtime's kernels and those two. Top-1: exact cosine nearest "
             "neighbour over the gallery embedded by the same runtime; cosine gap: the largest, over changed answers, "
             "of the device's similarity to its own top-1 item minus to this runtime's (small: a near tie).", ""]
    rows = []
    for name, row in parity["runtimes"].items():
        per_op_cells = [f"{row['per_op_max_steps']} / {row['per_op_max_steps_builtin']}",
                        f"≤ {row['tolerance_steps']} / ≤ {row['tolerance_steps_builtin']}"]
        if "error" in row:
            rows.append([labels[name], row["error"], "", "", *per_op_cells] + [""] * 7)
            continue
        gap = row["changed_max_cosine_gap"]
        rows.append([labels[name], str(row["max_abs_steps"]), f"{row['mean_abs_steps']:.3f}",
                     str(row["max_abs_steps_builtin"]), *per_op_cells,
                     "yes" if row["within_tolerance"] else "**no**", f"{row['identical_values']:.1%}",
                     f"{row['identical_embeddings']:.1%}", f"{row['top1_agreement']:.1%}",
                     f"{row['top1_index_agreement']:.1%}", "—" if gap is None else f"{gap:.4f}",
                     f"{row['recall_at_1']:.3f}"])
    lines += _table(["runtime", "max Δ vs device", "mean Δ vs device", "max Δ vs builtin",
                     "per-op Δ (device / builtin)", "tolerance per op", "within", "identical values",
                     "identical embeddings", "same top-1 answer", "same top-1 gallery item", "cosine gap",
                     "Recall@1 (exact)"], rows)
    lines += ["", f"Each of the {per_op['ops']} ops alone, fed LiteRT builtin kernels' own intermediates of the same "
              f"{per_op['inputs']:,} inputs (xnnpack: LiteRT with XNNPACK; builtin, ref: LiteRT's builtin and "
              "reference kernels; tflm: TFLite Micro). Op types: how many ops of the type differ, their largest "
              "difference and share of values differing; first divergent op: where the whole graph first differs.",
              ""]
    pair_rows = []
    for pair, figures in per_op["pairs"].items():
        types = ", ".join(f"{op_type} ×{worst['ops']} ≤ {worst['max_steps']} ({_share(worst['max_differing'])})"
                          for op_type, worst in figures["op_types"].items()) or "none"
        first = figures["first_divergent_op"]
        pair_rows.append([pair.replace("_vs_", " vs "), str(figures["max_steps"]), types,
                          "none (bit-exact)" if first is None else f"{first['index']} {first['type']}",
                          "yes" if figures["within_per_op_tolerance"] else "**no**"])
    return lines + _table(["kernels", "max Δ, op alone", "op types that differ alone", "first divergent op",
                           f"within ≤ {per_op['tolerance_steps']}"], pair_rows)


def to_markdown(report: dict) -> str:
    labels = report["runtimes"]
    machine = report["machine"]
    settings = report["settings"]
    lines = [
        "# PillTrack benchmark",
        "",
        f"`pilltrack bench`, {report['generated']}, on {machine['cpu']} ({machine['cores']} cores; load average "
        f"{machine['load_average_at_start'][0]} at start, {machine['load_average_at_end'][0]} at end); "
        f"{report['seconds']:.0f} s. Pipeline profile `{report['pipeline_profile']}`; "
        f"{settings['repeats']} timed invocations per model (TFLite Micro {settings['micro_repeats']}), after 10 untimed; "
        f"LiteRT {report.get('litert_version')}, tflite-runtime {report['tflite_runtime'].get('version') or report['tflite_runtime']['error']}.",
        "",
        "## Models × runtimes",
        "",
        "Accuracy: novel-class retrieval (`metrics/evaluation.json`; synthetic pills never trained on; real photos "
        "where the evaluation has them). × reference: invoke median / the reference model's under the same runtime. "
        "Floor: MACs / the runtime's measured int8 throughput (table below); floor / invoke: how close the invoke "
        "gets to it. Device step: preprocess + invoke + search, median ms, LiteRT 1 thread.",
        "",
    ]
    rows = []
    for entry in report["models"]:
        for runtime, timing in entry["latency"].items():
            step = entry.get("device_step") if runtime == "litert_1" else None
            step_cell = "" if not step else (f"{step['median_ms']:.3f}" if step["measured"] else f"≈{step['median_ms']:.3f}")
            measured = "median_ms" in timing
            size = _bytes(entry["bytes"]) + ("" if entry["size_kind"] in (None, "int8 file") else " (fp32 weights)")
            rows.append([
                entry["profile"] or "—", entry["label"], labels[runtime],
                _accuracy_cell(entry, "synthetic", "recall_at_1"), _accuracy_cell(entry, "synthetic", "map_at_r"),
                _accuracy_cell(entry, "real", "recall_at_1"), _accuracy_cell(entry, "real", "map_at_r"),
                size, _bytes(entry["arena_bytes"]), _macs(entry["macs"]),
                _number(timing.get("median_ms")) if measured else timing.get("error", NOT_MEASURED),
                _number(timing.get("p95_ms")) if measured else "",
                _number(timing.get("reference_ratio")), _number(timing.get("floor_ms")),
                "—" if timing.get("floor_fraction") is None else f"{timing['floor_fraction']:.0%}", step_cell,
            ])
    firmware_rows, firmware_note = cortex_m_row(report)
    for firmware_row in firmware_rows:  # after the same model's host rows
        same = [index for index, row in enumerate(rows) if row[:2] == firmware_row[:2]]
        rows.insert(same[-1] + 1 if same else len(rows), firmware_row)
    lines += _table(["profile", "model", "runtime", "Recall@1 synth", "mAP@R synth", "Recall@1 real", "mAP@R real",
                     "size", "TFLM arena", "MACs", "invoke median ms", "p95 ms", "× reference", "floor ms",
                     "floor / invoke", "device step ms"], rows)
    untrained = sorted({entry["profile"] for entry in report["models"] if entry["trained"] is False})
    notes = []
    if untrained:
        notes.append(f"Profile(s) {', '.join(untrained)}: {NOT_TRAINED}: built from params.yaml's architecture with "
                     "untrained weights and exported to int8 as `pilltrack export` does (arena, MACs, ops and "
                     "latency do not depend on the weights; accuracy does, and so does the file size by a few per "
                     "cent: the converter stores identical constant tensors once, and an untrained model's biases are "
                     "all zero). `--artefacts PROFILE=DIR` uses a trained run.")
    if any(entry.get("device_step") and not entry["device_step"]["measured"] for entry in report["models"]):
        notes.append("≈: device step estimated: the shipped model's measured device step with its invoke median "
                     "replaced by this model's (LiteRT, 1 thread; same preprocessing, search and I/O conversion).")
    real_what = next((entry["accuracy"].get("real_what") for entry in report["models"] if entry["accuracy"].get("real_what")), None)
    notes.append(f"Real columns: {real_what}; models the episodes do not evaluate say {NOT_MEASURED}." if real_what
                 else f"Real columns: {NOT_MEASURED} (metrics/evaluation.json has no real-photo episodes).")
    notes.append("Keras rows: size is float32 weights; the reference's TensorFlow row is the same architecture in Keras float32.")
    notes += firmware_note
    lines += [""] + [f"- {note}" for note in notes]

    lines += ["", "## int8 throughput: the compute floor", ""]
    peak = next(entry for entry in report["models"] if entry["model"] == "peak_conv")
    rows = [[labels[runtime], peak["source"], _macs(peak["macs"]), _number(timing.get("median_ms")),
             _number(report["peak_int8_macs_per_second"].get(runtime, 0) / 1e9, 1)]
            for runtime, timing in peak["latency"].items() if "median_ms" in timing]
    lines += _table(["runtime", "convolution", "MACs", "median ms", "GMAC/s"], rows)

    lines += ["", "## Size, TFLite Micro arena and the Edge TPU op report", ""]
    rows = []
    for entry in report["models"]:
        if entry["format"] != "int8 TFLite" or entry["model"] == "peak_conv":
            continue
        edgetpu = entry["edgetpu"]
        verdict = "compatible" if edgetpu["compatible"] else "not compatible"
        problems = ", ".join(filter(None, [
            f"CPU ops {', '.join(edgetpu['cpu_ops'])}" if edgetpu["cpu_ops"] else "",
            f"{len(edgetpu['float_tensors'])} float tensors" if edgetpu["float_tensors"] else "",
            f"{len(edgetpu['dynamic_tensors'])} dynamic tensors" if edgetpu["dynamic_tensors"] else "",
            f"batch {edgetpu['batch']}" if edgetpu["batch"] != 1 else ""]))
        reference = next(item for item in report["models"] if item["model"] == "reference")
        rows.append([entry["profile"] or "—", entry["label"], _bytes(entry["bytes"]),
                     f"{reference['bytes'] / entry['bytes']:.1f}x", _bytes(entry["arena_bytes"]), _macs(entry["macs"]),
                     ", ".join(entry["ops"]), verdict + (f" ({problems})" if problems else ""),
                     "yes" if entry["trained"] else ("—" if entry["trained"] is None else "no")])
    lines += _table(["profile", "model", "int8 size", "reference / size", "TFLM arena", "MACs", "ops",
                     "Edge TPU (checkable rules)", "trained"], rows)

    lines += ["", "## Runtime parity (shipped int8 model)", ""]
    lines += _parity_lines(report["parity"], labels)

    lines += ["", "## Search (`benchmarks/edge_speed.py`)", ""]
    if report["search"]:
        rows = [[row.get("library"), f"{row.get('gallery_size'):,}", _number(row.get("top1_agreement")),
                 _number(row.get("median_us"), 1), _number(row.get("p95_us"), 1), _number(row.get("build_s"), 2),
                 _bytes(row.get("index_bytes")), _params_cell(row.get("params"))]
                for row in report["search"]]
        lines += _table(["library", "gallery", "top-1 agreement with exact", "median µs", "p95 µs", "build s",
                         "index size", "params"], rows)
    else:
        lines.append(f"{NOT_MEASURED}: {report['search_benchmark'].get('error', 'no search rows in its report')}")
    step = report["device_step"]
    if step:
        lines += ["", f"Device step, {step.get('gallery_size', '?'):,} gallery, LiteRT 1 thread, shipped model:", ""]
        rows = [[stage, _number(values.get("median_ms")), _number(values.get("p95_ms"))]
                for stage, values in step["stages"].items()]
        rows += [["**preprocess + invoke + search**", _number(step["total_without_localise"].get("median_ms")),
                  _number(step["total_without_localise"].get("p95_ms"))]]
        if "total" in step:
            rows += [["total with localisation", _number(step["total"].get("median_ms")), _number(step["total"].get("p95_ms"))]]
        lines += _table(["stage", "median ms", "p95 ms"], rows)

    lines += ["", f"## Targets (profile `{settings['targets']['profile']}`)", ""]
    rows = []
    for row in report["targets"]:
        limit = ("≥ " if row["at_least"] else "≤ ") + f"{row['limit']:g} {row['unit']}".strip()
        measured = NOT_MEASURED if row["measured"] is None else f"{row['measured']:.3f} {row['unit']}".strip()
        verdict = "—" if row["met"] is None else ("**met**" if row["met"] else "**not met**")
        rows.append([row["target"], measured, limit, verdict, row["note"]])
    lines += _table(["target", "measured", "target", "result", "note"], rows)

    lines += ["", f"## Training (profile `{report['pipeline_profile']}`, pipeline figures)", ""]
    rows = []
    for stage in ("teacher", "distill"):
        values = report["training"].get(stage)
        rows.append([stage, _number(values.get("images_per_second"), 1) if values else NOT_MEASURED,
                     _number(values.get("seconds"), 1) if values else NOT_MEASURED])
    rows.append(["export", "—", _number(report["training"].get("export_seconds"), 1)])
    repro = report["repro_seconds"]
    rows.append(["`dvc repro` (whole default pipeline, wall)", "—",
                 f"{repro:.0f} ({repro / 60:.1f} min)" if repro is not None else "not given (--repro-seconds / --repro-times)"])
    lines += _table(["stage", "images / s", "seconds"], rows)
    lines += ["", "Plots: " + ", ".join(f"`{name}`" for name in report["plots"]), ""]
    return "\n".join(lines)


def plot(report: dict, out_dir: pathlib.Path) -> list[str]:
    """Accuracy (novel-class Recall@1: synthetic filled, real-photo episodes hollow) against size
    and against invoke latency, one colour per trained model; the baseline and the reference as
    lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    entries = report["models"]
    trained = [entry for entry in entries if entry["accuracy"]["synthetic"] and entry["model"] != "baseline"]
    baseline = next((entry for entry in entries if entry["model"] == "baseline"), None)
    reference = next(entry for entry in entries if entry["model"] == "reference")
    written = []
    for name, axis_label, value_of, reference_value in (
        ("benchmark_accuracy_vs_size.png", "size, KiB (int8 file; float32 weights for Keras models)",
         lambda entry: entry["bytes"] / 1024 if entry["bytes"] else None, reference["bytes"] / 1024),
        ("benchmark_accuracy_vs_latency.png", "invoke median, ms (LiteRT 1 thread; TensorFlow for Keras models)",
         lambda entry: entry["latency"].get(ACCURACY_RUNTIME.get(entry["format"], ""), {}).get("median_ms"),
         reference["latency"].get("litert_1", {}).get("median_ms")),
    ):
        figure, axes = plt.subplots(figsize=(8, 5))
        handles = []
        for number, entry in enumerate(trained):
            value = value_of(entry)
            if value is None:
                continue
            colour = f"C{number % 10}"
            synthetic, real = entry["accuracy"]["synthetic"]["recall_at_1"], (entry["accuracy"]["real"] or {}).get("recall_at_1")
            axes.scatter(value, synthetic, marker="o", color=colour, zorder=3)
            if real is not None:
                axes.scatter(value, real, marker="s", facecolors="none", edgecolors=colour, zorder=3)
                axes.plot([value, value], [synthetic, real], color=colour, linewidth=0.6, zorder=2)
            handles.append(Line2D([], [], marker="o", color=colour, linestyle="none",
                                  label=f"{entry['profile']}: {entry['label']}"))
        handles += [Line2D([], [], marker="o", color="grey", linestyle="none", label="synthetic novel classes"),
                    Line2D([], [], marker="s", markerfacecolor="none", color="grey", linestyle="none",
                           label="real photos (episodes)")]
        if baseline:
            for kind, style in (("synthetic", "--"), ("real", "-.")):
                if baseline["accuracy"][kind]:
                    handles.append(axes.axhline(baseline["accuracy"][kind]["recall_at_1"], linestyle=style, color="grey",
                                                linewidth=1, label=f"colour/shape baseline ({kind})"))
        if reference_value:
            handles.append(axes.axvline(reference_value, linestyle=":", color="black",
                                        label="reference MobileNetV2 1.0 224 px int8"))
        axes.set_xscale("log")
        axes.margins(x=0.25)
        axes.set_xlabel(axis_label)
        axes.set_ylabel("novel-class Recall@1")
        axes.set_ylim(0.0, 1.0)
        axes.set_title(f"PillTrack: accuracy vs {'size' if 'size' in name else 'latency'} (trained models)")
        axes.legend(handles=handles, fontsize=7, loc="upper left")
        figure.tight_layout()
        figure.savefig(out_dir / name, dpi=120)
        plt.close(figure)
        written.append(name)
    return written


def cortex_m_row(report: dict) -> tuple[list[list[str]], list[str]]:
    """The "Cortex-M (emulated)" row of the models table and its note, from stage `firmware`'s
    metrics/firmware.json (none when it is absent or the firmware was not built): its latency is
    an estimate from the instructions counted under QEMU, not a timing of this machine."""
    firmware = report.get("firmware")
    if not firmware or not firmware.get("built"):
        return [], []
    shipped = next((entry for entry in report["models"]
                    if entry["id"] == f"{firmware['profile']}/student_qat_int8"), None)
    assumption = firmware["latency_assumption"]
    row = [firmware["profile"], MODEL_LABELS["student_qat_int8"], f"Cortex-M (emulated, {firmware['core']})",
           *[NOT_MEASURED] * 4, f"{_bytes(firmware['flash_bytes'])} flash", _bytes(firmware["ram"]["arena_used_bytes"]),
           _macs(shipped["macs"]) if shipped else "", f"≈{firmware['estimated_latency_ms']:.0f}", "", "", "", "", ""]
    note = (f"Cortex-M (emulated): `pilltrack firmware` (metrics/firmware.json), TFLite Micro with CMSIS-NN on "
            f"QEMU {firmware['machine']}; size: the firmware's flash (model, runtime, kernels); invoke ≈: "
            f"{firmware['instructions_per_inference']['median']:,.0f} instructions per inference counted by QEMU × "
            f"{assumption['cycles_per_instruction']:g} cycles per instruction at {assumption['clock_mhz']:g} MHz "
            f"({assumption['board']}): an estimate, not timed; TFLM arena: used of the reserved "
            f"{_bytes(firmware['ram']['arena_bytes'])}. Its int8 outputs for {firmware['agreement']['crops']} real crops "
            f"differ from TFLite Micro's on this host by at most "
            f"{firmware['agreement']['tflite_micro']['max_step_difference']} steps.")
    return [row], [note]
