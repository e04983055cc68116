"""benchmarks/device_enrollment.py: enrollment and identification through the device code on a
small photo set (the test bundle's tiny model; figures, not timings), run as its docs say:
`python -m benchmarks.device_enrollment` from the project root."""

from __future__ import annotations

import json
import subprocess
import sys

from edge_fixtures import pill_photos, write_photo
from loopback import ROOT

from edge_runtime.enrollment import list_labels

WAYS = {"bundle_localisation", "cropped", "cropped_with_bundle_pills"}  # benchmarks.device_enrollment.WAYS


def test_enrolls_on_copies_and_scores_every_way(edge_bundle, tmp_path):
    folder = tmp_path / "photos"
    for name in ("cyan", "black", "green"):
        (folder / name).mkdir(parents=True)
        for index, photo in enumerate(pill_photos(name, 4, seed=9)):
            write_photo(folder / name / f"{index}.png", photo)
    (folder / "green" / "broken.png").write_bytes(b"not a png")
    before = list_labels(edge_bundle)
    out = tmp_path / "report.json"
    command = [sys.executable, "-m", "benchmarks.device_enrollment", "--bundle", edge_bundle, "--photos", str(folder),
               "--shots", "2", "--episodes", "2", "--out", str(out)]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-4000:]
    assert "skipped" in finished.stderr and "broken.png" in finished.stderr  # the file that is no photo
    assert list_labels(edge_bundle) == before  # episodes enroll into copies of the bundle
    report = json.loads(out.read_text())
    assert (report["images"], report["pills"], report["known_pills"], report["absent_pills"]) == (12, 3, 2, 1)
    assert set(report["results"]) == WAYS
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
