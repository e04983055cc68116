"""Hostile inputs of a probe of the device client, beyond the Annoy index (tests/edge_runtime/test_index_fuzz.py):
manifest.csv fields over csv's limit and manifests that are not UTF-8 are one error naming the
file and line; a zip member whose headers understate its size is read in bounded memory and
reported; bundle.json with a key twice is refused; a fullwidth "ｕｎｋｎｏｗｎ" is reserved; a
dangling .lock link and an enroll that cannot write (a full disk, `ulimit -f`) are one error naming
the file, the bundle left as it was; params and state-dict errors name their file once, in one line;
`pilltrack export` and `evaluate` print no TensorFlow start-up lines; video frames are held to the
bundle's pixel limit (item 6)."""

from __future__ import annotations

import io
import json
import os
import pathlib
import re
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest
from edge_fixtures import pill_photo
from PIL import Image

from edge_runtime.bundle import SIDECAR, BundleError, load_bundle
from edge_runtime.preprocessing import PreprocessConfig
from tf_pilltrack.data import ingestion


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


# ---------------------------------------------------------------------------------------------
# Minors: a dangling .lock link, and writes an enroll cannot make (a full disk, `ulimit -f`).
# ---------------------------------------------------------------------------------------------


def test_a_dangling_lock_link_is_an_error_naming_it_and_creates_nothing(edge_bundle, tmp_path):
    """A `.lock` that is a symbolic link to nothing gave a raw "[Errno 2]" to readers, and a
    writer would have created the file it points at, outside the bundle."""
    from edge_runtime.enrollment import enroll

    lock = os.path.join(edge_bundle, ".lock")
    target = tmp_path / "elsewhere.lock"
    if os.path.lexists(lock):
        os.unlink(lock)
    os.symlink(target, lock)
    problem = f"^{lock}: a symbolic link to '{target}', which does not exist$"
    with pytest.raises(BundleError, match=problem):
        load_bundle(edge_bundle, verify_model=False)
    with pytest.raises(BundleError, match=problem):
        enroll(edge_bundle, "white", np.ones((1, 8), np.float32))
    assert not target.exists()


ENROLL_UNDER_A_FILE_SIZE_LIMIT = """
import resource, sys
import numpy as np
from edge_runtime.bundle import BundleWriteError
from edge_runtime.enrollment import enroll

resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
rows = np.random.default_rng(0).normal(size=(1000, 8)).astype(np.float32)
try:
    enroll(sys.argv[1], "white", rows)
except BundleWriteError as error:
    print(error)
"""


@pytest.mark.parametrize("limit, written", [(1024, "model.tflite"), (20_000, "index.ann")])
def test_an_enroll_over_a_file_size_limit_names_the_file_and_keeps_the_bundle(edge_bundle, limit, written):
    """`ulimit -f`: every write past the limit fails with EFBIG (Python ignores SIGXFSZ). The tiny
    model (3 KB) fails under 1 KiB; under 20 KB it is written and Annoy's index of 1,000 more rows
    is not. The error named no file, and Annoy printed a line of its own on stderr."""
    from edge_runtime.enrollment import list_labels

    sidecar = pathlib.Path(edge_bundle, SIDECAR).read_bytes()
    before = list_labels(edge_bundle)
    finished = subprocess.run([sys.executable, "-c", ENROLL_UNDER_A_FILE_SIZE_LIMIT, edge_bundle, str(limit)],
                              capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert finished.stderr == ""
    message = finished.stdout.strip()
    # Annoy words its own error: "Unable to write: File too large (27)".
    assert re.fullmatch(rf"{re.escape(edge_bundle)}/\S*{written}: cannot be written \((Unable to write: )?"
                        r"File too large( \(27\))?\); the bundle was not changed", message), message
    assert pathlib.Path(edge_bundle, SIDECAR).read_bytes() == sidecar
    assert list_labels(edge_bundle) == before
    assert load_bundle(edge_bundle, verify_model=False).labels == load_bundle(edge_bundle).labels


@pytest.mark.parametrize("failing", ["embeddings-", "bundle.json"])
def test_an_enroll_on_a_full_disk_names_the_file_and_keeps_the_bundle(edge_bundle, monkeypatch, failing):
    """ENOSPC while the bundle's own files are written (the model and index in scratch space are
    the test above): the error names the file; the sidecar is replaced last, so the bundle is whole."""
    import errno

    from edge_runtime import storage
    from edge_runtime.bundle import BundleWriteError
    from edge_runtime.enrollment import enroll, list_labels

    real = storage.write_atomically

    def full_disk(path, data):
        if os.path.basename(path).startswith(failing):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)

    monkeypatch.setattr(storage, "write_atomically", full_disk)
    sidecar = pathlib.Path(edge_bundle, SIDECAR).read_bytes()
    before = list_labels(edge_bundle)
    problem = rf"^{edge_bundle}/{failing}[^:]*: cannot be written \(No space left on device\); the bundle was not changed$"
    with pytest.raises(BundleWriteError, match=problem) as raised:
        enroll(edge_bundle, "white", np.ones((2, 8), np.float32))
    assert isinstance(raised.value, OSError) and raised.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert pathlib.Path(edge_bundle, SIDECAR).read_bytes() == sidecar
    assert list_labels(edge_bundle) == before
    load_bundle(edge_bundle)


# ---------------------------------------------------------------------------------------------
# Minors: training messages name their file once, in one line; `pilltrack export` and
# `evaluate` print no TensorFlow start-up lines.
# ---------------------------------------------------------------------------------------------

PILLTRACK = [sys.executable, "-c", "from tf_pilltrack.cli import main; main()"]


def pilltrack(*arguments: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([*PILLTRACK, *arguments], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("text, problem", [
    ("base:\n  seed: [1,\n", "not valid YAML (line 3, column 1: expected the node content, but found '<stream end>')"),
    (None, "cannot be read (No such file or directory)"),
    ("base: {seed: 1}\n", "augment: missing key"),
])
def test_a_params_error_names_the_file_once_in_one_line(tmp_path, text, problem):
    """The path was printed twice ("error: p.yaml: p.yaml: ..."), and a YAML error as a repr
    with literal "\\n" in it."""
    if text is not None:
        (tmp_path / "p.yaml").write_text(text)
    finished = pilltrack("prepare", "--params", "p.yaml", cwd=tmp_path)
    assert finished.returncode == 2
    assert finished.stderr == f"error: p.yaml: {problem}\n"


@pytest.mark.parametrize("stage, missing", [("export", "data/prepared/train.npz"),
                                            ("evaluate", "data/prepared/references.npz")])
def test_export_and_evaluate_print_no_tensorflow_start_up_lines(tmp_path, stage, missing):
    """TensorFlow's absl, oneDNN and CUDA lines, TF-Similarity's nmslib advice: nine lines before
    the stage's own. Without prepared data the stage's one line is its error."""
    import shutil

    shutil.copy(pathlib.Path(__file__).parent / "params_small.yaml", tmp_path)
    finished = pilltrack(stage, "--params", "params_small.yaml", cwd=tmp_path)
    assert finished.returncode == 2, finished.stderr
    assert finished.stderr == f"error: {missing}: missing; run `dvc repro prepare` first\n"


# ---------------------------------------------------------------------------------------------
# Item 6: video frames are held to the pixel limit still images are.
# ---------------------------------------------------------------------------------------------


def mjpeg_video(path: pathlib.Path, width: int, height: int, frames: int = 2) -> str:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (width, height))
    assert writer.isOpened()
    for _ in range(frames):
        writer.write(np.zeros((height, width, 3), np.uint8))
    writer.release()
    return str(path)


def test_a_video_over_the_bundles_pixel_limit_is_refused_naming_the_file(edge_bundle, tmp_path):
    """The probe's two 12000x12000 MJPEG frames (1.8 MB) decoded to 1.99 GB and exited 0, where a
    still image of that size is refused. Here: 4000x2600 frames against the test bundle's
    max_image_pixels of 10**7, the still image refused alongside in the same words."""
    from click.testing import CliRunner
    from edge_fixtures import write_photo

    from edge_runtime.cli import main

    video = mjpeg_video(tmp_path / "huge.avi", 4000, 2600)
    result = CliRunner().invoke(main, ["--bundle", edge_bundle, "--headless", "--video", video])
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"error: {video}: 4000x2600 pixels exceeds the limit of 10000000 pixels "
                             "(its frames' size, as the video declares it)\n")
    assert result.stdout == ""
    result = CliRunner().invoke(main, ["--bundle", edge_bundle, "serve", "--video", video])  # refused before serving
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {video}: 4000x2600 pixels exceeds the limit of 10000000 pixels")
    photo = write_photo(tmp_path / "huge.png", np.zeros((2600, 4000, 3), np.uint8))
    result = CliRunner().invoke(main, ["--bundle", edge_bundle, "--headless", "--image", photo])
    assert "4000x2600 pixels exceeds the limit of 10000000 pixels" in result.stderr
    small = mjpeg_video(tmp_path / "small.avi", 96, 96)
    result = CliRunner().invoke(main, ["--bundle", edge_bundle, "--headless", "--video", small])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2


class LyingCapture:
    """cv2.VideoCapture's protocol: a container that declares `declared` (width, height) and
    decodes `frames` (BGR arrays); counts its reads."""

    def __init__(self, declared, frames):
        self.declared, self.frames, self.reads = declared, list(frames), 0

    def isOpened(self):
        return True

    def get(self, prop):
        import cv2

        return {cv2.CAP_PROP_FRAME_WIDTH: self.declared[0], cv2.CAP_PROP_FRAME_HEIGHT: self.declared[1]}.get(prop, 0.0)

    def read(self):
        self.reads += 1
        return (True, self.frames.pop(0)) if self.frames else (False, None)

    def release(self):
        pass


def test_video_frames_refuses_a_declared_size_before_decoding_and_checks_every_frame(tmp_path, monkeypatch):
    from edge_runtime import capture

    path = tmp_path / "clip.avi"
    path.write_bytes(b"a video")
    small, large = np.zeros((10, 10, 3), np.uint8), np.zeros((100, 200, 3), np.uint8)

    declared_large = LyingCapture((5000.0, 4000.0), [large])
    monkeypatch.setattr(capture.cv2, "VideoCapture", lambda source: declared_large)
    with pytest.raises(capture.VideoError, match=rf"^{path}: 5000x4000 pixels exceeds the limit of 1000 pixels"):
        list(capture.video_frames(path, max_pixels=1000))
    assert declared_large.reads == 0  # refused before a frame was decoded

    # A container that understates its frames (or declares no size: 0 x 0), and a stream whose frames grow.
    for declared in [(10.0, 10.0), (0.0, 0.0)]:
        lying = LyingCapture(declared, [small, large, small])
        monkeypatch.setattr(capture.cv2, "VideoCapture", lambda source: lying)
        frames = capture.video_frames(path, max_pixels=1000)
        assert next(frames).rgb.shape == (10, 10, 3)
        with pytest.raises(capture.VideoError, match=rf"^{path}: frame 1: 200x100 pixels exceeds the limit of 1000 pixels$"):
            next(frames)


def test_serves_video_source_holds_every_frame_to_the_bundles_limit(tmp_path, monkeypatch):
    """`serve --video` checks the first frame at start, then plays the file through
    counter.video_source, which now passes the bundle's limit on (it used the global one)."""
    from edge_runtime import capture, counter

    path = tmp_path / "clip.avi"
    path.write_bytes(b"a video")
    lying = LyingCapture((10.0, 10.0), [np.zeros((10, 10, 3), np.uint8), np.zeros((100, 200, 3), np.uint8)])
    monkeypatch.setattr(capture.cv2, "VideoCapture", lambda source: lying)
    frames = counter.video_source(str(path), 1000)()
    next(frames)
    with pytest.raises(capture.VideoError, match=rf"^{path}: frame 1: 200x100 pixels exceeds the limit of 1000 pixels$"):
        next(frames)


@pytest.mark.parametrize("payload", [b"cos\nsystem\n(S'echo pwned'\ntR.", b""])
def test_a_bad_state_dict_names_its_file_once_in_one_line(tmp_path, payload):
    """"x.pth: cannot read it as a PyTorch state dict (x.pth: not a plain state dict ...)"."""
    import pickle

    from tf_pilltrack.training import efficientnet

    path = tmp_path / "x.pth"
    with open(path, "wb") as handle:
        for part in (0x1950A86A20F9469CFC6C, 1001, {}):
            pickle.dump(part, handle)
        handle.write(payload)
    with pytest.raises(ValueError) as raised:
        efficientnet.read_state_dict(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and message.count(str(path)) == 1 and "\n" not in message, message
    (tmp_path / "magic.pth").write_bytes(pickle.dumps(12345))
    with pytest.raises(ValueError, match=rf"^{tmp_path}/magic.pth: not a PyTorch legacy-format file \(magic number 12345\)$"):
        efficientnet.read_state_dict(tmp_path / "magic.pth")


def test_pilltrack_edge_enroll_under_ulimit_f_is_one_line_naming_the_file(edge_bundle, tmp_path):
    """`ulimit -f 1` then `pilltrack-edge enroll`: one error line naming the file, exit 1 (the
    device failed, not the input), the bundle as it was."""
    import resource

    from edge_fixtures import pill_photos, write_photo

    photo = write_photo(tmp_path / "white.png", pill_photos("green", 1, seed=9)[0])
    sidecar = pathlib.Path(edge_bundle, SIDECAR).read_bytes()
    finished = subprocess.run(
        [sys.executable, "-c", "from edge_runtime.cli import main; main()", "--bundle", edge_bundle,
         "enroll", "--label", "white", photo],
        capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY)))
    assert finished.returncode == 1, finished.stderr
    assert re.fullmatch(rf"error: {re.escape(edge_bundle)}/\S+/model\.tflite: cannot be written \(File too large\); "
                        r"the bundle was not changed\n", finished.stderr), finished.stderr
    assert pathlib.Path(edge_bundle, SIDECAR).read_bytes() == sidecar


CONVERT_QUIETLY = """
import sys
from edge_runtime.quiet import native_stderr_silenced
with native_stderr_silenced():
    import numpy as np
    import tensorflow as tf
    import tf_keras
    from tf_pilltrack.tflite import conversion
    tf.config.list_physical_devices()  # TensorFlow's CUDA probe prints here
print("converting", file=sys.stderr, flush=True)
inputs = tf_keras.Input((16, 16, 3))
outputs = tf_keras.layers.GlobalAveragePooling2D()(tf_keras.layers.Conv2D(4, 3)(inputs))
model = conversion.convert_ptq(tf_keras.Model(inputs, outputs), np.zeros((2, 16, 16, 3), np.uint8))
print(len(model) > 0)
"""


def test_the_int8_conversion_prints_nothing():
    """TFLite's quantiser printed "fully_quantize: 0, inference_type: 6, ..." once per model."""
    finished = subprocess.run([sys.executable, "-c", CONVERT_QUIETLY], capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert (finished.stdout, finished.stderr) == ("True\n", "converting\n")


