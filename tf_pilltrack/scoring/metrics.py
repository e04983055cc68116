"""Retrieval metrics on L2-normalised embeddings (numpy only).

A query is answered by ranking the gallery by cosine distance. Recall@k: the fraction of
queries with a gallery item of their own class among the k nearest. mAP@R (Musgrave et al.,
"A Metric Learning Reality Check"): with R the number of gallery items of the query's class,
the mean over queries of (1/R) * sum of precision@i at each rank i <= R holding a correct item.
"""

from __future__ import annotations

import numpy as np


def rank_gallery(queries: np.ndarray, gallery: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest neighbours: (indices, cosine distances), each (Q, depth), nearest first."""
    if len(gallery) == 0:
        raise ValueError("empty gallery: nothing to rank")
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    depth = min(depth, len(gallery))
    distances = 1.0 - queries @ gallery.T
    order = np.argsort(distances, axis=1, kind="stable")[:, :depth]
    return order, np.take_along_axis(distances, order, axis=1)


def retrieval_metrics(ranked_labels: np.ndarray, query_labels: np.ndarray,
                      gallery_labels: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Recall@k for each k and mAP@R from the gallery labels of each query's ranking
    (`ranked_labels`, shape (Q, depth), nearest first; depth at least max(ks) and R: ranks
    beyond the depth count as misses, so a shorter ranking gives lower bounds)."""
    if len(query_labels) == 0:
        raise ValueError("no queries to evaluate")
    if len(ranked_labels) != len(query_labels):
        raise ValueError(f"{len(ranked_labels)} rankings for {len(query_labels)} queries")
    hits = ranked_labels == query_labels[:, None]
    result = {f"recall_at_{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks}
    counts = {label: int(count) for label, count in zip(*np.unique(gallery_labels, return_counts=True))}
    precisions = []
    for row, label in zip(hits, query_labels):
        r = counts.get(label, 0)
        if r == 0:
            precisions.append(0.0)
            continue
        top = row[:r]
        cumulative = np.cumsum(top) / np.arange(1, len(top) + 1)
        precisions.append(float((cumulative * top).sum() / r))
    result["map_at_r"] = float(np.mean(precisions))
    return result


def evaluate_embeddings(query_embeddings: np.ndarray, query_labels: np.ndarray,
                        gallery_embeddings: np.ndarray, gallery_labels: np.ndarray) -> dict[str, float]:
    """Recall@1, Recall@5 and mAP@R by exact search."""
    depth = max(5, int(np.unique(gallery_labels, return_counts=True)[1].max(initial=0)))
    order, _ = rank_gallery(query_embeddings, gallery_embeddings, depth)
    return retrieval_metrics(gallery_labels[order], query_labels, gallery_labels)


def threshold_for_recall(correct_distances: np.ndarray, target_recall: float) -> float:
    """The smallest of the correct matches' distances that accepts (distance <= threshold) at
    least `target_recall` of them. (Linear interpolation between two distances could accept
    fewer: with 10 distances and 0.95 it lands between the 9th and the 10th, accepting 90 %.)"""
    if len(correct_distances) == 0:
        raise ValueError("no correct matches to calibrate the threshold on")
    return float(np.quantile(correct_distances, target_recall, method="inverted_cdf"))


def label_margins(query_embeddings: np.ndarray, gallery_embeddings: np.ndarray,
                  gallery_labels: np.ndarray) -> np.ndarray:
    """Each query's cosine-distance margin between its nearest and its second-nearest pill (a
    pill's distance is that of its nearest gallery item); 2 (the largest distance) when the
    gallery holds one pill. A small margin is a near tie, which tiny changes to the embedding
    (quantisation) can flip."""
    gallery_labels = np.asarray(gallery_labels).astype(str)
    names = sorted(set(gallery_labels.tolist()))
    distances = 1.0 - query_embeddings @ gallery_embeddings.T
    per_label = np.stack([distances[:, gallery_labels == name].min(axis=1) for name in names], axis=1)
    if len(names) == 1:
        return np.full(len(query_embeddings), 2.0)
    nearest = np.sort(per_label, axis=1)
    return nearest[:, 1] - nearest[:, 0]


def lookalike_rates(margins: np.ndarray, correct: np.ndarray, margin: float) -> dict[str, float]:
    """At a look-alike `margin`: the share of answers flagged as close calls, the share of wrong
    answers among them (caught), and Recall@1 of the answers left unflagged (1 when none is)."""
    flagged, correct = np.asarray(margins) <= margin, np.asarray(correct, bool)
    return {
        "lookalike_flagged": float(flagged.mean()) if len(flagged) else 0.0,
        "lookalike_errors_caught": float(flagged[~correct].mean()) if (~correct).any() else 0.0,
        "recall_at_1_unflagged": float(correct[~flagged].mean()) if (~flagged).any() else 1.0,
    }


def open_set_rates(known_distances: np.ndarray, known_correct: np.ndarray,
                   absent_distances: np.ndarray, threshold: float) -> dict[str, float]:
    """At `threshold`: the fraction of gallery-absent queries wrongly accepted (false accepts),
    of known queries accepted with the right answer, and the AUROC of known vs absent by best
    distance (the probability a known query is nearer than an absent one)."""
    if len(known_distances) == 0:
        raise ValueError("no known queries: the accept rates are undefined")
    rates = {
        "correct_accept_rate": float(np.mean((known_distances <= threshold) & known_correct)),
        "false_accept_rate": float(np.mean(absent_distances <= threshold)) if len(absent_distances) else 0.0,
    }
    if len(absent_distances) and len(known_distances):
        nearer = (known_distances[:, None] < absent_distances[None, :]).mean()
        ties = (known_distances[:, None] == absent_distances[None, :]).mean()
        rates["auroc_known_vs_absent"] = float(nearer + 0.5 * ties)
    return rates


def selective_rates(best: np.ndarray, margins: np.ndarray, correct: np.ndarray, absent_best: np.ndarray,
                    absent_margins: np.ndarray, threshold: float, margin: float) -> dict[str, float]:
    """The device's naming rule at (`threshold`, `margin`): a photo gets a pill's name when its
    nearest pill is within `threshold` and the runner-up pill is more than `margin` farther
    (`label_margins`); otherwise it is "unknown". Returns the share of gallery pills' photos that
    get a name (coverage), the share of named answers that are right, counting every named
    photo of a gallery-absent pill as wrong (1 when nothing is named), and the share of absent
    pills' photos that get a name."""
    named = (np.asarray(best) <= threshold) & (np.asarray(margins) > margin)
    absent_named = (np.asarray(absent_best) <= threshold) & (np.asarray(absent_margins) > margin)
    total = int(named.sum() + absent_named.sum())
    return {
        "named_share": float(named.mean()) if len(named) else 0.0,
        "named_correct": float((named & np.asarray(correct, bool)).sum() / total) if total else 1.0,
        "absent_named": float(absent_named.mean()) if len(absent_named) else 0.0,
    }


def choose_rule(best: np.ndarray, margins: np.ndarray, correct: np.ndarray, absent_best: np.ndarray,
                absent_margins: np.ndarray, min_named_correct: float, max_absent_named: float,
                steps: int) -> dict:
    """The naming rule (`selective_rates`) that names the most photos while at least
    `min_named_correct` of named answers are right and at most `max_absent_named` of absent
    pills' photos are named, searched over `steps` quantiles of the correct answers' distances
    (thresholds) times `steps` quantiles of the wrong answers' margins, plus no margin. When no
    pair meets both, the pair with the most right named answers among those of the highest
    `named_correct` is taken, and "met" is False. Returns threshold, margin, met, the rates."""
    correct = np.asarray(correct, bool)
    if not correct.any():
        raise ValueError("no correct answers to calibrate the naming rule on")
    levels = np.linspace(1.0 / steps, 1.0, steps)
    # cosine distances lie in [0, 2]; float rounding can put an identical pair's a hair below 0
    thresholds = np.unique(np.clip(np.quantile(np.asarray(best)[correct], levels, method="inverted_cdf"), 0.0, 2.0))
    wrong_margins = np.asarray(margins)[~correct]
    candidates = np.unique(np.clip(np.concatenate(
        [[0.0], np.quantile(wrong_margins, levels - 1.0 / steps, method="inverted_cdf")] if len(wrong_margins)
        else [[0.0]]), 0.0, 2.0))
    chosen, fallback = None, None
    for threshold in thresholds:
        for margin in candidates:
            rates = selective_rates(best, margins, correct, absent_best, absent_margins, threshold, margin)
            met = rates["named_correct"] >= min_named_correct and rates["absent_named"] <= max_absent_named
            key = (rates["named_share"], -threshold, -margin)
            if met and (chosen is None or key > chosen[0]):
                chosen = (key, threshold, margin, rates)
            fallback_key = (rates["named_correct"], rates["named_share"] * rates["named_correct"])
            if fallback is None or fallback_key > fallback[0]:
                fallback = (fallback_key, threshold, margin, rates)
    met = chosen is not None
    _, threshold, margin, rates = chosen if met else fallback
    return {"threshold": float(threshold), "margin": float(margin), "met": met, **rates}


def risk_coverage(best: np.ndarray, margins: np.ndarray, correct: np.ndarray, absent_best: np.ndarray,
                  absent_margins: np.ndarray, margin: float, points: int) -> list[dict[str, float]]:
    """The risk-coverage curve of the naming rule at a fixed `margin`: `points` thresholds at
    evenly spaced quantiles of the known photos' nearest distances, each with its rates."""
    thresholds = np.unique(np.quantile(np.asarray(best), np.linspace(1.0 / points, 1.0, points),
                                       method="inverted_cdf"))
    return [{"threshold": float(threshold),
             **selective_rates(best, margins, correct, absent_best, absent_margins, threshold, margin)}
            for threshold in thresholds]
