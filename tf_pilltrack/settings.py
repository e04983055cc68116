"""params.yaml as typed, frozen settings: one class per section, built once by `from_params` from the
dictionary that tf_pilltrack.params has validated (the schema, the ranges and the error messages
live there). A stage's `run` builds them and hands each library the values or the section it uses;
no library reads the whole params. Lists become tuples; base.profile's profile and budget are resolved.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from edge_runtime.preprocessing import PreprocessConfig
from tf_pilltrack import params as params_module


@dataclass(frozen=True)
class Base:
    seed: int
    profile: str
    threads: int


@dataclass(frozen=True)
class Profile:
    image_size: int
    student_alpha: float
    student_last_channels: int
    student_stages: tuple[tuple[int, int, int, int], ...]


@dataclass(frozen=True)
class Budget:
    max_model_bytes: int
    max_arena_bytes: int
    max_invoke_ms: float
    max_reference_ratio: float
    min_recall_at_1: float
    max_firmware_flash_bytes: int | None
    max_firmware_ram_bytes: int | None


@dataclass(frozen=True)
class Data:
    source: str
    synthetic_classes: int
    synthetic_images_per_class: int
    synthetic_photo_size: int
    max_image_pixels: int
    reference_source: str
    reference_types: int
    reference_photos_per_type: int
    reference_faces: str
    reference_share: float
    mix_source: str
    mix_ratio: float
    mix_train_classes: float


@dataclass(frozen=True)
class Preprocess:
    localise: bool | str
    min_pill_fraction: float
    max_pill_fraction: float
    crop_margin: float
    symmetry_views: int


@dataclass(frozen=True)
class Prepare:
    novel_classes: float
    calibration_classes: float
    absent_classes: float
    reference_shots: int


@dataclass(frozen=True)
class Teacher:
    backbone: str
    pretrained: str
    image_size: int | None
    embedding_size: int
    widths: tuple[int, ...]
    blocks: tuple[int, ...]
    loss: str
    triplet_margin: float
    positive_mining: str
    negative_mining: str
    epochs: int
    steps_per_epoch: int
    classes_per_batch: int
    examples_per_class: int
    learning_rate: float
    frozen_epochs: int


@dataclass(frozen=True)
class Distill:
    float_epochs: int
    qat_epochs: int
    steps_per_epoch: int
    classes_per_batch: int
    examples_per_class: int
    learning_rate: float
    qat_learning_rate: float
    embedding_weight: float
    relation_weight: float
    triplet_weight: float
    triplet_margin: float


@dataclass(frozen=True)
class Export:
    calibration_images: int


@dataclass(frozen=True)
class Tiers:
    gallery_pills: int
    shots: int
    episodes: int
    likely_right: float
    absent_likely: float
    distance_steps: int
    gaps: tuple[float, ...]
    seed: int


@dataclass(frozen=True)
class Enroll:
    annoy_trees: int
    search_k_agreement: float
    calibration_absent: float
    calibration_gallery_pills: int
    calibration_galleries: int
    min_named_correct: float
    max_absent_named: float
    rule_steps: int
    tiers: Tiers


@dataclass(frozen=True)
class Augment:
    brightness: float
    contrast: float
    colour_cast: float
    saturation: float
    rotate: bool
    zoom: float


@dataclass(frozen=True)
class Training:
    distribution: str
    input: str
    backup: str


@dataclass(frozen=True)
class Tracking:
    experiment: str


@dataclass(frozen=True)
class BenchTargets:
    profile: str
    gallery_size: int
    max_device_step_ms: float
    min_speedup: float
    min_size_ratio: float
    min_annoy_agreement: float
    max_annoy_lookup_us: float


@dataclass(frozen=True)
class Bench:
    profiles: tuple[str, ...]
    gallery_sizes: tuple[int, ...]
    frames: int
    repeats: int
    micro_repeats: int
    threads: int
    calibration_images: int
    peak_conv: tuple[int, int, int]
    tflite_runtime_python: str
    parity_queries: int
    targets: BenchTargets


@dataclass(frozen=True)
class Firmware:
    tflm_kit: str
    build_cache: str
    required: bool
    core: str
    crops: int
    tolerance_steps: int
    emulator_timeout_s: float
    board: str
    clock_mhz: float
    cycles_per_instruction: float


@dataclass(frozen=True)
class Episodes:
    count: int
    seed: int
    shots: tuple[int, ...]
    absent_classes: float
    views: int
    keep_correct: float
    real_source: str


@dataclass(frozen=True)
class Settings:
    """Every section of params.yaml; `profile`, `budget` and `preprocess_config` are base.profile's."""
    base: Base
    profile: Profile
    budget: Budget
    profiles: Mapping[str, Profile]
    data: Data
    preprocess: Preprocess
    preprocess_config: PreprocessConfig
    prepare: Prepare
    teacher: Teacher
    distill: Distill
    export: Export
    enroll: Enroll
    augment: Augment
    training: Training
    tracking: Tracking
    bench: Bench
    firmware: Firmware
    episodes: Episodes


def _section(kind: type, values: Mapping[str, Any], nested: Mapping[str, type] = {}) -> Any:
    """`kind` from a validated section: lists as tuples (of tuples), nested mappings as `nested`'s classes."""
    fields = {}
    for field in dataclasses.fields(kind):
        value = values[field.name]
        if field.name in nested:
            value = _section(nested[field.name], value)
        elif isinstance(value, list):
            value = tuple(tuple(item) if isinstance(item, list) else item for item in value)
        fields[field.name] = value
    return kind(**fields)


def from_params(params: dict) -> Settings:
    """The settings of a params dictionary that tf_pilltrack.params has validated (`load`, `validate`)."""
    profiles = {name: _section(Profile, values) for name, values in params["profiles"].items()}
    return Settings(
        base=_section(Base, params["base"]),
        profile=profiles[params["base"]["profile"]],
        budget=_section(Budget, params_module.budget(params)),
        profiles=profiles,
        data=_section(Data, params["data"]),
        preprocess=_section(Preprocess, params["preprocess"]),
        preprocess_config=params_module.preprocess_config(params),
        prepare=_section(Prepare, params["prepare"]),
        teacher=_section(Teacher, params["teacher"]),
        distill=_section(Distill, params["distill"]),
        export=_section(Export, params["export"]),
        enroll=_section(Enroll, params["enroll"], {"tiers": Tiers}),
        augment=_section(Augment, params["augment"]),
        training=_section(Training, params["training"]),
        tracking=_section(Tracking, params["tracking"]),
        bench=_section(Bench, params["bench"], {"targets": BenchTargets}),
        firmware=_section(Firmware, params["firmware"]),
        episodes=_section(Episodes, params["episodes"]),
    )
