"""The shipped demo clip: the README's `pilltrack-edge serve --video
data/demo/counter_demo.mp4` has a clip to play, made by scripts/demo_clip.py from the shipped real
photos, small, and honest about what it shows. Nothing here imports TensorFlow."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib

import cv2
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEMO = ROOT / "data" / "demo"


def demo_script():
    spec = importlib.util.spec_from_file_location("demo_clip", ROOT / "scripts" / "demo_clip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_names_the_shipped_clip_and_it_plays():
    readme = (ROOT / "README.md").read_text()
    assert "pilltrack-edge serve --video data/demo/counter_demo.mp4" in readme
    clip = DEMO / "counter_demo.mp4"
    assert os.path.getsize(clip) < 400_000  # a few hundred KB at most
    info = json.loads((DEMO / "counter_demo.json").read_text())
    video = cv2.VideoCapture(str(clip))
    try:
        assert video.get(cv2.CAP_PROP_FPS) == info["fps"] == 10
        frames = 0
        while True:
            ok, frame = video.read()
            if not ok:
                break
            assert frame.shape == (480, 640, 3)
            frames += 1
    finally:
        video.release()
    assert frames == info["frames"] == len(info["truth"])
    assert set(info["truth"]) == set(info["enrolled"]) | set(info["absent"]) | {None}


def test_the_clip_is_made_from_the_shipped_photos_and_enrollment_uses_other_source_photos(tmp_path):
    script = demo_script()
    info = json.loads((DEMO / "counter_demo.json").read_text())
    archive, rows = script.read_set(script.SOURCE)
    chosen = script.choose(rows, np.random.default_rng(script.SEED))
    assert {pill: chosen[pill]["clip"]["crop"] for pill in script.ORDER} == info["clip_crops"]  # as shipped
    assert {pill: [row["crop"] for row in chosen[pill]["enroll"]] for pill in script.ENROLLED} == info["enroll_crops"]
    for pill in script.ENROLLED:
        sources = {row["source_photo"] for row in chosen[pill]["enroll"]}
        assert len(chosen[pill]["enroll"]) == script.ENROLL_PHOTOS
        assert info["clip_source_photos"][pill] not in sources  # never the clip's own photo
    assert not set(script.ABSENT) & set(script.ENROLLED)
    script.write_enroll_photos(archive, chosen, tmp_path, np.random.default_rng(script.SEED + 2))
    assert sorted(os.listdir(tmp_path)) == sorted(script.ENROLLED)
    photo = cv2.imread(str(tmp_path / "advil" / "0.jpg"))
    assert photo.shape == (480, 640, 3)
