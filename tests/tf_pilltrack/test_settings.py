"""tf_pilltrack.settings: the typed, frozen settings built once from the validated params."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

from tf_pilltrack import params as params_module
from tf_pilltrack import settings

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", [ROOT / "params.yaml", ROOT / "tests" / "params_small.yaml"])
def test_every_section_and_key_is_a_field_with_its_value(path):
    params = params_module.load(path)
    every = settings.from_params(params)
    for section, keys in params_module.SCHEMA.items():
        values = getattr(every, section)
        assert {field.name for field in dataclasses.fields(values)} == set(keys)
        for key in keys:
            value, expected = getattr(values, key), params[section][key]
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
    assert every.preprocess_config == params_module.preprocess_config(params)


def test_settings_are_frozen():
    every = settings.from_params(params_module.load(ROOT / "tests" / "params_small.yaml"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        every.base.seed = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        every.enroll.tiers.seed = 1
