"""Synthetic pill photos: the project's default, embedded data set.

`generate` writes `classes` pill types with `images_per_class` photos each:

    out_dir/pill_0000/pill_0000_000.jpg ...
    out_dir/pill_types.json     what each pill type is (shape, colours, imprint, family ...)
    out_dir/boxes.json          where the pill is in each photo: [left, top, right, bottom]

Pill types differ the way real pills do: shape (round, oval, oblong, two-tone capsule, rounded
polygons), aspect, size, colour and shade, coating gloss, a debossed or printed imprint (text or a
simple logo) on one or both faces and score lines. Types come in *families* that share the whole
body (shape, aspect, size, colours, gloss, font) and differ only in their imprints and score
lines, like the strengths of one medicine: the hard negatives a pill identifier must tell apart.

Each photo is a different shot of its pill, as a phone or Raspberry Pi camera would take it:
either face up, rotated, tilted in perspective, scaled, anywhere in the frame (always wholly
inside it), on a tray, palm, paper, cloth or wood, with a lighting gradient, colour cast, soft
shadow, defocus or motion blur, sensor noise and JPEG compression of random quality. Photos are
rendered at twice their size and reduced with area interpolation.

Output is byte-identical for the same arguments: every photo draws from its own generator,
`numpy.random.default_rng([seed, class_index, image_index])`, and every family from
`default_rng([seed, FAMILY_STREAM, family_index])`, so classes render independently, in any
order and with any number of worker processes. Only numpy, OpenCV and Pillow are used.

Modules: `palettes` (the colour, shape and surface tables), `pill_types` (describing
families of types), `face` (drawing a face), `photo` (a photo of a pill), `generation` (the
data set, rendered in worker processes), `composition` (real reference pills composited into the
same scenes), `limits` (argument bounds).
"""

from tf_pilltrack.synthesis.face import Face
from tf_pilltrack.synthesis.generation import BOXES_FILE, FORMAT_VERSION, TYPES_FILE, generate
from tf_pilltrack.synthesis.limits import MAX_CLASSES, MAX_IMAGES_PER_CLASS, MAX_PHOTO_SIZE, MIN_PHOTO_SIZE
from tf_pilltrack.synthesis.photo import PhotoFacts, render_photo, write_photos
from tf_pilltrack.synthesis.pill_types import describe_pill_types

__all__ = [
    "BOXES_FILE", "FORMAT_VERSION", "MAX_CLASSES", "MAX_IMAGES_PER_CLASS", "MAX_PHOTO_SIZE", "MIN_PHOTO_SIZE",
    "TYPES_FILE", "Face", "PhotoFacts", "describe_pill_types", "generate", "render_photo", "write_photos",
]
