"""Fuzzing the two image loaders: mutated photos and files of foreign formats, whatever
their names say, through the device's loader (`capture.image_frames`, what `pilltrack-edge
--image` and `enroll` read with) and through `pilltrack prepare`'s (`list_source` + `ingest` of a
zip). No exception may escape, every file is either used or reported, and the batch goes on: a
good photo after the hostile ones is always read. Seeded (derandomized) and bounded: a few
seconds, in the default suite."""

from __future__ import annotations

import io
import os
import pathlib
import tempfile
import zipfile

import numpy as np
from edge_fixtures import pill_photo
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from edge_runtime import capture
from edge_runtime.preprocessing import PreprocessConfig

# Found by this test on the old loaders: a truncated QOI file named .jpg made Pillow raise IndexError.
TRUNCATED_QOI = ("photo.jpg", b"qoif\x00\x00\x00\n\x00\x00\x00\x0c\x03")
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def _seeds() -> list[bytes]:
    """Small files: the photo formats the loaders read, and foreign ones Pillow or others know."""
    rgb = Image.fromarray(np.random.default_rng(3).integers(0, 256, (12, 10, 3), dtype=np.uint8))
    photos = [_encode(rgb, name) for name in ("PNG", "JPEG", "BMP", "WEBP", "GIF", "TIFF")]
    photos.append(_encode(rgb.convert("CMYK"), "JPEG"))
    photos.append(_encode(rgb.convert("I;16"), "PNG"))
    photos.append(_encode(rgb.convert("P"), "PNG", transparency=0))
    foreign = [_encode(rgb, name) for name in ("ICO", "PPM", "TGA", "PCX", "SGI", "IM", "DDS", "QOI")]
    foreign += [b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", b"%PDF-1.4\n%\xe2\xe3\n1 0 obj\n",
                b"8BPS\x00\x01" + bytes(20), b"PK\x03\x04" + bytes(26), b"\x00\x00\x00\x18ftypheic" + bytes(16),
                b"GIF89a\xff\xff\xff\xff" + bytes(8), b"BM" + (2**31 - 1).to_bytes(4, "little") + bytes(48)]
    return photos + foreign


SEEDS = _seeds()


@st.composite
def hostile_bytes(draw) -> bytes:
    """A seed file mutated: bytes overwritten, a slice cut out or repeated, the head of one
    format spliced onto another's body, the end cut off; or plain random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["overwrite", "cut", "repeat", "splice"]))
        start = draw(st.integers(0, max(0, len(data) - 1)))
        end = draw(st.integers(start, min(len(data), start + 64)))
        if kind == "overwrite":
            data[start:end] = draw(st.binary(min_size=end - start, max_size=end - start))
        elif kind == "cut":
            del data[start:end]
        elif kind == "repeat":
            data[start:start] = data[start:end] * draw(st.integers(1, 4))
        else:
            other = draw(st.sampled_from(SEEDS))
            data = bytearray(other[:draw(st.integers(0, len(other)))]) + data[start:]
    return bytes(data[:draw(st.integers(0, len(data)))])


GOOD = _encode(Image.fromarray(pill_photo((220, 40, 40))), "PNG")
NAMES = st.sampled_from(["photo.jpg", "photo.png", "scan.tif", "x.webp", "x.bmp", "noext"])


@FUZZ
@given(files=st.lists(st.tuples(NAMES, hostile_bytes()), min_size=1, max_size=4))
@example(files=[TRUNCATED_QOI])
def test_the_device_loader_reads_or_reports_every_file_and_goes_on(files):
    with tempfile.TemporaryDirectory() as directory:
        paths = []
        for position, (name, data) in enumerate(files):
            paths.append(os.path.join(directory, f"{position}-{name}"))
            pathlib.Path(paths[-1]).write_bytes(data)
        paths.append(os.path.join(directory, "good.png"))
        pathlib.Path(paths[-1]).write_bytes(GOOD)
        errors = []
        frames = list(capture.image_frames(paths, 10**6, on_error=errors.append))
    assert sorted([frame.source for frame in frames] + [error.source for error in errors]) == sorted(paths)
    assert frames[-1].source == paths[-1] and frames[-1].rgb.shape == (96, 96, 3)
    for error in errors:
        assert str(error).startswith(f"{error.source}: ") and "\n" not in str(error) and len(str(error)) < 400
    for frame in frames:
        assert frame.rgb.dtype == np.uint8 and frame.rgb.ndim == 3 and frame.rgb.shape[2] == 3


CONFIG = PreprocessConfig(image_size=32, localise=True, min_pill_fraction=0.005, max_pill_fraction=0.9,
                          crop_margin=0.15, max_image_pixels=10**6, symmetry_views=1)


@FUZZ
@given(files=st.lists(st.tuples(NAMES.filter(lambda name: "." in name), hostile_bytes()), min_size=1, max_size=4),
       compression=st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
@example(files=[TRUNCATED_QOI], compression=zipfile.ZIP_STORED)
def test_prepare_reads_or_reports_every_member_and_goes_on(files, compression):
    from tf_pilltrack.data import ingestion

    with tempfile.TemporaryDirectory() as directory:
        archive = pathlib.Path(directory) / "source.zip"
        with zipfile.ZipFile(archive, "w", compression) as handle:
            for position, (name, data) in enumerate(files):
                handle.writestr(f"hostile/{position}-{name}", data)
            handle.writestr("red/good.png", GOOD)
        images, groups, skipped = ingestion.list_source(archive)
        ingested = ingestion.ingest(images, groups, CONFIG)
    used = [source for items in ingested.crops.values() for _, source, _ in items]
    reported = [entry["file"] for entry in skipped + ingested.skipped]
    assert sorted(used + reported) == sorted([f"hostile/{n}-{name}" for n, (name, _) in enumerate(files)]
                                             + ["red/good.png"])
    assert "red/good.png" in used
    assert all(entry["reason"] and "\n" not in entry["reason"] for entry in ingested.skipped)
