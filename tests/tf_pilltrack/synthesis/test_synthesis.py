"""The synthetic pill photo generator (tf_pilltrack/synthesis/): layout, determinism, pill
type design (look-alike families), photo contents and argument checks. Tiny sizes only."""

from __future__ import annotations

import collections
import hashlib
import json
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from edge_runtime.preprocessing import PreprocessConfig, preprocess, read_image
from tf_pilltrack import synthesis
from tf_pilltrack.synthesis import face, generation, palettes, photo

# The preprocessing constants of params.yaml (mcu profile): what the pipeline crops with.
PIPELINE_PREPROCESS = PreprocessConfig(
    image_size=64, localise=True, min_pill_fraction=0.005, max_pill_fraction=0.9,
    crop_margin=0.15, max_image_pixels=50_000_000, symmetry_views=1,
)
BODY_KEYS = ("shape", "aspect", "size", "colours", "rgb", "gloss", "shininess", "dome",
             "thickness", "imprint_style", "ink", "ink_rgb", "font", "weight", "capsule_split")
IMPRINT_KEYS = ("front", "back", "score", "score_face")


def digests(root: pathlib.Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*")) if path.is_file()
    }


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """12 pill types x 5 photos of 128 px (the pipeline's photo size), seed 3."""
    out = tmp_path_factory.mktemp("synthetic") / "set"
    calls = []
    summary = synthesis.generate(out, 12, 5, 128, 3, progress=lambda *a: calls.append(a))
    return out, {"summary": summary, "progress": calls}


# --- layout -------------------------------------------------------------------------------------


def test_layout_counts_and_summary(sample):
    out, info = sample
    summary = info["summary"]
    assert summary["classes"] == 12 and summary["images"] == 60
    assert 1 <= summary["families"] <= 12 and summary["seconds"] >= 0
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == [f"pill_{i:04d}" for i in range(12)]
    for folder in folders:
        names = sorted(p.name for p in (out / folder).iterdir())
        assert names == [f"{folder}_{i:03d}.jpg" for i in range(5)]
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    assert files == [synthesis.BOXES_FILE, synthesis.TYPES_FILE]
    # nothing left beside the data set (the staging folder was renamed into place)
    assert sorted(p.name for p in out.parent.iterdir()) == ["set"]

    description = json.loads((out / synthesis.TYPES_FILE).read_text())
    assert description["seed"] == 3 and description["photo_size"] == 128
    assert [t["name"] for t in description["types"]] == folders
    assert description["types"] == synthesis.describe_pill_types(12, 3)
    boxes = json.loads((out / synthesis.BOXES_FILE).read_text())
    assert sorted(boxes) == sorted(f"{f}/{f}_{i:03d}.jpg" for f in folders for i in range(5))


def test_progress_counts_photos(sample):
    calls = sample[1]["progress"]
    assert calls[0] == (0, 60) and calls[-1] == (60, 60)
    done = [d for d, _ in calls]
    assert done == sorted(done) and all(total == 60 for _, total in calls)


def test_photos_are_rgb_jpegs_of_photo_size(sample):
    out, _ = sample
    for path in sorted(out.glob("*/*.jpg"))[:15]:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == (128, 128)
        pixels = read_image(path, 10**8)
        assert pixels.shape == (128, 128, 3) and pixels.dtype == np.uint8
        assert pixels.std() > 5  # not a blank frame


def test_photos_of_a_type_all_differ(sample):
    out, _ = sample
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        hashes = {hashlib.sha256(p.read_bytes()).digest() for p in folder.iterdir()}
        assert len(hashes) == 5


def test_pill_lies_inside_the_frame_at_a_plausible_size(sample):
    out, _ = sample
    boxes = json.loads((out / synthesis.BOXES_FILE).read_text())
    centres = []
    for left, top, right, bottom in boxes.values():
        assert 0 <= left < right <= 128 and 0 <= top < bottom <= 128
        assert left > 0 and top > 0 and right < 128 and bottom < 128  # wholly inside
        assert 0.12 * 128 <= max(right - left, bottom - top) <= 0.55 * 128
        centres.append(((left + right) / 2, (top + bottom) / 2))
    centres = np.array(centres)
    assert centres.std(axis=0).min() > 8  # not always in the middle


# --- determinism --------------------------------------------------------------------------------


def test_same_arguments_give_identical_bytes(tmp_path):
    first = synthesis.generate(tmp_path / "a", 3, 2, 48, 11)
    synthesis.generate(tmp_path / "b", 3, 2, 48, 11)
    assert first["images"] == 6
    a, b = digests(tmp_path / "a"), digests(tmp_path / "b")
    assert len(a) == 6 + 2 and a == b


def test_a_different_seed_gives_different_photos_and_types(tmp_path):
    synthesis.generate(tmp_path / "a", 3, 2, 48, 11)
    synthesis.generate(tmp_path / "b", 3, 2, 48, 12)
    a, b = digests(tmp_path / "a"), digests(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(a[name] != b[name] for name in a)
    assert synthesis.describe_pill_types(3, 11) != synthesis.describe_pill_types(3, 12)


def test_output_does_not_depend_on_worker_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(generation, "_POOL_MIN_IMAGES", 0)  # pool even for a tiny job
    synthesis.generate(tmp_path / "one", 4, 2, 40, 5, workers=1)
    synthesis.generate(tmp_path / "two", 4, 2, 40, 5, workers=2)
    assert digests(tmp_path / "one") == digests(tmp_path / "two")


def test_photos_follow_their_documented_random_streams(sample):
    """Photo i of class c is render_photo(type c, default_rng([seed, c, i])), JPEG-encoded."""
    out, _ = sample
    types = synthesis.describe_pill_types(12, 3)
    boxes = json.loads((out / synthesis.BOXES_FILE).read_text())
    for class_index, image_index in [(0, 0), (7, 4), (11, 2)]:
        rng = np.random.default_rng([3, class_index, image_index])
        rgb, box, quality = synthesis.render_photo(types[class_index], 128, rng)
        ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]),
                                [cv2.IMWRITE_JPEG_QUALITY, quality])
        name = f"pill_{class_index:04d}/pill_{class_index:04d}_{image_index:03d}.jpg"
        assert ok and data.tobytes() == (out / name).read_bytes()
        assert list(box) == boxes[name]


def test_types_do_not_depend_on_how_many_are_made():
    assert synthesis.describe_pill_types(40, 9)[:13] == synthesis.describe_pill_types(13, 9)


def test_photos_render_independently_of_order():
    pill_type = synthesis.describe_pill_types(2, 4)[1]

    def photo(index, cache=None):
        rng = np.random.default_rng([4, 1, index])
        return synthesis.render_photo(pill_type, 64, rng, cache)

    cache: dict = {}
    forwards = [photo(i, cache)[0] for i in range(3)]
    assert np.array_equal(photo(2)[0], forwards[2])
    assert not np.array_equal(forwards[0], forwards[1])


# --- replacing and crashing ---------------------------------------------------------------------


def test_replaces_a_previous_data_set(tmp_path):
    out = tmp_path / "set"
    synthesis.generate(out, 3, 2, 40, 1)
    (out / "stale.txt").write_text("old")
    synthesis.generate(out, 2, 1, 40, 1)
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["pill_0000", "pill_0001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_refuses_to_replace_a_folder_that_is_not_a_data_set(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a synthetic data set"):
        synthesis.generate(out, 2, 1, 40, 1)
    assert (out / "thesis.txt").read_text() == "keep me"
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        synthesis.generate(file, 2, 1, 40, 1)


def test_a_crash_leaves_no_half_data_set(tmp_path, monkeypatch):
    out = tmp_path / "set"
    synthesis.generate(out, 2, 1, 40, 1)
    before = digests(out)
    render = generation._render_class_job
    calls = []

    def failing(job):
        calls.append(job)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return render(job)

    monkeypatch.setattr(generation, "_render_class_job", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        synthesis.generate(out, 3, 2, 40, 2, workers=1)
    assert digests(out) == before  # the old set untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no staging folder left


# --- pill types ---------------------------------------------------------------------------------


def test_families_are_look_alikes_that_differ_only_in_imprint():
    types = synthesis.describe_pill_types(240, 42)
    families = collections.defaultdict(list)
    for pill_type in types:
        families[pill_type["family"]].append(pill_type)
    groups = [members for members in families.values() if len(members) >= 2]
    assert len(groups) >= 50  # hard negatives are common, not an accident
    assert sum(len(members) for members in groups) >= 0.6 * len(types)
    for members in groups:
        for key in BODY_KEYS:  # same shape, size, colour, coating...
            assert len({json.dumps(m[key]) for m in members}) == 1, key
        fronts = [json.dumps(m["front"]) for m in members]
        assert len(set(fronts)) == len(fronts)  # ...told apart by the front imprint
    # families that share even the back and scoring: only the front differs
    same_back = [g for g in groups if len({json.dumps([m["back"], m["score"]]) for m in g}) == 1]
    assert len(same_back) >= 20
    # every type is unique
    signatures = {json.dumps([t[k] for k in BODY_KEYS + IMPRINT_KEYS]) for t in types}
    assert len(signatures) == len(types)


def test_types_vary_like_real_pills():
    types = synthesis.describe_pill_types(240, 42)
    shapes = collections.Counter(t["shape"] for t in types)
    assert {"round", "oval", "oblong", "capsule"} <= set(shapes)
    assert len(set(shapes) - {"round", "oval", "oblong", "capsule"}) >= 3  # polygons
    assert len({t["colours"][0] for t in types}) >= 10
    capsules = [t for t in types if t["shape"] == "capsule"]
    assert any(t["colours"][0] != t["colours"][1] for t in capsules)  # two-tone
    assert {t["imprint_style"] for t in types} == {"debossed", "printed"}
    assert {t["score"] for t in types} == {"none", "line", "cross"}
    assert {t["front"]["kind"] for t in types} >= {"text", "logo"}
    assert {t["back"]["kind"] for t in types} == {"none", "text", "logo"}
    texts = [t["front"]["text"] for t in types if t["front"]["kind"] == "text"]
    assert all(1 <= len(text) <= 4 and text.isalnum() for text in texts)
    sizes = [t["size"] for t in types]
    assert 0.2 <= min(sizes) and max(sizes) <= 0.4 and max(sizes) - min(sizes) > 0.08
    assert min(t["gloss"] for t in types) < 0.2 < 0.7 < max(t["gloss"] for t in types)


def test_the_face_up_changes_what_a_photo_shows():
    pill_type = next(t for t in synthesis.describe_pill_types(60, 42)
                     if t["back"]["kind"] == "none" and t["score"] == "none"
                     and t["imprint_style"] == "debossed")
    front = face.draw_face(pill_type, "front", 100.0)
    back = face.draw_face(pill_type, "back", 100.0)
    assert np.array_equal(front.alpha, back.alpha)  # same outline
    assert not np.array_equal(front.normals[0], back.normals[0])  # the imprint is on one face


def test_photos_show_either_face(monkeypatch):
    shown = []
    draw = face.draw_face

    def spy(pill_type, which, length):
        shown.append(which)
        return draw(pill_type, which, length)

    monkeypatch.setattr(photo, "draw_face", spy)
    pill_type = synthesis.describe_pill_types(1, 6)[0]
    for index in range(12):
        synthesis.render_photo(pill_type, 48, np.random.default_rng([6, 0, index]))
    assert set(shown) == {"front", "back"}


# --- the pill can be found ----------------------------------------------------------------------


def test_the_localiser_finds_the_recorded_pill(sample):
    out, _ = sample
    boxes = json.loads((out / synthesis.BOXES_FILE).read_text())
    hits = 0
    for name, (left, top, right, bottom) in boxes.items():
        crop = preprocess(read_image(out / name, 10**8), PIPELINE_PREPROCESS)
        if crop is None:
            continue
        found = crop.box
        width = min(right, found.right) - max(left, found.left)
        height = min(bottom, found.bottom) - max(top, found.top)
        overlap = max(0, width) * max(0, height)
        union = ((right - left) * (bottom - top)
                 + (found.right - found.left) * (found.bottom - found.top) - overlap)
        hits += overlap / union >= 0.5
    assert hits >= 0.95 * len(boxes), f"{hits}/{len(boxes)} pills found"


def test_the_background_stands_out_from_the_pill():
    """Pixels just outside the pill's box differ in colour from the pill's centre."""
    types = synthesis.describe_pill_types(30, 8)
    for index, pill_type in enumerate(types):
        rgb, box, quality = synthesis.render_photo(pill_type, 96, np.random.default_rng([8, index]))
        assert 60 <= quality <= 95
        lab = palettes.to_lab(rgb.reshape(-1, 3).astype(np.float32)).reshape(rgb.shape)
        centre = lab[(box.top + box.bottom) // 2, (box.left + box.right) // 2]
        ring = np.concatenate([lab[max(0, box.top - 3), box.left:box.right],
                               lab[min(95, box.bottom + 2), box.left:box.right]])
        assert np.median(np.linalg.norm(ring - centre, axis=1)) > 10, pill_type["name"]


# --- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize("changes", [
    {"classes": 0}, {"classes": -3}, {"classes": 2.0}, {"classes": True}, {"classes": "4"},
    {"classes": synthesis.MAX_CLASSES + 1},
    {"images_per_class": 0}, {"images_per_class": synthesis.MAX_IMAGES_PER_CLASS + 1},
    {"photo_size": 16}, {"photo_size": 4096}, {"photo_size": 128.0},
    {"seed": -1}, {"seed": 1.5}, {"seed": None},
    {"workers": 0}, {"progress": "not callable"},
])
def test_bad_arguments_are_value_errors(tmp_path, changes):
    arguments = {"out_dir": tmp_path / "set", "classes": 2, "images_per_class": 1,
                 "photo_size": 40, "seed": 1, **changes}
    with pytest.raises(ValueError):
        synthesis.generate(**arguments)
    assert not (tmp_path / "set").exists()
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_to_the_helpers():
    with pytest.raises(ValueError):
        synthesis.describe_pill_types(0, 1)
    with pytest.raises(ValueError):
        synthesis.describe_pill_types(2, -1)
    pill_type = synthesis.describe_pill_types(1, 1)[0]
    with pytest.raises(ValueError):
        synthesis.render_photo(pill_type, 8, np.random.default_rng(0))
    with pytest.raises(ValueError):
        synthesis.render_photo(pill_type, 64, 1234)


def test_does_not_import_tensorflow():
    code = ("import sys, tf_pilltrack.synthesis; "
            "sys.exit(1 if any(m.split('.')[0] == 'tensorflow' for m in sys.modules) else 0)")
    root = pathlib.Path(__file__).resolve().parents[3]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0
