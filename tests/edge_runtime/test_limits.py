"""Hostile inputs to the device client's gallery: an enroll that would make the bundle
unreadable, limits shared by writer, reader and CLI, labels that differ only in case or Unicode
form, and a bundle lock held by another command. Nothing here imports TensorFlow."""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import unicodedata

import numpy as np
import pytest
from click.testing import CliRunner
from edge_fixtures import pill_photos, write_photo

from edge_runtime import limits, storage
from edge_runtime.bundle import SIDECAR, BundleError, load_bundle, update_gallery
from edge_runtime.cli import main
from edge_runtime.enrollment import enroll, list_labels, remove
from edge_runtime.identification import Identifier


def snapshot(directory) -> dict:
    """Every file of a bundle directory and its SHA-256: what "nothing was written" compares."""
    return {name: storage.sha256_file(os.path.join(directory, name)) for name in sorted(os.listdir(directory))}


def still_answers(directory, interpreter) -> None:
    """The bundle loads and identifies its own pills."""
    identifier = Identifier(interpreter, load_bundle(directory))
    for name in ("red", "green", "blue"):
        assert identifier.identify_image(pill_photos(name, 1, seed=9)[0]).label == name


def rows(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 8)).astype(np.float32)


# --- 1. an enroll must never commit a bundle the reader refuses ----------------------------------


def test_a_very_long_label_from_many_photos_is_refused_and_the_gallery_kept(edge_bundle, edge_interpreter):
    """The reported attack: a label of about 140,000 characters from 500 photos made a bundle.json over 64 MiB
    that every later command refused, the previous gallery already deleted."""
    before = snapshot(edge_bundle)
    with pytest.raises(ValueError, match=f"longer than {limits.MAX_LABEL_CHARS} characters"):
        enroll(edge_bundle, "x" * 140_000, rows(500))
    assert snapshot(edge_bundle) == before
    still_answers(edge_bundle, edge_interpreter)


def test_the_sidecar_does_not_grow_with_label_length_times_photos(edge_bundle):
    label = "L" * limits.MAX_LABEL_CHARS
    size = os.path.getsize(os.path.join(edge_bundle, SIDECAR))
    enroll(edge_bundle, label, rows(300))
    grown = os.path.getsize(os.path.join(edge_bundle, SIDECAR)) - size
    assert grown < 300 * 8 + 2 * len(label)  # the label once, a few bytes per row
    assert list_labels(edge_bundle)[label] == 300


def test_a_sidecar_the_reader_would_refuse_is_never_written(edge_bundle, edge_interpreter, monkeypatch):
    """Whatever makes bundle.json too large, the writer checks the bytes it is about to commit
    against the reader's limit first."""
    before = snapshot(edge_bundle)
    monkeypatch.setattr(limits, "MAX_SIDECAR_BYTES", os.path.getsize(os.path.join(edge_bundle, SIDECAR)) + 100)
    with pytest.raises(BundleError, match=r"bundle.json: would be \d+ bytes, over the limit .*nothing was changed"):
        enroll(edge_bundle, "cyan" * 40, rows(40))
    assert snapshot(edge_bundle) == before
    monkeypatch.undo()
    still_answers(edge_bundle, edge_interpreter)


@pytest.mark.parametrize("limit, photos", [("MAX_ENROLL_PHOTOS", 11), ("MAX_GALLERY_ROWS", 2)])
def test_an_enroll_over_a_gallery_limit_writes_nothing(edge_bundle, edge_interpreter, monkeypatch, limit, photos):
    monkeypatch.setattr(limits, limit, 10)  # the gallery holds 9 rows
    before = snapshot(edge_bundle)
    with pytest.raises(ValueError, match="over the limit of 10"):
        enroll(edge_bundle, "cyan", rows(photos))
    assert snapshot(edge_bundle) == before
    still_answers(edge_bundle, edge_interpreter)


def test_enrolling_more_pills_than_the_limit_is_refused(edge_bundle, monkeypatch):
    monkeypatch.setattr(limits, "MAX_PILLS", 3)  # red, green, blue
    before = snapshot(edge_bundle)
    with pytest.raises(ValueError, match="more than 3 pills"):
        enroll(edge_bundle, "cyan", rows(2))
    assert snapshot(edge_bundle) == before
    assert enroll(edge_bundle, "RED", rows(2)) == 5  # an enrolled pill may still grow


def test_the_cli_refuses_too_many_photos_before_reading_any(edge_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_ENROLL_PHOTOS", 2)
    photos = [write_photo(tmp_path / f"{n}.png", photo) for n, photo in enumerate(pill_photos("cyan", 3))]
    before = snapshot(edge_bundle)
    result = CliRunner().invoke(main, ["--bundle", edge_bundle, "enroll", "--label", "cyan", *photos])
    assert result.exit_code == 2 and result.stderr == "error: 3 photos in one enroll, over the limit of 2; " \
                                                      "enroll them in parts\n"
    assert snapshot(edge_bundle) == before


# --- 4. values read from bundle.json are held to the same limits ----------------------------------


def edit_sidecar(directory, **changes) -> None:
    path = os.path.join(directory, SIDECAR)
    with open(path, encoding="utf-8") as handle:
        sidecar = json.load(handle)
    sidecar.update(changes)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(sidecar, handle)


@pytest.mark.parametrize("field, value", [
    ("annoy_trees", limits.MAX_ANNOY_TREES + 1), ("annoy_trees", 2**30), ("embedding_size", limits.MAX_EMBEDDING_SIZE + 1),
    ("labels", ["red", "green", "x" * (limits.MAX_LABEL_CHARS + 1)]), ("labels", ["red", "green", "Unknown"]),
    ("labels", ["red", "green", "Red"]), ("labels", ["red", "green", "bleu\u0301"]),
])
def test_sidecar_values_over_the_limits_are_refused(edge_bundle, field, value):
    """An index tree count far above what params allow made enroll run for ever; labels that
    enrollment would refuse (too long, the reserved word in another case, two spellings of one
    pill, not NFC) were accepted from a sidecar."""
    edit_sidecar(edge_bundle, **{field: value})
    with pytest.raises(BundleError, match=f"field '{field}'"):
        load_bundle(edge_bundle)


@pytest.mark.parametrize("name, value", [("image_size", limits.MAX_IMAGE_SIZE + 1),
                                         ("max_image_pixels", limits.MAX_IMAGE_PIXELS + 1), ("symmetry_views", 4.0)])
def test_preprocessing_constants_over_the_limits_are_refused(edge_bundle, name, value):
    with open(os.path.join(edge_bundle, SIDECAR), encoding="utf-8") as handle:
        preprocess = json.load(handle)["preprocess"]
    edit_sidecar(edge_bundle, preprocess={**preprocess, name: value})
    with pytest.raises(BundleError, match=name):
        load_bundle(edge_bundle)


@pytest.mark.parametrize("option", [["--top-k", str(limits.MAX_TOP_K + 1)], ["--top-k", "9" * 30],
                                    ["--threads", "100000"], ["--camera", "9" * 30],
                                    ["--smooth", "9" * 30], ["--smooth", str(limits.MAX_SMOOTH_FRAMES + 1)],
                                    ["--max-frames", "9" * 30]])
def test_options_over_their_limits_are_usage_errors(edge_bundle, tmp_path, option):
    photo = write_photo(tmp_path / "red.png", pill_photos("red", 1)[0])
    result = CliRunner().invoke(main, ["--bundle", edge_bundle, *option, "--image", photo])
    assert result.exit_code == 2 and "Invalid value for" in result.stderr
    assert "Traceback" not in result.output


def test_enroll_options_over_their_limits_are_usage_errors(edge_bundle):
    for option in (["--shots", str(limits.MAX_ENROLL_PHOTOS + 1)], ["--interval", "1e308"]):
        result = CliRunner().invoke(main, ["--bundle", edge_bundle, "enroll", "--label", "x", "--camera", "0", *option])
        assert result.exit_code == 2 and "Invalid value for" in result.stderr, option


# --- 7. labels: one pill whatever the case or Unicode form ------------------------------------------


def test_labels_differing_in_case_form_or_spaces_are_one_pill(edge_bundle):
    composed = unicodedata.normalize("NFC", "Paracétamol")
    decomposed = unicodedata.normalize("NFD", "Paracétamol")
    assert composed != decomposed
    assert enroll(edge_bundle, "Ibuprofen", rows(2)) == 2
    assert enroll(edge_bundle, "  ibuprofen ", rows(2, seed=1)) == 4
    assert enroll(edge_bundle, "IBUPROFEN", rows(1, seed=2)) == 5
    assert enroll(edge_bundle, decomposed, rows(1)) == 1
    assert enroll(edge_bundle, composed, rows(1, seed=3)) == 2
    labels = list_labels(edge_bundle)
    assert labels["Ibuprofen"] == 5 and labels[composed] == 2 and len(labels) == 5
    assert remove(edge_bundle, "iBuProFeN") == 5
    assert set(list_labels(edge_bundle)) == {"red", "green", "blue", composed}


@pytest.mark.parametrize("label", ["unknown", "Unknown", " UNKNOWN ", "UnKnOwN"])
def test_the_reserved_answer_is_refused_in_any_case(edge_bundle, label):
    with pytest.raises(ValueError, match="reserved"):
        enroll(edge_bundle, label, rows(1))


def test_labels_that_would_name_one_pill_twice_are_refused_by_the_writer(edge_bundle):
    before = snapshot(edge_bundle)
    with pytest.raises(ValueError, match="labels 'Aspirin' and 'aspirin' name one pill"):
        update_gallery(edge_bundle, lambda current, labels: (rows(2), ["Aspirin", "aspirin"]))
    assert snapshot(edge_bundle) == before


def test_the_cli_reports_the_enrolled_spelling(edge_bundle, tmp_path):
    photos = [write_photo(tmp_path / f"{n}.png", photo) for n, photo in enumerate(pill_photos("cyan", 2))]
    runner = CliRunner()
    assert runner.invoke(main, ["--bundle", edge_bundle, "enroll", "--label", "Cyan", photos[0]]).exit_code == 0
    result = runner.invoke(main, ["--bundle", edge_bundle, "enroll", "--label", " CYAN", photos[1]])
    assert result.exit_code == 0 and result.stdout.startswith("enrolled 'Cyan' from 1 photos (2 in the gallery")


# --- 7. a held bundle lock: what is awaited, and for how long --------------------------------------


def test_a_held_lock_is_waited_for_then_given_up_with_a_clear_error(edge_bundle, monkeypatch, capfd):
    monkeypatch.setattr(limits, "LOCK_WAIT_S", 0.3)
    before = snapshot(edge_bundle)
    holder = os.open(os.path.join(edge_bundle, ".lock"), os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(storage.LockTimeout, match=r"\.lock: still held by another command changing this "
                                                      r"bundle .* after 0.3 s of waiting"):
            enroll(edge_bundle, "cyan", rows(2))
        waiting = capfd.readouterr().err
        assert waiting.startswith(f"waiting for {os.path.join(edge_bundle, '.lock')}: held by another command")
        assert waiting.endswith("giving up after 0.3 s\n") and waiting.count("\n") == 1
        result = CliRunner().invoke(main, ["--bundle", edge_bundle, "remove", "--label", "red"])
        assert result.exit_code == 1 and result.stderr.splitlines()[-1].startswith("error: ")
        assert "still held by" in result.stderr.splitlines()[-1]
    finally:
        os.close(holder)
    assert snapshot(edge_bundle) == before
    assert remove(edge_bundle, "red") == 3  # once it is let go


def test_a_lock_file_that_is_a_fifo_is_refused_not_waited_on(edge_bundle):
    os.unlink(os.path.join(edge_bundle, ".lock"))
    os.mkfifo(os.path.join(edge_bundle, ".lock"))
    with pytest.raises(BundleError, match=r"\.lock: not a regular file \(a FIFO\)"):
        load_bundle(edge_bundle)


def test_the_readme_limits_table_states_the_limits_in_force():
    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("| limit | value |"):]
    table = table[:table.index("\n\n")]
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in table.splitlines()[2:]}
    stated = {
        "label length": f"{limits.MAX_LABEL_CHARS} characters",
        "pills / photos in a gallery": f"{limits.MAX_PILLS:,} / {limits.MAX_GALLERY_ROWS:,}",
        "photos (or `--shots`) per enroll": f"{limits.MAX_ENROLL_PHOTOS:,}",
        "`bundle.json` / model file": f"{limits.MAX_SIDECAR_BYTES >> 20} MiB / {limits.MAX_MODEL_BYTES >> 20} MiB",
        "Annoy trees (`enroll.annoy_trees`)": f"{limits.MAX_ANNOY_TREES:,}",
        "`--top-k` / `--threads` / `--camera` / `--interval`":
            f"{limits.MAX_TOP_K} / {limits.MAX_THREADS} / {limits.MAX_CAMERA_INDEX} / {limits.MAX_SHOT_INTERVAL_S:,.0f} s",
        "`--smooth` / `--max-frames`": f"{limits.MAX_SMOOTH_FRAMES:,} / {limits.MAX_FRAMES:,}",
        "wait for another command's bundle lock": f"{limits.LOCK_WAIT_S:.0f} s, then exit 1",
        "`--one-pill` photos / faces of a close call": f"{limits.MAX_VIEWS}",
        "page upload: photos / bytes (each photo as an image file above)":
            f"{limits.MAX_UPLOAD_FILES} / {limits.MAX_UPLOAD_BYTES >> 20} MiB",
        "`serve --fps` / `--countdown` / `--token`":
            f"{limits.MAX_FPS:g} / {limits.MAX_COUNTDOWN_S:g} s / at least {limits.MIN_TOKEN_CHARS} characters",
        "a page shot or face waits for a pill in view": f"{limits.SHOT_WAIT_S:g} s, then refused",
    }
    for name, value in stated.items():
        assert rows.get(name) == value, (name, rows.get(name), value)


def test_a_sidecar_over_the_limit_is_refused_by_its_size(edge_bundle):
    """The reader checks bundle.json's size: an oversized one (however it came) is one clear error naming
    its size and the limit."""
    path = os.path.join(edge_bundle, SIDECAR)
    with open(path, "ab") as handle:
        handle.truncate(limits.MAX_SIDECAR_BYTES + 1)  # sparse: no 64 MiB written
    with pytest.raises(BundleError, match=rf"bundle.json.*{limits.MAX_SIDECAR_BYTES + 1} bytes, over the limit"):
        load_bundle(edge_bundle)
