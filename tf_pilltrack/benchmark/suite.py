"""The steps of `pilltrack bench` (tf_pilltrack/stages/bench.py): build or load every model, time it
under every runtime, run the search benchmark, assemble the report (see the package's docstring)."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import time
from typing import Callable, Iterable, Mapping, NamedTuple

from tf_pilltrack import paths
from tf_pilltrack.benchmark.entries import (SHIPPED_MODEL, Calibration, accuracy_of, attach_device_step, derive_figures,
                                            entry_id, int8_entry, make_entry, peak_conv_model, profile_models,
                                            reference_model)
from tf_pilltrack.benchmark.measurement import (interpreter_timings, keras_timing, micro_timing, numpy_timing, tflite_runtime_timings)
from tf_pilltrack.benchmark.report import evaluate_targets
from tf_pilltrack.benchmark.search import REPOSITORY, device_step_of, search_rows_of, search_benchmark
from tf_pilltrack.scoring import results
from tf_pilltrack.settings import Bench, BenchTargets, Profile, Teacher
from tf_pilltrack.tflite.parity import runtime_parity



def runtime_labels(threads: int) -> dict:
    """Runtime key -> what the report calls it, in report order."""
    labels = {"tensorflow": "TensorFlow (Keras, float32)", "litert_1": "LiteRT, 1 thread"}
    if threads > 1:
        labels[f"litert_{threads}"] = f"LiteRT, {threads} threads"
    labels.update({"tflite_runtime_1": "tflite-runtime, 1 thread", "tflm": "TFLite Micro (host)",
                   "numpy": "NumPy/OpenCV, per crop"})
    return labels


def machine_facts() -> dict:
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


class Models(NamedTuple):
    """What the models of the run are built from, as the stage reads params.yaml: `profiles`, the
    profiles measured by name, the pipeline's (`pipeline_profile`) first; the `teacher` section;
    `shots`, the reference shots of the accuracy figures (prepare.reference_shots); `calibration`,
    that of the profiles built untrained here; `reference_calibration_images`
    (export.calibration_images), the reference model's, when stage `reference` has not run."""
    pipeline_profile: str
    profiles: Mapping[str, Profile]
    teacher: Teacher
    shots: int
    calibration: Calibration
    reference_calibration_images: int


class Phases:
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


# ---------------------------------------------------------------------------------------------
# The run, step by step
# ---------------------------------------------------------------------------------------------


def given_artefacts(known_profiles: Iterable[str], pipeline_profile: str,
                    artefacts: dict | None) -> dict[str, pathlib.Path]:
    """`--artefacts PROFILE=DIR` as {profile: directory}, the pipeline's profile (`pipeline_profile`)
    measured on this project's own artefacts; a profile not among `known_profiles` (params.yaml's) is refused."""
    known = list(known_profiles)
    given = {name: pathlib.Path(directory) for name, directory in (artefacts or {}).items()}
    for name in given:
        if name not in known:
            raise ValueError(f"--artefacts {name}=...: no profile {name!r} in params.yaml (known: {', '.join(known)})")
    given.setdefault(pipeline_profile, pathlib.Path("."))
    return given


def require_pipeline_outputs() -> None:
    for required in (paths.STUDENT_QAT_TFLITE, paths.STUDENT_PTQ_TFLITE, paths.BUNDLE / "bundle.json",
                     paths.METRICS / "evaluation.json", *map(paths.split_file, ("train", "references", "queries"))):
        if not required.exists():
            raise FileNotFoundError(f"{required}: missing; run `dvc repro` before `pilltrack bench`")


def _build_models(models: Models, peak_conv: tuple[int, int, int], seed: int, given: dict[str, pathlib.Path],
                  workdir: pathlib.Path, echo: Callable[[str], None]) -> tuple[list[dict], dict, dict, dict]:
    """Every profile's models, the reference and the throughput convolution (`peak_conv`, bench.peak_conv):
    their entries, int8 files {id: path}, Keras models {id: model} and the throughput convolution's entry."""
    entries, files, keras_models = [], {}, {}
    for profile, architecture in models.profiles.items():
        profile_entries, profile_files, profile_keras = profile_models(
            profile, architecture, models.teacher, models.shots, given.get(profile), models.calibration, workdir, echo)
        entries += profile_entries
        files.update(profile_files)
        keras_models.update(profile_keras)
    reference_path, keras_models["reference"] = reference_model(models.reference_calibration_images, seed)
    files["reference"] = reference_path
    entries.append(int8_entry(None, "reference", reference_path.read_bytes(), str(reference_path), None,
                               {"synthetic": None, "real": None, "note": "untrained: speed and size reference"}))
    side, in_channels, out_channels = peak_conv
    files["peak_conv"] = workdir / "peak_conv.tflite"
    files["peak_conv"].write_bytes(peak_conv_model(side, in_channels, out_channels, seed))
    peak_entry = int8_entry(None, "peak_conv", files["peak_conv"].read_bytes(),
                             f"{side}x{side}x{in_channels} -> {out_channels}, 3x3, untrained", None,
                             {"synthetic": None, "real": None, "note": "throughput micro-benchmark"})
    entries.append(peak_entry)
    return entries, files, keras_models, peak_entry


def _time_interpreters(report: dict, by_id: dict, files: dict, python: pathlib.Path, settings: Bench,
                       phases: Phases) -> None:
    """Every int8 file under LiteRT (1 and N threads), tflite-runtime (1 thread) and TFLite Micro."""
    threads, repeats = settings.threads, settings.repeats
    phases.start("litert", f"LiteRT, 1 and {threads} threads, {repeats} invocations per model")
    jobs = [[f"{model_id}|{count}", str(path), count] for model_id, path in files.items()
            for count in sorted({1, threads})]
    litert = interpreter_timings(jobs, repeats)
    report["litert_version"] = litert["version"]
    for name, timing in litert["timings"].items():
        model_id, count = name.split("|")
        by_id[model_id]["latency"][f"litert_{count}"] = timing

    phases.start("tflite_runtime", f"tflite-runtime ({python}), 1 thread")
    edge = tflite_runtime_timings(python, [[model_id, str(path), 1] for model_id, path in files.items()], repeats)
    report["tflite_runtime"] = {"python": str(python), "version": edge.get("version"), "error": edge.get("error")}
    for model_id in files:
        by_id[model_id]["latency"]["tflite_runtime_1"] = (edge["timings"][model_id] if "timings" in edge
                                                          else {"error": edge["error"]})

    phases.start("tflm", f"TFLite Micro, {settings.micro_repeats} invocations per model")
    for model_id, path in files.items():
        by_id[model_id]["latency"]["tflm"] = micro_timing(path.read_bytes(), settings.micro_repeats)


def _baseline_entry(pipeline_profile: str, shots: int, repeats: int) -> dict:
    """The colour/shape baseline: its accuracy from the evaluation (`shots` reference shots), its time per crop."""
    evaluation = results.read_evaluation(paths.METRICS / "evaluation.json")
    baseline_entry = make_entry(pipeline_profile, "baseline", format="features (no model)", trained=True,
                            source="tf_pilltrack/scoring/baseline.py",
                            accuracy=accuracy_of(evaluation, "baseline", shots=shots))
    from tf_pilltrack.scoring import baseline
    from tf_pilltrack.data import dataset

    crop = dataset.load_split("train").pixels[0]
    baseline_entry["latency"]["numpy"] = numpy_timing(baseline.describe, crop, repeats)
    return baseline_entry


def measure_all(settings: Bench, models: Models, seed: int, symmetry_views: int, given: dict[str, pathlib.Path],
                report: dict, phases: Phases, workdir: pathlib.Path,
                echo: Callable[[str], None]) -> tuple[dict, list[dict], dict]:
    """Every phase in `workdir`: the search benchmark, the models, their timings under every
    runtime, runtime parity (the shipped model over `symmetry_views` views), the baseline. The
    search benchmark's report, the entries and the throughput convolution's entry."""
    phases.start("search", "search and device step (tf_pilltrack/benchmark/edge_speed.py)")
    search = search_benchmark(settings, workdir, echo)
    phases.start("models", f"models of profiles {', '.join(settings.profiles)}, the reference, the throughput convolution")
    entries, files, keras_models, peak_entry = _build_models(models, settings.peak_conv, seed, given, workdir, echo)
    by_id = {entry["id"]: entry for entry in entries}

    python = REPOSITORY / settings.tflite_runtime_python
    _time_interpreters(report, by_id, files, python, settings, phases)

    phases.start("parity", f"runtime parity of {paths.STUDENT_QAT_TFLITE}: gallery and queries under LiteRT, "
                 "tflite-runtime and TFLite Micro; every op alone under every pair of kernels")
    report["parity"] = runtime_parity(paths.STUDENT_QAT_TFLITE, python, settings.parity_queries, seed, workdir,
                                      symmetry_views)

    phases.start("tensorflow", f"Keras models under TensorFlow, {settings.repeats} invocations each")
    for model_id, keras_model in keras_models.items():
        by_id[model_id]["latency"]["tensorflow"] = keras_timing(keras_model, settings.repeats)

    phases.start("baseline", "colour/shape baseline, per crop")
    baseline_entry = _baseline_entry(models.pipeline_profile, models.shots, settings.repeats)
    entries.insert(len([entry for entry in entries if entry["profile"] is not None]), baseline_entry)
    phases.stop()
    return search, entries, peak_entry


def assemble(report: dict, pipeline_profile: str, targets: BenchTargets, entries: list[dict], peak_entry: dict,
             search: dict, repro_seconds: float | None) -> None:
    """The measured figures into `report`: derived ones (ratios, floors, device steps; the shipped
    model's of `pipeline_profile`), the search rows, the pipeline's training and firmware figures,
    the targets (bench.targets)."""
    peak = {runtime: peak_entry["macs"] / (timing["median_ms"] / 1000.0)
            for runtime, timing in peak_entry["latency"].items() if "median_ms" in timing}
    report["peak_int8_macs_per_second"] = peak
    derive_figures(entries, peak)
    for entry in entries:  # report order of runtimes
        entry["latency"] = {key: entry["latency"][key] for key in report["runtimes"] if key in entry["latency"]}
    step = device_step_of(search)
    attach_device_step(entries, step, entry_id(pipeline_profile, SHIPPED_MODEL))
    report["models"] = entries
    report["search"] = search_rows_of(search)
    report["device_step"] = step
    report["search_benchmark"] = {key: value for key, value in search.items() if key not in ("search", "device_step")}
    report["training"] = {stage: _read_json(paths.METRICS / f"{stage}.json") for stage in ("teacher", "distill")}
    export_report = _read_json(paths.REPORTS / "export.json")
    report["training"]["export_seconds"] = export_report.get("seconds") if export_report else None
    report["repro_seconds"] = repro_seconds
    report["firmware"] = _read_json(paths.METRICS / "firmware.json")  # stage `firmware`: the Cortex-M (emulated) row
    report["targets"] = evaluate_targets(report, targets)
