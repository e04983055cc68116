"""Do the evaluation pills appear among the training reference types? For each pill of the real
photo set (`episodes.real_source`), the reference types (`data.reference_source`) whose
composited photos lie nearest to its photos in the teacher's embedding (mean embedding per pill
and per type, cosine similarity), and a contact sheet to check them by eye: per row, photos of
the real pill, then the studio front photo of each nearest type with its similarity.

Run from the project root after `dvc repro teacher`, in the training environment:

    python -m benchmarks.reference_overlap                    # reports/reference_overlap.{json,png}
    python -m benchmarks.reference_overlap --teacher /tmp/t.h5 --nearest 5

A type that is the same product as an evaluation pill must not train; the evaluation's real
figures would otherwise measure recognition of a trained pill. This finds candidates; a person
decides (docs/results.md records what was found).
"""

from __future__ import annotations

import argparse
import json
import pathlib

import cv2
import numpy as np

import tf_pilltrack  # noqa: F401  (first: it sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from edge_runtime.preprocessing import decode_image
from tf_pilltrack.data import dataset, ingestion
from tf_pilltrack.scoring import episodes, evaluation
from tf_pilltrack.training import models
from tf_pilltrack import paths
from tf_pilltrack import params as params_module
from tf_pilltrack import settings

THUMB = 64


def mean_embeddings(embeddings: np.ndarray, labels: np.ndarray) -> tuple[list[str], np.ndarray]:
    names = sorted(set(labels.tolist()))
    means = np.stack([embeddings[labels == name].mean(axis=0) for name in names])
    return names, means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default=str(paths.TEACHER_WEIGHTS))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--nearest", type=int, default=3)
    parser.add_argument("--out", default=str(paths.REPORTS / "reference_overlap"))
    args = parser.parse_args()
    params = params_module.load(args.params)
    every = settings.from_params(params)
    model = models.make_teacher(every.profile, every.teacher)
    model.load_weights(args.teacher)
    views = params["preprocess"]["symmetry_views"]
    config = settings.preprocess_config(params)

    real, _, _ = episodes.load_real(params["episodes"]["real_source"], config)
    real_names, real_means = mean_embeddings(evaluation.embed_keras(model, real.pixels, views), real.labels.astype(str))
    composited = evaluation.concatenate(*(dataset.load_split(name) for name in paths.SPLITS if name != "mix"))
    is_reference = np.char.startswith(composited.labels.astype(str), dataset.REFERENCE_PREFIX)
    composited = dataset.Split(*(field[is_reference] for field in composited))
    type_names, type_means = mean_embeddings(evaluation.embed_keras(model, composited.pixels, views),
                                             composited.labels.astype(str))
    similarity = real_means @ type_means.T

    source = pathlib.Path(params["data"]["reference_source"])
    images, _, _ = ingestion.list_source(source)
    fronts: dict[str, object] = {}
    for image in images:  # the first photo by name of each type: its front in the NLM layout
        fronts.setdefault(image.label, image)
    found, rows = {}, []
    for row, name in enumerate(real_names):
        order = np.argsort(-similarity[row])[:args.nearest]
        nearest = [(type_names[index], float(similarity[row, index])) for index in order]
        found[name] = [{"type": label, "source": label[len(dataset.REFERENCE_PREFIX):].split("~")[0],
                        "similarity": round(value, 4)} for label, value in nearest]
        crops = real.pixels[real.labels.astype(str) == name][:3]
        tiles = [cv2.resize(crop, (THUMB, THUMB)) for crop in crops]
        tiles += [np.zeros((THUMB, THUMB, 3), np.uint8)] * (3 - len(tiles))
        for entry in found[name]:
            image = fronts[entry["source"]]
            tile = cv2.resize(decode_image(image.read(), image.name, params["data"]["max_image_pixels"]),
                              (THUMB, THUMB), interpolation=cv2.INTER_AREA)
            cv2.putText(tile, f"{entry['similarity']:.2f}", (2, THUMB - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                        (255, 255, 0), 1, cv2.LINE_AA)
            tiles.append(tile)
        label = np.zeros((THUMB, 2 * THUMB, 3), np.uint8)
        cv2.putText(label, name[:16], (2, THUMB // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                    cv2.LINE_AA)
        rows.append(np.hstack([label] + tiles))
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(found, indent=1) + "\n")
    cv2.imwrite(str(out.with_suffix(".png")), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))
    for name, entries in found.items():
        print(f"{name:<16} " + ", ".join(f"{entry['source']} {entry['similarity']:.3f}" for entry in entries))
    print(f"contact sheet: {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
