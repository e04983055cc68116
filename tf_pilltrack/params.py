"""params.yaml: loaded once, validated, and handed to each stage as plain dictionaries (which the
stage turns into typed settings once, tf_pilltrack.settings).

The schema below lists every key with its type and allowed range and nothing else: the values
(and their meanings, in comments) live only in params.yaml. A missing key, an unknown key, a
wrong type or an out-of-range value is one `ParamsError` naming the key, raised before any
stage starts work. Values are shown cut short (`limits.shown`): a malformed one may be huge, as a
YAML alias bomb is, and the message is one line. The file is read only if it is a regular file
of at most MAX_PARAMS_BYTES.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
from typing import Any, Callable

import yaml

from edge_runtime import storage
from edge_runtime.limits import MAX_ANNOY_TREES, MAX_IMAGE_PIXELS, MAX_SHOWN_CHARS, SYMMETRY_VIEWS, shown
from edge_runtime.preprocessing import AUTO, PreprocessConfig, is_localise_mode

MAX_PARAMS_BYTES = 1 << 20  # params.yaml is a few kilobytes; a larger file is refused unread


class ParamsError(ValueError):
    """params.yaml is invalid; the message names the key."""


class ParamsFileError(ParamsError):
    """params.yaml cannot be read or parsed; the message starts with the file's path."""


def _integer(low: int | None = None, high: int | None = None) -> Callable[[str, Any], None]:
    def check(key: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer, got {shown(value)}")
        _check_range(key, value, low, high)

    return check


def _number(low: float | None = None, high: float | None = None) -> Callable[[str, Any], None]:
    def check(key: str, value: Any) -> None:
        # YAML's .nan and .inf are floats too; NaN would pass every range check below.
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or (isinstance(value, float) and not math.isfinite(value))):
            raise ParamsError(f"{key}: expected a finite number, got {shown(value)}")
        _check_range(key, value, low, high)

    return check


def _check_range(key: str, value: float, low: float | None, high: float | None) -> None:
    if low is not None and value < low:
        raise ParamsError(f"{key}: {shown(value)} is below the minimum {low}")
    if high is not None and value > high:
        raise ParamsError(f"{key}: {shown(value)} is above the maximum {high}")


def _boolean(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ParamsError(f"{key}: expected true or false, got {shown(value)}")


def _localise_mode(key: str, value: Any) -> None:
    if not is_localise_mode(value):
        raise ParamsError(f"{key}: expected true, false or {AUTO}, got {shown(value)}")


def _choice(*options: str) -> Callable[[str, Any], None]:
    def check(key: str, value: Any) -> None:
        if value not in options:
            raise ParamsError(f"{key}: {shown(value)} is not one of {', '.join(options)}")

    return check


def _one_of(values: tuple[int, ...]) -> Callable[[str, Any], None]:
    def check(key: str, value: Any) -> None:
        if isinstance(value, bool) or value not in values:
            raise ParamsError(f"{key}: {shown(value)} is not one of {', '.join(map(str, values))}")

    return check


def _text(key: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ParamsError(f"{key}: expected a non-empty string, got {shown(value)}")


def _integers(length: int, low: int) -> Callable[[str, Any], None]:
    def check(key: str, value: Any) -> None:
        if not isinstance(value, list) or len(value) != length:
            raise ParamsError(f"{key}: expected a list of {length} integers, got {shown(value)}")
        for position, item in enumerate(value):
            _integer(low)(f"{key}[{position}]", item)

    return check


def _list_of(item_check: Callable[[str, Any], None]) -> Callable[[str, Any], None]:
    """A non-empty list without repeats, each item passing `item_check`."""
    def check(key: str, value: Any) -> None:
        if not isinstance(value, list) or not value:
            raise ParamsError(f"{key}: expected a non-empty list, got {shown(value)}")
        for position, item in enumerate(value):
            item_check(f"{key}[{position}]", item)
        if len(set(value)) != len(value):
            raise ParamsError(f"{key}: repeated values in {shown(value)}")

    return check


def _mapping(keys: dict[str, Callable[[str, Any], None]]) -> Callable[[str, Any], None]:
    return lambda key, value: _check_section(key, value, keys)


_BENCH_TARGETS = {
    "profile": _text,
    "gallery_size": _integer(1),
    "max_device_step_ms": _number(0.0),
    "min_speedup": _number(0.0),
    "min_size_ratio": _number(0.0),
    "min_annoy_agreement": _number(0.0, 1.0),
    "max_annoy_lookup_us": _number(0.0),
}

_TIERS = {  # enroll.tiers: the counter page's "likely" tier (tf_pilltrack/scoring/tiers.py)
    "gallery_pills": _integer(2, 1000),
    "shots": _integer(1, 1000),
    "episodes": _integer(1, 10_000),
    "likely_right": _number(0.0, 1.0),
    "absent_likely": _number(0.0, 1.0),
    "distance_steps": _integer(2, 10_001),
    "gaps": _list_of(_number(0.0, 2.0)),
    "seed": _integer(0, 2**31 - 1),
}

_PROFILE = {
    "image_size": _integer(16, 512),
    "student_alpha": _number(0.1, 1.4),
    "student_last_channels": _integer(8, 2048),
    "student_stages": lambda key, value: _stages(key, value),
}


def _stages(key: str, value: Any) -> None:
    if not isinstance(value, list) or not value:
        raise ParamsError(f"{key}: expected a list of [expansion, channels, repeats, stride]")
    for position, stage in enumerate(value):
        _integers(4, 1)(f"{key}[{position}]", stage)
        if stage[3] not in (1, 2):
            raise ParamsError(f"{key}[{position}]: stride must be 1 or 2, got {stage[3]}")

def _optional(check: Callable[[str, Any], None]) -> Callable[[str, Any], None]:
    """`check`, or null (YAML's null, ~ or an empty value: no limit)."""
    return lambda key, value: None if value is None else check(key, value)


_BUDGET = {
    "max_model_bytes": _integer(1),
    "max_arena_bytes": _integer(1),
    "max_invoke_ms": _number(0.0),
    "max_reference_ratio": _number(0.0, 1.0),
    "min_recall_at_1": _number(0.0, 1.0),
    "max_firmware_flash_bytes": _optional(_integer(1)),
    "max_firmware_ram_bytes": _optional(_integer(1)),
}

FIRMWARE_CORES = ("cortex-m4",)  # tf_pilltrack/firmware/build.py's CORES, checked against it by tests/test_firmware.py

SCHEMA: dict[str, dict[str, Callable[[str, Any], None]]] = {
    "base": {"seed": _integer(0, 2**31 - 1), "profile": _text, "threads": _integer(1, 1024)},
    "data": {
        "source": _text,
        "synthetic_classes": _integer(4),
        "synthetic_images_per_class": _integer(2),
        "synthetic_photo_size": _integer(32, 1024),
        "max_image_pixels": _integer(1, MAX_IMAGE_PIXELS),
        "reference_source": _text,
        "reference_types": _integer(0),
        "reference_photos_per_type": _integer(0, 1000),
        "reference_faces": _choice("together", "apart"),
        "reference_share": _number(0.0, 1.0),
        "mix_source": _text,
        "mix_ratio": _number(0.0, 0.9),
        "mix_train_classes": _number(0.0, 1.0),
    },
    "preprocess": {
        "localise": _localise_mode,
        "min_pill_fraction": _number(0.0, 1.0),
        "max_pill_fraction": _number(0.0, 1.0),
        "crop_margin": _number(0.0, 1.0),
        "symmetry_views": _one_of(SYMMETRY_VIEWS),
    },
    "prepare": {
        "novel_classes": _number(0.0, 1.0),
        "calibration_classes": _number(0.0, 1.0),
        "absent_classes": _number(0.0, 1.0),
        "reference_shots": _integer(1),
    },
    "teacher": {
        "backbone": _choice("resnet", "efficientnet_lite0"),
        "pretrained": _choice("imagenet", "none"),
        "image_size": _optional(_integer(8, 512)),
        "embedding_size": _integer(2, 1024),
        "widths": _integers(4, 1),
        "blocks": _integers(4, 1),
        "loss": _choice("triplet", "multisimilarity"),
        "triplet_margin": _number(0.0, 2.0),
        "positive_mining": _choice("hard", "easy"),
        "negative_mining": _choice("semi-hard", "hard", "easy"),
        "epochs": _integer(1),
        "steps_per_epoch": _integer(1),
        "classes_per_batch": _integer(2),
        "examples_per_class": _integer(2),
        "learning_rate": _number(0.0, 1.0),
        "frozen_epochs": _integer(0),
    },
    "distill": {
        "float_epochs": _integer(0),
        "qat_epochs": _integer(0),
        "steps_per_epoch": _integer(1),
        "classes_per_batch": _integer(2),
        "examples_per_class": _integer(2),
        "learning_rate": _number(0.0, 1.0),
        "qat_learning_rate": _number(0.0, 1.0),
        "embedding_weight": _number(0.0),
        "relation_weight": _number(0.0),
        "triplet_weight": _number(0.0),
        "triplet_margin": _number(0.0, 2.0),
    },
    "export": {"calibration_images": _integer(1)},
    "enroll": {
        "annoy_trees": _integer(1, MAX_ANNOY_TREES),
        "search_k_agreement": _number(0.0, 1.0),
        "calibration_absent": _number(0.0, 1.0),
        "calibration_gallery_pills": _integer(2, 100_000),
        "calibration_galleries": _integer(1, 10_000),
        "min_named_correct": _number(0.0, 1.0),
        "max_absent_named": _number(0.0, 1.0),
        "rule_steps": _integer(2, 1000),
        "tiers": _mapping(_TIERS),
    },
    "augment": {
        "brightness": _number(0.0, 1.0),
        "contrast": _number(0.0, 1.0),
        "colour_cast": _number(0.0, 1.0),
        "saturation": _number(0.0, 1.0),
        "rotate": _boolean,
        "zoom": _number(0.0, 0.9),
    },
    "training": {
        "distribution": _choice("none", "mirrored", "multi_worker"),
        "input": _choice("memory", "stream"),
        "backup": _text,
    },
    "tracking": {"experiment": _text},
    "bench": {
        "profiles": _list_of(_text),
        "gallery_sizes": _list_of(_integer(10, 10_000_000)),
        "frames": _integer(1),
        "repeats": _integer(1),
        "micro_repeats": _integer(1),
        "threads": _integer(1, 256),
        "calibration_images": _integer(1),
        "peak_conv": _integers(3, 1),
        "tflite_runtime_python": _text,
        "parity_queries": _integer(0),
        "targets": _mapping(_BENCH_TARGETS),
    },
    "firmware": {
        "tflm_kit": _text,
        "build_cache": _text,
        "required": _boolean,
        "core": _choice(*FIRMWARE_CORES),
        "crops": _integer(1, 64),
        "tolerance_steps": _integer(0, 255),
        "emulator_timeout_s": _number(1.0, 86400.0),
        "board": _text,
        "clock_mhz": _number(1.0, 10_000.0),
        "cycles_per_instruction": _number(1.0, 100.0),
    },
    "episodes": {
        "count": _integer(1, 1000),
        "seed": _integer(0, 2**31 - 1),
        "shots": _list_of(_integer(1, 100)),
        "absent_classes": _number(0.0, 0.9),
        "views": _integer(2, 16),
        "keep_correct": _number(0.01, 1.0),
        "real_source": _text,
    },
}


def validate(params: Any) -> dict:
    """Check `params` against the schema; return it unchanged or raise ParamsError."""
    if not isinstance(params, dict):
        raise ParamsError("params.yaml must be a mapping of sections")
    expected = set(SCHEMA) | {"profiles", "budgets"}
    _check_keys("", params, expected)
    for section, keys in SCHEMA.items():
        _check_section(section, params[section], keys)
    for table, keys in (("profiles", _PROFILE), ("budgets", _BUDGET)):
        entries = params[table]
        if not isinstance(entries, dict) or not entries:
            raise ParamsError(f"{table}: expected a mapping of profile names")
        for name, values in entries.items():
            _check_section(f"{table}.{name}", values, keys)
    profile = params["base"]["profile"]
    for table in ("profiles", "budgets"):
        if profile not in params[table]:
            raise ParamsError(
                f"base.profile: {shown(profile)} has no entry in {table} "
                f"(known: {', '.join(params[table])})"
            )
    named = {f"bench.profiles[{position}]": name for position, name in enumerate(params["bench"]["profiles"])}
    named["bench.targets.profile"] = params["bench"]["targets"]["profile"]
    for key, name in named.items():
        if name not in params["profiles"]:
            raise ParamsError(f"{key}: {shown(name)} is not a profile (known: {', '.join(params['profiles'])})")
    preprocess = params["preprocess"]
    if preprocess["min_pill_fraction"] <= 0.0:  # PreprocessConfig needs 0 < min_pill_fraction
        raise ParamsError("preprocess.min_pill_fraction: must be above 0")
    if preprocess["min_pill_fraction"] >= preprocess["max_pill_fraction"]:
        raise ParamsError("preprocess.min_pill_fraction: must be below max_pill_fraction")
    prepare = params["prepare"]
    if prepare["novel_classes"] + prepare["calibration_classes"] >= 1.0:
        raise ParamsError("prepare.novel_classes: with calibration_classes it leaves no training class")
    if params["distill"]["float_epochs"] + params["distill"]["qat_epochs"] < 1:
        raise ParamsError("distill.float_epochs: float_epochs + qat_epochs must be at least 1")
    teacher = params["teacher"]
    if teacher["pretrained"] == "imagenet" and teacher["backbone"] != "efficientnet_lite0":
        raise ParamsError(f"teacher.pretrained: imagenet weights ship for efficientnet_lite0 only, "
                          f"not teacher.backbone {teacher['backbone']}")
    if teacher["frozen_epochs"] and teacher["backbone"] != "efficientnet_lite0":
        raise ParamsError("teacher.frozen_epochs: only an efficientnet_lite0 backbone can be frozen (0 for resnet)")
    if teacher["frozen_epochs"] >= teacher["epochs"]:
        raise ParamsError(f"teacher.frozen_epochs: {teacher['frozen_epochs']} leaves none of teacher.epochs "
                          f"{teacher['epochs']} to train the backbone")
    if params["training"]["distribution"] != "none" and params["training"]["input"] != "stream":
        raise ParamsError(f"training.input: {params['training']['distribution']} training needs input: stream "
                          "(the memory samplers cannot be split between replicas)")
    return params


def _check_keys(where: str, values: dict, expected: set[str]) -> None:
    prefix = f"{where}." if where else ""
    unknown = sorted(set(values) - expected, key=str)  # YAML keys need not all be strings
    if unknown:
        raise ParamsError(f"{prefix}{str(unknown[0])[:MAX_SHOWN_CHARS]}: unknown key (expected one of {', '.join(sorted(expected))})")
    missing = sorted(expected - set(values))
    if missing:
        raise ParamsError(f"{prefix}{missing[0]}: missing key")


def _check_section(section: str, values: Any, keys: dict) -> None:
    if not isinstance(values, dict):
        raise ParamsError(f"{section}: expected a mapping, got {shown(values)}")
    _check_keys(section, values, set(keys))
    for key, check in keys.items():
        check(f"{section}.{key}", values[key])


def load(path: str | pathlib.Path = "params.yaml") -> dict:
    """Read and validate params.yaml."""
    path = pathlib.Path(path)
    try:
        text = storage.read_regular(path, MAX_PARAMS_BYTES).decode("utf-8")
    except storage.FileRefused as error:  # a FIFO, a device, or over MAX_PARAMS_BYTES
        raise ParamsFileError(str(error)) from None
    except OSError as error:
        raise ParamsFileError(f"{path}: cannot be read ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise ParamsFileError(f"{path}: not UTF-8 text ({error})") from None
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ParamsFileError(f"{path}: not valid YAML ({_yaml_problem(error)})") from None
    except (ValueError, RecursionError) as error:  # an integer beyond Python's digit limit, nesting too deep
        raise ParamsFileError(f"{path}: not usable YAML ({_one_line(str(error) or type(error).__name__)})") from None
    return validate(params)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML parser's error in one line: "line 3, column 1: expected ..." (its own text spans
    several lines, with the offending line quoted)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return _one_line(where + problem)


def _one_line(text: str) -> str:
    """`text` with its lines joined by spaces, cut to MAX_SHOWN_CHARS: a message is one line."""
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS - 3] + "..."


def digest(params: dict) -> str:
    """SHA-256 of the params as canonical JSON (sorted keys), 12 hex digits: the end of the pipeline
    id of the stages' MLflow runs (tf_pilltrack.training.tracking)."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def sections(params: dict, names: tuple[str, ...]) -> dict[str, Any]:
    """The sections `names` of the params, by name, as validated: what a stage's MLflow run logs."""
    return {name: params[name] for name in names}


def profile(params: dict) -> dict:
    """The deployment profile named by base.profile."""
    return params["profiles"][params["base"]["profile"]]


def budget(params: dict) -> dict:
    """The budgets of the deployment profile named by base.profile."""
    return params["budgets"][params["base"]["profile"]]


def preprocess_config(params: dict) -> PreprocessConfig:
    """The preprocessing constants shared by training and the device."""
    values = params["preprocess"]
    return PreprocessConfig(
        image_size=profile(params)["image_size"],
        localise=values["localise"],
        min_pill_fraction=values["min_pill_fraction"],
        max_pill_fraction=values["max_pill_fraction"],
        crop_margin=values["crop_margin"],
        max_image_pixels=params["data"]["max_image_pixels"],
        symmetry_views=values["symmetry_views"],
    )
