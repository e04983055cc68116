"""Reference pills cut out of studio photos and composited into synthetic scenes."""

import hashlib
import json
import pathlib
import zipfile

import cv2
import numpy as np
import pytest

from tf_pilltrack.synthesis import composition
from tf_pilltrack import synthesis

MAX_PIXELS = 50_000_000


def _studio_photo(colour=(200, 60, 40), background=(0, 0, 0), side=96, text="") -> np.ndarray:
    """An oval pill of `colour` on a plain background, as a studio reference photo (RGB)."""
    rgb = np.zeros((side, side, 3), np.uint8)
    rgb[:] = background
    cv2.ellipse(rgb, (side // 2, side // 2), (side // 3, side // 5), 20, 0, 360, colour, -1, cv2.LINE_AA)
    if text:
        cv2.putText(rgb, text, (side // 3, side // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (20, 20, 20), 1)
    return rgb


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return data.tobytes()


def _reference_folder(root: pathlib.Path, manifest: bool = True) -> pathlib.Path:
    """Three pill types, front and back each; one more folder whose only photo shows no pill."""
    rows = ["file,pill_type,side"]
    colours = {"type_a": (200, 60, 40), "type_b": (240, 240, 235), "type_c": (60, 90, 200)}
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for index, (side, text) in enumerate((("front", "A1"), ("back", ""))):
            file = f"{name}/{name}_0_{index}.jpg"
            (root / file).write_bytes(_jpeg(_studio_photo(colour, text=text + name[-1])))
            rows.append(f"{file},{name},{side}")
    (root / "blank").mkdir()
    (root / "blank" / "blank_0_0.jpg").write_bytes(_jpeg(np.zeros((64, 64, 3), np.uint8)))
    if manifest:
        (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def test_cut_out_finds_the_pill_and_keeps_its_colour():
    face = composition.cut_out(_studio_photo((200, 60, 40)))
    assert face is not None
    inside = face.alpha > 0.5
    # the ellipse's long axis is 2 * 96 / 3 = 64 px
    assert face.length == pytest.approx(64, abs=4)
    red = face.premultiplied_albedo[0][inside] / face.alpha[inside]
    assert np.median(red) == pytest.approx(200 / 255, abs=0.03)
    assert np.all(face.normals[2] == 1.0)  # flat: the photo keeps its own light
    assert face.outline.shape[1:] == (1, 2)


def test_cut_out_works_on_a_light_background_and_refuses_a_blank_photo():
    assert composition.cut_out(_studio_photo((90, 40, 160), background=(235, 235, 235))) is not None
    assert composition.cut_out(np.zeros((64, 64, 3), np.uint8)) is None
    assert composition.cut_out(np.full((64, 64, 3), 128, np.uint8)) is None


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_load_reads_faces_from_the_manifest_and_reports_photos_without_a_pill(tmp_path, kind):
    source = _reference_folder(tmp_path / "refs")
    if kind == "zip":
        archive = tmp_path / "refs.zip"
        with zipfile.ZipFile(archive, "w") as handle:
            for path in sorted(source.rglob("*")):
                if path.is_file():
                    handle.write(path, "refs/" + path.relative_to(source).as_posix())
        source = archive
    types, skipped = composition.load(source, "together", MAX_PIXELS)
    assert [reference.name for reference in types] == ["ref-type_a", "ref-type_b", "ref-type_c"]
    assert all([side for side, _, _ in reference.faces] == ["front", "back"] for reference in types)
    assert [entry["file"] for entry in skipped] == ["blank/blank_0_0.jpg"]
    apart, _ = composition.load(source, "apart", MAX_PIXELS)
    assert [reference.name for reference in apart][:2] == ["ref-type_a~front", "ref-type_a~back"]
    assert len(apart) == 6 and all(len(reference.faces) == 1 for reference in apart)


def test_load_without_a_manifest_takes_photos_in_name_order(tmp_path):
    types, _ = composition.load(_reference_folder(tmp_path / "refs", manifest=False), "together", MAX_PIXELS)
    assert [name.split("/")[-1] for _, name, _ in types[0].faces] == ["type_a_0_0.jpg", "type_a_0_1.jpg"]


def test_load_refuses_an_unknown_face_mode(tmp_path):
    with pytest.raises(ValueError, match="reference_faces"):
        composition.load(_reference_folder(tmp_path / "refs"), "both", MAX_PIXELS)


def _digests(folder: pathlib.Path) -> dict[str, str]:
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_generate_composites_reference_pills_reproducibly(tmp_path):
    types, _ = composition.load(_reference_folder(tmp_path / "refs"), "together", MAX_PIXELS)
    first = synthesis.generate(tmp_path / "one", 3, 2, 64, seed=5, workers=1, references=types, reference_photos=4)
    synthesis.generate(tmp_path / "two", 3, 2, 64, seed=5, workers=2, references=types, reference_photos=4)
    assert first["reference_classes"] == 3 and first["images"] == 3 * 2 + 3 * 4
    assert _digests(tmp_path / "one") == _digests(tmp_path / "two")
    photos = sorted((tmp_path / "one" / "ref-type_a").glob("*.jpg"))
    assert len(photos) == 4
    pixels = [cv2.imread(str(path)) for path in photos]
    assert all(image.shape == (64, 64, 3) for image in pixels)
    assert len({image.tobytes() for image in pixels}) == 4  # every photo a different shot
    description = json.loads((tmp_path / "one" / synthesis.TYPES_FILE).read_text())
    assert [entry["name"] for entry in description["reference_types"]] == ["ref-type_a", "ref-type_b", "ref-type_c"]
    boxes = json.loads((tmp_path / "one" / synthesis.BOXES_FILE).read_text())
    left, top, right, bottom = boxes["ref-type_a/ref-type_a_000.jpg"]
    assert 0 <= left < right <= 64 and 0 <= top < bottom <= 64


def test_synthetic_photos_do_not_change_with_references(tmp_path):
    types, _ = composition.load(_reference_folder(tmp_path / "refs"), "together", MAX_PIXELS)
    synthesis.generate(tmp_path / "plain", 3, 2, 64, seed=5, workers=1)
    synthesis.generate(tmp_path / "mixed", 3, 2, 64, seed=5, workers=1, references=types, reference_photos=2)
    plain, mixed = _digests(tmp_path / "plain"), _digests(tmp_path / "mixed")
    assert all(mixed[name] == digest for name, digest in plain.items() if name.endswith(".jpg"))
