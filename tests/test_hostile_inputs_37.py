"""Hostile inputs of issue 37's probe, beyond the Annoy index (tests/test_edge_index_fuzz.py):
manifest.csv fields over csv's limit and manifests that are not UTF-8 are one error naming the
file and line; a zip member whose headers understate its size is read in bounded memory and
reported; bundle.json with a key twice is refused; a fullwidth "ｕｎｋｎｏｗｎ" is reserved."""

from __future__ import annotations

import io
import json
import os
import pathlib
import tracemalloc
import zipfile

import numpy as np
import pytest
from edge_fixtures import pill_photo
from PIL import Image

from edge_runtime.bundle import SIDECAR, BundleError, load_bundle
from edge_runtime.preprocessing import PreprocessConfig
from tf_pilltrack import ingestion


def png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    return buffer.getvalue()


def folder_source(root: pathlib.Path, manifest: bytes) -> pathlib.Path:
    (root / "red").mkdir(parents=True)
    (root / "red" / "0.png").write_bytes(png(pill_photo((220, 40, 40))))
    (root / "manifest.csv").write_bytes(manifest)
    return root


LONG_FIELD = b"crop,source_photo\nred/0.png,a\nred/1.png," + b"x" * 131_073 + b"\n"
NOT_UTF8 = b"crop,source_photo\nred/0.png,a\nred/\xff.png,b\n"


@pytest.mark.parametrize("manifest, problem", [(LONG_FIELD, r"line 3: not readable CSV \(field larger"),
                                               (NOT_UTF8, r"line 3: not UTF-8 text")])
def test_a_bad_manifest_is_an_error_naming_the_file_and_line(tmp_path, manifest, problem):
    root = folder_source(tmp_path / "source", manifest)
    path = str(root / "manifest.csv")
    with pytest.raises(ValueError, match=f"^{path}: {problem}"):
        ingestion.list_source(root)
    with pytest.raises(ValueError, match=f"^{path}: {problem}"):
        ingestion.read_sides(root)
    archive = tmp_path / "source.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("red/0.png", (root / "red" / "0.png").read_bytes())
        handle.writestr("manifest.csv", manifest)
    with pytest.raises(ValueError, match=f"^{archive}: manifest.csv: {problem}"):
        ingestion.list_source(archive)
    with pytest.raises(ValueError, match=f"^{archive}: manifest.csv: {problem}"):
        ingestion.read_sides(archive)


def understated_zip(path: pathlib.Path, member: str, size: int, declared: int) -> pathlib.Path:
    """A zip whose `member` inflates to `size` zero bytes while its local and central headers
    both say `declared`; next to it, a good photo."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("red/good.png", png(pill_photo((220, 40, 40))))
        handle.writestr(member, b"\0" * size)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as handle:
        info = handle.getinfo(member)
    data[info.header_offset + 22:info.header_offset + 26] = declared.to_bytes(4, "little")
    central = data.index(b"PK\x01\x02")
    while bytes(data[central + 46:central + 46 + len(member)]) != member.encode():
        central = data.index(b"PK\x01\x02", central + 4)
    data[central + 24:central + 28] = declared.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


def test_a_zip_member_that_understates_its_size_is_read_in_bounded_memory(tmp_path):
    """64 MiB of zeros whose headers say 1 MiB: zipfile's read() inflated all of it (up to 2 GiB)
    in one call before its CRC check; now at most the declared size is held, and it is skipped."""
    archive = understated_zip(tmp_path / "source.zip", "red/bomb.png", 64 << 20, 1 << 20)
    images, groups, skipped = ingestion.list_source(archive)
    assert skipped == []  # its header looks fine
    config = PreprocessConfig(image_size=32, localise=True, min_pill_fraction=0.005, max_pill_fraction=0.9,
                              crop_margin=0.15, max_image_pixels=10**7, symmetry_views=1)
    tracemalloc.start()
    try:
        ingested = ingestion.ingest(images, groups, config)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak} bytes at the peak"
    reasons = {entry["file"]: entry["reason"] for entry in ingested.skipped}
    assert list(reasons) == ["red/bomb.png"] and reasons["red/bomb.png"].startswith("cannot be read")
    assert len(ingested.crops["red"]) == 1


def test_a_zip_manifest_that_understates_its_size_is_an_error_not_a_gigabyte(tmp_path):
    archive = understated_zip(tmp_path / "source.zip", "manifest.csv", 64 << 20, 1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=f"^{archive}: "):
            ingestion.read_sides(archive)
        with pytest.raises(ValueError, match=f"^{archive}: "):
            ingestion.list_source(archive)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak} bytes at the peak"


def test_a_sidecar_with_a_key_twice_is_refused(edge_bundle):
    path = os.path.join(edge_bundle, SIDECAR)
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    sidecar = json.loads(text)
    # The same object with "unknown_threshold" given twice: json.loads kept the last one.
    doubled = text.replace('"unknown_threshold":', '"unknown_threshold": 1.5, "unknown_threshold":', 1)
    assert json.loads(doubled) == sidecar
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(doubled)
    with pytest.raises(BundleError, match=f"^{path}: the key 'unknown_threshold' appears twice"):
        load_bundle(edge_bundle, verify_model=False)


@pytest.mark.parametrize("label", ["ｕｎｋｎｏｗｎ", "ＵＮＫＮＯＷＮ", "unknown", "UNKNOWN", " Unknown "])
def test_every_spelling_of_unknown_is_reserved(label):
    from edge_runtime.gallery import check_label

    with pytest.raises(ValueError, match="reserved"):
        check_label(label)


def test_labels_that_only_resemble_unknown_are_fine():
    from edge_runtime.gallery import check_label

    assert check_label("unknown 2") == "unknown 2"
    assert check_label("ｕｎｋｎｏｗ") == "ｕｎｋｎｏｗ"
