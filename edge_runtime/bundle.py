"""The device bundle: everything the device needs to identify pills, in one directory.

    bundle/
      bundle.json                        the sidecar: what the files are and how to use them;
                                         each label once, and each gallery row's label number
      model-<sha256[:16]>.tflite         the int8 embedding model
      index-<sha256[:16]>.ann            Annoy index (angular) over the gallery's embeddings
      embeddings-<sha256[:16]>.npy       float32 (N, E) gallery embeddings, row i = item i
      .lock                              flock of writers (exclusive) and readers (shared)

Data files are named after their contents, and `bundle.json` is written last: renaming it into
place is the single step that commits a new bundle. A crash at any earlier moment leaves the
previous sidecar naming the previous files, all still there, so the previous bundle loads.
Files no sidecar names any more are deleted after the commit. Before anything is written, the
new sidecar goes through the reader's own checks and limits (`limits.py`): a bundle the writer
commits always loads, and a refused change leaves the previous bundle as it was.

`load_bundle` verifies everything before Annoy or the interpreter touch a file: the sidecar's
fields and types, that each file name is the one its checksum implies (so no name can point
outside the directory), sizes and SHA-256 checksums, the embeddings' shape against the labels
and embedding size, the Annoy index's structure against the embeddings (`check_index_file`:
checksums prove only that the files agree, and Annoy's native code trusts the index's counts and
references), and the model's input and output against the sidecar. Anything wrong
raises BundleError naming the file and the problem.

Why one module of about 600 lines: the writer and the reader of one on-disk format, which must
agree field for field (the writer runs the reader's own checks on what it is about to commit),
with the lock that serialises them; most of it is those checks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import re
import secrets
import shutil
import tempfile
from typing import Callable, NamedTuple, Sequence

import numpy as np
from annoy import AnnoyIndex

from edge_runtime import gallery, limits, storage
from edge_runtime.interpreter import ModelError, embedding_size, input_size, make_interpreter
from edge_runtime.limits import shown
from edge_runtime.preprocessing import PreprocessConfig, is_localise_mode, shown_error
from edge_runtime.quiet import native_stderr_silenced

FORMAT = "pilltrack-bundle"
# 2 added lookalike_margin; 3 stores each label once ("labels") and each row's label number
# ("rows"), where 1 and 2 repeated the label on every row, so the sidecar grew with label length x photos
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # a version 1 sidecar reads with lookalike_margin 0: only exact ties are flagged
SIDECAR = "bundle.json"
LOCK = ".lock"
METRIC = "angular"  # Annoy's metric
DISTANCE = "cosine"  # unit of unknown_threshold and of reported distances: 1 - cos
SUFFIXES = {"model": ".tflite", "index": ".ann", "embeddings": ".npy"}

_HOLDER = "another command changing this bundle (an enroll, a remove or the pipeline's enroll stage)"
_DATA_FILE = re.compile(r"^(model|index|embeddings)-[0-9a-f]{16}\.(tflite|ann|npy)$")


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file and what is wrong."""


class BundleWriteError(OSError):
    """A bundle file that could not be written (a full disk, a file-size limit); the message names
    the file and says that the bundle was left as it was. An OSError: the device failed, not the
    input (the CLI's exit status 1, the page's 500); `strerror` is the reason alone."""

    def __init__(self, path: str, reason: str, number: int | None = None):
        super().__init__(number, reason, path)

    def __str__(self) -> str:
        return f"{self.filename}: cannot be written ({self.strerror}); the bundle was not changed"


@contextlib.contextmanager
def _locked(directory: str, shared: bool = False):
    """The bundle's lock (see storage.file_lock), its problems as BundleErrors."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(storage.file_lock(os.path.join(directory, LOCK), shared=shared, holder=_HOLDER))
        except storage.FileRefused as error:  # a FIFO or a device in place of the lock file
            raise BundleError(str(error)) from None
        yield


class FileEntry(NamedTuple):
    name: str  # file name inside the bundle directory
    sha256: str  # hex SHA-256 of its contents
    size: int  # bytes


@dataclasses.dataclass(frozen=True, eq=False)
class Bundle:
    directory: str
    labels: tuple[str, ...]  # one per gallery row, in index order
    embeddings: np.ndarray  # float32 (N, E), read-only
    index: AnnoyIndex  # angular; item i is row i
    unknown_threshold: float  # cosine distance at or below which the best match is accepted
    lookalike_margin: float  # runner-up within this cosine distance of the best: a close call (gallery.lookalike)
    search_k: int  # Annoy nodes inspected per query (-1: trees x rows)
    annoy_trees: int
    seed: int  # seed the index was built with
    preprocess: PreprocessConfig
    files: dict  # "model" | "index" | "embeddings" -> FileEntry
    extra: dict  # whatever the writer added (pipeline provenance, metrics)
    rows_per_label: int  # the most rows any one label has (gallery.most_rows_per_label)

    @property
    def embedding_size(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def model_path(self) -> str:
        return os.path.join(self.directory, self.files["model"].name)

    @property
    def model_sha256(self) -> str:
        return self.files["model"].sha256


def file_name(kind: str, sha256: str) -> str:
    """The name a bundle gives a data file of `kind` with these contents."""
    return f"{kind}-{sha256[:16]}{SUFFIXES[kind]}"


def write_bundle(directory: str | os.PathLike, model: bytes | str | os.PathLike,
                 embeddings: np.ndarray, labels: Sequence[str], *, threshold: float, lookalike_margin: float,
                 preprocess: PreprocessConfig, annoy_trees: int, search_k: int, seed: int,
                 extra: dict | None = None) -> dict:
    """Write a bundle into `directory` (created if absent), replacing any bundle there
    atomically, and return the sidecar's contents.

    `model` is the .tflite file's bytes or path; `threshold` and `lookalike_margin` are cosine
    distances (1 - cos); `search_k` is Annoy's (-1: trees x rows); `extra` is any
    JSON-serialisable provenance."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    with _locked(directory):
        return _write(directory, model, embeddings, labels, threshold, lookalike_margin, preprocess,
                      annoy_trees, search_k, seed, extra)


def load_bundle(directory: str | os.PathLike, verify_model: bool = True) -> Bundle:
    """Read and verify the bundle in `directory`; see the module docstring for the checks.

    With `verify_model`, a one-thread CPU interpreter checks the model's input size and
    embedding size; pass False when the caller checks its own interpreter with `check_model`."""
    directory = os.fspath(directory)
    if not os.path.lexists(os.path.join(directory, LOCK)):  # a read-only copy without a lock file has no writers
        return _load(directory, verify_model)
    with _locked(directory, shared=True):
        return _load(directory, verify_model)


GalleryChange = Callable[[np.ndarray, tuple], tuple[np.ndarray, Sequence[str]]]


def update_gallery(directory: str | os.PathLike, change: GalleryChange) -> dict:
    """Replace the gallery by `change(embeddings, labels) -> (embeddings, labels)` under the
    bundle's exclusive lock, rebuilding the index; the model file is left untouched.
    Returns the new sidecar's contents."""
    directory = os.fspath(directory)
    if not os.path.isfile(os.path.join(directory, SIDECAR)):
        raise BundleError(f"{os.path.join(directory, SIDECAR)}: missing, so there is no bundle "
                          "to change (the pipeline's enroll stage writes one)")
    with _locked(directory):
        current = _load(directory, verify_model=False)
        embeddings, labels = change(current.embeddings, current.labels)
        embeddings = gallery.check_embeddings(embeddings)
        # search_k follows the gallery's size (gallery.search_k_for_size), unless the bundle
        # searches exhaustively (-1) by choice.
        search_k = current.search_k
        if search_k != -1:
            search_k = gallery.search_k_for_size(len(embeddings), current.annoy_trees)
        return _write(directory, current.model_path, embeddings, labels,
                      current.unknown_threshold, current.lookalike_margin, current.preprocess,
                      current.annoy_trees, search_k, current.seed, current.extra)


def check_model(bundle: Bundle, interpreter) -> None:
    """Raise BundleError unless the interpreter's model fits the bundle: a square input of
    the preprocessing's image size and an embedding of the bundle's size."""
    problem = _model_misfit(interpreter, bundle.preprocess.image_size, bundle.embedding_size)
    if problem:
        raise BundleError(f"{bundle.model_path}: {problem}")


def _model_misfit(interpreter, image_size: int, dimensions: int) -> str | None:
    """What stops the model serving this bundle, or None."""
    try:
        size, outputs = input_size(interpreter), embedding_size(interpreter)
    except ModelError as error:
        return str(error)
    if size != image_size:
        return f"model input is {size}x{size} pixels, preprocessing makes {image_size}"
    if outputs != dimensions:
        return (f"model outputs {outputs}-dimensional embeddings, the gallery's are "
                f"{dimensions}-dimensional")
    return None


def _write(directory, model, embeddings, labels, threshold, lookalike_margin, preprocess_config, annoy_trees,
           search_k, seed, extra) -> dict:
    """`write_bundle` for a caller that holds the lock."""
    embeddings = gallery.check_embeddings(embeddings)
    labels = list(labels)
    if len(labels) != len(embeddings):
        raise ValueError(f"{len(labels)} labels for {len(embeddings)} embeddings")
    if len(labels) > limits.MAX_GALLERY_ROWS:
        raise ValueError(f"a gallery of {len(labels)} rows (photos) is over the limit of {limits.MAX_GALLERY_ROWS}")
    if embeddings.shape[1] > limits.MAX_EMBEDDING_SIZE:
        raise ValueError(f"{embeddings.shape[1]}-dimensional embeddings are over the limit of "
                         f"{limits.MAX_EMBEDDING_SIZE}")
    names, rows = _number_labels(labels)
    if not _is_number(threshold) or not 0.0 <= threshold <= 2.0:
        raise ValueError(f"threshold must be a cosine distance within [0, 2], got {threshold!r}")
    if not _is_number(lookalike_margin) or not 0.0 <= lookalike_margin <= 2.0:
        raise ValueError(f"lookalike_margin must be a cosine distance within [0, 2], got {lookalike_margin!r}")
    if not isinstance(preprocess_config, PreprocessConfig):
        raise ValueError(f"preprocess_config must be a PreprocessConfig, "
                         f"got {preprocess_config!r}")
    if not (_is_int(annoy_trees) and 1 <= annoy_trees <= limits.MAX_ANNOY_TREES):
        raise ValueError(f"annoy_trees must be an integer within [1, {limits.MAX_ANNOY_TREES}], "
                         f"got {shown(annoy_trees)}")
    if not (_is_int(search_k) and (1 <= search_k < _ANNOY_INT or search_k == -1)):
        raise ValueError(f"search_k must be a positive integer below 2**31 or -1, "
                         f"got {search_k!r}")
    if not (_is_int(seed) and 0 <= seed < 2**31):
        raise ValueError(f"seed must be an integer within [0, 2**31), got {seed!r}")
    extra = dict(extra or {})
    try:
        json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"extra must be JSON-serialisable ({error})") from None

    if isinstance(model, (bytes, bytearray, memoryview)):
        source, model_bytes = "the model", bytes(model)
        if len(model_bytes) > limits.MAX_MODEL_BYTES:
            raise ValueError(f"the model is {len(model_bytes)} bytes, over the limit of {limits.MAX_MODEL_BYTES}")
    else:
        source = os.fspath(model)
        model_bytes = storage.read_regular(source, limits.MAX_MODEL_BYTES)
    buffer = io.BytesIO()
    np.save(buffer, embeddings, allow_pickle=False)
    # Scratch space inside the bundle, under the temporary prefix: what a killed writer leaves
    # there is deleted by the next write (in the system's temporary directory it would stay).
    with tempfile.TemporaryDirectory(prefix=storage.TEMP_PREFIX, dir=directory) as scratch:
        model_path = os.path.join(scratch, "model.tflite")
        with _writing(model_path), open(model_path, "wb") as handle:
            handle.write(model_bytes)
        try:
            interpreter = make_interpreter(model_path, threads=1)
        except ModelError as error:
            raise ModelError(f"{source}: not a usable TFLite model ({error})") from None
        problem = _model_misfit(interpreter, preprocess_config.image_size, embeddings.shape[1])
        if problem:
            raise ValueError(f"{source}: {problem}")
        index_path = os.path.join(scratch, "index.ann")
        index = gallery.build_index(embeddings, annoy_trees, seed)
        # Annoy prints its own line on stderr when it cannot write; the error says it, naming the file.
        with _writing(index_path), native_stderr_silenced():
            index.save(index_path)
        index.unload()
        with open(index_path, "rb") as handle:
            index_bytes = handle.read()

    contents = {"model": model_bytes, "index": index_bytes, "embeddings": buffer.getvalue()}
    files = {kind: _entry(kind, data) for kind, data in contents.items()}
    sidecar = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "metric": METRIC,
        "distance": DISTANCE,
        "embedding_size": int(embeddings.shape[1]),
        "labels": names,
        "rows": rows,
        "annoy_trees": annoy_trees,
        "search_k": search_k,
        "seed": seed,
        "unknown_threshold": float(threshold),
        "lookalike_margin": float(lookalike_margin),
        "preprocess": preprocess_config.to_dict(),
        "files": {kind: entry._asdict() for kind, entry in files.items()},
        "extra": extra,
    }
    text = _sidecar_text(sidecar)
    # The reader's checks, before anything is written: a bundle it would refuse is never committed.
    path = os.path.join(directory, SIDECAR)
    if len(text) > limits.MAX_SIDECAR_BYTES:
        raise BundleError(f"{path}: would be {len(text)} bytes, over the limit of {limits.MAX_SIDECAR_BYTES} "
                          "bytes; nothing was changed")
    try:
        _check_sidecar(path, json.loads(text))
    except BundleError as error:
        raise BundleError(f"{error}; nothing was changed") from None
    # The data files go under names of their own, the sidecar that names them last (atomically):
    # a write that fails on the way (a full disk, a file-size limit) leaves the previous bundle whole.
    for kind, data in contents.items():
        with _writing(os.path.join(directory, files[kind].name)):
            _store(directory, files[kind], data)
    with _writing(path):
        storage.write_atomically(path, text)
    _collect_garbage(directory, keep={entry.name for entry in files.values()})
    return sidecar


@contextlib.contextmanager
def _writing(path: str):
    """An OSError while the block writes `path` (a full disk: ENOSPC; a file-size limit, `ulimit -f`:
    EFBIG) as a BundleWriteError naming the file: every caller writes before the sidecar is
    replaced (`_write`), so the bundle is as it was."""
    try:
        yield
    except BundleWriteError:
        raise
    except OSError as error:
        raise BundleWriteError(path, error.strerror or shown_error(error), error.errno) from None


def _number_labels(labels: list) -> tuple[list[str], list[int]]:
    """(each label once, in order of first row; each row's number in that list), the labels
    normalised (gallery.check_label). Two labels that differ only in case or Unicode form are
    refused: they would name one pill."""
    names: list[str] = []
    rows: list[int] = []
    number: dict[str, int] = {}  # label as given -> its number
    by_key: dict[str, int] = {}  # gallery.label_key -> its number
    for label in labels:
        if not isinstance(label, str):
            raise ValueError(f"a pill's label must be a string, got {shown(label)}")
        if label not in number:
            normal = gallery.check_label(label)
            key = gallery.label_key(normal)
            if key not in by_key:
                if len(names) == limits.MAX_PILLS:
                    raise ValueError(f"a gallery of more than {limits.MAX_PILLS} pills is over the limit")
                by_key[key] = len(names)
                names.append(normal)
            elif names[by_key[key]] != normal:
                raise ValueError(f"labels {names[by_key[key]]!r} and {normal!r} name one pill (labels are "
                                 "matched ignoring case and Unicode form); use one spelling")
            number[label] = by_key[key]
        rows.append(number[label])
    return names, rows


def _sidecar_text(sidecar: dict) -> bytes:
    """bundle.json's bytes: indented, except the list of row numbers, one line."""
    hole = json.dumps(f"rows-{secrets.token_hex(16)}")  # replaced by the row numbers after indenting
    text = json.dumps({**sidecar, "rows": json.loads(hole)}, indent=2, sort_keys=True, allow_nan=False)
    text = text.replace(hole, json.dumps(sidecar["rows"], separators=(",", ":")), 1)
    return (text + "\n").encode("utf-8")


def _entry(kind: str, data: bytes) -> FileEntry:
    sha256 = storage.sha256_bytes(data)
    return FileEntry(file_name(kind, sha256), sha256, len(data))


def _store(directory: str, entry: FileEntry, data: bytes) -> None:
    """Write a data file under its content-derived name, unless it is there already."""
    path = os.path.join(directory, entry.name)
    if not (os.path.isfile(path) and os.path.getsize(path) == entry.size
            and storage.sha256_file(path) == entry.sha256):
        storage.write_atomically(path, data)


def _collect_garbage(directory: str, keep: set) -> None:
    """Delete data files the sidecar no longer names, and temporary files and scratch
    directories of crashed writes. Only called under the exclusive lock, so no other writer's
    files are touched."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        temporary = name.startswith(storage.TEMP_PREFIX)
        if temporary and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)  # scratch directory of _write
        elif temporary or (_DATA_FILE.match(name) and name not in keep):
            os.unlink(path)
    storage.fsync_directory(directory)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)  # an int too large for a float is finite


def _is_label_list(value, most: int) -> bool:
    """A non-empty list of at most `most` labels, each as gallery.check_label returns it."""
    return (isinstance(value, list) and 1 <= len(value) <= most
            and all(map(gallery.is_normal_label, value)))


def _is_distinct_label_list(value) -> bool:
    """Version 3's labels: each pill once, no two alike but for case or Unicode form."""
    return (_is_label_list(value, limits.MAX_PILLS)
            and len({gallery.label_key(label) for label in value}) == len(value))


def _is_row_list(value) -> bool:
    return (isinstance(value, list) and 1 <= len(value) <= limits.MAX_GALLERY_ROWS
            and all(_is_int(row) and row >= 0 for row in value))


_ANNOY_INT = 2**31  # Annoy takes tree counts, search_k and seeds as C ints, so below this
_LABELS = (f"a non-empty list of at most {limits.MAX_PILLS} distinct labels (printable, trimmed, Unicode NFC, "
           f"at most {limits.MAX_LABEL_CHARS} characters, not {gallery.UNKNOWN!r}, no two alike but for case)")


# Sidecar fields: name -> (test of the value, what the value must be). Held to the limits the
# writer enforces (limits.py).
_FIELDS = {
    "format": (lambda value: value == FORMAT, f"{FORMAT!r}"),
    "format_version": (lambda value: _is_int(value) and value == FORMAT_VERSION,
                       f"{FORMAT_VERSION}"),
    "metric": (lambda value: value == METRIC, f"{METRIC!r}"),
    "distance": (lambda value: value == DISTANCE, f"{DISTANCE!r} (1 - cos)"),
    "embedding_size": (lambda value: _is_int(value) and 1 <= value <= limits.MAX_EMBEDDING_SIZE,
                       f"an integer within [1, {limits.MAX_EMBEDDING_SIZE}]"),
    "labels": (_is_distinct_label_list, _LABELS),
    "rows": (_is_row_list, f"a non-empty list of at most {limits.MAX_GALLERY_ROWS} label numbers, one per "
             "gallery row"),
    "annoy_trees": (lambda value: _is_int(value) and 1 <= value <= limits.MAX_ANNOY_TREES,
                    f"an integer within [1, {limits.MAX_ANNOY_TREES}]"),
    "search_k": (lambda value: _is_int(value) and (1 <= value < _ANNOY_INT or value == -1),
                 "a positive integer below 2**31, or -1"),
    "seed": (lambda value: _is_int(value) and 0 <= value < _ANNOY_INT,
             "an integer within [0, 2**31)"),
    "unknown_threshold": (lambda value: _is_number(value) and 0.0 <= value <= 2.0,
                          "a cosine distance within [0, 2]"),
    "lookalike_margin": (lambda value: _is_number(value) and 0.0 <= value <= 2.0,
                         "a cosine distance within [0, 2]"),
    "preprocess": (lambda value: isinstance(value, dict), "an object"),
    "files": (lambda value: isinstance(value, dict), "an object"),
    "extra": (lambda value: isinstance(value, dict), "an object"),
}
_PREPROCESS_FIELDS = {
    "image_size": _is_int,
    "localise": is_localise_mode,
    "min_pill_fraction": _is_number,
    "max_pill_fraction": _is_number,
    "crop_margin": _is_number,
    "max_image_pixels": _is_int,
    "symmetry_views": _is_int,
}


def _read_sidecar(directory: str) -> dict:
    """bundle.json, checked (`_check_sidecar`), in version 3's form."""
    path = os.path.join(directory, SIDECAR)
    if not os.path.isdir(directory):
        raise BundleError(f"{directory}: no such bundle directory (`dvc repro` writes one)")
    try:
        raw = storage.read_regular(path, limits.MAX_SIDECAR_BYTES)
    except FileNotFoundError:
        raise BundleError(f"{path}: missing, so {directory} is not a PillTrack bundle") from None
    except storage.FileRefused as error:  # not a regular file, or over the limit
        raise BundleError(str(error)) from None
    except OSError as error:
        raise BundleError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        sidecar = json.loads(raw.decode("utf-8"), object_pairs_hook=_object_without_repeats)
    except _RepeatedKey as error:  # which of the two values counts differs between readers
        raise BundleError(f"{path}: the key {shown(error.key)} appears twice in one JSON object") from None
    except (ValueError, RecursionError) as error:
        # Besides malformed JSON and UTF-8 (ValueErrors): an integer beyond Python's digit limit
        # (a ValueError) and nesting deeper than the recursion limit.
        raise BundleError(f"{path}: not valid JSON ({shown(str(error))})") from None
    return _check_sidecar(path, sidecar)


class _RepeatedKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _object_without_repeats(pairs: list) -> dict:
    """json's object_pairs_hook: the object as a dict, refusing a key given twice."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise _RepeatedKey(key)
        result[key] = value
    return result


def _check_sidecar(path: str, sidecar) -> dict:
    """The sidecar's fields checked against _FIELDS and each other; a version 1 or 2 sidecar
    (a label per row) is returned in version 3's form (labels once, row numbers)."""
    if not isinstance(sidecar, dict):
        raise BundleError(f"{path}: must hold a JSON object")
    if sidecar.get("format") != FORMAT:
        raise BundleError(f"{path}: 'format' is {shown(sidecar.get('format'))}, expected {FORMAT!r}")
    version = sidecar.get("format_version")
    if not _is_int(version) or version not in READABLE_VERSIONS:
        raise BundleError(f"{path}: format version {shown(version)} is not supported by this client, "
                          f"which reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    if version < 3:
        if "rows" in sidecar:
            raise BundleError(f"{path}: unknown fields ['rows'] (a version {version} sidecar has a label per row)")
        labels = sidecar.get("labels")
        if not _is_label_list(labels, limits.MAX_GALLERY_ROWS):
            raise BundleError(f"{path}: field 'labels' is {shown(labels)}, expected a non-empty list of at most "
                              f"{limits.MAX_GALLERY_ROWS} labels, one per gallery row")
        sidecar = {**sidecar, "format_version": FORMAT_VERSION, **_upgrade_labels(labels)}
        if version == 1 and "lookalike_margin" not in sidecar:
            sidecar["lookalike_margin"] = 0.0
    missing = sorted(set(_FIELDS) - set(sidecar))
    unknown = sorted(set(sidecar) - set(_FIELDS))
    if missing or unknown:
        raise BundleError(f"{path}: missing fields {missing}, unknown fields {shown(unknown)}")
    for name, (test, expected) in _FIELDS.items():
        if not test(sidecar[name]):
            raise BundleError(f"{path}: field {name!r} is {shown(sidecar[name])}, expected {expected}")
    _read_preprocess(path, sidecar["preprocess"])
    _read_files(path, sidecar["files"])
    used = set(sidecar["rows"])
    if max(used) >= len(sidecar["labels"]) or len(used) != len(sidecar["labels"]):
        raise BundleError(f"{path}: field 'rows' must number each of the {len(sidecar['labels'])} labels "
                          f"0 to {len(sidecar['labels']) - 1} at least once, and nothing else")
    return sidecar


def _upgrade_labels(per_row: list) -> dict:
    """A version 1 or 2 sidecar's labels (one per row) as version 3's "labels" and "rows";
    labels alike but for case become the first one's spelling (they are one pill)."""
    names: list[str] = []
    number: dict[str, int] = {}  # gallery.label_key -> number
    rows = []
    for label in per_row:
        key = gallery.label_key(label)
        if key not in number:
            number[key] = len(names)
            names.append(label)
        rows.append(number[key])
    return {"labels": names, "rows": rows}


def _read_preprocess(path: str, values: dict) -> PreprocessConfig:
    for name, test in _PREPROCESS_FIELDS.items():
        if name in values and not test(values[name]):
            raise BundleError(f"{path}: preprocess field {name!r} has the wrong type "
                              f"({shown(values[name])})")
    try:
        return PreprocessConfig.from_dict(values)
    except ValueError as error:
        raise BundleError(f"{path}: {error}") from None


def _read_files(path: str, values: dict) -> dict:
    if set(values) != set(SUFFIXES):
        raise BundleError(f"{path}: 'files' must list exactly {sorted(SUFFIXES)}, "
                          f"got {shown(sorted(values))}")
    files = {}
    for kind, entry in values.items():
        if not (isinstance(entry, dict) and set(entry) == set(FileEntry._fields)
                and isinstance(entry["sha256"], str)
                and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
                and _is_int(entry["size"]) and entry["size"] >= 0):
            raise BundleError(f"{path}: files.{kind} must be {{name, sha256 (64 hex digits), "
                              f"size (bytes)}}, got {shown(entry)}")
        if kind == "model" and entry["size"] > limits.MAX_MODEL_BYTES:
            raise BundleError(f"{path}: files.model is {entry['size']} bytes, over the limit of "
                              f"{limits.MAX_MODEL_BYTES}")
        if entry["name"] != file_name(kind, entry["sha256"]):
            raise BundleError(f"{path}: files.{kind} is named {shown(entry['name'])}, expected "
                              f"{file_name(kind, entry['sha256'])!r} for its checksum")
        files[kind] = FileEntry(entry["name"], entry["sha256"], entry["size"])
    return files


def _verify_file(directory: str, kind: str, entry: FileEntry) -> str:
    path = os.path.join(directory, entry.name)
    try:
        info = os.stat(path)
        size = info.st_size
        problem = storage.not_regular(info.st_mode)
        if problem:
            raise BundleError(f"{path}: {problem} ({kind} file named in {SIDECAR})")
        if size != entry.size:
            raise BundleError(f"{path}: {size} bytes, {SIDECAR} says {entry.size}")
        digest = storage.sha256_file(path)
    except FileNotFoundError:
        raise BundleError(f"{path}: missing ({kind} file named in {SIDECAR})") from None
    except storage.FileRefused as error:  # swapped for a special file after the check above
        raise BundleError(str(error)) from None
    except OSError as error:
        raise BundleError(f"{path}: cannot be read ({error.strerror or error})") from None
    if digest != entry.sha256:
        raise BundleError(f"{path}: checksum mismatch, the file changed after the bundle "
                          "was written")
    return path


_NODE_BLOCK = 1 << 15  # nodes checked at a time by check_index_file, bounding its memory


def check_index_file(path: str, embeddings: np.ndarray) -> None:
    """Raise BundleError unless `path` is a well-formed angular Annoy index (annoy 1.17) of the
    rows of `embeddings`, item i being row i: checksums prove only that the files agree, and
    Annoy's native code trusts every count and reference in the file, so a crafted index would
    crash the device (out-of-range reads) or hang it (a cycle) at load or query time.

    The format: fixed-size nodes of (int32 n_descendants, int32 children[2], float32 v[E]),
    the N item nodes first (n_descendants 1, v the item's vector), then the trees' nodes, then a
    copy of each root; Annoy finds the roots as the run of nodes at the end with the last node's
    n_descendants, which is also its item count. A node of up to K = E + 2 descendants is a
    leaf listing its items in children[] and on into v; a larger one splits at the hyperplane v
    between two child nodes, which Annoy always writes before their parent."""
    rows, dimensions = embeddings.shape
    node_bytes = 4 * (3 + dimensions)
    most_listed = dimensions + 2  # K: the most items a leaf node lists
    try:
        size = os.path.getsize(path)
        nodes = np.memmap(path, dtype=np.int32, mode="r") if size else np.zeros(0, np.int32)
    except (OSError, ValueError) as error:
        raise BundleError(f"{path}: cannot be read ({error})") from None
    if size == 0 or size % node_bytes:
        raise BundleError(f"{path}: {size} bytes is not a whole number of {node_bytes}-byte nodes "
                          f"of an Annoy index of {dimensions}-dimensional angular vectors")
    count = size // node_bytes
    if count > np.iinfo(np.int32).max:
        raise BundleError(f"{path}: {count} nodes, more than Annoy can number")
    nodes = nodes.reshape(count, 3 + dimensions)
    descendants = nodes[:, 0]
    # The roots, found as Annoy finds them; their descendant count is the index's item count.
    last = int(descendants[-1])
    if last != rows:
        raise BundleError(f"{path}: its roots hold {last} items, {len(embeddings)} gallery rows "
                          f"expected (a damaged or foreign index)")
    if count <= rows:
        raise BundleError(f"{path}: {count} nodes, too few for {rows} items and their trees")
    items = nodes[:rows]
    if (items[:, 0] != 1).any():
        bad = int(np.flatnonzero(items[:, 0] != 1)[0])
        raise BundleError(f"{path}: item node {bad} has descendant count {int(items[bad, 0])}, "
                          "expected 1 (a damaged index)")
    if not np.array_equal(np.ascontiguousarray(items[:, 3:]).view(np.float32), embeddings):
        raise BundleError(f"{path}: its item vectors differ from the bundle's embeddings")
    slot = np.arange(most_listed)
    for start in range(rows, count, _NODE_BLOCK):
        block = np.asarray(nodes[start:start + _NODE_BLOCK])
        number = block[:, 0]
        children = block[:, 1:]
        position = start + np.arange(len(block))
        leaf = number <= most_listed
        listed = slot[None, :] < number[:, None]
        bad = (number < 1) | (number > rows)
        # A leaf lists n_descendants item numbers; a split names two earlier nodes (so no cycles).
        bad |= leaf & (listed & ((children < 0) | (children >= rows))).any(axis=1)
        split_children = children[:, :2]
        bad |= ~leaf & ((split_children < 0) | (split_children >= position[:, None])).any(axis=1)
        if bad.any():
            where = int(np.flatnonzero(bad)[0])
            raise BundleError(f"{path}: node {start + where} (descendants {int(number[where])}, "
                              f"children {shown(children[where, :2].tolist())}) is out of range "
                              f"for {count} nodes and {rows} items (a damaged index)")


def _load(directory: str, verify_model: bool) -> Bundle:
    """`load_bundle` for a caller that holds the lock."""
    sidecar = _read_sidecar(directory)
    sidecar_path = os.path.join(directory, SIDECAR)
    preprocess = _read_preprocess(sidecar_path, sidecar["preprocess"])
    files = _read_files(sidecar_path, sidecar["files"])
    paths = {kind: _verify_file(directory, kind, entry) for kind, entry in files.items()}
    names = sidecar["labels"]
    labels = tuple(names[row] for row in sidecar["rows"])
    dimensions = sidecar["embedding_size"]

    try:
        embeddings = np.load(paths["embeddings"], allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise BundleError(f"{paths['embeddings']}: not a readable .npy array ({error})") from None
    if embeddings.dtype != np.float32 or embeddings.shape != (len(labels), dimensions):
        raise BundleError(f"{paths['embeddings']}: {embeddings.dtype} {embeddings.shape}, "
                          f"expected float32 ({len(labels)}, {dimensions}) for "
                          f"{len(labels)} gallery rows of embedding_size {dimensions}")
    if not np.isfinite(embeddings).all():
        raise BundleError(f"{paths['embeddings']}: holds NaN or infinite values")
    embeddings.setflags(write=False)

    check_index_file(paths["index"], embeddings)  # before Annoy's native code reads it
    index = AnnoyIndex(dimensions, METRIC)
    try:
        index.load(paths["index"], prefault=False)
    except OSError as error:
        raise BundleError(f"{paths['index']}: not an Annoy index of {dimensions}-dimensional "
                          f"angular vectors ({error})") from None
    if index.get_n_items() != len(labels):
        raise BundleError(f"{paths['index']}: holds {index.get_n_items()} items for "
                          f"{len(labels)} gallery rows")
    stored = np.array([index.get_item_vector(item) for item in range(len(labels))], np.float32)
    if not np.allclose(stored, embeddings, rtol=1e-6, atol=1e-6):
        raise BundleError(f"{paths['index']}: its vectors differ from {files['embeddings'].name}")

    bundle = Bundle(
        directory=directory,
        labels=labels,
        embeddings=embeddings,
        index=index,
        unknown_threshold=float(sidecar["unknown_threshold"]),
        lookalike_margin=float(sidecar["lookalike_margin"]),
        search_k=sidecar["search_k"],
        annoy_trees=sidecar["annoy_trees"],
        seed=sidecar["seed"],
        preprocess=preprocess,
        files=files,
        extra=sidecar["extra"],
        rows_per_label=gallery.most_rows_per_label(labels),
    )
    if verify_model:
        try:
            interpreter = make_interpreter(paths["model"], threads=1)
        except ModelError as error:
            raise BundleError(str(error)) from None
        check_model(bundle, interpreter)
    return bundle
