"""Photo sets in, crops out: a `<class>/<image>` folder or zip listed, read, decoded and cropped
with the shared preprocessing (edge_runtime/preprocessing.py), every bad file reported and skipped.
`prepare` reads its sources with it, and so do the reference composition (`generate`) and the
real-photo episodes (`evaluate`, `firmware`).

Source layout: `<class>/<image>` (JPEG, PNG, WebP, BMP), optionally with a `manifest.csv` at its
root whose `crop` and `source_photo` columns group crops cut from one photo, so that no photo
is split across references and queries. Unreadable files and photos without a findable pill
are reported (file and reason) and skipped; the run continues. The data report names them.
Only regular files of at most limits.MAX_IMAGE_BYTES are read (a FIFO or a device in the folder is
reported, never opened); a zip member's size is checked from its header before it is read (and
it is read in chunks, never past that size), and
encrypted members or compression methods zipfile cannot read are reported and skipped. Any failure
to read or decode one image is that image's problem, never the run's.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import os
import pathlib
import zipfile
import zlib
from collections import defaultdict
from typing import Callable, Iterator, NamedTuple

import numpy as np

from edge_runtime import limits, storage
from edge_runtime.preprocessing import (IMAGE_SUFFIXES, ImageError, PreprocessConfig, decode_image, preprocess,
                                        shown_error, touches_edge)


class SourceImage(NamedTuple):
    label: str
    name: str  # path relative to the source root, with '/' separators
    read: Callable[[], bytes]


def list_source(source: pathlib.Path) -> tuple[list[SourceImage], dict[str, str], list[dict]]:
    """The images of a `<class>/<image>` folder or zip, the manifest's photo groups (crop name to
    source photo; empty without a manifest) and the entries skipped while listing."""
    if not source.exists():
        raise FileNotFoundError(f"{source}: data source not found (data.source in params.yaml)")
    if source.is_dir():
        return _list_folder(source)
    problem = storage.not_regular(os.stat(source).st_mode)
    if problem:  # a device would be read until memory runs out, a FIFO would block
        raise ValueError(f"{source}: data source must be a folder <class>/<image> or a .zip of one, "
                         f"and this is {problem}")
    if zipfile.is_zipfile(source):
        try:
            return _list_zip(source)
        except zipfile.BadZipFile as error:
            raise ValueError(f"{source}: not a readable zip ({shown_error(error)})") from None
    raise ValueError(f"{source}: data source must be a folder <class>/<image> or a .zip of one")


def _skip(name: str, reason: str) -> dict:
    return {"file": name, "reason": reason}


def _classify(relative: str) -> tuple[str | None, str | None]:
    """(label, reason-to-skip) for a path relative to the source root."""
    parts = relative.split("/")
    if len(parts) != 2:
        return None, "not directly inside a class folder"
    if not parts[1].lower().endswith(IMAGE_SUFFIXES):
        return None, "not an image file name"
    if not parts[0].strip():
        return None, "empty class name"
    return parts[0], None


def _reader(path: pathlib.Path) -> Callable[[], bytes]:
    """Reads a regular file of at most limits.MAX_IMAGE_BYTES (storage.read_regular)."""
    return lambda: storage.read_regular(path, limits.MAX_IMAGE_BYTES)


def _list_folder(root: pathlib.Path):
    images, skipped = [], []
    for path in sorted(p for p in root.rglob("*") if not p.is_dir()):
        relative = path.relative_to(root).as_posix()
        if relative == "manifest.csv" or relative.startswith(".") or path.name.startswith("."):
            continue
        label, reason = _classify(relative)
        if not reason:
            try:
                reason = storage.not_regular(os.stat(path).st_mode)  # FIFOs, devices: never opened
            except OSError as error:  # a dangling link
                reason = f"cannot be read ({error.strerror or error})"
        if reason:
            skipped.append(_skip(relative, reason))
            continue
        images.append(SourceImage(label, relative, _reader(path)))
    manifest = root / "manifest.csv"
    groups = {}
    if manifest.exists():
        groups = _read_manifest(storage.read_regular(manifest, limits.MAX_IMAGE_BYTES), str(manifest))
    return images, groups, skipped


def empty_class_folders(source: pathlib.Path) -> list[str]:
    """Class folders of a folder source that hold no file at all (reported, not an error)."""
    if not source.is_dir():
        return []
    return sorted(folder.name for folder in source.iterdir()
                  if folder.is_dir() and not folder.name.startswith(".")
                  and not any(child.is_file() for child in folder.rglob("*")))


# Compression methods zipfile reads (stored, deflate, bzip2, LZMA); a member stored with any other is skipped.
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2",
                zipfile.ZIP_LZMA: "lzma"}


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member is not read, from its header alone: encrypted, a compression method
    zipfile cannot read, or more than limits.MAX_IMAGE_BYTES uncompressed; else None.
    (`_read_member` reads in chunks and stops at the header's size, so a member cannot grow
    past it once read.)"""
    if info.flag_bits & 0x1:
        return "encrypted (password-protected), not read"
    if info.compress_type not in _ZIP_METHODS:
        return f"compression method {info.compress_type} is not supported (only {', '.join(_ZIP_METHODS.values())})"
    if info.file_size > limits.MAX_IMAGE_BYTES:
        return f"{info.file_size} bytes, over the limit of {limits.MAX_IMAGE_BYTES} bytes"
    return None


def _list_zip(archive: pathlib.Path):
    images, skipped, groups = [], [], {}
    with zipfile.ZipFile(archive) as handle:
        members = {info.filename: info for info in handle.infolist()}
        names = sorted(info.filename for info in handle.infolist()
                       if not info.is_dir() and not _hidden(info.filename))
    # A zip of a folder may keep the folder as a single top-level directory: strip it when
    # everything is inside one and something lies deeper than <folder>/<file> (files at the
    # folder's own level, manifest.csv or a stray readme, must not stop that).
    tops = {name.split("/")[0] for name in names}
    wrapped = (len(tops) == 1 and all("/" in name for name in names)
               and any(name.count("/") >= 2 for name in names))
    prefix = f"{tops.pop()}/" if wrapped else ""
    reader = _ZipReader(archive)
    for name in names:
        relative = name[len(prefix):]
        if relative == "manifest.csv":
            if _member_problem(members[name]):
                raise ValueError(f"{archive}: manifest.csv: {_member_problem(members[name])}")
            with zipfile.ZipFile(archive) as handle:
                groups = _read_manifest(_read_member(handle, name), f"{archive}: {name}")
            continue
        if _hidden(relative):
            continue
        label, reason = _classify(relative)
        reason = reason or _member_problem(members[name])  # from the header, before anything is read
        if reason:
            skipped.append(_skip(relative, reason))
            continue

        images.append(SourceImage(label, relative, functools.partial(reader.read, name)))
    return images, groups, skipped


class _ZipReader:
    """Reads members of one archive through a handle opened on first use and kept: opening a zip
    parses its whole directory, which for thousands of members costs more than reading them."""

    def __init__(self, archive: pathlib.Path):
        self.archive = archive
        self.handle: zipfile.ZipFile | None = None

    def read(self, member: str) -> bytes:
        if self.handle is None:
            self.handle = zipfile.ZipFile(self.archive)
        return _read_member(self.handle, member)


_CHUNK_BYTES = 1 << 16  # zip members are read this much at a time


def _read_member(handle: zipfile.ZipFile, member: str) -> bytes:
    """A member's bytes, read in chunks and never more than its header's size (nor
    limits.MAX_IMAGE_BYTES): `ZipFile.read` inflates up to 2 GiB in one call before it checks
    anything, so a member whose headers understate its size cost that much memory. A member
    that is not what its header says ends in zipfile.BadZipFile (its CRC, or its size)."""
    info = handle.getinfo(member)
    most = min(info.file_size, limits.MAX_IMAGE_BYTES)
    if info.file_size > most:
        raise zipfile.BadZipFile(f"{info.file_size} bytes, over the limit of {limits.MAX_IMAGE_BYTES} bytes")
    chunks, total = [], 0
    with handle.open(info) as stream:
        while True:
            chunk = stream.read(min(_CHUNK_BYTES, most + 1 - total))
            if not chunk:
                break
            total += len(chunk)
            if total > most:
                raise zipfile.BadZipFile(f"holds more than the {info.file_size} bytes its header says")
            chunks.append(chunk)
    return b"".join(chunks)


def _hidden(name: str) -> bool:
    """Hidden files (.DS_Store), hidden top-level folders and macOS's __MACOSX resource forks."""
    return name.startswith((".", "__MACOSX/")) or name.split("/")[-1].startswith(".")


def _manifest_rows(data: bytes, where: str) -> tuple[set, list[dict]]:
    """The columns and rows of a manifest.csv's bytes; ValueError naming `where` (the file) and
    the line when it is not UTF-8 text or not CSV (a field over csv's 131,072 characters)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ValueError(f"{where}: line {line}: not UTF-8 text (byte {error.start})") from None
    reader = csv.DictReader(io.StringIO(text))
    try:
        columns = set(reader.fieldnames or ())
        rows = list(reader)
    except csv.Error as error:
        raise ValueError(f"{where}: line {reader.reader.line_num}: not readable CSV ({shown_error(error)})") from None
    return columns, rows


def _read_manifest(data: bytes, where: str = "manifest.csv") -> dict[str, str]:
    """Crop name to source photo, from a manifest with 'crop' and 'source_photo' columns; a
    reference-photo manifest ('file' and 'side', see `read_sides`) groups nothing."""
    columns, rows = _manifest_rows(data, where)
    if {"crop", "source_photo"} <= columns:
        return {row["crop"]: row["source_photo"] for row in rows}
    if {"file", "side"} <= columns:
        return {}
    raise ValueError(f"{where}: needs the columns 'crop' and 'source_photo' (or 'file' and 'side')")


def read_sides(source: pathlib.Path) -> dict[str, str]:
    """Image name (relative to the source root) to the pill face it shows, from the 'file' and
    'side' columns of the source's manifest.csv; empty without one or without those columns."""
    if source.is_dir():
        manifest = source / "manifest.csv"
        data, where = None, str(manifest)
        if manifest.exists():
            data = storage.read_regular(manifest, limits.MAX_IMAGE_BYTES)
    else:
        with zipfile.ZipFile(source) as handle:
            names = [name for name in handle.namelist() if name.split("/")[-1] == "manifest.csv"
                     and name.count("/") <= 1 and not _hidden(name)]
            data = None
            if names:
                where = f"{source}: {min(names, key=len)}"
                problem = _member_problem(handle.getinfo(min(names, key=len)))
                if problem:
                    raise ValueError(f"{where}: {problem}")
                try:
                    data = _read_member(handle, min(names, key=len))
                except (zipfile.BadZipFile, zlib.error) as error:
                    raise ValueError(f"{where}: cannot be read ({shown_error(error)})") from None
    if data is None:
        return {}
    columns, rows = _manifest_rows(data, where)
    if not {"file", "side"} <= columns:
        return {}
    return {row["file"]: row["side"].strip().lower() for row in rows}


class Ingested(NamedTuple):
    crops: dict[str, list[tuple[np.ndarray, str, str]]]  # label -> [(pixels, source, group)]
    skipped: list[dict]
    sizes: list[tuple[int, int]]
    at_edge: int  # crops whose localised pill touches the image's edge (preprocessing.touches_edge; used whole
    # with localise: auto); 0 unlocalised


def decode_images(images: list[SourceImage], max_pixels: int, skipped: list[dict],
                  progress: Callable[[int, int], None] | None = None) -> Iterator[tuple[SourceImage, np.ndarray]]:
    """Each image and its (H, W, 3) uint8 RGB pixels, in order. Files that cannot be read or
    decoded, and repeated copies of a photo, are appended to `skipped` (file and reason) and
    left out. Any exception reading or decoding one image (a corrupt zip member, a decoder's
    IndexError) is that image's skip reason; the others are still read."""
    first_seen: dict[str, SourceImage] = {}  # SHA-256 of the file's bytes -> where it was first
    for done, image in enumerate(images, start=1):
        if progress:
            progress(done, len(images))
        try:
            data = image.read()
            digest = hashlib.sha256(data).hexdigest()
            if digest in first_seen:
                # The same photo twice: within a class it could land in both gallery and queries;
                # across classes its label is contradictory. The first copy is kept.
                original = first_seen[digest]
                where = "" if original.label == image.label else f" in another class ({original.label})"
                skipped.append(_skip(image.name, f"duplicate of {original.name}{where}"))
                continue
            first_seen[digest] = image
            rgb = decode_image(data, image.name, max_pixels)
        except (ImageError, storage.FileRefused) as error:
            skipped.append(_skip(image.name, error.reason))
            continue
        except OSError as error:
            skipped.append(_skip(image.name, f"cannot be read ({error.strerror or shown_error(error)})"))
            continue
        except (zipfile.BadZipFile, zlib.error) as error:  # a corrupt zip member
            skipped.append(_skip(image.name, f"cannot be read ({shown_error(error)})"))
            continue
        except Exception as error:  # whatever else a hostile file makes a library raise
            skipped.append(_skip(image.name, f"cannot be read ({type(error).__name__}: {shown_error(error)})"))
            continue
        yield image, rgb


def ingest(images: list[SourceImage], groups: dict[str, str], config: PreprocessConfig,
           progress: Callable[[int, int], None] | None = None) -> Ingested:
    """Decode and crop every image; report and skip what cannot be used."""
    crops: dict[str, list] = defaultdict(list)
    skipped: list[dict] = []
    sizes: list[tuple[int, int]] = []
    at_edge = 0
    for image, rgb in decode_images(images, config.max_image_pixels, skipped, progress):
        sizes.append((rgb.shape[1], rgb.shape[0]))
        crop = preprocess(rgb, config)
        if crop is None:
            skipped.append(_skip(image.name, "no pill found"))
            continue
        if config.localise and touches_edge(crop.box, rgb.shape[1], rgb.shape[0]):
            at_edge += 1
        group = groups.get(image.name, image.name)
        crops[image.label].append((crop.pixels, image.name, group))
    return Ingested(dict(crops), skipped, sizes, at_edge)
