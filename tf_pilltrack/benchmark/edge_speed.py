"""Device-step speed and gallery search (Annoy, exact, usearch) at the gallery sizes a counter reaches.

Run after `dvc repro` (it reads the pipeline's bundle, prepared crops and synthetic photos), from the
project root, in the training environment or an edge environment (`pilltrack bench` runs it so):

    python -m tf_pilltrack.benchmark.edge_speed [--sizes 1000 10000 100000] [--frames 300] [--bundle DIR]
                                                [--out reports/edge_benchmark.json]

Galleries: the bundle model's embeddings of every prepared crop except the query split (the
novel pills' reference shots first, then the other pills'), then copies of them with small
Gaussian perturbations up to the size. Queries: the query split's crops, real photos outside the
gallery of the novel pills enrolled in it.

For each gallery size and library it measures top-1 agreement with exact search (a query agrees
when the library's best cosine distance is no worse than the exact best), lookup latency per query
(median, p95, in microseconds, Python call included), build time and index size:
  annoy   the device's own index and search (`gallery.build_index`, `gallery.search`) with the
          bundle's trees and the search_k the device sets for that gallery size
          (`gallery.search_k_for_size`); params also give the smallest search_k that would reach
          the target agreement on separate tuning queries (`gallery.choose_search_k`)
  exact   numpy: one matrix-vector product over the unit embeddings, then argmax
  usearch HNSW (usearch.index.Index, cosine, float32, one thread), its expansion_search the
          smallest of 16, 32, ... reaching the target agreement on the tuning queries
Then it times the device step per stage (localise, preprocess, invoke, search) on raw photos
with a bundle holding the 10k gallery (or the nearest size given). Writes --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import tempfile
import time

import numpy as np

from edge_runtime import bundle as bundle_module
from edge_runtime import gallery, interpreter
from edge_runtime.identification import STAGES, Identifier
from edge_runtime.preprocessing import read_image

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the project root: the defaults' paths

# The novel pills' reference shots first, so every gallery size holds the pills the queries show (as a
# device's gallery holds the pills it is asked about); the other splits' pills are distractors.
GALLERY_SPLITS = ("references", "calibration_references", "train", "calibration_queries")
SHOTS_PER_PILL = 5  # gallery rows per label in the device-step bundle, as enrollment makes them


def _load_crops(root: pathlib.Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    path = root / "data/prepared" / f"{name}.npz"
    if not path.exists():
        raise SystemExit(f"error: {path} is missing: run `dvc repro` first (the prepare stage writes it)")
    with np.load(path, allow_pickle=False) as split:
        return split["pixels"], split["sources"]


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _microseconds(samples: list[float]) -> dict:
    values = np.asarray(samples) * 1e6
    return {"median_us": float(np.median(values)), "p95_us": float(np.percentile(values, 95))}


def _milliseconds(samples: list[float]) -> dict:
    values = np.asarray(samples) * 1e3
    return {"median_ms": float(np.median(values)), "p95_ms": float(np.percentile(values, 95))}


def gallery_of_size(base: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` unit vectors: the real embeddings, then perturbed copies of them."""
    repeats = int(np.ceil(size / len(base)))
    tiled = np.concatenate([base] * repeats)[:size].copy()
    noise = rng.normal(0.0, 0.05 / np.sqrt(base.shape[1]), tiled.shape)
    noise[: len(base)] = 0.0
    return _unit(tiled + noise)


def _agreement(found_distances: np.ndarray, exact_distances: np.ndarray) -> float:
    return float(np.mean(found_distances <= exact_distances + 1e-5))


def _exact_best(embeddings: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Best cosine distance of each (unit) query to the (unit) embeddings."""
    best = np.empty(len(queries), np.float32)
    for start in range(0, len(queries), 256):
        best[start:start + 256] = 1.0 - (queries[start:start + 256] @ embeddings.T).max(axis=1)
    return best


def measure_annoy(embeddings, tuning, queries, exact, trees, seed, target) -> dict:
    started = time.perf_counter()
    index = gallery.build_index(embeddings, trees, seed)
    build = time.perf_counter() - started
    search_k = gallery.search_k_for_size(len(embeddings), trees)
    smallest = gallery.choose_search_k(embeddings, trees, target, seed, queries=tuning)
    labels = [str(row) for row in range(len(embeddings))]
    rows_per_label = gallery.most_rows_per_label(labels)
    found, latencies = [], []
    for query in queries:
        start = time.perf_counter()
        matches = gallery.search(index, labels, query, 1, search_k, rows_per_label)
        latencies.append(time.perf_counter() - start)
        found.append(matches[0].distance)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "index.ann")
        index.save(path)
        size = os.path.getsize(path)
    index.unload()
    return {"library": "annoy", "gallery_size": len(embeddings),
            "top1_agreement": _agreement(np.array(found), exact), **_microseconds(latencies),
            "build_s": build, "index_bytes": size,
            "params": {"trees": trees, "search_k": search_k, "search_k_rule": "gallery.search_k_for_size",
                       "smallest_search_k_for_target": smallest, "target_agreement": target,
                       "seed": seed, "call": "gallery.search(top_k=1)"}}


def measure_exact(embeddings, queries, exact) -> dict:
    started = time.perf_counter()
    unit = np.ascontiguousarray(_unit(embeddings))
    build = time.perf_counter() - started
    found, latencies = [], []
    for query in queries:
        start = time.perf_counter()
        similarities = unit @ query
        best = int(np.argmax(similarities))
        latencies.append(time.perf_counter() - start)
        found.append(1.0 - similarities[best])
    return {"library": "exact", "gallery_size": len(embeddings),
            "top1_agreement": _agreement(np.array(found), exact), **_microseconds(latencies),
            "build_s": build, "index_bytes": int(unit.nbytes),
            "params": {"method": "numpy float32 unit-vector matrix-vector product, argmax"}}


def measure_usearch(embeddings, tuning, tuning_exact, queries, exact, target, seed) -> dict:
    from usearch.index import Index

    connectivity, expansion_add = 16, 128
    index = Index(ndim=embeddings.shape[1], metric="cos", dtype="f32", connectivity=connectivity,
                  expansion_add=expansion_add)
    keys = np.arange(len(embeddings), dtype=np.uint64)
    started = time.perf_counter()
    index.add(keys, embeddings, threads=1)
    build = time.perf_counter() - started

    def best_distances(vectors):
        return np.array([index.search(vector, 1).distances[0] for vector in vectors])

    expansion = 16
    index.expansion_search = expansion
    while _agreement(best_distances(tuning), tuning_exact) < target and expansion < 4096:
        expansion *= 2
        index.expansion_search = expansion
    found, latencies = [], []
    for query in queries:
        start = time.perf_counter()
        matches = index.search(query, 1)
        latencies.append(time.perf_counter() - start)
        found.append(float(matches.distances[0]))
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "index.usearch")
        index.save(path)
        size = os.path.getsize(path)
    import usearch

    return {"library": "usearch", "gallery_size": len(embeddings),
            "top1_agreement": _agreement(np.array(found), exact), **_microseconds(latencies),
            "build_s": build, "index_bytes": size,
            "params": {"version": usearch.__version__, "index": "HNSW", "metric": "cos", "dtype": "f32",
                       "connectivity": connectivity, "expansion_add": expansion_add,
                       "expansion_search": expansion, "threads": 1, "target_agreement": target}}


def measure_device_step(loaded, root, embeddings, photo_sources, frames, threads, seed) -> dict:
    """Per-stage timings of `Identifier.identify_image` on raw photos, with a bundle holding
    `embeddings` (SHOTS_PER_PILL rows per label) and the search_k the device sets for its size."""
    labels = [f"pill_{row // SHOTS_PER_PILL}" for row in range(len(embeddings))]
    search_k = gallery.search_k_for_size(len(embeddings), loaded.annoy_trees)
    photos = [read_image(root / "data/synthetic" / source, loaded.preprocess.max_image_pixels)
              for source in photo_sources[:frames]]
    stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
    without_localise, totals = [], []
    with tempfile.TemporaryDirectory() as directory:
        bundle_module.write_bundle(directory, loaded.model_path, embeddings, labels,
                                   threshold=loaded.unknown_threshold, preprocess=loaded.preprocess,
                                   annoy_trees=loaded.annoy_trees, search_k=search_k, seed=seed,
                                   lookalike_margin=loaded.lookalike_margin)
        identifier = Identifier.open(directory, threads=threads)
        identifier.warm_up()
        for photo in photos:
            result = identifier.identify_image(photo)
            if result.label is None:  # no pill found: the later stages did not run
                continue
            for stage in STAGES:
                stages[stage].append(result.timings[stage])
            without_localise.append(sum(result.timings[stage] for stage in STAGES if stage != "localise"))
            totals.append(sum(result.timings.values()))
    if not totals:
        raise SystemExit("error: no pill was found in any photo timed for the device step")
    return {"gallery_size": len(embeddings), "frames": len(totals), "photos": len(photos),
            "photo_size": list(photos[0].shape[:2]), "threads": threads, "search_k": search_k,
            "annoy_trees": loaded.annoy_trees, "rows_per_label": SHOTS_PER_PILL,
            "stages": {stage: _milliseconds(values) for stage, values in stages.items()},
            "total_without_localise": _milliseconds(without_localise), "total": _milliseconds(totals)}


def _machine(runtime: str) -> dict:
    import annoy  # noqa: F401  (its version is in the distribution metadata)
    from importlib import metadata

    facts = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
             "cpu_count": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
             "annoy": metadata.version("annoy"), "interpreter_runtime": runtime}
    try:
        facts["usearch"] = metadata.version("usearch")
    except metadata.PackageNotFoundError:
        pass
    if hasattr(os, "getloadavg"):
        facts["load_average_1_5_15min"] = [round(value, 2) for value in os.getloadavg()]
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default=str(ROOT / "bundle"), metavar="DIR")
    parser.add_argument("--data-root", default=str(ROOT), metavar="DIR",
                        help="project folder holding data/prepared/ and data/synthetic/ (default: this one)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--frames", type=int, default=300, help="photos timed for the device step")
    parser.add_argument("--queries", type=int, default=500,
                        help="query crops measured per gallery (as many again tune search_k / expansion_search)")
    parser.add_argument("--device-gallery", type=int, default=10000, help="gallery size of the device step")
    parser.add_argument("--libraries", nargs="+", default=["annoy", "exact", "usearch"],
                        choices=["annoy", "exact", "usearch"])
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads in the device step")
    parser.add_argument("--target", type=float, default=0.99, help="top-1 agreement to tune for")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=str(ROOT / "reports/edge_benchmark.json"), metavar="FILE")
    arguments = parser.parse_args()
    if min(arguments.sizes) < 1 or arguments.frames < 1 or arguments.queries < 1:
        parser.error("--sizes, --frames and --queries must be positive")
    root = pathlib.Path(arguments.data_root)
    rng = np.random.default_rng(arguments.seed)
    loaded = bundle_module.load_bundle(arguments.bundle)
    model = interpreter.make_interpreter(loaded.model_path, threads=1)
    base = _unit(np.concatenate([interpreter.embed(model, _load_crops(root, name)[0], loaded.preprocess.symmetry_views) for name in GALLERY_SPLITS]))
    query_pixels, query_sources = _load_crops(root, "queries")
    if len(query_pixels) < 2:
        raise SystemExit("error: the query split has fewer than 2 crops")
    count = min(arguments.queries, len(query_pixels) // 2)
    order = rng.permutation(len(query_pixels))
    queries = _unit(interpreter.embed(model, query_pixels[order[:count]], loaded.preprocess.symmetry_views))
    tuning = _unit(interpreter.embed(model, query_pixels[order[count:2 * count]], loaded.preprocess.symmetry_views))
    trees = loaded.annoy_trees
    print(f"{len(base)} real embeddings, {count} queries, {count} tuning queries; Annoy {trees} trees",
          flush=True)

    report: dict = {"search": []}
    for size in arguments.sizes:
        embeddings = gallery_of_size(base, size, rng)
        exact, tuning_exact = _exact_best(embeddings, queries), _exact_best(embeddings, tuning)
        for library in arguments.libraries:
            if library == "annoy":
                row = measure_annoy(embeddings, tuning, queries, exact, trees, arguments.seed, arguments.target)
            elif library == "exact":
                row = measure_exact(embeddings, queries, exact)
            else:
                row = measure_usearch(embeddings, tuning, tuning_exact, queries, exact, arguments.target,
                                      arguments.seed)
            report["search"].append(row)
            print(f"gallery {size:>7} {library:<8} top-1 agreement {row['top1_agreement']:.3f}, "
                  f"{row['median_us']:7.1f} us median, {row['p95_us']:7.1f} us p95, build {row['build_s']:6.2f} s, "
                  f"index {row['index_bytes'] / 1e6:6.2f} MB  {json.dumps(row['params'])}", flush=True)

    device_size = arguments.device_gallery
    embeddings = gallery_of_size(base, device_size, rng)
    step = measure_device_step(loaded, root, embeddings, query_sources[order], arguments.frames,
                               arguments.threads, arguments.seed)
    report["device_step"] = step
    report["machine"] = _machine(interpreter.runtime_name())
    print(f"device step, gallery {device_size}, {step['frames']} photos of {step['photo_size'][1]}x"
          f"{step['photo_size'][0]} px, {arguments.threads} interpreter thread(s):")
    for name, values in [*step["stages"].items(), ("without loc.", step["total_without_localise"]),
                         ("total", step["total"])]:
        print(f"  {name:<12} median {values['median_ms']:.3f} ms, p95 {values['p95_ms']:.3f} ms")
    out = pathlib.Path(arguments.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    part.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(part, out)


if __name__ == "__main__":
    main()
