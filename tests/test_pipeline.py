"""The whole pipeline, end to end, through `dvc repro` on the small profile (tests/params_small.yaml):
outputs, metrics, caching, what a params change reruns, MLflow runs, and the device client on
the pipeline's own bundle."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent


def _run(command: list[str], cwd: pathlib.Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """A copy of the project with the small params, after `dvc repro`."""
    work = tmp_path_factory.mktemp("pipeline")
    for name in ("tf_pilltrack", "edge_runtime"):
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", work / "dvc.yaml")
    shutil.copy(ROOT / "tests" / "params_small.yaml", work / "params.yaml")
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    env.pop("PILLTRACK_PIPELINE_ID", None)
    _run(["git", "init", "-q"], work, env)
    _run([str(BIN / "dvc"), "init", "-q"], work, env)
    first = _run([str(BIN / "dvc"), "repro"], work, env)
    return {"dir": work, "env": env, "first": first}


def test_repro_writes_every_artefact(pipeline):
    work = pipeline["dir"]
    for relative in ("data/synthetic/pill_types.json", "data/prepared/train.npz", "models/teacher.weights.h5",
                     "models/student_qat.weights.h5", "models/student_int8.tflite",
                     "models/student_ptq_int8.tflite", "models/micro/model_data.cc", "models/micro/model_data.h",
                     "models/micro/main.cc", "bundle/bundle.json", "metrics/evaluation.json",
                     "reports/recall_at_k.csv", "reports/data_report.json", "reports/export.json"):
        assert (work / relative).is_file(), relative
    assert (work / "dvc.lock").is_file()


def test_evaluation_reports_every_model(pipeline):
    results = json.loads((pipeline["dir"] / "metrics/evaluation.json").read_text())
    for model in ("teacher", "student_float", "student_qat_keras", "student_ptq_int8", "student_int8"):
        for metric in ("recall_at_1", "recall_at_5", "map_at_r"):
            assert 0.0 <= results[model][metric] <= 1.0, (model, metric)
        assert results[model]["recall_at_1"] <= results[model]["recall_at_5"]
    shipped = results["student_int8"]
    assert 0.0 <= shipped["false_accept_rate"] <= 1.0
    assert 0.0 <= shipped["annoy_exact_top1_agreement"] <= 1.0
    assert "Recall@1" in pipeline["first"].stdout  # the summary table a person reads


def test_metrics_show_lists_evaluation(pipeline):
    shown = _run([str(BIN / "dvc"), "metrics", "show", "--json"], pipeline["dir"], pipeline["env"]).stdout
    assert "recall_at_1" in shown


def test_second_repro_runs_nothing(pipeline):
    again = _run([str(BIN / "dvc"), "repro"], pipeline["dir"], pipeline["env"])
    assert "Running stage" not in again.stdout


def test_int8_model_fits_tflite_micro(pipeline):
    export = json.loads((pipeline["dir"] / "reports/export.json").read_text())
    assert export["qat"]["micro_arena_bytes"] > 0
    assert "DELEGATE" not in export["qat"]["ops"]
    assert export["qat"]["io"]["input"]["dtype"] == "uint8"
    assert export["qat"]["io"]["output"]["dtype"] == "int8"
    header = (pipeline["dir"] / "models/micro/model_data.h").read_text()
    source = (pipeline["dir"] / "models/micro/model_data.cc").read_text()
    example = (pipeline["dir"] / "models/micro/main.cc").read_text()
    model_bytes = (pipeline["dir"] / "models/student_int8.tflite").read_bytes()
    assert "alignas(16)" in source and f"g_pilltrack_model_len = {len(model_bytes)};" in source
    assert f"kPilltrackOpCount = {len(export['qat']['ops'])};" in header
    for call in ("AddConv2D", "AddDepthwiseConv2D", "AddFullyConnected"):
        assert f"resolver.{call}()" in example


def test_device_client_names_an_enrolled_photo(pipeline):
    """`pilltrack-edge --image` on a reference photo (raw, through localisation) answers its pill."""
    work, env = pipeline["dir"], pipeline["env"]
    from tf_pilltrack import paths  # noqa: F401  (paths are relative; read the split in `work`)
    import numpy as np

    with np.load(work / "data/prepared/references.npz", allow_pickle=False) as split:
        label, source = str(split["labels"][0]), str(split["sources"][0])
    photo = work / "data/synthetic" / source
    result = _run([str(BIN / "pilltrack-edge"), "--headless", "--threads", "1", "--image", str(photo)], work, env)
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["label"] == label
    assert answer["distance"] < 0.01  # the enrolled embedding itself


def test_mlflow_has_a_run_per_training_stage(pipeline):
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=pipeline["env"]["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("pilltrack-tests")
    runs = client.search_runs([experiment.experiment_id])
    by_stage = {run.data.tags["stage"]: run for run in runs}
    assert {"teacher", "distill"} <= set(by_stage)
    assert "teacher_loss" in by_stage["teacher"].data.metrics
    assert by_stage["distill"].data.params["distill.qat_epochs"] == "1"


def test_distill_param_change_reruns_only_distill_and_after(pipeline):
    work, env = pipeline["dir"], pipeline["env"]
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["distill"]["qat_learning_rate"] = params["distill"]["qat_learning_rate"] / 2
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = _run([str(BIN / "dvc"), "repro"], work, env).stdout
    ran = {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}
    assert "distill" in ran
    assert not ran & {"generate", "prepare", "teacher"}
