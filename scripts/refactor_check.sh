#!/usr/bin/env bash
# Show that a refactor changes no output: the small profile's `dvc repro` (tests/params_small.yaml,
# as the pipeline test runs it) of git revision BEFORE and of the working tree, each in a scratch
# copy, then every DVC output compared by md5. JSON outputs that differ are compared again without
# their timing fields (seconds, *_s, *_ms, images_per_second, reference_ratio, a timed budget's
# measured value), which no two runs share.
#
#   bash scripts/refactor_check.sh HEAD~1        # prints one line per output; exit 1 if any differs
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BEFORE=${1:?usage: bash scripts/refactor_check.sh BEFORE_REVISION}
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/refactor-check.XXXXXX")
BIN=$ROOT/.venv/bin

run_small_repro() {  # run_small_repro SOURCE_DIR WORK_DIR
    local source=$1 work=$2
    mkdir -p "$work/data"
    cp -r "$source/tf_pilltrack" "$source/edge_runtime" "$source/dvc.yaml" "$work/"
    find "$work" -name __pycache__ -prune -exec rm -rf {} +
    cp "$source/tests/params_small.yaml" "$work/params.yaml"
    cp -r "$source/data/real" "$work/data/real"
    (cd "$work" && git init -q && "$BIN/dvc" init -q && cp "$source/.dvc/config" .dvc/config \
        && env -u MLFLOW_TRACKING_URI PYTHONPATH="$work" PATH="$BIN:$PATH" "$BIN/dvc" repro -q > repro.log 2>&1) \
        || { echo "dvc repro failed in $work: see $work/repro.log" >&2; exit 2; }
}

mkdir -p "$SCRATCH/before-source"
git archive "$BEFORE" | tar -x -C "$SCRATCH/before-source"
run_small_repro "$SCRATCH/before-source" "$SCRATCH/before"
run_small_repro "$ROOT" "$SCRATCH/after"

"$BIN/python" - "$SCRATCH/before" "$SCRATCH/after" <<'PY'
import json, pathlib, re, sys
import yaml

TIMING = re.compile(r"(seconds|_s|_ms|images_per_second|reference_ratio)$")

def outputs(work):
    stages = yaml.safe_load((pathlib.Path(work) / "dvc.lock").read_text())["stages"]
    return {out["path"]: out.get("md5") for stage in stages.values() for out in stage.get("outs", [])}

def untimed(value):
    if isinstance(value, dict):
        timed_budget = re.search(r"invoke|time", str(value.get("budget", "")))  # reports/budget.json's rows
        return {key: untimed(item) for key, item in value.items()
                if not TIMING.search(key) and not (timed_budget and key in ("measured", "passed"))}
    if isinstance(value, list):
        return [untimed(item) for item in value]
    return value

before, after = sys.argv[1], sys.argv[2]
first, second = outputs(before), outputs(after)
changed = False
for path in sorted(set(first) | set(second)):
    if first.get(path) == second.get(path):
        verdict = "same"
    elif path.endswith(".json") and path in first and path in second and untimed(
            json.loads((pathlib.Path(before) / path).read_text())) == untimed(json.loads((pathlib.Path(after) / path).read_text())):
        verdict = "same but for timing fields"
    else:
        verdict, changed = "DIFFERS", True
    print(f"{verdict:<28} {path}")
print(f"scratch copies: {before} {after}")
sys.exit(1 if changed else 0)
PY
