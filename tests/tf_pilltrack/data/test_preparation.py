"""Stage `prepare` (tf_pilltrack/stages/prepare.py, tf_pilltrack/data/preparation.py) on a small photo folder made here, with the bad
inputs a real photo collection has; and properties of the decoder it relies on
(edge_runtime.preprocessing.decode_image). No TensorFlow.

The folder: 8 pill classes x 8 photos (64 px, one colour of ellipse per class on a pale
background, in JPEG, PNG, WebP and BMP), one class named with spaces and non-ASCII letters,
extra photos in unusual encodings, and files that must be reported and skipped.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import pathlib
import re
import struct
import zipfile
import zlib

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image, ImageFile

from edge_runtime.preprocessing import ImageError, decode_image
from tf_pilltrack import params as params_module
from tf_pilltrack import settings as pilltrack_settings
from tf_pilltrack import paths
from tf_pilltrack.data import dataset, ingestion, preparation
from tf_pilltrack.stages import prepare

REPO = pathlib.Path(__file__).resolve().parents[3]

UNICODE_CLASS = "Ibuprofen 200 mg – Ärger ß 錠"
GOOD_CLASSES = [f"class_{index}" for index in range(7)] + [UNICODE_CLASS]
COLOURS = [(200, 30, 30), (30, 160, 40), (30, 60, 200), (220, 200, 30),
           (200, 40, 200), (30, 190, 200), (40, 40, 60), (240, 120, 20)]
PHOTOS_PER_CLASS = 8
BACKGROUND = (225, 225, 220)
FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp"}

# Extra photos of class_6 (a dark pill) in encodings that must be converted, not refused.
EXTRA_GOOD = ("class_6/gray.png", "class_6/rgba.png", "class_6/sixteen.png",
              "class_6/palette.png", "class_6/exif_rotated.jpg")
MAX_PIXELS = 50_000_000  # params.yaml's data.max_image_pixels when these tests were written

# Files that must be skipped, with the start of their reason.
EXPECTED_SKIPS = {
    "class_0/truncated.jpg": "not a readable image",
    "broken_class/empty.jpg": "empty file",
    "broken_class/notes.png": "not a readable image",
    "loose.jpg": "not directly inside a class folder",
    "class_2/sub/deep.jpg": "not directly inside a class folder",
    "class_3/readme.txt": "not an image file name",
    "class_4/plain.png": "no pill found",
    "class_4/tiny.png": "no pill found",
    # 8000 x 8000 = 64 M pixels: over data.max_image_pixels, under Pillow's own bomb limit
    "class_5/big.png": f"8000x8000 pixels exceeds the limit of {MAX_PIXELS} pixels",
    # 20000 x 20000 = 400 M pixels: Pillow's own limit may answer first; either names pixels
    "class_5/bomb.png": "",
}


# --- making images ----------------------------------------------------------------------------


def pill_photo(colour, rng: np.random.Generator, height: int = 64, width: int = 64) -> np.ndarray:
    """A pale, slightly noisy background with one filled ellipse of `colour` near the centre."""
    image = np.empty((height, width, 3), np.int16)
    image[:] = BACKGROUND
    image += rng.integers(-4, 5, image.shape, dtype=np.int16)
    image = np.clip(image, 0, 255).astype(np.uint8)
    centre = (int(width // 2 + rng.integers(-5, 6)), int(height // 2 + rng.integers(-5, 6)))
    axes = (int(rng.integers(11, 16)), int(rng.integers(7, 11)))
    cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    return image


def encode(rgb_or_image, image_format: str, **options) -> bytes:
    image = rgb_or_image if isinstance(rgb_or_image, Image.Image) else Image.fromarray(rgb_or_image)
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def blank_png(width: int, height: int) -> bytes:
    """A complete, valid 1-bit grayscale PNG of one colour: small on disk however large its
    declared size (20000 x 20000 is about 50 KB), i.e. a decompression bomb."""
    row = bytes(1 + (width + 7) // 8)  # filter byte 0 and zero pixels
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row * 1000) for _ in range(height // 1000)]
    parts += [compressor.compress(row * (height % 1000)), compressor.flush()]
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(parts))
            + _chunk(b"IEND", b""))


def _extra_good_files(rng: np.random.Generator) -> dict[str, bytes]:
    colour = COLOURS[6]
    photo = pill_photo(colour, rng)
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    alpha = np.where(np.abs(photo.astype(int) - BACKGROUND).sum(axis=2) > 40, 255, 0).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return {
        "class_6/gray.png": encode(gray, "PNG"),
        "class_6/rgba.png": encode(np.dstack([photo, alpha]), "PNG"),
        "class_6/sixteen.png": encode(Image.fromarray(gray.astype(np.uint16) * 257), "PNG"),
        "class_6/palette.png": encode(Image.fromarray(photo).convert("P", palette=Image.Palette.ADAPTIVE,
                                                                     colors=32), "PNG"),
        # stored 64 wide and 48 high; displayed (and decoded) 48 wide and 64 high
        "class_6/exif_rotated.jpg": encode(pill_photo(colour, rng, height=48, width=64), "JPEG",
                                           quality=95, exif=exif),
    }


def make_source_files(seed: int = 0) -> dict[str, bytes]:
    """Relative path -> bytes of every file of the test photo collection."""
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    for label, colour in zip(GOOD_CLASSES, COLOURS):
        for index in range(PHOTOS_PER_CLASS):
            image_format = FORMATS[index % len(FORMATS)]
            options = {"quality": 95} if image_format in ("JPEG", "WEBP") else {}
            files[f"{label}/photo_{index}{SUFFIXES[image_format]}"] = encode(
                pill_photo(colour, rng), image_format, **options)
    files.update(_extra_good_files(rng))
    good_jpeg = encode(pill_photo(COLOURS[0], rng), "JPEG", quality=95)
    files.update({
        "class_0/truncated.jpg": good_jpeg[: len(good_jpeg) // 2],
        "broken_class/empty.jpg": b"",
        "broken_class/notes.png": b"these are not the pixels you are looking for\n",
        "loose.jpg": good_jpeg,
        "class_2/sub/deep.jpg": good_jpeg,
        "class_3/readme.txt": b"photos taken on a grey tray\n",
        "class_4/plain.png": encode(np.full((64, 64, 3), BACKGROUND, np.uint8), "PNG"),
        "class_4/tiny.png": encode(np.array([[[200, 30, 30]]], np.uint8), "PNG"),
        "class_5/big.png": blank_png(8000, 8000),
        "class_5/bomb.png": blank_png(20000, 20000),
        # hidden files are neither used nor reported
        ".DS_Store": b"\x00\x00\x00\x01Bud1",
        "class_0/.hidden.jpg": good_jpeg,
    })
    return files


def write_folder(root: pathlib.Path, files: dict[str, bytes]) -> pathlib.Path:
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "empty_class").mkdir()
    return root


def write_zip(path: pathlib.Path, files: dict[str, bytes], top: str = "",
              compression: int = zipfile.ZIP_DEFLATED) -> pathlib.Path:
    """A zip of the collection, optionally inside one top-level folder `top` (as zipping a
    folder in a file manager does, macOS's __MACOSX resource forks included)."""
    prefix = f"{top}/" if top else ""
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr(f"{prefix}empty_class/", b"")
        for relative, data in files.items():
            archive.writestr(prefix + relative, data)
        if top:
            archive.writestr(f"__MACOSX/{top}/class_0/._photo_0.jpg", b"\x00\x05\x16\x07resource fork")
    return path


# --- the collection, listed and ingested once per module ----------------------------------------


@pytest.fixture(scope="module")
def repo_params() -> dict:
    with open(REPO / "params.yaml", encoding="utf-8") as handle:
        return params_module.validate(yaml.safe_load(handle))


@pytest.fixture(scope="module")
def config(repo_params):
    assert repo_params["data"]["max_image_pixels"] == MAX_PIXELS, "update MAX_PIXELS"
    return pilltrack_settings.preprocess_config(repo_params)


@pytest.fixture(scope="module")
def source_files() -> dict[str, bytes]:
    return make_source_files()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, source_files) -> pathlib.Path:
    return write_folder(tmp_path_factory.mktemp("source") / "photos", source_files)


def _without_addresses(skipped: list[dict]) -> list[dict]:
    """The skip list sorted by file, object addresses masked: Pillow's "cannot identify image
    file <_io.BytesIO object at 0x7f...>" differs from run to run."""
    return sorted(({"file": entry["file"], "reason": re.sub(r" at 0x[0-9a-fA-F]+", " at 0x?", entry["reason"])}
                   for entry in skipped), key=lambda entry: entry["file"])


def list_and_ingest(source: pathlib.Path, config):
    images, groups, skipped = ingestion.list_source(source)
    ingested = ingestion.ingest(images, groups, config)
    return images, skipped + ingested.skipped, ingested


@pytest.fixture(scope="module")
def folder_result(folder, config):
    return list_and_ingest(folder, config)


def test_the_collection_is_what_the_tests_assume(source_files):
    # The bombs are complete PNGs that declare their sizes, and the exotic files are exotic.
    bomb = source_files["class_5/bomb.png"]
    assert bomb[12:16] == b"IHDR" and struct.unpack(">II", bomb[16:24]) == (20000, 20000)
    assert len(bomb) < 200_000
    big = Image.open(io.BytesIO(source_files["class_5/big.png"]))
    big.load()  # 64 M one-byte pixels: every row is there
    assert big.size == (8000, 8000) and big.getextrema() == (0, 0)
    modes = {name: Image.open(io.BytesIO(source_files[name])).mode for name in EXTRA_GOOD}
    assert modes == {"class_6/gray.png": "L", "class_6/rgba.png": "RGBA", "class_6/sixteen.png": "I;16",
                     "class_6/palette.png": "P", "class_6/exif_rotated.jpg": "RGB"}
    assert Image.open(io.BytesIO(source_files["class_6/exif_rotated.jpg"])).getexif()[0x0112] == 6


# --- listing and ingesting --------------------------------------------------------------------


def test_bad_files_are_reported_with_their_reason(folder_result):
    _, skipped, _ = folder_result
    reasons = {entry["file"]: entry["reason"] for entry in skipped}
    assert len(reasons) == len(skipped), "a file reported twice"
    assert set(reasons) == set(EXPECTED_SKIPS)
    for name, start in EXPECTED_SKIPS.items():
        assert reasons[name].startswith(start), (name, reasons[name])
    bomb = reasons["class_5/bomb.png"]
    assert "20000x20000" in bomb or "400000000 pixels" in bomb, bomb
    assert "exceeds" in bomb and "limit" in bomb, bomb


def test_good_files_are_all_used(folder_result):
    images, _, ingested = folder_result
    expected = {label: PHOTOS_PER_CLASS for label in GOOD_CLASSES}
    expected["class_6"] += len(EXTRA_GOOD)
    assert {label: len(items) for label, items in ingested.crops.items()} == expected
    used = {source for items in ingested.crops.values() for _, source, _ in items}
    assert set(EXTRA_GOOD) <= used
    assert UNICODE_CLASS in ingested.crops
    assert {image.label for image in images} == set(GOOD_CLASSES) | {"broken_class"}
    for items in ingested.crops.values():
        for pixels, source, group in items:
            assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
            assert group == source  # no manifest: every photo is its own group


def test_hidden_files_and_empty_folders_are_ignored(folder_result):
    images, skipped, ingested = folder_result
    names = {image.name for image in images} | {entry["file"] for entry in skipped}
    assert not any(pathlib.PurePosixPath(name).name.startswith(".") for name in names)
    assert "empty_class" not in ingested.crops
    assert "broken_class" not in ingested.crops  # folder of bad files only


def test_crops_show_the_pill(folder_result):
    # The localiser cut around the ellipse: the crop's centre has the class's colour.
    _, _, ingested = folder_result
    for label, colour in zip(GOOD_CLASSES, COLOURS):
        for pixels, source, _ in ingested.crops[label]:
            if source in EXTRA_GOOD:
                continue
            centre = pixels[28:36, 28:36].reshape(-1, 3).astype(int).mean(axis=0)
            assert np.abs(centre - colour).max() < 40, (source, centre, colour)


def test_image_sizes_are_recorded_after_exif_rotation(folder_result):
    _, _, ingested = folder_result
    sizes = ingested.sizes
    assert sizes.count((48, 64)) == 1  # the EXIF-rotated photo, decoded upright
    assert (64, 48) not in sizes
    assert (1, 1) in sizes  # decoded, then "no pill found"
    assert not any(width >= 8000 for width, _ in sizes)  # the bombs were never decoded


@pytest.mark.parametrize("layout", ["flat", "wrapped"])
def test_zip_gives_the_same_crops_as_the_folder(tmp_path, source_files, config, folder_result, layout):
    archive = write_zip(tmp_path / "photos.zip", source_files, top="photos" if layout == "wrapped" else "")
    _, skipped, ingested = list_and_ingest(archive, config)
    _, folder_skipped, folder_ingested = folder_result
    assert _without_addresses(skipped) == _without_addresses(folder_skipped)
    assert sorted(ingested.crops) == sorted(folder_ingested.crops)
    for label, items in folder_ingested.crops.items():
        assert [(source, group) for _, source, group in ingested.crops[label]] == [
            (source, group) for _, source, group in items]
        np.testing.assert_array_equal(np.stack([item[0] for item in ingested.crops[label]]),
                                      np.stack([item[0] for item in items]))
    assert sorted(ingested.sizes) == sorted(folder_ingested.sizes)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"])
def test_corrupt_zip_member_is_reported_and_skipped(tmp_path, source_files, config, compression):
    files = {name: data for name, data in source_files.items()
             if name.startswith(("class_1/", "class_2/photo"))}
    archive = write_zip(tmp_path / "photos.zip", files, compression=compression)
    victim = "class_1/photo_1.png"
    with zipfile.ZipFile(archive) as handle:
        info = handle.getinfo(victim)
    raw = bytearray(archive.read_bytes())
    name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length
    for offset in range(info.compress_size // 3, info.compress_size // 3 + 16):
        raw[start + offset] ^= 0xFF
    archive.write_bytes(bytes(raw))

    _, skipped, ingested = list_and_ingest(archive, config)
    assert [entry["file"] for entry in skipped] == [victim]
    assert skipped[0]["reason"].startswith("cannot be read")
    assert len(ingested.crops["class_1"]) == PHOTOS_PER_CLASS - 1
    assert len(ingested.crops["class_2"]) == PHOTOS_PER_CLASS


def test_zip_of_one_class_folder_is_not_mistaken_for_a_wrapper(tmp_path, source_files):
    files = {name: data for name, data in source_files.items() if name.startswith("class_1/photo")}
    images, _, skipped = ingestion.list_source(write_zip(tmp_path / "one.zip", files))
    assert skipped == []
    assert {image.label for image in images} == {"class_1"}


def _manifest_csv(rows: list[tuple[str, str]], bom: bool) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["crop", "source_photo"])
    writer.writerows(rows)
    return (("\ufeff" if bom else "") + buffer.getvalue()).encode("utf-8")


@pytest.mark.parametrize("bom", [False, True])  # Excel's "CSV UTF-8" starts with a BOM
@pytest.mark.parametrize("kind", ["folder", "flat zip", "wrapped zip"])
def test_manifest_groups_are_read(tmp_path, source_files, bom, kind):
    files = {name: data for name, data in source_files.items() if name.startswith("class_1/photo")}
    rows = [(f"class_1/photo_{index}{SUFFIXES[FORMATS[index % 4]]}", f"shot_{index // 2}.jpg")
            for index in range(PHOTOS_PER_CLASS)]
    files["manifest.csv"] = _manifest_csv(rows, bom)
    if kind == "folder":
        source = write_folder(tmp_path / "photos", files)
    else:
        source = write_zip(tmp_path / "photos.zip", files, top="photos" if kind == "wrapped zip" else "")
    images, groups, skipped = ingestion.list_source(source)
    assert groups == dict(rows)
    assert skipped == []
    assert len(images) == PHOTOS_PER_CLASS


def test_manifest_without_its_columns_is_refused(tmp_path, source_files):
    files = {"class_1/photo_0.jpg": source_files["class_1/photo_0.jpg"],
             "manifest.csv": b"file,photo\nclass_1/photo_0.jpg,a.jpg\n"}
    with pytest.raises(ValueError, match="manifest.csv"):
        ingestion.list_source(write_folder(tmp_path / "photos", files))


def test_source_that_is_neither_folder_nor_zip_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="data source not found"):
        ingestion.list_source(tmp_path / "missing")
    text = tmp_path / "photos.tar"
    text.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="must be a folder"):
        ingestion.list_source(text)


def test_oversized_image_is_refused_before_decoding(monkeypatch, source_files, config):
    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    images = [ingestion.SourceImage("class_5", name, lambda name=name: source_files[name])
              for name in ("class_5/big.png", "class_5/bomb.png")]
    ingested = ingestion.ingest(images, {}, config)
    assert ingested.crops == {} and ingested.sizes == []
    reasons = [entry["reason"] for entry in ingested.skipped]
    assert reasons[0] == f"8000x8000 pixels exceeds the limit of {MAX_PIXELS} pixels"
    assert "exceeds" in reasons[1] and "pixels" in reasons[1]


def test_pixel_limit_comes_from_the_config(source_files, config):
    # A 64 x 64 photo is refused under a 4000-pixel limit and accepted under 4096.
    data = source_files["class_1/photo_1.png"]
    images = [ingestion.SourceImage("class_1", "class_1/photo_1.png", lambda: data)]
    refused = ingestion.ingest(images, {}, dataclasses.replace(config, max_image_pixels=4000))
    assert refused.skipped == [{"file": "class_1/photo_1.png",
                                "reason": "64x64 pixels exceeds the limit of 4000 pixels"}]
    exact = dataclasses.replace(config, max_image_pixels=64 * 64)
    assert len(ingestion.ingest(images, {}, exact).crops["class_1"]) == 1


# --- class partition and splits ---------------------------------------------------------------


def test_split_classes_is_a_seeded_partition():
    labels = [f"pill_{index:02d}" for index in range(20)]

    def partition(seed):
        return preparation.split_classes(labels, 0.25, 0.1, 0.2, np.random.default_rng(seed))

    first = partition(7)
    assert first == partition(7)
    # 20 classes: novel round(5.0) = 5 (of which absent round(0.2 * 5) = 1), calibration 2, train 13
    assert [len(first[kind]) for kind in ("absent", "novel", "calibration", "train")] == [1, 4, 2, 13]
    assert sorted(sum(first.values(), [])) == labels
    assert len({tuple(map(tuple, partition(seed).values())) for seed in range(5)}) > 1
    assert partition(7) == preparation.split_classes(labels[::-1], 0.25, 0.1, 0.2, np.random.default_rng(7))


def test_split_classes_refuses_too_few_classes():
    with pytest.raises(ValueError, match="too few"):
        preparation.split_classes(["a", "b", "c"], 0.25, 0.1, 0.2, np.random.default_rng(0))


def _params(repo_params: dict, source: str = "unused", seed: int = 42) -> dict:
    params = copy.deepcopy(repo_params)
    params["base"]["seed"] = seed
    params["data"]["source"] = source
    # 8 classes: 2 novel (1 of them absent from the gallery), 1 calibration, 5 training
    params["prepare"].update(novel_classes=0.25, calibration_classes=0.1, absent_classes=0.5,
                             reference_shots=3)
    return params_module.validate(params)


def _make_splits(crops: dict, params: dict) -> tuple[dict, dict]:
    every = pilltrack_settings.from_params(params)
    return preparation.make_splits(crops, every.prepare, every.profile.image_size, every.base.seed)


def _synthetic_crops(shots_per_photo: int = 2, photos: int = 5, classes: int = 9) -> dict:
    """label -> [(pixels, source, group)]: `photos` photos per class, each cut into
    `shots_per_photo` crops (as a manifest would group them). The last class has 3 crops only."""
    crops = {}
    for index in range(classes):
        label = f"pill_{index}"
        count = photos if index < classes - 1 else 2
        crops[label] = [
            (np.full((64, 64, 3), index, np.uint8), f"{label}/photo_{photo}_crop_{crop}.png",
             f"{label}/photo_{photo}.jpg")
            for photo in range(count) for crop in range(shots_per_photo)
        ][: 3 if index == classes - 1 else None]
    return crops


def _pairs(split: dataset.Split, field: str = "groups") -> set:
    return set(zip(split.labels.tolist(), getattr(split, field).tolist()))


def test_make_splits_keeps_photo_groups_on_one_side(repo_params):
    splits, partition = _make_splits(_synthetic_crops(), _params(repo_params))
    assert partition["too_few_images"] == ["pill_8"]  # 3 crops, not more than 3 shots
    assert not _pairs(splits["references"]) & _pairs(splits["queries"])
    assert not _pairs(splits["calibration_references"]) & _pairs(splits["calibration_queries"])
    # reference_shots 3 from photos of 2 crops: a whole photo, then 1 crop of the next; the
    # other crop of that photo goes nowhere, so the queries keep 10 - 4 = 6 crops per class.
    for kind, references, queries in (("novel", "references", "queries"),
                                      ("calibration", "calibration_references", "calibration_queries")):
        for label in partition[kind]:
            assert splits[references].labels.tolist().count(label) == 3
            assert splits[queries].labels.tolist().count(label) == 6


def test_make_splits_trains_on_every_photo_of_a_training_class(repo_params):
    crops = _synthetic_crops()
    splits, partition = _make_splits(crops, _params(repo_params))
    for label in partition["train"]:
        assert splits["train"].labels.tolist().count(label) == len(crops[label]) == 10


def test_make_splits_class_sets_are_disjoint(repo_params):
    splits, partition = _make_splits(_synthetic_crops(), _params(repo_params))
    classes = {name: set(split.labels.tolist()) for name, split in splits.items()}
    kinds = [set(partition[kind]) for kind in ("train", "calibration", "novel", "absent")]
    assert [len(kind) for kind in kinds] == [5, 1, 1, 1]
    assert sum(len(kind) for kind in kinds) == len(set().union(*kinds)) == 8
    assert classes["train"] == set(partition["train"])
    assert classes["calibration_references"] == classes["calibration_queries"] == set(partition["calibration"])
    assert classes["references"] == classes["queries"] == set(partition["novel"])
    assert classes["absent_queries"] == set(partition["absent"])
    assert "pill_8" not in set().union(*classes.values())


def test_make_splits_is_deterministic_for_a_seed(repo_params):
    crops = _synthetic_crops()
    first, first_partition = _make_splits(crops, _params(repo_params, seed=3))
    again, again_partition = _make_splits(crops, _params(repo_params, seed=3))
    assert first_partition == again_partition
    for name in paths.SPLITS:
        for field in dataset.Split._fields:
            np.testing.assert_array_equal(getattr(first[name], field), getattr(again[name], field))
    others = [_make_splits(crops, _params(repo_params, seed=seed)) for seed in range(4, 9)]
    assert any(partition != first_partition
               or first["train"].sources.tolist() != splits["train"].sources.tolist()
               for splits, partition in others)


def test_make_splits_on_the_photo_folder(repo_params, folder_result):
    _, _, ingested = folder_result
    splits, partition = _make_splits(ingested.crops, _params(repo_params))
    sources = [source for split in splits.values() for source in split.sources.tolist()]
    assert len(sources) == len(set(sources)) == sum(len(items) for items in ingested.crops.values())
    assert set(partition["train"] + partition["calibration"] + partition["novel"]
               + partition["absent"]) == set(GOOD_CLASSES)
    for split in splits.values():
        assert split.pixels.shape[1:] == (64, 64, 3) and split.pixels.dtype == np.uint8


# --- the stage --------------------------------------------------------------------------------


@pytest.fixture
def prepared(tmp_path, monkeypatch, folder, repo_params):
    monkeypatch.chdir(tmp_path)
    lines: list[str] = []
    report = prepare.run(_params(repo_params, source=str(folder)), echo=lines.append)
    return report, lines


def test_run_writes_every_split_and_the_report(prepared, tmp_path):
    report, lines = prepared
    for name in paths.SPLITS:
        assert (tmp_path / paths.split_file(name)).is_file(), name
    written = json.loads((tmp_path / paths.REPORTS / "data_report.json").read_text(encoding="utf-8"))
    assert written == report
    splits = {name: dataset.load_split(name) for name in paths.SPLITS}  # relative paths: cwd is tmp_path
    assert {name: len(split) for name, split in splits.items()} == report["split_sizes"]
    assert sum(report["split_sizes"].values()) == report["images_used"]  # no manifest: nothing dropped
    assert all(len(splits[name]) > 0 for name in paths.SPLITS if name != "mix")
    assert len(splits["mix"]) == 0 and report["mix"] is None  # data.mix_ratio 0: no mix set
    labels = set().union(*(set(split.labels.tolist()) for split in splits.values()))
    assert labels == set(GOOD_CLASSES)
    assert lines[0].startswith("prepare: ") and lines[-1].startswith("prepare: ")
    assert "1 absent" in lines[-1]


def test_run_writes_the_shard_files_only_for_the_stream_input(tmp_path, monkeypatch, folder, repo_params):
    from tf_pilltrack.data import shards

    monkeypatch.chdir(tmp_path)
    params = _params(repo_params, source=str(folder))
    params["training"]["input"] = "stream"
    prepare.run(params, echo=lambda line: None)
    train = dataset.load_split("train")
    pills = shards.read_index(paths.SHARDS)["pills"]
    assert [pill["name"] for pill in pills] == sorted(set(train.labels.tolist()))  # training pills only
    assert sum(pill["photos"] for pill in pills) == len(train)
    params["training"]["input"] = "memory"
    prepare.run(params, echo=lambda line: None)
    assert not paths.SHARDS.exists()  # a memory run leaves no stale stream files


def tight_crop(rgb: np.ndarray) -> np.ndarray:
    """`rgb` cut to its pill's box, as a data set of pill crops has it: the pill meets every edge."""
    rows, columns = np.nonzero(np.abs(rgb.astype(np.int16) - BACKGROUND).sum(axis=2) > 40)
    return np.ascontiguousarray(rgb[rows.min():rows.max() + 1, columns.min():columns.max() + 1])


def test_ingest_counts_pills_found_at_the_image_edge(tmp_path, config):
    rng = np.random.default_rng(3)
    files = {f"a/photo_{index}.png": encode(pill_photo(COLOURS[0], rng), "PNG") for index in range(3)}
    files.update({f"a/crop_{index}.png": encode(tight_crop(pill_photo(COLOURS[0], rng)), "PNG") for index in range(2)})
    root = write_folder(tmp_path / "photos", files)
    assert config.localise
    _, _, ingested = list_and_ingest(root, config)
    assert len(ingested.crops["a"]) == 5 and ingested.at_edge == 2
    _, _, whole = list_and_ingest(root, dataclasses.replace(config, localise=False))
    assert whole.at_edge == 0  # without localisation there is nothing to count


def test_run_says_when_the_photos_look_like_tight_crops(tmp_path, monkeypatch, repo_params, prepared):
    report, lines = prepared  # pills photographed on a tray: none at the edge, no hint
    assert report["localised_pill_at_image_edge"] == 0
    assert not any("touches the photo's edge" in line for line in lines)
    rng = np.random.default_rng(5)
    files = {f"{label}/crop_{index}.png": encode(tight_crop(pill_photo(colour, rng)), "PNG")
             for label, colour in zip(GOOD_CLASSES, COLOURS) for index in range(PHOTOS_PER_CLASS)}
    crops = write_folder(tmp_path / "crops", files)
    monkeypatch.chdir(tmp_path)
    params = _params(repo_params, source=str(crops))
    for localise, hint in ((True, True), ("auto", False)):  # auto uses such photos whole: no hint
        params["preprocess"]["localise"] = localise
        lines = []
        report = prepare.run(params, echo=lines.append)
        assert report["localised_pill_at_image_edge"] == report["images_used"] == len(files)
        assert any("touches the photo's edge" in line and "preprocess.localise: auto or false" in line
                   for line in lines) == hint


def test_auto_localisation_takes_tight_crops_whole(tmp_path, config):
    rng = np.random.default_rng(3)
    files = {f"a/photo_{index}.png": encode(pill_photo(COLOURS[0], rng), "PNG") for index in range(3)}
    files.update({f"a/crop_{index}.png": encode(tight_crop(pill_photo(COLOURS[0], rng)), "PNG") for index in range(2)})
    root = write_folder(tmp_path / "photos", files)
    crops = {mode: {name: pixels for pixels, name, _ in list_and_ingest(root, dataclasses.replace(
        config, localise=mode))[2].crops["a"]} for mode in (True, False, "auto")}
    for name, pixels in crops["auto"].items():  # tray photos localised, tight crops whole
        np.testing.assert_array_equal(pixels, crops[False if "crop_" in name else True][name])
    assert not np.array_equal(crops[True]["a/crop_0.png"], crops[False]["a/crop_0.png"])


def test_run_report_counts_classes_skips_and_sizes(prepared):
    report, _ = prepared
    expected_classes = {label: PHOTOS_PER_CLASS for label in GOOD_CLASSES}
    expected_classes["class_6"] += len(EXTRA_GOOD)
    assert report["classes"] == expected_classes
    good = len(GOOD_CLASSES) * PHOTOS_PER_CLASS + len(EXTRA_GOOD)
    not_listed = {"loose.jpg", "class_2/sub/deep.jpg", "class_3/readme.txt"}
    assert report["images_used"] == good
    assert report["images_found"] == good + len(EXPECTED_SKIPS) - len(not_listed)
    assert {entry["file"] for entry in report["skipped"]} == set(EXPECTED_SKIPS)
    for entry in report["skipped"]:
        assert entry["reason"].startswith(EXPECTED_SKIPS[entry["file"]])
    assert report["skipped_by_reason"]["no pill found"] == 2
    assert report["skipped_by_reason"]["not directly inside a class folder"] == 2
    assert report["classes_without_usable_images"] == ["broken_class"]
    # decoded: 68 photos of 64 x 64, the upright EXIF photo 48 x 64, the 1 x 1 image
    assert report["image_size_spread"] == {
        "width": {"min": 1, "median": 64.0, "max": 64},
        "height": {"min": 1, "median": 64.0, "max": 64},
    }
    partition = report["class_partition"]
    assert [len(partition[kind]) for kind in ("train", "calibration", "novel", "absent")] == [5, 1, 1, 1]


def test_run_is_reproducible(prepared, tmp_path, folder, repo_params):
    first = {name: dataset.load_split(name) for name in paths.SPLITS}
    prepare.run(_params(repo_params, source=str(folder)), echo=lambda line: None)
    for name in paths.SPLITS:
        again = dataset.load_split(name)
        for field in dataset.Split._fields:
            np.testing.assert_array_equal(getattr(first[name], field), getattr(again, field))


def test_mix_source_becomes_the_mix_split_of_training_classes(tmp_path, monkeypatch, folder, source_files,
                                                             repo_params):
    """data.mix_source's pills (here: the folder's own photos, zipped, as another set) all go to
    the `mix` split, preprocessed the same way, with their bad files reported; the main splits
    do not change."""
    monkeypatch.chdir(tmp_path)
    params = _params(repo_params, source=str(folder))
    prepare.run(params, echo=lambda line: None)
    without = {name: dataset.load_split(name) for name in paths.SPLITS}
    params["data"].update(mix_source=str(write_zip(tmp_path / "mix.zip", source_files)),
                          mix_ratio=0.5, mix_train_classes=1.0)
    lines: list[str] = []
    report = prepare.run(params, echo=lines.append)
    mix = dataset.load_split("mix")
    good = len(GOOD_CLASSES) * PHOTOS_PER_CLASS + len(EXTRA_GOOD)
    assert len(mix) == report["mix"]["crops_used"] == report["split_sizes"]["mix"] == good
    assert set(mix.labels.tolist()) == set(GOOD_CLASSES) == set(report["mix"]["classes"])
    assert mix.pixels.shape[1:] == (64, 64, 3)
    assert {entry["file"] for entry in report["mix"]["skipped"]} >= {"class_0/truncated.jpg", "class_4/plain.png"}
    assert any(line.startswith("prepare: mix set") and "50% of each batch" in line for line in lines)
    for name in paths.SPLITS:
        if name != "mix":
            np.testing.assert_array_equal(dataset.load_split(name).sources, without[name].sources)


def test_mix_train_classes_leaves_a_seeded_share_of_the_mix_pills_out(tmp_path, monkeypatch, folder, source_files,
                                                                     repo_params):
    monkeypatch.chdir(tmp_path)
    params = _params(repo_params, source=str(folder))
    params["data"].update(mix_source=str(write_zip(tmp_path / "mix.zip", source_files)),
                          mix_ratio=0.5, mix_train_classes=0.5)
    lines: list[str] = []
    report = prepare.run(params, echo=lines.append)
    trained = set(dataset.load_split("mix").labels.tolist())
    left_out = set(report["mix"]["classes_left_out"])
    assert trained == set(report["mix"]["classes"]) and not trained & left_out
    assert trained | left_out == set(GOOD_CLASSES)
    assert len(trained) == max(1, round(0.5 * len(GOOD_CLASSES)))
    assert any(f"({len(left_out)} more left out for evaluation)" in line for line in lines)
    assert trained == set(prepare.run(params, echo=lambda line: None)["mix"]["classes"])  # seeded
    labels = [f"pill_{index}" for index in range(20)]
    chosen = {seed: preparation.choose_mix_classes(labels, 0.5, seed) for seed in (1, 2)}
    assert all(len(value) == 10 for value in chosen.values()) and chosen[1] != chosen[2]
    assert preparation.choose_mix_classes(labels, 0.01, 1) != [] and preparation.choose_mix_classes(labels, 1.0, 1) == sorted(labels)
    with pytest.raises(ValueError, match=r"data.mix_train_classes must be within \(0, 1\], got 0"):
        preparation.choose_mix_classes(labels, 0, 1)


def test_mix_source_that_is_the_source_is_refused(tmp_path, monkeypatch, folder, repo_params):
    monkeypatch.chdir(tmp_path)
    params = _params(repo_params, source=str(folder))
    params["data"].update(mix_source=str(folder) + "/", mix_ratio=0.3)
    with pytest.raises(ValueError, match="mix_source is data.source itself"):
        prepare.run(params, echo=lambda line: None)
    params["data"].update(mix_source=str(tmp_path / "missing"), mix_ratio=0.3)
    with pytest.raises(FileNotFoundError, match="missing: data.mix_source not found"):
        prepare.run(params, echo=lambda line: None)


# --- decode_image properties ------------------------------------------------------------------


def _seed_encodings() -> list[bytes]:
    rgb = np.random.default_rng(1).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    return [encode(rgb, image_format) for image_format in ("PNG", "JPEG", "BMP", "WEBP", "GIF", "TIFF")]


SEED_ENCODINGS = _seed_encodings()


@st.composite
def damaged_images(draw) -> bytes:
    """A small valid PNG, JPEG, BMP, WebP, GIF or TIFF with some bytes overwritten and the end
    perhaps cut off: the decoder gets past the signature and meets broken data."""
    data = bytearray(draw(st.sampled_from(SEED_ENCODINGS)))
    for position, value in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)),
                                         max_size=6)):
        data[position] = value
    return bytes(data[: draw(st.integers(0, len(data)))])


@pytest.mark.filterwarnings("ignore:Truncated File Read")  # Pillow's TIFF reader warns, then fails
@settings(max_examples=100, deadline=None)
@given(data=st.one_of(st.binary(max_size=300), damaged_images()))
def test_decode_image_returns_rgb_or_raises_image_error(data):
    try:
        rgb = decode_image(data, "fuzzed.png", 1_000_000)
    except ImageError as error:
        assert error.source == "fuzzed.png" and error.reason
        return
    assert isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.shape[0] >= 1 and rgb.shape[1] >= 1


@settings(max_examples=100, deadline=None)
@given(rgb=hnp.arrays(np.uint8, st.tuples(st.integers(1, 16), st.integers(1, 16), st.just(3))))
def test_png_round_trips_exactly(rgb):
    decoded = decode_image(encode(rgb, "PNG"), "round-trip.png", 1_000_000)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, rgb)


def test_duplicate_photos_are_reported_and_kept_once(tmp_path, config):
    rng = np.random.default_rng(5)
    photo = encode(pill_photo((200, 40, 40), rng), "PNG")
    other = encode(pill_photo((40, 40, 200), rng), "PNG")
    root = write_folder(tmp_path / "source", {
        "red/a.png": photo, "red/a_copy.png": photo, "blue/b.png": other, "blue/same_as_red.png": photo})
    images, groups, skipped = ingestion.list_source(root)
    ingested = ingestion.ingest(images, groups, config)
    reasons = {entry["file"]: entry["reason"] for entry in ingested.skipped}
    # files are read in path order, so blue/same_as_red.png is the copy that stays
    assert reasons == {"red/a.png": "duplicate of blue/same_as_red.png in another class (blue)",
                       "red/a_copy.png": "duplicate of blue/same_as_red.png in another class (blue)"}
    assert {label: len(items) for label, items in ingested.crops.items()} == {"blue": 2}
    assert ingestion.empty_class_folders(root) == ["empty_class"]


def test_cmyk_jpeg_is_converted_to_rgb():
    from PIL import Image

    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, :8] = (200, 30, 30)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    decoded = decode_image(encode(cmyk, "JPEG", quality=95), "cmyk.jpg", 10**6)
    assert decoded.shape == (16, 16, 3) and decoded.dtype == np.uint8
    assert decoded[8, 2, 0] > 150 and decoded[8, 2, 1] < 80  # the red half stays red
    assert decoded[8, 13].max() < 40  # the black half stays black
