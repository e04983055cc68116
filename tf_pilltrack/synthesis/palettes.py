"""What pills and the surfaces they lie on are made of: colour tables with their
frequencies, shapes, fonts, logos, inks, surface palettes (sRGB and CIE Lab), and drawing a
name by weight."""

from __future__ import annotations

import cv2
import numpy as np

# Family descriptions draw from default_rng([seed, FAMILY_STREAM, family]); photos from
# default_rng([seed, class, image]) with class < MAX_CLASSES, so the two never share a stream.
FAMILY_STREAM = 0x5049_4C4C  # "PILL"

# --- pill bodies -------------------------------------------------------------------------------

# Tablet colours (sRGB) and how often they occur; white and off-white dominate as in real life.
TABLET_COLOURS = {
    "white": ((246, 246, 243), 0.22),
    "off-white": ((236, 228, 206), 0.10),
    "light-yellow": ((246, 232, 160), 0.05),
    "yellow": ((240, 206, 84), 0.07),
    "peach": ((246, 196, 160), 0.05),
    "pink": ((240, 168, 186), 0.08),
    "orange": ((236, 132, 56), 0.07),
    "red": ((192, 46, 50), 0.05),
    "light-blue": ((160, 196, 232), 0.06),
    "blue": ((62, 104, 192), 0.07),
    "green": ((92, 166, 110), 0.07),
    "brown": ((138, 90, 56), 0.05),
    "purple": ((146, 104, 174), 0.06),
}
# Capsule shells add dark colours; two halves of different colours are the common case.
CAPSULE_COLOURS = {
    **{name: value for name, value in TABLET_COLOURS.items()},
    "navy": ((40, 54, 112), 0.06),
    "maroon": ((126, 32, 48), 0.06),
    "dark-green": ((30, 98, 62), 0.05),
    "grey": ((150, 152, 156), 0.04),
}
SHAPES = {
    "round": 0.26,
    "oval": 0.15,
    "oblong": 0.15,
    "capsule": 0.16,
    "hexagon": 0.05,
    "pentagon": 0.05,
    "triangle": 0.05,
    "diamond": 0.04,
    "square": 0.05,
    "octagon": 0.04,
}
FONTS = {
    "simplex": cv2.FONT_HERSHEY_SIMPLEX,
    "duplex": cv2.FONT_HERSHEY_DUPLEX,
    "triplex": cv2.FONT_HERSHEY_TRIPLEX,
    "complex": cv2.FONT_HERSHEY_COMPLEX,
}
LOGOS = ("ring", "triangle", "heart", "star", "plus", "crescent", "diamond", "wave", "arrow")
LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"
STRENGTHS = ("1", "2", "4", "5", "8", "10", "12", "15", "20", "25", "30", "40", "50", "75", "80",
              "100", "150", "200", "250", "300", "500")
INKS = {"black": (28, 28, 30), "dark-blue": (30, 40, 96), "white": (240, 240, 236)}

# --- photo surroundings ------------------------------------------------------------------------

TRAY_COLOURS = (
    (236, 236, 232), (200, 202, 204), (128, 132, 136), (44, 46, 50), (18, 18, 20),
    (52, 92, 170), (26, 52, 104), (60, 140, 96), (30, 88, 70), (40, 130, 140),
    (226, 206, 166), (176, 58, 48), (232, 170, 60), (150, 110, 180),
)
SKIN_COLOURS = (
    (236, 196, 170), (226, 176, 144), (204, 144, 112), (170, 112, 80), (122, 80, 56),
    (86, 56, 40),
)
PAPER_COLOURS = ((246, 246, 242), (240, 236, 224), (232, 232, 236), (226, 214, 190))
CLOTH_COLOURS = (
    (60, 80, 120), (40, 50, 70), (150, 40, 50), (90, 120, 80), (200, 190, 170),
    (120, 120, 124), (70, 60, 56), (180, 150, 110), (30, 30, 34), (170, 90, 120),
)
WOOD_COLOURS = ((204, 164, 114), (170, 120, 76), (130, 84, 52), (96, 62, 40), (222, 196, 156))
BACKGROUNDS = {"tray": 0.34, "skin": 0.2, "paper": 0.16, "cloth": 0.16, "wood": 0.14}

# A background whose colour is closer than this to a pill colour (CIE76 Lab distance) is
# drawn again: a pill the colour of its background would be an unfair photo. Textured
# surfaces need more, their texture hides a pill of a nearby colour.
MIN_BACKGROUND_CONTRAST = {"tray": 26.0, "paper": 28.0, "skin": 30.0, "cloth": 34.0, "wood": 36.0}


def pick(rng: np.random.Generator, weighted: dict) -> str:
    """A key of `weighted` ({name: weight} or {name: (value, weight)}) drawn by weight."""
    table = _PICK_TABLES.get(id(weighted))
    if table is None:
        weights = [v[1] if isinstance(v, tuple) else v for v in weighted.values()]
        table = _PICK_TABLES[id(weighted)] = (list(weighted), np.cumsum(weights) / sum(weights))
    names, cumulative = table
    return names[min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(names) - 1)]


_PICK_TABLES: dict[int, tuple] = {}


def luminance(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE Lab of (N, 3) sRGB colours in 0..255."""
    values = (np.asarray(rgb, np.float32).reshape(1, -1, 3) / 255.0).astype(np.float32)
    return cv2.cvtColor(values, cv2.COLOR_RGB2LAB).reshape(-1, 3)


SURFACES = {"tray": TRAY_COLOURS, "skin": SKIN_COLOURS, "paper": PAPER_COLOURS,
             "cloth": CLOTH_COLOURS, "wood": WOOD_COLOURS}
SURFACE_LAB = {kind: to_lab(np.array(colours, np.float32)) for kind, colours in SURFACES.items()}
