"""The device client: bundle, gallery, identification, enrollment, storage, interpreter."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from edge_fixtures import THRESHOLD, pill_photo, pill_photos
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime import bundle as bundle_module
from edge_runtime import gallery, storage
from edge_runtime.bundle import BundleError, load_bundle, write_bundle
from edge_runtime.enrollment import enroll, list_labels, remove
from edge_runtime.identification import Identifier, Smoother
from edge_runtime.interpreter import (
    embed,
    embedding_size,
    input_size,
    make_interpreter,
    quantise_input,
    runtime_name,
)
from edge_runtime.preprocessing import Box, preprocess, touches_edge


def test_client_runs_without_tensorflow(edge_model_path):
    code = (
        "import sys, edge_runtime.cli\n"
        "assert 'tensorflow' not in sys.modules, 'import edge_runtime.cli imported tensorflow'\n"
        "from edge_runtime.interpreter import make_interpreter\n"
        f"make_interpreter({edge_model_path!r}, threads=1)\n"
        "banned = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', "
        "'tf_pilltrack')]\n"
        "assert not banned, banned\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- bundle -----------------------------------------------------------------------------------


def test_bundle_round_trip(tmp_path, edge_model_path, edge_config, edge_embed):
    embeddings = edge_embed(pill_photos("red", 2) + pill_photos("blue", 2))
    labels = ["red", "red", "blue", "blue"]
    sidecar = write_bundle(tmp_path / "b", edge_model_path, embeddings, labels, threshold=0.25,
                           preprocess=edge_config, annoy_trees=3, search_k=50, seed=7, extra={"run": "x"},
                           lookalike_margin=0.02)

    loaded = load_bundle(tmp_path / "b")
    assert loaded.labels == tuple(labels)
    np.testing.assert_array_equal(loaded.embeddings, embeddings)
    assert (loaded.unknown_threshold, loaded.search_k, loaded.annoy_trees, loaded.seed) == (
        0.25, 50, 3, 7)
    assert loaded.lookalike_margin == 0.02 and sidecar["format_version"] == 3
    assert sidecar["labels"] == ["red", "blue"] and sidecar["rows"] == [0, 0, 1, 1]  # each label once
    assert loaded.preprocess == edge_config
    assert loaded.extra == {"run": "x"}
    assert loaded.model_sha256 == storage.sha256_file(edge_model_path)
    assert sidecar["metric"] == "angular" and sidecar["distance"] == "cosine"
    matches = gallery.search(loaded.index, loaded.labels, embeddings[2], 2, loaded.search_k)
    assert matches[0].label == "blue" and matches[0].distance < 1e-4
    assert [m.label for m in matches] == ["blue", "red"]  # one match per distinct pill
    cosine = 1.0 - embeddings[:2] @ embeddings[2]  # distances are 1 - cos, as in numpy
    assert matches[1].distance == pytest.approx(cosine.min(), abs=1e-5)

    # Rewriting the same content gives the same files (deterministic index), and stale
    # files of an older gallery are removed.
    write_bundle(tmp_path / "b", edge_model_path, embeddings[:3], labels[:3], threshold=0.25,
                 preprocess=edge_config, annoy_trees=3, search_k=50, seed=7, lookalike_margin=0.02)
    again = write_bundle(tmp_path / "b", edge_model_path, embeddings, labels, threshold=0.25,
                         preprocess=edge_config, annoy_trees=3, search_k=50, seed=7, extra={"run": "x"},
                         lookalike_margin=0.02)
    assert again == sidecar
    names = sorted(os.listdir(tmp_path / "b"))
    data_files = [entry["name"] for entry in sidecar["files"].values()]
    assert names == sorted([".lock", "bundle.json", *data_files])


def test_write_bundle_refuses_embeddings_the_model_cannot_make(tmp_path, edge_model_path,
                                                               edge_config):
    with pytest.raises(ValueError, match="outputs 8-dimensional"):
        write_bundle(tmp_path / "b", edge_model_path, np.ones((2, 16), np.float32),
                     ["a", "b"], threshold=0.1, preprocess=edge_config, annoy_trees=2, search_k=-1,
                     seed=0, lookalike_margin=0.02)
    with pytest.raises(ValueError, match="2 labels for 3 embeddings"):
        write_bundle(tmp_path / "b", edge_model_path, np.ones((3, 8), np.float32),
                     ["a", "b"], threshold=0.1, preprocess=edge_config, annoy_trees=2, search_k=-1,
                     seed=0, lookalike_margin=0.02)
    with pytest.raises(ValueError, match="reserved"):
        write_bundle(tmp_path / "b", edge_model_path, np.ones((1, 8), np.float32),
                     ["unknown"], threshold=0.1, preprocess=edge_config, annoy_trees=2, search_k=-1,
                     seed=0, lookalike_margin=0.02)


def _sidecar(directory):
    with open(os.path.join(directory, "bundle.json")) as handle:
        return json.load(handle)


def _save_sidecar(directory, sidecar):
    with open(os.path.join(directory, "bundle.json"), "w") as handle:
        json.dump(sidecar, handle)


def _replace_file(directory, kind, data):
    """Swap a data file for `data`, with a matching name and checksum in the sidecar, as a
    careful forger would."""
    sidecar = _sidecar(directory)
    os.unlink(os.path.join(directory, sidecar["files"][kind]["name"]))
    sha = storage.sha256_bytes(data)
    name = bundle_module.file_name(kind, sha)
    with open(os.path.join(directory, name), "wb") as handle:
        handle.write(data)
    sidecar["files"][kind] = {"name": name, "sha256": sha, "size": len(data)}
    _save_sidecar(directory, sidecar)
    return sidecar


def _npy_bytes(array, allow_pickle=False):
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def _flip_byte(directory, kind):
    path = os.path.join(directory, _sidecar(directory)["files"][kind]["name"])
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _edit(field, value):
    def change(directory):
        sidecar = _sidecar(directory)
        sidecar[field] = value
        _save_sidecar(directory, sidecar)
    return change


def _delete_field(field):
    def change(directory):
        sidecar = _sidecar(directory)
        del sidecar[field]
        _save_sidecar(directory, sidecar)
    return change


def _drop_label(directory):
    sidecar = _sidecar(directory)
    sidecar["rows"].pop()
    _save_sidecar(directory, sidecar)


def _escape_path(directory):
    sidecar = _sidecar(directory)
    sidecar["files"]["model"]["name"] = "../model.tflite"
    _save_sidecar(directory, sidecar)


def _delete_file(kind):
    def change(directory):
        os.unlink(os.path.join(directory, _sidecar(directory)["files"][kind]["name"]))
    return change


def _wider_gallery(directory):
    """Consistent 16-dimensional embeddings and index, but the model still makes 8."""
    embeddings = np.random.default_rng(0).normal(size=(9, 16)).astype(np.float32)
    _replace_file(directory, "embeddings", _npy_bytes(embeddings))
    index_path = os.path.join(str(directory) + "-index.ann")
    gallery.build_index(embeddings, 4, 42).save(index_path)
    _replace_file(directory, "index", open(index_path, "rb").read())
    _edit("embedding_size", 16)(directory)


TAMPERING = {
    "checksum mismatch": (lambda d: _flip_byte(d, "index"), r"index-.*checksum mismatch"),
    "model changed": (lambda d: _flip_byte(d, "model"), r"model-.*checksum mismatch"),
    "wrong embedding size": (_edit("embedding_size", 16),
                             r"embeddings-.*expected float32 \(9, 16\)"),
    "model output size": (_wider_gallery, r"model-.*outputs 8-dimensional"),
    "wrong metric": (_edit("metric", "euclidean"), r"'metric' is 'euclidean', expected 'angular'"),
    "missing file": (_delete_file("embeddings"), r"embeddings-.*missing"),
    "missing sidecar": (lambda d: os.unlink(os.path.join(d, "bundle.json")),
                        r"bundle.json: missing"),
    "missing field": (_delete_field("search_k"), r"missing fields \['search_k'\]"),
    "wrong type": (_edit("unknown_threshold", "0.1"), r"'unknown_threshold' is '0.1'"),
    "negative margin": (_edit("lookalike_margin", -0.1), r"'lookalike_margin' is -0.1, expected a cosine distance"),
    "margin missing in version 2": (_delete_field("lookalike_margin"), r"missing fields \['lookalike_margin'\]"),
    "labels do not match": (_drop_label, r"embeddings-.*\(9, 8\), expected float32 \(8, 8\)"),
    "path escape": (_escape_path, r"files.model is named '../model.tflite'"),
    "newer format": (_edit("format_version", 4), r"format version 4 is not supported"),
    "not json": (lambda d: open(os.path.join(d, "bundle.json"), "w").write("{"),
                 r"not valid JSON"),
    "pickled embeddings": (
        lambda d: _replace_file(d, "embeddings", _npy_bytes(np.array([{}], object), True)),
        r"embeddings-.*not a readable .npy"),
}


def _per_row_labels(sidecar):
    """A version 3 sidecar's labels as versions 1 and 2 stored them: one per gallery row."""
    sidecar["labels"] = [sidecar["labels"][row] for row in sidecar.pop("rows")]


def test_a_version_1_bundle_loads_and_flags_only_exact_ties(edge_bundle):
    sidecar = _sidecar(edge_bundle)
    labels = load_bundle(edge_bundle).labels
    del sidecar["lookalike_margin"]
    sidecar["format_version"] = 1
    _per_row_labels(sidecar)
    _save_sidecar(edge_bundle, sidecar)
    loaded = load_bundle(edge_bundle)
    assert loaded.lookalike_margin == 0.0 and loaded.labels == labels


def test_a_version_2_bundle_loads_and_enrolling_writes_version_3(edge_bundle, edge_embed):
    sidecar = _sidecar(edge_bundle)
    labels = load_bundle(edge_bundle).labels
    sidecar["format_version"] = 2
    _per_row_labels(sidecar)
    _save_sidecar(edge_bundle, sidecar)
    assert load_bundle(edge_bundle).labels == labels
    enroll(edge_bundle, "cyan", edge_embed(pill_photos("cyan", 2)))
    assert _sidecar(edge_bundle)["format_version"] == 3
    assert load_bundle(edge_bundle).labels == labels + ("cyan", "cyan")


def test_write_bundle_refuses_a_bad_lookalike_margin(tmp_path, edge_model_path, edge_config):
    with pytest.raises(ValueError, match="lookalike_margin must be a cosine distance"):
        write_bundle(tmp_path / "b", edge_model_path, np.eye(2, 8, dtype=np.float32), ["x", "y"], threshold=0.1,
                     preprocess=edge_config, annoy_trees=2, search_k=-1, seed=0, lookalike_margin=2.5)
    assert not (tmp_path / "b" / "bundle.json").exists()


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_tampered_bundle_is_refused_clearly(case, edge_bundle):
    tamper, message = TAMPERING[case]
    tamper(edge_bundle)
    with pytest.raises(BundleError, match=message):
        load_bundle(edge_bundle)


def test_crash_while_writing_a_bundle_leaves_the_previous_one(edge_bundle, edge_model_path,
                                                               edge_config, monkeypatch):
    real_write = storage.write_atomically

    def crash_on_sidecar(path, data):
        if str(path).endswith("bundle.json"):
            raise OSError("simulated power cut")
        real_write(path, data)

    monkeypatch.setattr(storage, "write_atomically", crash_on_sidecar)
    with pytest.raises(OSError, match="power cut"):
        write_bundle(edge_bundle, edge_model_path, np.eye(2, 8, dtype=np.float32), ["x", "y"],
                     threshold=0.1, preprocess=edge_config, annoy_trees=2, search_k=-1, seed=0,
                     lookalike_margin=0.02)
    monkeypatch.undo()
    assert load_bundle(edge_bundle).labels[0] == "red"


# --- storage ----------------------------------------------------------------------------------


def test_atomic_write_keeps_the_previous_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "data.bin"
    storage.write_atomically(target, b"old")
    with pytest.raises(RuntimeError):
        with storage.atomic_writer(target) as handle:
            handle.write(b"half of the new")
            raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"old"

    def failing_replace(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        storage.write_atomically(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["data.bin"]  # no temporary file left behind


def _folder(path) -> dict:
    return {item.name: item.read_bytes() for item in path.iterdir()}


def test_atomic_folder_replaces_a_folder_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "set"
    with storage.atomic_folder(target) as staging:  # made when absent
        (staging / "a.bin").write_bytes(b"old a")
        (staging / "b.bin").write_bytes(b"old b")
    assert _folder(target) == {"a.bin": b"old a", "b.bin": b"old b"}

    with pytest.raises(RuntimeError, match="crash while writing"):
        with storage.atomic_folder(target) as staging:
            (staging / "a.bin").write_bytes(b"half of the new")
            raise RuntimeError("crash while writing")
    assert _folder(target) == {"a.bin": b"old a", "b.bin": b"old b"}  # the previous folder intact
    assert sorted(os.listdir(tmp_path)) == ["set"]  # no temporary folder left behind

    real_replace = os.replace

    def failing_rename(source, destination):  # the new folder's rename into place, after the old one moved aside
        if pathlib.Path(destination) == target and "old" not in pathlib.Path(source).name:
            raise OSError("rename failed")
        return real_replace(source, destination)

    monkeypatch.setattr(storage.os, "replace", failing_rename)
    with pytest.raises(OSError, match="rename failed"):
        with storage.atomic_folder(target) as staging:
            (staging / "c.bin").write_bytes(b"new c")
    monkeypatch.undo()
    assert _folder(target) == {"a.bin": b"old a", "b.bin": b"old b"}  # moved back in place
    assert sorted(os.listdir(tmp_path)) == ["set"]

    with storage.atomic_folder(target) as staging:
        (staging / "c.bin").write_bytes(b"new c")
    assert _folder(target) == {"c.bin": b"new c"}  # replaced, not merged
    assert sorted(os.listdir(tmp_path)) == ["set"]


def test_atomic_folder_clears_what_a_killed_replacement_left(tmp_path):
    target = tmp_path / "set"
    retired = tmp_path / f"{storage.TEMP_PREFIX}old-set"  # killed between its two renames: no `set`
    retired.mkdir()
    (retired / "a.bin").write_bytes(b"old a")
    (tmp_path / f"{storage.TEMP_PREFIX}new-set-0123456789ab").mkdir()  # and its half-written new folder
    with pytest.raises(RuntimeError):
        with storage.atomic_folder(target):
            raise RuntimeError("crash while writing")
    assert _folder(target) == {"a.bin": b"old a"}  # the previous folder back in place
    assert sorted(os.listdir(tmp_path)) == ["set"]


def test_file_lock_is_exclusive(tmp_path):
    path = tmp_path / ".lock"
    with storage.file_lock(path):
        other = os.open(path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
    with storage.file_lock(path, shared=True):
        with storage.file_lock(path, shared=True):  # readers share
            pass


# --- interpreter ------------------------------------------------------------------------------


def test_interpreter_reports_model_shape_and_embeds_unit_vectors(edge_interpreter, edge_config):
    assert runtime_name() in ("ai_edge_litert", "tflite_runtime")
    assert input_size(edge_interpreter) == 32 and embedding_size(edge_interpreter) == 8
    crops = np.stack([preprocess(p, edge_config).pixels for p in pill_photos("green", 3)])
    batch = embed(edge_interpreter, crops, 1)
    assert batch.dtype == np.float32 and batch.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(embed(edge_interpreter, crops[1], 1), batch[1:2])
    with pytest.raises(ValueError, match="uint8 crops"):
        embed(edge_interpreter, crops.astype(np.float32), 1)
    with pytest.raises(ValueError, match="threads"):
        make_interpreter("model.tflite", threads=0)


def test_symmetric_views_make_the_embedding_independent_of_how_the_pill_lies(edge_interpreter):
    """Averaged over a group of the square's symmetries, the embedding of a turned (or, with 8
    views, mirrored) crop is the crop's own; one view is not, and 2 views are the mean of two."""
    crops = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)

    def turned(pixels, quarter_turns):
        return np.ascontiguousarray(np.rot90(pixels, quarter_turns, axes=(1, 2)))

    one = embed(edge_interpreter, crops, 1)
    assert not np.allclose(embed(edge_interpreter, turned(crops, 1), 1), one, atol=1e-3)
    np.testing.assert_allclose(embed(edge_interpreter, turned(crops, 2), 2), embed(edge_interpreter, crops, 2),
                               atol=1e-6)
    np.testing.assert_allclose(embed(edge_interpreter, turned(crops, 1), 4), embed(edge_interpreter, crops, 4),
                               atol=1e-6)
    mirrored = np.ascontiguousarray(crops[:, :, ::-1])
    np.testing.assert_allclose(embed(edge_interpreter, mirrored, 8), embed(edge_interpreter, crops, 8), atol=1e-6)
    assert not np.allclose(embed(edge_interpreter, mirrored, 4), embed(edge_interpreter, crops, 4), atol=1e-3)
    mean = one + embed(edge_interpreter, turned(crops, 2), 1)
    np.testing.assert_allclose(embed(edge_interpreter, crops, 2),
                               mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-6)
    with pytest.raises(ValueError, match="views must be one of"):
        embed(edge_interpreter, crops, 3)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 255), st.sampled_from([(np.uint8, 1 / 127.5, 127), (np.int8, 1 / 127.5, -1),
                                             (np.int8, 0.05, 3)]))
def test_input_quantisation_follows_the_formula(pixel, quantisation):
    dtype, scale, zero_point = quantisation
    detail = {"dtype": dtype, "quantization": (scale, zero_point)}
    q = quantise_input(np.array([[pixel]], np.uint8), detail)[0, 0]
    x = pixel / 127.5 - 1.0
    limits = np.iinfo(dtype)
    assert q.dtype == dtype
    assert abs(int(q) - min(max(x / scale + zero_point, limits.min), limits.max)) <= 0.5 + 1e-6


def test_pixel_scale_uint8_input_takes_the_pixels_themselves():
    """The converter's uint8 input for the pixel range (scale 1/127.5, zero point 128) puts every
    pixel on a rounding tie; the client passes the pixels unchanged, as a firmware does."""
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    detail = {"dtype": np.uint8, "quantization": (np.float32(1 / 127.5), 128)}
    assert np.array_equal(quantise_input(pixels, detail), pixels)
    # any other quantisation follows the formula: here it differs from the pixels
    other = {"dtype": np.uint8, "quantization": (0.01, 100)}
    assert not np.array_equal(quantise_input(pixels, other), pixels)


def test_edgetpu_fallback_warns_and_runs_on_the_cpu(edge_model_path, edge_config, capfd):
    interpreter = make_interpreter(edge_model_path, threads=1, edgetpu=True)
    warning = [line for line in capfd.readouterr().err.splitlines() if "Edge TPU" in line]
    assert len(warning) == 1 and "running on the CPU" in warning[0]
    crop = preprocess(pill_photos("red", 1)[0], edge_config).pixels
    assert embed(interpreter, crop, 1).shape == (1, 8)


# --- gallery ----------------------------------------------------------------------------------


def test_choose_search_k_reaches_the_agreement():
    generator = np.random.default_rng(3)
    embeddings = generator.normal(size=(400, 16)).astype(np.float32)
    search_k = gallery.choose_search_k(embeddings, trees=4, target_agreement=0.95, seed=1)
    assert 1 <= search_k <= 400 * 4

    queries = embeddings[:100] + generator.normal(0, 0.2, (100, 16)).astype(np.float32)
    chosen = gallery.choose_search_k(embeddings, 4, 0.95, seed=1, queries=queries)
    index = gallery.build_index(embeddings, 4, 1)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit_queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    exact = 1.0 - (unit_queries @ unit.T).max(axis=1)

    def agreement(k):
        found = [gallery.angular_to_cosine(index.get_nns_by_vector(
            q.tolist(), 1, search_k=k, include_distances=True)[1][0]) for q in unit_queries]
        return np.mean(np.array(found) <= exact + 1e-5)

    assert agreement(chosen) >= 0.95
    assert chosen == 1 or agreement(chosen - 1) < 0.95  # the smallest that reaches it


def test_search_k_grows_with_the_gallery_and_is_capped_at_exhaustive():
    sizes = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000]
    chosen = [gallery.search_k_for_size(rows, 16) for rows in sizes]
    assert chosen == sorted(chosen) and chosen[-1] > chosen[3]
    assert all(1 <= k <= rows * 16 for k, rows in zip(chosen, sizes))
    assert gallery.search_k_for_size(1, 16) == 16  # rows x trees: already exhaustive
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="rows must be a positive integer"):
            gallery.search_k_for_size(bad, 16)
    with pytest.raises(ValueError, match="trees must be a positive integer"):
        gallery.search_k_for_size(100, 0)


def test_search_k_for_size_agrees_with_exact_search_on_clustered_galleries():
    # Pills as clusters of shots, queried with other shots of enrolled pills.
    generator = np.random.default_rng(5)
    centres = generator.normal(size=(1000, 32))
    rows = np.repeat(np.arange(1000), 5)
    embeddings = (centres[rows] + generator.normal(0, 0.3, (5000, 32))).astype(np.float32)
    queries = (centres[generator.integers(0, 1000, 300)]
               + generator.normal(0, 0.3, (300, 32))).astype(np.float32)
    index = gallery.build_index(embeddings, 16, seed=3)
    search_k = gallery.search_k_for_size(len(embeddings), 16)
    assert gallery.top1_agreement(index, embeddings, queries, search_k) >= 0.99
    assert gallery.top1_agreement(index, embeddings, queries, 5000 * 16) == 1.0  # exhaustive


def test_search_with_a_cached_rows_per_label_matches_the_uncached():
    generator = np.random.default_rng(8)
    embeddings = generator.normal(size=(60, 8)).astype(np.float32)
    labels = [f"pill {row % 7}" for row in range(60)]  # 9 rows for some labels, 8 for others
    index = gallery.build_index(embeddings, 4, seed=2)
    assert gallery.most_rows_per_label(labels) == 9
    for query in generator.normal(size=(20, 8)):
        cached = gallery.search(index, labels, query, 3, -1, rows_per_label=9)
        assert cached == gallery.search(index, labels, query, 3, -1)
        assert len({match.label for match in cached}) == 3
    with pytest.raises(ValueError, match="rows_per_label must be at least 1"):
        gallery.search(index, labels, embeddings[0], 3, -1, rows_per_label=0)


def test_enrolling_updates_search_k_from_the_gallery_size(edge_bundle, edge_embed):
    assert _sidecar(edge_bundle)["search_k"] == -1  # the fixture searches exhaustively
    loaded = load_bundle(edge_bundle)
    write_bundle(edge_bundle, loaded.model_path, loaded.embeddings, loaded.labels,
                 threshold=loaded.unknown_threshold, preprocess=loaded.preprocess,
                 annoy_trees=loaded.annoy_trees, search_k=5, seed=loaded.seed,
                 lookalike_margin=loaded.lookalike_margin)
    assert _sidecar(edge_bundle)["search_k"] == 5
    enroll(edge_bundle, "cyan", edge_embed(pill_photos("cyan", 4)))
    rows = len(loaded.labels) + 4
    assert _sidecar(edge_bundle)["search_k"] == gallery.search_k_for_size(rows, loaded.annoy_trees)
    assert load_bundle(edge_bundle).rows_per_label == 4
    write_bundle(edge_bundle, loaded.model_path, loaded.embeddings, loaded.labels,
                 threshold=loaded.unknown_threshold, preprocess=loaded.preprocess,
                 annoy_trees=loaded.annoy_trees, search_k=-1, seed=loaded.seed,
                 lookalike_margin=loaded.lookalike_margin)
    enroll(edge_bundle, "cyan", edge_embed(pill_photos("cyan", 2)))
    assert _sidecar(edge_bundle)["search_k"] == -1  # an exhaustive search stays exhaustive


def test_index_is_deterministic(tmp_path):
    embeddings = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    for name in ("a.ann", "b.ann"):
        gallery.build_index(embeddings, 5, seed=11).save(str(tmp_path / name))
    assert (tmp_path / "a.ann").read_bytes() == (tmp_path / "b.ann").read_bytes()


@given(st.floats(0.0, 2.0))
def test_distance_units_convert_both_ways(distance):
    angular = gallery.cosine_to_angular(distance)
    assert gallery.angular_to_cosine(angular) == pytest.approx(distance)
    # Annoy's angular distance is the Euclidean distance of unit vectors: sqrt(2 - 2 cos).
    a = np.array([1.0, 0.0])
    b = np.array([1.0 - distance, np.sqrt(max(0.0, 1.0 - (1.0 - distance) ** 2))])
    assert np.linalg.norm(a - b) == pytest.approx(angular, abs=1e-7)


def test_identify_compares_the_best_distance_with_the_threshold():
    matches = [gallery.Match("red", 0.08), gallery.Match("blue", 0.5)]
    assert gallery.identify(matches, 0.1, 0.0) == "red"
    assert gallery.identify(matches, 0.05, 0.0) == gallery.UNKNOWN
    assert gallery.identify([], 0.1, 0.0) == gallery.UNKNOWN


def test_identify_names_no_pill_in_a_close_call():
    matches = [gallery.Match("red", 0.08), gallery.Match("orange", 0.11)]
    assert gallery.identify(matches, 0.2, 0.02) == "red"  # runner-up 0.03 farther: sure enough
    assert gallery.identify(matches, 0.2, 0.04) == gallery.UNKNOWN  # within the margin: a close call
    assert gallery.identify(matches[:1], 0.2, 2.0) == "red"  # one pill enrolled: no close call possible


def test_lookalike_names_a_runner_up_within_the_margin():
    close = [gallery.Match("tylenol", 0.05), gallery.Match("acetaminophen", 0.06), gallery.Match("advil", 0.3)]
    assert gallery.lookalike(close, 0.02) == "acetaminophen"
    assert gallery.lookalike(close, 0.01) == "acetaminophen"  # 0.06 - 0.05 <= 0.01
    assert gallery.lookalike(close, 0.005) is None
    assert gallery.lookalike(close[:1], 2.0) is None  # one pill enrolled: nothing to confuse it with
    assert gallery.lookalike([], 2.0) is None


# --- identification ---------------------------------------------------------------------------


@pytest.fixture
def identifier(edge_bundle, edge_interpreter):
    return Identifier(edge_interpreter, load_bundle(edge_bundle), top_k=3)


def test_identifies_a_known_pill(identifier):
    result = identifier.identify_image(pill_photos("green", 1, seed=9)[0])
    assert result.label == "green"
    assert result.distance <= THRESHOLD
    assert [m.label for m in result.top_k][0] == "green" and len(result.top_k) == 3
    assert result.box is not None
    assert set(result.timings) == {"localise", "preprocess", "invoke", "search"}


def test_distinct_pills_are_no_close_call(identifier):
    assert identifier.identify_image(pill_photos("green", 1, seed=9)[0]).lookalike is None


def test_two_labels_for_one_pill_are_a_close_call_even_with_top_k_1(edge_bundle, edge_interpreter, edge_embed):
    # "lime" enrolled from the same photos as green: any green photo is as near one as the other
    loaded = load_bundle(edge_bundle)
    green = loaded.embeddings[[label == "green" for label in loaded.labels]]
    enroll(edge_bundle, "lime", green)
    result = Identifier(edge_interpreter, load_bundle(edge_bundle), top_k=1).identify_image(
        pill_photos("green", 1, seed=9)[0])
    assert result.label == gallery.UNKNOWN and len(result.top_k) == 1  # a close call: no pill named
    assert {result.top_k[0].label, result.lookalike} == {"green", "lime"}


def test_an_answer_beyond_the_threshold_is_no_close_call(edge_bundle, edge_interpreter):
    loaded = load_bundle(edge_bundle)
    strict = Identifier(edge_interpreter, loaded, top_k=3, threshold=0.0)  # nothing is accepted
    result = strict.identify_image(pill_photos("green", 1, seed=9)[0])
    assert result.label == gallery.UNKNOWN and result.lookalike is None


def test_a_pill_absent_from_the_gallery_is_unknown(identifier):
    result = identifier.identify_image(pill_photos("black", 1, seed=9)[0])
    assert result.label == gallery.UNKNOWN
    assert result.distance > THRESHOLD
    assert result.top_k[0].label in ("red", "green", "blue")


def test_no_pill_found_is_a_result(identifier):
    result = identifier.identify_image(np.full((64, 64, 3), 128, np.uint8))
    assert result.label is None and result.box is None and result.top_k == []


def tight_crop_photo() -> np.ndarray:
    """A photo cropped to its pill, as a data set's pill crops are: the pill fills it, so its
    border is pill, and the one thing that stands out from it is a highlight across the pill,
    which the localiser takes for the pill (it meets the photo's edge)."""
    photo = np.empty((96, 96, 3), np.uint8)
    photo[:] = (200, 30, 30)
    photo[:, 60:76] = (250, 190, 190)
    return photo


@pytest.mark.parametrize("localise", [True, False, "auto"])
@pytest.mark.parametrize("tight", [False, True])
def test_timed_crop_equals_preprocess(identifier, localise, tight):
    config = dataclasses.replace(identifier.bundle.preprocess, localise=localise)
    identifier = Identifier(identifier.interpreter,
                            dataclasses.replace(identifier.bundle, preprocess=config))
    photo = tight_crop_photo() if tight else pill_photo((200, 30, 30), centre=(30, 60), axes=(20, 9), angle=30)
    expected = preprocess(photo, config)
    crop = identifier.crop(photo)
    assert crop.box == expected.box
    np.testing.assert_array_equal(crop.pixels, expected.pixels)


def test_cropped_embeds_the_whole_image_whatever_the_bundle_says(identifier):
    assert identifier.bundle.preprocess.localise  # the bundle localises
    cropped = Identifier(identifier.interpreter, identifier.bundle, cropped=True)
    photo = pill_photo((200, 30, 30), centre=(30, 60), axes=(20, 9), angle=30)
    expected = preprocess(photo, dataclasses.replace(identifier.bundle.preprocess, localise=False))
    crop = cropped.crop(photo)
    assert crop.box == expected.box == Box(0, 0, 96, 96)
    np.testing.assert_array_equal(crop.pixels, expected.pixels)
    assert identifier.crop(photo).box != crop.box  # localised: the pill's box
    # a plain surface is "no pill found" when localising, embedded as it is when cropped
    plain = np.full((64, 64, 3), 128, np.uint8)
    assert identifier.identify_image(plain).label is None
    assert cropped.identify_image(plain).box == Box(0, 0, 64, 64)


def test_auto_localisation_uses_a_tight_crop_whole(edge_config):
    localised = dataclasses.replace(edge_config, localise=True)
    auto = dataclasses.replace(edge_config, localise="auto")
    whole = dataclasses.replace(edge_config, localise=False)
    # a pill on a background: auto crops the pill, exactly as localisation on does
    photo = pill_photo((200, 30, 30), centre=(40, 56), axes=(20, 9), angle=30)
    np.testing.assert_array_equal(preprocess(photo, auto).pixels, preprocess(photo, localised).pixels)
    assert preprocess(photo, auto).box == preprocess(photo, localised).box != Box(0, 0, 96, 96)
    # a tight crop and a pill cut off by the frame: the pill found touches the edge, so the whole
    # photo is the model input, as with localisation off
    for photo in (tight_crop_photo(), pill_photo((200, 30, 30), centre=(8, 48), axes=(24, 12))):
        assert touches_edge(preprocess(photo, localised).box, 96, 96)
        assert preprocess(photo, auto).box == Box(0, 0, 96, 96)
        np.testing.assert_array_equal(preprocess(photo, auto).pixels, preprocess(photo, whole).pixels)
    # an empty tray is still "no pill found"
    assert preprocess(np.full((64, 64, 3), 128, np.uint8), auto) is None


def test_localisation_mode_is_checked(edge_config):
    for wrong in ("yes", 1, None):
        with pytest.raises(ValueError, match="localise must be true, false or 'auto'"):
            dataclasses.replace(edge_config, localise=wrong)


def test_touches_edge():
    assert not touches_edge(Box(1, 1, 99, 49), 100, 50)
    for box in (Box(0, 10, 20, 20), Box(10, 0, 20, 20), Box(10, 10, 100, 20), Box(10, 10, 20, 50)):
        assert touches_edge(box, 100, 50), box


def test_smoother_waits_for_a_majority():
    smoother = Smoother(window=3)
    announced = [smoother.update(label) for label in
                 ["red", "red", "blue", "red", "blue", "blue", None, None]]
    assert announced == [None, "red", "red", "red", "blue", "blue", "blue", None]


# --- enrollment -------------------------------------------------------------------------------


def test_enroll_identify_remove_list(edge_bundle, edge_interpreter, edge_embed):
    model_path = load_bundle(edge_bundle).model_path
    model_before = os.stat(model_path)
    cyan = pill_photos("cyan", 4, seed=5)

    assert enroll(edge_bundle, "cyan", edge_embed(cyan[:3])) == 3
    assert list_labels(edge_bundle) == {"blue": 3, "cyan": 3, "green": 3, "red": 3}
    model_after = os.stat(model_path)
    assert (model_after.st_ino, model_after.st_mtime_ns) == (
        model_before.st_ino, model_before.st_mtime_ns)  # the model file is untouched
    found = Identifier(edge_interpreter, load_bundle(edge_bundle)).identify_image(cyan[3])
    assert found.label == "cyan"

    assert remove(edge_bundle, "cyan") == 3
    assert list_labels(edge_bundle) == {"blue": 3, "green": 3, "red": 3}
    gone = Identifier(edge_interpreter, load_bundle(edge_bundle)).identify_image(cyan[3])
    assert gone.label == gallery.UNKNOWN

    with pytest.raises(ValueError, match="not enrolled"):
        remove(edge_bundle, "cyan")
    with pytest.raises(ValueError, match="4 dimensions, the gallery's 8"):
        enroll(edge_bundle, "wide", np.ones((1, 4), np.float32))
    remove(edge_bundle, "red")
    remove(edge_bundle, "green")
    with pytest.raises(ValueError, match="only enrolled pill"):
        remove(edge_bundle, "blue")


def test_preprocess_config_refuses_a_view_count_that_is_not_a_symmetry_group(edge_config):
    for views in (0, 3, 16):
        with pytest.raises(ValueError, match="symmetry_views must be one of"):
            dataclasses.replace(edge_config, symmetry_views=views)
    assert dataclasses.replace(edge_config, symmetry_views=8).symmetry_views == 8


@pytest.mark.parametrize("count", [1, 2, 4, 8])
def test_symmetric_views_are_the_square_turned_and_mirrored(count):
    """OpenCV's turns in symmetric_views are numpy's rot90 (quarter turns anticlockwise on the
    image axes), in that order, then the mirror images; a group, so closed under a quarter turn."""
    from edge_runtime.preprocessing import symmetric_views

    crops = np.random.default_rng(1).integers(0, 256, (3, 9, 9, 3), dtype=np.uint8)
    turns = (0,) if count == 1 else (0, 2) if count == 2 else (0, 1, 2, 3)
    expected = [np.rot90(crops, turn, axes=(1, 2)) for turn in turns]
    if count == 8:
        expected += [view[:, :, ::-1] for view in expected]
    views = symmetric_views(crops, count)
    assert len(views) == count
    for view, wanted in zip(views, expected):
        assert view.flags.c_contiguous and np.array_equal(view, wanted)
    assert symmetric_views(crops[:0], count)[-1].shape == (0, 9, 9, 3)
