"""tf_pilltrack.settings: each setting declared once, as a field with its check (which
tf_pilltrack.params validates with), and the typed, frozen settings built once from the validated params."""

from __future__ import annotations

import copy
import dataclasses
import pathlib
import re

import pytest
import yaml

from tf_pilltrack import params as params_module
from tf_pilltrack import settings
from tf_pilltrack.checks import integer

ROOT = pathlib.Path(__file__).resolve().parents[2]
SMALL = ROOT / "tests" / "params_small.yaml"


def _keys_of(kind: type, where: str) -> list[str]:
    """The dotted key of every field of `kind` under `where`, nested classes' fields too."""
    keys = []
    for field in dataclasses.fields(kind):
        keys.append(f"{where}.{field.name}")
        if settings._NESTED in field.metadata:
            keys += _keys_of(field.metadata[settings._NESTED], f"{where}.{field.name}")
    return keys


def every_setting() -> list[str]:
    """Every setting the classes declare, as its key in tests/params_small.yaml."""
    profile = yaml.safe_load(SMALL.read_text())["base"]["profile"]
    keys = [key for name, kind in settings.SECTIONS.items() for key in _keys_of(kind, name)]
    return keys + [key for table, kind in settings.TABLES.items() for key in _keys_of(kind, f"{table}.{profile}")]


def _without(params: dict, key: str) -> tuple[dict, dict]:
    """A copy of `params` without `key`, and the mapping that held it."""
    broken = copy.deepcopy(params)
    *path, last = key.split(".")
    section = broken
    for part in path:
        section = section[part]
    del section[last]
    return broken, section


def test_the_sections_are_those_of_params_yaml():
    top = set(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert set(settings.SECTIONS) == top - set(settings.TABLES)
    assert list(params_module.SCHEMA) == list(settings.SECTIONS)


@pytest.mark.parametrize("key", every_setting())
def test_every_declared_setting_is_required_and_checked(key):
    """A field is a key validate requires (no default) and checks: a value no check accepts is refused, naming it."""
    params = yaml.safe_load(SMALL.read_text())
    params_module.validate(copy.deepcopy(params))
    missing, _ = _without(params, key)
    with pytest.raises(params_module.ParamsError) as error:
        params_module.validate(missing)
    assert str(error.value) == f"{key}: missing key"
    wrong, section = _without(params, key)
    section[key.rsplit(".", 1)[1]] = {"not": "a setting"}
    with pytest.raises(params_module.ParamsError) as error:
        params_module.validate(wrong)
    assert re.match(rf"{re.escape(key)}[:.]", str(error.value)), str(error.value)


def test_an_unknown_key_is_refused():
    params = yaml.safe_load(SMALL.read_text())
    params["enroll"]["tiers"]["extra"] = 1
    with pytest.raises(params_module.ParamsError, match=r"^enroll\.tiers\.extra: unknown key"):
        params_module.validate(params)


def test_a_field_without_a_check_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Section:
        checked: int = settings.setting(integer(0))
        unchecked: int

    with pytest.raises(TypeError, match=r"^Section\.unchecked has no check"):
        settings.checks_of(Section)
    assert list(settings.checks_of(settings.Export)) == ["calibration_images"]


@pytest.mark.parametrize("path", [ROOT / "params.yaml", SMALL])
def test_every_section_and_key_is_a_field_with_its_value(path):
    params = params_module.load(path)
    every = settings.from_params(params)
    for section, kind in settings.SECTIONS.items():
        values = getattr(every, section)
        assert type(values) is kind
        assert {field.name for field in dataclasses.fields(values)} == set(params[section])
        for key, expected in params[section].items():
            value = getattr(values, key)
            if dataclasses.is_dataclass(value):
                assert dataclasses.asdict(value) == {name: tuple(item) if isinstance(item, list) else item
                                                     for name, item in expected.items()}
            elif isinstance(expected, list):
                assert value == tuple(tuple(item) if isinstance(item, list) else item for item in expected)
            else:
                assert value == expected
    profile = params["base"]["profile"]
    assert every.profile == every.profiles[profile]
    assert every.profile.image_size == params["profiles"][profile]["image_size"]
    assert dataclasses.asdict(every.budget) == params["budgets"][profile]
    assert every.preprocess_config == settings.preprocess_config(params)


def test_settings_are_frozen():
    every = settings.from_params(params_module.load(SMALL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        every.base.seed = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        every.enroll.tiers.seed = 1
