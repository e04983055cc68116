"""The search benchmark: `edge_speed` (gallery search with Annoy, exact and usearch at
`bench.gallery_sizes`, and the device step per stage), run as
`python -m tf_pilltrack.benchmark.edge_speed` in a subprocess with the same interpreter, from the
code's root (`pilltrack bench` runs from the project's root, which may be a clone elsewhere: the
tests run it so); its JSON is merged into the report.

It stays a subprocess, not a function call in this process, for two reasons:
- edge_speed times search and the device step as the device client runs them, in a fresh process
  holding only that client's imports. Run here, it would share `pilltrack bench`'s process (its
  imports, TensorFlow's thread settings from `tf_pilltrack.pin_threads`) and leave its LiteRT,
  Annoy and usearch state and its galleries, up to the largest size, in the process that then
  builds and times every model: its figures and the later phases' could shift, and would not be
  measured as they were before.
- its failures end it with SystemExit (a missing split, no pill found): as a subprocess they are
  an exit status and its stderr, reported as the search benchmark's error after the rest of the
  report is written; in this process they would end `pilltrack bench` before it writes anything.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time
from typing import Callable

from tf_pilltrack import paths
from tf_pilltrack.settings import Bench

REPOSITORY = pathlib.Path(__file__).resolve().parents[2]  # where the code (and its environments) live
EDGE_SPEED = pathlib.Path("tf_pilltrack") / "benchmark" / "edge_speed.py"


def search_benchmark(settings: Bench, workdir: pathlib.Path, echo: Callable[[str], None]) -> dict:
    """Run tf_pilltrack/benchmark/edge_speed.py with the same interpreter on the project's bundle and
    data (the current directory), at `settings`' (bench's) gallery sizes and frames, the device step at the
    targets' gallery size; its JSON report, or
    {"error": ...}. It runs as `python -m tf_pilltrack.benchmark.edge_speed` from the code's root (the project
    may be a clone elsewhere), so every path it is given is absolute."""
    script = REPOSITORY / EDGE_SPEED
    module = ".".join(EDGE_SPEED.with_suffix("").parts)
    out = workdir.resolve() / "edge_benchmark.json"
    command = [sys.executable, "-m", module, "--sizes", *map(str, settings.gallery_sizes),
               "--frames", str(settings.frames), "--bundle", str(paths.BUNDLE.resolve()),
               "--data-root", str(pathlib.Path.cwd()),
               "--device-gallery", str(settings.targets.gallery_size), "--out", str(out)]
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


def device_step_of(search: dict) -> dict | None:
    """The device step of the search benchmark's report: gallery size, per-stage and total
    medians (ms), or None where it was not measured."""
    step = search.get("device_step")
    if not isinstance(step, dict) or "stages" not in step:
        return None
    return step


def search_rows_of(search: dict) -> list[dict]:
    rows = search.get("search")
    return rows if isinstance(rows, list) else []
