"""`pilltrack summary`: the headline figures, read from the run's metrics and budget report."""

from __future__ import annotations

import json

from tf_pilltrack.stages import summary


PARAMS = {"base": {"profile": "mcu"}, "episodes": {"shots": [1, 5]}}


def figures() -> tuple[dict, dict]:
    single = {"recall_at_1": 0.7, "recall_at_1_std": 0.04, "named_correct_bundle": 0.966,
              "absent_named_bundle": 0.008, "named_share_bundle": 0.149,
              "false_accept_rate_episode": 0.476, "auroc_known_vs_absent": 0.782}
    evaluation = {"episodes": {
        "real": {"shots_5": {"student_int8": {"single": single, "multi": {"recall_at_1": 0.8}}},
                 "shots_1": {"student_int8": {"single": {"recall_at_1": 0.5}}}},
        "reference": {"shots_5": {"student_int8": {"single": {"recall_at_1": 0.2}},
                                  "teacher": {"single": {"recall_at_1": 0.25}},
                                  "baseline_colour_shape": {"single": {"recall_at_1": 0.1}}}}}}
    budget = {"passed": False, "measured": {"model_bytes": 279904, "arena_bytes": 105792, "invoke_ms": 0.3}}
    return evaluation, budget


def test_rows_give_each_headline_figure_from_its_key():
    rows = dict(summary.headline_rows(*figures(), [1, 5]))
    assert rows["real 5-shot Recall@1 (int8)"] == "0.700 ± 0.040"
    assert rows["real 5-shot, two photos per query"] == "0.800"
    assert rows["real 1-shot Recall@1 (int8)"] == "0.500"
    assert rows["named answers right (device rule)"] == "96.6%"
    assert rows["absent pills' photos named"] == "0.8%"
    assert rows["enrolled pills' photos named"] == "14.9%"
    assert rows["real FAR at 90% of correct kept"] == "0.476"
    assert rows["novel reference types, 5-shot Recall@1 (int8)"] == "0.200 (teacher 0.250, colour/shape baseline 0.100)"
    assert rows["int8 model / TFLite Micro arena"] == "273 KiB / 103 KiB"
    assert rows["LiteRT invoke, one thread"] == "0.30 ms median"
    assert rows["budgets"] == "FAILED"


def test_figures_a_run_did_not_measure_say_so():
    evaluation, _ = figures()
    del evaluation["episodes"]["real"]
    rows = dict(summary.headline_rows(evaluation, None, [1, 5]))
    assert rows["real 5-shot Recall@1 (int8)"] == "not measured"
    assert rows["novel synthetic pills, 5-shot Recall@1 (int8)"] == "not measured"
    assert rows["int8 model / TFLite Micro arena"] == "not measured / not measured"
    assert rows["budgets"] == "not judged"


def test_run_reads_the_files_and_names_a_missing_or_broken_one(tmp_path, monkeypatch):
    evaluation, budget = figures()
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluation.json").write_text(json.dumps(evaluation))
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "budget.json").write_text("{not json")
    monkeypatch.chdir(tmp_path)
    lines = []
    summary.run(PARAMS, echo=lines.append)
    assert any("reports/budget.json is not readable JSON" in line for line in lines)
    assert any("0.700 ± 0.040" in line for line in lines)
    (tmp_path / "metrics" / "evaluation.json").unlink()
    lines.clear()
    summary.run(PARAMS, echo=lines.append)
    assert any("metrics/evaluation.json is missing" in line for line in lines)


def test_the_figures_follow_the_shots_params_names():
    evaluation, budget = figures()
    evaluation["episodes"]["real"]["shots_2"] = evaluation["episodes"]["real"].pop("shots_5")
    rows = dict(summary.headline_rows(evaluation, budget, [2, 1]))
    assert rows["real 2-shot Recall@1 (int8)"] == "0.700 ± 0.040"
    assert rows["real 1-shot Recall@1 (int8)"] == "0.500"
