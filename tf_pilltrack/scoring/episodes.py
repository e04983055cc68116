"""Few-shot episodes on novel classes (the protocol of docs/results.md), as pure numpy functions.

The pool is a set of crops of classes no model trained on, each with its class and its source
photo (several crops can come from one photo). An episode, drawn with its own seeded generator:

- the classes that can be enrolled with K shots and still leave a query (`eligible_classes`);
- a fraction of them is kept out of the gallery entirely ("absent": the open-set test), the
  others are "known";
- each known class enrols K reference crops taken by whole source photo: the class's photos are
  shuffled and taken until K crops are chosen (crops of the last photo beyond K are left out of
  both sides); its crops from every other photo are its queries. So no photo gives a class both
  a reference and a query. (Crops of *other* classes from a reference photo can be queries:
  sharing that photo's light and background can only confuse them with the wrong pill.)
- multi-view queries: the query crops of each class (known or absent) are split into tuples of
  `views` crops, from different source photos wherever the class has enough of them (photos
  are dealt round-robin); the tuple's normalised embeddings are averaged and renormalised.

`score_episode` answers every query by exact cosine search of the episode's gallery:
Recall@1 and Recall@5 over distinct pills (the k nearest *pills*, as the device answers),
mAP@R over gallery items (R = K), and the open-set figures from each query's best distance:
AUROC of known vs absent queries, and false accepts of absent queries / correct accepts of known
ones at given fixed thresholds (e.g. the bundle's calibrated one) and at the threshold keeping
`keep_correct` of this episode's own correct answers (an oracle: it is set on the very answers
it is scored on). `summarise` gives the mean and sample standard deviation over episodes.

`load_real` reads a real photo set into such a pool with the ingest code of `prepare`.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections import defaultdict
from typing import Mapping, NamedTuple

import numpy as np

from edge_runtime.preprocessing import PreprocessConfig
from tf_pilltrack.data import dataset, ingestion
from tf_pilltrack.scoring import metrics

RECALL_KS = (1, 5)


class Episode(NamedTuple):
    shots: int
    known_classes: tuple[str, ...]
    absent_classes: tuple[str, ...]
    references: np.ndarray  # (G,) pool indices: the gallery, K per known class
    queries: np.ndarray  # (Q,) pool indices: single-view queries of the known classes
    absent: np.ndarray  # (A,) pool indices: every crop of the absent classes
    query_views: np.ndarray  # (Qm, V) pool indices: multi-view queries of the known classes
    absent_views: np.ndarray  # (Am, V) pool indices: multi-view queries of the absent classes


def _check_pool(labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, groups = np.asarray(labels), np.asarray(groups)
    if labels.ndim != 1 or groups.shape != labels.shape:
        raise ValueError(f"labels and groups must be 1-D of one length, got {labels.shape} and {groups.shape}")
    if len(labels) == 0:
        raise ValueError("empty pool: no crops to draw episodes from")
    return labels.astype(str), groups.astype(str)


def _photos_of(labels: np.ndarray, groups: np.ndarray) -> dict[str, dict[str, list[int]]]:
    """class -> source photo -> pool indices, every level in sorted order."""
    photos: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for index, (label, group) in enumerate(zip(labels.tolist(), groups.tolist())):
        photos[label][group].append(index)
    return {label: dict(sorted(by_photo.items())) for label, by_photo in sorted(photos.items())}


def eligible_classes(labels: np.ndarray, groups: np.ndarray, shots: int) -> list[str]:
    """Classes that can enrol `shots` crops by whole photo and keep at least one query photo
    whatever the draw: their crops outside their largest photo number at least `shots`."""
    if shots < 1:
        raise ValueError(f"shots must be at least 1, got {shots}")
    labels, groups = _check_pool(labels, groups)
    eligible = []
    for label, by_photo in _photos_of(labels, groups).items():
        sizes = [len(members) for members in by_photo.values()]
        if sum(sizes) - max(sizes) >= shots:
            eligible.append(label)
    return eligible


def _round_robin(photos: list[list[int]], views: int, rng: np.random.Generator) -> np.ndarray:
    """Tuples of `views` indices, dealing the (shuffled) photos round-robin so consecutive
    crops come from different photos; a remainder short of `views` is dropped."""
    shuffled = [[members[i] for i in rng.permutation(len(members))] for members in photos]
    shuffled = [shuffled[i] for i in rng.permutation(len(shuffled))]
    dealt = [members[depth] for depth in range(max((len(m) for m in shuffled), default=0))
             for members in shuffled if depth < len(members)]
    usable = len(dealt) - len(dealt) % views
    return np.array(dealt[:usable], dtype=np.int64).reshape(-1, views)


def draw_episode(labels: np.ndarray, groups: np.ndarray, shots: int, absent_fraction: float, views: int,
                 rng: np.random.Generator) -> Episode:
    """One episode (see the module docstring). Needs at least two eligible classes; with
    `absent_fraction` > 0 and at least three, at least one is absent and at least two known."""
    if not 0.0 <= absent_fraction < 1.0:
        raise ValueError(f"absent_fraction must be within [0, 1), got {absent_fraction}")
    if views < 2:
        raise ValueError(f"views must be at least 2, got {views}")
    labels, groups = _check_pool(labels, groups)
    eligible = eligible_classes(labels, groups, shots)
    if len(eligible) < 2:
        raise ValueError(f"{len(eligible)} classes have enough photos for {shots}-shot episodes "
                         f"(a class needs {shots} crops outside its largest photo); need at least 2")
    absent_count = int(round(absent_fraction * len(eligible)))
    if absent_fraction > 0 and len(eligible) >= 3:
        absent_count = max(1, absent_count)
    absent_count = min(absent_count, len(eligible) - 2)
    order = [eligible[i] for i in rng.permutation(len(eligible))]
    absent_classes, known_classes = sorted(order[:absent_count]), sorted(order[absent_count:])
    photos = _photos_of(labels, groups)
    references, queries, query_views = [], [], []
    for label in known_classes:
        names = list(photos[label])
        chosen: list[int] = []
        rest: list[list[int]] = []
        for name in (names[i] for i in rng.permutation(len(names))):
            members = photos[label][name]
            if len(chosen) < shots:
                members = [members[i] for i in rng.permutation(len(members))]
                chosen.extend(members[:shots - len(chosen)])
            else:
                rest.append(members)
        references.extend(chosen)
        queries.extend(index for members in rest for index in members)
        query_views.append(_round_robin(rest, views, rng))
    absent = [index for label in absent_classes for members in photos[label].values() for index in members]
    absent_views = [_round_robin(list(photos[label].values()), views, rng) for label in absent_classes]

    def stack(tuples: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(tuples) if tuples else np.zeros((0, views), np.int64)

    return Episode(shots, tuple(known_classes), tuple(absent_classes),
                   np.array(sorted(references), np.int64), np.array(sorted(queries), np.int64),
                   np.array(sorted(absent), np.int64), stack(query_views), stack(absent_views))


def draw_episodes(labels: np.ndarray, groups: np.ndarray, shots: int, absent_fraction: float, views: int,
                  count: int, seed: int) -> list[Episode]:
    """`count` episodes; episode i draws with numpy's generator seeded [seed, i], so the same
    seed gives the same episodes, and K-shot draws with different K keep the same absent
    classes whenever the same classes are eligible."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    return [draw_episode(labels, groups, shots, absent_fraction, views, np.random.default_rng([seed, index]))
            for index in range(count)]


def combine_views(embeddings: np.ndarray, tuples: np.ndarray) -> np.ndarray:
    """One embedding per row of `tuples` (pool indices): the mean of the views' L2-normalised
    embeddings, L2-normalised again."""
    tuples = np.asarray(tuples)
    if tuples.ndim != 2:
        raise ValueError(f"tuples must be (M, views), got shape {tuples.shape}")
    views = embeddings[tuples]  # (M, V, D)
    views = views / np.maximum(np.linalg.norm(views, axis=2, keepdims=True), 1e-12)
    mean = views.mean(axis=1)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def distinct_labels(ranked_labels: np.ndarray, depth: int) -> np.ndarray:
    """Each row of gallery items' labels (nearest first) as its first `depth` distinct labels,
    padded with '': the k nearest *pills*, as the device answers."""
    rows = []
    for row in np.asarray(ranked_labels).tolist():
        seen = list(dict.fromkeys(row))[:depth]
        rows.append(seen + [""] * (depth - len(seen)))
    return np.array(rows, dtype=object)


def score_queries(query_embeddings: np.ndarray, query_labels: np.ndarray, gallery_embeddings: np.ndarray,
                  gallery_labels: np.ndarray, absent_embeddings: np.ndarray, keep_correct: float,
                  thresholds: Mapping[str, float] | None = None,
                  lookalike_margin: float | None = None) -> dict[str, float]:
    """Figures of one set of queries against one gallery (see the module docstring). Keys:
    recall_at_1, recall_at_5, map_at_r; with absent queries
    auroc_known_vs_absent; for each named threshold t: false_accept_rate_t and
    correct_accept_rate_t; with at least one correct answer threshold_episode,
    false_accept_rate_episode and correct_accept_rate_episode; with a `lookalike_margin`,
    `metrics.lookalike_rates` of the top-1 answers (close calls flagged, errors caught, Recall@1
    of the rest); with a `lookalike_margin`, a "bundle" threshold and absent queries, the device's
    naming rule at both (`metrics.selective_rates`): named_share_bundle, named_correct_bundle,
    absent_named_bundle."""
    if not 0.0 < keep_correct <= 1.0:
        raise ValueError(f"keep_correct must be within (0, 1], got {keep_correct}")
    query_labels = np.asarray(query_labels).astype(str)
    gallery_labels = np.asarray(gallery_labels).astype(str)
    order, distances = metrics.rank_gallery(query_embeddings, gallery_embeddings, len(gallery_embeddings))
    ranked = gallery_labels[order]
    result = metrics.retrieval_metrics(distinct_labels(ranked, max(RECALL_KS)), query_labels.astype(object),
                                       gallery_labels, RECALL_KS)
    result["map_at_r"] = metrics.retrieval_metrics(ranked, query_labels, gallery_labels)["map_at_r"]
    best, correct = distances[:, 0], ranked[:, 0] == query_labels
    absent_best = (metrics.rank_gallery(absent_embeddings, gallery_embeddings, 1)[1][:, 0]
                   if len(absent_embeddings) else np.zeros(0))
    named = dict(thresholds or {})
    if correct.any():
        named["episode"] = metrics.threshold_for_recall(best[correct], keep_correct)
        result["threshold_episode"] = named["episode"]
    for name, threshold in named.items():
        rates = metrics.open_set_rates(best, correct, absent_best, threshold)
        result[f"correct_accept_rate_{name}"] = rates["correct_accept_rate"]
        if len(absent_best):
            result[f"false_accept_rate_{name}"] = rates["false_accept_rate"]
    if len(absent_best):
        result["auroc_known_vs_absent"] = metrics.open_set_rates(best, correct, absent_best, 0.0)["auroc_known_vs_absent"]
    if lookalike_margin is not None:
        margins = metrics.label_margins(query_embeddings, gallery_embeddings, gallery_labels)
        result.update(metrics.lookalike_rates(margins, correct, lookalike_margin))
        if "bundle" in named and len(absent_best):
            # the device's naming rule: within the threshold and no pill within the margin of the best
            absent_margins = metrics.label_margins(absent_embeddings, gallery_embeddings, gallery_labels)
            result.update({f"{key}_bundle": value for key, value in metrics.selective_rates(
                best, margins, correct, absent_best, absent_margins, named["bundle"], lookalike_margin).items()})
    return result


def score_episode(embeddings: np.ndarray, labels: np.ndarray, episode: Episode, keep_correct: float,
                  thresholds: Mapping[str, float] | None = None,
                  lookalike_margin: float | None = None) -> dict[str, dict[str, float]]:
    """The episode scored with single-view queries ("single") and multi-view queries ("multi";
    absent when no class has enough query crops for one tuple). `embeddings` and `labels`
    are the pool's, indexed by the episode."""
    labels = np.asarray(labels).astype(str)
    if len(embeddings) != len(labels):
        raise ValueError(f"{len(embeddings)} embeddings for a pool of {len(labels)} crops")
    gallery, gallery_labels = embeddings[episode.references], labels[episode.references]
    result = {"single": score_queries(embeddings[episode.queries], labels[episode.queries], gallery,
                                      gallery_labels, embeddings[episode.absent], keep_correct, thresholds,
                                      lookalike_margin)}
    if len(episode.query_views):
        result["multi"] = score_queries(
            combine_views(embeddings, episode.query_views), labels[episode.query_views[:, 0]], gallery,
            gallery_labels, combine_views(embeddings, episode.absent_views), keep_correct, thresholds,
            lookalike_margin)
    return result


def tally_answers(embeddings: np.ndarray, labels: np.ndarray, drawn: list[Episode],
                  keep_correct: float) -> dict:
    """Which pill each single-view query of the episodes `drawn` was taken for, summed over them:
    the pairs of look-alike pills behind a Recall@1 or a false-accept rate. Keys:

    - "recall_at_1_by_pill": per known pill, the share of its queries answered with it;
    - "confusions": the wrong top-1 answers, [pill, answered, count, share of that pill's queries];
    - "false_accept_rate_by_pill": per absent pill, the share of its queries accepted at each
      episode's threshold keeping `keep_correct` of its correct answers (as `score_queries`);
    - "false_accepts": those accepted queries, [pill, accepted as, count, share].

    Lists run from the most frequent pair (ties by name); pairs never seen are left out."""
    labels = np.asarray(labels).astype(str)
    if len(embeddings) != len(labels):
        raise ValueError(f"{len(embeddings)} embeddings for a pool of {len(labels)} crops")
    asked, absent_asked = defaultdict(int), defaultdict(int)
    answered, accepted = defaultdict(int), defaultdict(int)
    for episode in drawn:
        gallery_labels = labels[episode.references]
        order, distances = metrics.rank_gallery(embeddings[episode.queries], embeddings[episode.references], 1)
        truths, answers = labels[episode.queries], gallery_labels[order[:, 0]]
        for truth, answer in zip(truths.tolist(), answers.tolist()):
            asked[truth] += 1
            answered[truth, answer] += 1
        correct = truths == answers
        if not len(episode.absent) or not correct.any():
            continue
        threshold = metrics.threshold_for_recall(distances[correct, 0], keep_correct)
        order, distances = metrics.rank_gallery(embeddings[episode.absent], embeddings[episode.references], 1)
        for truth, answer, distance in zip(labels[episode.absent].tolist(), gallery_labels[order[:, 0]].tolist(),
                                           distances[:, 0].tolist()):
            absent_asked[truth] += 1
            if distance <= threshold:
                accepted[truth, answer] += 1

    def ranked(pairs: dict, totals: dict) -> list[list]:
        rows = [[pill, other, count, count / totals[pill]] for (pill, other), count in pairs.items()]
        return sorted(rows, key=lambda row: (-row[2], row[0], row[1]))

    return {
        "recall_at_1_by_pill": {pill: answered[pill, pill] / asked[pill] for pill in sorted(asked)},
        "confusions": ranked({pair: count for pair, count in answered.items() if pair[0] != pair[1]}, asked),
        "false_accept_rate_by_pill": {
            pill: sum(count for (truth, _), count in accepted.items() if truth == pill) / absent_asked[pill]
            for pill in sorted(absent_asked)},
        "false_accepts": ranked(accepted, absent_asked),
    }


def pooled_answers(embeddings: np.ndarray, labels: np.ndarray, drawn: list[Episode]) -> dict[str, np.ndarray]:
    """The single-view answers of every episode in `drawn`, concatenated: for the gallery pills'
    queries their nearest distance ("best"), margin to the runner-up pill ("margins") and
    whether the nearest is right ("correct"); for the absent pills' queries "absent_best" and
    "absent_margins". What a rule's figures over all the episodes' answers are computed from."""
    labels = np.asarray(labels).astype(str)
    parts: dict[str, list] = defaultdict(list)
    for episode in drawn:
        gallery, gallery_labels = embeddings[episode.references], labels[episode.references]
        order, distances = metrics.rank_gallery(embeddings[episode.queries], gallery, 1)
        parts["best"].append(distances[:, 0])
        parts["correct"].append(gallery_labels[order[:, 0]] == labels[episode.queries])
        parts["margins"].append(metrics.label_margins(embeddings[episode.queries], gallery, gallery_labels))
        if len(episode.absent):
            parts["absent_best"].append(metrics.rank_gallery(embeddings[episode.absent], gallery, 1)[1][:, 0])
            parts["absent_margins"].append(metrics.label_margins(embeddings[episode.absent], gallery, gallery_labels))
    return {key: np.concatenate(parts[key]) if parts[key] else np.zeros(0)
            for key in ("best", "margins", "correct", "absent_best", "absent_margins")}


def summarise(results: list[Mapping[str, float]]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one episode) of each figure over the
    episodes, as `name` and `name_std`. A figure missing from some episodes (no correct answer
    to set a threshold on, say) is averaged over the others and `name_episodes` says how many."""
    if not results:
        raise ValueError("no episodes to summarise")
    names = list(dict.fromkeys(name for result in results for name in result))
    summary: dict[str, float] = {}
    for name in names:
        values = np.array([result[name] for result in results if name in result], dtype=np.float64)
        summary[name] = float(values.mean())
        summary[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        if len(values) < len(results):
            summary[f"{name}_episodes"] = len(values)
    return summary


def load_real(source: str, config: PreprocessConfig) -> tuple[dataset.Split, dict, list[dict]]:
    """The real photo set as one pool of crops (labels, source photos from its manifest),
    through the same listing, decoding and preprocessing as `prepare`, with `config`'s constants
    and localisation (on, off or auto); a report of it, which always counts the images in which
    localisation (on) finds no pill; and the files skipped (file and reason)."""
    path = pathlib.Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: real photo set not found (episodes.real_source in params.yaml)")
    images, groups, listing_skipped = ingestion.list_source(path)
    if not images:
        raise ValueError(f"{path}: no images in <class>/<image> folders (episodes.real_source in params.yaml)")
    chosen = ingestion.ingest(images, groups, config)
    # "auto" finds no pill in exactly the images where localisation on does (choose_box), so
    # only localisation off needs a second pass for the count
    localised = chosen if config.localise else ingestion.ingest(images, groups, dataclasses.replace(config, localise=True))
    items = [(label, *item) for label, crops in sorted(chosen.crops.items()) for item in crops]
    if not items:
        raise ValueError(f"{path}: no usable crop in {len(images)} images")
    pool = dataset.Split(np.stack([item[1] for item in items]).astype(np.uint8),
                         np.array([item[0] for item in items], dtype=str),
                         np.array([item[2] for item in items], dtype=str),
                         np.array([item[3] for item in items], dtype=str))
    no_pill = sum(entry["reason"] == "no pill found" for entry in localised.skipped)
    skipped = listing_skipped + chosen.skipped
    report = {
        "images": len(images),
        "crops_used": len(pool),
        "classes": len(set(pool.labels.tolist())),
        "photos": len(set(pool.groups.tolist())),
        "skipped": len(skipped),
        "localisation_no_pill_found": int(no_pill),
        "localisation_no_pill_found_fraction": no_pill / max(len(localised.sizes), 1),
    }
    return pool, report, skipped
