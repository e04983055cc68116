"""A pill face drawn once per type: albedo, alpha, surface normals and outline, with the
imprint (debossed or printed text, logos) and score lines."""

from __future__ import annotations

import math
from typing import NamedTuple

import cv2
import numpy as np

from tf_pilltrack.synthesis.palettes import FONTS


class Face(NamedTuple):
    """A pill face drawn once per type, long axis along x, at `length` pixels."""

    premultiplied_albedo: tuple  # three (P, P) float32 planes: red, green, blue times alpha
    alpha: np.ndarray  # (P, P) float32
    normals: tuple  # three (P, P) float32 planes: x, y, z of the unit surface normals
    outline: np.ndarray  # (N, 1, 2) float32 outline points, for placement
    length: float


def draw_face(pill_type: dict, which: str, length: float) -> Face:
    shape = pill_type["shape"]
    width = length * pill_type["aspect"]
    side = int(math.ceil(length * 1.08)) + 8
    centre = side / 2.0
    outline, core_centre = _outline(shape, length, width, centre)
    mask = np.zeros((side, side), np.uint8)
    cv2.fillPoly(mask, [np.round(outline * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    alpha = mask.astype(np.float32) * (1.0 / 255.0)
    inside = (mask > 127).astype(np.uint8)
    distance = cv2.distanceTransform(inside, cv2.DIST_L2, 5)

    # Height field: a rounded edge (a full half-cylinder for capsules) plus a gentle dome.
    capsule = shape == "capsule"
    bevel = width / 2.0 if capsule else max(2.0, 0.16 * width)
    edge = np.clip(distance / bevel, 0.0, 1.0)
    height = bevel * np.sqrt(1.0 - (1.0 - edge) ** 2) * (1.0 if capsule else 0.6)
    peak = max(float(distance.max()), 1.0)
    height += pill_type["dome"] * width * (1.0 - (1.0 - distance / peak) ** 2)

    albedo = np.empty((side, side, 3), np.float32)
    colours = np.array(pill_type["rgb"], np.float32) / 255.0
    albedo[:] = colours[0]
    groove = np.zeros((side, side), np.uint8)  # debossed marks: imprint and score lines
    ink = np.zeros((side, side), np.uint8)  # printed marks
    if capsule:
        split = int(round(centre + pill_type["capsule_split"] * length))
        albedo[:, split:] = colours[1]
        cv2.line(groove, (split, 0), (split, side), 110, max(1, int(round(0.012 * length))))
    imprint = pill_type[which]
    scored = pill_type["score"] != "none" and pill_type["score_face"] == which
    marks = ink if pill_type["imprint_style"] == "printed" else groove
    stroke = max(1.0, 0.05 * min(width, length) * pill_type["weight"])
    cx, cy = core_centre
    if capsule:
        # printed on one half, centred on it
        half = -1 if pill_type["capsule_split"] >= 0 else 1
        box_centre = (cx + half * 0.24 * length, cy)
        box = (0.36 * length, 0.5 * width)
    elif shape in ("oval", "oblong"):
        box_centre, box = (cx, cy), (0.6 * length, 0.42 * width)
    elif shape == "round":
        box_centre, box = (cx, cy), (0.6 * length, 0.3 * length)
    else:
        box_centre, box = (cx, cy), (0.5 * width, 0.3 * width)
    if scored:
        score_width = max(2, int(round(0.04 * length)))
        reach = int(side)
        cv2.line(groove, (int(round(cx)), -reach), (int(round(cx)), 2 * reach), 255, score_width,
                 cv2.LINE_AA)
        if pill_type["score"] == "cross":
            cv2.line(groove, (-reach, int(round(cy))), (2 * reach, int(round(cy))), 255,
                     score_width, cv2.LINE_AA)
    if imprint["kind"] == "text":
        text = imprint["text"]
        if scored and pill_type["score"] == "line" and len(text) >= 2:
            cut = (len(text) + 1) // 2
            offset = 0.24 * box[0] / 0.6 if shape == "round" else 0.22 * length
            small = (box[0] * 0.4, box[1] * (1.3 if shape == "round" else 1.0))
            _draw_text(marks, text[:cut], (cx - offset, cy), small, pill_type)
            _draw_text(marks, text[cut:], (cx + offset, cy), small, pill_type)
        elif scored and pill_type["score"] == "cross":
            _draw_text(marks, text, (cx, cy - 0.25 * width), (box[0] * 0.5, box[1] * 0.55),
                       pill_type)
        else:
            _draw_text(marks, text, box_centre, box, pill_type)
    elif imprint["kind"] == "logo":
        logo_box = min(box[0], box[1] * 1.6)
        if scored:
            logo_box *= 0.6
            box_centre = (cx - 0.25 * length, cy) if shape != "round" else (cx - 0.22 * length, cy)
        _draw_logo(marks, imprint["logo"], box_centre, logo_box, stroke)

    if groove.any():
        carved = cv2.GaussianBlur(groove.astype(np.float32) * (1.0 / 255.0), (0, 0),
                                  max(0.6, 0.35 * stroke))
        carved *= alpha
        height -= 0.9 * stroke * carved
        albedo *= (1.0 - 0.22 * carved)[:, :, None]
    if ink.any():
        mix = (ink.astype(np.float32) * (1.0 / 255.0) * alpha)[:, :, None]
        ink_colour = np.array(pill_type["ink_rgb"], np.float32) / 255.0
        albedo = albedo * (1.0 - mix) + ink_colour * mix

    gx = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    np.clip(gx, -4.0, 4.0, out=gx)
    np.clip(gy, -4.0, 4.0, out=gy)
    norm = 1.0 / np.sqrt(gx * gx + gy * gy + 1.0)
    premultiplied = albedo * alpha[:, :, None]
    return Face(
        premultiplied_albedo=tuple(np.ascontiguousarray(premultiplied[:, :, c]) for c in range(3)),
        alpha=alpha,
        normals=(-gx * norm, -gy * norm, norm),
        outline=outline.reshape(-1, 1, 2).astype(np.float32),
        length=length,
    )


def _outline(shape: str, length: float, width: float, centre: float):
    """The outline polygon (float (N, 2)) of a shape whose bounding box, length x width, is
    centred on (centre, centre), and the point its imprint is centred on."""
    if shape in ("round", "oval"):
        angles = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        points = np.stack([centre + length / 2 * np.cos(angles),
                           centre + width / 2 * np.sin(angles)], axis=1)
        return points, (centre, centre)
    if shape == "capsule":
        radius = width / 2.0
        core = np.array([[-1.0, 0.0], [1.0, 0.0]]) * (length / 2 - radius)
    elif shape == "oblong":
        radius = 0.38 * width
        core = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
        core *= [length / 2 - radius, width / 2 - radius]
    else:
        sides, start, rounding = {
            "triangle": (3, 0.0, 0.2),
            "pentagon": (5, 0.0, 0.12),
            "hexagon": (6, 0.0, 0.08),
            "octagon": (8, np.pi / 8, 0.07),
            "diamond": (4, 0.0, 0.12),
            "square": (4, np.pi / 4, 0.15),
        }[shape]
        radius = rounding * width
        angles = start + np.arange(sides) * 2 * np.pi / sides
        core = np.stack([np.cos(angles), np.sin(angles)], axis=1)
        low, high = core.min(axis=0), core.max(axis=0)
        core = (core - (low + high) / 2) / (high - low)  # unit box centred on the origin
        core *= [length - 2 * radius, width - 2 * radius]
    circle = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    disc = np.stack([np.cos(circle), np.sin(circle)], axis=1) * radius
    points = (core[:, None, :] + disc[None, :, :]).reshape(-1, 2).astype(np.float32)
    hull = cv2.convexHull(points).reshape(-1, 2) + centre
    if shape in ("triangle", "pentagon"):
        # imprint at the centroid of the vertices, not the box centre
        imprint_centre = (centre + float(core[:, 0].mean()), centre + float(core[:, 1].mean()))
    else:
        imprint_centre = (centre, centre)
    return hull.astype(np.float64), imprint_centre


def _draw_text(canvas: np.ndarray, text: str, centre, box, pill_type: dict):
    font = FONTS[pill_type["font"]]
    (reference_width, reference_height), _ = cv2.getTextSize(text, font, 1.0, 2)
    scale = min(box[0] / max(reference_width, 1), box[1] / max(reference_height, 1))
    thickness = max(1, int(round(2.0 * scale * pill_type["weight"])))
    (text_width, text_height), _ = cv2.getTextSize(text, font, scale, thickness)
    origin = (int(round(centre[0] - text_width / 2)), int(round(centre[1] + text_height / 2)))
    cv2.putText(canvas, text, origin, font, scale, 255, thickness, cv2.LINE_AA)


def _draw_logo(canvas: np.ndarray, logo: str, centre, size: float, stroke: float):
    cx, cy = centre
    r = size / 2.0
    thickness = max(1, int(round(stroke)))
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)

    def poly(points, closed=True, fill=False):
        pts = [np.round(np.asarray(points) * 16).astype(np.int32)]
        if fill:
            cv2.fillPoly(canvas, pts, 255, cv2.LINE_AA, shift=4)
        else:
            cv2.polylines(canvas, pts, closed, 255, thickness, cv2.LINE_AA, shift=4)

    if logo == "ring":
        poly(np.stack([cx + 0.85 * r * np.cos(t), cy + 0.85 * r * np.sin(t)], 1))
    elif logo == "triangle":
        a = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        poly(np.stack([cx + r * np.cos(a), cy + 0.1 * r + r * np.sin(a)], 1))
    elif logo == "heart":
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        poly(np.stack([cx + x * r / 17, cy + y * r / 17], 1), fill=True)
    elif logo == "star":
        a = -np.pi / 2 + np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, r, 0.42 * r)
        poly(np.stack([cx + radius * np.cos(a), cy + radius * np.sin(a)], 1), fill=True)
    elif logo == "plus":
        w = 0.28 * r
        poly([[cx - w, cy - r], [cx + w, cy - r], [cx + w, cy + r], [cx - w, cy + r]], fill=True)
        poly([[cx - r, cy - w], [cx + r, cy - w], [cx + r, cy + w], [cx - r, cy + w]], fill=True)
    elif logo == "crescent":
        outer = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
        poly(outer, fill=True)
        hole = np.zeros_like(canvas)
        cv2.fillPoly(hole, [np.round((outer + [0.45 * r, -0.15 * r]) * 16).astype(np.int32)],
                     255, cv2.LINE_AA, shift=4)
        np.subtract(canvas, np.minimum(canvas, hole), out=canvas)
    elif logo == "diamond":
        poly([[cx, cy - r], [cx + 0.7 * r, cy], [cx, cy + r], [cx - 0.7 * r, cy]])
    elif logo == "wave":
        x = np.linspace(-r, r, 32)
        poly(np.stack([cx + x, cy + 0.35 * r * np.sin(x / r * 2 * np.pi)], 1), closed=False)
    elif logo == "arrow":
        poly([[cx - r, cy], [cx + r, cy]], closed=False)
        poly([[cx + 0.3 * r, cy - 0.6 * r], [cx + r, cy], [cx + 0.3 * r, cy + 0.6 * r]],
             closed=False)
