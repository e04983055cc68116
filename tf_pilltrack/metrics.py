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


def margin_for_errors(margins: np.ndarray, wrong: np.ndarray, share: float) -> float:
    """The smallest margin (`label_margins`) that flags, as margin <= it, at least `share` of the
    wrong top-1 answers: the look-alike margin."""
    wrong = np.asarray(wrong, bool)
    if not wrong.any():
        raise ValueError("no wrong answers to set the look-alike margin on")
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be within (0, 1], got {share}")
    return threshold_for_recall(np.asarray(margins)[wrong], share)


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
