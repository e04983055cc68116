"""Fuzzing the bundle's Annoy index: a crafted index whose checksums in bundle.json
are recomputed passes every checksum, and Annoy's native code trusts its counts and references,
so before the fix three of 30 random corruptions crashed `identify` with SIGSEGV. Here bytes of
the tree nodes are overwritten and the file cut short or extended, the sidecar rewritten to
match, and each bundle loaded and queried in a subprocess: it must never die of a signal, and
must either refuse the bundle with a BundleError naming the index file or answer with labels of
the bundle. Seeded and bounded: 60 overwrites and 12 size changes of each of two bundles (the
three-pill bundle, whose index is a single leaf per tree, and a 300-row one with split nodes),
in one subprocess per bundle."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edge_runtime.bundle import SIDECAR, file_name, load_bundle, write_bundle

# Loads and queries each bundle directory named on stdin; one line of JSON per bundle.
PROBE = textwrap.dedent("""
    import json, sys
    from edge_runtime import gallery
    from edge_runtime.bundle import BundleError, load_bundle
    for directory in sys.stdin.read().split():
        try:
            bundle = load_bundle(directory, verify_model=False)
            answers = []
            for row in (0, len(bundle.labels) - 1):
                matches = gallery.search(bundle.index, bundle.labels, bundle.embeddings[row], top_k=2,
                                         search_k=bundle.search_k, rows_per_label=bundle.rows_per_label)
                answers.append([match.label for match in matches])
            print(json.dumps({"directory": directory, "answers": answers}), flush=True)
        except BundleError as error:
            print(json.dumps({"directory": directory, "error": str(error)}), flush=True)
""")


def _with_index(template: str, target: str, data: bytes) -> str:
    """A copy of the bundle `template` at `target` whose index is `data`, with bundle.json's
    name, size and checksum of the index recomputed to match."""
    shutil.copytree(template, target)
    with open(os.path.join(target, SIDECAR)) as handle:
        sidecar = json.load(handle)
    old = sidecar["files"]["index"]["name"]
    digest = hashlib.sha256(data).hexdigest()
    name = file_name("index", digest)
    os.remove(os.path.join(target, old))
    with open(os.path.join(target, name), "wb") as handle:
        handle.write(data)
    sidecar["files"]["index"] = {"name": name, "sha256": digest, "size": len(data)}
    with open(os.path.join(target, SIDECAR), "w") as handle:
        json.dump(sidecar, handle)
    return target


def _corruptions(data: bytes, rows: int, dimensions: int, seed: int) -> list[bytes]:
    """60 copies of the index with 1 to 16 random bytes overwritten in the tree nodes (after
    the item nodes), and 12 cut short or extended by whole nodes or odd byte counts."""
    generator = np.random.default_rng(seed)
    node = 4 * (3 + dimensions)
    start = rows * node  # the tree nodes follow the item nodes
    corrupted = []
    for _ in range(60):
        copy = bytearray(data)
        for _ in range(int(generator.integers(1, 17))):
            copy[int(generator.integers(start, len(copy)))] = int(generator.integers(0, 256))
        corrupted.append(bytes(copy))
    for cut in (1, 3, node, 2 * node, len(data) - start, len(data) - node):
        corrupted.append(data[:len(data) - cut])
    for extra in (1, node, 3 * node):
        corrupted.append(data + generator.integers(0, 256, extra, dtype=np.uint8).tobytes())
    corrupted.append(data + data[-node:])  # one more copy of the last root
    corrupted.append(data[-node:] + data[node:])  # the first item node replaced by a root
    corrupted.append(b"")
    return corrupted


@pytest.fixture
def large_bundle(tmp_path, edge_model_path, edge_config) -> str:
    """A 300-row bundle of 30 labels with random embeddings: an index with split nodes."""
    embeddings = np.random.default_rng(5).normal(size=(300, 8)).astype(np.float32)
    labels = [f"pill {row % 30}" for row in range(300)]
    directory = str(tmp_path / "large")
    write_bundle(directory, edge_model_path, embeddings, labels, threshold=0.1, preprocess=edge_config,
                 annoy_trees=4, search_k=-1, seed=3, lookalike_margin=0.02)
    return directory


@pytest.mark.parametrize("which", ["edge_bundle", "large_bundle"])
def test_crafted_index_never_crashes(which, request, tmp_path):
    template = request.getfixturevalue(which)
    bundle = load_bundle(template, verify_model=False)
    labels = set(bundle.labels)
    rows, dimensions = bundle.embeddings.shape
    with open(os.path.join(template, bundle.files["index"].name), "rb") as handle:
        data = handle.read()
    bundle.index.unload()
    directories = [_with_index(template, str(tmp_path / f"case{number}"), corrupted)
                   for number, corrupted in enumerate(_corruptions(data, rows, dimensions, seed=len(which)))]
    result = subprocess.run([sys.executable, "-c", PROBE], input="\n".join(directories), text=True,
                            capture_output=True, timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    done = len(lines)
    assert result.returncode == 0, (
        f"exit {result.returncode} (a negative number is a signal) on {directories[min(done, len(directories) - 1)]}"
        f"\n{result.stderr[-2000:]}")
    assert [line["directory"] for line in lines] == directories
    refused = 0
    for line in lines:
        if "error" in line:
            refused += 1
            assert ".ann" in line["error"] and line["directory"] in line["error"], line
        else:
            assert all(answer and set(answer) <= labels for answer in line["answers"]), line
    assert refused >= 10  # the empty, cut and extended files at least
