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

Modules: `measurement` (MACs and invoke timings under each runtime), `entries` (the models
measured, their report entries and the figures derived from their timings), `search` (the search
benchmark's subprocess), `report` (`to_markdown`, the targets), `plots` (the two plots); here,
`run`, step by step.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import tempfile
import time
from typing import Callable

from edge_runtime.storage import write_atomically
from tf_pilltrack import paths
from tf_pilltrack.benchmark.entries import (EVALUATION_KEYS, MODEL_LABELS, NOT_MEASURED, NOT_TRAINED, accuracy_of,
                                            attach_device_step, derive_figures, make_entry, int8_entry, calibration_pixels,
                                            peak_conv_model, profile_models, reference_model)
from tf_pilltrack.benchmark.measurement import (INPUT_FILL, MAC_OPS, graph_macs, interpreter_timings, keras_macs,
                                                keras_timing, micro_timing, numpy_timing, tflite_runtime_timings)
from tf_pilltrack.benchmark.plots import ACCURACY_RUNTIME, plot
from tf_pilltrack.benchmark.report import cortex_m_row, evaluate_targets, to_markdown
from tf_pilltrack.benchmark.search import EDGE_SPEED, REPOSITORY, device_step_of, search_rows_of, search_benchmark
from tf_pilltrack.parity import runtime_parity

__all__ = [
    "ACCURACY_RUNTIME", "EDGE_SPEED", "EVALUATION_KEYS", "INPUT_FILL", "MAC_OPS", "MODEL_LABELS", "NOT_MEASURED",
    "NOT_TRAINED", "REPOSITORY", "calibration_pixels", "cortex_m_row", "evaluate_targets", "graph_macs",
    "interpreter_timings", "keras_macs", "keras_timing", "micro_timing", "numpy_timing", "peak_conv_model", "plot",
    "profile_models", "reference_model", "run", "runtime_labels", "search_benchmark", "tflite_runtime_timings",
    "to_markdown",
]


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


# ---------------------------------------------------------------------------------------------
# The run, step by step
# ---------------------------------------------------------------------------------------------


def _given_artefacts(params: dict, artefacts: dict | None) -> dict[str, pathlib.Path]:
    """`--artefacts PROFILE=DIR` as {profile: directory}, the pipeline's profile measured on this
    project's own artefacts; a profile params.yaml does not know is refused."""
    given = {name: pathlib.Path(directory) for name, directory in (artefacts or {}).items()}
    for name in given:
        if name not in params["profiles"]:
            raise ValueError(f"--artefacts {name}=...: no profile {name!r} in params.yaml (known: {', '.join(params['profiles'])})")
    given.setdefault(params["base"]["profile"], pathlib.Path("."))
    return given


def _require_pipeline_outputs() -> None:
    for required in (paths.STUDENT_QAT_TFLITE, paths.STUDENT_PTQ_TFLITE, paths.BUNDLE / "bundle.json",
                     paths.METRICS / "evaluation.json", *map(paths.split_file, ("train", "references", "queries"))):
        if not required.exists():
            raise FileNotFoundError(f"{required}: missing; run `dvc repro` before `pilltrack bench`")


def _build_models(params: dict, given: dict[str, pathlib.Path], workdir: pathlib.Path,
                  echo: Callable[[str], None]) -> tuple[list[dict], dict, dict, dict]:
    """Every profile's models, the reference and the throughput convolution: their entries, int8
    files {id: path}, Keras models {id: model} and the throughput convolution's entry."""
    settings, seed = params["bench"], params["base"]["seed"]
    entries, files, keras_models = [], {}, {}
    for profile in dict.fromkeys([params["base"]["profile"], *settings["profiles"]]):  # the pipeline's always
        profile_entries, profile_files, profile_keras = profile_models(
            params, profile, given.get(profile), settings, workdir, echo)
        entries += profile_entries
        files.update(profile_files)
        keras_models.update(profile_keras)
    reference_path, keras_models["reference"] = reference_model(params, seed)
    files["reference"] = reference_path
    entries.append(int8_entry(None, "reference", reference_path.read_bytes(), str(reference_path), None,
                               {"synthetic": None, "real": None, "note": "untrained: speed and size reference"}))
    side, in_channels, out_channels = settings["peak_conv"]
    files["peak_conv"] = workdir / "peak_conv.tflite"
    files["peak_conv"].write_bytes(peak_conv_model(side, in_channels, out_channels, seed))
    peak_entry = int8_entry(None, "peak_conv", files["peak_conv"].read_bytes(),
                             f"{side}x{side}x{in_channels} -> {out_channels}, 3x3, untrained", None,
                             {"synthetic": None, "real": None, "note": "throughput micro-benchmark"})
    entries.append(peak_entry)
    return entries, files, keras_models, peak_entry


def _time_interpreters(report: dict, by_id: dict, files: dict, python: pathlib.Path, settings: dict,
                       phases: _Phases) -> None:
    """Every int8 file under LiteRT (1 and N threads), tflite-runtime (1 thread) and TFLite Micro."""
    threads, repeats = settings["threads"], settings["repeats"]
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

    phases.start("tflm", f"TFLite Micro, {settings['micro_repeats']} invocations per model")
    for model_id, path in files.items():
        by_id[model_id]["latency"]["tflm"] = micro_timing(path.read_bytes(), settings["micro_repeats"])


def _baseline_entry(params: dict, repeats: int) -> dict:
    """The colour/shape baseline: its accuracy from the evaluation, its time per crop."""
    evaluation = _read_json(paths.METRICS / "evaluation.json")
    baseline_entry = make_entry(params["base"]["profile"], "baseline", format="features (no model)", trained=True,
                            source="tf_pilltrack/baseline.py",
                            accuracy=accuracy_of(evaluation, "baseline", shots=params["prepare"]["reference_shots"]))
    from tf_pilltrack import baseline, dataset

    crop = dataset.load_split("train").pixels[0]
    baseline_entry["latency"]["numpy"] = numpy_timing(baseline.describe, crop, repeats)
    return baseline_entry


def _measure(params: dict, given: dict[str, pathlib.Path], report: dict, phases: _Phases, workdir: pathlib.Path,
             echo: Callable[[str], None]) -> tuple[dict, list[dict], dict]:
    """Every phase in `workdir`: the search benchmark, the models, their timings under every
    runtime, runtime parity, the baseline. The search benchmark's report, the entries and the
    throughput convolution's entry."""
    settings, seed = params["bench"], params["base"]["seed"]
    phases.start("search", "search and device step (benchmarks/edge_speed.py)")
    search = search_benchmark(settings, workdir, echo)
    phases.start("models", f"models of profiles {', '.join(settings['profiles'])}, the reference, the throughput convolution")
    entries, files, keras_models, peak_entry = _build_models(params, given, workdir, echo)
    by_id = {entry["id"]: entry for entry in entries}

    python = REPOSITORY / settings["tflite_runtime_python"]
    _time_interpreters(report, by_id, files, python, settings, phases)

    phases.start("parity", f"runtime parity of {paths.STUDENT_QAT_TFLITE}: gallery and queries under LiteRT, "
                 "tflite-runtime and TFLite Micro; every op alone under every pair of kernels")
    report["parity"] = runtime_parity(paths.STUDENT_QAT_TFLITE, python, settings["parity_queries"], seed, workdir,
                                      params["preprocess"]["symmetry_views"])

    phases.start("tensorflow", f"Keras models under TensorFlow, {settings['repeats']} invocations each")
    for model_id, keras_model in keras_models.items():
        by_id[model_id]["latency"]["tensorflow"] = keras_timing(keras_model, settings["repeats"])

    phases.start("baseline", "colour/shape baseline, per crop")
    baseline_entry = _baseline_entry(params, settings["repeats"])
    entries.insert(len([entry for entry in entries if entry["profile"] is not None]), baseline_entry)
    phases.stop()
    return search, entries, peak_entry


def _assemble(report: dict, params: dict, entries: list[dict], peak_entry: dict, search: dict,
              repro_seconds: float | None) -> None:
    """The measured figures into `report`: derived ones (ratios, floors, device steps), the
    search rows, the pipeline's training and firmware figures, the targets."""
    peak = {runtime: peak_entry["macs"] / (timing["median_ms"] / 1000.0)
            for runtime, timing in peak_entry["latency"].items() if "median_ms" in timing}
    report["peak_int8_macs_per_second"] = peak
    derive_figures(entries, peak)
    for entry in entries:  # report order of runtimes
        entry["latency"] = {key: entry["latency"][key] for key in report["runtimes"] if key in entry["latency"]}
    step = device_step_of(search)
    attach_device_step(entries, step, f"{params['base']['profile']}/student_qat_int8")
    report["models"] = entries
    report["search"] = search_rows_of(search)
    report["device_step"] = step
    report["search_benchmark"] = {key: value for key, value in search.items() if key not in ("search", "device_step")}
    report["training"] = {stage: _read_json(paths.METRICS / f"{stage}.json") for stage in ("teacher", "distill")}
    export_report = _read_json(paths.REPORTS / "export.json")
    report["training"]["export_seconds"] = export_report.get("seconds") if export_report else None
    report["repro_seconds"] = repro_seconds
    report["firmware"] = _read_json(paths.METRICS / "firmware.json")  # stage `firmware`: the Cortex-M (emulated) row
    report["targets"] = evaluate_targets(report, params["bench"]["targets"])


def _write(report: dict, out_dir: pathlib.Path, echo: Callable[[str], None]) -> None:
    """The plots, benchmark.json and benchmark.md in `out_dir`; the Markdown echoed too."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report["plots"] = plot(report, out_dir)
    write_atomically(out_dir / "benchmark.json", json.dumps(report, indent=2).encode())
    markdown = to_markdown(report)
    write_atomically(out_dir / "benchmark.md", markdown.encode())
    echo(markdown)
    echo(f"bench: wrote {out_dir / 'benchmark.md'}, {out_dir / 'benchmark.json'} and plots in {report['seconds']:.0f} s")


def run(params: dict, echo: Callable[[str], None] = print, artefacts: dict | None = None,
        repro_seconds: float | None = None, out_dir: str | os.PathLike = paths.REPORTS) -> dict:
    """`pilltrack bench`: measure, assemble and write the report (see the module's docstring);
    the report. A failed search benchmark is raised (RuntimeError) after the report is written."""
    started = time.time()
    settings = params["bench"]
    given = _given_artefacts(params, artefacts)
    _require_pipeline_outputs()
    out_dir = pathlib.Path(out_dir)
    report: dict = {"generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "machine": _machine(), "settings": settings, "pipeline_profile": params["base"]["profile"],
                    "runtimes": runtime_labels(settings["threads"])}
    phases = _Phases(echo)
    with tempfile.TemporaryDirectory(prefix="pilltrack-bench-") as directory:
        search, entries, peak_entry = _measure(params, given, report, phases, pathlib.Path(directory), echo)
    _assemble(report, params, entries, peak_entry, search, repro_seconds)
    report["phase_seconds"] = phases.seconds
    report["machine"]["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    report["seconds"] = round(time.time() - started, 1)
    _write(report, out_dir, echo)
    if "error" in search:
        raise RuntimeError(f"search benchmark: {search['error']}")
    return report
