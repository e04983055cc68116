"""How benchmarks/live_path.py (with tf_pilltrack.scoring.tiers) scores the live path against the crops (issue 36): episodes enrolled
from one embedding of the photos and queried with another, a frame where no pill was found never
enrolled and answered wrong, and the straight motion blur. Hand-made embeddings, so each rule is
seen to bite. Nothing here imports TensorFlow or opens a model."""

from __future__ import annotations

import numpy as np

from benchmarks.live_path import motion_blur, recall_at_1
from tf_pilltrack.scoring.tiers import episode_answers

SHOTS = 5


def photos(embeddings, found=None):
    """Two pills, a and b, SHOTS + 2 photos each, every photo from its own source photo."""
    count = 2 * (SHOTS + 2)
    pills = np.array(["a"] * (SHOTS + 2) + ["b"] * (SHOTS + 2))
    data = {"pills": pills, "sources": np.array([f"s{i}" for i in range(count)]),
            "embeddings": np.asarray(embeddings, np.float32)}
    if found is not None:
        data["found"] = np.asarray(found, bool)
    return data


def axis(pills, flip=()):
    """a -> (1, 0), b -> (0, 1); the rows in `flip` the other pill's."""
    rows = [[1.0, 0.0] if pill == "a" else [0.0, 1.0] for pill in pills]
    for row in flip:
        rows[row] = rows[row][::-1]
    return rows


def test_a_gallery_from_other_embeddings_and_missed_frames():
    pills = ["a"] * (SHOTS + 2) + ["b"] * (SHOTS + 2)
    clean = photos(axis(pills))
    answers = episode_answers(clean, ["a", "b"], np.random.default_rng(0), 2, SHOTS, 0.5, 0.1)
    assert recall_at_1(answers) == (1.0, 4)  # 2 pills x 2 photos from other source photos
    assert answers["named"].all()

    # queries that look like the other pill, enrolled from the clean embeddings: wrong
    swapped = photos(axis(pills, flip=range(len(pills))))
    answers = episode_answers(swapped, ["a", "b"], np.random.default_rng(0), 2, SHOTS, 0.5, 0.1,
                              gallery_data=clean)
    assert recall_at_1(answers) == (0.0, 4)
    # the same, enrolled from themselves: right again
    answers = episode_answers(swapped, ["a", "b"], np.random.default_rng(0), 2, SHOTS, 0.5, 0.1)
    assert recall_at_1(answers)[0] == 1.0

    # no pill found in every frame but one photo of each pill: never enrolled, and answered wrong
    found = [True] * len(pills)
    for row in (0, SHOTS + 2):
        found[row] = False
    missed = photos(axis(pills), found)
    answers = episode_answers(missed, ["a", "b"], np.random.default_rng(0), 2, SHOTS, 0.5, 0.1)
    right, queries = recall_at_1(answers)
    assert queries == 4 and right == 0.5  # the two missed frames are queries, answered wrong
    assert answers["named"].sum() == 2


def test_enrolling_needs_the_same_photos_row_for_row():
    pills = ["a"] * (SHOTS + 2) + ["b"] * (SHOTS + 2)
    other = photos(axis(pills))
    other["pills"] = other["pills"][::-1]
    try:
        episode_answers(photos(axis(pills)), ["a", "b"], np.random.default_rng(0), 2, SHOTS, 0.5, 0.1, gallery_data=other)
    except ValueError as error:
        assert "row for row" in str(error)
    else:
        raise AssertionError("a gallery of other photos was accepted")


def test_motion_blur_smears_along_its_direction_only():
    frame = np.zeros((41, 41, 3), np.uint8)
    frame[20, 20] = 255
    assert motion_blur(frame, 0, 0.0) is frame and motion_blur(frame, 1, 0.0) is frame
    across = motion_blur(frame, 11, 0.0)[..., 0]  # horizontal: a row of 11 px
    assert np.count_nonzero(across[20]) == 11 and np.count_nonzero(across) == 11
    down = motion_blur(frame, 11, 90.0)[..., 0]
    assert np.count_nonzero(down[:, 20]) == 11 and np.count_nonzero(down) == 11
    assert abs(int(motion_blur(frame, 11, 45.0).sum()) - 255 * 3) <= 3 * 11  # the light is kept, spread
