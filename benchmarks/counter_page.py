"""The device step with and without the counter page, at the same frame rate.

The clip: real phone photos (data/real/pushin_pill.zip by default), each centred on a 640x480
grey frame (a camera's size) and held for a few frames, written as an MJPEG .avi. Both runs read it
at --fps through `counter.Counter`, the loop behind `pilltrack-edge serve`, on a copy of the bundle:

- without the page: the counter alone in a process, no web server, nobody watching (the work of
  `pilltrack-edge --video --headless`, paced);
- with the page: `pilltrack-edge serve --video CLIP --fps F` as a user runs it, with a client
  process watching the MJPEG stream and the server-sent answers all along (as an open page does:
  each frame is drawn on and JPEG-encoded, and sent with its answer).

The device step is `Identifier.identify_image` of one frame (localise, crop, invoke, search), timed
by the counter over the last counter.STEP_WINDOW frames: median and 95th percentile, plus the
process's CPU share over the same window. The client runs on the same machine (its CPU competes
with the device's, unlike a tablet's), so the page's figure is, if anything, pessimistic.

From the project root, in an edge environment (LiteRT and the counter page's extra):

    .venv-edge/bin/python -m benchmarks.counter_page        # 10 fps, the bundle in bundle/
    .venv-edge/bin/python -m benchmarks.counter_page --fps 15 --threads 1 --out /tmp/counter_page.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
WARM_UP_FRAMES = 20  # answered before the measured window starts

WATCHER = r"""
import sys, threading, time, urllib.request
base, seconds = sys.argv[1], float(sys.argv[2])
counts = {"frames": 0, "answers": 0}
def read(path, marker, key):
    with urllib.request.urlopen(base + path, timeout=30) as stream:
        while True:
            line = stream.readline()
            if line.startswith(marker):
                counts[key] += 1
for path, marker, key in (("/stream.mjpg", b"--frame", "frames"), ("/events", b"data: ", "answers")):
    threading.Thread(target=read, args=(path, marker, key), daemon=True).start()
time.sleep(seconds)
print(counts["frames"], counts["answers"])
"""


def make_clip(photos: str, path: str, hold: int) -> int:
    """Write the clip; returns its frame count."""
    import cv2
    import numpy as np

    from edge_runtime.preprocessing import decode_image

    if zipfile.is_zipfile(photos):
        with zipfile.ZipFile(photos) as archive:
            names = sorted(n for n in archive.namelist() if n.lower().endswith((".png", ".jpg", ".jpeg")))[::20]
            images = [decode_image(archive.read(n), n, 50_000_000) for n in names]
    else:
        names = sorted(p for p in pathlib.Path(photos).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        images = [decode_image(p.read_bytes(), str(p), 50_000_000) for p in names]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    count = 0
    for rgb in images:
        scale = 300 / max(rgb.shape[:2])
        pill = cv2.resize(rgb, (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))))
        frame = np.full((480, 640, 3), 150, np.uint8)
        top, left = (480 - pill.shape[0]) // 2, (640 - pill.shape[1]) // 2
        frame[top:top + pill.shape[0], left:left + pill.shape[1]] = pill
        for _ in range(hold):
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            count += 1
    writer.release()
    return count


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_without_page(bundle: str, clip: str, fps: float, threads: int) -> dict:
    """The counter alone (this process), for WARM_UP_FRAMES then STEP_WINDOW frames."""
    from edge_runtime import counter as counters
    from edge_runtime.identification import Identifier

    identifier = Identifier.open(bundle, threads)
    identifier.warm_up()
    counter = counters.Counter(identifier, counters.video_source(clip), clip, fps)
    counter.start()
    counter.next_live(WARM_UP_FRAMES - 1, 120)
    start_cpu, start = cpu_seconds(os.getpid()), time.monotonic()
    counter.next_live(WARM_UP_FRAMES + counters.STEP_WINDOW - 1, 600)
    cpu = (cpu_seconds(os.getpid()) - start_cpu) / (time.monotonic() - start)
    info = counter.bundle_info()
    counter.stop()
    return {"step_ms": info["step_ms"], "cpu_share": round(cpu, 3)}


def measure_with_page(bundle: str, clip: str, fps: float, threads: int) -> dict:
    """`pilltrack-edge serve` watched by a client, over the same frames."""
    from edge_runtime import counter as counters

    command = [str(BIN / "pilltrack-edge"), "--bundle", bundle, "--threads", str(threads), "serve", "--video", clip,
               "--fps", str(fps), "--port", "0"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        base = server.stdout.readline().split()[5].rstrip("/")

        def answered() -> int:
            with urllib.request.urlopen(base + "/api/answer", timeout=30) as response:
                return json.load(response)["sequence"]

        window_s = counters.STEP_WINDOW / fps
        watcher = subprocess.Popen([sys.executable, "-c", WATCHER, base, str(window_s + WARM_UP_FRAMES / fps + 5)],
                                   stdout=subprocess.PIPE, text=True)
        while answered() < WARM_UP_FRAMES:
            time.sleep(0.1)
        start_cpu, start, first = cpu_seconds(server.pid), time.monotonic(), answered()
        while answered() < first + counters.STEP_WINDOW:
            time.sleep(0.1)
        cpu = (cpu_seconds(server.pid) - start_cpu) / (time.monotonic() - start)
        with urllib.request.urlopen(base + "/api/bundle", timeout=30) as response:
            info = json.load(response)
        frames, answers = map(int, watcher.communicate(timeout=120)[0].split())
        return {"step_ms": info["step_ms"], "cpu_share": round(cpu, 3), "streamed_frames": frames,
                "streamed_answers": answers}
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=str(ROOT / "bundle"), help="device bundle (copied, never changed)")
    parser.add_argument("--photos", default=str(ROOT / "data" / "real" / "pushin_pill.zip"),
                        help="zip or folder of photos for the clip (every 20th of a zip)")
    parser.add_argument("--fps", type=float, default=10.0, help="frames per second, both runs (default 10)")
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 4),
                        help="interpreter threads (default: the cores, at most 4)")
    parser.add_argument("--out", help="write the JSON report here too")
    parser.add_argument("--measure-without-page", nargs=2, metavar=("BUNDLE", "CLIP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_without_page:
        print(json.dumps(measure_without_page(*args.measure_without_page, args.fps, args.threads)))
        return
    with tempfile.TemporaryDirectory(prefix="pilltrack-counter-page-") as scratch:
        bundle = os.path.join(scratch, "bundle")
        shutil.copytree(args.bundle, bundle, ignore=shutil.ignore_patterns(".lock", "thumbnails"))
        clip = os.path.join(scratch, "clip.avi")
        frames = make_clip(args.photos, clip, hold=5)
        alone = subprocess.run([sys.executable, "-m", "benchmarks.counter_page", "--fps", str(args.fps),
                                "--threads", str(args.threads), "--measure-without-page", bundle, clip],
                               cwd=ROOT, capture_output=True, text=True, check=True)
        without = json.loads(alone.stdout.splitlines()[-1])
        with_page = measure_with_page(bundle, clip, args.fps, args.threads)
    report = {"fps": args.fps, "threads": args.threads, "clip_frames": frames, "frame_size": [640, 480],
              "cpus": os.cpu_count(), "without_page": without, "with_page": with_page,
              "median_ratio": round(with_page["step_ms"]["median"] / without["step_ms"]["median"], 3),
              "p95_ratio": round(with_page["step_ms"]["p95"] / without["step_ms"]["p95"], 3)}
    print(json.dumps(report, indent=2))
    print("\n| run | device step median | p95 | CPU share |\n|---|---|---|---|")
    for name, run in (("without the page", without), ("with the page, watched", with_page)):
        print(f"| {name} | {run['step_ms']['median']:.2f} ms | {run['step_ms']['p95']:.2f} ms | {run['cpu_share']:.0%} |")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
