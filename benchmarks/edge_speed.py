"""Device-step speed and Annoy accuracy at gallery sizes the counter will reach.

Run after `dvc repro` (it reads the pipeline's bundle and prepared crops), in the training
environment or an edge environment with the repository on the path:

    python benchmarks/edge_speed.py [--sizes 1000 10000 100000] [--frames 300]

For each gallery size it builds an Annoy index over int8 embeddings (the pipeline's real
embeddings of every prepared crop, then copies of them with small Gaussian perturbations up to
the size), chooses search_k with the device's own `choose_search_k` on 500 query crops, and
measures on 500 other query crops: top-1 agreement with exact search, lookup latency (median, p95), build time and
index size. Then it times the device step (localise, preprocess, invoke, search) on raw
synthetic photos with the 10k gallery. Writes reports/edge_benchmark.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_runtime import bundle as bundle_module  # noqa: E402
from edge_runtime import gallery, interpreter  # noqa: E402
from edge_runtime.identification import Identifier  # noqa: E402
from edge_runtime.preprocessing import read_image  # noqa: E402


def _load_crops(name: str) -> np.ndarray:
    with np.load(ROOT / "data/prepared" / f"{name}.npz", allow_pickle=False) as split:
        return split["pixels"], split["sources"]


def _percentiles(samples_ms: list[float]) -> dict:
    values = np.array(samples_ms)
    return {"median_ms": float(np.median(values)), "p95_ms": float(np.percentile(values, 95))}


def gallery_of_size(base: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` unit vectors: the real embeddings, then perturbed copies of them."""
    repeats = int(np.ceil(size / len(base)))
    tiled = np.concatenate([base] * repeats)[:size].copy()
    noise = rng.normal(0.0, 0.05 / np.sqrt(base.shape[1]), tiled.shape)
    noise[: len(base)] = 0.0
    tiled += noise
    return (tiled / np.linalg.norm(tiled, axis=1, keepdims=True)).astype(np.float32)


def measure_search(embeddings: np.ndarray, tuning: np.ndarray, queries: np.ndarray, trees: int, seed: int,
                   target: float) -> dict:
    """search_k is chosen on `tuning` queries, agreement and latency measured on `queries`."""
    started = time.perf_counter()
    index = gallery.build_index(embeddings, trees, seed)
    build_seconds = time.perf_counter() - started
    search_k = gallery.choose_search_k(embeddings, trees, target, seed, queries=tuning)
    exact = 1.0 - (queries @ embeddings.T).max(axis=1)
    labels = [str(i) for i in range(len(embeddings))]
    agreed, latencies = 0, []
    for query, best in zip(queries, exact):
        start = time.perf_counter()
        matches = gallery.search(index, labels, query, 1, search_k)
        latencies.append((time.perf_counter() - start) * 1000.0)
        agreed += matches[0].distance <= best + 1e-5
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "index.ann")
        index.save(path)
        index_bytes = os.path.getsize(path)
    exact_latencies = []
    for query in queries[:200]:
        start = time.perf_counter()
        int(np.argmax(embeddings @ query))
        exact_latencies.append((time.perf_counter() - start) * 1000.0)
    return {"gallery": len(embeddings), "search_k": search_k, "top1_agreement": agreed / len(queries),
            "annoy": _percentiles(latencies), "exact_numpy": _percentiles(exact_latencies),
            "build_seconds": build_seconds, "index_bytes": index_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default=str(ROOT / "bundle"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--frames", type=int, default=300, help="photos timed for the device step")
    parser.add_argument("--seed", type=int, default=42)
    arguments = parser.parse_args()
    rng = np.random.default_rng(arguments.seed)
    loaded = bundle_module.load_bundle(arguments.bundle)
    model = interpreter.make_interpreter(loaded.model_path, threads=1)
    splits = ["train", "validation", "calibration_references", "calibration_queries", "references"]
    base = np.concatenate([interpreter.embed(model, _load_crops(name)[0]) for name in splits])
    query_pixels, query_sources = _load_crops("queries")
    queries = interpreter.embed(model, query_pixels[:500])
    tuning = interpreter.embed(model, query_pixels[500:1000])
    report = {"runtime": interpreter.runtime_name(), "search": []}
    for size in arguments.sizes:
        row = measure_search(gallery_of_size(base, size, rng), tuning, queries, loaded.annoy_trees, arguments.seed, 0.99)
        report["search"].append(row)
        print(f"gallery {size:>7}: search_k {row['search_k']:>6}, top-1 agreement {row['top1_agreement']:.3f}, "
              f"Annoy {row['annoy']['median_ms'] * 1000:.0f} us median / {row['annoy']['p95_ms'] * 1000:.0f} us p95, "
              f"exact numpy {row['exact_numpy']['median_ms'] * 1000:.0f} us, build {row['build_seconds']:.2f} s, "
              f"index {row['index_bytes'] / 1e6:.1f} MB", flush=True)

    ten_k = next((row for row in report["search"] if row["gallery"] == 10000), report["search"][-1])
    embeddings = gallery_of_size(base, ten_k["gallery"], rng)
    with tempfile.TemporaryDirectory() as directory:
        bundle_module.write_bundle(directory, loaded.model_path, embeddings, [f"pill_{i}" for i in range(len(embeddings))],
                                   loaded.unknown_threshold, loaded.preprocess, loaded.annoy_trees, ten_k["search_k"],
                                   arguments.seed)
        identifier = Identifier.open(directory, threads=1)
        identifier.warm_up()
        stages: dict[str, list[float]] = {}
        photos = [read_image(ROOT / "data/synthetic" / source, loaded.preprocess.max_image_pixels)
                  for source in query_sources[: arguments.frames]]
        totals = []
        for photo in photos:
            result = identifier.identify_image(photo)
            for stage, seconds in result.timings.items():
                stages.setdefault(stage, []).append(seconds * 1000.0)
            totals.append(sum(result.timings.values()) * 1000.0)
    report["device_step_10k"] = {stage: _percentiles(values) for stage, values in stages.items()}
    report["device_step_10k"]["total"] = _percentiles(totals)
    report["device_step_10k"]["photo_size"] = list(photos[0].shape[:2])
    print(f"device step, {ten_k['gallery']} gallery, {len(photos)} photos of {photos[0].shape[1]}x{photos[0].shape[0]} px:")
    for stage, values in report["device_step_10k"].items():
        if stage != "photo_size":
            print(f"  {stage:<11} median {values['median_ms']:.3f} ms, p95 {values['p95_ms']:.3f} ms")
    (ROOT / "reports").mkdir(exist_ok=True)
    (ROOT / "reports/edge_benchmark.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
