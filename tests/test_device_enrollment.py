"""benchmarks/device_enrollment.py: enrollment and identification through the device code on a
small photo set (the test bundle's tiny model; figures, not timings)."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest
from edge_fixtures import pill_photos, write_photo

from edge_runtime.enrollment import list_labels

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks/device_enrollment.py"


@pytest.fixture(scope="module")
def device_enrollment():
    spec = importlib.util.spec_from_file_location("device_enrollment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_enrolls_on_copies_and_scores_every_way(device_enrollment, edge_bundle, tmp_path):
    folder = tmp_path / "photos"
    for name in ("cyan", "black", "green"):
        (folder / name).mkdir(parents=True)
        for index, photo in enumerate(pill_photos(name, 4, seed=9)):
            write_photo(folder / name / f"{index}.png", photo)
    (folder / "green" / "broken.png").write_bytes(b"not a png")
    before = list_labels(edge_bundle)
    out = tmp_path / "report.json"
    assert device_enrollment.main(["--bundle", edge_bundle, "--photos", str(folder), "--shots", "2",
                                   "--episodes", "2", "--out", str(out)]) == 0
    assert list_labels(edge_bundle) == before  # episodes enroll into copies of the bundle
    report = json.loads(out.read_text())
    assert (report["images"], report["pills"], report["known_pills"], report["absent_pills"]) == (12, 3, 2, 1)
    assert set(report["results"]) == set(device_enrollment.WAYS)
    for figures in report["results"].values():
        for key in ("recall_at_1", "unknown", "no_pill_found", "close_calls", "bundle_pill", "false_accept_rate",
                    "named", "named_correct"):
            assert 0.0 <= figures[key] <= 1.0 and figures[key + "_std"] >= 0.0
    localised = report["results"]["bundle_localisation"]
    # distinct colours on a plain background: every known pill is found and named
    assert localised["recall_at_1"] == 1.0 and localised["no_pill_found"] == 0.0
    # every known photo named and right: named answers are wrong only where an absent pill was named
    assert localised["named"] == 1.0
    assert (localised["named_correct"] == 1.0) == (localised["false_accept_rate"] == 0.0)
    assert localised["bundle_pill"] == 0.0  # a new gallery: the bundle's green is gone
