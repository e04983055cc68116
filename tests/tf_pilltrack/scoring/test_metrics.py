"""Retrieval and open-set metrics (tf_pilltrack/scoring/metrics.py) on examples worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tf_pilltrack.scoring import metrics
from tf_pilltrack.settings import Enroll


def _unit(*degrees: float) -> np.ndarray:
    """2-D unit vectors at the given angles (cosine distance 1 - cos(angle between))."""
    radians = np.deg2rad(np.array(degrees, dtype=np.float64))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


# --- rank_gallery -----------------------------------------------------------------------------


def test_rank_gallery_orders_by_cosine_distance():
    query = np.array([[1.0, 0.0]])
    gallery = np.array([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0], [0.6, 0.8]])
    # distances 1 - q.g: [1 - 0, 1 - 1, 1 + 1, 1 - 0.6] = [1.0, 0.0, 2.0, 0.4]
    order, distances = metrics.rank_gallery(query, gallery, depth=4)
    np.testing.assert_array_equal(order, [[1, 3, 0, 2]])
    np.testing.assert_allclose(distances, [[0.0, 0.4, 1.0, 2.0]], atol=1e-12)


def test_rank_gallery_depth_truncates_and_is_capped_by_gallery_size():
    queries = _unit(0.0, 90.0)
    gallery = _unit(80.0, 10.0, 180.0)
    # query at 0 deg: 10 (10 deg), 80 (80 deg), 180 -> [1, 0, 2]
    # query at 90 deg: 80 (10 deg), 10 (80 deg), 180 (90 deg) -> [0, 1, 2]
    order, distances = metrics.rank_gallery(queries, gallery, depth=2)
    np.testing.assert_array_equal(order, [[1, 0], [0, 1]])
    assert distances.shape == (2, 2)
    order, distances = metrics.rank_gallery(queries, gallery, depth=50)
    np.testing.assert_array_equal(order, [[1, 0, 2], [0, 1, 2]])
    assert distances.shape == (2, 3)
    assert np.all(np.diff(distances, axis=1) >= 0)


def test_rank_gallery_breaks_ties_by_gallery_position():
    query = np.array([[1.0, 0.0]])
    gallery = np.array([[0.0, 1.0], [0.0, -1.0], [0.0, 1.0]])  # all at distance 1
    order, _ = metrics.rank_gallery(query, gallery, depth=3)
    np.testing.assert_array_equal(order, [[0, 1, 2]])


@pytest.mark.parametrize("depth", [0, -1])
def test_rank_gallery_refuses_a_depth_below_one(depth):
    with pytest.raises(ValueError, match="depth"):
        metrics.rank_gallery(_unit(0.0), _unit(0.0, 90.0), depth)


def test_rank_gallery_refuses_an_empty_gallery():
    with pytest.raises(ValueError, match="empty gallery"):
        metrics.rank_gallery(_unit(0.0), np.zeros((0, 2)), 1)


# --- Recall@k and mAP@R -----------------------------------------------------------------------

# Gallery: two "a", two "b", one "c" (R_a = 2, R_b = 2, R_c = 1); "d" is not in the gallery.
GALLERY_LABELS = np.array(["a", "a", "b", "b", "c"])
QUERY_LABELS = np.array(["a", "b", "c", "d"])
RANKED = np.array([
    ["a", "b", "a", "c", "b"],  # hits 1 0 1 0 0; R=2: P@1 = 1 at rank 1 -> AP@R = 1/2
    ["a", "b", "b", "a", "c"],  # hits 0 1 1 0 0; R=2: P@2 = 1/2 at rank 2 -> AP@R = (1/2)/2 = 1/4
    ["a", "a", "b", "b", "c"],  # hits 0 0 0 0 1; R=1: rank 1 misses -> AP@R = 0
    ["a", "b", "c", "a", "b"],  # no hits; R=0 -> 0
])


def test_recall_at_k_by_hand():
    result = metrics.retrieval_metrics(RANKED, QUERY_LABELS, GALLERY_LABELS, ks=(1, 2, 3, 5))
    # first hit at ranks 1, 2, 5 and never -> R@1 = 1/4, R@2 = 2/4, R@3 = 2/4, R@5 = 3/4
    assert result["recall_at_1"] == pytest.approx(0.25)
    assert result["recall_at_2"] == pytest.approx(0.5)
    assert result["recall_at_3"] == pytest.approx(0.5)
    assert result["recall_at_5"] == pytest.approx(0.75)


def test_map_at_r_by_hand():
    result = metrics.retrieval_metrics(RANKED, QUERY_LABELS, GALLERY_LABELS)
    # (1/2 + 1/4 + 0 + 0) / 4 = 0.1875
    assert result["map_at_r"] == pytest.approx(0.1875)
    assert set(result) == {"recall_at_1", "recall_at_5", "map_at_r"}


def test_map_at_r_counts_only_the_first_r_ranks():
    gallery = np.array(["a", "a", "a", "b", "b"])  # R_a = 3
    ranked = np.array([
        ["a", "b", "a", "a", "b"],  # top 3: 1 0 1 -> (P@1 + P@3) / 3 = (1 + 2/3) / 3 = 5/9
        ["b", "b", "a", "a", "a"],  # top 3: 0 0 1 -> (P@3) / 3 = (1/3) / 3 = 1/9; a's at 4, 5 do not count
        ["a", "a", "a", "b", "b"],  # perfect -> 1
    ])
    result = metrics.retrieval_metrics(ranked, np.array(["a", "a", "a"]), gallery)
    assert result["map_at_r"] == pytest.approx((5 / 9 + 1 / 9 + 1) / 3)
    assert result["recall_at_1"] == pytest.approx(2 / 3)
    assert result["recall_at_5"] == pytest.approx(1.0)


def test_map_at_r_with_a_ranking_shorter_than_r_counts_missing_ranks_as_misses():
    # R_a = 3 but only two ranks known (the device's Annoy answer gives 5 labels while a
    # gallery may hold more than 5 shots of a pill): (P@1 + P@2) / 3 = 2/3, a lower bound.
    gallery = np.array(["a", "a", "a", "b"])
    result = metrics.retrieval_metrics(np.array([["a", "a"]]), np.array(["a"]), gallery)
    assert result["map_at_r"] == pytest.approx(2 / 3)


def test_retrieval_metrics_works_with_object_labels():
    # evaluation.evaluate_bundle passes object arrays (Annoy's labels, padded with "").
    result = metrics.retrieval_metrics(RANKED.astype(object), QUERY_LABELS.astype(object), GALLERY_LABELS)
    assert result["map_at_r"] == pytest.approx(0.1875)


def test_retrieval_metrics_refuses_no_queries():
    with pytest.raises(ValueError, match="no queries"):
        metrics.retrieval_metrics(np.zeros((0, 5), dtype=str), np.zeros((0,), dtype=str), GALLERY_LABELS)


def test_retrieval_metrics_refuses_mismatched_rankings():
    # One query label would otherwise broadcast silently against four rankings.
    with pytest.raises(ValueError, match="4 rankings for 1 queries"):
        metrics.retrieval_metrics(RANKED, np.array(["a"]), GALLERY_LABELS)


def test_evaluate_embeddings_by_hand():
    # Gallery a at 0 and 20 deg, b at 90 and 100 deg, c at 200 deg.
    gallery = _unit(0.0, 20.0, 90.0, 100.0, 200.0)
    gallery_labels = np.array(["a", "a", "b", "b", "c"])
    # Query a at 10 deg: a(0) and a(20) tie at 10 deg -> ranks 1, 2: AP@R = 1.
    # Query b at 50 deg: a(20) 30 deg, a(0) 50, b(90) 40, b(100) 50 -> order a20, b90, a0|b100 tie
    #   (ranks 3 and 4 do not count): R=2, top 2 = a, b = 0 1 -> (1/2)/2 = 1/4.
    # Query c at 190 deg: c(200) 10 deg -> AP@R = 1.
    queries = _unit(10.0, 50.0, 190.0)
    result = metrics.evaluate_embeddings(queries, np.array(["a", "b", "c"]), gallery, gallery_labels)
    assert result["recall_at_1"] == pytest.approx(2 / 3)
    assert result["recall_at_5"] == pytest.approx(1.0)
    assert result["map_at_r"] == pytest.approx((1 + 0.25 + 1) / 3)


def test_evaluate_embeddings_ranks_deep_enough_for_large_classes():
    # Seven "a" items (R = 7 > 5): mAP@R needs the ranking to depth 7, or the last
    # two correct items would count as misses. Query at 0 deg, all a's nearer than the b.
    gallery = _unit(1, 2, 3, 4, 5, 6, 7, 90)
    labels = np.array(["a"] * 7 + ["b"])
    result = metrics.evaluate_embeddings(_unit(0.0), np.array(["a"]), gallery, labels)
    assert result["map_at_r"] == pytest.approx(1.0)


def test_evaluate_embeddings_refuses_an_empty_gallery():
    with pytest.raises(ValueError, match="empty gallery"):
        metrics.evaluate_embeddings(_unit(0.0), np.array(["a"]), np.zeros((0, 2)), np.zeros((0,), str))


# --- the unknown-pill threshold ---------------------------------------------------------------


@pytest.mark.parametrize("target, expected", [
    # sorted distances 0.1 0.2 0.3 0.4; accepted fraction at each: 1/4, 2/4, 3/4, 4/4
    (0.0, 0.1),
    (0.25, 0.1),
    (0.5, 0.2),
    (0.6, 0.3),   # 0.2 accepts only 50 %; linear interpolation would give 0.28, still 50 %
    (0.75, 0.3),
    (0.95, 0.4),
    (1.0, 0.4),
])
def test_threshold_for_recall_by_hand(target, expected):
    distances = np.array([0.4, 0.1, 0.3, 0.2])
    assert metrics.threshold_for_recall(distances, target) == pytest.approx(expected)


def test_threshold_for_recall_with_ten_matches_at_95_percent():
    # 10 distances, target 0.95: 9 accepted is 90 % < 95 %, so the threshold is the largest.
    distances = np.arange(1, 11) / 10.0
    threshold = metrics.threshold_for_recall(distances, 0.95)
    assert threshold == pytest.approx(1.0)
    assert np.mean(distances <= threshold) >= 0.95


@settings(max_examples=100, deadline=None)
@given(
    distances=st.lists(st.floats(0.0, 2.0, allow_nan=False), min_size=1, max_size=40),
    target=st.floats(0.0, 1.0),
)
def test_threshold_for_recall_is_the_smallest_distance_reaching_the_target(distances, target):
    distances = np.array(distances)
    threshold = metrics.threshold_for_recall(distances, target)
    assert threshold in distances
    assert np.mean(distances <= threshold) >= target - 1e-9
    below = distances[distances < threshold]
    if len(below):
        assert np.mean(distances <= below.max()) < target + 1e-9


def test_threshold_for_recall_refuses_no_matches():
    with pytest.raises(ValueError, match="no correct matches"):
        metrics.threshold_for_recall(np.array([]), 0.95)


# --- open set ---------------------------------------------------------------------------------


def test_open_set_rates_by_hand():
    known = np.array([0.1, 0.3, 0.5, 0.2])
    correct = np.array([True, True, True, False])
    absent = np.array([0.25, 0.6, 0.2])
    rates = metrics.open_set_rates(known, correct, absent, threshold=0.3)
    # correct accepts: 0.1 (right), 0.3 (right, <= is accepted); 0.5 too far; 0.2 wrong -> 2/4
    assert rates["correct_accept_rate"] == pytest.approx(0.5)
    # false accepts: 0.25 and 0.2 are <= 0.3, 0.6 is not -> 2/3
    assert rates["false_accept_rate"] == pytest.approx(2 / 3)
    # AUROC over 4 x 3 pairs, known nearer = 1, tie = 1/2:
    #   0.1: < 0.25, 0.6, 0.2 -> 3;  0.3: < 0.6 -> 1;  0.5: < 0.6 -> 1;
    #   0.2: < 0.25, 0.6 -> 2, tie with 0.2 -> 0.5;  total 7.5 / 12 = 0.625
    assert rates["auroc_known_vs_absent"] == pytest.approx(0.625)


@pytest.mark.parametrize("known, absent, expected", [
    ([0.1, 0.2], [0.3, 0.4], 1.0),   # every known query nearer
    ([0.3, 0.4], [0.1, 0.2], 0.0),   # every absent query nearer
    ([0.2, 0.2], [0.2, 0.2], 0.5),   # all ties
    ([0.1, 0.3], [0.2], 0.5),        # one pair each way
])
def test_auroc_extremes_and_ties(known, absent, expected):
    rates = metrics.open_set_rates(np.array(known), np.ones(len(known), bool), np.array(absent), 0.0)
    assert rates["auroc_known_vs_absent"] == pytest.approx(expected)


def test_open_set_rates_threshold_is_inclusive():
    rates = metrics.open_set_rates(np.array([0.3]), np.array([True]), np.array([0.3]), 0.3)
    assert rates["correct_accept_rate"] == 1.0
    assert rates["false_accept_rate"] == 1.0


def test_open_set_rates_without_absent_queries():
    rates = metrics.open_set_rates(np.array([0.1, 0.5]), np.array([True, True]), np.array([]), 0.3)
    assert rates == {"correct_accept_rate": 0.5, "false_accept_rate": 0.0}


def test_open_set_rates_refuses_no_known_queries():
    with pytest.raises(ValueError, match="no known queries"):
        metrics.open_set_rates(np.array([]), np.array([], bool), np.array([0.2]), 0.3)


def _unit(*angles_in_degrees: float) -> np.ndarray:
    radians = np.radians(angles_in_degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def test_label_margins_compare_the_two_nearest_pills():
    gallery = _unit(0, 10, 90)  # pill a twice, pill b once
    labels = np.array(["a", "a", "b"])
    queries = _unit(5, 50)
    margins = metrics.label_margins(queries, gallery, labels)
    # query at 5 degrees: a at 5 (either item), b at 85; query at 50: a at 40, b at 40: a tie
    expected = [(1 - np.cos(np.radians(85))) - (1 - np.cos(np.radians(5))), 0.0]
    np.testing.assert_allclose(margins, expected, atol=1e-6)
    np.testing.assert_array_equal(metrics.label_margins(queries, gallery[:2], labels[:2]), [2.0, 2.0])


def test_lookalike_rates_by_hand():
    margins = np.array([0.01, 0.02, 0.03, 0.04, 0.5, 0.6])
    correct = np.array([False, True, False, False, False, True])
    rates = metrics.lookalike_rates(margins, correct, 0.03)
    assert rates["lookalike_flagged"] == pytest.approx(3 / 6)
    assert rates["lookalike_errors_caught"] == pytest.approx(2 / 4)  # .01 and .03 of .01 .03 .04 .5
    assert rates["recall_at_1_unflagged"] == pytest.approx(1 / 3)  # .04 wrong, .5 wrong, .6 right
    everything = metrics.lookalike_rates(margins, correct, 1.0)
    assert everything["lookalike_flagged"] == 1.0 and everything["recall_at_1_unflagged"] == 1.0


def test_keras_int8_agreement_finds_the_near_ties_where_answers_differ():
    from tf_pilltrack.scoring import evaluation

    gallery, labels = _unit(0, 90), np.array(["a", "b"])
    keras_queries = _unit(10, 44, 46, 80)  # margins: large, small, small, large
    int8_queries = _unit(10, 46, 44, 80)  # the two near ties flip
    keras_top1, int8_top1 = np.array(["a", "a", "b", "b"]), np.array(["a", "b", "a", "b"])
    figures = evaluation.keras_int8_agreement(keras_queries, gallery, int8_queries, labels, keras_top1, int8_top1)
    tie = np.cos(np.radians(44)) - np.cos(np.radians(46))
    assert figures["largest_disagreeing_margin"] == pytest.approx(tie, abs=1e-6)
    assert figures["near_tie_share"] == 0.5
    assert figures["embedding_cosine_median"] == pytest.approx((1 + np.cos(np.radians(2))) / 2, abs=1e-6)
    same = evaluation.keras_int8_agreement(keras_queries, gallery, keras_queries, labels, keras_top1, keras_top1)
    assert same["largest_disagreeing_margin"] == 0.0 and same["near_tie_share"] == 0.0


def test_enroll_calibrates_the_naming_rule_by_hand():
    from tf_pilltrack.scoring import calibration
    from tf_pilltrack.data import dataset

    def split(labels):
        labels = np.array(labels)
        return dataset.Split(np.zeros((len(labels), 1, 1, 3), np.uint8), labels, labels, labels)

    # pills a (0 deg) and b (20 deg) enrolled; c (seed 0 keeps it out of the gallery) at 180 deg
    gallery, references = _unit(0, 20, 180), split(["a", "b", "c"])
    # a's queries at -10 and 5 deg, b's at 30 (right) and 9 (taken for a, a close call), c's at 170
    queries, query_split = _unit(-10, 5, 30, 9, 170), split(["a", "a", "b", "b", "c"])
    distance = lambda degrees: 1 - np.cos(np.radians(degrees))  # noqa: E731
    enroll = Enroll(annoy_trees=16, search_k_agreement=0.99, calibration_gallery_pills=20, calibration_galleries=5,
                    calibration_absent=0.3, min_named_correct=0.95, max_absent_named=0.05, rule_steps=4, tiers=None)
    rule = calibration.calibrate(gallery, references, queries, query_split, enroll, 0)
    # three pills are fewer than one draw of 20 enrolled: one gallery of them all
    assert rule["calibration_galleries"] == 1
    assert rule["calibration_absent_classes"] == 1 and rule["calibration_absent_queries"] == 1
    assert rule["calibration_recall_at_1"] == pytest.approx(0.75)
    # the widest threshold (10 deg) names the wrong answer too, unless the margin leaves its near tie out
    assert rule["threshold"] == pytest.approx(distance(10))
    assert rule["lookalike_margin"] == pytest.approx(distance(11) - distance(9))
    assert rule["targets_met"]
    assert rule["named_share"] == pytest.approx(0.75)
    assert rule["named_correct"] == 1.0 and rule["absent_named"] == 0.0
    assert rule["lookalike_flagged"] == pytest.approx(0.25) and rule["recall_at_1_unflagged"] == 1.0


def test_selective_rates_count_absent_pills_named_as_wrong_answers():
    best = np.array([0.1, 0.2, 0.3, 0.6])
    margins = np.array([0.5, 0.01, 0.5, 0.5])
    correct = np.array([True, False, True, True])
    absent_best, absent_margins = np.array([0.15, 0.7]), np.array([0.3, 0.3])
    rates = metrics.selective_rates(best, margins, correct, absent_best, absent_margins, 0.35, 0.05)
    # named: 0.1 (right), 0.3 (right); 0.2 is a close call, 0.6 too far; absent 0.15 named
    assert rates == {"named_share": 0.5, "named_correct": pytest.approx(2 / 3), "absent_named": 0.5}
    nothing = metrics.selective_rates(best, margins, correct, absent_best, absent_margins, 0.0, 0.05)
    assert nothing == {"named_share": 0.0, "named_correct": 1.0, "absent_named": 0.0}


def test_choose_rule_names_the_most_photos_within_both_targets():
    rng = np.random.default_rng(0)
    correct = np.r_[np.ones(80, bool), np.zeros(20, bool)]
    best = np.r_[rng.uniform(0.0, 0.3, 80), rng.uniform(0.2, 0.5, 20)]
    margins = np.r_[rng.uniform(0.05, 0.3, 80), rng.uniform(0.0, 0.04, 20)]
    absent_best, absent_margins = rng.uniform(0.25, 0.8, 50), rng.uniform(0.0, 0.3, 50)
    rule = metrics.choose_rule(best, margins, correct, absent_best, absent_margins, 0.95, 0.05, 20)
    assert rule["met"]
    assert rule["named_correct"] >= 0.95 and rule["absent_named"] <= 0.05
    again = metrics.selective_rates(best, margins, correct, absent_best, absent_margins, rule["threshold"],
                                    rule["margin"])
    assert again == {key: rule[key] for key in again}
    # no other candidate pair meeting both targets names more
    for threshold in np.quantile(best[correct], np.linspace(0.05, 1, 20), method="inverted_cdf"):
        for margin in np.r_[0.0, np.quantile(margins[~correct], np.linspace(0, 0.95, 20), method="inverted_cdf")]:
            rates = metrics.selective_rates(best, margins, correct, absent_best, absent_margins, threshold, margin)
            if rates["named_correct"] >= 0.95 and rates["absent_named"] <= 0.05:
                assert rates["named_share"] <= rule["named_share"]


def test_choose_rule_says_when_the_targets_cannot_be_met():
    best, margins = np.array([0.1, 0.1, 0.2]), np.array([0.2, 0.2, 0.2])
    correct = np.array([True, False, True])
    rule = metrics.choose_rule(best, margins, correct, np.array([0.05]), np.array([0.3]), 0.99, 0.0, 5)
    assert not rule["met"]
    with pytest.raises(ValueError, match="no correct answers"):
        metrics.choose_rule(best, margins, np.zeros(3, bool), np.zeros(0), np.zeros(0), 0.9, 0.1, 5)


def test_risk_coverage_rises_with_the_threshold():
    best = np.linspace(0.01, 0.5, 50)
    correct = best < 0.3
    curve = metrics.risk_coverage(best, np.full(50, 0.2), correct, np.array([0.2, 0.6]), np.array([0.2, 0.2]),
                                  0.0, 10)
    shares = [point["named_share"] for point in curve]
    assert shares == sorted(shares) and shares[-1] == 1.0
    assert curve[0]["named_correct"] == 1.0 and curve[-1]["named_correct"] < 1.0


def test_calibration_galleries_are_counter_sized_seeded_draws():
    from tf_pilltrack.scoring import calibration

    labels = [f"pill_{number:03d}" for number in range(100)]
    settings = {"gallery_pills": 14, "gallery_count": 30, "fraction": 0.3}
    galleries = calibration.draw_calibration_galleries(labels, **settings, seed=42)
    assert len(galleries) == 30
    for enrolled, absent in galleries:
        # 14 / (1 - 0.3) = 20 pills drawn, 6 of them kept out of the gallery
        assert len(enrolled) == 14 and len(absent) == 6
        assert not set(enrolled) & set(absent) and set(enrolled) | set(absent) <= set(labels)
    assert len({tuple(enrolled) for enrolled, _ in galleries}) > 1  # every draw its own
    assert galleries == calibration.draw_calibration_galleries(labels, **settings, seed=42)
    assert galleries != calibration.draw_calibration_galleries(labels, **settings, seed=43)
    # a calibration set no larger than one draw is one gallery of every pill
    whole = calibration.draw_calibration_galleries(labels[:15], **settings, seed=42)
    assert len(whole) == 1 and sorted(whole[0][0] + whole[0][1]) == labels[:15] and len(whole[0][1]) == 4
    with pytest.raises(ValueError, match="at least 3"):
        calibration.draw_calibration_galleries(labels[:2], **settings, seed=42)


def test_choose_rule_never_returns_a_negative_distance():
    # an enrolled photo asked again sits at distance 0, which float rounding can make -1e-7: the bundle
    # refuses a negative threshold, so the rule must not give one
    best = np.array([-1.2e-7, -1.2e-7, 0.2])
    margins = np.array([0.5, 0.5, -1e-9])
    rule = metrics.choose_rule(best, margins, np.array([True, True, False]), np.array([0.3]), np.array([0.1]),
                               0.95, 0.05, 4)
    assert rule["threshold"] >= 0.0 and rule["margin"] >= 0.0
    assert rule["named_share"] == pytest.approx(2 / 3) and rule["named_correct"] == 1.0
