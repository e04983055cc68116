"""Pill types: families that share a body (shape, aspect, size, colours, gloss, font) and
differ in imprints and score lines, each family drawn from its own generator."""

from __future__ import annotations

import json

import numpy as np

from tf_pilltrack.synthesis.limits import MAX_CLASSES, check_count
from tf_pilltrack.synthesis.palettes import (
    CAPSULE_COLOURS,
    FAMILY_STREAM,
    FONTS,
    INKS,
    LETTERS,
    LOGOS,
    SHAPES,
    STRENGTHS,
    TABLET_COLOURS,
    luminance,
    pick,
)


def describe_pill_types(classes: int, seed: int) -> list[dict]:
    """The first `classes` pill types for `seed`: a list of JSON-ready dictionaries.

    Types are made family by family, each family from its own generator, so the first N types
    are the same whatever `classes` is.
    """
    check_count("classes", classes, 1, MAX_CLASSES)
    check_count("seed", seed, 0, None)
    classes, seed = int(classes), int(seed)
    types: list[dict] = []
    seen: set[str] = set()
    family = 0
    while len(types) < classes:
        rng = np.random.default_rng([seed, FAMILY_STREAM, family])
        for member in _describe_family(rng, family, seen):
            if len(types) == classes:
                break
            member = {"name": f"pill_{len(types):04d}", **member}
            types.append(member)
        family += 1
    return types


def _describe_family(rng: np.random.Generator, family: int, seen: set[str]) -> list[dict]:
    """One family: a body and 1-3 members that differ only in imprint and score lines."""
    shape = pick(rng, SHAPES)
    capsule = shape == "capsule"
    if shape == "round":
        aspect = 1.0
    elif shape == "oval":
        aspect = rng.uniform(0.55, 0.8)
    elif shape == "oblong":
        aspect = rng.uniform(0.38, 0.56)
    elif capsule:
        aspect = rng.uniform(0.33, 0.45)
    elif shape == "diamond":
        aspect = rng.uniform(0.6, 0.85)
    elif shape == "triangle":
        aspect = rng.uniform(0.9, 1.0)
    else:
        aspect = 1.0
    size = rng.uniform(0.3, 0.39) if capsule else rng.uniform(0.26, 0.37)
    palette = CAPSULE_COLOURS if capsule else TABLET_COLOURS
    colour_names = [pick(rng, palette)]
    if capsule and rng.random() < 0.7:
        other = pick(rng, palette)
        while other == colour_names[0]:
            other = pick(rng, palette)
        colour_names.append(other)
    elif capsule:
        colour_names.append(colour_names[0])
    colours = []
    for name in colour_names:
        spread = 2.0 if name in ("white", "off-white") else 7.0
        base = np.array(palette[name][0], dtype=np.float64)
        colours.append([int(v) for v in np.clip(np.round(base + rng.normal(0, spread, 3)), 0, 255)])
    if capsule and colour_names[0] == colour_names[1]:
        colours[1] = colours[0]
    if capsule:
        gloss = rng.uniform(0.45, 0.9)
        style = "printed"
    else:
        gloss = rng.uniform(0.05, 0.55)
        style = "printed" if rng.random() < 0.18 else "debossed"
    dark = min(luminance(colour) for colour in colours) < 110
    ink = None
    if style == "printed":
        ink = "white" if dark else ("dark-blue" if rng.random() < 0.2 else "black")
    body = {
        "family": f"family_{family:04d}",
        "shape": shape,
        "aspect": round(float(aspect), 3),
        "size": round(float(size), 3),
        "colours": colour_names,
        "rgb": colours,
        "gloss": round(float(gloss), 3),
        "shininess": int(rng.integers(50, 160)),
        "dome": round(float(0.0 if capsule else rng.uniform(0.0, 0.1)), 3),
        "thickness": round(float(1.0 if capsule else rng.uniform(0.25, 0.45)), 3),
        "imprint_style": style,
        "ink": ink,
        "ink_rgb": list(INKS[ink]) if ink else None,
        "font": str(rng.choice(list(FONTS))),
        "weight": round(float(rng.uniform(0.8, 1.3)), 3),
        "capsule_split": round(float(rng.uniform(-0.06, 0.06)), 3) if capsule else None,
    }
    members = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    texts = _family_texts(rng, members)
    logo_front = rng.random() < 0.12
    logos = [str(logo) for logo in rng.permutation(LOGOS)[:members]]
    scored = not capsule and shape != "triangle" and rng.random() < 0.45
    # Most families share the back face and score lines too: then only the front tells them apart.
    shared_back = rng.random() < 0.65
    family_back, family_score = _describe_back(rng, scored)
    out = []
    for index in range(members):
        for attempt in range(20):
            if logo_front and attempt == 0:
                front = {"kind": "logo", "logo": logos[index]}
            else:
                front = {"kind": "text", "text": texts[index]}
            if shared_back:
                back, score = family_back, family_score
            else:
                back, score = _describe_back(rng, scored)
            member = {**body, "front": front, "back": back, **score}
            signature = json.dumps([member[key] for key in sorted(member) if key != "family"])
            if signature not in seen:
                break
            texts[index] = _random_code(rng, int(rng.integers(2, 5)))
        seen.add(signature)
        out.append(member)
    return out


def _describe_back(rng: np.random.Generator, scored: bool) -> tuple[dict, dict]:
    """The back face's imprint and the score lines: ({"kind": ...}, {"score", "score_face"})."""
    roll = rng.random()
    if roll < 0.45:
        back = {"kind": "none"}
    elif roll < 0.8:
        back = {"kind": "text", "text": _random_code(rng, int(rng.integers(1, 4)))}
    else:
        back = {"kind": "logo", "logo": str(rng.choice(LOGOS))}
    score = {"score": "none", "score_face": None}
    if scored and rng.random() < 0.75:
        score = {"score": "cross" if rng.random() < 0.25 else "line",
                 "score_face": "back" if rng.random() < 0.65 else "front"}
    return back, score


def _family_texts(rng: np.random.Generator, count: int) -> list[str]:
    """Distinct front imprints for a family: a shared prefix and different strengths, or
    codes that differ in one or two characters."""
    texts: list[str] = []
    scheme = rng.random()
    prefix = _random_letters(rng, int(rng.choice([0, 1, 1, 2, 2, 3])))
    while len(texts) < count:
        if scheme < 0.55:
            strength = str(rng.choice([s for s in STRENGTHS if len(s) + len(prefix) <= 4]))
            text = prefix + strength
        elif scheme < 0.85 or not texts:
            text = _random_code(rng, int(rng.integers(2, 5)))
        else:  # change one character of the first code: the hardest negatives
            chars = list(texts[0])
            position = int(rng.integers(len(chars)))
            chars[position] = _random_code(rng, 1)
            text = "".join(chars)
        if text not in texts:
            texts.append(text)
    return texts


def _random_letters(rng: np.random.Generator, length: int) -> str:
    return "".join(LETTERS[int(i)] for i in rng.integers(0, len(LETTERS), length))


def _random_code(rng: np.random.Generator, length: int) -> str:
    alphabet = LETTERS + "0123456789"
    return "".join(alphabet[int(i)] for i in rng.integers(0, len(alphabet), length))
