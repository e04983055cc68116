"""params.yaml's settings, each declared once: a field of its section's frozen dataclass, with the
check its value must pass (`seed: int = setting(integer(0, 2**31 - 1))`, the checks in
tf_pilltrack.checks; no default: a missing key is an error). tf_pilltrack.params builds its
schema from these classes and validates; `from_params` builds them once from the validated
dictionary. A stage's `run` builds them and hands each library the values or the section it uses;
no library reads the whole params. Lists become tuples; base.profile's profile and budget are resolved.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Mapping

from edge_runtime.limits import MAX_ANNOY_TREES, MAX_IMAGE_PIXELS, SYMMETRY_VIEWS
from edge_runtime.preprocessing import PreprocessConfig
from tf_pilltrack.checks import (Check, boolean, choice, integer, integers, list_of, localise_mode, mapping, number,
                                 one_of, optional, student_stages, text)

_CHECK, _NESTED, _SECTION = "check", "nested", "section"  # the keys of a field's metadata

# tf_pilltrack/firmware/build.py's CORES, checked against it by tests/tf_pilltrack/firmware/test_firmware.py
FIRMWARE_CORES = ("cortex-m4",)


def setting(check: Check) -> Any:
    """A setting: a field whose value passes `check` (tf_pilltrack.checks), without a default."""
    return dataclasses.field(metadata={_CHECK: check})


def nested(kind: type) -> Any:
    """A setting that is a mapping of `kind`'s settings, built as a `kind`."""
    return dataclasses.field(metadata={_CHECK: mapping(checks_of(kind)), _NESTED: kind})


def section() -> Any:
    """A field of `Settings` that is a section of params.yaml, of its field's class."""
    return dataclasses.field(metadata={_SECTION: True})


def checks_of(kind: type) -> dict[str, Check]:
    """`kind`'s settings and their checks, in field order (the order they are checked in)."""
    found = {}
    for field in dataclasses.fields(kind):
        if _CHECK not in field.metadata:
            raise TypeError(f"{kind.__name__}.{field.name} has no check: declare it as setting(<check>)")
        found[field.name] = field.metadata[_CHECK]
    return found


@dataclass(frozen=True)
class Base:
    seed: int = setting(integer(0, 2**31 - 1))
    profile: str = setting(text)
    threads: int = setting(integer(1, 1024))


@dataclass(frozen=True)
class Profile:
    image_size: int = setting(integer(16, 512))
    student_alpha: float = setting(number(0.1, 1.4))
    student_last_channels: int = setting(integer(8, 2048))
    student_stages: tuple[tuple[int, int, int, int], ...] = setting(student_stages)


@dataclass(frozen=True)
class Budget:
    max_model_bytes: int = setting(integer(1))
    max_arena_bytes: int = setting(integer(1))
    max_invoke_ms: float = setting(number(0.0))
    max_reference_ratio: float = setting(number(0.0, 1.0))
    min_recall_at_1: float = setting(number(0.0, 1.0))
    max_firmware_flash_bytes: int | None = setting(optional(integer(1)))
    max_firmware_ram_bytes: int | None = setting(optional(integer(1)))


@dataclass(frozen=True)
class Data:
    source: str = setting(text)
    synthetic_classes: int = setting(integer(4))
    synthetic_images_per_class: int = setting(integer(2))
    synthetic_photo_size: int = setting(integer(32, 1024))
    max_image_pixels: int = setting(integer(1, MAX_IMAGE_PIXELS))
    reference_source: str = setting(text)
    reference_types: int = setting(integer(0))
    reference_photos_per_type: int = setting(integer(0, 1000))
    reference_faces: str = setting(choice("together", "apart"))
    reference_share: float = setting(number(0.0, 1.0))
    mix_source: str = setting(text)
    mix_ratio: float = setting(number(0.0, 0.9))
    mix_train_classes: float = setting(number(0.0, 1.0))


@dataclass(frozen=True)
class Preprocess:
    localise: bool | str = setting(localise_mode)
    min_pill_fraction: float = setting(number(0.0, 1.0))
    max_pill_fraction: float = setting(number(0.0, 1.0))
    crop_margin: float = setting(number(0.0, 1.0))
    symmetry_views: int = setting(one_of(SYMMETRY_VIEWS))


@dataclass(frozen=True)
class Prepare:
    novel_classes: float = setting(number(0.0, 1.0))
    calibration_classes: float = setting(number(0.0, 1.0))
    absent_classes: float = setting(number(0.0, 1.0))
    reference_shots: int = setting(integer(1))


@dataclass(frozen=True)
class Teacher:
    backbone: str = setting(choice("resnet", "efficientnet_lite0"))
    pretrained: str = setting(choice("imagenet", "none"))
    image_size: int | None = setting(optional(integer(8, 512)))
    embedding_size: int = setting(integer(2, 1024))
    widths: tuple[int, ...] = setting(integers(4, 1))
    blocks: tuple[int, ...] = setting(integers(4, 1))
    loss: str = setting(choice("triplet", "multisimilarity"))
    triplet_margin: float = setting(number(0.0, 2.0))
    positive_mining: str = setting(choice("hard", "easy"))
    negative_mining: str = setting(choice("semi-hard", "hard", "easy"))
    epochs: int = setting(integer(1))
    steps_per_epoch: int = setting(integer(1))
    classes_per_batch: int = setting(integer(2))
    examples_per_class: int = setting(integer(2))
    learning_rate: float = setting(number(0.0, 1.0))
    frozen_epochs: int = setting(integer(0))


@dataclass(frozen=True)
class Distill:
    float_epochs: int = setting(integer(0))
    qat_epochs: int = setting(integer(0))
    steps_per_epoch: int = setting(integer(1))
    classes_per_batch: int = setting(integer(2))
    examples_per_class: int = setting(integer(2))
    learning_rate: float = setting(number(0.0, 1.0))
    qat_learning_rate: float = setting(number(0.0, 1.0))
    embedding_weight: float = setting(number(0.0))
    relation_weight: float = setting(number(0.0))
    triplet_weight: float = setting(number(0.0))
    triplet_margin: float = setting(number(0.0, 2.0))
    mixup: float = setting(number(0.0, 1.0))


@dataclass(frozen=True)
class Export:
    calibration_images: int = setting(integer(1))


@dataclass(frozen=True)
class Tiers:
    """enroll.tiers: the counter page's "likely" tier (tf_pilltrack/scoring/tiers.py)."""
    gallery_pills: int = setting(integer(2, 1000))
    shots: int = setting(integer(1, 1000))
    episodes: int = setting(integer(1, 10_000))
    likely_right: float = setting(number(0.0, 1.0))
    absent_likely: float = setting(number(0.0, 1.0))
    distance_steps: int = setting(integer(2, 10_001))
    gaps: tuple[float, ...] = setting(list_of(number(0.0, 2.0)))
    seed: int = setting(integer(0, 2**31 - 1))


@dataclass(frozen=True)
class Enroll:
    annoy_trees: int = setting(integer(1, MAX_ANNOY_TREES))
    search_k_agreement: float = setting(number(0.0, 1.0))
    calibration_absent: float = setting(number(0.0, 1.0))
    calibration_gallery_pills: int = setting(integer(2, 100_000))
    calibration_galleries: int = setting(integer(1, 10_000))
    min_named_correct: float = setting(number(0.0, 1.0))
    max_absent_named: float = setting(number(0.0, 1.0))
    rule_steps: int = setting(integer(2, 1000))
    tiers: Tiers = nested(Tiers)


@dataclass(frozen=True)
class Augment:
    brightness: float = setting(number(0.0, 1.0))
    contrast: float = setting(number(0.0, 1.0))
    colour_cast: float = setting(number(0.0, 1.0))
    saturation: float = setting(number(0.0, 1.0))
    rotate: bool = setting(boolean)
    zoom: float = setting(number(0.0, 0.9))


@dataclass(frozen=True)
class Training:
    distribution: str = setting(choice("none", "mirrored", "multi_worker"))
    input: str = setting(choice("memory", "stream"))
    backup: str = setting(text)


@dataclass(frozen=True)
class Tracking:
    experiment: str = setting(text)


@dataclass(frozen=True)
class BenchTargets:
    profile: str = setting(text)
    gallery_size: int = setting(integer(1))
    max_device_step_ms: float = setting(number(0.0))
    min_speedup: float = setting(number(0.0))
    min_size_ratio: float = setting(number(0.0))
    min_annoy_agreement: float = setting(number(0.0, 1.0))
    max_annoy_lookup_us: float = setting(number(0.0))


@dataclass(frozen=True)
class Bench:
    profiles: tuple[str, ...] = setting(list_of(text))
    gallery_sizes: tuple[int, ...] = setting(list_of(integer(10, 10_000_000)))
    frames: int = setting(integer(1))
    repeats: int = setting(integer(1))
    micro_repeats: int = setting(integer(1))
    threads: int = setting(integer(1, 256))
    calibration_images: int = setting(integer(1))
    peak_conv: tuple[int, int, int] = setting(integers(3, 1))
    tflite_runtime_python: str = setting(text)
    parity_queries: int = setting(integer(0))
    targets: BenchTargets = nested(BenchTargets)


@dataclass(frozen=True)
class Firmware:
    tflm_kit: str = setting(text)
    build_cache: str = setting(text)
    required: bool = setting(boolean)
    core: str = setting(choice(*FIRMWARE_CORES))
    crops: int = setting(integer(1, 64))
    tolerance_steps: int = setting(integer(0, 255))
    emulator_timeout_s: float = setting(number(1.0, 86400.0))
    board: str = setting(text)
    clock_mhz: float = setting(number(1.0, 10_000.0))
    cycles_per_instruction: float = setting(number(1.0, 100.0))


@dataclass(frozen=True)
class Episodes:
    count: int = setting(integer(1, 1000))
    seed: int = setting(integer(0, 2**31 - 1))
    shots: tuple[int, ...] = setting(list_of(integer(1, 100)))
    absent_classes: float = setting(number(0.0, 0.9))
    views: int = setting(integer(2, 16))
    keep_correct: float = setting(number(0.01, 1.0))
    real_source: str = setting(text)


@dataclass(frozen=True)
class Settings:
    """Every section of params.yaml (the `section()` fields, checked in this order); `profile`, `budget`
    and `preprocess_config` are base.profile's."""
    base: Base = section()
    profile: Profile
    budget: Budget
    profiles: Mapping[str, Profile]
    data: Data = section()
    preprocess: Preprocess = section()
    preprocess_config: PreprocessConfig
    prepare: Prepare = section()
    teacher: Teacher = section()
    distill: Distill = section()
    export: Export = section()
    enroll: Enroll = section()
    augment: Augment = section()
    training: Training = section()
    tracking: Tracking = section()
    bench: Bench = section()
    firmware: Firmware = section()
    episodes: Episodes = section()


SECTIONS: dict[str, type] = {field.name: typing.get_type_hints(Settings)[field.name]
                             for field in dataclasses.fields(Settings) if field.metadata.get(_SECTION)}
TABLES: dict[str, type] = {"profiles": Profile, "budgets": Budget}  # mappings of profile name to settings


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


def _section(kind: type, values: Mapping[str, Any]) -> Any:
    """`kind` from a validated section: lists as tuples (of tuples), nested mappings as their `nested()` class."""
    fields = {}
    for field in dataclasses.fields(kind):
        value = values[field.name]
        if _NESTED in field.metadata:
            value = _section(field.metadata[_NESTED], value)
        elif isinstance(value, list):
            value = tuple(tuple(item) if isinstance(item, list) else item for item in value)
        fields[field.name] = value
    return kind(**fields)


def from_params(params: dict) -> Settings:
    """The settings of a params dictionary that tf_pilltrack.params has validated (`load`, `validate`)."""
    profiles = {name: _section(Profile, values) for name, values in params["profiles"].items()}
    return Settings(
        profile=profiles[params["base"]["profile"]],
        budget=_section(Budget, budget(params)),
        profiles=profiles,
        preprocess_config=preprocess_config(params),
        **{name: _section(kind, params[name]) for name, kind in SECTIONS.items()},
    )
