"""`pilltrack-edge`: identify pills on the device, and enroll new ones.

    pilltrack-edge --image a.jpg b.jpg          a table of what each photo shows
    pilltrack-edge --one-pill --image front.jpg back.jpg   one answer from both faces of one pill
    pilltrack-edge --camera 0                   live view (q or Esc quits)
    pilltrack-edge --video clip.mp4 --headless  one JSON line per frame
    pilltrack-edge enroll --label "Ibuprofen 400" photos/*.jpg
    pilltrack-edge enroll --new-gallery --label "Ibuprofen 400" photos/*.jpg   (only this pill)
    pilltrack-edge --cropped enroll --label "Ibuprofen 400" crops/*.png   (tight crops)
    pilltrack-edge remove --label "Ibuprofen 400"
    pilltrack-edge list
    pilltrack-edge serve --camera 0             the counter page on http://127.0.0.1:8000/

Exit codes: 0 done; 1 the camera or disk failed while running, or another command kept the
bundle locked past limits.LOCK_WAIT_S; 2 bad input (an unusable bundle, image, video, model or
argument, or one over a limit of `limits.py`). Errors are one line on stderr, no traceback;
native libraries' messages are kept off stderr (`quiet`).

Why one module of about 500 lines: the commands' options, validation and messages, which share
the error handling and exit codes above; the work itself is in the modules they call.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import time

import click
import numpy as np

from edge_runtime import capture, enrollment, evidence, gallery, limits
from edge_runtime.capture import CaptureError, Frame
from edge_runtime.display import DisplayUnavailable, Window, annotate
from edge_runtime.identification import STAGES, Identifier, Smoother, combine_views
from edge_runtime.preprocessing import AUTO, Box, touches_edge
from edge_runtime.quiet import silence_opencv

FOLDER_FPS = 10.0  # `serve --folder`'s photos a second unless --fps says otherwise


class _Command(click.Command):
    """A command (serve, enroll, ...) that, given an option of the main command (`serve --bundle
    DIR`), says it goes before the command instead of only "No such option"."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as error:
            root = ctx.find_root().command
            if any(error.option_name in option.opts for option in root.params if isinstance(option, click.Option)):
                raise click.UsageError(
                    f"{error.option_name} is an option of pilltrack-edge itself: it goes before the command, "
                    f"as in `pilltrack-edge {error.option_name} ... {self.name} ...`", ctx) from None
            raise


class _Main(click.Group):
    """Reads `--image a.jpg b.jpg` as `--image a.jpg --image b.jpg`, so shell globs work."""

    command_class = _Command

    def parse_args(self, ctx, args):
        spread, expanding, pending = [], False, False  # pending: an --image still without path
        for arg in args:
            if arg == "--image":
                if pending:
                    spread.append("--image")
                expanding = pending = True
            elif expanding and not arg.startswith("-"):
                spread += ["--image", arg]
                pending = False
            else:
                if pending:
                    spread.append("--image")  # click then reports the missing path
                expanding = pending = False
                spread.append(arg)
        if pending:
            spread.append("--image")
        return super().parse_args(ctx, spread)


class _FiniteRange(click.FloatRange):
    """click's FloatRange, refusing NaN and infinity: NaN compares false with both bounds, so
    FloatRange(0, 60) took `nan` (and then every use of it failed later, or silently)."""

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


@contextlib.contextmanager
def _errors_reported():
    """Expected failures become one line on stderr and an exit code (see the module doc)."""
    try:
        yield
    except (CaptureError, OSError) as error:
        click.echo(f"error: {error}", err=True)
        raise SystemExit(1) from None
    except (ValueError, ImportError, DisplayUnavailable) as error:
        click.echo(f"error: {error}", err=True)
        raise SystemExit(2) from None


def _open_identifier(ctx, top_k: int = 3, threshold: float | None = None) -> Identifier:
    settings = ctx.find_root().params
    return Identifier.open(settings["bundle_dir"], settings["threads"], settings["edgetpu"],
                           top_k, threshold, settings["cropped"])


def _camera(ctx, index: int):
    """Camera frames; tests inject `open_camera` and `sleep` through the context object."""
    injected = ctx.find_root().obj or {}
    return capture.camera_frames(index, opener=injected.get("open_camera", capture.open_camera),
                                 sleep=injected.get("sleep", time.sleep))


def _cpu_count() -> int:
    return min(os.cpu_count() or 1, limits.MAX_THREADS)


@click.group(cls=_Main, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bundle", "bundle_dir", default="bundle", show_default=True,
              type=click.Path(file_okay=False), metavar="DIR",
              help="Device bundle directory: model, gallery and bundle.json, as the "
                   "pipeline's enroll stage (`pilltrack enroll`) writes it.")
@click.option("--image", "images", multiple=True, type=click.Path(dir_okay=False),
              metavar="FILE...",
              help="Photo file(s) to identify; `--image a.jpg b.jpg` takes several.")
@click.option("--video", type=click.Path(exists=True, dir_okay=False),
              help="Video file to identify frame by frame.")
@click.option("--camera", type=click.IntRange(0, limits.MAX_CAMERA_INDEX), metavar="INDEX",
              help="Camera index to identify from live, 0 being the first camera.")
@click.option("--threads", type=click.IntRange(1, limits.MAX_THREADS), default=_cpu_count, metavar="N",
              show_default="number of CPU cores", help=f"Interpreter threads, at most {limits.MAX_THREADS}.")
@click.option("--top-k", type=click.IntRange(1, limits.MAX_TOP_K), default=3, show_default=True, metavar="N",
              help=f"Closest enrolled pills reported per result (distinct pills), at most {limits.MAX_TOP_K}.")
@click.option("--threshold", type=_FiniteRange(0.0, 2.0), metavar="DISTANCE",
              help="Unknown-pill threshold, a cosine distance (1 - cos, 0 to 2): a best match "
                   "farther than this is reported as 'unknown'.  [default: the bundle's]")
@click.option("--edgetpu", is_flag=True,
              help="Run the model on a Coral Edge TPU, or on the CPU with a warning when "
                   "none is found.  [default: off]")
@click.option("--cropped", is_flag=True,
              help="The photos or frames are already cropped to one pill, which fills them (a "
                   "data set's pill crops, a close-up): embed every image whole instead of "
                   "localising the pill, which needs background around it (a bundle built with "
                   "preprocess.localise: auto does so by itself when the pill found touches the "
                   "image's edge). Goes before a command, like --bundle.  [default: off, localise "
                   "as the bundle says]")
@click.option("--headless", is_flag=True,
              help="No window or table: one JSON line per image or frame on stdout.  "
                   "[default: off]")
@click.option("--benchmark", is_flag=True,
              help="At the end, print each stage's median and 95th-percentile time in "
                   "milliseconds.  [default: off]")
@click.option("--max-frames", type=click.IntRange(1, limits.MAX_FRAMES), metavar="N",
              help=f"Stop after this many frames or images, at most {limits.MAX_FRAMES:,}.  [default: no limit]")
@click.option("--smooth", type=click.IntRange(1, limits.MAX_SMOOTH_FRAMES), default=5, show_default=True,
              metavar="FRAMES",
              help=f"Frames (video or camera) voted over before a different pill is announced, at most "
                   f"{limits.MAX_SMOOTH_FRAMES}.")
@click.option("--one-pill", is_flag=True,
              help=f"The --image photos show one pill (its two faces, say): one answer from all of them "
                   f"together, their embeddings combined as the evaluation's multi-photo queries are; at most "
                   f"{limits.MAX_VIEWS} photos. A photo without a pill is reported and left out.  [default: off, "
                   "an answer per photo]")
@click.pass_context
def main(ctx, bundle_dir, images, video, camera, threads, top_k, threshold, edgetpu, cropped,
         headless, benchmark, max_frames, smooth, one_pill):
    """Identify pills in photos, a video or a live camera view, with the device bundle.

    Distances are cosine distances between embeddings (0 same, 2 opposite)."""
    silence_opencv()
    if ctx.invoked_subcommand is not None:
        return
    given = [bool(images), video is not None, camera is not None]
    if not any(given):
        click.echo(ctx.get_help())
        return
    if sum(given) > 1:
        raise click.UsageError("give only one of --image, --video and --camera")
    if one_pill and not images:
        raise click.UsageError("--one-pill answers for --image photos")
    if one_pill and len(images) > limits.MAX_VIEWS:
        raise click.UsageError(f"--one-pill takes at most {limits.MAX_VIEWS} photos of one pill, got {len(images)}")
    with _errors_reported():
        identifier = _open_identifier(ctx, top_k, threshold)
        identifier.warm_up()
        if one_pill:
            _identify_one_pill(identifier, images, headless)
            return
        failed = []

        def skip(error):
            failed.append(error)
            click.echo(f"error: {error}", err=True)

        if images:
            max_pixels = identifier.bundle.preprocess.max_image_pixels
            frames = capture.image_frames(images, max_pixels, on_error=skip)
        elif video is not None:
            frames = capture.video_frames(video, identifier.bundle.preprocess.max_image_pixels)
        else:
            frames = _camera(ctx, camera)
        live = not images
        window = Window() if live and not headless else None
        width = max([len(str(path)) for path in images] + [5])
        try:
            with contextlib.closing(frames):
                timings = _identify_frames(identifier, itertools.islice(frames, max_frames),
                                           live, headless, window, Smoother(smooth), width,
                                           timed=benchmark)
        finally:
            if window is not None:
                window.close()
        if benchmark:
            click.echo(_benchmark_table(timings), err=headless)
        if failed:
            raise SystemExit(2)


def _identify_frames(identifier, frames, live, headless, window, smoother, source_width,
                     timed=False):
    """Identify each frame and show the result: a JSON line (headless), the live window, or a
    table row (still images). Returns the seconds each stage took, and in total, per frame;
    these are kept only when `timed` (--benchmark), as a live run may last for days."""
    timings = {stage: [] for stage in (*STAGES, "total")}
    fps, last = 0.0, None
    tiers = evidence.load_tiers(identifier.bundle.directory, identifier.bundle.model_sha256)[0] if headless else None
    for count, frame in enumerate(frames):
        start = time.perf_counter()
        result = identifier.identify_image(frame.rgb)
        if timed:
            timings["total"].append(time.perf_counter() - start)
            for stage, seconds in result.timings.items():
                timings[stage].append(seconds)
        announced = smoother.update(result.label) if live else result.label
        if headless:  # with the counter page's confidence tier (evidence.tier)
            click.echo(json.dumps({**_record(frame, result, announced), "tier": evidence.tier(result, tiers)}))
        elif window is not None:
            now = time.perf_counter()
            if last is not None:  # frame rate, smoothed over about ten frames
                rate = 1.0 / max(now - last, 1e-6)
                fps = 0.9 * fps + 0.1 * rate if fps else rate
            last = now
            bgr = np.ascontiguousarray(frame.rgb[:, :, ::-1])
            if not window.show(annotate(bgr, result, announced, fps)):
                break
        else:
            if count == 0:
                click.echo(f"{'image':<{source_width}}  {'pill':<20} {'distance':>8}  closest")
            click.echo(_table_row(frame.source, result, source_width))
    return timings


def _identify_one_pill(identifier: Identifier, images, headless: bool) -> None:
    """--one-pill: one answer from the photos' embeddings combined (identification.combine_views).
    A photo that cannot be read, or shows no pill, is reported and left out; none left is exit 2."""
    max_pixels = identifier.bundle.preprocess.max_image_pixels
    embeddings, used, failed = [], [], []

    def skip(error):
        failed.append(str(error))
        click.echo(f"error: {error}", err=True)

    for frame in capture.image_frames(images, max_pixels, on_error=skip):
        found = identifier.embed_image(frame.rgb)
        if found is None:
            skip(f"{frame.source}: no pill found")
            continue
        embeddings.append(found[0])
        used.append(frame.source)
    if not embeddings:
        raise ValueError("no pill found in any of the photos, so there is nothing to answer")
    result = identifier.identify_embedding(combine_views(np.stack(embeddings)))
    if headless:
        record = {key: value for key, value in _record(Frame(None, "", 0), result, result.label).items()
                  if key not in ("source", "frame", "box")}
        record["tier"] = evidence.tier(result, evidence.load_tiers(identifier.bundle.directory,
                                                                   identifier.bundle.model_sha256)[0])
        click.echo(json.dumps({"sources": used, **record}))
    else:
        source = " + ".join(used)
        click.echo(f"{'photos':<{len(source)}}  {'pill':<20} {'distance':>8}  closest")
        click.echo(_table_row(source, result, len(source)))
    if failed:
        raise SystemExit(2)


def _record(frame, result, announced) -> dict:
    """One headless JSON line: what a program reads about an image or frame."""
    return {
        "source": frame.source,
        "frame": frame.index,
        "label": result.label,
        "announced": announced,
        "distance": None if result.distance is None else round(result.distance, 6),
        "top_k": [{"label": m.label, "distance": round(m.distance, 6)} for m in result.top_k],
        "lookalike": result.lookalike,
        "box": None if result.box is None else list(result.box),
        "timings_ms": {stage: round(s * 1000.0, 3) for stage, s in result.timings.items()},
    }


def _table_row(source, result, width) -> str:
    if result.label is None:
        return f"{source:<{width}}  no pill found"
    closest = ", ".join(f"{m.label} {m.distance:.3f}" for m in result.top_k)
    row = f"{source:<{width}}  {result.label:<20} {result.distance:>8.3f}  {closest}"
    if result.lookalike is not None:
        row += f"  (close call: {result.top_k[0].label} or {result.lookalike}? turn the pill over, check the imprint)"
    return row


def _benchmark_table(timings: dict) -> str:
    lines = [f"{'stage':<12} {'count':>6} {'median ms':>10} {'p95 ms':>10}"]
    for stage, seconds in timings.items():
        if seconds:
            milliseconds = np.asarray(seconds) * 1000.0
            lines.append(f"{stage:<12} {len(seconds):>6} {np.median(milliseconds):>10.3f} "
                         f"{np.percentile(milliseconds, 95):>10.3f}")
    return "\n".join(lines)


_WHOLE_NOTE = ("the pill found touches the edge, so the whole image was used, as for a photo cropped to "
               "its pill; if the pill is cut off by the frame instead, retake it with the pill inside")


def _used_whole(identifier: Identifier, crop, width: int, height: int) -> bool:
    """Whether localisation "auto" took an image whole because the pill found touched its edge."""
    return identifier.preprocess.localise == AUTO and crop.box == Box(0, 0, width, height)


@main.command()
@click.option("--label", required=True,
              help=f"Name of the pill, as identification reports it: at most {limits.MAX_LABEL_CHARS} characters, "
                   "trimmed, matched ignoring case (Ibuprofen and ibuprofen are one pill).")
@click.option("--camera", type=click.IntRange(0, limits.MAX_CAMERA_INDEX), metavar="INDEX",
              help="Take the photos with this camera (0 the first) instead of from files.")
@click.option("--shots", type=click.IntRange(1, limits.MAX_ENROLL_PHOTOS), default=5, show_default=True,
              metavar="N", help="Photos to take with --camera, counting only frames where a pill is found.")
@click.option("--interval", type=_FiniteRange(0.0, limits.MAX_SHOT_INTERVAL_S), default=1.0, show_default=True,
              metavar="SECONDS",
              help="Seconds between camera shots; turn the pill between them.")
@click.option("--new-gallery", is_flag=True,
              help="Start a new gallery with this pill alone: every pill enrolled before is "
                   "removed, the pipeline's synthetic evaluation pills too.  [default: off, add to "
                   "the gallery]")
@click.argument("photos", nargs=-1, type=click.Path(dir_okay=False))
@click.pass_context
def enroll(ctx, label, camera, shots, interval, new_gallery, photos):
    """Add a pill to the gallery from PHOTOS (or --camera shots).

    Photos that cannot be read or where no pill is found are reported and skipped. --bundle,
    --threads, --edgetpu and --cropped go before the command: pilltrack-edge --bundle DIR enroll
    --label NAME PHOTOS..."""
    if bool(photos) == (camera is not None):
        raise click.UsageError("give PHOTOS or --camera, not both or neither")
    with _errors_reported():
        label = gallery.check_label(label)
        if len(photos) > limits.MAX_ENROLL_PHOTOS:
            raise ValueError(f"{len(photos)} photos in one enroll, over the limit of {limits.MAX_ENROLL_PHOTOS}; "
                             "enroll them in parts")
        identifier = _open_identifier(ctx)
        embeddings = []
        if photos:
            max_pixels = identifier.bundle.preprocess.max_image_pixels
            for frame in capture.image_frames(
                photos, max_pixels, on_error=lambda e: click.echo(f"skipped {e}", err=True)
            ):
                found = identifier.embed_image(frame.rgb)
                if found is None:
                    click.echo(f"skipped {frame.source}: no pill found", err=True)
                    continue
                embeddings.append(found[0])
                height, width = frame.rgb.shape[:2]
                if identifier.preprocess.localise is True and touches_edge(found[1].box, width, height):
                    click.echo(f"warning: {frame.source}: the pill found touches the photo's edge; if the "
                               "photos are already cropped to the pill, enroll with --cropped "
                               "(pilltrack-edge --cropped enroll ...)", err=True)
                elif _used_whole(identifier, found[1], width, height):
                    click.echo(f"note: {frame.source}: {_WHOLE_NOTE}", err=True)
        else:
            sleep = (ctx.find_root().obj or {}).get("sleep", time.sleep)
            # Give up after 50 frames per shot without enough pills found.
            with contextlib.closing(_camera(ctx, camera)) as frames:
                for frame in itertools.islice(frames, 50 * shots):
                    found = identifier.embed_image(frame.rgb)
                    if found is None:
                        continue
                    embeddings.append(found[0])
                    height, width = frame.rgb.shape[:2]
                    whole = f" ({_WHOLE_NOTE})" if _used_whole(identifier, found[1], width, height) else ""
                    click.echo(f"shot {len(embeddings)}/{shots}: pill found{whole}", err=True)
                    if len(embeddings) == shots:
                        break
                    sleep(interval)
            if 0 < len(embeddings) < shots:
                click.echo(f"only {len(embeddings)} of {shots} shots found a pill", err=True)
        if not embeddings:
            raise ValueError("no usable photo: no pill found in any, nothing enrolled")
        count = enrollment.enroll(identifier.bundle.directory, label, np.stack(embeddings), new_gallery)
        if not new_gallery:  # a pill enrolled before under another case keeps its first spelling
            label = gallery.find_label(dict.fromkeys(identifier.bundle.labels), label) or label
        click.echo(f"enrolled {label!r} from {len(embeddings)} photos "
                   f"({count} in the gallery" + (", a new gallery" if new_gallery else "") + ")")


@main.command()
@click.option("--label", required=True, help="Name of the pill to remove from the gallery.")
@click.pass_context
def remove(ctx, label):
    """Remove a pill (all its photos) from the gallery."""
    with _errors_reported():
        removed = enrollment.remove(ctx.find_root().params["bundle_dir"], label)
        click.echo(f"removed {label!r} ({removed} photos)")


@main.command(name="list")
@click.pass_context
def list_command(ctx):
    """List the enrolled pills with their number of photos (JSON with --headless)."""
    settings = ctx.find_root().params
    with _errors_reported():
        counts = enrollment.list_labels(settings["bundle_dir"])
    if settings["headless"]:
        click.echo(json.dumps(counts))
        return
    width = max([len(label) for label in counts] + [5])
    click.echo(f"{'pill':<{width}}  photos")
    for label, count in counts.items():
        click.echo(f"{label:<{width}}  {count:>6}")
    click.echo(f"{len(counts)} pills, {sum(counts.values())} photos")


@main.command()
@click.option("--camera", type=click.IntRange(0, limits.MAX_CAMERA_INDEX), metavar="INDEX",
              help="Camera index to serve the live view of, 0 being the first camera.")
@click.option("--video", type=click.Path(exists=True, dir_okay=False),
              help="Video file to serve instead of a camera, played in a loop (demos, tests).")
@click.option("--folder", type=click.Path(exists=True, file_okay=False), metavar="DIR",
              help="Folder of photos to serve instead of a camera, shown in turn in a loop (demos, tests).")
@click.option("--fps", type=_FiniteRange(0.0, limits.MAX_FPS, min_open=True), metavar="FPS",
              help=f"Frames per second read from --video or --folder, at most {limits.MAX_FPS:g}; a camera "
                   f"gives its own.  [default: a video's own rate (at most {limits.MAX_FPS:g}); a folder "
                   f"{FOLDER_FPS:g}]")
@click.option("--host", default="127.0.0.1", show_default=True, metavar="ADDRESS",
              help="Address to listen on. Any but a loopback one (127.0.0.1, ::1, localhost) lets other devices "
                   "in and needs an access token (--token, or one generated and printed).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, metavar="PORT",
              help="TCP port to listen on; 0 picks a free one (printed).")
@click.option("--token", envvar="PILLTRACK_TOKEN", metavar="TOKEN",
              help=f"Access token (at least {limits.MIN_TOKEN_CHARS} characters; also from $PILLTRACK_TOKEN) "
                   "that every request changing the gallery must carry, and beyond loopback every request.  "
                   "[default: none on loopback; generated and printed once for any other --host]")
@click.option("--top-k", type=click.IntRange(1, limits.MAX_TOP_K), default=3, show_default=True, metavar="N",
              help=f"Closest enrolled pills shown per answer (distinct pills), at most {limits.MAX_TOP_K}.")
@click.option("--threshold", type=_FiniteRange(0.0, 2.0), metavar="DISTANCE",
              help="Unknown-pill threshold, a cosine distance (1 - cos, 0 to 2).  [default: the bundle's]")
@click.option("--smooth", type=click.IntRange(1, limits.MAX_SMOOTH_FRAMES), default=5, show_default=True,
              metavar="FRAMES",
              help=f"Frames voted over before a different pill is announced, at most {limits.MAX_SMOOTH_FRAMES}.")
@click.option("--shots", type=click.IntRange(1, limits.MAX_ENROLL_PHOTOS), default=5, show_default=True, metavar="N",
              help="Shots the page's \"take N shots\" takes to enroll a pill (the page can change it).")
@click.option("--countdown", type=_FiniteRange(0.0, limits.MAX_COUNTDOWN_S), default=3.0, show_default=True,
              metavar="SECONDS", help="Seconds counted down on the page before each shot; turn the pill meanwhile.")
@click.pass_context
def serve(ctx, camera, video, folder, fps, host, port, token, top_k, threshold, smooth, shots, countdown):
    """Serve the counter page: the live view with the answer, enroll (camera shots or uploaded
    photos), the gallery, close calls answered from both faces, the bundle.

    Open the address it prints in a browser on this device, or with --host 0.0.0.0 on a tablet
    (with the token). Ctrl+C stops it. --bundle, --threads, --edgetpu and --cropped go before the
    command: pilltrack-edge --bundle DIR serve --camera 0. Needs the `serve` extra."""
    if sum(source is not None for source in (camera, video, folder)) != 1:
        raise click.UsageError("give one of --camera, --video and --folder")
    from edge_runtime import counter as counters

    if token is not None and len(token) < limits.MIN_TOKEN_CHARS:
        raise click.UsageError(f"--token must have at least {limits.MIN_TOKEN_CHARS} characters")
    with _errors_reported():
        from edge_runtime import server  # ImportError without the `serve` extra: one line, exit 2

        loopback = server.is_loopback(host)
        identifier = _open_identifier(ctx, top_k, threshold)
        identifier.warm_up()
        if video is not None:
            # A file no frame decodes of, or whose frames are over the bundle's pixel limit: exit 2.
            with contextlib.closing(capture.video_frames(video, identifier.bundle.preprocess.max_image_pixels)) as probe:
                next(probe)
            frames, source = counters.video_source(video, identifier.bundle.preprocess.max_image_pixels), video
            if fps is None:  # the video's own rate, as a player plays it
                fps = counters.video_rate(video)
        elif folder is not None:
            fps = FOLDER_FPS if fps is None else fps
            counters.folder_photos(folder)  # a folder without photos: exit 2
            frames = counters.folder_source(folder, identifier.bundle.preprocess.max_image_pixels)
            source = folder
        else:
            injected = ctx.find_root().obj or {}
            frames = counters.camera_source(camera, injected.get("open_camera", capture.open_camera),
                                            injected.get("sleep", time.sleep))
            source, fps = f"camera {camera}", None
        generated = token is None and not loopback
        token = server.make_token() if generated else token
        counter = counters.Counter(identifier, frames, source, fps, smooth)
        app = server.make_app(counter, token, loopback, shots, countdown)
        sock = server.listen(host, port)
        bound_port = sock.getsockname()[1]
        shown_host = f"[{host}]" if ":" in host else host
        if host in ("0.0.0.0", "::", "[::]"):  # every address of this device: name one to open
            shown_host = "<this device's address>"
        address = f"http://{shown_host}:{bound_port}/" + (f"?token={token}" if token else "")
        if generated:
            click.echo(f"access token (printed once; give it with --token to keep it): {token}")
        click.echo(f"serving the counter page on {address}  (Ctrl+C stops)", err=False)
        counter.start()
        try:
            server.make_server(app).run(sockets=[sock])
        finally:
            counter.stop()
            sock.close()
        click.echo("stopped")


if __name__ == "__main__":
    main()
