"""Image preprocessing: the one definition shared by training, export, enrollment and the device.

Pixels in, pixels out. `read_image` decodes a file into RGB uint8, `localise` finds the pill,
`choose_box` decides what to crop (the pill, or the whole photo when it is a tight crop already),
`preprocess` crops it to a square model input of uint8 pixels, and `normalise` maps those
pixels to the float range every model is trained on:

    x = pixel * PIXEL_SCALE + PIXEL_OFFSET        (so 0..255 -> -1..1)

An int8 TFLite model then quantises x itself (see `interpreter.py`). Only numpy, OpenCV and
Pillow are used here, so the device client can import it without TensorFlow; the training
package imports it from here.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import os
import warnings
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image, ImageOps

from edge_runtime import limits, storage

PIXEL_SCALE = 1.0 / 127.5
PIXEL_OFFSET = -1.0

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

# The view counts of `symmetric_views`: each a group of the square's symmetries.
VIEW_COUNTS = limits.SYMMETRY_VIEWS

# PreprocessConfig.localise: crop the pill found (True), the whole photo (False), or the pill
# found unless it touches the photo's edge, when the photo is taken to be a tight crop and used
# whole ("auto").
AUTO = "auto"


def is_localise_mode(value) -> bool:
    """Whether `value` is one of the localisation modes: true, false or "auto"."""
    return isinstance(value, bool) or value == AUTO

# Localisation works on a copy whose longer side is at most this many pixels: enough to find a
# pill's outline, cheap enough for every camera frame.
_LOCALISE_SIDE = 160
# Below this colour distance (CIE Lab units) from the background nothing counts as a pill,
# whatever Otsu's threshold says: it stops a plain tray or sheet of paper becoming "a pill".
_MIN_CONTRAST = 10.0


class ImageError(ValueError):
    """An image that cannot be used; the message names the file and the reason."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """The constants of preprocessing; the pipeline reads them from params.yaml and
    writes them into the device bundle, so both sides use the same values."""

    image_size: int
    localise: bool | str  # True, False or AUTO (see `choose_box`)
    min_pill_fraction: float
    max_pill_fraction: float
    crop_margin: float
    max_image_pixels: int
    symmetry_views: int  # symmetric views of each crop embedded and averaged (`symmetric_views`)

    def __post_init__(self):
        if not 8 <= self.image_size <= limits.MAX_IMAGE_SIZE:
            raise ValueError(f"image_size must be within [8, {limits.MAX_IMAGE_SIZE}] pixels, got {self.image_size}")
        if not is_localise_mode(self.localise):
            raise ValueError(f"localise must be true, false or {AUTO!r}, got {self.localise!r}")
        if not 0.0 < self.min_pill_fraction < self.max_pill_fraction <= 1.0:
            raise ValueError(
                "need 0 < min_pill_fraction < max_pill_fraction <= 1, got "
                f"{self.min_pill_fraction} and {self.max_pill_fraction}"
            )
        if not 0.0 <= self.crop_margin <= 1.0:
            raise ValueError(f"crop_margin must be within [0, 1], got {self.crop_margin}")
        if not 1 <= self.max_image_pixels <= limits.MAX_IMAGE_PIXELS:
            raise ValueError(f"max_image_pixels must be within [1, {limits.MAX_IMAGE_PIXELS}], "
                             f"got {self.max_image_pixels}")
        if self.symmetry_views not in VIEW_COUNTS:
            raise ValueError(f"symmetry_views must be one of {VIEW_COUNTS}, got {self.symmetry_views}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "PreprocessConfig":
        names = {field.name for field in dataclasses.fields(cls)}
        missing = sorted(names - set(values))
        unknown = sorted(set(values) - names)
        if missing or unknown:
            raise ValueError(f"preprocessing constants: missing {missing}, unknown {unknown}")
        return cls(**{name: values[name] for name in names})


class Box(NamedTuple):
    """A pill's bounding box in image pixels, right and bottom exclusive."""

    left: int
    top: int
    right: int
    bottom: int


class Crop(NamedTuple):
    pixels: np.ndarray  # (image_size, image_size, 3) uint8 RGB
    box: Box  # where the pill was found in the full image (the whole image when not localising)


# The formats `decode_image` opens, whatever a file's name says: photos' and scans' formats.
# Pillow knows many more (some hand the bytes to other programs, as EPS does to Ghostscript).
# (a camera's multi-picture JPEG, MPO, opens as JPEG).
DECODED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
_PLUGINS = ("BmpImagePlugin", "GifImagePlugin", "JpegImagePlugin", "PngImagePlugin", "TiffImagePlugin",
            "WebPImagePlugin")  # Image.open(formats=...) needs them registered


def decode_image(data: bytes, source: str, max_pixels: int) -> np.ndarray:
    """Decode encoded image bytes into an (H, W, 3) uint8 RGB array.

    EXIF orientation is applied; grayscale, palette, RGBA (composited on white), CMYK and 16-bit
    images are converted. Raises ImageError naming `source` for anything that cannot be used:
    more than limits.MAX_IMAGE_BYTES, a format outside DECODED_FORMATS, images larger than
    `max_pixels` (refused before their pixels are decoded), and any failure of the image library
    on these bytes: a half-supported variant of a format raises IndexError, ZeroDivisionError,
    NotImplementedError and others, and each is this one image's problem, never a batch's.
    The library's warnings are not printed: the ImageError is the one line about the file.
    """
    if not data:
        raise ImageError(source, "empty file")
    if len(data) > limits.MAX_IMAGE_BYTES:
        raise ImageError(source, f"{len(data)} bytes, over the limit of {limits.MAX_IMAGE_BYTES} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            for plugin in _PLUGINS:
                importlib.import_module(f"PIL.{plugin}")
            image = Image.open(io.BytesIO(data), formats=DECODED_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    source, f"{width}x{height} pixels exceeds the limit of {max_pixels} pixels"
                )
            image.load()
            if width < 1 or height < 1:
                raise ImageError(source, f"image has no pixels ({width}x{height})")
            try:
                image = ImageOps.exif_transpose(image)
            except Exception:  # a malformed EXIF block must not lose an otherwise good image
                pass
            return _to_rgb(image, source)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(source, f"refused as a decompression bomb ({shown_error(error)})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(source, "not a readable image (unrecognised format; reads "
                         f"{', '.join(DECODED_FORMATS)})") from None
    except MemoryError:
        raise ImageError(source, "not a readable image (too large to decode in this memory)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(source, f"not a readable image ({shown_error(error)})") from None
    except Exception as error:  # IndexError, ZeroDivisionError, NotImplementedError, struct.error...
        raise ImageError(source, f"not a readable image ({type(error).__name__}: {shown_error(error)})") from None


def shown_error(error: BaseException) -> str:
    """An exception's message for an error line: its first line, cut to limits.MAX_SHOWN_CHARS."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text if len(text) <= limits.MAX_SHOWN_CHARS else text[:limits.MAX_SHOWN_CHARS - 3] + "..."


def read_image(path: str | os.PathLike, max_pixels: int) -> np.ndarray:
    """Read an image file into an (H, W, 3) uint8 RGB array: the one place where the device
    (and the pipeline's `prepare`, for a folder) opens a photo. Only a regular file of at most
    limits.MAX_IMAGE_BYTES is read (a FIFO or a device is refused unopened, never blocks);
    see `decode_image` for the rest. Every problem is an ImageError naming the file."""
    source = os.fspath(path)
    try:
        data = storage.read_regular(source, limits.MAX_IMAGE_BYTES)
    except storage.FileRefused as error:
        raise ImageError(source, error.reason) from None
    except OSError as error:
        raise ImageError(source, f"cannot be read ({error.strerror or shown_error(error)})") from None
    return decode_image(data, source, max_pixels)


def _to_rgb(image: Image.Image, source: str) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        high = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        gray = np.clip(np.round(values * (255.0 / high)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    try:
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as error:
        raise ImageError(source, f"cannot convert {mode} pixels to RGB ({error})") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(source, f"unexpected pixel layout {rgb.shape}")
    return np.ascontiguousarray(rgb)


def _colour_distance(planes: list, reference: list) -> np.ndarray:
    """Each pixel's Euclidean distance from the colour `reference`, given one float32 array per
    channel: the same float32 operations in the same order as
    np.linalg.norm(pixels - reference, axis=-1) on the (..., 3) array, so the same bits."""
    total = None
    for plane, value in zip(planes, reference):
        difference = plane - value
        square = difference * difference
        total = square if total is None else total + square
    return np.sqrt(total)


def localise(rgb: np.ndarray, config: PreprocessConfig) -> Box | None:
    """Find the pill: the largest blob whose colour stands out from the image border.

    The background colour is the median of a strip along the border; each pixel's CIE Lab
    distance from it is thresholded with Otsu's method (never below a minimum contrast), and
    the largest connected blob within the configured area limits is the pill. Returns None
    when there is no such blob ("no pill found").
    """
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
    lab = cv2.cvtColor(cv2.GaussianBlur(small, (3, 3), 0), cv2.COLOR_RGB2LAB)
    # One float32 plane per Lab channel: numpy reduces whole planes far faster than the short
    # channel axis of an (H, W, 3) array, and the arithmetic is the same, so are the results.
    planes = [plane.astype(np.float32) for plane in cv2.split(lab)]
    strip = max(1, round(0.06 * min(small.shape[:2])))
    border = [
        np.concatenate(
            [
                plane[:strip].reshape(-1),
                plane[-strip:].reshape(-1),
                plane[:, :strip].reshape(-1),
                plane[:, -strip:].reshape(-1),
            ]
        )
        for plane in planes
    ]
    background = [np.median(values) for values in border]
    distance = _colour_distance(planes, background)
    # Reference: a pixel at the border's 90th percentile distance is still background
    # (textured cloth, a lighting gradient); the pill must stand out beyond that.
    border_spread = np.percentile(_colour_distance(border, background), 90)
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


def touches_edge(box: Box, width: int, height: int) -> bool:
    """Whether a pill's box reaches the edge of its (width x height) image: a pill cut off by
    the frame, or a photo that is a tight crop already. A tight crop's border is pill, not
    background, so the localiser finds a part of the pill there, at the edge (most of the
    shipped real crops, few synthetic photos: docs/results.md); localisation AUTO uses such photos whole."""
    return box.left <= 0 or box.top <= 0 or box.right >= width or box.bottom >= height


def choose_box(rgb: np.ndarray, config: PreprocessConfig) -> tuple[Box, float] | None:
    """What to crop from an RGB image, and the margin to add around it: the pill `localise`
    finds (with the configured margin), or the whole image (no margin) when localisation is
    off. With localisation AUTO, a pill found touching the image's edge means a photo cropped
    to its pill already, whose border is pill, not background: the localiser found a part of
    it, so the whole image is used (real pill crops score about as well as used whole, and far
    better than localised; docs/results.md).
    None means "no pill found"."""
    height, width = rgb.shape[:2]
    whole = Box(0, 0, width, height)
    if not config.localise:
        return whole, 0.0
    box = localise(rgb, config)
    if box is None:
        return None
    if config.localise == AUTO and touches_edge(box, width, height):
        return whole, 0.0
    return box, config.crop_margin


def crop_square(rgb: np.ndarray, box: Box, margin: float, size: int) -> np.ndarray:
    """Cut a square around `box` (plus `margin` of its longer side), pad with the edge pixels
    where it leaves the image, and resize to size x size."""
    side = max(box.right - box.left, box.bottom - box.top)
    side = max(1, int(round(side * (1.0 + 2.0 * margin))))
    centre_x = (box.left + box.right) / 2.0
    centre_y = (box.top + box.bottom) / 2.0
    left = int(round(centre_x - side / 2.0))
    top = int(round(centre_y - side / 2.0))
    height, width = rgb.shape[:2]
    pad = max(0, -left, -top, left + side - width, top + side - height)
    if pad:
        rgb = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        left += pad
        top += pad
    square = rgb[top:top + side, left:left + side]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(square, (size, size), interpolation=interpolation))


def check_rgb(rgb: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")


def preprocess(rgb: np.ndarray, config: PreprocessConfig) -> Crop | None:
    """The model input for one image: what `choose_box` chooses (the localised pill, or the
    whole image) as a square uint8 RGB crop. None means "no pill found"."""
    check_rgb(rgb)
    chosen = choose_box(rgb, config)
    if chosen is None:
        return None
    box, margin = chosen
    return Crop(crop_square(rgb, box, margin, config.image_size), box)


# np.rot90's quarter turns (k = 1, 2, 3 on the image axes) by OpenCV: a third of numpy's copy time.
_TURNS = {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_CLOCKWISE}


def _each(pixels: np.ndarray, transform) -> np.ndarray:
    return np.stack([transform(crop) for crop in pixels]) if len(pixels) else pixels


def _turn(pixels: np.ndarray, quarter_turns: int) -> np.ndarray:
    if quarter_turns == 0:
        return pixels
    return _each(pixels, lambda crop: cv2.rotate(crop, _TURNS[quarter_turns]))


def symmetric_views(pixels: np.ndarray, count: int) -> list[np.ndarray]:
    """Crops (N, S, S, 3) seen `count` ways, each set a group of the square's symmetries: 1 as
    they are, 2 also turned half way, 4 in the four quarter turns, 8 those and their mirror
    images. A pill lies any way up, so the average of a model's embeddings over such a group is
    the same whichever way up it lies (exactly, for the group's turns), and steadier than one
    view's: the device and enrollment embed each crop this way (`interpreter.embed`)."""
    if count not in VIEW_COUNTS:
        raise ValueError(f"views must be one of {VIEW_COUNTS}, got {count}")
    turns = (0,) if count == 1 else (0, 2) if count == 2 else (0, 1, 2, 3)
    views = [_turn(pixels, turn) for turn in turns]
    if count == 8:
        views += [_each(view, lambda crop: cv2.flip(crop, 1)) for view in views]
    return [np.ascontiguousarray(view) for view in views]


def normalise(pixels):
    """Map uint8 pixels to the models' float input range. Works on numpy arrays and on
    TensorFlow tensors alike (plain arithmetic), so tf.data pipelines use it too."""
    return pixels * PIXEL_SCALE + PIXEL_OFFSET
