"""One photo of a pill type as a camera would take it (pose, tilt, surface, light, shadow, blur,
noise, JPEG quality), and a folder of them."""

from __future__ import annotations

import math
import pathlib
from typing import Callable, NamedTuple

import cv2
import numpy as np

from tf_pilltrack.synthesis.face import draw_face
from tf_pilltrack.synthesis.limits import MAX_PHOTO_SIZE, MIN_PHOTO_SIZE, check_count
from tf_pilltrack.synthesis.palettes import (
    BACKGROUNDS,
    FAMILY_STREAM,
    MIN_BACKGROUND_CONTRAST,
    pick,
    SURFACE_LAB,
    SURFACES,
    to_lab,
)


class PhotoFacts(NamedTuple):
    """What `render_photo` drew: the pill's box in photo pixels (right and bottom exclusive)."""

    left: int
    top: int
    right: int
    bottom: int


def render_photo(pill_type: dict, photo_size: int, rng: np.random.Generator,
                 cache: dict | None = None) -> tuple[np.ndarray, PhotoFacts, int]:
    """One photo of `pill_type` (an item of `describe_pill_types`), drawn from `rng`:
    (photo_size x photo_size x 3 uint8 RGB, the pill's box, the JPEG quality to save it with).

    `cache` keeps what photos of one pill type share (its drawn faces) between calls: pass the
    same dict for photos of the same type, or None. It never changes the result.
    """
    check_count("photo_size", photo_size, MIN_PHOTO_SIZE, MAX_PHOTO_SIZE)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {rng!r}")
    return _render_photo(pill_type, int(photo_size), rng, {} if cache is None else cache)


# Sensor noise and background grain come from a fixed bank of Gaussian noise, cut at a random
# place for each photo: drawing fresh normal deviates for every pixel would dominate the cost.
_NOISE_BANKS: dict[int, np.ndarray] = {}


def _noise_bank(photo_size: int) -> np.ndarray:
    side = max(512, photo_size) + 128
    bank = _NOISE_BANKS.get(side)
    if bank is None:
        bank = np.random.default_rng([FAMILY_STREAM, side]).standard_normal(
            (side, side, 3), dtype=np.float32)
        _NOISE_BANKS[side] = bank
    return bank


def _noise(rng: np.random.Generator, photo_size: int) -> np.ndarray:
    """A (photo_size, photo_size, 3) view of standard normal noise, cut at a random place."""
    bank = _noise_bank(photo_size)
    top, left = rng.integers(0, bank.shape[0] - photo_size + 1, 2)
    return bank[top:top + photo_size, left:left + photo_size]


def _render_photo(pill_type: dict, photo_size: int, rng: np.random.Generator, cache: dict):
    size = photo_size
    render = 2 * size  # the pill is drawn at twice the size and reduced with area interpolation
    # Every draw happens in a fixed order: the photo depends only on the generator.
    which = "front" if rng.random() < 0.5 else "back"
    scale = rng.uniform(0.86, 1.15)
    rotation = rng.uniform(0.0, 2 * np.pi)
    tilt = rng.uniform(0.0, np.radians(28)) if rng.random() < 0.75 else 0.0
    tilt_axis = rng.uniform(0.0, np.pi)
    focal = render * rng.uniform(1.0, 1.8)
    light_azimuth = rng.uniform(0.0, 2 * np.pi)
    light_elevation = rng.uniform(np.radians(35), np.radians(75))
    ambient = rng.uniform(0.4, 0.6)
    position = rng.random(2)

    # The face is drawn once per type at the largest length a photo may need.
    face_length = pill_type["size"] * 1.15 * render
    key = (which, round(face_length, 3))
    face = cache.get(key)
    if face is None:
        face = cache[key] = draw_face(pill_type, which, face_length)

    # Pose: patch centre to origin, scale, in-plane rotation, tilt, translation (render pixels).
    side = face.alpha.shape[0]
    pixels = pill_type["size"] * scale * render
    s = pixels / face.length
    cos_r, sin_r = math.cos(rotation), math.sin(rotation)
    pose = np.array([[s * cos_r, -s * sin_r, 0.0], [s * sin_r, s * cos_r, 0.0], [0, 0, 1.0]])
    flat = pose @ np.array([[1, 0, -side / 2.0], [0, 1, -side / 2.0], [0, 0, 1.0]])
    turn, _ = cv2.Rodrigues(np.array([tilt * math.cos(tilt_axis), tilt * math.sin(tilt_axis), 0.0]))
    perspective = np.array([
        [focal * turn[0, 0], focal * turn[0, 1], 0.0],
        [focal * turn[1, 0], focal * turn[1, 1], 0.0],
        [turn[2, 0], turn[2, 1], focal],
    ])
    pose = perspective @ flat
    pose /= pose[2, 2]
    corners = cv2.perspectiveTransform(face.outline, pose).reshape(-1, 2)
    # A tilted tablet shows its side: the far face, `thickness` behind the near one, peeps out.
    wall = None
    if tilt > 0.0 and pill_type["shape"] != "capsule":
        depth = pill_type["thickness"] * pill_type["aspect"] * pixels
        perspective[:, 2] += depth * turn[:, 2] * np.array([focal, focal, 1.0])
        wall = perspective @ flat
        wall /= wall[2, 2]
        corners = np.concatenate(
            [corners, cv2.perspectiveTransform(face.outline, wall).reshape(-1, 2)])
    low, high = corners.min(axis=0), corners.max(axis=0)
    margin = 0.04 * render
    free = np.maximum((render - 2 * margin) - (high - low), 0.0)
    shift = margin - low + free * position
    move = np.array([[1, 0, shift[0]], [0, 1, shift[1]], [0, 0, 1.0]])
    pose = move @ pose
    low, high = low + shift, high + shift

    # Shading in the face's own frame: the light turns with the pill.
    azimuth = light_azimuth - rotation
    lx = math.cos(light_elevation) * math.cos(azimuth)
    ly = math.cos(light_elevation) * math.sin(azimuth)
    lz = math.sin(light_elevation)
    hx, hy, hz = lx, ly, lz + 1.0
    norm = math.sqrt(hx * hx + hy * hy + hz * hz)
    hx, hy, hz = hx / norm, hy / norm, hz / norm
    nx, ny, nz = face.normals
    diffuse = nx * lx
    diffuse += ny * ly
    diffuse += nz * lz
    np.maximum(diffuse, 0.0, out=diffuse)
    shade = diffuse
    shade *= (1.0 - ambient) / lz
    shade += ambient
    specular = nx * hx
    specular += ny * hy
    specular += nz * hz
    np.maximum(specular, 0.0, out=specular)
    specular = cv2.pow(specular, pill_type["shininess"])  # much faster than np.power
    specular *= face.alpha
    specular *= pill_type["gloss"] * 0.85
    red, green, blue = face.premultiplied_albedo
    layers = cv2.merge([red * shade + specular, green * shade + specular,
                        blue * shade + specular, face.alpha])

    # Warp only the window around the pill (even-aligned), then halve it.
    left = max(0, (int(low[0]) - 2) & ~1)
    top = max(0, (int(low[1]) - 2) & ~1)
    right = min(render, (int(math.ceil(high[0])) + 3) & ~1)
    bottom = min(render, (int(math.ceil(high[1])) + 3) & ~1)
    window = np.array([[1, 0, -left], [0, 1, -top], [0, 0, 1.0]]) @ pose
    warped = cv2.warpPerspective(layers, window, (right - left, bottom - top),
                                 flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                 borderValue=0)
    pill = cv2.resize(warped, ((right - left) // 2, (bottom - top) // 2),
                      interpolation=cv2.INTER_AREA)
    if wall is not None:  # the side, in the body colour and shaded, behind the near face
        far = cv2.warpPerspective(face.alpha, np.array([[1, 0, -left], [0, 1, -top], [0, 0, 1.0]])
                                  @ move @ wall, (right - left, bottom - top),
                                  flags=cv2.INTER_LINEAR)
        far = cv2.resize(far, ((right - left) // 2, (bottom - top) // 2),
                         interpolation=cv2.INTER_AREA)
        far *= 1.0 - pill[:, :, 3]
        tone = rng.uniform(0.5, 0.8)
        for channel, value in enumerate(pill_type["rgb"][0]):
            pill[:, :, channel] += far * (tone * value / 255.0)
        pill[:, :, 3] += far
    left, top, right, bottom = left // 2, top // 2, right // 2, bottom // 2
    pill_alpha = pill[:, :, 3]

    # Background, far enough in colour from the pill.
    planes = _background(rng, size, pill_type, cache)

    # Soft drop shadow away from the light plus a tight contact shadow, drawn at half size.
    low_size = size // 2
    reach = pixels * rng.uniform(0.05, 0.14) / math.tan(light_elevation)
    offset = -reach * np.array([math.cos(light_azimuth), math.sin(light_azimuth)])
    quarter = np.diag([0.25, 0.25, 1.0])
    moved = quarter @ np.array([[1, 0, offset[0]], [0, 1, offset[1]], [0, 0, 1.0]]) @ pose
    cast = cv2.warpPerspective(face.alpha, moved, (low_size, low_size), flags=cv2.INTER_LINEAR)
    contact = cv2.warpPerspective(face.alpha, quarter @ pose, (low_size, low_size),
                                  flags=cv2.INTER_LINEAR)
    softness = max(0.6, pixels * rng.uniform(0.02, 0.06) / 4)
    shadow = cv2.GaussianBlur(cast, (0, 0), softness)
    shadow *= rng.uniform(0.25, 0.55)
    shadow += 0.35 * cv2.GaussianBlur(contact, (0, 0), max(0.5, pixels * 0.012 / 4))
    np.minimum(shadow, 0.8, out=shadow)
    keep = 1.0 - cv2.resize(shadow, (size, size), interpolation=cv2.INTER_LINEAR)

    # Lighting: a brightness gradient, vignetting, exposure and white balance.
    axis = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    direction = rng.uniform(0, 2 * np.pi)
    strength = rng.uniform(0.0, 0.25)
    vignette = rng.uniform(0.0, 0.25)
    gain_x = strength * math.cos(direction) * axis - vignette * axis * axis
    gain_y = strength * math.sin(direction) * axis - vignette * axis * axis
    exposure = rng.uniform(0.82, 1.12)
    gain = exposure * (1.0 + gain_y[:, None] + gain_x[None, :])
    temperature = rng.normal(0.0, 0.06)
    tint = rng.normal(0.0, 0.025)
    balance = (1.0 + temperature, 1.0 + tint, 1.0 - temperature)

    covered = 1.0 - pill_alpha
    for channel, plane in enumerate(planes):
        plane *= keep
        inside = plane[top:bottom, left:right]
        inside *= covered
        inside += pill[:, :, channel]
        plane *= gain * balance[channel]
    image = cv2.merge(planes)

    # Optics: defocus or motion blur, or none.
    blur = rng.random()
    if blur < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 1.1))
    elif blur < 0.45:
        length = rng.uniform(1.5, 4.0)
        angle = rng.uniform(0, np.pi)
        kernel_side = 2 * int(math.ceil(length / 2)) + 1
        kernel = np.zeros((kernel_side * 4, kernel_side * 4), np.float32)
        middle = kernel_side * 2
        dx, dy = math.cos(angle) * length * 2, math.sin(angle) * length * 2
        cv2.line(kernel, (int(round(middle - dx)), int(round(middle - dy))),
                 (int(round(middle + dx)), int(round(middle + dy))), 1.0, 3, cv2.LINE_AA)
        kernel = cv2.resize(kernel, (kernel_side, kernel_side), interpolation=cv2.INTER_AREA)
        kernel /= kernel.sum()
        image = cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT)

    # Sensor: luminance and colour noise, then 8 bits.
    noise_level = rng.uniform(0.006, 0.03) * 255.0
    chroma = rng.uniform(0.2, 0.6)
    mixing = np.full((3, 3), (1.0 - chroma) / math.sqrt(3.0), np.float32)
    mixing += np.eye(3, dtype=np.float32) * chroma
    noise = cv2.transform(_noise(rng, size), mixing * noise_level)
    image *= 255.0
    image += noise
    image += 0.5
    np.clip(image, 0.0, 255.0, out=image)
    rgb = image.astype(np.uint8)
    quality = int(rng.integers(60, 96))

    rows = np.flatnonzero(pill_alpha.max(axis=1) > 0.5)
    cols = np.flatnonzero(pill_alpha.max(axis=0) > 0.5)
    box = PhotoFacts(left + int(cols[0]), top + int(rows[0]),
                     left + int(cols[-1]) + 1, top + int(rows[-1]) + 1)
    return rgb, box, quality


def _background(rng: np.random.Generator, size: int, pill_type: dict, cache: dict) -> list:
    """Three float32 (size, size) planes of an RGB surface in 0..1 that stands out from the pill."""
    pill_lab = cache.get("lab")
    if pill_lab is None:
        pill_lab = cache["lab"] = to_lab(np.array(pill_type["rgb"], np.float32))
    for _attempt in range(30):
        kind = pick(rng, BACKGROUNDS)
        palette = SURFACES[kind]
        choice = int(rng.integers(len(palette)))
        contrast = np.linalg.norm(pill_lab - SURFACE_LAB[kind][choice], axis=1)
        # every colour of the pill must stand out, and about as much as the others: otherwise
        # a two-tone capsule looks like half a capsule
        if contrast.min() >= max(MIN_BACKGROUND_CONTRAST[kind], 0.7 * contrast.max()):
            base = np.array(palette[choice], np.float64) + rng.normal(0, 5, 3)
            break
    else:  # no luck: the plain grey tray that stands out most
        kind = "tray"
        greys = np.array([[20.0] * 3, [128.0] * 3, [236.0] * 3])
        contrast = [np.linalg.norm(pill_lab - lab, axis=1).min() for lab in to_lab(greys)]
        base = greys[int(np.argmax(contrast))]
    base = np.clip(base, 0, 255) / 255.0

    def smooth(cells: int, amount: float) -> np.ndarray:
        field = rng.standard_normal((cells, cells), dtype=np.float32)
        field *= amount
        return cv2.resize(field, (size, size), interpolation=cv2.INTER_CUBIC)

    def grain(amount: float) -> np.ndarray:
        return _noise(rng, size)[:, :, 0] * amount

    if kind == "tray":
        shade = smooth(3, 0.03)
        shade += 1.0
    elif kind == "paper":
        shade = smooth(4, 0.02)
        shade += grain(0.02)
        shade += 1.0
    elif kind == "skin":
        shade = smooth(3, 0.03)
        shade += grain(0.012)
        shade += 1.0
        creases = np.zeros((size, size), np.uint8)
        for _ in range(int(rng.integers(0, 3))):
            start, bend, end = rng.uniform(0, size, (3, 2))
            u = np.linspace(0, 1, 12)[:, None]
            curve = (1 - u) ** 2 * start + 2 * u * (1 - u) * bend + u ** 2 * end
            cv2.polylines(creases, [np.round(curve * 16).astype(np.int32)], False, 255,
                          max(1, size // 48), cv2.LINE_AA, shift=4)
        creases = cv2.GaussianBlur(creases, (0, 0), size / 80).astype(np.float32)
        shade *= 1.0 - creases * (rng.uniform(0.05, 0.1) / 255.0)
    elif kind == "cloth":
        period = size * rng.uniform(0.025, 0.05)
        angle = rng.uniform(0, np.pi)
        frequency = 2 * np.pi / period
        axis = np.arange(size, dtype=np.float32)
        # sin(f(x cos a + y sin a)) * sin(f(-x sin a + y cos a)), from separable outer products
        a1, b1 = frequency * math.cos(angle) * axis, frequency * math.sin(angle) * axis
        a2, b2 = -frequency * math.sin(angle) * axis, frequency * math.cos(angle) * axis
        warp = np.outer(np.cos(b1), np.sin(a1)) + np.outer(np.sin(b1), np.cos(a1))
        weft = np.outer(np.cos(b2), np.sin(a2)) + np.outer(np.sin(b2), np.cos(a2))
        shade = (warp * weft).astype(np.float32)
        shade *= rng.uniform(0.04, 0.09)
        shade += smooth(4, 0.06)
        shade += grain(0.03)
        shade += 1.0
    else:  # wood: grain streaks along one axis
        streaks = rng.standard_normal((size // 3, 6), dtype=np.float32)
        streaks = cv2.resize(streaks, (size, size), interpolation=cv2.INTER_CUBIC)
        fine = rng.standard_normal((size, 12), dtype=np.float32)
        fine = cv2.resize(fine, (size, size), interpolation=cv2.INTER_LINEAR)
        shade = 0.05 * streaks + 0.03 * fine
        shade += smooth(3, 0.04)
        shade += 1.0
        if rng.random() < 0.5:
            shade = np.ascontiguousarray(shade.T)
    planes = [shade * np.float32(base[0]), shade * np.float32(base[1]), shade * np.float32(base[2])]
    if kind == "skin":
        planes[0] += smooth(5, 0.025 * base[0])  # blotches of redness
    elif kind == "paper" and rng.random() < 0.3:  # ruled paper
        spacing = size * rng.uniform(0.12, 0.2)
        rows = (np.arange(size) + rng.uniform(0, spacing)) % spacing < max(1.0, size / 170)
        planes[0][rows] *= 0.86
        planes[1][rows] *= 0.9
    return planes


def write_photos(staging: pathlib.Path, pill_type: dict, count: int, photo_size: int, faces: dict,
                 generator: Callable[[int], np.random.Generator]) -> dict[str, list[int]]:
    """Render `count` photos of `pill_type` into staging/<name>/, photo i from `generator(i)`;
    `faces` is the renderer's cache of the type's faces (empty: drawn from the description).
    Returns each photo's pill box by file name."""
    folder = staging / pill_type["name"]
    folder.mkdir()
    boxes = {}
    for image_index in range(count):
        rgb, box, quality = _render_photo(pill_type, photo_size, generator(image_index), faces)
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError(
                f"OpenCV could not encode photo {image_index} of {pill_type['name']}")
        name = f"{pill_type['name']}_{image_index:03d}.jpg"
        (folder / name).write_bytes(data.tobytes())
        boxes[f"{pill_type['name']}/{name}"] = list(box)
    return boxes
