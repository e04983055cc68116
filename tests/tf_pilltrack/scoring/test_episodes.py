"""The few-shot episode protocol (tf_pilltrack/scoring/episodes.py) on tiny pools and hand-made embeddings."""

from __future__ import annotations

import io
import pathlib
import zipfile
from collections import Counter

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from edge_runtime.preprocessing import PreprocessConfig
from tf_pilltrack.scoring import episodes


def _unit(*degrees: float) -> np.ndarray:
    radians = np.deg2rad(np.array(degrees, dtype=np.float64))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def _pool(layout: dict[str, list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """labels and groups from {class: [crops in photo 0, crops in photo 1, ...]}."""
    labels, groups = [], []
    for label, photos in layout.items():
        for photo, count in enumerate(photos):
            labels += [label] * count
            groups += [f"{label}-photo{photo}"] * count
    return np.array(labels), np.array(groups)


def _group_photo_pool() -> tuple[np.ndarray, np.ndarray]:
    """Five classes, some photos shared between classes (group photos), some with two crops of a class."""
    rows = []
    for label in "abcde":
        for photo in range(6):
            rows += [(label, f"p{photo}")] * (2 if photo == 0 else 1)
        rows.append((label, f"{label}-alone"))
    labels, groups = zip(*rows)
    return np.array(labels), np.array(groups)


# --- eligibility --------------------------------------------------------------------------------


def test_eligible_classes_need_shots_outside_their_largest_photo():
    labels, groups = _pool({"one_photo": [4], "big_and_small": [4, 1], "two_by_two": [2, 2], "singles": [1] * 6})
    assert episodes.eligible_classes(labels, groups, 1) == ["big_and_small", "singles", "two_by_two"]
    assert episodes.eligible_classes(labels, groups, 2) == ["singles", "two_by_two"]
    assert episodes.eligible_classes(labels, groups, 5) == ["singles"]
    assert episodes.eligible_classes(labels, groups, 6) == []


def test_too_few_eligible_classes_is_an_error():
    labels, groups = _pool({"a": [1, 1], "b": [3]})
    with pytest.raises(ValueError, match="1 classes have enough photos for 1-shot"):
        episodes.draw_episode(labels, groups, 1, 0.0, 2, np.random.default_rng(0))


def test_bad_pools_are_errors():
    with pytest.raises(ValueError, match="empty pool"):
        episodes.eligible_classes(np.array([]), np.array([]), 1)
    with pytest.raises(ValueError, match="one length"):
        episodes.eligible_classes(np.array(["a", "b"]), np.array(["p"]), 1)
    with pytest.raises(ValueError, match="shots"):
        episodes.eligible_classes(np.array(["a"]), np.array(["p"]), 0)


# --- drawing episodes ---------------------------------------------------------------------------


def _check_episode(episode: episodes.Episode, labels: np.ndarray, groups: np.ndarray, shots: int) -> None:
    eligible = episodes.eligible_classes(labels, groups, shots)
    assert sorted(episode.known_classes + episode.absent_classes) == eligible
    assert not set(episode.known_classes) & set(episode.absent_classes)
    reference_counts = Counter(labels[episode.references].tolist())
    assert reference_counts == {label: shots for label in episode.known_classes}
    assert set(labels[episode.queries]) == set(episode.known_classes)  # every known class is queried
    assert set(labels[episode.absent]) <= set(episode.absent_classes)
    assert Counter(labels[episode.absent].tolist()) == {
        label: int((labels == label).sum()) for label in episode.absent_classes}
    for label in episode.known_classes:
        reference_photos = set(groups[episode.references][labels[episode.references] == label])
        query_photos = set(groups[episode.queries][labels[episode.queries] == label])
        assert not reference_photos & query_photos, (label, reference_photos & query_photos)
    assert not set(episode.references) & set(episode.queries)
    # multi-view tuples: one class each, from the query side (never a reference), no crop twice
    for tuples, allowed in ((episode.query_views, set(episode.queries)), (episode.absent_views, set(episode.absent))):
        for row in tuples:
            assert len(set(labels[row])) == 1
            assert set(row) <= allowed
        assert len(set(tuples.ravel())) == tuples.size


def test_episode_splits_each_class_by_photo_with_k_references():
    labels, groups = _group_photo_pool()
    for shots in (1, 5):
        for seed in range(10):
            episode = episodes.draw_episode(labels, groups, shots, 0.2, 2, np.random.default_rng(seed))
            assert episode.shots == shots
            assert len(episode.absent_classes) == 1 and len(episode.known_classes) == 4
            _check_episode(episode, labels, groups, shots)


def test_crops_of_a_reference_photo_beyond_k_are_left_out_of_both_sides():
    # photo 0 of "a" holds three crops: when it supplies the one reference, its other two crops
    # may be neither references nor queries.
    labels, groups = _pool({"a": [3, 1, 1], "b": [1, 1, 1]})
    seen_big_photo = False
    for seed in range(20):
        episode = episodes.draw_episode(labels, groups, 1, 0.0, 2, np.random.default_rng(seed))
        reference = int(episode.references[labels[episode.references] == "a"][0])
        if groups[reference] == "a-photo0":
            seen_big_photo = True
            assert sorted(groups[episode.queries][labels[episode.queries] == "a"]) == ["a-photo1", "a-photo2"]
        else:
            assert (groups[episode.queries] == "a-photo0").sum() == 3
    assert seen_big_photo


def test_same_seed_same_episodes_other_seed_other_episodes():
    labels, groups = _group_photo_pool()
    first = episodes.draw_episodes(labels, groups, 1, 0.2, 2, count=5, seed=3)
    again = episodes.draw_episodes(labels, groups, 1, 0.2, 2, count=5, seed=3)
    other = episodes.draw_episodes(labels, groups, 1, 0.2, 2, count=5, seed=4)
    for a, b in zip(first, again):
        assert a.known_classes == b.known_classes
        for field in ("references", "queries", "absent", "query_views", "absent_views"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert any(not np.array_equal(a.references, c.references) for a, c in zip(first, other))
    # the episodes of one run differ from each other
    assert len({tuple(episode.references) for episode in first}) > 1


def test_one_shot_and_five_shot_episodes_share_their_absent_classes():
    labels, groups = _group_photo_pool()
    one = episodes.draw_episodes(labels, groups, 1, 0.4, 2, count=4, seed=0)
    five = episodes.draw_episodes(labels, groups, 5, 0.4, 2, count=4, seed=0)
    assert [e.absent_classes for e in one] == [e.absent_classes for e in five]
    assert len({e.absent_classes for e in one}) > 1  # and they vary between episodes


@pytest.mark.parametrize("classes, fraction, absent", [
    (10, 0.2, 2),
    (10, 0.0, 0),
    (3, 0.1, 1),   # a positive fraction keeps at least one class out ...
    (2, 0.5, 0),   # ... but never fewer than two known classes
    (5, 0.9, 3),
])
def test_absent_class_count(classes, fraction, absent):
    labels, groups = _pool({f"c{i}": [1, 1, 1] for i in range(classes)})
    episode = episodes.draw_episode(labels, groups, 1, fraction, 2, np.random.default_rng(0))
    assert len(episode.absent_classes) == absent
    assert len(episode.known_classes) == classes - absent


def test_draw_episode_refuses_bad_settings():
    labels, groups = _pool({"a": [1, 1], "b": [1, 1]})
    with pytest.raises(ValueError, match="absent_fraction"):
        episodes.draw_episode(labels, groups, 1, 1.0, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="views"):
        episodes.draw_episode(labels, groups, 1, 0.0, 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="count"):
        episodes.draw_episodes(labels, groups, 1, 0.0, 2, count=0, seed=0)


def test_multi_view_tuples_come_from_different_photos_when_there_are_enough():
    # "a": after its reference photo, 4 one-crop photos left -> two pairs, each of two photos
    labels, groups = _pool({"a": [1, 1, 1, 1, 1], "b": [1, 1, 1]})
    for seed in range(10):
        episode = episodes.draw_episode(labels, groups, 1, 0.0, 2, np.random.default_rng(seed))
        pairs_a = [row for row in episode.query_views if labels[row[0]] == "a"]
        assert len(pairs_a) == 2
        for row in pairs_a:
            assert groups[row[0]] != groups[row[1]]
        assert len([row for row in episode.query_views if labels[row[0]] == "b"]) == 1  # 2 queries -> 1 pair


def test_multi_view_remainder_is_dropped_and_three_views_work():
    labels, groups = _pool({"a": [1] * 8, "b": [1] * 4})
    episode = episodes.draw_episode(labels, groups, 1, 0.0, 3, np.random.default_rng(1))
    assert episode.query_views.shape == (2 + 1, 3)  # a: 7 queries -> 2 triples; b: 3 -> 1


@settings(max_examples=60, deadline=None)
@given(layout=st.dictionaries(st.sampled_from("abcdefgh"), st.lists(st.integers(1, 4), min_size=1, max_size=6),
                              min_size=2, max_size=8),
       shots=st.integers(1, 5), fraction=st.sampled_from([0.0, 0.2, 0.5]), seed=st.integers(0, 2**31 - 1))
def test_any_pool_gives_episodes_that_keep_the_rules(layout, shots, fraction, seed):
    labels, groups = _pool(layout)
    if len(episodes.eligible_classes(labels, groups, shots)) < 2:
        with pytest.raises(ValueError):
            episodes.draw_episode(labels, groups, shots, fraction, 2, np.random.default_rng(seed))
        return
    _check_episode(episodes.draw_episode(labels, groups, shots, fraction, 2, np.random.default_rng(seed)),
                   labels, groups, shots)


# --- combining views ----------------------------------------------------------------------------


def test_combine_views_averages_normalised_embeddings():
    embeddings = np.concatenate([_unit(0.0), 5.0 * _unit(90.0), _unit(180.0), _unit(10.0)])
    combined = episodes.combine_views(embeddings, np.array([[0, 1], [0, 3]]))
    # 0 and 90 deg (the second 5x longer, normalised first) -> 45 deg; 0 and 10 -> 5 deg
    np.testing.assert_allclose(combined, _unit(45.0, 5.0), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(combined, axis=1), 1.0)
    with pytest.raises(ValueError, match="tuples"):
        episodes.combine_views(embeddings, np.array([0, 1]))


# --- scoring ------------------------------------------------------------------------------------


def test_recall_at_5_counts_distinct_pills_and_map_at_r_gallery_items():
    # gallery: a x3 at 0-2 deg, b x3 at 10-12 deg, c at 40 deg; the query (c) at -10 deg sees
    # a, a, a, b, b, b, c: the 7th item but the 3rd pill -> Recall@5 1 (pills), mAP@R 0 (R = 1)
    gallery = _unit(0, 1, 2, 10, 11, 12, 40)
    gallery_labels = np.array(["a", "a", "a", "b", "b", "b", "c"])
    result = episodes.score_queries(_unit(-10.0), np.array(["c"]), gallery, gallery_labels, np.zeros((0, 2)), 0.9)
    assert result["recall_at_1"] == 0.0
    assert result["recall_at_5"] == 1.0
    assert result["map_at_r"] == 0.0
    assert "auroc_known_vs_absent" not in result and "false_accept_rate_episode" not in result


def test_open_set_figures_by_hand():
    # gallery a at 0 deg, b at 90 deg. Known queries: a at 10, 20, 30 deg (right answers at
    # distances 1 - cos 10/20/30 deg) and b at 40 deg (answered a: wrong, 40 deg from a, 50 from b).
    # Absent queries at 25 and 65 deg (both 25 deg from their nearest).
    gallery, gallery_labels = _unit(0.0, 90.0), np.array(["a", "b"])
    queries, query_labels = _unit(10.0, 20.0, 30.0, 40.0), np.array(["a", "a", "a", "b"])
    absent = _unit(25.0, 65.0)
    distance = lambda degrees: 1.0 - np.cos(np.deg2rad(degrees))  # noqa: E731
    bundle = distance(22.0)
    result = episodes.score_queries(queries, query_labels, gallery, gallery_labels, absent, 0.6, {"bundle": bundle})
    assert result["recall_at_1"] == pytest.approx(0.75)
    # episode threshold: keeps 60 % of the 3 correct answers -> 2 of them -> distance(20 deg)
    assert result["threshold_episode"] == pytest.approx(distance(20.0))
    assert result["correct_accept_rate_episode"] == pytest.approx(2 / 4)
    assert result["false_accept_rate_episode"] == 0.0  # absent both 25 deg away, beyond 20
    # bundle threshold at 22 deg: known accepted right at 10 and 20 -> 2/4; absent at 25 -> none
    assert result["correct_accept_rate_bundle"] == pytest.approx(0.5)
    assert result["false_accept_rate_bundle"] == 0.0
    # AUROC: known best distances 10, 20, 30, 40 deg vs absent 25, 25 deg:
    # 10 < both (2), 20 < both (2), 30 and 40: none -> 4 / 8
    assert result["auroc_known_vs_absent"] == pytest.approx(4 / 8)
    assert "lookalike_flagged" not in result  # no margin given
    # margins between the two nearest pills: the a queries' distance(80/70/60) - distance(10/20/30),
    # the wrong b query's distance(50) - distance(40), the smallest: that margin flags it alone
    margin = distance(50.0) - distance(40.0) + 1e-9  # float rounding of the dot products
    flagged = episodes.score_queries(queries, query_labels, gallery, gallery_labels, absent, 0.6, None, margin)
    assert flagged["lookalike_flagged"] == pytest.approx(1 / 4)
    assert flagged["lookalike_errors_caught"] == 1.0
    assert flagged["recall_at_1_unflagged"] == 1.0
    looser = episodes.score_queries(queries, query_labels, gallery, gallery_labels, absent, 1.0)
    assert looser["threshold_episode"] == pytest.approx(distance(30.0))
    assert looser["false_accept_rate_episode"] == pytest.approx(1.0)  # both absent queries (25 deg) accepted


def test_no_correct_answer_leaves_the_episode_threshold_undefined():
    result = episodes.score_queries(_unit(80.0), np.array(["a"]), _unit(0.0, 90.0), np.array(["a", "b"]),
                                    _unit(45.0), 0.9)
    assert result["recall_at_1"] == 0.0
    assert "threshold_episode" not in result and "false_accept_rate_episode" not in result
    assert "auroc_known_vs_absent" in result


def test_score_episode_multi_view_corrects_a_single_view_error():
    # pool: a reference at 0 deg, b reference at 60 deg; a's two query views at 35 deg (nearer b)
    # and -20 deg (nearer a): single view 1 of 2 right; their mean (7.5 deg) is a.
    embeddings = _unit(0.0, 60.0, 35.0, -20.0, 180.0, 170.0)
    labels = np.array(["a", "b", "a", "a", "x", "x"])
    episode = episodes.Episode(1, ("a", "b"), ("x",), np.array([0, 1]), np.array([2, 3]), np.array([4, 5]),
                               np.array([[2, 3]]), np.array([[4, 5]]))
    result = episodes.score_episode(embeddings, labels, episode, 0.9)
    assert result["single"]["recall_at_1"] == pytest.approx(0.5)
    assert result["multi"]["recall_at_1"] == pytest.approx(1.0)
    assert "auroc_known_vs_absent" in result["multi"]  # the absent pair became one absent query
    assert result["single"]["auroc_known_vs_absent"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="6 embeddings for a pool of 5"):
        episodes.score_episode(embeddings, labels[:5], episode, 0.9)


def test_score_episode_without_multi_view_tuples_reports_single_only():
    embeddings, labels = _unit(0.0, 90.0, 5.0), np.array(["a", "b", "a"])
    episode = episodes.Episode(1, ("a", "b"), (), np.array([0, 1]), np.array([2]), np.zeros(0, np.int64),
                               np.zeros((0, 2), np.int64), np.zeros((0, 2), np.int64))
    assert set(episodes.score_episode(embeddings, labels, episode, 0.9)) == {"single"}


def test_keep_correct_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="keep_correct"):
        episodes.score_queries(_unit(0.0), np.array(["a"]), _unit(0.0), np.array(["a"]), np.zeros((0, 2)), 0.0)


def test_tally_answers_by_hand():
    # gallery: a at 0 deg, b at 90 deg. Episode 1 queries: a at 10 and 20 deg (right), b at 40 deg
    # (taken for a); absent x at 15 and 80 deg. Keeping all correct answers sets the threshold at
    # 20 deg: x at 15 deg is accepted as a, x at 80 deg (10 deg from b) as b. Episode 2: the same
    # gallery, b's query at 80 deg right, a's at 50 deg taken for b, no absent pill.
    embeddings = _unit(0.0, 90.0, 10.0, 20.0, 40.0, 15.0, 80.0, 80.0, 50.0)
    labels = np.array(["a", "b", "a", "a", "b", "x", "x", "b", "a"])
    empty = np.zeros((0, 2), np.int64)
    first = episodes.Episode(1, ("a", "b"), ("x",), np.array([0, 1]), np.array([2, 3, 4]), np.array([5, 6]),
                             empty, empty)
    second = episodes.Episode(1, ("a", "b"), (), np.array([0, 1]), np.array([7, 8]), np.zeros(0, np.int64),
                              empty, empty)
    tally = episodes.tally_answers(embeddings, labels, [first, second], 1.0)
    assert tally["recall_at_1_by_pill"] == {"a": pytest.approx(2 / 3), "b": pytest.approx(1 / 2)}
    assert tally["confusions"] == [["a", "b", 1, pytest.approx(1 / 3)], ["b", "a", 1, pytest.approx(1 / 2)]]
    assert tally["false_accept_rate_by_pill"] == {"x": pytest.approx(1.0)}
    assert tally["false_accepts"] == [["x", "a", 1, pytest.approx(0.5)], ["x", "b", 1, pytest.approx(0.5)]]
    # keeping half the correct answers: threshold 10 deg, x at 15 deg (15 from a) and 80 deg (10 from b)
    stricter = episodes.tally_answers(embeddings, labels, [first], 0.5)
    assert stricter["false_accepts"] == [["x", "b", 1, pytest.approx(0.5)]]
    assert stricter["false_accept_rate_by_pill"] == {"x": pytest.approx(0.5)}
    with pytest.raises(ValueError, match="9 embeddings for a pool of 8"):
        episodes.tally_answers(embeddings, labels[:8], [first], 1.0)


# --- summary ------------------------------------------------------------------------------------


def test_summarise_mean_and_sample_std():
    summary = episodes.summarise([{"recall_at_1": 0.5, "auroc": 0.9}, {"recall_at_1": 0.7},
                                  {"recall_at_1": 0.9, "auroc": 0.7}])
    assert summary["recall_at_1"] == pytest.approx(0.7)
    assert summary["recall_at_1_std"] == pytest.approx(0.2)  # sqrt(((-.2)^2 + 0 + .2^2) / 2)
    assert "recall_at_1_episodes" not in summary
    assert summary["auroc"] == pytest.approx(0.8)
    assert summary["auroc_std"] == pytest.approx(np.sqrt(0.02))
    assert summary["auroc_episodes"] == 2
    assert episodes.summarise([{"x": 0.3}]) == {"x": 0.3, "x_std": 0.0}
    with pytest.raises(ValueError, match="no episodes"):
        episodes.summarise([])


# --- the real photo set -------------------------------------------------------------------------

REPO = pathlib.Path(__file__).resolve().parents[3]
SHIPPED_REAL = REPO / "data" / "real" / "pushin_pill.zip"
SHARED_REAL = REPO.parent / "shared" / "data" / "pills_real" / "pushin_pill"


def _config(localise: bool = True) -> PreprocessConfig:
    return PreprocessConfig(image_size=32, localise=localise, min_pill_fraction=0.005, max_pill_fraction=0.9,
                            crop_margin=0.15, max_image_pixels=10**7, symmetry_views=1)


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _pill_photo(colour: tuple[int, int, int]) -> np.ndarray:
    photo = np.full((48, 48, 3), 235, np.uint8)
    cv2.ellipse(photo, (24, 24), (12, 8), 0, 0, 360, colour, -1)
    return photo


def test_load_real_groups_crops_by_the_manifest_and_counts_localisation_failures(tmp_path):
    archive = tmp_path / "real.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("set/red/r1.png", _png(_pill_photo((200, 30, 30))))
        handle.writestr("set/red/r2.png", _png(_pill_photo((190, 40, 30))))
        handle.writestr("set/blue/b1.png", _png(_pill_photo((30, 30, 200))))
        handle.writestr("set/blue/plain.png", _png(np.full((48, 48, 3), 235, np.uint8)))  # no pill to find
        handle.writestr("set/manifest.csv", "crop,class_name,source_photo\nred/r1.png,red,P1\nred/r2.png,red,P1\n"
                                            "blue/b1.png,blue,P1\n")
    pool, report, skipped = episodes.load_real(str(archive), _config(localise=False))
    order = np.argsort(pool.sources)
    assert pool.sources[order].tolist() == ["blue/b1.png", "blue/plain.png", "red/r1.png", "red/r2.png"]
    assert pool.labels[order].tolist() == ["blue", "blue", "red", "red"]
    # manifest rows give the source photo; a crop it does not list is its own photo
    assert pool.groups[order].tolist() == ["P1", "blue/plain.png", "P1", "P1"]
    assert pool.pixels.shape == (4, 32, 32, 3) and pool.pixels.dtype == np.uint8
    assert report["localisation_no_pill_found"] == 1
    assert report["localisation_no_pill_found_fraction"] == pytest.approx(0.25)
    assert report["crops_used"] == 4 and report["classes"] == 2 and report["photos"] == 2 and skipped == []
    localised, report_on, skipped_on = episodes.load_real(str(archive), _config(localise=True))
    assert len(localised) == 3 and report_on["crops_used"] == 3
    assert skipped_on == [{"file": "blue/plain.png", "reason": "no pill found"}]
    # auto: these pills stand clear of the edge, so the same crops as localisation on, and the same count
    auto, report_auto, skipped_auto = episodes.load_real(str(archive), _config(localise="auto"))
    np.testing.assert_array_equal(auto.pixels, localised.pixels)
    assert report_auto["localisation_no_pill_found"] == 1 and skipped_auto == skipped_on


def test_load_novel_real_leaves_out_the_pills_a_model_trained_on(tmp_path, monkeypatch):
    from tf_pilltrack.data import dataset
    from tf_pilltrack.scoring import evaluation
    from tf_pilltrack import paths

    archive = tmp_path / "real.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for name, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200)), ("green", (30, 190, 40))):
            for index in range(2):  # two different photos of each pill
                handle.writestr(f"{name}/{index}.png", _png(_pill_photo((colour[0], colour[1] + 10 * index, colour[2]))))
    monkeypatch.chdir(tmp_path)
    paths.PREPARED.mkdir(parents=True)

    def trained_on(train: list[str], mix: list[str]) -> None:
        for split, labels in (("train", train), ("mix", mix)):
            dataset.save_split(paths.split_file(split), dataset.Split(
                np.zeros((len(labels), 32, 32, 3), np.uint8), np.array(labels, str),
                np.array(labels, str), np.array(labels, str)))

    real_source = str(archive)
    trained_on(["red", "other"], ["blue"])  # a training pill and a mix pill share names with the real set
    pool, report, _ = evaluation.load_novel_real(real_source, _config(localise=False))
    assert sorted(set(pool.labels.tolist())) == ["green"] and len(pool) == 2
    assert report["trained_classes_left_out"] == 2 and report["classes"] == 3
    trained_on(["other"], [])
    pool, report, _ = evaluation.load_novel_real(real_source, _config(localise=False))
    assert len(pool) == 6 and report["trained_classes_left_out"] == 0
    trained_on(["red", "green"], ["blue"])
    with pytest.raises(ValueError, match=r"real\.zip: every pill of episodes.real_source was trained on"):
        evaluation.load_novel_real(real_source, _config(localise=False))


def test_load_real_names_a_missing_or_empty_source(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.zip: real photo set not found \(episodes.real_source"):
        episodes.load_real(str(tmp_path / "nowhere.zip"), _config(localise=False))
    (tmp_path / "empty" / "red").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty: no images"):
        episodes.load_real(str(tmp_path / "empty"), _config(localise=False))


def test_shipped_real_set_is_complete():
    pool, report, skipped = episodes.load_real(str(SHIPPED_REAL), _config(localise=False))
    assert skipped == []
    assert report["images"] == report["crops_used"] == 557
    assert report["classes"] == 17 and report["photos"] == 103
    counts = Counter(pool.labels.tolist())
    assert counts["tylenol-er"] == 99 and counts["tylenol"] == 18
    # photo groups from the manifest: tylenol-er's 99 crops come from 42 photos
    assert len(set(pool.groups[pool.labels == "tylenol-er"].tolist())) == 42
    assert len(episodes.eligible_classes(pool.labels, pool.groups, 5)) == 17
    assert "CC BY 4.0" in (SHIPPED_REAL.parent / "README.md").read_text()
    with zipfile.ZipFile(SHIPPED_REAL) as handle:
        assert b"CC BY 4.0" in handle.comment


@pytest.mark.skipif(not SHARED_REAL.is_dir(), reason="../shared/data/pills_real not present")
def test_shipped_real_set_is_a_byte_identical_copy_of_the_shared_one():
    with zipfile.ZipFile(SHIPPED_REAL) as handle:
        shipped = {name.removeprefix("pushin_pill/"): handle.read(name) for name in handle.namelist()}
    shared = {path.relative_to(SHARED_REAL).as_posix(): path.read_bytes()
              for path in SHARED_REAL.rglob("*") if path.is_file()}
    assert shipped.keys() == shared.keys()
    assert all(shipped[name] == shared[name] for name in shared)


def test_distinct_labels_are_the_nearest_pills_padded():
    ranked = np.array([["a", "a", "b", "a", "c"], ["b", "b", "b", "b", "b"]])
    assert episodes.distinct_labels(ranked, 2).tolist() == [["a", "b"], ["b", ""]]
    assert episodes.distinct_labels(ranked, 4).tolist() == [["a", "b", "c", ""], ["b", "", "", ""]]
