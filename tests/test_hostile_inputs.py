"""Hostile inputs: decoder exceptions, special files, native libraries' stderr,
unreadable videos, training ingestion (zip members, special files) and params.yaml values too
large to print. Each case ends in a one-line error naming the file, or in that file being
reported and skipped while the rest of the batch goes on."""

from __future__ import annotations

import io
import json
import os
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from edge_fixtures import pill_photo, pill_photos, write_photo
from PIL import Image

from edge_runtime import limits
from edge_runtime.cli import main
from edge_runtime.preprocessing import ImageError, PreprocessConfig, read_image

ROOT = pathlib.Path(__file__).resolve().parent.parent

# What the image library raised on files of formats it half-supports.
DECODER_EXCEPTIONS = [IndexError, ZeroDivisionError, NotImplementedError, KeyError, TypeError, AttributeError,
                      MemoryError, RuntimeError]


def png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def decoder_raising(monkeypatch):
    """Image.open raises `exception` on bytes starting with b"BOOM", and opens the rest."""
    real_open = Image.open

    def install(exception):
        def opening(stream, *args, **kwargs):
            if stream.read(4) == b"BOOM":
                raise exception("the decoder broke")
            stream.seek(0)
            return real_open(stream, *args, **kwargs)

        monkeypatch.setattr(Image, "open", opening)

    return install


def run_cli(*args, timeout=120) -> subprocess.CompletedProcess:
    """pilltrack-edge in its own process, as a user runs it: what reaches stderr from native
    libraries too. The timeout only stops a hang (of the old code) from stopping the suite."""
    return subprocess.run([sys.executable, "-m", "edge_runtime.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


# --- 2. any decoder exception is that image's error --------------------------------------------


@pytest.mark.parametrize("exception", DECODER_EXCEPTIONS, ids=lambda e: e.__name__)
def test_a_decoder_exception_is_the_images_error(tmp_path, decoder_raising, exception):
    decoder_raising(exception)
    path = tmp_path / "foreign.jpg"
    path.write_bytes(b"BOOM and then some bytes of another format")
    with pytest.raises(ImageError, match=r"foreign.jpg: not a readable image \((.*the decoder broke|too large)"):
        read_image(path, 10**6)


def test_identification_reports_the_bad_image_and_identifies_the_rest(edge_bundle, tmp_path, decoder_raising):
    decoder_raising(ZeroDivisionError)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"BOOM")
    good = write_photo(tmp_path / "green.png", pill_photos("green", 1, seed=4)[0])
    result = CliRunner().invoke(main, ["--bundle", edge_bundle, "--headless", "--image", str(bad), good])
    assert result.exit_code == 2
    assert result.stderr == f"error: {bad}: not a readable image (ZeroDivisionError: the decoder broke)\n"
    assert json.loads(result.stdout)["label"] == "green"


def test_enrollment_skips_the_bad_photo_and_enrolls_the_rest(edge_bundle, tmp_path, decoder_raising):
    decoder_raising(IndexError)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"BOOM")
    photos = [write_photo(tmp_path / f"cyan{n}.png", photo) for n, photo in enumerate(pill_photos("cyan", 2))]
    result = CliRunner().invoke(main, ["--bundle", edge_bundle, "enroll", "--label", "cyan", str(bad), *photos])
    assert result.exit_code == 0, result.output
    assert result.stderr == f"skipped {bad}: not a readable image (IndexError: the decoder broke)\n"
    assert result.stdout.startswith("enrolled 'cyan' from 2 photos")


def test_an_image_over_the_byte_limit_is_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(png(pill_photo((200, 40, 40))))
    monkeypatch.setattr(limits, "MAX_IMAGE_BYTES", os.path.getsize(path) - 1)
    with pytest.raises(ImageError, match=r"big.png: \d+ bytes, over the limit of \d+ bytes"):
        read_image(path, 10**6)


def test_formats_outside_the_photo_formats_are_not_opened(tmp_path):
    """An EPS named .jpg would be handed to Ghostscript by the image library."""
    path = tmp_path / "page.jpg"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ImageError, match="page.jpg: not a readable image \\(unrecognised format"):
        read_image(path, 10**6)


# --- 3. special files are refused, never opened or waited on ------------------------------------------


@pytest.fixture
def fifo(tmp_path) -> str:
    path = str(tmp_path / "pipe.png")
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "directory"])
def test_special_files_as_images_are_refused(tmp_path, fifo, special):
    path = {"fifo": fifo, "/dev/zero": "/dev/zero", "directory": str(tmp_path)}[special]
    kind = {"fifo": "a FIFO", "/dev/zero": "a character device", "directory": "a directory"}[special]
    with pytest.raises(ImageError, match=f"not a regular file \\({kind}\\)"):
        read_image(path, 10**6)


def test_a_fifo_and_a_device_among_images_are_skipped_and_the_rest_identified(edge_bundle, tmp_path, fifo):
    good = write_photo(tmp_path / "green.png", pill_photos("green", 1, seed=4)[0])
    result = run_cli("--bundle", edge_bundle, "--headless", "--threads", "1", "--image", fifo, "/dev/zero", good)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {fifo}: not a regular file (a FIFO)",
                                          "error: /dev/zero: not a regular file (a character device)"]
    assert json.loads(result.stdout)["label"] == "green"


def test_a_fifo_as_a_video_or_a_photo_to_enroll_is_bad_input(edge_bundle, fifo):
    video = run_cli("--bundle", edge_bundle, "--headless", "--video", fifo)
    assert video.returncode == 2 and video.stderr == f"error: {fifo}: not a regular file (a FIFO)\n"
    enroll = run_cli("--bundle", edge_bundle, "enroll", "--label", "cyan", fifo)
    assert enroll.returncode == 2
    assert enroll.stderr.splitlines() == [f"skipped {fifo}: not a regular file (a FIFO)",
                                          "error: no usable photo: no pill found in any, nothing enrolled"]


@pytest.mark.parametrize("which", ["bundle.json", "data file"])
def test_a_fifo_in_place_of_a_bundle_file_is_refused(edge_bundle, tmp_path, which):
    with open(os.path.join(edge_bundle, "bundle.json")) as handle:
        name = "bundle.json" if which == "bundle.json" else json.load(handle)["files"]["embeddings"]["name"]
    os.unlink(os.path.join(edge_bundle, name))
    os.mkfifo(os.path.join(edge_bundle, name))
    photo = write_photo(tmp_path / "red.png", pill_photos("red", 1)[0])
    result = run_cli("--bundle", edge_bundle, "--image", photo)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {os.path.join(edge_bundle, name)}: not a regular file (a FIFO)")
    assert result.stderr.count("\n") == 1


# --- 5. stderr carries the product's own line only; an unreadable video is bad input -------------------


def test_identifying_prints_nothing_on_stderr(edge_bundle, tmp_path):
    """The interpreter's delegate banner came on every run."""
    photo = write_photo(tmp_path / "red.png", pill_photos("red", 1)[0])
    result = run_cli("--bundle", edge_bundle, "--headless", "--threads", "1", "--image", photo)
    assert result.returncode == 0 and json.loads(result.stdout)["label"] == "red"
    assert result.stderr == ""


@pytest.mark.parametrize("content", [b"", b"hello", bytes(range(256)) * 20], ids=["empty", "text", "noise"])
@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_an_unreadable_video_is_one_line_and_exit_2(edge_bundle, tmp_path, content, suffix):
    path = tmp_path / f"clip{suffix}"
    path.write_bytes(content)
    result = run_cli("--bundle", edge_bundle, "--headless", "--video", str(path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {path}: not a video this client can decode")
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_a_camera_that_cannot_be_opened_is_one_line(edge_bundle):
    result = run_cli("--bundle", edge_bundle, "--headless", "--camera", str(limits.MAX_CAMERA_INDEX))
    assert result.returncode == 1
    assert result.stderr == (f"error: camera {limits.MAX_CAMERA_INDEX}: cannot be opened (is it connected, and "
                             "not in use by another program?)\n")


# --- 6. training ingestion -------------------------------------------------------------------------------


@pytest.fixture
def config() -> PreprocessConfig:
    return PreprocessConfig(image_size=32, localise=True, min_pill_fraction=0.005, max_pill_fraction=0.9,
                            crop_margin=0.15, max_image_pixels=10**7, symmetry_views=1)


def patch_member(archive: pathlib.Path, member: str, method: int | None = None, encrypted: bool = False) -> None:
    """Rewrite a member's compression method, or set its encrypted flag, in its local and
    central headers (zipfile writes neither)."""
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as handle:
        info = handle.getinfo(member)

    def patch(flags_at: int) -> None:  # the method follows the flags
        if encrypted:
            data[flags_at] |= 0x1
        if method is not None:
            data[flags_at + 2:flags_at + 4] = method.to_bytes(2, "little")

    patch(info.header_offset + 6)
    start = data.index(b"PK\x01\x02")
    while start >= 0:
        length = int.from_bytes(data[start + 28:start + 30], "little")
        if bytes(data[start + 46:start + 46 + length]) == member.encode():
            patch(start + 8)
        start = data.find(b"PK\x01\x02", start + 46)
    archive.write_bytes(bytes(data))


def hostile_zip(path: pathlib.Path) -> pathlib.Path:
    """Three good photos of each of two pills, and five hostile members in a third class."""
    with zipfile.ZipFile(path, "w") as handle:
        for label, colour in (("red", (220, 40, 40)), ("blue", (40, 70, 220))):
            for index in range(3):
                rng = np.random.default_rng([index, colour[0]])
                centre = (int(rng.integers(35, 60)), int(rng.integers(35, 60)))
                handle.writestr(f"{label}/{index}.png", png(pill_photo(colour, centre=centre)))
        handle.writestr("bad/encrypted.png", png(pill_photo((40, 200, 60))))
        handle.writestr("bad/method.png", png(pill_photo((40, 200, 200))))
        handle.writestr("bad/huge.png", b"\0" * 5000)
        handle.writestr("bad/boom.png", b"BOOM")
        handle.writestr("bad/text.jpg", b"not an image at all")
    patch_member(path, "bad/encrypted.png", encrypted=True)  # zipfile raises RuntimeError on reading it
    patch_member(path, "bad/method.png", method=97)  # WavPack: zipfile raises NotImplementedError
    return path


def test_prepare_reports_and_skips_hostile_zip_members(tmp_path, config, decoder_raising, monkeypatch):
    from tf_pilltrack.data import ingestion

    decoder_raising(IndexError)
    monkeypatch.setattr(limits, "MAX_IMAGE_BYTES", 4000)  # the PNGs are about 600 bytes, huge.png 5000
    images, groups, skipped = ingestion.list_source(hostile_zip(tmp_path / "source.zip"))
    ingested = ingestion.ingest(images, groups, config)
    reasons = {entry["file"]: entry["reason"] for entry in skipped + ingested.skipped}
    assert reasons == {
        "bad/encrypted.png": "encrypted (password-protected), not read",
        "bad/method.png": "compression method 97 is not supported (only stored, deflate, bzip2, lzma)",
        "bad/huge.png": "5000 bytes, over the limit of 4000 bytes",
        "bad/boom.png": "not a readable image (IndexError: the decoder broke)",
        "bad/text.jpg": "not a readable image (unrecognised format; reads JPEG, PNG, WEBP, BMP, GIF, TIFF)",
    }
    assert {label: len(items) for label, items in ingested.crops.items()} == {"red": 3, "blue": 3}


def test_prepare_skips_special_files_in_a_folder(tmp_path, config):
    from tf_pilltrack.data import ingestion

    root = tmp_path / "source"
    (root / "red").mkdir(parents=True)
    for index in range(2):
        (root / "red" / f"{index}.png").write_bytes(png(pill_photo((220, 40, 40), centre=(40 + index * 9, 48))))
    os.mkfifo(root / "red" / "pipe.png")
    os.symlink("/dev/zero", root / "red" / "zero.png")
    images, groups, skipped = ingestion.list_source(root)
    ingested = ingestion.ingest(images, groups, config)
    reasons = {entry["file"]: entry["reason"] for entry in skipped + ingested.skipped}
    assert reasons == {"red/pipe.png": "not a regular file (a FIFO)",
                       "red/zero.png": "not a regular file (a character device)"}
    assert len(ingested.crops["red"]) == 2


@pytest.mark.parametrize("source, kind", [("/dev/zero", "a character device"), ("fifo", "a FIFO")])
def test_a_special_file_as_the_data_source_is_refused(tmp_path, source, kind):
    from tf_pilltrack.data import ingestion

    if source == "fifo":
        source = tmp_path / "source.zip"
        os.mkfifo(source)
    with pytest.raises(ValueError, match=f"must be a folder .* or a .zip of one, and this is not a regular file "
                                         f"\\({kind}\\)"):
        ingestion.list_source(pathlib.Path(source))


def test_a_params_value_too_large_to_print_is_cut_short(tmp_path):
    """A YAML alias bomb where a string belongs: the message showed the whole expanded value
    (one took long enough to run out of memory)."""
    from tf_pilltrack import params as params_module

    levels = ["&l0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"&l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]" for level in range(1, 6)]
    text = (ROOT / "params.yaml").read_text(encoding="utf-8")
    lines = [f"  experiment: [{', '.join(levels)}]" if line.startswith("  experiment:") else line
             for line in text.splitlines()]
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(params_module.ParamsError, match="tracking.experiment: expected a non-empty string") as error:
        params_module.load(path)
    assert len(str(error.value)) < 200 and "\n" not in str(error.value)


def test_params_that_are_not_a_regular_file_are_refused(tmp_path):
    from tf_pilltrack import params as params_module

    os.mkfifo(tmp_path / "params.yaml")
    with pytest.raises(params_module.ParamsError, match=r"params.yaml: not a regular file \(a FIFO\)"):
        params_module.load(tmp_path / "params.yaml")
    with pytest.raises(params_module.ParamsError, match=r"/dev/zero: not a regular file \(a character device\)"):
        params_module.load("/dev/zero")
