"""Compare the classical pill localiser with a tiny learned detector, on the same frames.

The device crops the pill before embedding it and must answer "no pill found" rather than embed
background. `edge_runtime.preprocessing.localise` does this by colour segmentation; this script
measures it against a tiny convolutional detector (objectness + one box) trained here from
scratch, converted to int8 TFLite and run by LiteRT, as a device would run it:

    python benchmarks/localiser_comparison.py                       # defaults: about 6 minutes, 2 cores
    python benchmarks/localiser_comparison.py --train-frames 800 --epochs 4 --test-frames 100

Frames come from the project's own renderer (`tf_pilltrack.synthesis.render_photo`), with pill
types and photo seeds apart from the pipeline's (base.seed 42), and apart between the detector's
training frames (--train-seed) and the test frames (--test-seed). Every frame is JPEG-compressed
at the quality the renderer draws, as the synthetic data set is saved. The detector trains on
photo, wide, close and empty frames of the training seed; the test sets are:

    photo   --photo-size frames as the pipeline renders them (the pill is about a third of the side)
    wide    --wide-size frames of the same scenes with the pill shrunk by U(--wide-pill-scale):
            a larger camera frame in which the pill is smaller and anywhere
    close   --photo-size close-ups: a square around the pill of a --wide-size render, the pill's
            longer side U(--close-fill) of the square's, reduced to --photo-size (the pill near
            the camera, or a tight crop such as the real ones)
    empty   "no pill" frames: a --photo-size square cut from a --wide-size render, away from its
            (small, --empty-pill-scale) pill by --empty-clearance of the pill's longer side, so
            shadow included. Same surfaces, lighting, blur, noise and JPEG as the pill frames,
            with nothing on them; their textures are coarser (the renderer scales a surface's
            pattern with the frame) and their lighting gradient gentler than a photo's
    real    the real tight crops in --real (<class>/*.png; skipped when absent): no ground truth,
            but the pill fills most of each crop, so a good localiser finds a box, and a large one

Both localisers are scored against the renderer's ground-truth pill box: mean IoU (a frame with
"no pill found" counts 0), the fraction with IoU >= 0.5 and >= 0.7, the fraction of pill frames
with "no pill found" (misses), the fraction of empty frames where a pill is found (false
detections), the mean area of the boxes found as a fraction of the frame's, and the median time
per frame on one thread (the detector's includes resizing the frame to its input). The classical
localiser runs with params.yaml's `preprocess` constants. A markdown table goes to stdout and
everything, settings included, to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import cv2
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tf_pilltrack  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from edge_runtime.preprocessing import IMAGE_SUFFIXES, Box, localise, normalise, read_image  # noqa: E402
from tf_pilltrack import params as params_module  # noqa: E402
from tf_pilltrack.synthesis import describe_pill_types, render_photo  # noqa: E402

# Random streams of the frame generators: each frame draws from default_rng([seed, stream, i]).
STREAMS = {"photo": 0, "wide": 1, "close": 3, "empty": 2}
DEFAULT_REAL = ROOT.parent / "shared/data/pills_real/pushin_pill"


# ------------------------------------------------------------------------------------------------
# Boxes
# ------------------------------------------------------------------------------------------------


def iou(first, second) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes, right and bottom
    exclusive; 0 when either is None or empty."""
    if first is None or second is None:
        return 0.0
    width = min(first[2], second[2]) - max(first[0], second[0])
    height = min(first[3], second[3]) - max(first[1], second[1])
    intersection = max(0.0, width) * max(0.0, height)
    union = ((first[2] - first[0]) * (first[3] - first[1])
             + (second[2] - second[0]) * (second[3] - second[1]) - intersection)
    return float(intersection / union) if union > 0 else 0.0


def to_centre_form(box, width: int, height: int) -> np.ndarray:
    """(left, top, right, bottom) pixels -> (centre x, centre y, width, height) as fractions
    of the frame: the detector's target."""
    left, top, right, bottom = box
    return np.array([(left + right) / 2.0 / width, (top + bottom) / 2.0 / height,
                     (right - left) / width, (bottom - top) / height], np.float32)


def from_centre_form(values, width: int, height: int) -> Box:
    """The inverse of `to_centre_form`: rounded to whole pixels, clipped to the frame, at least
    one pixel wide and high."""
    centre_x, centre_y, box_width, box_height = (float(value) for value in values)
    left = max(0, int(round((centre_x - box_width / 2.0) * width)))
    top = max(0, int(round((centre_y - box_height / 2.0) * height)))
    right = min(width, int(round((centre_x + box_width / 2.0) * width)))
    bottom = min(height, int(round((centre_y + box_height / 2.0) * height)))
    return Box(left, top, max(right, left + 1), max(bottom, top + 1))


def free_square(frame_side: int, box, clearance: float, side: int, rng: np.random.Generator):
    """(left, top) of a random side x side square of a frame_side square frame that stays
    `clearance` x the box's longer side away from `box`, or None when there is no room."""
    reach = clearance * max(box[2] - box[0], box[3] - box[1])
    left, top = box[0] - reach, box[1] - reach
    right, bottom = box[2] + reach, box[3] + reach
    span = frame_side - side  # the square's corner may lie anywhere in 0..span
    options = []  # (axis, low, high) ranges of the corner along one axis; the other is free
    if left >= side:
        options.append((0, 0, int(left) - side))
    if frame_side - right >= side:
        options.append((0, int(np.ceil(right)), span))
    if top >= side:
        options.append((1, 0, int(top) - side))
    if frame_side - bottom >= side:
        options.append((1, int(np.ceil(bottom)), span))
    if not options or span < 0:
        return None
    axis, low, high = options[int(rng.integers(len(options)))]
    along = int(rng.integers(low, high + 1))
    across = int(rng.integers(0, span + 1))
    return (along, across) if axis == 0 else (across, along)


# ------------------------------------------------------------------------------------------------
# Frames
# ------------------------------------------------------------------------------------------------


def jpeg_round_trip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """The frame as saved at JPEG `quality` and read back, as the synthetic data set is."""
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def shrink(pill_type: dict, factor: float) -> dict:
    """The pill type drawn `factor` times its size (the renderer's size is a fraction of the frame)."""
    return {**pill_type, "size": pill_type["size"] * factor}


def render_pill_frames(pill_types: list, count: int, side: int, pill_scale: tuple, seed: int,
                       stream: int) -> tuple[list, np.ndarray]:
    """`count` frames side x side, each of the next pill type in turn drawn U(pill_scale) times
    its size, and their ground-truth boxes (count, 4)."""
    frames, boxes = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, stream, index])
        factor = rng.uniform(*pill_scale)
        rgb, box, quality = render_photo(shrink(pill_types[index % len(pill_types)], factor), side, rng)
        frames.append(jpeg_round_trip(rgb, quality))
        boxes.append(tuple(box))
    return frames, np.array(boxes, np.float32).reshape(-1, 4)


def render_close_frames(pill_types: list, count: int, side: int, render_side: int, fill: tuple, seed: int,
                        stream: int) -> tuple[list, np.ndarray]:
    """`count` close-ups side x side: from a render_side render, a square around the pill whose
    side is the pill box's longer side over U(fill), anywhere that holds the whole box, reduced
    to side x side; and their boxes (count, 4) in the close-up's pixels."""
    frames, boxes = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, stream, index])
        rgb, box, quality = render_photo(pill_types[index % len(pill_types)], render_side, rng)
        longer = max(box.right - box.left, box.bottom - box.top)
        square = int(min(render_side, round(longer / rng.uniform(*fill))))
        corner = []
        for low, high in ((box.left, box.right), (box.top, box.bottom)):
            first, last = max(0, high - square), min(low, render_side - square)
            corner.append(int(rng.integers(first, max(first, last) + 1)))
        left, top = corner
        close = cv2.resize(rgb[top:top + square, left:left + square], (side, side), interpolation=cv2.INTER_AREA)
        frames.append(jpeg_round_trip(close, quality))
        scale = side / square
        boxes.append(((box.left - left) * scale, (box.top - top) * scale,
                      (box.right - left) * scale, (box.bottom - top) * scale))
    return frames, np.array(boxes, np.float32).reshape(-1, 4)


def render_empty_frames(pill_types: list, count: int, side: int, render_side: int, pill_scale: float,
                        clearance: float, seed: int, stream: int) -> list:
    """`count` side x side frames without a pill: squares of render_side renders of a pill
    drawn pill_scale times its size, cut `clearance` x its longer side away from it."""
    frames, attempt = [], 0
    while len(frames) < count:
        rng = np.random.default_rng([seed, stream, attempt])
        pill_type = shrink(pill_types[attempt % len(pill_types)], pill_scale)
        attempt += 1
        rgb, box, quality = render_photo(pill_type, render_side, rng)
        corner = free_square(render_side, tuple(box), clearance, side, rng)
        if corner is None:
            continue
        left, top = corner
        frames.append(jpeg_round_trip(np.ascontiguousarray(rgb[top:top + side, left:left + side]), quality))
        if attempt > 20 * count:
            raise RuntimeError("no room for empty squares: lower --empty-pill-scale or --empty-clearance")
    return frames


def make_frames(args, seed: int, classes: int, pill_count: int, empty_count: int) -> dict:
    """The four synthetic frame sets of one seed: {name: (frames, boxes or None)}."""
    pill_types = describe_pill_types(classes, seed)
    return {
        "photo": render_pill_frames(pill_types, pill_count, args.photo_size, (1.0, 1.0), seed, STREAMS["photo"]),
        "wide": render_pill_frames(pill_types, pill_count, args.wide_size, tuple(args.wide_pill_scale), seed,
                                   STREAMS["wide"]),
        "close": render_close_frames(pill_types, pill_count, args.photo_size, args.wide_size, tuple(args.close_fill),
                                     seed, STREAMS["close"]),
        "empty": (render_empty_frames(pill_types, empty_count, args.photo_size, args.wide_size,
                                      args.empty_pill_scale, args.empty_clearance, seed, STREAMS["empty"]), None),
    }


def load_real(folder: pathlib.Path, max_pixels: int, limit: int) -> list:
    """The real crops <class>/<image> in `folder` (every `limit`-th when there are more), or []."""
    if not folder.is_dir():
        return []
    paths = sorted(path for path in folder.glob("*/*") if path.suffix.lower() in IMAGE_SUFFIXES)
    if limit and len(paths) > limit:
        paths = paths[::int(np.ceil(len(paths) / limit))]
    return [read_image(path, max_pixels) for path in paths]


# ------------------------------------------------------------------------------------------------
# The learned detector
# ------------------------------------------------------------------------------------------------


def detector_input(rgb: np.ndarray, side: int) -> np.ndarray:
    """The frame squeezed to the detector's side x side uint8 input (area interpolation down,
    linear up; a non-square frame is stretched, and its box with it)."""
    height, width = rgb.shape[:2]
    interpolation = cv2.INTER_AREA if max(height, width) > side else cv2.INTER_LINEAR
    return cv2.resize(rgb, (side, side), interpolation=interpolation)


def detector_targets(sets: dict, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The frames of `sets` {name: (frames, boxes or None)} as detector inputs (N, side, side, 3)
    and their targets (N, 5): objectness, then centre x, centre y, width, height of the box as
    fractions of the frame (zeros without a pill)."""
    inputs, targets = [], []
    for frames, boxes in sets.values():
        for index, rgb in enumerate(frames):
            height, width = rgb.shape[:2]
            box = None if boxes is None else boxes[index]
            inputs.append(detector_input(rgb, side))
            targets.append(np.concatenate([[0.0], np.zeros(4)]) if box is None
                           else np.concatenate([[1.0], to_centre_form(box, width, height)]))
    return np.stack(inputs), np.array(targets, np.float32)


def build_detector(side: int, filters: list, dense: int):
    """Strided 3x3 convolutions (batch norm, ReLU) to a small grid, one dense layer, then five
    outputs: an objectness logit and the box's centre x, centre y, width, height as logits of
    fractions of the frame. Input: normalised pixels (`preprocessing.normalise`)."""
    import tensorflow as tf

    layers = tf.keras.layers
    pixels = tf.keras.Input((side, side, 3))
    x = pixels
    for channels in filters:
        x = layers.Conv2D(channels, 3, strides=2, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(dense, activation="relu")(x)
    return tf.keras.Model(pixels, layers.Dense(5)(x), name="pill_detector")


def detector_loss(box_weight: float):
    """Sigmoid cross-entropy on objectness plus, on pill frames only, box_weight x (L1 of the
    centre-form box + 1 - IoU)."""
    import tensorflow as tf

    def loss(target, output):
        present = target[:, 0]
        objectness = tf.nn.sigmoid_cross_entropy_with_logits(labels=present, logits=output[:, 0])
        truth, guess = target[:, 1:], tf.sigmoid(output[:, 1:])
        l1 = tf.reduce_sum(tf.abs(truth - guess), axis=-1)
        overlap_x = tf.maximum(0.0, tf.minimum(truth[:, 0] + truth[:, 2] / 2, guess[:, 0] + guess[:, 2] / 2)
                               - tf.maximum(truth[:, 0] - truth[:, 2] / 2, guess[:, 0] - guess[:, 2] / 2))
        overlap_y = tf.maximum(0.0, tf.minimum(truth[:, 1] + truth[:, 3] / 2, guess[:, 1] + guess[:, 3] / 2)
                               - tf.maximum(truth[:, 1] - truth[:, 3] / 2, guess[:, 1] - guess[:, 3] / 2))
        intersection = overlap_x * overlap_y
        union = truth[:, 2] * truth[:, 3] + guess[:, 2] * guess[:, 3] - intersection
        overlap = intersection / tf.maximum(union, 1e-6)
        return objectness + box_weight * present * (l1 + 1.0 - overlap)

    return tf.autograph.experimental.do_not_convert(loss)  # plain tensor code: nothing to convert


def augment(image, target):
    """One of the square's eight symmetries, the box moved with it (a pill lies any way up)."""
    import tensorflow as tf

    present, centre_x, centre_y, width, height = tf.unstack(target)
    draws = tf.random.uniform([3])
    if_flip_x = draws[0] < 0.5
    image = tf.cond(if_flip_x, lambda: image[:, ::-1], lambda: image)
    centre_x = tf.where(if_flip_x, 1.0 - centre_x, centre_x)
    if_flip_y = draws[1] < 0.5
    image = tf.cond(if_flip_y, lambda: image[::-1], lambda: image)
    centre_y = tf.where(if_flip_y, 1.0 - centre_y, centre_y)
    if_transpose = draws[2] < 0.5
    image = tf.cond(if_transpose, lambda: tf.transpose(image, [1, 0, 2]), lambda: image)
    centre_x, centre_y = tf.where(if_transpose, centre_y, centre_x), tf.where(if_transpose, centre_x, centre_y)
    width, height = tf.where(if_transpose, height, width), tf.where(if_transpose, width, height)
    return image, tf.stack([present, centre_x, centre_y, width, height])


def train_detector(args, inputs: np.ndarray, targets: np.ndarray):
    """The detector trained on (inputs, targets) with Adam and cosine decay; (model, seconds, last loss)."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(args.train_seed)
    model = build_detector(args.detector_side, args.filters, args.dense)
    steps = args.epochs * int(np.ceil(len(inputs) / args.batch_size))
    schedule = tf.keras.optimizers.schedules.CosineDecay(args.learning_rate, steps)
    model.compile(optimizer=tf.keras.optimizers.Adam(schedule), loss=detector_loss(args.box_weight))
    data = (tf.data.Dataset.from_tensor_slices((normalise(inputs.astype(np.float32)), targets))
            .shuffle(len(inputs), seed=args.train_seed, reshuffle_each_iteration=True)
            .map(tf.autograph.experimental.do_not_convert(augment)).batch(args.batch_size).prefetch(1))
    started = time.perf_counter()
    history = model.fit(data, epochs=args.epochs, verbose=2)
    return model, time.perf_counter() - started, float(history.history["loss"][-1])


def convert(model, calibration: np.ndarray, int8: bool) -> bytes:
    """TFLite of the detector for a batch of one: float, or full-integer int8 (uint8 pixels in,
    as the project's embedding models) with ranges calibrated on `calibration` inputs."""
    import tensorflow as tf

    signature = tf.TensorSpec([1, *model.input_shape[1:]], tf.float32)
    function = tf.function(lambda pixels: model(pixels, training=False), input_signature=[signature])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], model)
    if int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.int8
        converter.representative_dataset = lambda: ([normalise(pixels[None].astype(np.float32))]
                                                    for pixels in calibration)
    return converter.convert()


def make_detect(model_path: pathlib.Path, threshold: float):
    """A localiser rgb -> Box | None running the TFLite detector on one thread through LiteRT."""
    from edge_runtime import interpreter as lite

    runner = lite.make_interpreter(model_path, threads=1)
    side = lite.input_size(runner)
    input_detail, output_detail = runner.get_input_details()[0], runner.get_output_details()[0]

    def detect(rgb: np.ndarray) -> Box | None:
        runner.set_tensor(input_detail["index"], lite.quantise_input(detector_input(rgb, side)[None], input_detail))
        runner.invoke()
        output = lite.dequantise_output(runner.get_tensor(output_detail["index"]), output_detail)[0]
        scores = 1.0 / (1.0 + np.exp(-output.astype(np.float64)))
        if scores[0] < threshold:
            return None
        return from_centre_form(scores[1:], rgb.shape[1], rgb.shape[0])

    return detect


# ------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------


def score(locate, frames: list, boxes: np.ndarray | None, real: bool = False) -> dict:
    """Figures of one localiser on one frame set: boxes (N, 4) of the pill, or None for frames
    without a pill (every box found is a false detection) or, with `real`, frames of a pill
    without ground truth."""
    found, overlaps, fractions, milliseconds = [], [], [], []
    for index, rgb in enumerate(frames):
        started = time.perf_counter()
        box = locate(rgb)
        milliseconds.append((time.perf_counter() - started) * 1e3)
        found.append(box is not None)
        if box is not None:
            fractions.append((box[2] - box[0]) * (box[3] - box[1]) / float(rgb.shape[0] * rgb.shape[1]))
        if boxes is not None:
            overlaps.append(iou(box, boxes[index]))
    result = {"frames": len(frames), "found": round(float(np.mean(found)), 4),
              "median_ms": round(float(np.median(milliseconds)), 4),
              "mean_box_fraction": round(float(np.mean(fractions)), 4) if fractions else None}
    if boxes is not None:
        overlaps = np.array(overlaps)
        result.update({"mean_iou": round(float(overlaps.mean()), 4),
                       "iou_0.5": round(float(np.mean(overlaps >= 0.5)), 4),
                       "iou_0.7": round(float(np.mean(overlaps >= 0.7)), 4),
                       "no_pill_found": round(1.0 - result["found"], 4)})
    elif not real:
        result["false_detections"] = result["found"]
    return result


def format_table(results: dict) -> str:
    """The markdown table of `results` {set: {localiser: figures}}."""
    def cell(value, percent=True):
        return "-" if value is None else (f"{100 * value:.1f}%" if percent else f"{value:.3f}")

    lines = ["| set | localiser | frames | mean IoU | IoU>=0.5 | IoU>=0.7 | no pill found (miss) "
             "| false detection | pill found | mean box area | median ms |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, by_localiser in results.items():
        for localiser, figures in by_localiser.items():
            lines.append(
                f"| {name} | {localiser} | {figures['frames']} | {cell(figures.get('mean_iou'), False)} "
                f"| {cell(figures.get('iou_0.5'))} | {cell(figures.get('iou_0.7'))} "
                f"| {cell(figures.get('no_pill_found'))} | {cell(figures.get('false_detections'))} "
                f"| {cell(figures['found'])} "
                f"| {cell(figures['mean_box_fraction'])} | {figures['median_ms']:.3f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--params", default=str(ROOT / "params.yaml"),
        help="params.yaml whose `preprocess` constants the classical localiser uses")
    add("--train-seed", type=int, default=1001,
        help="seed of the detector's training pill types and frames (default 1001)")
    add("--test-seed", type=int, default=2002,
        help="seed of the test pill types and frames (default 2002; the pipeline's base.seed is 42)")
    add("--train-classes", type=int, default=160, help="pill types rendered for training (default 160)")
    add("--test-classes", type=int, default=80, help="pill types rendered for testing (default 80)")
    add("--train-frames", type=int, default=2400,
        help="training frames of each pill set: photo, wide, close (default 2400)")
    add("--train-empty", type=int, default=1600, help="training frames without a pill (default 1600)")
    add("--test-frames", type=int, default=400,
        help="test frames of each synthetic set: photo, wide, close, empty (default 400)")
    add("--photo-size", type=int, default=128,
        help="side of the photo and empty frames, pixels (default 128, as data.synthetic_photo_size)")
    add("--wide-size", type=int, default=384,
        help="side of the wide frames and of the renders close-ups and empty frames are cut from, pixels "
             "(default 384)")
    add("--wide-pill-scale", type=float, nargs=2, default=[0.3, 1.0], metavar=("LOW", "HIGH"),
        help="pill size in a wide frame over its size in a photo: uniform in [LOW, HIGH] (default 0.3 1.0)")
    add("--close-fill", type=float, nargs=2, default=[0.4, 0.9], metavar=("LOW", "HIGH"),
        help="pill box's longer side over a close-up's side: uniform in [LOW, HIGH] (default 0.4 0.9)")
    add("--empty-pill-scale", type=float, default=0.35,
        help="pill size in the renders empty frames are cut from, over its size in a photo (default 0.35)")
    add("--empty-clearance", type=float, default=0.5,
        help="gap between an empty frame and the pill it is cut away from, times the pill's longer side "
             "(default 0.5: clear of its shadow)")
    add("--detector-side", type=int, default=64, help="side of the detector's input, pixels (default 64)")
    add("--filters", type=int, nargs="+", default=[16, 24, 32, 48],
        help="channels of the detector's stride-2 convolutions (default 16 24 32 48: 64 px -> 4x4)")
    add("--dense", type=int, default=64, help="units of the detector's hidden dense layer (default 64)")
    add("--epochs", type=int, default=25, help="detector training epochs (default 25)")
    add("--batch-size", type=int, default=64, help="detector training batch (default 64)")
    add("--learning-rate", type=float, default=0.003,
        help="Adam learning rate, cosine decay to zero (default 0.003)")
    add("--box-weight", type=float, default=2.0, help="weight of the box loss against objectness (default 2.0)")
    add("--threshold", type=float, default=0.5,
        help="detector objectness below this means 'no pill found' (default 0.5)")
    add("--calibration-frames", type=int, default=200,
        help="training inputs calibrating the int8 conversion (default 200)")
    add("--threads", type=int, default=1,
        help="TensorFlow and OpenCV threads for training (default 1); timing always uses one")
    add("--real", default=str(DEFAULT_REAL), help="real tight crops <class>/<image> (skipped when absent)")
    add("--real-limit", type=int, default=0, help="at most this many real crops, evenly spread (default 0: all)")
    add("--out", default=str(ROOT / "reports/localiser_comparison.json"),
        help="JSON report (default reports/localiser_comparison.json)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_arguments(argv)
    started = time.perf_counter()
    cv2.setNumThreads(args.threads)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    params = params_module.load(args.params)
    config = params_module.preprocess_config(params)

    print("rendering frames ...", flush=True)
    train_sets = make_frames(args, args.train_seed, args.train_classes, args.train_frames, args.train_empty)
    test_sets = make_frames(args, args.test_seed, args.test_classes, args.test_frames, args.test_frames)
    real = load_real(pathlib.Path(args.real), config.max_image_pixels, args.real_limit)
    if real:
        test_sets["real"] = (real, None)
    rendered = time.perf_counter() - started
    print(f"rendered in {rendered:.0f} s; {len(real)} real crops", flush=True)

    inputs, targets = detector_targets(train_sets, args.detector_side)
    model, train_seconds, last_loss = train_detector(args, inputs, targets)
    rng = np.random.default_rng(args.train_seed)
    calibration = inputs[rng.choice(len(inputs), size=min(args.calibration_frames, len(inputs)), replace=False)]

    cv2.setNumThreads(1)  # timings on one thread, as LiteRT's below
    localisers = {"classical (localise)": lambda rgb: localise(rgb, config)}
    sizes = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, int8 in (("detector float TFLite", False), ("detector int8 TFLite", True)):
            path = pathlib.Path(folder) / f"{'int8' if int8 else 'float'}.tflite"
            path.write_bytes(convert(model, calibration, int8))
            sizes[name] = path.stat().st_size
            localisers[name] = make_detect(path, args.threshold)

        results = {name: {localiser: score(locate, frames, boxes, real=name == "real")
                          for localiser, locate in localisers.items()}
                   for name, (frames, boxes) in test_sets.items()}

    table = format_table(results)
    print(table)
    report = {
        "settings": {key: value for key, value in vars(args).items()},
        "preprocess": config.to_dict(),
        "detector": {"parameters": int(model.count_params()), "bytes": sizes, "train_frames": int(len(inputs)),
                     "train_seconds": round(train_seconds, 1), "final_loss": round(last_loss, 4)},
        "results": results,
        "seconds": {"rendering": round(rendered, 1), "total": round(time.perf_counter() - started, 1)},
        "table": table,
    }
    print(f"detector: {report['detector']['parameters']} parameters, int8 {sizes['detector int8 TFLite']} B, "
          f"float {sizes['detector float TFLite']} B; trained {train_seconds:.0f} s; total "
          f"{report['seconds']['total']:.0f} s")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
