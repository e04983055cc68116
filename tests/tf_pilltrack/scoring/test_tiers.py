"""The counter page's confidence tiers, chosen by the enroll stage (tf_pilltrack/scoring/tiers.py, issue 36):
the choice of the "likely" rule on constructed answers, the folds on constructed embeddings, and
the whole path on a tiny bundle (the device code, a real photo set in the shipped form, tiers.json
read back by the counter page's loader). TensorFlow-free."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import zipfile

import cv2
import numpy as np
import pytest

from edge_runtime import evidence
from edge_runtime.bundle import load_bundle
from tf_pilltrack.scoring import tiers, tray
from tf_pilltrack.settings import Tiers

SETTINGS = Tiers(gallery_pills=3, shots=2, episodes=4, likely_right=0.9, absent_likely=0.05,
                 distance_steps=101, gaps=(0.0, 0.02, 0.1), seed=36)


def answers(*groups) -> dict:
    """Pooled answers from (count, d1, d2, right, enrolled) groups, none named by the bundle's rule."""
    columns = {"d1": [], "d2": [], "right": [], "named": [], "enrolled": []}
    for count, d1, d2, right, enrolled in groups:
        for key, value in (("d1", d1), ("d2", d2), ("right", right), ("named", False), ("enrolled", enrolled)):
            columns[key] += [value] * count
    return {key: np.array(values) for key, values in columns.items()}


def test_choose_takes_the_rule_that_offers_the_most_right_answers_within_the_targets():
    pooled = answers(
        (10, 0.10, 0.50, True, True),  # near and clear: right
        (5, 0.20, 0.25, False, True),  # a near look-alike (gap 0.05): wrong
        (5, 0.25, 0.40, True, True),  # farther but clear (gap 0.15): right
        (3, 0.30, 0.80, False, True),  # far and clear: wrong
        (10, 0.15, 0.16, False, False),  # absent pills, near but no gap
        (10, 0.50, 0.90, False, False),  # absent pills, far
    )
    # within 0.25 and 0.1 ahead: the 15 right answers and nothing else. A gap under 0.05 lets the 5
    # wrong look-alikes in (15/20 right); 0.3 lets the far wrong ones in (15/18); a gap of 0.01 or less
    # within 0.15 lets the absent pills in (half of them)
    assert tiers.choose(pooled, SETTINGS) == (0.25, 0.1)
    figures = tiers.score(pooled, 0.25, 0.1)
    assert figures["likely_right"] == 1.0 and figures["absent_likely"] == 0.0
    assert figures["offered_right"] == pytest.approx(15 / 23)
    # only gaps that are searched: without 0.1, the best is the near clear answers alone
    assert tiers.choose(pooled, dataclasses.replace(SETTINGS, gaps=(0.0, 0.02))) == (0.1, 0.0)


def test_choose_turns_likely_off_when_no_rule_meets_the_targets():
    pooled = answers(
        (10, 0.10, 0.50, False, True),  # the nearest answers are wrong
        (5, 0.30, 0.60, True, True),
        (10, 0.20, 0.70, False, False),
    )
    assert tiers.choose(pooled, SETTINGS) == tiers.OFF
    assert tiers.score(pooled, *tiers.OFF)["likely_share"] == 0.0
    # the same answers meet targets loose enough
    assert tiers.choose(pooled, dataclasses.replace(SETTINGS, likely_right=0.3, absent_likely=1.0)) != tiers.OFF


def photo_set(pills: int, sources: int, embedding) -> dict:
    """`embed_photos`'s form: `sources` photos of each pill, each from its own source photo."""
    names = [f"pill{number:02d}" for number in range(pills)]
    rows = [(name, f"{name}-photo{source}") for name in names for source in range(sources)]
    vectors = np.stack([embedding(names.index(name), source) for name, source in rows])
    return {"pills": np.array([name for name, _ in rows]), "sources": np.array([source for _, source in rows]),
            "embeddings": vectors / np.linalg.norm(vectors, axis=1, keepdims=True), "missed": 0}


def test_measure_offers_separable_pills_and_scores_them_on_pills_it_never_saw():
    noise = np.random.default_rng(0)
    data = photo_set(10, 5, lambda pill, source: np.eye(16)[pill] + noise.normal(0, 0.01, 16))
    chosen = tiers.measure(data, SETTINGS, threshold=-1.0, margin=0.0)  # the bundle's rule names nothing
    assert chosen["likely_on"] and chosen["likely_distance"] >= 0.0
    held = chosen["measured"]
    assert held["likely_right"] == 1.0 and held["absent_likely"] == 0.0 and held["offered_right"] == 1.0
    assert held["named_share"] == 0.0
    # two pill-disjoint folds of 5, each with 3 enrolled (3 queries each) and 2 absent (5 each) an episode
    first, second = chosen["folds"]
    assert set(first["chosen_on"]) == set(second["scored_on"]) and not set(first["chosen_on"]) & set(first["scored_on"])
    assert held["enrolled_queries"] == 2 * SETTINGS.episodes * 3 * (5 - SETTINGS.shots)
    assert held["absent_queries"] == 2 * SETTINGS.episodes * 2 * 5
    again = tiers.measure(data, SETTINGS, threshold=-1.0, margin=0.0)
    assert again["likely_distance"] == chosen["likely_distance"] and again["folds"] == chosen["folds"]  # seeded


def test_measure_turns_likely_off_when_absent_pills_look_like_enrolled_ones():
    data = photo_set(10, 5, lambda pill, source: np.ones(16))  # every pill the same
    chosen = tiers.measure(data, SETTINGS, threshold=-1.0, margin=0.0)
    assert not chosen["likely_on"] and (chosen["likely_distance"], chosen["likely_gap"]) == tiers.OFF
    assert chosen["measured"]["likely_share"] == 0.0 and chosen["measured"]["absent_likely"] == 0.0


def test_measure_needs_enough_pills_for_two_folds():
    data = photo_set(7, 5, lambda pill, source: np.eye(16)[pill])
    with pytest.raises(ValueError, match="7 pills"):
        tiers.measure(data, SETTINGS, threshold=-1.0, margin=0.0)


COLOURS = [(220, 40, 40), (40, 200, 60), (40, 70, 220), (40, 200, 200), (20, 20, 20), (230, 210, 40),
           (200, 60, 200), (250, 250, 250), (140, 80, 30), (250, 140, 20)]


def write_photo_set(path, photos_per_pill: int = 4) -> None:
    """A real photo set in the shipped form: a zip of <folder>/<pill>/<crop>.png and
    <folder>/manifest.csv (crop, class_folder, source_photo); each crop an ellipse of its pill's
    colour filling a tight crop, as the pushin_pill crops fill theirs."""
    generator = np.random.default_rng(1)
    rows = []
    with zipfile.ZipFile(path, "w") as archive:
        for number, colour in enumerate(COLOURS):
            for photo in range(photos_per_pill):
                crop = np.full((60, 90, 3), 120, np.uint8)
                cv2.ellipse(crop, (45, 30), (int(generator.integers(38, 44)), 26), 0, 0, 360, colour[::-1], -1)
                name = f"pill{number}/{photo}.png"
                archive.writestr(f"set/{name}", cv2.imencode(".png", crop)[1].tobytes())
                rows.append({"crop": name, "class_folder": f"pill{number}", "source_photo": f"p{number}-{photo}"})
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=["crop", "class_folder", "source_photo"])
        writer.writeheader()
        writer.writerows(rows)
        archive.writestr("set/manifest.csv", text.getvalue())


def test_choose_for_bundle_writes_the_tiers_the_counter_page_reads(edge_bundle, tmp_path):
    source = tmp_path / "photos.zip"
    write_photo_set(source)
    report = tiers.choose_for_bundle(edge_bundle, SETTINGS, source, made_by="tests")
    written = json.loads((tmp_path / "bundle" / evidence.TIERS_FILE).read_text())
    assert written["model_sha256"] == load_bundle(edge_bundle, verify_model=False).model_sha256
    assert (written["likely_distance"], written["likely_gap"]) == (report["likely_distance"], report["likely_gap"])
    assert written["measured"] == report["held_out"] and written["made_by"] == "tests"
    held = report["held_out"]
    assert held["photos"] == "on the tray, localised" and held["no_pill_found"] < len(COLOURS) * 4
    assert held["enrolled_queries"] + held["absent_queries"] > 0
    assert report["likely"] == ("on" if report["likely_distance"] >= 0 else
                                "off: no (distance, gap) met the targets on the real photos")
    loaded, note = evidence.load_tiers(edge_bundle, written["model_sha256"])
    assert loaded is not None and loaded.likely_distance == report["likely_distance"]
    assert note in ("measured on held-out real photos",
                    "measured: no threshold reached the targets on held-out photos, so no answer is \"likely\"")
    assert "tiers:" in tiers.describe(report)
    # not written on request; the same choice again (seeded)
    os.unlink(tmp_path / "bundle" / evidence.TIERS_FILE)
    assert tiers.choose_for_bundle(edge_bundle, SETTINGS, source, made_by="tests", write=False)["folds"] == report["folds"]
    assert not (tmp_path / "bundle" / evidence.TIERS_FILE).exists()


def test_a_photo_set_without_a_manifest_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "bare.zip", "w") as archive:
        archive.writestr("set/a.png", b"")
    with pytest.raises(ValueError, match="manifest.csv"):
        tray.read_set(tmp_path / "bare.zip")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="not a .zip"):
        tray.read_set(tmp_path / "folder")
