"""`pilltrack`: one command per pipeline stage (dvc.yaml runs them), run from the project root.

Each command reads and validates params.yaml before any work, then imports its stage,
`tf_pilltrack/stages/<command>.py`, and runs its `run(params)`. The stage is imported inside the
command, so `--help` and params errors are instant.
"""

from __future__ import annotations

import contextlib
import pathlib
import sys
from typing import Callable, Iterator

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


def _start(params_path: str) -> dict:
    """The validated params, TensorFlow's threads pinned to base.threads before it starts."""
    params = _load(params_path)
    tf_pilltrack.pin_threads(params["base"]["threads"])
    return params


@contextlib.contextmanager
def _quiet_import() -> Iterator[None]:
    """Import the stage inside this block: TensorFlow's start-up lines (absl, oneDNN, the CUDA probe)
    are silenced, and TensorFlow, if the stage imported it, finds its devices before it ends."""
    with native_stderr_silenced():
        yield
        _start_tensorflow()


def _run(stage_run: Callable[..., object], params: dict, **options) -> None:
    """Run a stage's `run`; its errors become a message and an exit status."""
    try:
        stage_run(params, echo=lambda line: click.echo(line), **options)
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
    params = _start(params_path)
    with _quiet_import():
        from tf_pilltrack.stages import generate as stage
    _run(stage.run, params)


@main.command()
@PARAMS_OPTION
def prepare(params_path: str) -> None:
    """Crop the photos of data.source and split them by class into data/prepared."""
    params = _start(params_path)
    with _quiet_import():
        from tf_pilltrack.stages import prepare as stage
    _run(stage.run, params)


@main.command()
@PARAMS_OPTION
def teacher(params_path: str) -> None:
    """Train the ResNet teacher with TensorFlow Similarity (models/teacher.weights.h5)."""
    params = _start(params_path)
    with _quiet_import():
        from tf_pilltrack.stages import teacher as stage
    _run(stage.run, params)


@main.command()
@PARAMS_OPTION
def distill(params_path: str) -> None:
    """Distil the teacher's embedding space into the quantization-aware MobileNet student."""
    params = _start(params_path)
    with _quiet_import():
        from tf_pilltrack.stages import distill as stage
    _run(stage.run, params)


@main.command()
@PARAMS_OPTION
def export(params_path: str) -> None:
    """Convert the student to full-integer int8 TFLite (QAT and PTQ) and a TFLite Micro C array."""
    params = _start(params_path)
    with _quiet_import():
        from tf_pilltrack.stages import export as stage
    _run(stage.run, params)


@main.command()
@PARAMS_OPTION
def enroll(params_path: str) -> None:
    """Embed the novel classes' reference shots with the int8 model; write the device bundle."""
    params = _start(params_path)
    with _quiet_import():
        from tf_pilltrack.stages import enroll as stage
    _run(stage.run, params)


@main.command()
@PARAMS_OPTION
def firmware(params_path: str) -> None:
    """Build the int8 model into a Cortex-M firmware (TFLite Micro, CMSIS-NN), run it under QEMU, measure it."""
    params = _start(params_path)
    with _quiet_import():
        from tf_pilltrack.stages import firmware as stage
    _run(stage.run, params)


@main.command()
@PARAMS_OPTION
def evaluate(params_path: str) -> None:
    """Open-set retrieval on novel classes for teacher, float student and int8 student."""
    params = _start(params_path)
    with _quiet_import():
        from tf_pilltrack.stages import evaluate as stage
    _run(stage.run, params)


@main.command()
@PARAMS_OPTION
def reference(params_path: str) -> None:
    """Convert the reference model (MobileNetV2 1.0, 224 px, int8) the latency budget compares with."""
    params = _start(params_path)
    with _quiet_import():
        from tf_pilltrack.stages import reference as stage
    _run(stage.run, params)


@main.command()
@PARAMS_OPTION
def check(params_path: str) -> None:
    """Compare size, arena, latency and accuracy with the profile's budgets; exit 1 if over."""
    params = _start(params_path)
    with _quiet_import():
        from tf_pilltrack.stages import check as stage
    _run(stage.run, params)


@main.command()
@PARAMS_OPTION
def summary(params_path: str) -> None:
    """Print the headline figures of the last `dvc repro` (not a dvc stage; writes nothing)."""
    params = _start(params_path)
    with _quiet_import():
        from tf_pilltrack.stages import summary as stage
    _run(stage.run, params)


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
    params = _start(params_path)
    with _quiet_import():
        from tf_pilltrack.stages import bench as stage
    _run(stage.run, params, artefacts=given, repro_seconds=repro_seconds, out_dir=out_dir)
