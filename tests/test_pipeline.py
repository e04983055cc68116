"""The whole pipeline, end to end, through `dvc repro` on the small profile (tests/params_small.yaml):
outputs, metrics, caching, what a params change reruns, MLflow runs, and the device client on
the pipeline's own bundle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import yaml

from loopback import BIN, ROOT
from loopback import run as _run

# The `pipeline` fixture (the project's copy after `dvc repro`, MLflow on a loopback server) is
# in tests/conftest.py, shared with tests/test_remote.py.


def test_repro_writes_every_artefact(pipeline):
    work = pipeline["dir"]
    for relative in ("data/synthetic/pill_types.json", "data/prepared/train.npz", "models/teacher.weights.h5",
                     "models/student_qat.weights.h5", "models/student_int8.tflite",
                     "models/student_ptq_int8.tflite", "models/micro/model_data.cc", "models/micro/model_data.h",
                     "models/micro/main.cc", "bundle/bundle.json", "metrics/evaluation.json",
                     "reports/recall_at_k.csv", "reports/data_report.json", "reports/export.json",
                     "reports/episode_answers.json"):
        assert (work / relative).is_file(), relative
    assert (work / "dvc.lock").is_file()


def test_enroll_chooses_the_counter_pages_tiers_for_its_bundle(pipeline):
    """Issue 36: the enroll stage writes bundle/tiers.json for the bundle's own model (what the
    counter page reads) and reports the held-out figures in reports/enroll.json."""
    from edge_runtime import evidence
    from edge_runtime.bundle import load_bundle

    work = pipeline["dir"]
    bundle = load_bundle(work / "bundle", verify_model=False)
    written = json.loads((work / "bundle" / evidence.TIERS_FILE).read_text())
    report = json.loads((work / "reports/enroll.json").read_text())["tiers"]
    assert written["model_sha256"] == bundle.model_sha256 and written["made_by"].startswith("pilltrack enroll")
    assert (written["likely_distance"], written["likely_gap"]) == (report["likely_distance"], report["likely_gap"])
    assert (report["likely"] == "on") if report["likely_distance"] >= 0 else report["likely"].startswith("off")
    settings = yaml.safe_load((work / "params.yaml").read_text())["enroll"]["tiers"]
    held = report["held_out"]
    assert written["measured"] == held and held["episodes_per_fold"] == settings["episodes"]
    assert held["targets"] == {"likely_right": settings["likely_right"], "absent_likely": settings["absent_likely"]}
    assert held["enrolled_queries"] > 0 and held["absent_queries"] > 0
    assert report["bundle_threshold"] == bundle.unknown_threshold
    tiers, note = evidence.load_tiers(str(work / "bundle"), bundle.model_sha256)
    assert tiers is not None and note.startswith("measured")


def test_evaluation_reports_every_model(pipeline):
    results = json.loads((pipeline["dir"] / "metrics/evaluation.json").read_text())
    for model in ("teacher", "student_float", "student_qat_keras", "student_ptq_int8", "student_int8"):
        for metric in ("recall_at_1", "recall_at_5", "map_at_r"):
            assert 0.0 <= results[model][metric] <= 1.0, (model, metric)
        assert results[model]["recall_at_1"] <= results[model]["recall_at_5"]
    shipped = results["student_int8"]
    assert 0.0 <= shipped["false_accept_rate"] <= 1.0
    # the close-call flag: calibrated into the bundle, scored on the novel queries
    sidecar = json.loads((pipeline["dir"] / "bundle/bundle.json").read_text())
    assert sidecar["lookalike_margin"] == shipped["lookalike_margin"] >= 0.0
    flagged, caught, kept = (shipped[key] for key in ("lookalike_flagged", "lookalike_errors_caught",
                                                       "recall_at_1_unflagged"))
    assert 0.0 <= flagged <= 1.0 and 0.0 <= caught <= 1.0 and 0.0 <= kept <= 1.0
    # the three agree with Recall@1: errors left unflagged = (1 - flagged) x (1 - Recall@1 of the rest)
    if shipped["recall_at_1"] < 1.0 and flagged < 1.0:
        assert (1.0 - caught) * (1.0 - shipped["recall_at_1"]) == pytest.approx((1.0 - flagged) * (1.0 - kept))
    assert 0.0 <= shipped["annoy_exact_top1_agreement"] <= 1.0
    parity = results["parity"]
    assert 0.0 < parity["qat_keras_vs_int8_embedding_cosine_median"] <= 1.0 + 1e-6
    assert 0.0 <= parity["qat_keras_vs_int8_near_tie_share"] <= 1.0
    # no disagreement, no disagreeing margin; a disagreement may sit on an exact Keras tie (margin 0), as
    # the toy profile's barely trained students give
    assert parity["qat_keras_vs_int8_largest_disagreeing_margin"] >= 0.0
    real = json.loads((pipeline["dir"] / "metrics/evaluation.json").read_text())["episodes"]["real"]
    largest = real[f"shots_{max(yaml.safe_load((pipeline['dir'] / 'params.yaml').read_text())['episodes']['shots'])}"]
    assert parity["real_int8_vs_teacher_recall_at_1"] == pytest.approx(
        largest["student_int8"]["single"]["recall_at_1"] / max(largest["teacher"]["single"]["recall_at_1"], 1e-9))
    if parity["qat_keras_vs_int8_top1_agreement"] == 1.0:
        assert parity["qat_keras_vs_int8_largest_disagreeing_margin"] == 0.0
    assert "Recall@1" in pipeline["first"].stdout  # the summary table a person reads


def test_evaluation_reports_episodes_on_synthetic_reference_and_real_data(pipeline):
    work = pipeline["dir"]
    params = yaml.safe_load((work / "params.yaml").read_text())["episodes"]
    episodes = json.loads((work / "metrics/evaluation.json").read_text())["episodes"]
    assert episodes["count"] == params["count"]
    # the shipped real set, through preprocess.localise (auto): its 557 photos less the one whose
    # pill the localiser cannot find (tylenol-er/IMG_6081-Medium__train__07.png), as in the default run
    assert episodes["real"]["images"] == 557 and episodes["real"]["classes"] == 17
    assert episodes["real"]["crops_used"] == 557 - episodes["real"]["localisation_no_pill_found"] == 556
    for data in ("synthetic", "reference", "real"):
        for shots in params["shots"]:
            entry = episodes[data][f"shots_{shots}"]
            assert entry["known_classes"] >= 2 and entry["absent_classes"] >= 1
            for model in ("baseline_colour_shape", "imagenet_frozen", "teacher", "student_ptq_int8", "student_int8"):
                for views in ("single", "multi"):
                    summary = entry[model][views]
                    assert summary["episodes"] == params["count"]
                    assert 0.0 <= summary["recall_at_1"] <= summary["recall_at_5"] <= 1.0
                    assert 0.0 <= summary["false_accept_rate_episode"] <= 1.0
                    assert summary["recall_at_1_std"] >= 0.0
            # only the int8 model has the bundle's calibrated threshold and look-alike margin
            assert "false_accept_rate_bundle" in entry["student_int8"]["single"]
            assert "recall_at_1_unflagged" in entry["student_int8"]["single"]
            assert "recall_at_1_unflagged" not in entry["teacher"]["single"]
            assert "false_accept_rate_bundle" not in entry["baseline_colour_shape"]["single"]
            # the device's naming rule: named answers, right among them, absent pills named
            rule = entry["student_int8"]["single"]
            assert all(0.0 <= rule[key] <= 1.0 for key in ("named_share_bundle", "named_correct_bundle",
                                                           "absent_named_bundle"))
            assert rule["named_share_bundle"] <= rule["correct_accept_rate_bundle"] + 1e-9 + (1.0 - rule["recall_at_1"])
    curve = episodes["real"]["risk_coverage"]["points"]
    assert curve and [point["named_share"] for point in curve] == sorted(point["named_share"] for point in curve)
    assert "Few-shot episodes" in pipeline["first"].stdout
    answers = json.loads((work / "reports/episode_answers.json").read_text())
    for data in ("synthetic", "reference", "real"):
        for shots in params["shots"]:
            tally = answers[data][f"shots_{shots}"]
            by_pill = tally["recall_at_1_by_pill"]
            assert len(by_pill) >= 2 and all(0.0 <= value <= 1.0 for value in by_pill.values())
            # a pill never taken for another has Recall@1 1.0, and only such pills
            confused = {row[0] for row in tally["confusions"]}
            assert all((by_pill[pill] == 1.0) == (pill not in confused) for pill in by_pill)
            assert all(row[0] != row[1] and row[2] >= 1 for row in tally["confusions"] + tally["false_accepts"])


def test_metrics_show_lists_evaluation(pipeline):
    shown = _run([str(BIN / "dvc"), "metrics", "show", "--json"], pipeline["dir"], pipeline["env"]).stdout
    assert "recall_at_1" in shown


def test_summary_prints_the_runs_headline_figures(pipeline):
    printed = _run([str(BIN / "pilltrack"), "summary"], pipeline["dir"], pipeline["env"]).stdout
    with open(os.path.join(pipeline["dir"], "metrics", "evaluation.json")) as handle:
        real = json.load(handle)["episodes"]["real"]
    most = max(int(key.removeprefix("shots_")) for key in real if key.startswith("shots_"))
    recall = real[f"shots_{most}"]["student_int8"]["single"]["recall_at_1"]
    assert f"real {most}-shot Recall@1 (int8)" in printed.splitlines()[1]  # the first figure
    assert f"{recall:.3f}" in printed.splitlines()[1]
    assert "budgets" in printed and "all passed" in printed


def test_second_repro_runs_nothing(pipeline):
    again = _run([str(BIN / "dvc"), "repro"], pipeline["dir"], pipeline["env"])
    assert "Running stage" not in again.stdout


def test_teacher_trains_the_same_weights_on_one_core(pipeline, tmp_path):
    """base.threads fixes TensorFlow's kernel threads, so the weights do not depend on the machine's
    cores: the teacher trained again from the same prepared data, pinned to one core, is the
    repro's own teacher bit for bit (without it, one core trains other weights)."""
    h5py = pytest.importorskip("h5py")
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip(f"this machine gives the tests {len(cores)} core: the pipeline already ran on one")
    work = pipeline["dir"]
    for name in ("tf_pilltrack", "edge_runtime", "data/prepared"):
        shutil.copytree(work / name, tmp_path / name)
    shutil.copy(work / "params.yaml", tmp_path / "params.yaml")
    env = {name: value for name, value in pipeline["env"].items() if name != "MLFLOW_TRACKING_URI"}  # a local store
    trained = subprocess.run([str(BIN / "pilltrack"), "teacher"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, preexec_fn=lambda: os.sched_setaffinity(0, {cores[0]}))
    assert trained.returncode == 0, trained.stderr[-4000:]

    def weights(path):
        found = {}
        with h5py.File(path, "r") as handle:
            handle.visititems(lambda key, item: found.__setitem__(key, item[()]) if isinstance(item, h5py.Dataset) else None)
        return found

    first, again = weights(work / "models/teacher.weights.h5"), weights(tmp_path / "models/teacher.weights.h5")
    assert first.keys() == again.keys() and first
    differing = [key for key in first if not (first[key] == again[key]).all()]
    assert not differing, f"{len(differing)} of {len(first)} weight arrays differ on one core, e.g. {differing[:3]}"


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
    import numpy as np

    with np.load(work / "data/prepared/references.npz", allow_pickle=False) as split:
        label, source = str(split["labels"][0]), str(split["sources"][0])
    photo = work / "data/synthetic" / source
    result = _run([str(BIN / "pilltrack-edge"), "--headless", "--threads", "1", "--image", str(photo)], work, env)
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    # the nearest pill is the photo's own: its enrolled embedding itself
    assert answer["top_k"][0]["label"] == label
    assert answer["distance"] < 0.01
    # and the bundle's naming rule decides the answer: the pill's name, unless a runner-up lies within the
    # look-alike margin (the toy profile's barely trained model may put one there), then "unknown"
    sidecar = json.loads((work / "bundle/bundle.json").read_text())
    runner_up = answer["top_k"][1]["distance"] if len(answer["top_k"]) > 1 else 2.0
    close_call = runner_up - answer["distance"] <= sidecar["lookalike_margin"]
    if answer["distance"] <= sidecar["unknown_threshold"] and not close_call:
        assert answer["label"] == label and answer["lookalike"] is None
    else:
        assert answer["label"] == "unknown"
        assert (answer["lookalike"] is not None) == (answer["distance"] <= sidecar["unknown_threshold"])


def test_mlflow_has_a_run_per_training_stage(pipeline):
    """The runs, read back from the MLflow server: one per training stage, grouped by the
    repro's pipeline id, with their params, one metric value per epoch and their artefacts."""
    import mlflow

    from tf_pilltrack import params as params_module

    uri = pipeline["env"]["MLFLOW_TRACKING_URI"]
    assert uri.startswith("http://127.0.0.1:")
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("pilltrack-tests")
    # the first repro's runs (a later test reruns distill with other params: another pipeline id)
    params = params_module.load(ROOT / "tests" / "params_small.yaml")
    pipeline_id = f"unknown-{params_module.digest(params)}"  # the copy's git has no commit
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.pipeline_id = '{pipeline_id}'")
    by_stage = {run.data.tags["stage"]: run for run in runs}
    assert {"teacher", "distill"} <= set(by_stage), [run.data.tags for run in runs]
    assert len(runs) == len(by_stage)  # one run per stage
    teacher, distill = by_stage["teacher"], by_stage["distill"]
    assert teacher.data.tags["git_commit"] == "unknown"
    # params: the sections each stage depends on
    assert teacher.data.params["teacher.epochs"] == str(params["teacher"]["epochs"])
    assert teacher.data.params["base.seed"] == str(params["base"]["seed"])
    assert distill.data.params["distill.qat_epochs"] == "1"
    # per-epoch metrics, one value per epoch (distillation's two phases make one history)
    for run, metric, epochs in (
            (teacher, "teacher_loss", params["teacher"]["epochs"]),
            (distill, "distill_loss", params["distill"]["float_epochs"] + params["distill"]["qat_epochs"])):
        history = client.get_metric_history(run.info.run_id, metric)
        assert sorted(point.step for point in history) == list(range(epochs)), (metric, history)
    assert "teacher_final_loss" in teacher.data.metrics
    # artefacts, stored through the server
    assert [item.path for item in client.list_artifacts(teacher.info.run_id)] == ["teacher.weights.h5"]
    assert "student_qat.weights.h5" in [item.path for item in client.list_artifacts(distill.info.run_id)]
    assert teacher.info.artifact_uri.startswith("mlflow-artifacts:")
    # the shipped int8 student, registered with its evaluation figures
    versions = client.search_model_versions("name='pilltrack-student-tiny'")
    assert versions and "novel_recall_at_1" in versions[0].tags


def test_distill_param_change_reruns_only_distill_and_after(pipeline):
    work, env = pipeline["dir"], pipeline["env"]
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["distill"]["qat_learning_rate"] = params["distill"]["qat_learning_rate"] / 2
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = _run([str(BIN / "dvc"), "repro"], work, env).stdout
    ran = {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}
    assert "distill" in ran
    assert not ran & {"generate", "prepare", "teacher"}
