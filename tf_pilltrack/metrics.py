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
