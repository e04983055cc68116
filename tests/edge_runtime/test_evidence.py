"""The counter page's evidence over frames and confidence tiers (edge_runtime/evidence.py).
Nothing here imports TensorFlow."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from edge_runtime import evidence, gallery
from edge_runtime.gallery import Match
from edge_runtime.identification import Result, combine_views
from edge_runtime.preprocessing import Box

SHA = "ab" * 32


def unit(vector):
    vector = np.asarray(vector, np.float32)
    return vector / np.linalg.norm(vector)


def test_a_still_pill_gathers_its_frames_and_a_moved_or_changed_one_starts_again():
    track = evidence.Track(frames=3)
    box = Box(100, 100, 160, 140)
    rng = np.random.default_rng(0)
    centre = unit([1, 0.2, 0, 0])
    frames = [unit(centre + rng.normal(0, 0.05, 4)) for _ in range(5)]
    combined, views, why = track.update(box, frames[0])
    assert views == 1 and why is None and track.started == 1
    combined, views, why = track.update(Box(102, 101, 162, 141), frames[1])  # a jitter of 2 px: still
    assert views == 2 and why is None
    np.testing.assert_allclose(combined, combine_views(np.stack(frames[:2])), atol=1e-6)
    for frame in frames[2:]:
        combined, views, why = track.update(box, frame)
    assert views == 3  # the most recent `frames` only
    np.testing.assert_allclose(combined, combine_views(np.stack(frames[2:])), atol=1e-6)

    combined, views, why = track.update(Box(200, 100, 260, 140), frames[0])  # moved by more than its size / 4
    assert (views, why, track.started) == (1, "moved", 2)
    other = unit([0, 0, 1, 0])  # another pill put in the same place
    combined, views, why = track.update(Box(200, 100, 260, 140), other)
    assert (views, why, track.started) == (1, "changed", 3)
    np.testing.assert_allclose(combined, other, atol=1e-6)
    assert track.update(None, None) == (None, 0, None)  # no pill: the track ends
    assert track.update(Box(200, 100, 260, 140), other)[1:] == (1, None) and track.started == 4
    with pytest.raises(ValueError, match="at least 1 frame"):
        evidence.Track(frames=0)


def test_the_tiers_of_an_answer():
    tiers = evidence.Tiers(0.3, 0.05, SHA, {})

    def result(label, first, second):
        return Result(label, first, [Match("a", first), Match("b", second)], Box(0, 0, 1, 1), {}, None)

    assert evidence.tier(result("a", 0.05, 0.5), tiers) == "named"
    assert evidence.tier(result(gallery.UNKNOWN, 0.2, 0.3), tiers) == "likely"
    assert evidence.tier(result(gallery.UNKNOWN, 0.2, 0.22), tiers) == "unsure"  # runner-up too near
    assert evidence.tier(result(gallery.UNKNOWN, 0.4, 0.9), tiers) == "unsure"  # too far
    assert evidence.tier(result(gallery.UNKNOWN, 0.2, 0.3), None) == "unsure"  # no measured tiers
    assert evidence.tier(Result(None, None, [], None, {}, None), tiers) == "none"
    assert evidence.WORDS["likely"] == "likely — check it"
    assert evidence.WORDS["unsure"] == "not one of your pills / unsure"


def test_the_pill_is_worth_turning_over_for_a_lookalike_or_a_likely_answer_only():
    def result(label, lookalike=None):
        return Result(label, 0.2, [Match("a", 0.2), Match("b", 0.3)], Box(0, 0, 1, 1), {}, lookalike)

    assert evidence.worth_turning_over(result(gallery.UNKNOWN, lookalike="b"), "unsure")  # a look-alike
    assert evidence.worth_turning_over(result(gallery.UNKNOWN), "likely")  # the other face can confirm it
    assert not evidence.worth_turning_over(result(gallery.UNKNOWN), "unsure")  # most often not enrolled
    assert not evidence.worth_turning_over(result("a"), "named")
    assert not evidence.worth_turning_over(result("a", lookalike="b"), "named")


def test_tiers_are_read_only_for_the_model_they_were_measured_with(tmp_path):
    directory = str(tmp_path)
    tiers, note = evidence.load_tiers(directory, SHA)
    assert tiers is None and "tiers.json missing" in note
    path = tmp_path / evidence.TIERS_FILE
    path.write_text(json.dumps({"likely_distance": 0.3, "likely_gap": 0.05, "model_sha256": SHA,
                                "measured": {"likely_right": 0.93}}))
    tiers, note = evidence.load_tiers(directory, SHA)
    assert tiers == evidence.Tiers(0.3, 0.05, SHA, {"likely_right": 0.93}) and note == "measured on held-out real photos"
    tiers, note = evidence.load_tiers(directory, "cd" * 32)
    assert tiers is None and "measured for another model" in note
    path.write_text(json.dumps({"likely_distance": -1, "likely_gap": 0, "model_sha256": SHA}))
    tiers, note = evidence.load_tiers(directory, SHA)
    assert tiers.likely_distance < 0 and "no answer is \"likely\"" in note
    for text, problem in (("{", "JSONDecodeError"), ('{"likely_gap": 0}', "KeyError"),
                          (json.dumps({"likely_distance": "NaN", "likely_gap": 0, "model_sha256": SHA}), "finite")):
        path.write_text(text)
        tiers, note = evidence.load_tiers(directory, SHA)
        assert tiers is None and problem in note and note.startswith(str(path))
    os.unlink(path)
    os.mkfifo(path)  # not a regular file: refused before it is opened, never blocking
    tiers, note = evidence.load_tiers(directory, SHA)
    assert tiers is None and note.startswith(f"{path}: cannot be read") and "named or unsure only" in note


def test_capture_guidance_from_the_box():
    assert evidence.guidance(None, 640, 480, moving=False) == []
    assert evidence.guidance(Box(200, 150, 360, 300), 640, 480, moving=False) == []
    assert "partly out of view" in evidence.guidance(Box(0, 150, 160, 300), 640, 480, moving=False)[0]
    assert "small" in evidence.guidance(Box(300, 200, 310, 210), 640, 480, moving=False)[0]
    # a pill 60 px across on a 640x480 frame (1.2% of it) is small (benchmarks/live_path.py), 100 px is not
    assert "small" in evidence.guidance(Box(300, 200, 360, 260), 640, 480, moving=False)[0]
    assert evidence.guidance(Box(300, 200, 400, 300), 640, 480, moving=False) == []
    assert evidence.guidance(None, 640, 480, moving=False, far_pill=True) == [evidence.FAR_PILL_TIP]
    assert "too close" in evidence.guidance(Box(10, 10, 630, 470), 640, 480, moving=False)[0]
    assert "hold the pill still" in evidence.guidance(Box(200, 150, 360, 300), 640, 480, moving=True)[0]


def tray_with_a_pill(diameter: int | None):
    """A 640x480 grey tray with a little noise, and a pale pink pill `diameter` px across (None: none)."""
    import cv2

    frame = np.random.default_rng(0).normal(182.0, 2.0, (480, 640, 3)).clip(0, 255).astype(np.uint8)
    if diameter:
        cv2.ellipse(frame, (300, 260), (diameter // 2, diameter // 3), 20, 0, 360, (236, 150, 170), -1)
    return frame


def test_a_pill_too_far_away_is_told_to_come_nearer_and_nothing_else_is():
    """A pill under the bundle's smallest (min_pill_fraction) is no pill to the localiser, as in
    training; the guidance alone sees it and asks for the camera nearer. An empty tray, a pill of
    the usual size, and a device that does not localise never get that tip."""
    from edge_runtime.preprocessing import PreprocessConfig, localise

    config = PreprocessConfig(image_size=64, localise="auto", min_pill_fraction=0.005, max_pill_fraction=0.9,
                              crop_margin=0.15, max_image_pixels=10**7, symmetry_views=4)
    far = tray_with_a_pill(40)  # about 0.3% of the frame: under the smallest pill
    assert localise(far, config) is None and evidence.far_pill_in_view(far, config)
    assert not evidence.far_pill_in_view(tray_with_a_pill(None), config)
    assert not evidence.far_pill_in_view(tray_with_a_pill(8), config)  # a crumb: under a fifth of the smallest
    assert localise(tray_with_a_pill(150), config) is not None  # the usual size is found, and answered
    whole = PreprocessConfig(**{**config.to_dict(), "localise": False})
    assert not evidence.far_pill_in_view(far, whole)
