"""`pilltrack`: one command per pipeline stage (dvc.yaml runs them), run from the project root.

Each command reads and validates params.yaml before any work, then runs its stage module's
`run(params)`. Heavy modules are imported inside the command that needs them, so `--help` and
params errors are instant.
"""

from __future__ import annotations

import importlib
import pathlib
import sys

import click

import tf_pilltrack  # (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from edge_runtime.quiet import native_stderr_silenced
from tf_pilltrack import params as params_module

PARAMS_OPTION = click.option(
    "--params", "params_path", default="params.yaml", show_default=True,
    type=click.Path(dir_okay=False), help="Pipeline parameters file.",
)


def _load(params_path: str) -> dict:
    try:
        return params_module.load(params_path)
    except params_module.ParamsFileError as error:  # its message names the file already
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    except params_module.ParamsError as error:  # its message names the key
        click.echo(f"error: {params_path}: {error}", err=True)
        sys.exit(2)


def _run_stage(module: str, params_path: str, function: str = "run", **options) -> None:
    params = _load(params_path)
    tf_pilltrack.pin_threads(params["base"]["threads"])
    with native_stderr_silenced():  # TensorFlow's start-up lines (absl, oneDNN, the CUDA probe)
        stage = importlib.import_module(f"tf_pilltrack.{module}")
        _start_tensorflow()
    try:
        getattr(stage, function)(params, echo=lambda line: click.echo(line), **options)
    except (FileNotFoundError, ValueError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    except (RuntimeError, OSError) as error:  # budget.BudgetExceeded; a full disk (bundle.BundleWriteError)
        click.echo(f"error: {error}", err=True)
        sys.exit(1)


def _start_tensorflow() -> None:
    """Have TensorFlow, if the stage imported it, look for its devices now: the first op would do
    it later and print "failed call to cuInit" on a machine without a GPU. Threads can still be
    pinned afterwards (it starts no runtime context)."""
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        tf.config.list_physical_devices()


@click.group()
def main() -> None:
    """PillTrack training pipeline. `dvc repro` runs these stages in order:
    generate, prepare, teacher, distill, export, enroll, evaluate, reference, firmware, check."""


@main.command()
@PARAMS_OPTION
def generate(params_path: str) -> None:
    """Render the synthetic pill photo set into data/synthetic."""
    _run_stage("synthesis", params_path)


@main.command()
@PARAMS_OPTION
def prepare(params_path: str) -> None:
    """Crop the photos of data.source and split them by class into data/prepared."""
    _run_stage("preparation", params_path)


@main.command()
@PARAMS_OPTION
def teacher(params_path: str) -> None:
    """Train the ResNet teacher with TensorFlow Similarity (models/teacher.weights.h5)."""
    _run_stage("teacher", params_path)


@main.command()
@PARAMS_OPTION
def distill(params_path: str) -> None:
    """Distil the teacher's embedding space into the quantization-aware MobileNet student."""
    _run_stage("distillation", params_path)


@main.command()
@PARAMS_OPTION
def export(params_path: str) -> None:
    """Convert the student to full-integer int8 TFLite (QAT and PTQ) and a TFLite Micro C array."""
    _run_stage("export", params_path)


@main.command()
@PARAMS_OPTION
def enroll(params_path: str) -> None:
    """Embed the novel classes' reference shots with the int8 model; write the device bundle."""
    _run_stage("calibration", params_path)


@main.command()
@PARAMS_OPTION
def firmware(params_path: str) -> None:
    """Build the int8 model into a Cortex-M firmware (TFLite Micro, CMSIS-NN), run it under QEMU, measure it."""
    _run_stage("firmware", params_path)


@main.command()
@PARAMS_OPTION
def evaluate(params_path: str) -> None:
    """Open-set retrieval on novel classes for teacher, float student and int8 student."""
    _run_stage("evaluation", params_path)


@main.command()
@PARAMS_OPTION
def reference(params_path: str) -> None:
    """Convert the reference model (MobileNetV2 1.0, 224 px, int8) the latency budget compares with."""
    _run_stage("budget", params_path, "run_reference")


@main.command()
@PARAMS_OPTION
def check(params_path: str) -> None:
    """Compare size, arena, latency and accuracy with the profile's budgets; exit 1 if over."""
    _run_stage("budget", params_path)


@main.command()
@PARAMS_OPTION
def summary(params_path: str) -> None:
    """Print the headline figures of the last `dvc repro` (not a dvc stage; writes nothing)."""
    _run_stage("summary", params_path)


@main.command()
@PARAMS_OPTION
@click.option("--artefacts", "artefacts", multiple=True, metavar="PROFILE=DIR",
              help="A pipeline run of another profile (its models/ and metrics/) to measure instead of an "
                   "untrained build of it; repeatable.")
@click.option("--repro-seconds", type=click.FloatRange(min=0.0), default=None,
              help="Wall time of the default `dvc repro`, seconds, for the report.")
@click.option("--repro-times", nargs=2, type=click.Path(exists=True, dir_okay=False), default=None,
              metavar="START_FILE END_FILE", help="Files holding the unix seconds `dvc repro` started and ended.")
@click.option("--out", "out_dir", default="reports", show_default=True, type=click.Path(file_okay=False),
              help="Folder for benchmark.md, benchmark.json and the plots.")
def bench(params_path: str, artefacts: tuple[str, ...], repro_seconds: float | None,
          repro_times: tuple[str, str] | None, out_dir: str) -> None:
    """Benchmark every model and runtime: accuracy, size, arena, MACs, latency, search (not a dvc stage)."""
    given = {}
    for item in artefacts:
        profile, separator, directory = item.partition("=")
        if not separator or not profile or not directory:
            raise click.BadParameter(f"expected PROFILE=DIR, got {item!r}", param_hint="--artefacts")
        given[profile] = directory
    if repro_times:
        try:
            start, end = (float(pathlib.Path(path).read_text().strip()) for path in repro_times)
        except ValueError as error:
            raise click.BadParameter(f"not unix seconds ({error})", param_hint="--repro-times") from None
        repro_seconds = end - start
    _run_stage("benchmark", params_path, artefacts=given, repro_seconds=repro_seconds, out_dir=out_dir)
