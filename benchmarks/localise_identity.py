"""Check that `preprocessing.localise` finds exactly the boxes of its previous implementation.

`localise` is shared by training and the device, so a faster version must give bit-identical
boxes, or the device would crop differently from the crops the model was trained on. This
script runs the current `localise` and the reference below (the implementation before the
speed-up, commit 2e7a6ca, kept verbatim) on every image given and reports any box that differs:

    python benchmarks/localise_identity.py                 # data/synthetic/*/*.jpg and
                                                            # ../shared/data/pills_real/pushin_pill/*/*.png
    python benchmarks/localise_identity.py 'photos/*/*.jpg' ...

The preprocessing constants (pill area limits) are those of the bundle given with --bundle, else
of the pipeline's bundle/, else the defaults in `_config`. Exits 1 when any box differs or no
image was found.
"""

from __future__ import annotations

import argparse
import glob
import pathlib
import sys
import time

import cv2
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_runtime.preprocessing import (  # noqa: E402
    _LOCALISE_SIDE,
    _MIN_CONTRAST,
    Box,
    PreprocessConfig,
    localise,
    read_image,
)

DEFAULT_PATTERNS = [str(ROOT / "data/synthetic/*/*.jpg"),
                    str(ROOT.parent / "shared/data/pills_real/pushin_pill/*/*.png")]


def reference_localise(rgb: np.ndarray, config: PreprocessConfig) -> Box | None:
    """`localise` as it was before the speed-up (commit 2e7a6ca), verbatim."""
    height, width = rgb.shape[:2]
    scale = min(1.0, _LOCALISE_SIDE / max(height, width))
    small = rgb
    if scale < 1.0:
        small = cv2.resize(
            rgb, (max(1, round(width * scale)), max(1, round(height * scale))),
            interpolation=cv2.INTER_AREA,
        )
    if min(small.shape[:2]) < 8:
        return None
    lab = cv2.cvtColor(cv2.GaussianBlur(small, (3, 3), 0), cv2.COLOR_RGB2LAB).astype(np.float32)
    strip = max(1, round(0.06 * min(small.shape[:2])))
    border = np.concatenate(
        [
            lab[:strip].reshape(-1, 3),
            lab[-strip:].reshape(-1, 3),
            lab[:, :strip].reshape(-1, 3),
            lab[:, -strip:].reshape(-1, 3),
        ]
    )
    background = np.median(border, axis=0)
    distance = np.linalg.norm(lab - background, axis=2)
    border_spread = np.percentile(np.linalg.norm(border - background, axis=1), 90)
    scaled = np.clip(distance * (255.0 / max(distance.max(), 1e-6)), 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    threshold = max(otsu * distance.max() / 255.0, _MIN_CONTRAST, border_spread)
    mask = (distance > threshold).astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel, iterations=2)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count < 2:
        return None
    areas = stats[1:, cv2.CC_STAT_AREA]
    best = int(np.argmax(areas)) + 1
    fraction = areas[best - 1] / float(mask.size)
    if not config.min_pill_fraction <= fraction <= config.max_pill_fraction:
        return None
    left, top, box_width, box_height = stats[best, :4]
    return Box(
        left=int(np.floor(left / scale)),
        top=int(np.floor(top / scale)),
        right=min(width, int(np.ceil((left + box_width) / scale))),
        bottom=min(height, int(np.ceil((top + box_height) / scale))),
    )


def _config(bundle: str | None) -> PreprocessConfig:
    from edge_runtime.bundle import load_bundle

    directory = bundle or (str(ROOT / "bundle") if (ROOT / "bundle/bundle.json").exists() else None)
    if directory:
        return load_bundle(directory, verify_model=False).preprocess
    return PreprocessConfig(image_size=64, localise=True, min_pill_fraction=0.01,
                            max_pill_fraction=0.9, crop_margin=0.15, max_image_pixels=40_000_000, symmetry_views=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("patterns", nargs="*", default=DEFAULT_PATTERNS, help="glob patterns of images")
    parser.add_argument("--bundle", help="take the preprocessing constants from this bundle")
    arguments = parser.parse_args()
    config = _config(arguments.bundle)
    total = differing = found = 0
    seconds = {"reference": 0.0, "current": 0.0}
    for pattern in arguments.patterns:
        paths = sorted(glob.glob(pattern))
        same = 0
        for path in paths:
            rgb = read_image(path, config.max_image_pixels)
            for name, function in (("reference", reference_localise), ("current", localise)):
                start = time.perf_counter()
                box = function(rgb, config)
                seconds[name] += time.perf_counter() - start
                if name == "reference":
                    expected = box
            if box == expected:
                same += 1
            else:
                differing += 1
                print(f"DIFFERENT {path}: reference {expected}, current {box}")
            found += box is not None
        total += len(paths)
        print(f"{pattern}: {len(paths)} images, {same} identical boxes")
    print(f"{total} images, {differing} different boxes ({found} with a pill found); localise took "
          f"{seconds['reference'] / max(total, 1) * 1e3:.3f} ms per image before, "
          f"{seconds['current'] / max(total, 1) * 1e3:.3f} ms now (mean)")
    return 1 if differing or not total else 0


if __name__ == "__main__":
    sys.exit(main())
