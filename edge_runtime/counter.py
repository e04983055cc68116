"""The counter: what `pilltrack-edge serve` runs behind its page, with no web code in it.

A `Counter` reads frames from a source (a camera, a video played in a loop, a folder of photos
shown in turn) in a thread of its own, answers each with the CLI's `Identifier` and `Smoother`,
and keeps the latest frame, answer and the device step's time for the page to show. It enrolls
and removes pills with the CLI's code (`enrollment`, under the bundle's lock, atomic), from
uploaded photos or from shots of the live view, and answers a close call from several faces of
one pill together (`identification.combine_views`). After a change of the gallery, by the page
or by another command, the next frame is answered with the new gallery: every frame first checks
whether bundle.json was replaced.

A camera that fails is reported in the answer (`error`) and opened again after
`capture.MAX_BACKOFF_S`, as long as the counter runs; a video or folder that cannot be read is
reported and retried the same way. The interpreter is used by one thread at a time (`_model`).

Why one module of about 450 lines: one object whose state (the current answer, the shots being
taken, the gallery's version) its frame loop and the page's requests share, through its lock,
condition and stop event.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import json
import os
import secrets
import stat
import sys
import threading
import time
from typing import Callable, Iterator, NamedTuple

import cv2
import numpy as np

from edge_runtime import capture, enrollment, evidence, gallery, limits, storage
from edge_runtime.bundle import SIDECAR, update_gallery
from edge_runtime.capture import CaptureError, Frame
from edge_runtime.display import draw_box
from edge_runtime.identification import Identifier, Result, Smoother, combine_views
from edge_runtime.interpreter import l2_normalise, runtime_name
from edge_runtime.preprocessing import IMAGE_SUFFIXES, ImageError, decode_image
from edge_runtime.quiet import native_stderr_silenced

THUMBNAILS = "thumbnails"  # folder in the bundle directory: one JPEG per pill enrolled through the page;
# written, read and deleted only inside it, never through a symbolic link (Counter._thumbnail_folder)
STEP_WINDOW = 200  # frames over which the device step's median and 95th percentile are shown
JPEG_QUALITY = 80  # of the streamed frames and the thumbnails
DEFAULT_VIDEO_FPS = 10.0  # a video file that declares no frame rate plays at this
CONFIRMATIONS = "confirmations.jsonl"  # in the bundle directory: the answers staff confirmed, a JSON line each


class Refused(ValueError):
    """A request the counter refuses without changing anything: bad input (a label, a photo, a
    limit); the message says what and, for photos, which."""


class Conflict(ValueError):
    """A gallery change that needs the user's word first, or that the gallery no longer allows:
    a label that names an enrolled pill in another spelling (`existing`), a rename onto another
    pill, an undo after the gallery changed otherwise. Nothing changed."""

    def __init__(self, message: str, existing: str | None = None, removes: dict | None = None):
        super().__init__(message)
        self.existing = existing  # the enrolled pill a label differs from only in case or spacing
        self.removes = removes  # a new gallery: {"pills": N, "photos": M} it would remove


class ThumbnailRefused(ValueError):
    """The thumbnails folder, or a file in it, is not what the page may write or delete: a symbolic
    link (which could lead outside the bundle) or not a folder / regular file. Names the path."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}; the page writes and deletes thumbnails only inside the bundle "
                         "directory, so it refuses this: make it a plain folder of the bundle's own (or "
                         "remove it)")


class NotReady(RuntimeError):
    """The live view cannot give what was asked (no frame with a pill within limits.SHOT_WAIT_S,
    a camera that fails): try again."""


class Live(NamedTuple):
    sequence: int  # frames answered so far
    rgb: np.ndarray  # the frame
    result: Result
    answer: dict  # what the page shows (Counter.describe)
    jpeg: bytes | None  # the frame with the pill's box, for the stream; None while nobody watches
    embedding: np.ndarray | None = None  # this frame's pill's own embedding (not the track's)
    crop: np.ndarray | None = None  # this frame's pill as the model saw it, RGB


def video_source(path: str, max_pixels: int = limits.MAX_IMAGE_PIXELS) -> Callable[[], Iterator[Frame]]:
    """Frames of a video file, played from the start each time the source is opened; each frame
    held to `max_pixels` (the bundle's max_image_pixels, as photos are: capture.video_frames)."""
    return lambda: capture.video_frames(path, max_pixels)


def video_rate(path: str) -> float:
    """The frame rate a video file declares (OpenCV's CAP_PROP_FPS), at most limits.MAX_FPS; a
    file that declares none usable (0, NaN, absurd) plays at DEFAULT_VIDEO_FPS, saying so."""
    with native_stderr_silenced():
        video = cv2.VideoCapture(path)
        try:
            rate = float(video.get(cv2.CAP_PROP_FPS)) if video.isOpened() else 0.0
        finally:
            video.release()
    if not np.isfinite(rate) or not 0.0 < rate <= 1000.0:
        print(f"warning: {path} declares no usable frame rate ({rate:g}); playing it at {DEFAULT_VIDEO_FPS:g} fps "
              "(give --fps)", file=sys.stderr)
        return DEFAULT_VIDEO_FPS
    return min(rate, limits.MAX_FPS)


def folder_photos(directory: str) -> list[str]:
    """The photos of a folder (by IMAGE_SUFFIXES, sorted), or ImageError naming the folder."""
    try:
        names = sorted(name for name in os.listdir(directory) if name.lower().endswith(IMAGE_SUFFIXES))
    except OSError as error:
        raise ImageError(directory, f"cannot be read ({error.strerror or error})") from None
    if not names:
        raise ImageError(directory, f"no photos in it (files ending {', '.join(IMAGE_SUFFIXES)})")
    return [os.path.join(directory, name) for name in names]


def folder_source(directory: str, max_pixels: int) -> Callable[[], Iterator[Frame]]:
    """Each photo of a folder in turn (listed again every round, so photos added show up); one
    that cannot be read is reported on stderr and skipped."""
    def skip(error):
        print(f"skipped {error}", file=sys.stderr)

    return lambda: capture.image_frames(folder_photos(directory), max_pixels, on_error=skip)


def camera_source(index: int, opener: Callable = capture.open_camera,
                  sleep: Callable[[float], None] = time.sleep) -> Callable[[], Iterator[Frame]]:
    """Frames of a camera, its failed reads retried as the CLI retries them."""
    return lambda: capture.camera_frames(index, opener=opener, sleep=sleep)


class Counter:
    """The live loop and the gallery changes behind the page (see the module docstring).

    `open_frames()` starts the source again (after its end or a failure); `fps` paces a video or
    a folder (None: as fast as frames come, a camera's own rate). `wait(seconds)` is the pause
    between tries and the pacing, stopped early by `stop()` (tests pass a faster one)."""

    def __init__(self, identifier: Identifier, open_frames: Callable[[], Iterator[Frame]], source: str,
                 fps: float | None = None, smooth: int = 5, on_frame: Callable[[], None] | None = None,
                 track_frames: int = evidence.TRACK_FRAMES):
        if fps is not None and not 0.0 < fps <= limits.MAX_FPS:
            raise ValueError(f"fps must be within (0, {limits.MAX_FPS:g}], got {fps}")
        self.identifier = identifier
        self.bundle_dir = identifier.bundle.directory
        self.source = source
        self.fps = fps
        self.open_frames = open_frames
        self.smoother = Smoother(smooth)
        self.on_frame = on_frame or (lambda: None)
        self.viewers = 0  # streams open: frames are JPEG-encoded only while someone watches
        self.error: str | None = None  # what stops the live view now (a camera failing), shown on the page
        self.steps: collections.deque = collections.deque(maxlen=STEP_WINDOW)  # seconds per frame
        self.live: Live | None = None
        self.shots: list[dict] = []  # camera shots waiting to be enrolled: embedding, thumbnail
        self.faces: list[np.ndarray] = []  # embeddings of the faces of one pill, for a close call
        self.last_enroll: dict | None = None  # what undo_enroll takes back: label, rows added, thumbnail before
        self.track = evidence.Track(track_frames)  # the pill in view, followed while still (1: frame by frame)
        self.tiers, self.tiers_note = evidence.load_tiers(self.bundle_dir, identifier.bundle.model_sha256)
        self._thumbnails: set = set()  # names present in the thumbnails folder (refreshed after each change)
        # the interpreter, and self.identifier with its tiers and thumbnails: one thread at a time
        self._model = threading.Lock()
        self._changed = threading.Condition()  # a new frame answered, or an error
        self._stopping = threading.Event()
        self._stamp = self._bundle_stamp()
        self._thread: threading.Thread | None = None
        self._refresh_thumbnails()

    # --- the live loop ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pilltrack-counter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopping.is_set():
            answered = 0
            try:
                with contextlib.closing(self.open_frames()) as frames:
                    for frame in frames:
                        started = time.monotonic()
                        self.answer_frame(frame)
                        answered += 1
                        if self._stopping.is_set():
                            return
                        if self.fps is not None:
                            self._stopping.wait(max(0.0, 1.0 / self.fps - (time.monotonic() - started)))
                if answered:
                    continue  # a video's end: play it again; a folder: the next round
                self._report(f"{self.source}: gave no frame; trying again in {capture.MAX_BACKOFF_S:g} s")
            except CaptureError as error:  # the camera failing: shown, and the camera opened again
                self._report(f"{error}; trying again in {capture.MAX_BACKOFF_S:g} s")
            except (ValueError, OSError) as error:  # a video or photo folder gone bad while serving
                self._report(f"{error}; trying again in {capture.MAX_BACKOFF_S:g} s")
            except Exception as error:  # anything else: shown, and the page goes on serving
                self._report(f"{type(error).__name__}: {error}; trying again in {capture.MAX_BACKOFF_S:g} s")
            self._stopping.wait(capture.MAX_BACKOFF_S)

    def _report(self, message: str) -> None:
        print(f"error: {message}", file=sys.stderr)
        with self._changed:
            self.error = message
            self._changed.notify_all()
        self.on_frame()

    def answer_frame(self, frame: Frame) -> Live:
        """Answer one frame and make it the live one."""
        if self._bundle_stamp() != self._stamp:  # another command changed the gallery
            self.reload()
        with self._model:
            identifier, tiers, thumbnails = self.identifier, self.tiers, self._thumbnails
            start = time.perf_counter()
            found = identifier.embed_image(frame.rgb)
            if found is None:
                embedding = crop = None
                self.track.update(None, None)
                result, views, why = Result(None, None, [], None, {}, None), 0, None
            else:
                embedding, crop = found
                combined, views, why = self.track.update(crop.box, embedding)
                result = identifier.identify_embedding(combined, crop.box)  # all the still pill's frames
            step = time.perf_counter() - start
        announced = self.smoother.update(result.label)
        self.steps.append(step)
        answer = self.describe(result, announced, tiers, thumbnails)
        answer.update(frame=frame.index, step_ms=round(step * 1000.0, 3), views=views, track=self.track.started,
                      guidance=evidence.frame_guidance(frame.rgb, result.box, identifier.preprocess,
                                                       moving=why == "moved"))
        jpeg = None
        if self.viewers:
            bgr = draw_box(np.ascontiguousarray(frame.rgb[:, :, ::-1]), result, announced)
            jpeg = encode_jpeg(bgr)
        with self._changed:
            sequence = (self.live.sequence if self.live else 0) + 1
            answer["sequence"] = sequence
            self.live = Live(sequence, frame.rgb, result, answer, jpeg, embedding,
                             None if crop is None else crop.pixels)
            self.error = None
            self._changed.notify_all()
        self.on_frame()
        return self.live

    @staticmethod
    def describe(result: Result, announced: str | None, tiers: evidence.Tiers | None = None,
                 thumbnails: set = frozenset()) -> dict:
        """An answer as the page shows it: `state` "pill" (announced names one), "unknown" or
        "none" (no pill), the frame's own label, distance, closest pills, look-alike and box,
        and whether it is worth turning the pill over for (evidence.worth_turning_over); `tier` (evidence.tier)
        in words, and `candidates`: the closest pills (at most 3), each with its thumbnail's
        name when it has one, for staff to compare with the pill by eye."""
        state = "none" if announced is None else "unknown" if announced == gallery.UNKNOWN else "pill"
        level = evidence.tier(result, tiers)
        candidates = []
        for rank, match in enumerate(result.top_k[:3]):
            name = thumbnail_name(match.label)
            candidates.append({"label": match.label, "rank": rank + 1,
                               "thumbnail": name if name in thumbnails else None})
        return {
            "tier": level,
            "tier_words": evidence.WORDS[level],
            "candidates": candidates,
            "state": state,
            "announced": announced,
            "label": result.label,
            "distance": None if result.distance is None else round(result.distance, 6),
            "top_k": [{"label": m.label, "distance": round(m.distance, 6)} for m in result.top_k],
            "lookalike": result.lookalike,
            "close_call": state == "unknown" and evidence.worth_turning_over(result, level),
            "box": None if result.box is None else [int(v) for v in result.box],
        }

    def next_live(self, after: int, timeout: float) -> Live | None:
        """The live frame once one newer than sequence `after` is answered, or None after
        `timeout` seconds (or when the counter stops)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._stopping.is_set():
                if self.live is not None and self.live.sequence > after:
                    return self.live
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)
        return None

    def status(self) -> dict:
        """The latest answer, with what stops the live view if anything (`error`)."""
        with self._changed:
            answer = dict(self.live.answer) if self.live else {"state": "waiting", "sequence": 0}
            answer["error"] = self.error
        return answer

    # --- the gallery ---------------------------------------------------------------------------

    def _bundle_stamp(self):
        try:
            info = os.stat(os.path.join(self.bundle_dir, SIDECAR))
        except OSError:
            return None
        return info.st_ino, info.st_mtime_ns, info.st_size

    def reload(self) -> None:
        """Answer from the gallery as it is on disk now; a bundle that does not load keeps the
        previous gallery answering (and is reported)."""
        stamp = self._bundle_stamp()
        try:
            identifier = self.identifier.reload()
        except ValueError as error:
            print(f"error: {error}; answering with the gallery loaded before", file=sys.stderr)
            self._stamp = stamp
            return
        tiers, tiers_note = evidence.load_tiers(self.bundle_dir, identifier.bundle.model_sha256)
        present = self._present_thumbnails()
        with self._model:  # one swap: no answer pairs the new gallery with the old tiers or thumbnails
            self.identifier = identifier
            self.tiers, self.tiers_note, self._thumbnails = tiers, tiers_note, present
        self._stamp = stamp

    def _pill_frame(self) -> np.ndarray:
        """The next live frame in which a pill is found (waiting up to limits.SHOT_WAIT_S)."""
        deadline = time.monotonic() + limits.SHOT_WAIT_S
        after = self.live.sequence if self.live else 0
        while (left := deadline - time.monotonic()) > 0:
            live = self.next_live(after, left)
            if live is None:
                break
            if live.result.box is not None:
                return live.rgb
            after = live.sequence
        problem = f" ({self.error})" if self.error else ""
        raise NotReady(f"no pill found in the live view for {limits.SHOT_WAIT_S:g} s{problem}: "
                       "put the pill under the camera, on a plain background")

    def _embed(self, rgb: np.ndarray, source: str):
        with self._model:
            found = self.identifier.embed_image(rgb)
        if found is None:
            raise Refused(f"{source}: no pill found")
        return found

    def take_shot(self, replace: int | None = None) -> dict:
        """A shot of the live view for enrolling: the next frame where a pill is found, its
        embedding kept with a thumbnail of the pill. `replace` retakes shot number `replace`."""
        if replace is not None and not 0 <= replace < len(self.shots):
            raise Refused(f"there is no shot {replace} to retake ({len(self.shots)} taken)")
        if replace is None and len(self.shots) >= limits.MAX_ENROLL_PHOTOS:
            raise Refused(f"{len(self.shots)} shots taken, the limit of one enroll")
        embedding, crop = self._embed(self._pill_frame(), "the live view")
        shot = {"embedding": embedding, "thumbnail": encode_jpeg(np.ascontiguousarray(crop.pixels[:, :, ::-1]))}
        if replace is None:
            self.shots.append(shot)
            replace = len(self.shots) - 1
        else:
            self.shots[replace] = shot
        return {"shot": replace, "shots": len(self.shots)}

    def clear_shots(self) -> None:
        self.shots = []

    def take_face(self) -> dict:
        """One more face of the pill in view, and the answer from all the faces taken together
        (`combine_views`, the evaluation's multi-photo rule), with `views` faces."""
        if len(self.faces) >= limits.MAX_VIEWS:
            raise Refused(f"{len(self.faces)} faces taken, the limit of {limits.MAX_VIEWS}; start again")
        embedding, _ = self._embed(self._pill_frame(), "the live view")
        self.faces.append(embedding)
        with self._model:
            identifier, tiers, thumbnails = self.identifier, self.tiers, self._thumbnails
            result = identifier.identify_embedding(combine_views(np.stack(self.faces)))
        answer = self.describe(result, result.label, tiers, thumbnails)
        answer["views"] = len(self.faces)
        return answer

    def clear_faces(self) -> None:
        self.faces = []

    def enroll_photos(self, label: str, photos: list[tuple[str, bytes]], new_gallery: bool = False,
                      merge_into: str | None = None, replaces: int | None = None) -> dict:
        """Enroll `label` from uploaded photos, (file name, bytes) each, decoded with the CLI's
        checks and limits. Any photo that cannot be used (not an image, too large, no pill found)
        refuses the whole upload, naming each such photo: nothing is enrolled. A label naming an
        enrolled pill in another spelling needs `merge_into` (`merge_target`); a new gallery needs
        `replaces`, the number of pills it removes (`check_new_gallery`)."""
        label = self.merge_target(_checked_label(label), new_gallery, merge_into)
        self.check_new_gallery(new_gallery, replaces)
        if not photos:
            raise Refused("no photos uploaded: choose the pill's photos first")
        if len(photos) > limits.MAX_UPLOAD_FILES:
            raise Refused(f"{len(photos)} photos uploaded, over the limit of {limits.MAX_UPLOAD_FILES}; "
                          "upload them in parts")
        max_pixels = self.identifier.bundle.preprocess.max_image_pixels
        embeddings, problems, pictures = [], [], []
        for name, data in photos:
            try:
                embedding, crop = self._embed(decode_image(data, name, max_pixels), name)
            except (ImageError, Refused) as error:
                problems.append(str(error))
                continue
            embeddings.append(embedding)
            pictures.append(encode_jpeg(np.ascontiguousarray(crop.pixels[:, :, ::-1])))
        if problems:
            raise Refused("nothing enrolled: " + "; ".join(problems))
        return self._enroll(label, np.stack(embeddings), pictures, new_gallery)

    def enroll_shots(self, label: str, new_gallery: bool = False, merge_into: str | None = None,
                     replaces: int | None = None) -> dict:
        """Enroll `label` from the shots taken (`take_shot`), then forget them (`merge_into` and
        `replaces` as for `enroll_photos`)."""
        label = self.merge_target(_checked_label(label), new_gallery, merge_into)
        if not self.shots:
            raise Refused("no shots taken: take the pill's shots first")
        self.check_new_gallery(new_gallery, replaces)
        shots = list(self.shots)
        done = self._enroll(label, np.stack([shot["embedding"] for shot in shots]),
                            [shot["thumbnail"] for shot in shots], new_gallery)
        self.shots = []
        return done

    def check_new_gallery(self, new_gallery: bool, replaces: int | None) -> None:
        """A new gallery removes every pill enrolled now: Conflict, saying how many pills and
        photos, unless `replaces` is that number of pills (the user saw it and agreed)."""
        if not new_gallery:
            return
        labels = self.identifier.bundle.labels
        pills = len(set(labels))
        if replaces != pills:
            raise Conflict(f"starting a new gallery removes every pill enrolled now: {_count(pills, 'pill')} "
                           f"({_count(len(labels), 'photo')}); confirm to go on; nothing enrolled",
                           removes={"pills": pills, "photos": len(labels)})

    def merge_target(self, label: str, new_gallery: bool, merge_into: str | None) -> str:
        """The label to enroll under: `label` itself, unless an enrolled pill's label differs from it
        only in case or spacing ("advil 200 MG", "Advil 200mg" for "Advil 200 mg"). Then Conflict,
        naming that pill, unless `merge_into` names it (the user agreed to add the photos to it),
        and its spelling is returned. A new gallery merges into nothing."""
        if new_gallery:
            return label
        labels = dict.fromkeys(self.identifier.bundle.labels)
        if label in labels:
            return label
        existing = next((name for name in labels if _loose_key(name) == _loose_key(label)), None)
        if existing is None:
            return label
        if merge_into is not None and gallery.label_key(gallery.normalise_label(merge_into)) == gallery.label_key(existing):
            return existing
        raise Conflict(f"{existing!r} is enrolled already, spelt otherwise than {label!r}: add these photos to "
                       f"{existing!r}, or change the name; nothing enrolled", existing)

    def _enroll(self, label: str, embeddings: np.ndarray, pictures: list[bytes], new_gallery: bool) -> dict:
        """Enroll the rows; `pictures` are their crops as JPEG bytes, one a row: the first is the
        pill's thumbnail (when it has none yet), each the row's photo in the per-photo view."""
        self.check_thumbnails()  # before the gallery changes: a thumbnail the page could not keep inside
        labels_before = set(self.identifier.bundle.labels)
        previous = None if new_gallery else self.thumbnail(thumbnail_name(label))
        count = enrollment.enroll(self.bundle_dir, label, embeddings, new_gallery)
        if not new_gallery:  # a pill enrolled before under another case keeps its first spelling
            label = gallery.find_label(dict.fromkeys(self.identifier.bundle.labels), label) or label
        stored = l2_normalise(gallery.check_embeddings(embeddings))  # the rows as enrollment.enroll stored them
        if previous is None:
            self._write_picture(thumbnail_name(label), pictures[0], f"{label!r}'s thumbnail")
        for row, picture in zip(stored, pictures):
            self._write_picture(photo_name(row), picture, f"a photo of {label!r}")
        self.reload()  # after the pictures: the first answer from the new gallery has its thumbnail
        if new_gallery:
            self._drop_thumbnails(keep={label})
        # what `undo` takes back: these rows (a new gallery: nothing)
        self.last_enroll = None if new_gallery else {
            "label": label, "embeddings": stored, "new_pill": label not in labels_before, "thumbnail": previous}
        self._refresh_thumbnails()
        return {"label": label, "photos": len(embeddings), "in_gallery": count, "new_gallery": new_gallery,
                "new_pill": new_gallery or label not in labels_before}

    def undo_enroll(self) -> dict:
        """Take back the last enroll of this page: remove exactly the rows it added, in one atomic
        change under the bundle's lock, as long as they are still the gallery's last rows, under
        that label (Conflict otherwise: the gallery changed since). The pill's thumbnail goes back
        to the one before, or goes with the pill."""
        last = self.last_enroll
        if last is None:
            raise Conflict("there is no enroll to undo (a new gallery cannot be undone); nothing changed")
        self.check_thumbnails()
        added, label = last["embeddings"], last["label"]

        def take_back(current, labels):
            count = len(added)
            tail, tail_labels = current[len(labels) - count:], labels[len(labels) - count:]
            if (len(labels) <= count or len(tail_labels) != count or any(name != label for name in tail_labels)
                    or tail.shape != added.shape or not np.allclose(tail, added, atol=1e-6)):
                raise Conflict(f"the gallery changed since {label!r} was enrolled, so that enroll cannot be "
                               "undone; remove the pill instead; nothing changed")
            return current[:len(labels) - count], list(labels[:len(labels) - count])

        update_gallery(self.bundle_dir, take_back)
        self.last_enroll = None
        self.reload()
        remaining = set(self.identifier.bundle.labels)
        # the photos' thumbnails go with their rows; the pill's with the pill, or when this enroll made it
        self._drop_thumbnails(keep=remaining if last["thumbnail"] is not None else remaining - {label})
        return {"label": label, "photos": len(added), "in_gallery": self.identifier.bundle.labels.count(label)}

    def rename(self, label: str, new_label: str) -> dict:
        """Give an enrolled pill (matched as `remove` matches it) another label, keeping its rows,
        in one atomic change of the gallery under the bundle's lock (bundle.update_gallery, which
        enrollment's enroll and remove use too), and its thumbnail. Conflict when the new label
        names another enrolled pill (in any case or spacing)."""
        self.check_thumbnails()
        old = gallery.normalise_label(label)
        new = _checked_label(new_label)
        spelling = None

        def relabel(current, labels):
            nonlocal spelling
            spelling = enrollment.enrolled_spelling(labels, old)
            other = next((name for name in dict.fromkeys(labels)
                          if name != spelling and _loose_key(name) == _loose_key(new)), None)
            if other is not None:
                raise Conflict(f"{other!r} is enrolled already: remove it first, or enroll {spelling!r}'s photos "
                               f"into it; nothing renamed", other)
            return current, [new if name == spelling else name for name in labels]

        update_gallery(self.bundle_dir, relabel)
        self.last_enroll = None
        self.reload()
        if thumbnail_name(spelling) != thumbnail_name(new):
            self._move_thumbnail(thumbnail_name(spelling), thumbnail_name(new))
        return {"label": spelling, "new_label": new, "photos": self.identifier.bundle.labels.count(new)}

    def photos(self, label: str) -> dict:
        """One pill's photos (gallery rows) in the order enrolled: each its `photo` id (a digest
        of the row, `photo_name`) and its thumbnail's file name, or None (a photo enrolled by the
        command line, which keeps no picture)."""
        bundle = self.identifier.bundle
        spelling = enrollment.enrolled_spelling(bundle.labels, gallery.normalise_label(label))
        present = self._present_thumbnails()
        listed = []
        for row, name in zip(bundle.embeddings, bundle.labels):
            if name == spelling:
                picture = photo_name(row)
                listed.append({"photo": picture[:-4], "thumbnail": picture if picture in present else None})
        return {"label": spelling, "photos": listed}

    def remove_photo(self, label: str, photo: str) -> dict:
        """Remove one photo (gallery row, by its `photo` id from `photos`) of a pill, in one atomic
        change under the bundle's lock. A pill's last photo is refused (remove the pill instead);
        a photo no longer in the gallery is refused too. Nothing changes on a refusal."""
        self.check_thumbnails()
        label = gallery.normalise_label(label)
        spelling = None

        def drop(current, labels):
            nonlocal spelling
            spelling = enrollment.enrolled_spelling(labels, label)
            rows = [i for i, name in enumerate(labels) if name == spelling]
            found = next((i for i in rows if photo_name(current[i])[:-4] == photo), None)
            if found is None:
                raise ValueError(f"{spelling!r} has no photo {limits.shown(photo)} (the gallery changed since "
                                 "it was listed?); nothing removed")
            if len(rows) == 1:
                raise ValueError(f"that is {spelling!r}'s only photo: remove the pill instead; nothing removed")
            keep = np.ones(len(labels), bool)
            keep[found] = False
            return current[keep], [name for i, name in enumerate(labels) if keep[i]]

        update_gallery(self.bundle_dir, drop)
        self.last_enroll = None
        self.reload()
        self._drop_thumbnails(keep=set(self.identifier.bundle.labels))
        return {"label": spelling, "photo": photo, "in_gallery": self.identifier.bundle.labels.count(spelling)}

    def remove(self, label: str) -> dict:
        """Remove a pill (matched as the CLI matches it), then answer without it."""
        self.check_thumbnails()
        removed = enrollment.remove(self.bundle_dir, label)
        self.last_enroll = None
        self.reload()
        self._drop_thumbnails(keep=set(self.identifier.bundle.labels))
        return {"label": gallery.normalise_label(label), "photos": removed}

    def gallery(self) -> list[dict]:
        """The enrolled pills, sorted, with their photo counts and thumbnail (file name or None)."""
        counts = collections.Counter(self.identifier.bundle.labels)
        present = self._present_thumbnails()
        listed = []
        for label in sorted(counts, key=gallery.label_key):
            name = thumbnail_name(label)
            listed.append({"label": label, "photos": counts[label], "thumbnail": name if name in present else None})
        return listed

    def thumbnail(self, name: str) -> bytes | None:
        """A thumbnail's JPEG bytes by its name (as `gallery` gives it), or None (as for a symbolic
        link in its place: only a regular file inside the bundle is read)."""
        if name not in {thumbnail_name(label) for label in set(self.identifier.bundle.labels)} | self._photo_names():
            return None
        try:
            with self._thumbnail_folder(create=False) as folder:
                if folder is None:
                    return None
                descriptor = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
                with os.fdopen(descriptor, "rb") as handle:
                    if storage.not_regular(os.fstat(descriptor).st_mode):
                        return None
                    data = handle.read(limits.MAX_IMAGE_BYTES + 1)
        except (OSError, ThumbnailRefused):
            return None
        return data if len(data) <= limits.MAX_IMAGE_BYTES else None

    def _refresh_thumbnails(self) -> None:
        self._thumbnails = self._present_thumbnails()

    def _present_thumbnails(self) -> set:
        """The names of the regular files in the thumbnails folder (none when it cannot be read)."""
        present = set()
        with contextlib.suppress(OSError, ThumbnailRefused), self._thumbnail_folder(create=False) as folder:
            if folder is not None:
                present = {name for name in os.listdir(folder) if _is_regular(folder, name, missing=False)}
        return present

    def _photo_names(self) -> set:
        """The thumbnail names of the gallery's rows (`photo_name`)."""
        return {photo_name(row) for row in self.identifier.bundle.embeddings}

    # --- the thumbnails folder: every path written, read or deleted stays inside the bundle ---------

    @contextlib.contextmanager
    def _thumbnail_folder(self, create: bool) -> Iterator[int | None]:
        """A descriptor of the bundle's thumbnails folder, opened without following a symbolic link
        (O_NOFOLLOW), for the block to work in by name (dir_fd): a folder swapped for a link
        afterwards is not followed either. None when there is none and `create` is false.
        ThumbnailRefused, naming the path, when it is a symbolic link or not a folder."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        bundle = os.open(self.bundle_dir, flags)
        try:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(THUMBNAILS, 0o755, dir_fd=bundle)
            try:
                folder = os.open(THUMBNAILS, flags | os.O_NOFOLLOW, dir_fd=bundle)
            except FileNotFoundError:
                if create:
                    raise
                folder = None
            except OSError as error:
                if error.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise ThumbnailRefused(os.path.join(self.bundle_dir, THUMBNAILS),
                                       _what_is(bundle, THUMBNAILS, "a folder")) from None
        finally:
            os.close(bundle)
        try:
            yield folder
        finally:
            if folder is not None:
                os.close(folder)

    def check_thumbnails(self) -> None:
        """Refused (naming the path) when the bundle's thumbnails folder is a symbolic link or not a
        folder, or holds a thumbnail (*.jpg) that is a symbolic link or not a regular file: the page
        would write or delete it, and it writes and deletes only inside the bundle. Checked before
        a change of the gallery, so such a bundle changes nothing."""
        try:
            with self._thumbnail_folder(create=False) as folder:
                if folder is None:
                    return
                for name in sorted(os.listdir(folder)):
                    if name.endswith(".jpg") and not _is_regular(folder, name, missing=True):
                        raise ThumbnailRefused(os.path.join(self.bundle_dir, THUMBNAILS, name),
                                               _what_is(folder, name, "a regular file"))
        except ThumbnailRefused as error:
            raise Refused(f"{error}; nothing changed") from None
        except OSError as error:
            raise Refused(f"{os.path.join(self.bundle_dir, THUMBNAILS)}: cannot be read "
                          f"({error.strerror or error}); nothing changed") from None

    def _write_picture(self, name: str, data: bytes, what: str) -> None:
        """A thumbnail (a pill's, or one photo's), JPEG bytes, written atomically inside the
        thumbnails folder (a temporary file created there with O_EXCL | O_NOFOLLOW, renamed over
        the name): never through a link. A failure only warns: the gallery has changed already."""
        path = os.path.join(self.bundle_dir, THUMBNAILS, name)
        try:
            with self._thumbnail_folder(create=True) as folder:
                if not _is_regular(folder, name, missing=True):
                    raise ThumbnailRefused(path, _what_is(folder, name, "a regular file"))
                _write_in(folder, name, data)
        except ThumbnailRefused as error:  # swapped for a link since check_thumbnails: left as it is
            print(f"warning: {what} not written: {error}", file=sys.stderr)
        except OSError as error:  # the pill is enrolled: a missing thumbnail only shows so
            print(f"warning: {path}: {what} not written ({error.strerror or error})", file=sys.stderr)

    def _move_thumbnail(self, old: str, new: str) -> None:
        """Rename a thumbnail inside the folder (dir_fd, a regular file only); none: nothing to do."""
        try:
            with self._thumbnail_folder(create=False) as folder:
                if folder is None or not _is_regular(folder, old, missing=False):
                    return
                if not _is_regular(folder, new, missing=True):
                    raise ThumbnailRefused(os.path.join(self.bundle_dir, THUMBNAILS, new),
                                           _what_is(folder, new, "a regular file"))
                os.replace(old, new, src_dir_fd=folder, dst_dir_fd=folder)
                os.fsync(folder)
        except (OSError, ThumbnailRefused) as error:
            print(f"warning: thumbnail not renamed: {error}", file=sys.stderr)
        self._refresh_thumbnails()

    def _drop_thumbnails(self, keep: set) -> None:
        """Delete the thumbnails (*.jpg) but those of `keep`, inside the folder (dir_fd); an entry
        that is not a regular file (a symbolic link put there meanwhile) is left, and reported."""
        wanted = {thumbnail_name(label) for label in keep} | self._photo_names()
        try:
            with self._thumbnail_folder(create=False) as folder:
                if folder is None:
                    return
                for name in os.listdir(folder):
                    if not name.endswith(".jpg") or name in wanted:
                        continue
                    if not _is_regular(folder, name, missing=True):
                        print(f"warning: {os.path.join(self.bundle_dir, THUMBNAILS, name)}: not deleted "
                              f"({_what_is(folder, name, 'a regular file')})", file=sys.stderr)
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=folder)
        except (OSError, ThumbnailRefused) as error:
            print(f"warning: thumbnails not deleted: {error}", file=sys.stderr)
        self._refresh_thumbnails()

    # --- a confirmed answer ----------------------------------------------------------------------

    def live_crop(self) -> bytes | None:
        """The pill in the live view as the model sees it (JPEG), for comparing with the
        candidates' thumbnails; None while no pill is in view."""
        live = self.live
        if live is None or live.crop is None:
            return None
        return encode_jpeg(np.ascontiguousarray(live.crop[:, :, ::-1]))

    def confirm(self, label: str, add: bool = False) -> dict:
        """Staff confirm that the pill in view is `label`, one of the live answer's candidates: the
        answer is logged (CONFIRMATIONS in the bundle directory, a JSON line each), and with `add`
        the live frame's pill joins that pill's gallery, through the enroll path (its limits, the
        bundle's lock, undo). Refused when no pill is in view or `label` is not a candidate."""
        live = self.live
        label = _checked_label(label)
        if live is None or live.embedding is None:
            raise NotReady("no pill in the live view to confirm: put the pill under the camera")
        candidates = {gallery.label_key(c["label"]): c for c in live.answer.get("candidates", [])}
        chosen = candidates.get(gallery.label_key(label))
        if chosen is None:
            shown_list = ", ".join(repr(c["label"]) for c in live.answer.get("candidates", [])) or "none"
            raise Refused(f"{label!r} is not a candidate for the pill in view (candidates: {shown_list}); "
                          "nothing logged")
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "label": chosen["label"],
                 "rank": chosen["rank"], "tier": live.answer.get("tier"), "answer": live.answer.get("label"),
                 "views": live.answer.get("views"), "source": self.source, "frame": live.answer.get("frame"),
                 "added": bool(add)}
        done = {"label": chosen["label"], "rank": chosen["rank"], "logged": CONFIRMATIONS, "added": 0}
        if add:
            picture = encode_jpeg(np.ascontiguousarray(live.crop[:, :, ::-1]))
            enrolled = self._enroll(chosen["label"], live.embedding[None, :], [picture], False)
            done.update(added=1, in_gallery=enrolled["in_gallery"])
        self._log_confirmation(entry)
        return done

    def _log_confirmation(self, entry: dict) -> None:
        """Append one JSON line to CONFIRMATIONS in the bundle directory, opened there by name
        without following a link (a link in its place is refused, naming it)."""
        path = os.path.join(self.bundle_dir, CONFIRMATIONS)
        bundle = os.open(self.bundle_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                descriptor = os.open(CONFIRMATIONS, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                                     | os.O_CLOEXEC | os.O_NONBLOCK, 0o644, dir_fd=bundle)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENXIO):
                    raise Refused(f"{path}: {_what_is(bundle, CONFIRMATIONS, 'a regular file')}; the page logs "
                                  "only to a plain file of the bundle's own; nothing logged") from None
                raise
        finally:
            os.close(bundle)
        with os.fdopen(descriptor, "a", encoding="utf-8") as handle:
            problem = storage.not_regular(os.fstat(descriptor).st_mode)
            if problem:
                raise Refused(f"{path}: {problem}; nothing logged")
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def bundle_info(self) -> dict:
        """What the page's bundle panel shows: model, runtime, profile, input size, naming rule,
        pills and photos, the source, and the device step (identify one frame) over the last
        STEP_WINDOW frames."""
        identifier = self.identifier
        bundle = identifier.bundle
        steps = np.asarray(self.steps, float) * 1000.0
        return {
            "model": bundle.files["model"].name,
            "runtime": runtime_name(),
            "profile": bundle.extra.get("profile"),
            "input_size": bundle.preprocess.image_size,
            "symmetry_views": bundle.preprocess.symmetry_views,
            "threshold": identifier.threshold,
            "lookalike_margin": bundle.lookalike_margin,
            "tiers": None if self.tiers is None else {
                "likely_distance": self.tiers.likely_distance, "likely_gap": self.tiers.likely_gap,
                "measured": self.tiers.measured},
            "tiers_note": self.tiers_note,
            "track_frames": self.track.frames,
            "pills": len(set(bundle.labels)),
            "photos": len(bundle.labels),
            "source": self.source,
            "fps": self.fps,
            "step_ms": None if not len(steps) else {
                "median": round(float(np.median(steps)), 3), "p95": round(float(np.percentile(steps, 95)), 3),
                "frames": int(len(steps))},
        }


def thumbnail_name(label: str) -> str:
    """A pill's thumbnail file: named by a digest of its label's key, so any label makes a safe name."""
    return hashlib.sha256(gallery.label_key(label).encode("utf-8")).hexdigest()[:16] + ".jpg"


def photo_name(row: np.ndarray) -> str:
    """One gallery row's photo thumbnail: "photo-" and a digest of the row's float32 bytes, as the
    bundle stores them (the same photo enrolled twice shares one)."""
    return "photo-" + hashlib.sha256(np.ascontiguousarray(row, "<f4").tobytes()).hexdigest()[:16] + ".jpg"


def _count(number: int, noun: str) -> str:
    """ "1 pill", "571 pills" """
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _is_regular(folder: int, name: str, missing: bool | None = None) -> bool:
    """Whether `name` in the folder (a descriptor) is a regular file, not following a link; when
    there is none, FileNotFoundError, or `missing` if given."""
    try:
        return stat.S_ISREG(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        if missing is None:
            raise
        return missing


def _what_is(folder: int, name: str, expected: str) -> str:
    """What `name` in the folder is, when it is not `expected`: "a symbolic link (to TARGET)", ..."""
    try:
        mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if stat.S_ISLNK(mode):
        try:
            return f"a symbolic link (to {os.readlink(name, dir_fd=folder)}), not {expected}"
        except OSError:
            return f"a symbolic link, not {expected}"
    if stat.S_ISDIR(mode):
        return f"a folder, not {expected}"
    return storage.not_regular(mode) if expected == "a regular file" else f"not {expected}"


def _write_in(folder: int, name: str, data: bytes) -> None:
    """Replace `name` in the folder (a descriptor) by `data`, atomically and durably, as
    storage.write_atomically does, but by name within the folder: the temporary file is created
    with O_EXCL | O_NOFOLLOW and renamed over `name` (which replaces a link itself, never its target)."""
    temporary = f"{storage.TEMP_PREFIX}{secrets.token_hex(6)}-{name}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=folder)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=folder)
        raise
    os.fsync(folder)


def encode_jpeg(bgr: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("a frame could not be encoded as JPEG")
    return data.tobytes()


def _loose_key(label: str) -> str:
    """What two labels that differ only in case or spacing share: "Advil 200 mg", "advil 200MG"."""
    return "".join(gallery.label_key(label).split())


def _checked_label(label) -> str:
    try:
        return gallery.check_label(label)
    except ValueError as error:
        raise Refused(str(error)) from None
