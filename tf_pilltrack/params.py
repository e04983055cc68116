"""params.yaml: loaded once, validated, and handed to each stage as plain dictionaries (which the
stage turns into typed settings once, tf_pilltrack.settings).

The schema is built from tf_pilltrack.settings, where each key is declared once, as a field of its
section's class with its check (type and allowed range, tf_pilltrack.checks) and nothing else: the
values (and their meanings, in comments) live only in params.yaml. A missing key, an unknown key, a
wrong type or an out-of-range value is one `ParamsError` naming the key, raised before any
stage starts work; the checks across keys are `validate`'s. Values are shown cut short
(`limits.shown`): a malformed one may be huge, as a YAML alias bomb is, and the message is one
line. The file is read only if it is a regular file of at most MAX_PARAMS_BYTES.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

import yaml

from edge_runtime import storage
from edge_runtime.limits import MAX_SHOWN_CHARS, shown
from tf_pilltrack import settings
from tf_pilltrack.checks import Check, ParamsError, check_keys, check_section
from tf_pilltrack.settings import checks_of
from tf_pilltrack.training.tracking import RunParams

__all__ = ["MAX_PARAMS_BYTES", "SCHEMA", "ParamsError", "ParamsFileError", "digest", "load", "run_params", "validate"]

MAX_PARAMS_BYTES = 1 << 20  # params.yaml is a few kilobytes; a larger file is refused unread


class ParamsFileError(ParamsError):
    """params.yaml cannot be read or parsed; the message starts with the file's path."""


# The schema: section -> key -> check, in the order they are checked, built from tf_pilltrack.settings
# (where each setting is declared once, with its check).
SCHEMA: dict[str, dict[str, Check]] = {name: checks_of(kind) for name, kind in settings.SECTIONS.items()}
_PROFILE = checks_of(settings.TABLES["profiles"])
_BUDGET = checks_of(settings.TABLES["budgets"])


def validate(params: Any) -> dict:
    """Check `params` against the schema; return it unchanged or raise ParamsError."""
    if not isinstance(params, dict):
        raise ParamsError("params.yaml must be a mapping of sections")
    expected = set(SCHEMA) | {"profiles", "budgets"}
    check_keys("", params, expected)
    for section, keys in SCHEMA.items():
        check_section(section, params[section], keys)
    for table, keys in (("profiles", _PROFILE), ("budgets", _BUDGET)):
        entries = params[table]
        if not isinstance(entries, dict) or not entries:
            raise ParamsError(f"{table}: expected a mapping of profile names")
        for name, values in entries.items():
            check_section(f"{table}.{name}", values, keys)
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


def run_params(params: dict, logged: tuple[str, ...]) -> RunParams:
    """What a stage's MLflow run is filed under, tagged with and logs (tf_pilltrack.training.tracking):
    the experiment, base.profile, the digest of the whole params and the sections `logged`, as validated."""
    return RunParams(params["tracking"]["experiment"], params["base"]["profile"], digest(params),
                     {name: params[name] for name in logged})
