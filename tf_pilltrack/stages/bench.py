"""`pilltrack bench`: benchmark every model under every runtime (tf_pilltrack.benchmark.suite), write
reports/benchmark.md, reports/benchmark.json and the plots, print the Markdown (not a dvc stage)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import tempfile
import time
from typing import Callable

from edge_runtime.storage import write_atomically
from tf_pilltrack import paths, settings
from tf_pilltrack.benchmark.entries import Calibration
from tf_pilltrack.benchmark.plots import plot
from tf_pilltrack.benchmark.report import to_markdown
from tf_pilltrack.benchmark.suite import (Models, Phases, assemble, given_artefacts, machine_facts, measure_all,
                                          require_pipeline_outputs, runtime_labels)


def write_report(report: dict, out_dir: pathlib.Path, echo: Callable[[str], None]) -> None:
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
    every = settings.from_params(params)
    bench, pipeline_profile, seed = every.bench, every.base.profile, every.base.seed
    given = given_artefacts(every.profiles, pipeline_profile, artefacts)
    require_pipeline_outputs()
    out_dir = pathlib.Path(out_dir)
    models = Models(
        pipeline_profile=pipeline_profile,
        profiles={name: every.profiles[name] for name in dict.fromkeys([pipeline_profile, *bench.profiles])},  # the pipeline's always
        teacher=every.teacher, shots=every.prepare.reference_shots,
        calibration=Calibration(every.preprocess_config, every.data.source, bench.calibration_images, seed),
        reference_calibration_images=every.export.calibration_images)
    report: dict = {"generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "machine": machine_facts(), "settings": dataclasses.asdict(bench), "pipeline_profile": pipeline_profile,
                    "runtimes": runtime_labels(bench.threads)}
    phases = Phases(echo)
    with tempfile.TemporaryDirectory(prefix="pilltrack-bench-") as directory:
        search, entries, peak_entry = measure_all(bench, models, seed, every.preprocess_config.symmetry_views, given,
                                                  report, phases, pathlib.Path(directory), echo)
    assemble(report, pipeline_profile, bench.targets, entries, peak_entry, search, repro_seconds)
    report["phase_seconds"] = phases.seconds
    report["machine"]["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    report["seconds"] = round(time.time() - started, 1)
    write_report(report, out_dir, echo)
    if "error" in search:
        raise RuntimeError(f"search benchmark: {search['error']}")
    return report
