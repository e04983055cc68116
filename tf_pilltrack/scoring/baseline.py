"""A plain baseline with no learning: colour histogram + shape descriptors + nearest neighbour.

Each preprocessed crop is described by (a) a hue/saturation/value histogram of its pill
pixels and (b) the pill outline's aspect ratio, fill ratio (area / box area) and log Hu
moments. The pill pixels are the largest blob differing from the crop's border colour, as in
the localiser. The feature is L2-normalised, so the same cosine search as the models applies.
If the learned models do not beat this clearly, they have learned colour and shape only.
"""

from __future__ import annotations

import cv2
import numpy as np

HUE_BINS, SATURATION_BINS, VALUE_BINS = 12, 4, 4
SHAPE_WEIGHT = 0.5  # weight of the shape block against the colour histogram (both unit length)


def _pill_mask(rgb: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    border = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    distance = np.linalg.norm(lab - np.median(border, axis=0), axis=2)
    scaled = np.clip(distance * (255.0 / max(float(distance.max()), 1e-6)), 0, 255).astype(np.uint8)
    _, mask = cv2.threshold(scaled, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count < 2:
        return np.ones(mask.shape, np.uint8)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == largest).astype(np.uint8)


def describe(rgb: np.ndarray) -> np.ndarray:
    """The baseline feature of one (S, S, 3) uint8 RGB crop."""
    mask = _pill_mask(rgb)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    histogram = cv2.calcHist([hsv], [0, 1, 2], mask, [HUE_BINS, SATURATION_BINS, VALUE_BINS],
                             [0, 180, 0, 256, 0, 256]).ravel()
    histogram /= max(float(np.linalg.norm(histogram)), 1e-12)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outline = max(contours, key=cv2.contourArea)
    (_, _), (width, height), _ = cv2.minAreaRect(outline)
    aspect = min(width, height) / max(width, height, 1e-6)
    fill = float(mask.sum()) / max(width * height, 1e-6)
    hu = cv2.HuMoments(cv2.moments(mask, binaryImage=True)).ravel()
    hu = -np.sign(hu) * np.log10(np.abs(hu) + 1e-30) / 30.0
    shape = np.concatenate([[aspect, min(fill, 1.0)], hu])
    shape /= max(float(np.linalg.norm(shape)), 1e-12)
    feature = np.concatenate([histogram, SHAPE_WEIGHT * shape]).astype(np.float32)
    return feature / np.linalg.norm(feature)


def embed(pixels: np.ndarray) -> np.ndarray:
    """Baseline features of a batch of crops, (N, F), L2-normalised."""
    return np.stack([describe(crop) for crop in pixels]) if len(pixels) else np.zeros((0, 1), np.float32)
