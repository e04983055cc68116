"""The naming rule's calibration, for stage `enroll` (tf_pilltrack/stages/enroll.py): the device bundle,
made with the device's own code.

The novel classes' reference shots are embedded by the exported int8 model through
`edge_runtime.interpreter` (the same code path as `pilltrack-edge`), and written with
`edge_runtime.bundle.write_bundle`: model, Annoy index, embeddings and sidecar.

The naming rule is calibrated on the calibration classes, which neither training nor
evaluation uses, in galleries the size of a counter's: `enroll.calibration_galleries` seeded draws
of `enroll.calibration_gallery_pills` enrolled pills plus absent ones (`enroll.calibration_absent`
of each draw's pills are kept out of its gallery), each gallery made of its pills' reference
shots and queried by all their other photos, the answers of every draw pooled. (A rule's error
rates grow with the number of pills enrolled: calibrated on one gallery of every calibration
class, hundreds of them, it names almost nothing in a gallery of twenty.) When the calibration
classes are no more than one draw, they are one gallery. The rule names the
nearest pill only when it lies within the unknown threshold (cosine distance) and the runner-up
pill lies more than the look-alike margin farther; anything else is "unknown", and a close call
shows both candidates. The pair chosen (`metrics.choose_rule`) names the most photos of the
gallery's pills while at least `enroll.min_named_correct` of named answers are right (an absent
pill named counts as wrong) and at most `enroll.max_absent_named` of absent pills' photos are
named. Annoy's search_k follows the gallery's size (`gallery.search_k_for_size`, as on
the device after enrolling); its top-1 agreement with exact search on the calibration photos,
and the smallest search_k reaching `enroll.search_k_agreement` there, are reported beside it.

"""

from __future__ import annotations

import numpy as np

from edge_runtime import interpreter
from tf_pilltrack.data import dataset
from tf_pilltrack.scoring import metrics
from tf_pilltrack.settings import Enroll


def embed_split(model_interpreter, split: dataset.Split, views: int) -> np.ndarray:
    return interpreter.embed(model_interpreter, split.pixels, views)


def draw_calibration_galleries(labels: list[str], gallery_pills: int, gallery_count: int, fraction: float,
                               seed: int) -> list[tuple[list[str], list[str]]]:
    """(enrolled, absent) calibration pills of each of `gallery_count` calibration galleries (module
    docstring; enroll.calibration_galleries): a draw of gallery_pills / (1 - fraction) pills
    (enroll.calibration_gallery_pills, enroll.calibration_absent), at least one of them absent and
    two enrolled; all the pills in one draw when there are no more than that."""
    if len(labels) < 3:
        raise ValueError(f"{len(labels)} calibration classes: the naming rule needs at least 3")
    drawn = int(round(gallery_pills / (1.0 - fraction))) if fraction < 1.0 else len(labels)
    whole = drawn >= len(labels)
    galleries = []
    for number in range(1 if whole else gallery_count):
        rng = np.random.default_rng(seed if whole else [seed, number])
        chosen = [labels[index] for index in rng.permutation(len(labels))[:min(drawn, len(labels))]]
        count = min(len(chosen) - 2, max(1, int(round(fraction * len(chosen)))))
        galleries.append((sorted(chosen[count:]), sorted(chosen[:count])))
    return galleries


def calibrate(gallery_embeddings: np.ndarray, references: dataset.Split, query_embeddings: np.ndarray,
              queries: dataset.Split, enroll: Enroll, seed: int) -> dict:
    """The naming rule (unknown threshold and look-alike margin) of `enroll` (params.yaml's
    `enroll`) on the calibration classes' galleries (`draw_calibration_galleries`), with the
    figures it was set from."""
    galleries = draw_calibration_galleries(sorted(set(references.labels.tolist())), enroll.calibration_gallery_pills,
                                           enroll.calibration_galleries, enroll.calibration_absent, seed)
    best, margins, correct, absent_best, absent_margins = [], [], [], [], []
    for enrolled, absent in galleries:
        in_gallery = np.isin(references.labels, enrolled)
        known, away = np.isin(queries.labels, enrolled), np.isin(queries.labels, absent)
        gallery_rows, gallery_labels = gallery_embeddings[in_gallery], references.labels[in_gallery]
        order, distances = metrics.rank_gallery(query_embeddings[known], gallery_rows, 1)
        best.append(distances[:, 0])
        correct.append(gallery_labels[order[:, 0]] == queries.labels[known])
        margins.append(metrics.label_margins(query_embeddings[known], gallery_rows, gallery_labels))
        absent_best.append(metrics.rank_gallery(query_embeddings[away], gallery_rows, 1)[1][:, 0])
        absent_margins.append(metrics.label_margins(query_embeddings[away], gallery_rows, gallery_labels))
    best, margins, correct, absent_best, absent_margins = (
        np.concatenate(values) for values in (best, margins, correct, absent_best, absent_margins))
    rule = metrics.choose_rule(best, margins, correct, absent_best, absent_margins,
                               enroll.min_named_correct, enroll.max_absent_named, enroll.rule_steps)
    return {
        "threshold": rule["threshold"],
        "lookalike_margin": rule["margin"],
        "targets_met": rule["met"],
        "named_share": rule["named_share"],
        "named_correct": rule["named_correct"],
        "absent_named": rule["absent_named"],
        "calibration_recall_at_1": float(correct.mean()),
        "calibration_galleries": len(galleries),
        "calibration_known_classes": len(galleries[0][0]),
        "calibration_absent_classes": len(galleries[0][1]),
        "calibration_queries": int(len(correct)),
        "calibration_absent_queries": int(len(absent_best)),
        "min_named_correct": enroll.min_named_correct,
        "max_absent_named": enroll.max_absent_named,
        **metrics.lookalike_rates(margins, correct, rule["margin"]),
    }
