"""The gallery: embeddings of the enrolled pills, an Annoy index over them, and search.

Distances, one unit throughout: the COSINE DISTANCE 1 - cos(a, b) between embeddings, from 0
(same direction) to 2 (opposite). Annoy's angular metric reports sqrt(2 - 2 cos), the Euclidean
distance between the unit vectors; `search` converts it with `angular_to_cosine`, and the
bundle's `unknown_threshold` is a cosine distance too.
"""

from __future__ import annotations

import collections
import math
import unicodedata
from typing import NamedTuple, Sequence

import numpy as np
from annoy import AnnoyIndex

from edge_runtime import limits
from edge_runtime.limits import shown

UNKNOWN = "unknown"  # what `identify` answers when no enrolled pill is close enough


class Match(NamedTuple):
    label: str
    distance: float  # cosine distance, 1 - cos


def angular_to_cosine(distance: float) -> float:
    """Annoy's angular distance sqrt(2 - 2 cos) -> cosine distance 1 - cos."""
    return distance * distance / 2.0


def cosine_to_angular(distance: float) -> float:
    """Cosine distance 1 - cos -> Annoy's angular distance sqrt(2 - 2 cos)."""
    return math.sqrt(max(0.0, 2.0 * distance))


def normalise_label(label: str) -> str:
    """A label as the gallery keeps it: Unicode NFC (one spelling for "é" typed either way),
    surrounding whitespace trimmed. Labels are matched case-insensitively (`label_key`)."""
    if not isinstance(label, str):
        raise ValueError(f"a pill's label must be a string, got {shown(label)}")
    return unicodedata.normalize("NFC", label).strip()


def label_key(label: str) -> str:
    """What two labels are compared by: `Ibuprofen` and `ibuprofen` name one pill."""
    return unicodedata.normalize("NFC", label.casefold())


def check_label(label: str) -> str:
    """The normalised `label` (`normalise_label`) if it can name an enrolled pill: non-empty,
    at most limits.MAX_LABEL_CHARS characters, printable (no control characters or lone
    surrogates), and not the reserved answer UNKNOWN in any case or Unicode compatibility form."""
    if isinstance(label, str) and len(label) > 4 * limits.MAX_LABEL_CHARS:  # not worth normalising
        raise ValueError(f"label {shown(label)} is longer than {limits.MAX_LABEL_CHARS} characters")
    label = normalise_label(label)
    if not label:
        raise ValueError("a pill's label must not be empty")
    if len(label) > limits.MAX_LABEL_CHARS:
        raise ValueError(f"label {shown(label)} is longer than {limits.MAX_LABEL_CHARS} characters")
    if not label.isprintable():
        raise ValueError(f"label {shown(label)} has control or unprintable characters")
    # NFKC, so that no compatibility spelling (fullwidth "ｕｎｋｎｏｗｎ", ligatures) passes for it.
    if unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", label).casefold()) == UNKNOWN:
        raise ValueError(f"{label!r} is reserved for pills that match no enrolled one")
    return label


def is_normal_label(label) -> bool:
    """Whether `label` is a label exactly as `check_label` returns it (what a bundle stores)."""
    try:
        return check_label(label) == label
    except ValueError:
        return False


def find_label(labels: Sequence[str], label: str) -> str | None:
    """The spelling under which `label` is among `labels` (case-insensitively), or None."""
    key = label_key(label)
    return next((existing for existing in labels if label_key(existing) == key), None)


def check_embeddings(embeddings: np.ndarray) -> np.ndarray:
    """`embeddings` as a float32 (N, E) array with N, E >= 1 and finite values."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] < 1 or embeddings.shape[1] < 1:
        raise ValueError(f"embeddings must be a non-empty (N, E) array, got {embeddings.shape}")
    if not np.issubdtype(embeddings.dtype, np.floating) or not np.isfinite(embeddings).all():
        raise ValueError("embeddings must be finite floating-point numbers")
    return embeddings.astype(np.float32)


def build_index(embeddings: np.ndarray, trees: int, seed: int) -> AnnoyIndex:
    """An angular Annoy index of `embeddings`, item i being row i. The same embeddings, trees
    and seed build the same index: the seed is set and one thread builds it."""
    embeddings = check_embeddings(embeddings)
    if isinstance(trees, bool) or not isinstance(trees, int) or not 1 <= trees <= limits.MAX_ANNOY_TREES:
        raise ValueError(f"trees must be an integer within [1, {limits.MAX_ANNOY_TREES}], got {shown(trees)}")
    index = AnnoyIndex(embeddings.shape[1], "angular")
    index.set_seed(int(seed))
    for item, vector in enumerate(embeddings):
        index.add_item(item, vector.tolist())
    index.build(trees, n_jobs=1)
    return index


def most_rows_per_label(labels: Sequence[str]) -> int:
    """The most gallery rows any one label has (1 for no labels). `search` needs it; a caller
    that searches the same gallery many times computes it once (`Bundle.rows_per_label`)."""
    return max(collections.Counter(labels).values(), default=1)


def search(index: AnnoyIndex, labels: Sequence[str], embedding: np.ndarray, top_k: int,
           search_k: int, rows_per_label: int | None = None) -> list[Match]:
    """The `top_k` closest enrolled pills to one embedding, best first: one Match per distinct
    label, with the distance of that label's closest gallery row.

    `search_k` is Annoy's number of nodes to inspect (-1: trees x rows). `rows_per_label` is
    `most_rows_per_label(labels)`, computed here when not given."""
    if not 1 <= top_k <= limits.MAX_TOP_K:
        raise ValueError(f"top_k must be within [1, {limits.MAX_TOP_K}], got {top_k}")
    if search_k < 1 and search_k != -1:
        raise ValueError(f"search_k must be positive or -1, got {search_k}")
    vector = np.asarray(embedding, np.float32).reshape(-1)
    if vector.shape[0] != index.f:
        raise ValueError(f"embedding has {vector.shape[0]} dimensions, the index {index.f}")
    if rows_per_label is None:
        rows_per_label = most_rows_per_label(labels)
    elif rows_per_label < 1:
        raise ValueError(f"rows_per_label must be at least 1, got {rows_per_label}")
    # Enough neighbours that `top_k` distinct labels are among them.
    items, distances = index.get_nns_by_vector(
        vector.tolist(), top_k * rows_per_label, search_k=search_k, include_distances=True
    )
    matches: dict[str, Match] = {}
    for item, distance in zip(items, distances):
        label = labels[item]
        if label not in matches:
            matches[label] = Match(label, angular_to_cosine(distance))
            if len(matches) == top_k:
                break
    return list(matches.values())


def identify(matches: Sequence[Match], threshold: float, margin: float) -> str:
    """The best match's label when its cosine distance is at most `threshold` and it is no close
    call (`lookalike`: no other pill within `margin` of it), else UNKNOWN. The bundle's naming
    rule: a pill is named only when the answer is sure."""
    if matches and matches[0].distance <= threshold and lookalike(matches, margin) is None:
        return matches[0].label
    return UNKNOWN


def lookalike(matches: Sequence[Match], margin: float) -> str | None:
    """The runner-up's label when it is within `margin` (cosine distance) of the best match,
    else None: a close call between two enrolled pills, worth checking by eye (the imprint)."""
    if len(matches) >= 2 and matches[1].distance - matches[0].distance <= margin:
        return matches[1].label
    return None


# Annoy's search_k for a gallery of R rows (`search_k_for_size`): SEARCH_K_PER_SQRT_ROW * sqrt(R)
# candidates, at least MIN_SEARCH_K. tf_pilltrack/benchmark/edge_speed.py measures it: with the default mcu
# model's embeddings (multi-similarity teacher, 40-epoch distillation), 16 trees and real query
# photos of enrolled pills, the smallest search_k reaching 0.99 top-1 agreement with exact search
# was 174 at 1k rows, 339 at 10k and 993 at 100k (an earlier, weaker model needed 21, 72 and
# 408: better-spread embeddings need more candidates); the rule gives 400, 1,000 and 3,163.
SEARCH_K_PER_SQRT_ROW = 10.0
MIN_SEARCH_K = 400


def search_k_for_size(rows: int, trees: int) -> int:
    """The search_k a bundle records for a gallery of `rows` rows in an index of `trees` trees:
    grows with the gallery, so enrolling pills raises it; never more than rows x trees, where
    Annoy's search is already exhaustive."""
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ValueError(f"rows must be a positive integer, got {rows!r}")
    if isinstance(trees, bool) or not isinstance(trees, int) or trees < 1:
        raise ValueError(f"trees must be a positive integer, got {trees!r}")
    wanted = max(MIN_SEARCH_K, math.ceil(SEARCH_K_PER_SQRT_ROW * math.sqrt(rows)))
    return min(wanted, rows * trees)


def top1_agreement(index: AnnoyIndex, embeddings: np.ndarray, queries: np.ndarray,
                   search_k: int) -> float:
    """Fraction of `queries` whose Annoy top-1 (with `search_k`) is as close as the exact
    nearest row of `embeddings` (the index's rows); ties between rows count as agreement."""
    unit = _unit_rows(check_embeddings(embeddings))
    queries = _unit_rows(check_embeddings(queries))
    if queries.shape[1] != unit.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} dimensions, embeddings {unit.shape[1]}")
    return _agreement(index, queries, _exact_best(unit, queries), search_k)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _exact_best(unit: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Best cosine distance of each unit query to the unit rows, in blocks of queries."""
    return np.concatenate([1.0 - (queries[start:start + 256] @ unit.T).max(axis=1)
                           for start in range(0, len(queries), 256)])


def _agreement(index: AnnoyIndex, queries: np.ndarray, exact: np.ndarray, search_k: int) -> float:
    agreed = 0
    for query, best in zip(queries, exact):
        _, distances = index.get_nns_by_vector(query.tolist(), 1, search_k=search_k,
                                                include_distances=True)
        agreed += bool(distances) and angular_to_cosine(distances[0]) <= best + 1e-5
    return agreed / len(queries)


def choose_search_k(embeddings: np.ndarray, trees: int, target_agreement: float = 0.99,
                    seed: int = 0, queries: np.ndarray | None = None) -> int:
    """The smallest Annoy `search_k` whose top-1 answer agrees with exact search on at least
    `target_agreement` of the queries: a measurement, for checking `search_k_for_size`.

    Queries should be real photos outside the gallery, as the device's are. Without `queries`,
    up to 200 gallery rows are held out: the index is built over the other rows and the held-out
    ones query it (a held-out photo's pill usually keeps its other photos in the gallery, as an
    enrolled pill does). A query agrees when Annoy's best distance is no worse than the exact
    best (so ties between duplicate rows count as agreement). Candidates double from `trees`
    until one reaches the target, then a bisection finds the smallest; rows x trees, where
    search is exhaustive, is the largest answer.
    """
    if not 0.0 < target_agreement <= 1.0:
        raise ValueError(f"target_agreement must be within (0, 1], got {target_agreement}")
    embeddings = check_embeddings(embeddings)
    if queries is None:
        if len(embeddings) < 2:
            raise ValueError("holding out query rows needs a gallery of at least 2 rows")
        held_out = np.zeros(len(embeddings), bool)
        generator = np.random.default_rng(seed)
        held_out[generator.choice(len(embeddings), size=min(200, len(embeddings) // 2),
                                  replace=False)] = True
        embeddings, queries = embeddings[~held_out], embeddings[held_out]
    queries = check_embeddings(queries)
    unit = _unit_rows(embeddings)
    if queries.shape[1] != unit.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} dimensions, embeddings {unit.shape[1]}")
    queries = _unit_rows(queries)
    exact = _exact_best(unit, queries)
    index = build_index(embeddings, trees, seed)

    def agreement(search_k: int) -> float:
        return _agreement(index, queries, exact, search_k)

    # Collecting rows x trees candidates visits every leaf of every tree: exact search.
    exhaustive = len(unit) * trees
    low, high = 0, trees
    while high < exhaustive and agreement(high) < target_agreement:
        low, high = high, high * 2
    high = min(high, exhaustive)
    while high - low > 1:
        middle = (low + high) // 2
        if agreement(middle) >= target_agreement:
            high = middle
        else:
            low = middle
    return high
