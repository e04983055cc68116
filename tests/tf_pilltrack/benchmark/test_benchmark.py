"""`pilltrack bench` (tf_pilltrack/benchmark/) on the small pipeline's artefacts: it writes
benchmark.md, benchmark.json and the plots, well formed, for every model, runtime and gallery
size asked for. Small galleries and few repeats; nothing here asserts how fast anything is."""

from __future__ import annotations

import itertools
import json
import pathlib
import re

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from loopback import BIN, ROOT
from loopback import run as _run
from tf_pilltrack import params as params_module
from tf_pilltrack.cli import main
from tf_pilltrack.tflite.parity import RUNTIMES

PROFILE_MODELS = ("teacher", "student_float", "student_int8", "student_ptq_int8")
KERAS_RUNTIMES = {"tensorflow"}
INT8_RUNTIMES = {"litert_1", "litert_2", "tflite_runtime_1", "tflm"}
MAIN_COLUMNS = ("profile", "model", "runtime", "Recall@1 synth", "mAP@R synth", "Recall@1 real", "mAP@R real",
                "size", "TFLM arena", "MACs", "invoke median ms", "p95 ms", "× reference", "floor ms",
                "floor / invoke", "device step ms")


@pytest.fixture(scope="module")
def bench(pipeline, tmp_path_factory):
    """One `pilltrack bench` on the small pipeline, over three profiles: the pipeline's own
    (`tiny`), one built untrained from params (`untrained`, narrower) and one measured on
    artefacts given with --artefacts (`given`: the same architecture as tiny, this very run)."""
    work, env = pipeline["dir"], pipeline["env"]
    out = tmp_path_factory.mktemp("bench")
    params = yaml.safe_load((work / "params.yaml").read_text())
    tiny = params["profiles"]["tiny"]
    params["profiles"]["untrained"] = dict(tiny, image_size=24, student_stages=tiny["student_stages"][:2])
    params["profiles"]["given"] = dict(tiny)
    params["bench"]["profiles"] = ["tiny", "untrained", "given"]
    params_path = out / "params.yaml"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    result = _run([str(BIN / "pilltrack"), "bench", "--params", str(params_path), "--out", str(out / "reports"),
                   "--artefacts", f"given={work}", "--repro-seconds", "1234.5"], work, env)
    report = json.loads((out / "reports/benchmark.json").read_text())
    return {"out": out / "reports", "report": report, "stdout": result.stdout, "work": work,
            "markdown": (out / "reports/benchmark.md").read_text(), "params": params_module.load(params_path)}


def _tables(markdown: str) -> list[list[list[str]]]:
    """Markdown tables as lists of rows of cells (header first, separator dropped)."""
    tables, current = [], None
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if current is None:
                current = []
                tables.append(current)
            if not all(re.fullmatch(r"-+", cell) for cell in cells):
                current.append(cells)
        else:
            current = None
    return tables


def test_bench_writes_markdown_json_and_plots(bench):
    out = bench["out"]
    for name in ("benchmark.md", "benchmark.json", "benchmark_accuracy_vs_size.png",
                 "benchmark_accuracy_vs_latency.png"):
        assert (out / name).is_file(), name
    import matplotlib.image

    for name in bench["report"]["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert "# PillTrack benchmark" in bench["stdout"]  # the tables are printed too


def test_every_profile_model_and_runtime_has_a_row(bench):
    report = bench["report"]
    ids = [entry["id"] for entry in report["models"]]
    assert len(ids) == len(set(ids))
    for profile in ("tiny", "untrained", "given"):
        for model in PROFILE_MODELS:
            assert f"{profile}/{model}" in ids
    for model in ("reference", "baseline", "peak_conv"):
        assert model in ids or f"tiny/{model}" in ids
    for entry in report["models"]:
        assert entry["bytes"] is None or (isinstance(entry["bytes"], int) and entry["bytes"] > 0)
        runtimes = set(entry["latency"])
        if entry["format"] == "int8 TFLite":
            expected = INT8_RUNTIMES | ({"tensorflow"} if entry["model"] == "reference" else set())
            assert runtimes == expected, entry["id"]
            assert isinstance(entry["arena_bytes"], int) and entry["arena_bytes"] > 0
            assert entry["ops"] and entry["edgetpu"]["compatible"] in (True, False)
        elif entry["format"] == "Keras float32":
            assert runtimes == KERAS_RUNTIMES and entry["arena_bytes"] is None
        else:
            assert entry["model"] == "baseline" and runtimes == {"numpy"}
        for runtime, timing in entry["latency"].items():
            if "error" in timing:  # only the tflite-runtime environment may be missing
                assert runtime == "tflite_runtime_1" and timing["error"].startswith("not installed")
                continue
            assert timing["repeats"] == (2 if runtime == "tflm" else 5)
            assert 0.0 < timing["median_ms"] <= timing["p95_ms"]
            if entry["model"] in ("baseline", "peak_conv"):  # no ratio: not a model of the same kind
                assert timing.get("reference_ratio") is None
            else:
                assert timing["reference_ratio"] > 0.0
            if entry["format"] == "int8 TFLite" and runtime != "tensorflow":  # floors are int8 throughputs
                assert timing["floor_ms"] > 0.0 and timing["floor_fraction"] > 0.0
            else:
                assert timing["floor_ms"] is None


def test_macs_of_keras_and_tflite_graph_agree(bench):
    by_id = {entry["id"]: entry for entry in bench["report"]["models"]}
    for profile in ("tiny", "untrained", "given"):
        float_macs = by_id[f"{profile}/student_float"]["macs"]
        assert isinstance(float_macs, int) and float_macs > 0
        assert by_id[f"{profile}/student_int8"]["macs"] == float_macs
        assert by_id[f"{profile}/student_ptq_int8"]["macs"] == float_macs
        assert by_id[f"{profile}/teacher"]["macs"] > 0
    assert by_id["untrained/student_float"]["macs"] < by_id["tiny/student_float"]["macs"]
    side, inputs, outputs = bench["params"]["bench"]["peak_conv"]
    assert by_id["peak_conv"]["macs"] == side * side * inputs * outputs * 9


def test_accuracy_comes_from_the_evaluation_and_untrained_is_marked(bench):
    evaluation = json.loads((bench["work"] / "metrics/evaluation.json").read_text())
    by_id = {entry["id"]: entry for entry in bench["report"]["models"]}
    for model, key in (("teacher", "teacher"), ("student_float", "student_float"),
                       ("student_int8", "student_int8"), ("student_ptq_int8", "student_ptq_int8")):
        for profile in ("tiny", "given"):
            synthetic = by_id[f"{profile}/{model}"]["accuracy"]["synthetic"]
            assert synthetic["recall_at_1"] == pytest.approx(evaluation[key]["recall_at_1"])
            assert synthetic["map_at_r"] == pytest.approx(evaluation[key]["map_at_r"])
            assert by_id[f"{profile}/{model}"]["trained"] is True
        untrained = by_id[f"untrained/{model}"]
        assert untrained["trained"] is False
        assert untrained["accuracy"]["synthetic"] is None and untrained["accuracy"]["note"] == "not trained in this run"
    real = (evaluation.get("episodes") or {}).get("real")
    if real:  # the evaluation's real-photo few-shot episodes: K = the gallery's shots where evaluated, else the most
        evaluated = sorted(int(key.split("_", 1)[1]) for key in real if key.startswith("shots_"))
        shots = bench["params"]["prepare"]["reference_shots"]
        episodes = real[f"shots_{shots if shots in evaluated else evaluated[-1]}"]
        for model, key in (("teacher", "teacher"), ("student_int8", "student_int8"), ("baseline", "baseline_colour_shape")):
            measured = by_id[f"tiny/{model}"]["accuracy"]["real"]
            assert measured["recall_at_1"] == pytest.approx(episodes[key]["single"]["recall_at_1"])
            assert measured["map_at_r"] == pytest.approx(episodes[key]["single"]["map_at_r"])
        assert by_id["tiny/student_float"]["accuracy"]["real"] is None  # the episodes do not evaluate it
    else:
        assert all(entry["accuracy"]["real"] is None for entry in bench["report"]["models"])
    baseline = by_id["tiny/baseline"]["accuracy"]["synthetic"]
    assert baseline["recall_at_1"] == pytest.approx(evaluation["baseline_colour_shape"]["recall_at_1"])
    rows = [row for row in _tables(bench["markdown"])[0][1:] if row[0] == "untrained"]
    assert rows and all(row[3] == "not trained" for row in rows)


def test_search_rows_and_device_step_are_merged(bench):
    report = bench["report"]
    sizes = bench["params"]["bench"]["gallery_sizes"]
    libraries = {row["library"] for row in report["search"]}
    assert {"annoy", "exact"} <= libraries and len(libraries) >= 3  # and one other library
    for library in libraries:
        assert sorted(row["gallery_size"] for row in report["search"] if row["library"] == library) == sorted(sizes)
    for row in report["search"]:
        assert 0.0 <= row["top1_agreement"] <= 1.0
        assert 0.0 < row["median_us"] <= row["p95_us"]
        assert row["build_s"] >= 0.0 and isinstance(row["index_bytes"], int)
    step = report["device_step"]
    assert step["gallery_size"] == bench["params"]["bench"]["targets"]["gallery_size"]
    assert {"preprocess", "invoke", "search"} <= set(step["stages"])
    by_id = {entry["id"]: entry for entry in report["models"]}
    assert by_id["tiny/student_int8"]["device_step"]["measured"] is True
    assert by_id["tiny/student_int8"]["device_step"]["median_ms"] == step["total_without_localise"]["median_ms"]
    assert by_id["untrained/student_int8"]["device_step"]["measured"] is False
    assert by_id["tiny/teacher"]["device_step"] is None


def test_targets_training_and_repro_time_are_reported(bench):
    report = bench["report"]
    targets = report["targets"]
    names = " ".join(row["target"] for row in targets)
    for fragment in ("device step", "faster than the reference", "smaller than the reference", "Annoy top-1 agreement",
                     "Annoy lookup"):
        assert fragment in names
    for row in targets:
        assert row["met"] in (True, False, None)
        assert row["measured"] is None or isinstance(row["measured"], float)
        assert (row["met"] is None) == (row["measured"] is None)
    by_id = {entry["id"]: entry for entry in report["models"]}
    size_row = next(row for row in targets if "smaller" in row["target"])
    assert size_row["measured"] == pytest.approx(by_id["reference"]["bytes"] / by_id["tiny/student_int8"]["bytes"])
    assert report["repro_seconds"] == 1234.5 and "1234" in bench["markdown"]
    for stage in ("teacher", "distill"):
        assert report["training"][stage]["images_per_second"] > 0
    assert set(report["peak_int8_macs_per_second"]) >= {"litert_1", "tflm"}


def test_markdown_tables_are_well_formed(bench):
    tables = _tables(bench["markdown"])
    for table in tables:
        assert len({len(row) for row in table}) == 1, table[0]  # every row as wide as its header
    main_table = tables[0]
    assert tuple(main_table[0]) == MAIN_COLUMNS
    rows = sum(len(entry["latency"]) for entry in bench["report"]["models"])
    assert len(main_table) - 1 == rows
    for heading in ("## int8 throughput", "## Size, TFLite Micro arena and the Edge TPU op report",
                    "## Runtime parity", "## Search", "## Targets", "## Training"):
        assert heading in bench["markdown"]


def test_runtime_parity_is_reported(bench):
    """The shipped model's raw int8 outputs and top-1 answers under every runtime against the
    device's (LiteRT, XNNPACK): a row per runtime, well formed, judged by the per-op tolerance (not
    by its whole-model steps); every op alone under every pair of kernels. No assertion on how
    close they are beyond the device agreeing with itself (tests/tf_pilltrack/tflite/test_parity.py states the rest)."""
    parity = bench["report"]["parity"]
    queries = np.load(bench["work"] / "data/prepared/queries.npz")["labels"]
    gallery = np.load(bench["work"] / "data/prepared/references.npz")["labels"]
    assert parity["queries"] == min(bench["params"]["bench"]["parity_queries"] or len(queries), len(queries))
    assert parity["queries_available"] == len(queries) and parity["gallery"] == len(gallery)
    assert parity["model"].endswith("student_int8.tflite") and parity["output_scale"] > 0.0
    assert parity["reference_runtime"] == "litert_1" and "tolerance" in parity
    rows = parity["runtimes"]
    assert set(rows) == {"litert_1", "litert_builtin", "tflite_runtime_1", "tflm"}
    per_op = parity["per_op"]
    assert per_op["inputs"] == parity["gallery"] + parity["queries"] and per_op["tolerance_steps"] == 1
    assert all(per_op["exposed_output_identical"].values())
    assert set(per_op["pairs"]) == {f"{a}_vs_{b}" for a, b in itertools.combinations(RUNTIMES, 2)}
    for pair, figures in per_op["pairs"].items():
        assert figures["within_per_op_tolerance"] == (figures["max_steps"] <= per_op["tolerance_steps"])
        assert all(0 < worst["max_steps"] <= figures["max_steps"] and 0.0 < worst["max_differing"] <= 1.0
                   for worst in figures["op_types"].values())
        assert (figures["first_divergent_op"] is None) or 0 <= figures["first_divergent_op"]["index"] < per_op["ops"]
    for name, row in rows.items():
        assert isinstance(row["tolerance_steps"], int) and isinstance(row["tolerance_steps_builtin"], int)
        assert row["kernels"] in RUNTIMES
        assert 0 <= row["per_op_max_steps"] <= 255 and 0 <= row["per_op_max_steps_builtin"] <= 255
        if "error" in row:  # only the tflite-runtime environment may be missing
            assert name == "tflite_runtime_1" and row["error"].startswith("not installed")
            assert row["within_tolerance"] is None
            continue
        for key in ("identical_values", "identical_embeddings", "identical_values_builtin", "top1_agreement",
                    "top1_index_agreement", "recall_at_1"):
            assert 0.0 <= row[key] <= 1.0, (name, key)
        assert 0 <= row["max_abs_steps"] <= 255 and 0 <= row["max_abs_steps_builtin"] <= 255
        assert 0.0 <= row["mean_abs_steps"] <= row["max_abs_steps"]
        assert row["top1_index_agreement"] <= row["top1_agreement"]
        assert row["changed_answers"] == round((1.0 - row["top1_agreement"]) * parity["queries"])
        assert (row["changed_max_cosine_gap"] is None) == (row["changed_answers"] == 0)
        bit_exact = {"xnnpack": row["max_abs_steps"], "builtin": row["max_abs_steps_builtin"]}.get(row["kernels"], 0)
        assert row["within_tolerance"] == (row["per_op_max_steps"] <= row["tolerance_steps"]
                                           and row["per_op_max_steps_builtin"] <= row["tolerance_steps_builtin"]
                                           and bit_exact == 0)
    assert rows["tflite_runtime_1"]["kernels"] == rows["litert_builtin"]["kernels"] == "builtin"
    device = rows["litert_1"]
    assert device["max_abs_steps"] == 0 and device["identical_embeddings"] == 1.0 and device["top1_agreement"] == 1.0
    assert rows["litert_builtin"]["max_abs_steps_builtin"] == 0
    table = next(table for table in _tables(bench["markdown"]) if table[0][0] == "runtime" and "max Δ vs device" in table[0])
    assert len(table) - 1 == len(rows)
    table = next(table for table in _tables(bench["markdown"]) if table[0][0] == "kernels")
    assert len(table) - 1 == len(per_op["pairs"])


def test_bench_params_are_validated(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params_module.validate(params)
    params["bench"]["profiles"] = ["mcu", "nano"]
    with pytest.raises(params_module.ParamsError, match=r"^bench.profiles\[1\]: 'nano' is not a profile"):
        params_module.validate(params)
    params["bench"]["profiles"] = ["mcu"]
    del params["bench"]["targets"]["max_annoy_lookup_us"]
    with pytest.raises(params_module.ParamsError, match=r"^bench.targets.max_annoy_lookup_us: missing key"):
        params_module.validate(params)


def test_bench_cli_refuses_a_malformed_artefacts_option():
    result = CliRunner().invoke(main, ["bench", "--params", str(ROOT / "params.yaml"), "--artefacts", "pi"])
    assert result.exit_code == 2
    assert "PROFILE=DIR" in result.output


def test_graph_macs_counts_convolutions_and_dense_layers():
    """graph_macs on a model whose count is known by hand: 3x3 conv 8x8x3 -> 4 (same padding),
    depthwise 3x3 on 4 channels, dense 4 -> 2 after pooling."""
    import tf_keras

    from tf_pilltrack.benchmark.measurement import graph_macs, keras_macs
    from tf_pilltrack.tflite.conversion import converter

    inputs = tf_keras.layers.Input((8, 8, 3))
    x = tf_keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = tf_keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(2)(x))
    expected = 8 * 8 * 4 * 9 * 3 + 8 * 8 * 4 * 9 + 4 * 2
    assert keras_macs(model) == expected
    calibration = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    counted = graph_macs(converter(model, calibration).convert())
    assert counted["total"] == expected
    assert counted["by_op"] == {"CONV_2D": 8 * 8 * 4 * 27, "DEPTHWISE_CONV_2D": 8 * 8 * 4 * 9, "FULLY_CONNECTED": 8}


def test_repository_root_is_the_code_root():
    from tf_pilltrack.benchmark import search

    assert search.REPOSITORY == pathlib.Path(ROOT)
    assert (search.REPOSITORY / search.EDGE_SPEED).is_file()
