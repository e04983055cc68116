"""What the device client accepts: one table of limits, used by the bundle writer and reader,
enrollment, image and video reading and `pilltrack-edge`'s options alike (README, "Limits").

The writer refuses what the reader would refuse, before anything is written: a bundle it
commits always loads. Every limit is far above what a pharmacy counter needs; they exist so
that a hostile or mistaken input ends in a one-line error instead of a hang, a crash or a
bundle nobody can open.
"""

from __future__ import annotations

# Labels and the gallery
MAX_LABEL_CHARS = 200  # characters of a pill's label, after Unicode NFC and trimming
MAX_PILLS = 10_000  # distinct labels in a gallery
MAX_GALLERY_ROWS = 200_000  # gallery rows (enrolled photos) of all pills together
MAX_ENROLL_PHOTOS = 1_000  # photos, or camera shots, per enroll

# The bundle
MAX_SIDECAR_BYTES = 64 << 20  # bundle.json; a larger one is refused unread, and never written
MAX_MODEL_BYTES = 256 << 20  # the .tflite model
MAX_ANNOY_TREES = 1_000  # trees of the Annoy index (params.yaml's enroll.annoy_trees too)
MAX_EMBEDDING_SIZE = 4_096  # dimensions of an embedding
MAX_IMAGE_SIZE = 1_024  # pixels, side of the model's square input
SYMMETRY_VIEWS = (1, 2, 4, 8)  # allowed preprocess.symmetry_views (preprocessing.symmetric_views)

# Images and videos
MAX_IMAGE_BYTES = 64 << 20  # bytes of one image file (or zip member in `pilltrack prepare`)
MAX_IMAGE_PIXELS = 100_000_000  # width x height; the bundle's (params') max_image_pixels is at most this

# pilltrack-edge options
MAX_TOP_K = 100  # --top-k
MAX_THREADS = 256  # --threads (interpreter threads)
MAX_CAMERA_INDEX = 63  # --camera
MAX_SHOT_INTERVAL_S = 3_600.0  # --interval, seconds between enrollment shots
MAX_SMOOTH_FRAMES = 1_000  # --smooth, frames voted over
MAX_FRAMES = 1_000_000_000  # --max-frames

# The counter page (pilltrack-edge serve)
MAX_UPLOAD_FILES = 20  # photos in one upload to enroll a pill
MAX_UPLOAD_BYTES = 128 << 20  # bytes of one upload request, its photos together (each at most MAX_IMAGE_BYTES)
MAX_VIEWS = 8  # photos answered together as views of one pill: --one-pill, the page's faces of a close call
MAX_FPS = 60.0  # serve --fps, frames per second read from a video or a folder of photos
MAX_COUNTDOWN_S = 60.0  # serve --countdown, seconds before each camera shot
MIN_TOKEN_CHARS = 16  # serve --token, an access token given rather than generated
SHOT_WAIT_S = 10.0  # seconds a shot (or a face) waits for a frame where a pill is found, then it is refused

# Waiting for another command that holds the bundle's lock (an enroll or remove in progress)
LOCK_WAIT_S = 60.0  # seconds, then the command gives up with an error

# Shown values in error messages are cut to this many characters
MAX_SHOWN_CHARS = 80


def shown(value) -> str:
    """repr(value) for an error message, cut to MAX_SHOWN_CHARS: a malformed value may be huge
    (a 64 MiB string, a deeply nested list), and a message is one short line."""
    import reprlib

    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother = 3, MAX_SHOWN_CHARS, MAX_SHOWN_CHARS
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = 6
    short.maxlong = MAX_SHOWN_CHARS
    try:
        text = short.repr(value)
    except Exception:  # an integer beyond Python's digit limit, a type whose repr fails
        text = f"<{type(value).__name__}>"
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS - 3] + "..."
