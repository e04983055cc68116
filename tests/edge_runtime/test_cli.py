"""`pilltrack-edge` end to end with click's CliRunner: images, video, a fake camera,
enrollment, and how errors are reported."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from edge_fixtures import PILL_COLOURS, pill_photo, pill_photos, write_photo

from edge_runtime.cli import main

RECORD_KEYS = {"source", "frame", "label", "announced", "distance", "top_k", "box", "timings_ms", "lookalike", "tier"}


def run(args, obj=None):
    return CliRunner().invoke(main, args, obj=obj)


@pytest.fixture
def photos(tmp_path):
    """Paths of a green pill, a black pill (not enrolled) and a photo without any pill."""
    return [
        write_photo(tmp_path / "green.png", pill_photos("green", 1, seed=4)[0]),
        write_photo(tmp_path / "black.png", pill_photos("black", 1, seed=4)[0]),
        write_photo(tmp_path / "empty.png", np.full((80, 80, 3), 128, np.uint8)),
    ]


class FakeCamera:
    """A camera whose reads fail `failures` times before delivering `frames` (forever with
    failures=None), in cv2.VideoCapture's protocol."""

    def __init__(self, frames, failures=0):
        self.frames = [cv2.cvtColor(frame, cv2.COLOR_RGB2BGR) for frame in frames]
        self.failures = failures
        self.reads = 0
        self.released = False

    def read(self):
        self.reads += 1
        if self.failures is None or self.reads <= self.failures:
            return False, None
        return True, self.frames[(self.reads - 1) % len(self.frames)]

    def release(self):
        self.released = True


def camera_obj(camera, sleeps=None):
    sleeps = [] if sleeps is None else sleeps
    return {"open_camera": lambda index: camera, "sleep": sleeps.append}


def test_headless_prints_one_json_record_per_image(edge_bundle, photos):
    result = run(["--bundle", edge_bundle, "--headless", "--threads", "1", "--image", *photos])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [set(record) for record in records] == [RECORD_KEYS] * 3
    green, black, empty = records
    assert green["source"] == photos[0] and green["label"] == "green"
    assert green["top_k"][0] == {"label": "green", "distance": green["distance"]}
    assert len(green["box"]) == 4
    assert set(green["timings_ms"]) == {"localise", "preprocess", "invoke", "search"}
    assert black["label"] == "unknown"
    assert empty["label"] is None and empty["box"] is None and empty["top_k"] == []
    assert green["lookalike"] is None and black["lookalike"] is None  # distinct colours: no close call
    assert [record["tier"] for record in records] == ["named", "unsure", "none"]  # no measured tiers: no "likely"


def test_headless_gives_the_counter_pages_tier_from_the_bundles_measured_tiers(edge_bundle, photos):
    """The tiers through --headless JSON, as the page shows them: "likely" once tiers.json
    (the enroll stage's, tf_pilltrack/scoring/tiers.py) is measured for this bundle's model, and not for another's."""
    from edge_runtime.bundle import load_bundle

    sha = load_bundle(edge_bundle).model_sha256
    for model, expected in ((sha, "likely"), ("0" * 64, "unsure")):
        with open(os.path.join(edge_bundle, "tiers.json"), "w") as handle:
            json.dump({"likely_distance": 2.0, "likely_gap": 0.0, "model_sha256": model}, handle)
        record = json.loads(run(["--bundle", edge_bundle, "--headless", "--image", photos[1]]).stdout)
        assert (record["label"], record["tier"]) == ("unknown", expected)
    one = json.loads(run(["--bundle", edge_bundle, "--headless", "--one-pill", "--image", photos[0], photos[0]]).stdout)
    assert one["tier"] == "named"


def test_a_close_call_is_not_named_and_shows_both_candidates(edge_bundle, photos):
    from edge_runtime.bundle import load_bundle
    from edge_runtime.enrollment import enroll

    loaded = load_bundle(edge_bundle)
    enroll(edge_bundle, "lime", loaded.embeddings[[label == "green" for label in loaded.labels]])
    record = json.loads(run(["--bundle", edge_bundle, "--headless", "--image", photos[0]]).stdout)
    assert record["label"] == "unknown"  # two enrolled pills this close: the device does not pick one
    assert {record["top_k"][0]["label"], record["lookalike"]} == {"green", "lime"}
    row = run(["--bundle", edge_bundle, "--image", photos[0]]).stdout.splitlines()[1]
    assert f"close call: {record['top_k'][0]['label']} or {record['lookalike']}? turn the pill over" in row


def test_image_table_threshold_override_and_benchmark(edge_bundle, photos):
    result = run(["--bundle", edge_bundle, "--image", photos[0], "--image", photos[2],
                  "--threshold", "0", "--benchmark"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["image", "pill", "distance"]
    assert lines[1].split()[1] == "unknown"  # nothing is within a threshold of 0
    assert "no pill found" in lines[2]
    assert any(line.startswith("invoke") for line in lines)
    assert any(line.startswith("total") for line in lines)


def test_unreadable_image_is_reported_and_the_rest_identified(edge_bundle, photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    result = run(["--bundle", edge_bundle, "--headless", "--image", str(broken), photos[0]])
    assert result.exit_code == 2
    assert "broken.jpg: not a readable image" in result.stderr
    assert json.loads(result.stdout)["label"] == "green"


@pytest.mark.parametrize("bundle_problem", ["missing", "tampered"])
def test_bundle_errors_are_one_line_and_exit_2(edge_bundle, photos, bundle_problem):
    if bundle_problem == "missing":
        os.unlink(os.path.join(edge_bundle, "bundle.json"))
    else:
        with open(os.path.join(edge_bundle, "bundle.json")) as handle:
            sidecar = json.load(handle)
        sidecar["metric"] = "dot"
        with open(os.path.join(edge_bundle, "bundle.json"), "w") as handle:
            json.dump(sidecar, handle)
    result = run(["--bundle", edge_bundle, "--image", photos[0]])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "Traceback" not in result.output


def test_video_headless_and_no_display(edge_bundle, tmp_path, monkeypatch):
    path = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 96))
    for photo in pill_photos("red", 4):
        writer.write(cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    writer.release()

    result = run(["--bundle", edge_bundle, "--headless", "--video", path, "--max-frames", "3"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [record["frame"] for record in records] == [0, 1, 2]
    assert [record["announced"] for record in records] == [None, None, "red"]  # 3 of 5 votes

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    result = run(["--bundle", edge_bundle, "--video", path])
    assert result.exit_code == 2
    assert "no display available" in result.stderr and "--headless" in result.stderr


def test_camera_recovers_after_failed_reads(edge_bundle):
    camera = FakeCamera(pill_photos("blue", 2), failures=3)
    sleeps = []
    result = run(["--bundle", edge_bundle, "--headless", "--camera", "0", "--max-frames", "4"],
                 obj=camera_obj(camera, sleeps))
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 4 and records[0]["source"] == "camera:0"
    assert [record["label"] for record in records] == ["blue"] * 4
    assert sleeps == [0.1, 0.2, 0.4]  # exponential backoff
    assert result.stderr.count("read failed") == 3
    assert camera.released


def test_camera_that_always_fails_exits_with_the_reason(edge_bundle):
    camera = FakeCamera([], failures=None)
    result = run(["--bundle", edge_bundle, "--headless", "--camera", "0"], obj=camera_obj(camera))
    assert result.exit_code == 1
    assert "camera 0: 10 reads in a row failed" in result.stderr
    assert "Traceback" not in result.output
    assert camera.released


def test_enroll_list_remove(edge_bundle, photos, tmp_path):
    cyan = [write_photo(tmp_path / f"cyan{i}.png", photo)
            for i, photo in enumerate(pill_photos("cyan", 3, seed=2))]
    result = run(["--bundle", edge_bundle, "enroll", "--label", "cyan", *cyan[:2], photos[2]])
    assert result.exit_code == 0, result.output
    assert "empty.png: no pill found" in result.stderr
    assert "enrolled 'cyan' from 2 photos" in result.stdout

    result = run(["--bundle", edge_bundle, "--headless", "--image", cyan[2]])
    assert json.loads(result.stdout)["label"] == "cyan"

    result = run(["--bundle", edge_bundle, "--headless", "list"])
    assert json.loads(result.stdout) == {"blue": 3, "cyan": 2, "green": 3, "red": 3}
    result = run(["--bundle", edge_bundle, "list"])
    assert "4 pills, 11 photos" in result.stdout

    result = run(["--bundle", edge_bundle, "remove", "--label", "cyan"])
    assert result.exit_code == 0 and "removed 'cyan' (2 photos)" in result.stdout
    result = run(["--bundle", edge_bundle, "remove", "--label", "cyan"])
    assert result.exit_code == 2 and "'cyan' is not enrolled" in result.stderr


def test_cropped_photos_are_embedded_whole(edge_bundle, photos, tmp_path):
    # a tight crop: the pill fills the photo, so its border is pill and localisation finds no pill
    close_up = write_photo(tmp_path / "close.png", np.full((64, 64, 3), PILL_COLOURS["cyan"], np.uint8))
    result = run(["--bundle", edge_bundle, "enroll", "--label", "cyan", close_up])
    assert result.exit_code == 2 and "close.png: no pill found" in result.stderr
    result = run(["--bundle", edge_bundle, "--cropped", "enroll", "--label", "cyan", close_up])
    assert result.exit_code == 0, result.output
    assert "enrolled 'cyan' from 1 photos" in result.stdout
    record = json.loads(run(["--bundle", edge_bundle, "--cropped", "--headless", "--image", close_up]).stdout)
    assert record["label"] == "cyan" and record["box"] == [0, 0, 64, 64]
    record = json.loads(run(["--bundle", edge_bundle, "--cropped", "--headless", "--image", photos[0]]).stdout)
    assert record["box"] == [0, 0, 96, 96]  # the whole photo, pill and background


def test_enroll_warns_when_the_pill_found_touches_the_edge(edge_bundle, photos, tmp_path):
    cut_off = write_photo(tmp_path / "cut.png", pill_photo(PILL_COLOURS["cyan"], centre=(8, 48), axes=(28, 14)))
    result = run(["--bundle", edge_bundle, "enroll", "--label", "cyan", cut_off, photos[0]])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "cut.png: the pill found touches the photo's edge" in warnings[0]
    assert "--cropped" in warnings[0]
    result = run(["--bundle", edge_bundle, "--cropped", "enroll", "--label", "cyan", cut_off])
    assert result.exit_code == 0 and "warning" not in result.stderr  # whole photos: nothing was localised


def test_a_bundle_localising_auto_enrolls_tight_crops_without_a_warning(edge_bundle, photos, tmp_path):
    sidecar = os.path.join(edge_bundle, "bundle.json")
    with open(sidecar) as handle:
        values = json.load(handle)
    values["preprocess"]["localise"] = "auto"
    with open(sidecar, "w") as handle:
        json.dump(values, handle)
    cut_off = write_photo(tmp_path / "cut.png", pill_photo(PILL_COLOURS["cyan"], centre=(8, 48), axes=(28, 14)))
    result = run(["--bundle", edge_bundle, "enroll", "--label", "cyan", cut_off, photos[0]])
    assert result.exit_code == 0 and "warning" not in result.stderr, result.output  # used whole, as a tight crop
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "cut.png: the pill found touches the edge, so the whole image was used" in notes[0]
    record = json.loads(run(["--bundle", edge_bundle, "--headless", "--image", cut_off]).stdout)
    assert record["label"] == "cyan" and record["box"] == [0, 0, 96, 96]
    record = json.loads(run(["--bundle", edge_bundle, "--headless", "--image", photos[0]]).stdout)
    assert record["box"] != [0, 0, 96, 96]  # a pill on a background is still localised
    camera = FakeCamera([pill_photo(PILL_COLOURS["cyan"], centre=(8, 48), axes=(28, 14))] + pill_photos("cyan", 1))
    result = run(["--bundle", edge_bundle, "enroll", "--label", "cyan", "--camera", "0", "--shots", "2",
                  "--interval", "0"], obj=camera_obj(camera))
    assert result.exit_code == 0, result.output
    assert "shot 1/2: pill found (the pill found touches the edge, so the whole image was used" in result.stderr
    assert "shot 2/2: pill found\n" in result.stderr
    values["preprocess"]["localise"] = "sometimes"
    with open(sidecar, "w") as handle:
        json.dump(values, handle)
    result = run(["--bundle", edge_bundle, "list"])
    assert result.exit_code == 2 and "localise" in result.stderr


def test_enroll_into_a_new_gallery(edge_bundle, photos, tmp_path):
    cyan = [write_photo(tmp_path / f"cyan{i}.png", photo)
            for i, photo in enumerate(pill_photos("cyan", 3, seed=2))]
    result = run(["--bundle", edge_bundle, "enroll", "--new-gallery", "--label", "cyan", *cyan[:2]])
    assert result.exit_code == 0, result.output
    assert "enrolled 'cyan' from 2 photos (2 in the gallery, a new gallery)" in result.stdout
    assert json.loads(run(["--bundle", edge_bundle, "--headless", "list"]).stdout) == {"cyan": 2}
    record = json.loads(run(["--bundle", edge_bundle, "--headless", "--image", photos[0]]).stdout)
    assert [match["label"] for match in record["top_k"]] == ["cyan"]  # green is gone
    # a failed enrollment leaves the gallery as it was
    result = run(["--bundle", edge_bundle, "enroll", "--new-gallery", "--label", "nothing", photos[2]])
    assert result.exit_code == 2
    assert json.loads(run(["--bundle", edge_bundle, "--headless", "list"]).stdout) == {"cyan": 2}


def test_enroll_fails_when_no_photo_is_usable(edge_bundle, photos):
    result = run(["--bundle", edge_bundle, "enroll", "--label", "nothing", photos[2]])
    assert result.exit_code == 2
    assert "no usable photo" in result.stderr


def test_enroll_from_the_camera(edge_bundle):
    camera = FakeCamera([np.full((96, 96, 3), 128, np.uint8)] + pill_photos("cyan", 2),
                        failures=1)
    result = run(["--bundle", edge_bundle, "enroll", "--label", "cyan", "--camera", "0",
                  "--shots", "2"], obj=camera_obj(camera))
    assert result.exit_code == 0, result.output
    assert "enrolled 'cyan' from 2 photos" in result.stdout
    assert camera.released


def test_edgetpu_flag_falls_back_to_the_cpu(edge_bundle, photos):
    result = run(["--bundle", edge_bundle, "--edgetpu", "--headless", "--image", photos[0]])
    assert result.exit_code == 0, result.output
    assert "Edge TPU unavailable" in result.stderr
    assert json.loads(result.stdout)["label"] == "green"


def test_help_states_units_and_defaults():
    text = run(["--help"]).output
    for phrase in ("[default: bundle]", "cosine distance", "[default: the bundle's]",
                   "number of CPU cores", "[default: 3", "milliseconds", "[default: no limit]"):
        assert phrase in " ".join(text.split()), phrase
    assert run(["--image"]).exit_code == 2  # --image needs at least one path
    assert run(["--image", "a.jpg", "--camera", "0"]).exit_code == 2


def test_the_live_view_names_a_close_call():
    from edge_runtime.display import annotate
    from edge_runtime.identification import Result

    frame = np.zeros((120, 640, 3), np.uint8)
    from edge_runtime.gallery import UNKNOWN, Match

    plain = Result(UNKNOWN, 0.01, [Match("green", 0.01)], (10, 10, 50, 50), {}, None)
    close = plain._replace(lookalike="lime")

    def text_end(image):  # rightmost drawn column of the top text line
        return int(np.nonzero(image[5:35].any(axis=(0, 2)))[0].max())

    assert text_end(annotate(frame, close, UNKNOWN, 30.0)) > text_end(annotate(frame, plain, UNKNOWN, 30.0)) + 50
    # the smoother still announcing another pill: the close call is not about what is shown
    assert text_end(annotate(frame, close, "red", 30.0)) < text_end(annotate(frame, close, UNKNOWN, 30.0))


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e999"])
def test_every_float_option_refuses_nan_and_infinity(edge_bundle, tmp_path, value):
    """`serve --countdown nan` and `--interval nan` were taken (NaN compares false with
    both bounds of click's FloatRange), and then every /api/bundle answered 400. Each float option
    now refuses NaN and infinity as a usage error (exit 2) naming it, before anything runs."""
    photo = write_photo(tmp_path / "green.png", pill_photos("green", 1, seed=4)[0])
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (["--threshold", value, "--image", photo],
                 ["enroll", "--label", "green", "--interval", value, photo],
                 ["serve", "--folder", str(empty), "--fps", value],
                 ["serve", "--folder", str(empty), "--countdown", value],
                 ["serve", "--folder", str(empty), "--threshold", value]):
        result = run(["--bundle", edge_bundle, *args])
        option = next(arg for arg in args if arg.startswith("--") and arg not in ("--image", "--label", "--folder"))
        assert result.exit_code == 2, (args, result.output)
        assert f"Invalid value for '{option}'" in result.output and "is not a finite number" in result.output, (
            args, result.output)
    assert run(["--bundle", edge_bundle, "--threshold", "0.5", "--headless", "--image", photo]).exit_code == 0
