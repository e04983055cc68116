"""Several photos of one pill answered together: the device's `combine_views` is the
evaluation's multi-photo rule (tf_pilltrack.scoring.episodes, so this file runs in the training
environment only), and `pilltrack-edge --one-pill` gives one answer from them."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner
from edge_fixtures import pill_photos, write_photo

from edge_runtime import limits
from edge_runtime.cli import main
from edge_runtime.identification import combine_views


def test_the_device_combines_views_as_the_evaluation_scores_them():
    from tf_pilltrack.scoring.episodes import combine_views as evaluation_rule

    embeddings = np.random.default_rng(0).normal(size=(12, 8)).astype(np.float32) * 3.0
    tuples = np.array([[0, 5], [3, 3], [1, 2], [4, 7], [6, 11]])
    expected = evaluation_rule(embeddings, tuples)
    for row, views in zip(expected, tuples):
        np.testing.assert_allclose(combine_views(embeddings[views]), row, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(combine_views(embeddings[[4, 7, 9]]), evaluation_rule(embeddings, np.array([[4, 7, 9]]))[0],
                               rtol=1e-6, atol=1e-6)


def test_one_pill_answers_once_from_all_its_photos(edge_bundle, tmp_path):
    green = [write_photo(tmp_path / f"green-{i}.png", photo) for i, photo in enumerate(pill_photos("green", 2, seed=7))]
    empty = write_photo(tmp_path / "tray.png", np.full((80, 80, 3), 128, np.uint8))
    result = CliRunner().invoke(main, ["--bundle", edge_bundle, "--headless", "--one-pill", "--image", *green])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["sources"] == green and record["label"] == "green" and record["announced"] == "green"
    assert record["top_k"][0]["label"] == "green" and record["distance"] < 0.1

    table = CliRunner().invoke(main, ["--bundle", edge_bundle, "--one-pill", "--image", green[0], empty])
    assert table.exit_code == 2  # a photo without a pill: reported, left out, the rest answered
    assert table.stderr == f"error: {empty}: no pill found\n"
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["photos", "pill"] and lines[1].split()[:2] == [green[0], "green"]

    nothing = CliRunner().invoke(main, ["--bundle", edge_bundle, "--one-pill", "--image", empty])
    assert nothing.exit_code == 2 and "no pill found in any of the photos" in nothing.stderr


def test_one_pill_needs_photos_and_takes_a_few(edge_bundle, tmp_path):
    photo = write_photo(tmp_path / "green.png", pill_photos("green", 1)[0])
    result = CliRunner().invoke(main, ["--bundle", edge_bundle, "--one-pill", "--camera", "0"])
    assert result.exit_code == 2 and "--one-pill answers for --image photos" in result.output
    result = CliRunner().invoke(main, ["--bundle", edge_bundle, "--one-pill", "--image",
                                       *[photo] * (limits.MAX_VIEWS + 1)])
    assert result.exit_code == 2 and f"at most {limits.MAX_VIEWS} photos of one pill" in result.output
