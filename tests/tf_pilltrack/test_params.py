"""params.yaml validation (tf_pilltrack/params.py) and how the CLI reports a bad file.

TensorFlow-free: params, the CLI's params check and the preprocessing constants import only
PyYAML, click, numpy, OpenCV and Pillow.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from edge_runtime.preprocessing import PreprocessConfig
from tf_pilltrack import params as params_module
from tf_pilltrack import settings
from tf_pilltrack.cli import main
from tf_pilltrack.params import ParamsError

REPO = pathlib.Path(__file__).resolve().parents[2]
PARAMS_YAML = REPO / "params.yaml"
STAGE_COMMANDS = tuple(sorted(main.commands))  # every command reads params.yaml first


@pytest.fixture(scope="module")
def repo_params() -> dict:
    with open(PARAMS_YAML, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@pytest.fixture
def params(repo_params) -> dict:
    """A fresh, valid copy of the repository's params.yaml for a test to break."""
    return copy.deepcopy(repo_params)


def _set(params: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        params = params[key]
    params[last] = value


def _delete(params: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        params = params[key]
    del params[last]


def _rejects(params: dict, key: str) -> str:
    """Validate `params`, expecting one ParamsError whose message starts with `key`."""
    with pytest.raises(ParamsError) as caught:
        params_module.validate(params)
    message = str(caught.value)
    assert message.startswith(f"{key}:"), message
    return message


# --- the repository's file --------------------------------------------------------------------


def test_repository_params_validate():
    loaded = params_module.load(PARAMS_YAML)
    assert loaded["base"]["profile"] in loaded["profiles"]
    assert set(loaded) == set(params_module.SCHEMA) | {"profiles", "budgets"}


def test_validate_returns_params_unchanged(params):
    before = copy.deepcopy(params)
    assert params_module.validate(params) is params
    assert params == before


# --- missing and unknown keys -----------------------------------------------------------------


@pytest.mark.parametrize("dotted", [
    "teacher.epochs", "augment", "data.max_image_pixels", "profiles.mcu.student_stages",
    "budgets.pi.max_invoke_ms", "tracking.experiment",
])
def test_missing_key_is_named(params, dotted):
    _delete(params, dotted)
    message = _rejects(params, dotted)
    assert "missing key" in message


@pytest.mark.parametrize("dotted", [
    "extra_section", "teacher.epoch", "prepare.novel_clases", "profiles.mcu.dropout",
    "budgets.pi.max_power_mw",
])
def test_unknown_key_is_named(params, dotted):
    _set(params, dotted, 1)
    message = _rejects(params, dotted)
    assert "unknown key" in message


def test_unknown_keys_of_mixed_types_are_one_params_error(params):
    # YAML keys need not be strings (`1: x`); sorting them must not become a TypeError.
    params[1] = "x"
    params["zzz"] = "y"
    with pytest.raises(ParamsError, match="unknown key"):
        params_module.validate(params)


# --- types ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dotted, value, expected", [
    ("teacher.epochs", "20", "expected an integer"),
    ("teacher.epochs", True, "expected an integer"),  # bool is an int subclass in Python
    ("teacher.epochs", 20.0, "expected an integer"),
    ("base.seed", None, "expected an integer"),
    ("profiles.mcu.image_size", 64.5, "expected an integer"),
    ("budgets.mcu.max_model_bytes", "300 KB", "expected an integer"),
    ("teacher.learning_rate", "fast", "expected a finite number"),
    ("teacher.learning_rate", False, "expected a finite number"),
    ("teacher.learning_rate", float("nan"), "expected a finite number"),  # passes any range check
    ("distill.embedding_weight", float("inf"), "expected a finite number"),
    ("preprocess.localise", "yes", "expected true, false or auto"),
    ("preprocess.localise", 1, "expected true, false or auto"),
    ("teacher.loss", "contrastive", "is not one of triplet, multisimilarity"),
    ("teacher.negative_mining", "semihard", "is not one of"),
    ("tracking.experiment", "  ", "expected a non-empty string"),
    ("data.source", 3, "expected a non-empty string"),
    ("teacher.widths", [32, 64, 128], "expected a list of 4 integers"),
    ("teacher.blocks", "2,2,2,2", "expected a list of 4 integers"),
    ("teacher", 5, "expected a mapping"),
])
def test_wrong_type_is_named(params, dotted, value, expected):
    _set(params, dotted, value)
    message = _rejects(params, dotted)
    assert expected in message


def test_list_item_of_wrong_type_names_its_position(params):
    params["teacher"]["widths"] = [32, 64, "128", 256]
    _rejects(params, "teacher.widths[2]")


def test_number_accepts_an_integer(params):
    params["teacher"]["learning_rate"] = 1  # YAML `1` for a float parameter is fine
    params_module.validate(params)


def test_exponent_without_a_dot_is_a_string_in_yaml(tmp_path, params):
    # PyYAML (YAML 1.1) reads `2e-3` as a string; the error must still name the key.
    params["teacher"]["learning_rate"] = 0.0123456
    text = yaml.safe_dump(params)
    assert text.count("0.0123456") == 1
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("0.0123456", "2e-3"), encoding="utf-8")
    with pytest.raises(ParamsError, match=r"^teacher\.learning_rate: expected a finite number, got '2e-3'"):
        params_module.load(path)


# --- ranges -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dotted, value, expected", [
    ("teacher.epochs", 0, "below the minimum 1"),
    ("base.seed", -1, "below the minimum 0"),
    ("base.seed", 2**31, "above the maximum"),
    ("profiles.mcu.image_size", 4096, "above the maximum 512"),
    ("profiles.pi.student_alpha", 0.05, "below the minimum"),
    ("prepare.novel_classes", 1.5, "above the maximum 1.0"),
    ("budgets.mcu.min_recall_at_1", -0.1, "below the minimum 0.0"),
    ("enroll.annoy_trees", 1001, "above the maximum 1000"),
    ("data.max_image_pixels", 0, "below the minimum 1"),
])
def test_out_of_range_value_is_named(params, dotted, value, expected):
    _set(params, dotted, value)
    assert expected in _rejects(params, dotted)


@pytest.mark.parametrize("value", [3, 5, 16, True])
def test_symmetry_views_outside_the_allowed_counts_are_refused(params, value):
    # only 1, 2, 4 or 8 views exist (edge_runtime.limits.SYMMETRY_VIEWS): 3 must not pass here and fail in a stage
    params["preprocess"]["symmetry_views"] = value
    _rejects(params, "preprocess.symmetry_views")


@pytest.mark.parametrize("value", [0.0, 0])
def test_min_pill_fraction_zero_is_refused(params, value):
    # PreprocessConfig needs 0 < min_pill_fraction: refuse it here, naming the key, rather
    # than with a ValueError once a stage has started.
    params["preprocess"]["min_pill_fraction"] = value
    _rejects(params, "preprocess.min_pill_fraction")


@pytest.mark.parametrize("change, key", [
    ({"preprocess": {"min_pill_fraction": 0.5, "max_pill_fraction": 0.5}}, "preprocess.min_pill_fraction"),
    ({"prepare": {"novel_classes": 0.6, "calibration_classes": 0.4}}, "prepare.novel_classes"),
    ({"distill": {"float_epochs": 0, "qat_epochs": 0}}, "distill.float_epochs"),
    ({"teacher": {"backbone": "resnet", "pretrained": "imagenet", "frozen_epochs": 0}}, "teacher.pretrained"),
    ({"teacher": {"backbone": "resnet", "pretrained": "none", "frozen_epochs": 2}}, "teacher.frozen_epochs"),
    ({"teacher": {"backbone": "efficientnet_lite0", "epochs": 3, "frozen_epochs": 3}}, "teacher.frozen_epochs"),
])
def test_inconsistent_values_are_named(params, change, key):
    for section, values in change.items():
        params[section].update(values)
    _rejects(params, key)


def test_edges_of_cross_checks_are_accepted(params):
    params["distill"].update(float_epochs=0, qat_epochs=1)
    params["prepare"].update(novel_classes=0.5, calibration_classes=0.49)
    params["teacher"].update(backbone="efficientnet_lite0", pretrained="none", epochs=3, frozen_epochs=2)
    params_module.validate(params)


# --- profiles and budgets ---------------------------------------------------------------------


def test_unknown_profile_is_named(params):
    params["base"]["profile"] = "gpu"
    message = _rejects(params, "base.profile")
    assert "'gpu' has no entry in profiles" in message


def test_profile_missing_from_budgets_is_named(params):
    del params["budgets"]["pi"]
    params_module.validate(params)  # the mcu build does not need the pi budget
    params["base"]["profile"] = "pi"
    message = _rejects(params, "base.profile")
    assert "'pi' has no entry in budgets" in message


@pytest.mark.parametrize("table", ["profiles", "budgets"])
def test_empty_profile_table_is_named(params, table):
    params[table] = {}
    _rejects(params, table)


@pytest.mark.parametrize("stages, key, expected", [
    ([[1, 16, 1, 1], [6, 24, 2, 3]], "profiles.mcu.student_stages[1]", "stride must be 1 or 2"),
    ([[1, 16, 1]], "profiles.mcu.student_stages[0]", "expected a list of 4 integers"),
    ([[1, 16, 1, 1, 1]], "profiles.mcu.student_stages[0]", "expected a list of 4 integers"),
    ([[1, 16.0, 1, 1]], "profiles.mcu.student_stages[0][1]", "expected an integer"),
    ([[1, 16, 0, 1]], "profiles.mcu.student_stages[0][2]", "below the minimum 1"),
    ([[1, 16, True, 1]], "profiles.mcu.student_stages[0][2]", "expected an integer"),
    ([], "profiles.mcu.student_stages", "expected a list of [expansion"),
    ("[1, 16, 1, 1]", "profiles.mcu.student_stages", "expected a list of [expansion"),
    ([16], "profiles.mcu.student_stages[0]", "expected a list of 4 integers"),
])
def test_bad_student_stages_are_named(params, stages, key, expected):
    params["profiles"]["mcu"]["student_stages"] = stages
    assert expected in _rejects(params, key)


def test_profile_and_budget_follow_base_profile(params):
    assert settings.profile(params)["image_size"] == params["profiles"]["mcu"]["image_size"]
    params["base"]["profile"] = "pi"
    assert settings.profile(params) is params["profiles"]["pi"]
    assert settings.budget(params) is params["budgets"]["pi"]


# --- the file ---------------------------------------------------------------------------------


def test_load_missing_file_names_it(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ParamsError, match=r"nope\.yaml: cannot be read"):
        params_module.load(path)


def test_load_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("base:\n  seed: [1, 2\n", encoding="utf-8")
    with pytest.raises(ParamsError, match=r"broken\.yaml: not valid YAML"):
        params_module.load(path)


def test_load_binary_file_names_it(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00\x80 not text")
    with pytest.raises(ParamsError, match=r"binary\.yaml: not UTF-8 text"):
        params_module.load(path)


@pytest.mark.parametrize("text", ["", "- base\n- teacher\n", "just a string\n"])
def test_load_non_mapping_is_a_params_error(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ParamsError, match="must be a mapping of sections"):
        params_module.load(path)


def test_load_reads_the_file_it_is_given(tmp_path, repo_params):
    changed = copy.deepcopy(repo_params)
    changed["teacher"]["epochs"] = 3
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(changed), encoding="utf-8")
    assert params_module.load(path)["teacher"]["epochs"] == 3


# --- preprocessing constants ------------------------------------------------------------------


@pytest.mark.parametrize("profile_name", ["mcu", "pi"])
def test_preprocess_config_uses_the_profiles_image_size(params, profile_name):
    params["base"]["profile"] = profile_name
    params["profiles"]["pi"]["image_size"] = 80  # differs from mcu's 64 whatever the file says
    params["data"]["max_image_pixels"] = 1234
    config = settings.preprocess_config(params)
    assert isinstance(config, PreprocessConfig)
    assert config.image_size == params["profiles"][profile_name]["image_size"]
    assert config.to_dict() == {
        "image_size": params["profiles"][profile_name]["image_size"],
        "localise": params["preprocess"]["localise"],
        "min_pill_fraction": params["preprocess"]["min_pill_fraction"],
        "max_pill_fraction": params["preprocess"]["max_pill_fraction"],
        "crop_margin": params["preprocess"]["crop_margin"],
        "max_image_pixels": 1234,
        "symmetry_views": params["preprocess"]["symmetry_views"],
    }


@pytest.mark.parametrize("dotted, value", [
    ("preprocess.min_pill_fraction", 1e-9), ("preprocess.max_pill_fraction", 1.0),
    ("preprocess.crop_margin", 0.0), ("preprocess.crop_margin", 1.0),
    ("profiles.mcu.image_size", 16), ("data.max_image_pixels", 1),
])
def test_valid_edge_values_make_a_preprocess_config(params, dotted, value):
    # Whatever validates must be accepted by PreprocessConfig too (it runs inside the stages).
    _set(params, dotted, value)
    params_module.validate(params)
    settings.preprocess_config(params)


# --- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def bad_params_file(tmp_path, repo_params) -> pathlib.Path:
    bad = copy.deepcopy(repo_params)
    bad["teacher"]["epochs"] = "many"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad), encoding="utf-8")
    return path


@pytest.mark.parametrize("command", STAGE_COMMANDS)
def test_cli_reports_a_params_error_in_one_line(bad_params_file, command):
    result = CliRunner().invoke(main, [command, "--params", str(bad_params_file)])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {bad_params_file}: teacher.epochs: expected an integer")


def test_cli_reports_a_missing_params_file_in_one_line(tmp_path):
    missing = tmp_path / "missing.yaml"
    result = CliRunner().invoke(main, ["prepare", "--params", str(missing)])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "missing.yaml: cannot be read" in result.stderr


def test_cli_checks_params_before_importing_tensorflow(bad_params_file, tmp_path, repo_params):
    """In a fresh interpreter: every stage refuses bad params with exit code 2, and `prepare`
    with good params but a missing data source fails cleanly, all without TensorFlow."""
    good = copy.deepcopy(repo_params)
    good["data"]["source"] = str(tmp_path / "no-such-folder")
    good_path = tmp_path / "good.yaml"
    good_path.write_text(yaml.safe_dump(good), encoding="utf-8")
    code = (
        "import json, sys\n"
        "from click.testing import CliRunner\n"
        "from tf_pilltrack.cli import main\n"
        "out = {}\n"
        f"for command in {list(STAGE_COMMANDS)!r}:\n"
        f"    r = CliRunner().invoke(main, [command, '--params', {str(bad_params_file)!r}])\n"
        "    out[command] = [r.exit_code, r.stderr]\n"
        f"r = CliRunner().invoke(main, ['prepare', '--params', {str(good_path)!r}])\n"
        "out['prepare-missing-source'] = [r.exit_code, r.stderr]\n"
        "out['tensorflow_imported'] = 'tensorflow' in sys.modules\n"
        "print(json.dumps(out))\n"
    )
    finished = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                              text=True, check=True, env=_env_with_repo_on_path())
    out = json.loads(finished.stdout.strip().splitlines()[-1])
    assert out.pop("tensorflow_imported") is False
    exit_code, stderr = out.pop("prepare-missing-source")
    assert exit_code == 2
    assert "data source not found" in stderr and stderr.count("\n") == 1
    for command, (exit_code, stderr) in out.items():
        assert exit_code == 2, (command, stderr)
        assert "teacher.epochs" in stderr and stderr.count("\n") == 1, (command, stderr)


def _env_with_repo_on_path() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


@pytest.mark.parametrize("dotted, value, expected", [
    ("episodes.shots", [1, 5, 1], "repeated values"),
    ("episodes.shots", [], "non-empty list"),
    ("episodes.shots[0]", 0, "below the minimum 1"),
    ("episodes.views", 1, "below the minimum 2"),
    ("episodes.absent_classes", 0.95, "above the maximum 0.9"),
    ("preprocess.localise", "no", "expected true, false or auto"),
    ("episodes.real_source", "", "non-empty string"),
])
def test_bad_episode_settings_are_named(params, dotted, value, expected):
    if dotted.endswith("[0]"):
        params["episodes"]["shots"] = [value]
    else:
        _set(params, dotted, value)
    assert expected in _rejects(params, dotted)


@pytest.mark.parametrize("dotted, value, expected", [
    ("firmware.core", "cortex-m0", "is not one of cortex-m4"),
    ("firmware.required", "yes", "expected true or false"),
    ("firmware.crops", 0, "below the minimum 1"),
    ("firmware.tolerance_steps", -1, "below the minimum 0"),
    ("firmware.cycles_per_instruction", 0.5, "below the minimum 1.0"),
    ("firmware.clock_mhz", "64 MHz", "expected a finite number"),
    ("firmware.tflm_kit", "", "non-empty string"),
    ("budgets.mcu.max_firmware_flash_bytes", "512 KB", "expected an integer"),
    ("budgets.mcu.max_firmware_ram_bytes", 0, "below the minimum 1"),
])
def test_bad_firmware_settings_are_named(params, dotted, value, expected):
    _set(params, dotted, value)
    assert expected in _rejects(params, dotted)


def test_a_null_firmware_budget_means_no_limit(params):
    params["budgets"]["mcu"]["max_firmware_flash_bytes"] = None
    params_module.validate(params)
    _delete(params, "budgets.mcu.max_firmware_ram_bytes")
    assert "missing key" in _rejects(params, "budgets.mcu.max_firmware_ram_bytes")


# --- enroll.tiers: the counter page's "likely" tier (tf_pilltrack/scoring/tiers.py) --------------------


@pytest.mark.parametrize("dotted", ["enroll.tiers", "enroll.tiers.gaps", "enroll.tiers.seed",
                                    "enroll.tiers.likely_right", "enroll.tiers.distance_steps"])
def test_missing_tiers_key_is_named(params, dotted):
    _delete(params, dotted)
    assert "missing key" in _rejects(params, dotted)


@pytest.mark.parametrize("dotted, value, named, expected", [
    ("enroll.tiers", 5, "enroll.tiers", "expected a mapping"),
    ("enroll.tiers.gap", 0.1, "enroll.tiers.gap", "unknown key"),
    ("enroll.tiers.gallery_pills", 1, "enroll.tiers.gallery_pills", "below the minimum 2"),
    ("enroll.tiers.shots", 0, "enroll.tiers.shots", "below the minimum 1"),
    ("enroll.tiers.episodes", 2.5, "enroll.tiers.episodes", "expected an integer"),
    ("enroll.tiers.likely_right", 1.5, "enroll.tiers.likely_right", "above the maximum 1.0"),
    ("enroll.tiers.absent_likely", -0.1, "enroll.tiers.absent_likely", "below the minimum 0.0"),
    ("enroll.tiers.distance_steps", 1, "enroll.tiers.distance_steps", "below the minimum 2"),
    ("enroll.tiers.gaps", [], "enroll.tiers.gaps", "non-empty list"),
    ("enroll.tiers.gaps", [0.0, 0.1, 0.1], "enroll.tiers.gaps", "repeated values"),
    ("enroll.tiers.gaps", [0.0, "wide"], "enroll.tiers.gaps[1]", "expected a finite number"),
    ("enroll.tiers.seed", "36", "enroll.tiers.seed", "expected an integer"),
])
def test_bad_tiers_settings_are_named(params, dotted, value, named, expected):
    _set(params, dotted, value)
    assert expected in _rejects(params, named)


def test_the_small_profile_has_the_same_tiers_keys(repo_params):
    with open(REPO / "tests" / "params_small.yaml", encoding="utf-8") as handle:
        small = yaml.safe_load(handle)
    assert set(small["enroll"]["tiers"]) == set(repo_params["enroll"]["tiers"]) == set(settings.checks_of(settings.Tiers))
    params_module.validate(small)
