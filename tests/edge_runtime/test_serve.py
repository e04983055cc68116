"""The counter page's server (`pilltrack-edge serve`) over HTTP: every route, served by
uvicorn on loopback from a thread, fed by in-memory frames of the tiny fixtures' pills or a fake
camera. Nothing here imports TensorFlow (the edge environments run this file too)."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from edge_fixtures import pill_photos
from PIL import Image

from edge_runtime import capture, evidence, limits, storage
from edge_runtime.capture import Frame
from edge_runtime.cli import main
from edge_runtime.counter import Counter, camera_source, thumbnail_name
from edge_runtime.identification import Identifier

server = pytest.importorskip("edge_runtime.server", reason="the `serve` extra (starlette, uvicorn) is not installed")

TOKEN = "a-token-of-twenty-chars"
WAIT_S = 20.0  # a page answer to wait for, at most (the server answers frames at 50 per second)


def snapshot(directory) -> dict:
    return {name: storage.sha256_file(os.path.join(directory, name))
            for name in sorted(os.listdir(directory)) if os.path.isfile(os.path.join(directory, name))}


def png(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def looping(frames):
    """A video-like source: the frames once per opening, as a video file played from its start."""
    def play():
        for index, rgb in enumerate(frames):
            yield Frame(rgb, "clip", index)

    return play


class Page:
    """A counter and its server, running on `host` (127.0.0.1) on a free port. Its requests that
    change something carry the page key, read from the page as the page's JavaScript reads it."""

    def __init__(self, identifier, open_frames, token=None, loopback=True, source="clip", fps=50.0,
                 host="127.0.0.1", header_timeout_s=server.HEADER_TIMEOUT_S):
        self.counter = Counter(identifier, open_frames, source, fps, smooth=3)
        self.app = server.make_app(self.counter, token, loopback, shots=2, countdown_s=0.0)
        self.sock = server.listen(host, 0)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = server.make_server(self.app, header_timeout_s=header_timeout_s)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.counter.start()
        self.thread.start()
        deadline = time.monotonic() + WAIT_S
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        self.page_key = None
        status, html = self.request("GET", "/" + (f"?token={token}" if token else ""))
        assert status == 200, html
        self.page_key = page_key_of(html)

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.counter.stop()
        self.sock.close()

    def request(self, method, path, fields=None, files=None, headers=None, body=None, proof=True):
        """(status, JSON or bytes) of one request; `fields` and `files` [(name, filename, bytes)] go as
        multipart/form-data, as the page's FormData does. A request other than GET and HEAD carries
        the page key, as the page's own do, unless `proof` is false."""
        headers = dict(headers or {})
        if proof and method not in ("GET", "HEAD") and self.page_key is not None:
            headers.setdefault(server.PAGE_HEADER, self.page_key)
        if fields is not None or files is not None:
            boundary = uuid.uuid4().hex
            parts = io.BytesIO()
            for name, value in (fields or {}).items():
                parts.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
            for name, filename, data in files or []:
                parts.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                            "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
            parts.write(f"--{boundary}--\r\n".encode())
            body = parts.getvalue()
            headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, data, kind = response.status, response.read(), response.headers.get("content-type", "")
        except urllib.error.HTTPError as error:
            status, data, kind = error.code, error.read(), error.headers.get("content-type", "")
        return status, json.loads(data) if kind.startswith("application/json") else data

    def answer_becomes(self, test, what):
        deadline, answer = time.monotonic() + WAIT_S, None
        while time.monotonic() < deadline:
            status, answer = self.request("GET", "/api/answer")
            assert status == 200
            if test(answer):
                return answer
            time.sleep(0.05)
        raise AssertionError(f"the answer never became {what}; last: {answer}")


def page_key_of(html: bytes) -> str:
    """The page key in the served page, as the page's JavaScript reads it."""
    found = re.search(rb'<meta name="pilltrack-page-key" content="([^"]+)">', html)
    assert found and b"{{" not in found.group(1), "the page key is not in the served page"
    return found.group(1).decode()


@pytest.fixture
def identifier(edge_bundle, edge_model_path):
    from edge_runtime.interpreter import make_interpreter

    from edge_runtime.bundle import load_bundle

    return Identifier(make_interpreter(edge_model_path, threads=1), load_bundle(edge_bundle))


@pytest.fixture
def page(identifier):
    """The page fed by a clip of the cyan pill, which the bundle does not have."""
    running = Page(identifier, looping(pill_photos("cyan", 4, seed=3)))
    yield running
    running.close()


def uploads(name="cyan", count=3, seed=5):
    return [("photos", f"{name}-{i}.png", png(photo)) for i, photo in enumerate(pill_photos(name, count, seed=seed))]


def test_the_page_streams_the_view_and_answers(page):
    status, html = page.request("GET", "/")
    assert status == 200
    text = html.decode()
    for element in ('id="view"', 'id="answer"', 'id="enroll-form"', 'id="gallery"', 'id="bundle"', 'id="closecall"'):
        assert element in text
    assert "http://" not in text and "https://" not in text  # nothing fetched from elsewhere
    answer = page.answer_becomes(lambda a: a["state"] == "unknown", "unknown")
    assert answer["announced"] == "unknown" and answer["box"] is not None and answer["error"] is None
    assert [m["label"] for m in answer["top_k"]][:1] in (["red"], ["green"], ["blue"])
    assert answer["step_ms"] > 0

    with urllib.request.urlopen(page.url + "/stream.mjpg", timeout=30) as stream:
        assert stream.headers["content-type"] == "multipart/x-mixed-replace; boundary=frame"
        head = stream.read(64)
        assert head.startswith(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: ")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        rest = stream.read(length + 64)
        jpeg = (head + rest).split(b"\r\n\r\n", 1)[1][:length]
        frame = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert frame.shape == (96, 96, 3)
    with urllib.request.urlopen(page.url + "/events", timeout=30) as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        lines = [events.readline() for _ in range(4)]
        data = [json.loads(line[len(b"data: "):]) for line in lines if line.startswith(b"data: ")]
        assert data and {"state", "announced", "top_k", "lookalike", "close_call", "error"} <= set(data[-1])

    status, info = page.request("GET", "/api/bundle")
    assert status == 200
    assert (info["input_size"], info["pills"], info["photos"], info["threshold"]) == (32, 3, 9, 0.1)
    assert info["model"].startswith("model-") and info["step_ms"]["frames"] > 0
    assert info["settings"] == {"shots": 2, "countdown_s": 0.0, "max_upload_files": limits.MAX_UPLOAD_FILES,
                                "max_upload_bytes": limits.MAX_UPLOAD_BYTES}


def test_enroll_from_uploads_names_the_pill_and_remove_forgets_it(page, edge_bundle):
    status, listed = page.request("GET", "/api/gallery")
    assert [(p["label"], p["photos"], p["thumbnail"]) for p in listed["pills"]] == [
        ("blue", 3, None), ("green", 3, None), ("red", 3, None)]

    status, done = page.request("POST", "/api/enroll", {"label": " Cyan "}, uploads())
    assert status == 200, done
    assert done == {"label": "Cyan", "photos": 3, "in_gallery": 3, "new_gallery": False, "new_pill": True}
    answer = page.answer_becomes(lambda a: a["state"] == "pill", "the new pill, without a restart")
    assert answer["announced"] == "Cyan" and answer["distance"] <= 0.1
    status, listed = page.request("GET", "/api/gallery")
    cyan = next(p for p in listed["pills"] if p["label"] == "Cyan")
    assert cyan == {"label": "Cyan", "photos": 3, "thumbnail": thumbnail_name("Cyan")}
    status, picture = page.request("GET", f"/thumbnails/{cyan['thumbnail']}")
    assert status == 200 and picture[:2] == b"\xff\xd8"  # a JPEG

    status, done = page.request("POST", "/api/remove", {"label": "CYAN"})  # matched ignoring case, as the CLI does
    assert (status, done) == (200, {"label": "CYAN", "photos": 3})
    page.answer_becomes(lambda a: a["state"] == "unknown", "unknown again")
    assert page.request("GET", f"/thumbnails/{cyan['thumbnail']}")[0] == 404
    assert "Cyan" not in [p["label"] for p in page.request("GET", "/api/gallery")[1]["pills"]]
    status, refused = page.request("POST", "/api/remove", {"label": "cyan"})
    assert status == 400 and "is not enrolled" in refused["error"]


def test_enroll_from_shots_with_a_retake(page):
    assert page.request("POST", "/api/enroll", {"label": "cyan", "from_shots": "1"})[1] == {
        "error": "no shots taken: take the pill's shots first"}
    assert page.request("POST", "/api/shots", {})[1] == {"shot": 0, "shots": 1}
    assert page.request("POST", "/api/shots", {})[1] == {"shot": 1, "shots": 2}
    assert page.request("POST", "/api/shots", {"replace": "0"})[1] == {"shot": 0, "shots": 2}
    status, refused = page.request("POST", "/api/shots", {"replace": "7"})
    assert status == 400 and "no shot 7" in refused["error"]
    status, picture = page.request("GET", "/api/shots/1.jpg")
    assert status == 200 and picture[:2] == b"\xff\xd8"
    status, done = page.request("POST", "/api/enroll", {"label": "cyan", "from_shots": "1"})
    assert (status, done) == (200, {"label": "cyan", "photos": 2, "in_gallery": 2, "new_gallery": False,
                                    "new_pill": True})
    assert page.request("GET", "/api/shots")[1] == {"shots": 0}
    page.answer_becomes(lambda a: a.get("announced") == "cyan", "cyan")


def test_a_new_gallery_keeps_only_the_new_pill(page, edge_bundle):
    """A new gallery is refused (409, nothing changed) until the request says how many
    pills it removes, the number the page shows and asks about."""
    before = snapshot(edge_bundle)
    for fields in ({}, {"replaces": "2"}):
        status, refused = page.request("POST", "/api/enroll", {"label": "cyan", "new_gallery": "1", **fields},
                                       uploads(count=2))
        assert status == 409, refused
        assert refused["removes"] == {"pills": 3, "photos": 9}
        assert "removes every pill enrolled now: 3 pills (9 photos)" in refused["error"]
    assert snapshot(edge_bundle) == before
    status, refused = page.request("POST", "/api/enroll", {"label": "cyan", "new_gallery": "1", "replaces": "x"},
                                   uploads(count=2))
    assert status == 400 and "replaces must be the number of pills" in refused["error"]
    status, done = page.request("POST", "/api/enroll", {"label": "cyan", "new_gallery": "1", "replaces": "3"},
                                uploads(count=2))
    assert status == 200 and done["new_gallery"] is True
    assert [p["label"] for p in page.request("GET", "/api/gallery")[1]["pills"]] == ["cyan"]
    assert page.request("GET", "/api/bundle")[1]["pills"] == 1


def test_a_bad_upload_is_named_and_changes_nothing(page, edge_bundle):
    before = snapshot(edge_bundle)
    empty = png(np.full((80, 80, 3), 128, np.uint8))
    cases = [
        ({"label": "cyan"}, uploads(count=1) + [("photos", "notes.txt", b"not an image")],
         "notes.txt: not a readable image"),
        ({"label": "cyan"}, uploads(count=1) + [("photos", "tray.png", empty)], "tray.png: no pill found"),
        ({"label": "unknown"}, uploads(count=1), "is reserved for pills that match no enrolled one"),
        ({"label": "  "}, uploads(count=1), "must not be empty"),
        ({"label": "x" * (limits.MAX_LABEL_CHARS + 1)}, uploads(count=1), "longer than 200 characters"),
        ({"label": "cyan"}, [], "no photos uploaded"),
        ({}, uploads(count=1), "give the pill's name"),
    ]
    for fields, files, message in cases:
        status, refused = page.request("POST", "/api/enroll", fields, files)
        assert status == 400 and message in refused["error"], (message, refused)
    status, refused = page.request("POST", "/api/enroll", body=b"label=cyan&x", headers={"Content-Type": "text/plain"})
    assert status == 400
    assert snapshot(edge_bundle) == before  # nothing written
    assert [p["label"] for p in page.request("GET", "/api/gallery")[1]["pills"]] == ["blue", "green", "red"]


def test_oversize_uploads_are_refused(page, edge_bundle, monkeypatch):
    before = snapshot(edge_bundle)
    huge = io.BytesIO()
    Image.new("RGB", (4000, 2600), (128, 128, 128)).save(huge, "PNG")  # 10.4 million pixels, a small file
    status, refused = page.request("POST", "/api/enroll", {"label": "cyan"}, [("photos", "huge.png", huge.getvalue())])
    assert status == 400 and "huge.png: 4000x2600 pixels exceeds the limit of 10000000 pixels" in refused["error"]

    monkeypatch.setattr(limits, "MAX_UPLOAD_FILES", 2)
    status, refused = page.request("POST", "/api/enroll", {"label": "cyan"}, uploads(count=3))
    assert status == 400 and "over the limit of 2" in refused["error"]

    files = uploads(count=2)
    monkeypatch.setattr(limits, "MAX_IMAGE_BYTES", len(files[0][2]) - 1)
    status, refused = page.request("POST", "/api/enroll", {"label": "cyan"}, files)
    assert status == 400 and f"cyan-0.png: over the limit of {len(files[0][2]) - 1:,} bytes" in refused["error"]
    monkeypatch.undo()

    monkeypatch.setattr(limits, "MAX_UPLOAD_BYTES", 1000)  # three photos are about 1.5 kB
    status, refused = page.request("POST", "/api/enroll", {"label": "cyan"}, uploads(count=3))
    assert status == 413 and "bytes: the upload is over the limit of 1,000 bytes" in refused["error"]
    assert snapshot(edge_bundle) == before


def exchange(url: str, request: bytes) -> tuple[int, bytes]:
    """(status, body) of one raw HTTP request, sent whole before reading. A server that stops
    reading an upload over its limit answers and closes: a client still sending then gets a broken
    pipe in place of the answer (urllib, sending chunk by chunk, sometimes does), so the request
    goes out at once and the answer is read from what came back before the connection closed."""
    host, port = url.removeprefix("http://").split(":")
    received = b""
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        try:
            connection.sendall(request)
            while chunk := connection.recv(65536):
                received += chunk
        except (BrokenPipeError, ConnectionResetError):  # closed by the server: its answer is kept
            pass

    class Replay:
        def makefile(self, *_):
            return io.BytesIO(received)

    response = http.client.HTTPResponse(Replay())
    response.begin()
    return response.status, response.read()


def test_an_upload_without_a_declared_length_is_held_to_the_limit_as_it_arrives(page, edge_bundle, monkeypatch):
    """A chunked upload declares no length: the bytes are counted as they come."""
    before = snapshot(edge_bundle)
    monkeypatch.setattr(limits, "MAX_UPLOAD_BYTES", 1000)
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="label"\r\n\r\ncyan\r\n'.encode()]
    for name, filename, data in uploads(count=3):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n\r\n'
                     .encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    assert sum(map(len, parts)) > 1000
    head = ("POST /api/enroll HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n"
            f"{server.PAGE_HEADER}: {page.page_key}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"
    status, body = exchange(page.url, head + chunked)
    assert status == 413
    assert json.loads(body)["error"].startswith("the upload is over the limit of 1,000 bytes")
    assert snapshot(edge_bundle) == before


def test_a_crash_mid_enroll_leaves_the_previous_gallery_answering(page, edge_bundle, monkeypatch):
    from edge_runtime import bundle

    before = snapshot(edge_bundle)
    real_store = bundle._store
    stored = []

    def store_then_fail(directory, entry, data):  # the disk fails after the first new file
        if stored:
            raise OSError(28, "No space left on device")
        stored.append(entry.name)
        real_store(directory, entry, data)

    monkeypatch.setattr(bundle, "_store", store_then_fail)
    status, refused = page.request("POST", "/api/enroll", {"label": "cyan"}, uploads())
    assert status == 500 and "No space left on device" in refused["error"], refused
    monkeypatch.undo()
    assert snapshot(edge_bundle)["bundle.json"] == before["bundle.json"]  # not committed
    assert [p["label"] for p in page.request("GET", "/api/gallery")[1]["pills"]] == ["blue", "green", "red"]
    page.answer_becomes(lambda a: a["state"] == "unknown" and a["sequence"] > 5, "still answered, unknown")
    status, done = page.request("POST", "/api/enroll", {"label": "cyan"}, uploads())  # and the next enroll works
    assert status == 200 and done["in_gallery"] == 3


def test_the_token_guards_every_gallery_change(identifier, edge_bundle):
    page = Page(identifier, looping(pill_photos("cyan", 2, seed=3)), token=TOKEN, loopback=True)
    try:
        before = snapshot(edge_bundle)
        assert page.request("GET", "/")[0] == 200  # reads stay open on loopback
        assert page.request("GET", "/api/gallery")[0] == 200
        for headers in ({}, {server.TOKEN_HEADER: "wrong-token-of-twenty"}):
            for path, fields, files in [("/api/enroll", {"label": "cyan"}, uploads(count=1)),
                                        ("/api/remove", {"label": "red"}, None), ("/api/shots", {}, None),
                                        ("/api/shots/clear", {}, None), ("/api/faces", {}, None),
                                        ("/api/faces/clear", {}, None)]:
                status, refused = page.request("POST", path, fields, files, headers=headers)
                assert status == 403 and "needs the access token" in refused["error"], (path, refused)
        assert snapshot(edge_bundle) == before
        status, refused = page.request("POST", "/api/remove", {"label": "red"},
                                       headers={server.TOKEN_HEADER: TOKEN, "Origin": "http://evil.example"})
        assert status == 403 and "another site" in refused["error"]
        assert page.request("GET", "/", headers={"Host": "evil.example"})[0] == 400  # no DNS rebinding
        status, done = page.request("POST", "/api/remove", {"label": "red"}, headers={server.TOKEN_HEADER: TOKEN})
        assert (status, done) == (200, {"label": "red", "photos": 3})
    finally:
        page.close()

    page = Page(identifier, looping(pill_photos("cyan", 2, seed=3)), token=TOKEN, loopback=False)
    try:  # beyond loopback every request needs it, the page's stream and events too
        for path in ("/", "/api/answer", "/api/gallery", "/api/bundle", "/stream.mjpg", "/events"):
            assert page.request("GET", path)[0] == 403, path
        assert page.request("GET", f"/api/gallery?token={TOKEN}")[0] == 200
        assert page.request("GET", "/api/bundle", headers={server.TOKEN_HEADER: TOKEN})[0] == 200
    finally:
        page.close()
    with pytest.raises(ValueError, match="needs an access token"):
        server.make_app(page.counter, None, False, 2, 0.0)


class FlakyCamera:
    """Reads fail always (a pulled cable), or work, giving `frames` in turn."""

    def __init__(self, frames=None):
        self.frames = [cv2.cvtColor(frame, cv2.COLOR_RGB2BGR) for frame in frames or []]
        self.reads = 0

    def read(self):
        self.reads += 1
        if not self.frames:
            return False, None
        return True, self.frames[self.reads % len(self.frames)]

    def release(self):
        pass


def test_a_failing_camera_is_shown_and_retried_while_the_page_serves(identifier, monkeypatch):
    monkeypatch.setattr(capture, "MAX_BACKOFF_S", 0.05)  # the wait before the camera is opened again
    monkeypatch.setattr(limits, "SHOT_WAIT_S", 0.5)
    opened = []
    working = threading.Event()

    def opener(index):
        opened.append(index)
        return FlakyCamera(pill_photos("green", 2, seed=1) if working.is_set() else None)

    page = Page(identifier, camera_source(0, opener, sleep=lambda seconds: None), source="camera 0", fps=None)
    try:
        answer = page.answer_becomes(lambda a: a["error"] is not None, "a camera error")
        assert "camera 0: 10 reads in a row failed" in answer["error"] and "trying again" in answer["error"]
        assert page.request("GET", "/")[0] == 200 and page.request("GET", "/api/gallery")[0] == 200
        status, refused = page.request("POST", "/api/shots", {})
        assert status == 503 and "no pill found in the live view for 0.5 s (camera 0: 10 reads" in refused["error"]
        working.set()  # the cable plugged back in: the next opening works
        answer = page.answer_becomes(lambda a: a["error"] is None and a["state"] == "pill", "green again")
        assert answer["announced"] == "green" and len(opened) >= 2
    finally:
        page.close()


def test_a_close_call_is_answered_from_both_faces(edge_bundle, identifier):
    from edge_runtime.enrollment import enroll

    greens = identifier.bundle.embeddings[[label == "green" for label in identifier.bundle.labels]]
    enroll(edge_bundle, "lime", greens)  # a look-alike of green: every green photo is a close call
    page = Page(identifier.reload(), looping(pill_photos("green", 3, seed=2)))
    try:
        answer = page.answer_becomes(lambda a: a.get("close_call"), "a close call")
        assert answer["state"] == "unknown" and {answer["top_k"][0]["label"], answer["lookalike"]} == {"green", "lime"}
        status, first = page.request("POST", "/api/faces")
        assert status == 200 and first["views"] == 1 and first["state"] == "unknown"
        status, both = page.request("POST", "/api/faces")
        assert both["views"] == 2 and {both["top_k"][0]["label"], both["lookalike"]} == {"green", "lime"}
        assert page.request("POST", "/api/faces/clear")[1] == {"views": 0}
        assert page.request("POST", "/api/faces")[1]["views"] == 1
    finally:
        page.close()


def test_serve_refuses_bad_arguments_before_serving(edge_bundle, tmp_path):
    def serve(*args):
        return CliRunner().invoke(main, ["--bundle", edge_bundle, "serve", *args])

    assert "give one of --camera, --video and --folder" in serve().output
    assert "give one of" in serve("--camera", "0", "--folder", str(tmp_path)).output
    result = serve("--folder", str(tmp_path), "--token", "short")
    assert result.exit_code == 2 and "at least 16 characters" in result.output
    result = serve("--folder", str(tmp_path))
    assert result.exit_code == 2 and result.stderr == f"error: {tmp_path}: no photos in it (files ending .jpg, .jpeg, .png, .webp, .bmp)\n"
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not a video")
    result = serve("--video", str(clip))
    assert result.exit_code == 2 and "not a video this client can decode" in result.stderr
    for option, value in (("--fps", "0"), ("--fps", "61"), ("--port", "70000"), ("--countdown", "61")):
        assert serve("--folder", str(tmp_path), option, value).exit_code == 2
    sock = server.listen("127.0.0.1", 0)
    try:  # the port taken: one line naming the address, exit 1
        photo = tmp_path / "green.png"
        photo.write_bytes(png(pill_photos("green", 1)[0]))
        result = serve("--folder", str(tmp_path), "--port", str(sock.getsockname()[1]))
        assert result.exit_code == 1 and f"127.0.0.1:{sock.getsockname()[1]}: cannot listen there" in result.stderr
    finally:
        sock.close()
    # an option of pilltrack-edge itself after the command says where it goes
    for option in ("--bundle", "--threads"):
        result = CliRunner().invoke(main, ["serve", option, edge_bundle, "--folder", str(tmp_path)])
        assert result.exit_code == 2 and (f"{option} is an option of pilltrack-edge itself: it goes before the "
                                          f"command, as in `pilltrack-edge {option} ... serve ...`") in result.output
    result = CliRunner().invoke(main, ["serve", "--nonsense"])
    assert result.exit_code == 2 and "No such option: --nonsense" in result.output


def test_a_video_plays_at_its_own_rate_unless_fps_is_given(tmp_path, capsys):
    """--fps once paced every decoded frame at 10 fps, so a 30 fps file played at a third of its speed."""
    from edge_runtime.counter import DEFAULT_VIDEO_FPS, video_rate

    for rate, expected in ((30, 30.0), (12.5, 12.5), (120, limits.MAX_FPS)):
        clip = str(tmp_path / f"clip-{rate}.avi")
        writer = cv2.VideoWriter(clip, cv2.VideoWriter_fourcc(*"MJPG"), rate, (64, 48))
        for _ in range(3):
            writer.write(np.full((48, 64, 3), 128, np.uint8))
        writer.release()
        assert video_rate(clip) == pytest.approx(expected)
    notes = tmp_path / "notes.avi"
    notes.write_bytes(b"not a video")
    assert video_rate(str(notes)) == DEFAULT_VIDEO_FPS
    assert "declares no usable frame rate" in capsys.readouterr().err


def test_loopback_addresses():
    assert all(map(server.is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"]))
    assert not any(map(server.is_loopback, ["0.0.0.0", "192.168.1.20", "::", "counter.local"]))


# --- hostile requests -----------------------------------------------------------------------------

CHANGES = [  # every route that changes something, with a form that would do so
    ("/api/enroll", {"label": "cyan", "new_gallery": "1"}, "upload"),  # the whole gallery replaced
    ("/api/enroll", {"label": "cyan"}, "upload"),
    ("/api/remove", {"label": "red"}, None),
    ("/api/shots", {}, None), ("/api/shots/clear", {}, None),
    ("/api/faces", {}, None), ("/api/faces/clear", {}, None),
]


def test_a_change_needs_proof_that_it_comes_from_the_page(page, edge_bundle):
    """On the default `serve` (loopback, no token) `Origin: null`, a sandboxed frame's on
    any site, removed a pill and replaced the gallery. Now no Origin, `null`, another site's (another
    port of this host too) or a wrong page key are all refused, for every change, and nothing changes."""
    before = snapshot(edge_bundle)
    host = page.url.removeprefix("http://")
    other_port = f"http://127.0.0.1:{int(host.split(':')[1]) % 65535 + 1}"
    refusals = [
        ({}, "without the counter page's key"),  # curl, a script: no Origin, no key
        ({"Origin": "null"}, "without the counter page's key"),  # a sandboxed iframe, a file:// page
        ({"Origin": "null", server.PAGE_HEADER: "a-guessed-page-key-value"}, "without the counter page's key"),
        ({server.PAGE_HEADER: ""}, "without the counter page's key"),
        ({"Origin": other_port}, "another site"),  # a page of another server on this machine
        ({"Origin": "http://evil.example"}, "another site"),
        ({"Origin": other_port, server.PAGE_HEADER: page.page_key}, "another site"),  # even with the key
    ]
    for headers, message in refusals:
        for path, fields, files in CHANGES:
            status, refused = page.request("POST", path, fields, uploads(count=1) if files else None,
                                           headers=headers, proof=False)
            assert status == 403 and message in refused["error"], (headers, path, refused)
    for method in ("PUT", "DELETE", "PATCH"):  # any method but GET and HEAD needs it, whatever the route
        status, refused = page.request(method, "/api/remove", {"label": "red"}, proof=False)
        assert status == 403 and "without the counter page's key" in refused["error"], (method, refused)
    preflight = urllib.request.Request(page.url + "/api/remove", method="OPTIONS", headers={
        "Origin": other_port, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": server.PAGE_HEADER.lower()})
    with pytest.raises(urllib.error.HTTPError) as refused:  # the preflight a custom header needs: refused
        urllib.request.urlopen(preflight, timeout=30)
    assert refused.value.code == 403
    assert not any(name.lower().startswith("access-control-") for name in refused.value.headers)
    assert snapshot(edge_bundle) == before
    assert [p["label"] for p in page.request("GET", "/api/gallery")[1]["pills"]] == ["blue", "green", "red"]
    assert page.request("GET", "/api/shots")[1] == {"shots": 0}

    # the page's own requests: its key, and its own Origin or none (a null Origin with the key too)
    for headers in ({"Origin": f"http://{host}"}, {}, {"Origin": "null"}):
        assert page.request("POST", "/api/faces/clear", headers=headers)[0] == 200, headers
    status, done = page.request("POST", "/api/remove", {"label": "red"}, headers={"Origin": f"http://{host}"})
    assert (status, done) == (200, {"label": "red", "photos": 3})


def test_the_page_key_is_the_servers_own_and_not_in_the_page_file(identifier, page):
    """Each server makes its own key: a page served by another (or before a restart) proves nothing."""
    other = Page(identifier, looping(pill_photos("cyan", 2, seed=3)))
    try:
        assert other.page_key != page.page_key
        status, refused = page.request("POST", "/api/remove", {"label": "red"},
                                       headers={server.PAGE_HEADER: other.page_key}, proof=False)
        assert status == 403 and "reload it" in refused["error"]
    finally:
        other.close()
    with open(server.PAGE, encoding="utf-8") as handle:
        assert server.PAGE_KEY_MARK in handle.read()  # the file has the mark, only served pages a key


def headers_of(url: str, method: str = "GET", headers=None):
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers
    except urllib.error.HTTPError as error:
        return error.code, error.headers


def test_every_response_forbids_framing(page):
    for path, method, headers, status in [("/", "GET", {}, 200), ("/api/gallery", "GET", {}, 200),
                                          ("/api/answer", "HEAD", {}, 200), ("/nothing", "GET", {}, 404),
                                          ("/api/remove", "POST", {}, 403),
                                          ("/", "GET", {"Host": "evil.example"}, 400)]:
        got, answered = headers_of(page.url + path, method, headers)
        assert got == status, (path, got)
        assert answered["X-Frame-Options"] == "DENY", path
        assert answered["Content-Security-Policy"] == "frame-ancestors 'none'", path
        assert answered["X-Content-Type-Options"] == "nosniff", path


def test_a_client_that_never_finishes_its_headers_is_dropped(identifier):
    """uvicorn's keep-alive timer stops at the first byte: a client sending its headers a line at a
    time, never their end, held the connection for ever. Now it is closed (after header_timeout_s,
    1 s here; the test only waits, up to WAIT_S, for the close) and the server answers others."""
    page = Page(identifier, looping(pill_photos("cyan", 2, seed=3)), header_timeout_s=1.0)
    try:
        host, port = page.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=WAIT_S) as slow:
            slow.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            slow.settimeout(0.2)
            deadline, closed, lines = time.monotonic() + WAIT_S, False, 0
            while not closed and time.monotonic() < deadline:
                try:
                    slow.sendall(b"X-Slow-%d: x\r\n" % lines)  # one more header line, never the blank one
                    lines += 1
                    closed = slow.recv(1024) == b""
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
            assert closed, f"the connection is still open after {lines} header lines"
        assert page.request("GET", "/api/gallery")[0] == 200
        with socket.create_connection((host, int(port)), timeout=WAIT_S) as idle:  # a whole request in time:
            idle.sendall(b"GET /api/answer HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert idle.recv(64).startswith(b"HTTP/1.1 200 ")  # answered as before
    finally:
        page.close()


def test_serve_on_another_loopback_address_answers_its_own_host(identifier):
    """`serve --host 127.0.0.2` is loopback, but answered every request 400 `Invalid host header`
    (only localhost, 127.0.0.1 and ::1 were allowed). Any loopback address is answered now, and any
    other name still refused (no DNS rebinding)."""
    try:
        page = Page(identifier, looping(pill_photos("cyan", 2, seed=3)), host="127.0.0.2",
                    loopback=server.is_loopback("127.0.0.2"))
    except OSError as error:
        pytest.skip(f"127.0.0.2 cannot be bound here ({error})")
    try:
        assert page.request("GET", "/api/gallery")[0] == 200  # Host: 127.0.0.2:PORT
        port = page.url.rsplit(":", 1)[1]
        for host in (f"127.0.0.2:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.2"):
            assert page.request("GET", "/api/answer", headers={"Host": host})[0] == 200, host
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.2.evil.example", "10.0.0.1", "[::1", ""):
            status, refused = page.request("GET", "/api/answer", headers={"Host": host})
            assert status == 400 and "not a loopback address" in refused["error"], host
        status, done = page.request("POST", "/api/remove", {"label": "red"}, headers={"Origin": page.url})
        assert (status, done) == (200, {"label": "red", "photos": 3})
    finally:
        page.close()


@pytest.mark.parametrize("inside", [False, True], ids=["thumbnails-folder-a-link", "a-thumbnail-a-link"])
def test_the_page_writes_and_deletes_thumbnails_only_inside_the_bundle(page, edge_bundle, tmp_path, inside):
    """With `thumbnails` a symbolic link to another folder, enrolling wrote a thumbnail
    there and removing deleted every *.jpg there. A linked folder, or a linked thumbnail in it, is
    now refused, naming it, before the gallery changes; nothing outside the bundle is touched."""
    outside = tmp_path / "Pictures"
    outside.mkdir()
    (outside / "holiday.jpg").write_bytes(b"\xff\xd8 a photo of the user's own")
    (outside / "notes.txt").write_text("kept")
    folder = os.path.join(edge_bundle, "thumbnails")
    if inside:  # a real folder, one thumbnail in it a link to the user's photo
        os.mkdir(folder)
        link = os.path.join(folder, thumbnail_name("cyan"))
        os.symlink(outside / "holiday.jpg", link)
        named = link
    else:
        os.symlink(outside, folder)
        named = folder
    listing = {path.name: path.read_bytes() for path in outside.iterdir()}
    before = snapshot(edge_bundle)

    for fields, files in (({"label": "cyan"}, uploads()), ({"label": "cyan", "new_gallery": "1", "replaces": "3"}, uploads()),
                          ({"label": "red"}, None)):
        path = "/api/remove" if files is None else "/api/enroll"
        status, refused = page.request("POST", path, fields, files)
        assert status == 400, refused
        assert refused["error"].startswith(f"{named}: a symbolic link (to {outside}")
        assert "only inside the bundle directory" in refused["error"] and "nothing changed" in refused["error"]
    assert {path.name: path.read_bytes() for path in outside.iterdir()} == listing  # nothing written or deleted
    assert snapshot(edge_bundle) == before  # nor the gallery changed
    assert [p["label"] for p in page.request("GET", "/api/gallery")[1]["pills"]] == ["blue", "green", "red"]
    assert os.path.islink(named)


def test_a_thumbnail_link_is_never_read_or_followed(page, edge_bundle, tmp_path):
    """A thumbnail swapped for a link after the check (or put there by hand) is not served, and the
    page's writes and deletions replace or leave the link, never its target."""
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"\xff\xd8 not the bundle's")
    status, done = page.request("POST", "/api/enroll", {"label": "cyan"}, uploads())
    assert status == 200, done
    thumbnail = os.path.join(edge_bundle, "thumbnails", thumbnail_name("cyan"))
    os.replace(thumbnail, thumbnail + ".kept")
    os.symlink(secret, thumbnail)
    assert page.request("GET", f"/thumbnails/{thumbnail_name('cyan')}")[0] == 404  # not read through the link
    cyan = next(p for p in page.request("GET", "/api/gallery")[1]["pills"] if p["label"] == "cyan")
    assert cyan["thumbnail"] is None
    page.counter._write_picture(thumbnail_name("cyan"), b"\xff\xd8 new", "cyan's thumbnail")  # as if swapped after the check
    page.counter._drop_thumbnails(keep=set())
    assert secret.read_bytes() == b"\xff\xd8 not the bundle's" and os.path.islink(thumbnail)


# --- safe gallery edits ---------------------------------------------------------------------------


def test_a_label_differing_only_in_case_or_spacing_asks_before_merging(page, edge_bundle):
    assert page.request("POST", "/api/enroll", {"label": "Advil 200 mg"}, uploads(count=2))[0] == 200
    before = snapshot(edge_bundle)
    for variant in ("advil 200 MG", "Advil  200mg"):
        status, refused = page.request("POST", "/api/enroll", {"label": variant}, uploads(count=3, seed=8))
        assert status == 409 and refused["existing"] == "Advil 200 mg", refused
        assert "'Advil 200 mg' is enrolled already" in refused["error"] and "nothing enrolled" in refused["error"]
        assert snapshot(edge_bundle) == before
    status, done = page.request("POST", "/api/enroll", {"label": "Advil  200mg", "merge_into": "Advil 200 mg"},
                                uploads(count=3, seed=8))
    assert status == 200 and (done["label"], done["in_gallery"], done["new_pill"]) == ("Advil 200 mg", 5, False)
    pills = [p["label"] for p in page.request("GET", "/api/gallery")[1]["pills"]]
    assert pills.count("Advil 200 mg") == 1 and "Advil  200mg" not in pills
    # the exact spelling needs no question
    assert page.request("POST", "/api/enroll", {"label": "Advil 200 mg"}, uploads(count=1, seed=9))[0] == 200


def test_undo_takes_back_exactly_the_last_enroll(page, edge_bundle):
    status, refused = page.request("POST", "/api/undo", {})
    assert status == 409 and "no enroll to undo" in refused["error"]
    assert page.request("POST", "/api/enroll", {"label": "cyan"}, uploads(count=2))[0] == 200
    assert page.request("GET", "/api/gallery")[1]["undo"] == {"label": "cyan", "photos": 2}
    assert page.request("POST", "/api/enroll", {"label": "cyan"}, uploads(count=3, seed=8))[0] == 200
    status, undone = page.request("POST", "/api/undo", {})
    assert (status, undone) == (200, {"label": "cyan", "photos": 3, "in_gallery": 2})
    listed = page.request("GET", "/api/photos?label=cyan")[1]["photos"]
    assert len(listed) == 2 and all(photo["thumbnail"] for photo in listed)
    assert page.request("POST", "/api/undo", {})[0] == 409  # one step only
    # an enroll by another command since: the page's enroll can no longer be undone
    assert page.request("POST", "/api/enroll", {"label": "dark"}, uploads("black", count=2))[0] == 200
    from edge_runtime.enrollment import enroll

    enroll(edge_bundle, "other", page.counter.identifier.bundle.embeddings[:1])
    changed = snapshot(edge_bundle)
    status, refused = page.request("POST", "/api/undo", {})
    assert status == 409 and "the gallery changed since 'dark' was enrolled" in refused["error"]
    assert snapshot(edge_bundle) == changed


def test_undo_of_a_new_pill_removes_it_and_its_thumbnails(page, edge_bundle):
    before = snapshot(edge_bundle)
    assert page.request("POST", "/api/enroll", {"label": "cyan"}, uploads(count=2))[0] == 200
    page.answer_becomes(lambda a: a.get("announced") == "cyan", "cyan")
    assert page.request("POST", "/api/undo", {})[0] == 200
    page.answer_becomes(lambda a: a["state"] == "unknown", "unknown again")
    assert "cyan" not in [p["label"] for p in page.request("GET", "/api/gallery")[1]["pills"]]
    after = snapshot(edge_bundle)
    assert {k: v for k, v in after.items() if k != "bundle.json"} == {k: v for k, v in before.items() if k != "bundle.json"}
    assert os.listdir(os.path.join(edge_bundle, "thumbnails")) == []


def test_rename_keeps_the_photos_and_refuses_another_pills_name(page, edge_bundle):
    assert page.request("POST", "/api/enroll", {"label": "cyan"}, uploads(count=2))[0] == 200
    status, done = page.request("POST", "/api/rename", {"label": "CYAN", "new_label": " Cyan 20 mg "})
    assert (status, done) == (200, {"label": "cyan", "new_label": "Cyan 20 mg", "photos": 2})
    listed = {p["label"]: p for p in page.request("GET", "/api/gallery")[1]["pills"]}
    assert "cyan" not in listed and listed["Cyan 20 mg"]["thumbnail"] == thumbnail_name("Cyan 20 mg")
    assert page.request("GET", f"/thumbnails/{thumbnail_name('Cyan 20 mg')}")[0] == 200
    page.answer_becomes(lambda a: a.get("announced") == "Cyan 20 mg", "the new name")
    before = snapshot(edge_bundle)
    for onto in ("Red", "r e d"):
        status, refused = page.request("POST", "/api/rename", {"label": "Cyan 20 mg", "new_label": onto})
        assert status == 409 and refused["existing"] == "red" and "nothing renamed" in refused["error"]
    for fields, problem in (({"label": "nope", "new_label": "x"}, "'nope' is not enrolled"),
                            ({"label": "red", "new_label": "  "}, "must not be empty"),
                            ({"label": "red", "new_label": "Unknown"}, "reserved")):
        status, refused = page.request("POST", "/api/rename", fields)
        assert status == 400 and problem in refused["error"], refused
    assert snapshot(edge_bundle) == before


def test_each_photo_can_be_seen_and_removed(page, edge_bundle):
    assert page.request("POST", "/api/enroll", {"label": "cyan"}, uploads(count=3))[0] == 200
    status, listed = page.request("GET", "/api/photos?label=Cyan")
    assert status == 200 and listed["label"] == "cyan" and len(listed["photos"]) == 3
    first = listed["photos"][0]
    status, picture = page.request("GET", f"/thumbnails/{first['thumbnail']}")
    assert status == 200 and picture[:2] == b"\xff\xd8"
    # pills enrolled by the command line have photos without pictures
    assert [p["thumbnail"] for p in page.request("GET", "/api/photos?label=red")[1]["photos"]] == [None] * 3

    status, done = page.request("POST", "/api/photos/remove", {"label": "cyan", "photo": first["photo"]})
    assert (status, done) == (200, {"label": "cyan", "photo": first["photo"], "in_gallery": 2})
    assert page.request("GET", f"/thumbnails/{first['thumbnail']}")[0] == 404  # its thumbnail went with it
    assert [p["photo"] for p in page.request("GET", "/api/photos?label=cyan")[1]["photos"]] == [
        p["photo"] for p in listed["photos"][1:]]
    second, third = listed["photos"][1:]
    assert page.request("POST", "/api/photos/remove", {"label": "cyan", "photo": second["photo"]})[0] == 200
    before = snapshot(edge_bundle)
    status, refused = page.request("POST", "/api/photos/remove", {"label": "cyan", "photo": first["photo"]})
    assert status == 400 and "has no photo" in refused["error"]
    status, refused = page.request("POST", "/api/photos/remove", {"label": "cyan", "photo": third["photo"]})
    assert status == 400 and "only photo: remove the pill instead" in refused["error"]
    assert page.request("GET", "/api/photos?label=nope")[0] == 400
    assert page.request("GET", "/api/photos")[0] == 400
    assert snapshot(edge_bundle) == before


# --- candidates to check, tiers, evidence over frames --------------------------------------------


def test_the_answer_ranks_candidates_and_one_tap_confirms_and_can_add_the_frame(page, edge_bundle):
    answer = page.answer_becomes(lambda a: a["state"] == "unknown", "unknown")
    assert answer["tier"] == "unsure" and answer["tier_words"] == "not one of your pills / unsure"
    assert 1 <= len(answer["candidates"]) <= 3 and [c["rank"] for c in answer["candidates"]] == list(
        range(1, len(answer["candidates"]) + 1))
    assert page.request("POST", "/api/enroll", {"label": "cyan"}, uploads())[0] == 200
    answer = page.answer_becomes(lambda a: a.get("announced") == "cyan", "cyan")
    assert answer["tier"] == "named" and answer["candidates"][0] == {
        "label": "cyan", "rank": 1, "thumbnail": thumbnail_name("cyan")}
    status, crop = page.request("GET", "/crop.jpg")
    assert status == 200 and cv2.imdecode(np.frombuffer(crop, np.uint8), cv2.IMREAD_COLOR).shape == (32, 32, 3)

    before = snapshot(edge_bundle)
    status, refused = page.request("POST", "/api/confirm", {"label": "purple"})
    assert status == 400 and "'purple' is not a candidate for the pill in view" in refused["error"]
    status, done = page.request("POST", "/api/confirm", {"label": "CYAN"})
    assert (status, done) == (200, {"label": "cyan", "rank": 1, "logged": "confirmations.jsonl", "added": 0})
    after = snapshot(edge_bundle)
    assert {k: v for k, v in after.items() if k != "confirmations.jsonl"} == before  # the gallery is unchanged
    status, done = page.request("POST", "/api/confirm", {"label": "cyan", "add": "1"})
    assert status == 200 and (done["added"], done["in_gallery"]) == (1, 4)
    assert len(page.request("GET", "/api/photos?label=cyan")[1]["photos"]) == 4
    assert page.request("GET", "/api/gallery")[1]["undo"] == {"label": "cyan", "photos": 1}  # undo works for it too
    with open(os.path.join(edge_bundle, "confirmations.jsonl"), encoding="utf-8") as log:
        entries = [json.loads(line) for line in log]
    assert [(e["label"], e["rank"], e["tier"], e["added"]) for e in entries] == [
        ("cyan", 1, "named", False), ("cyan", 1, "named", True)]
    assert all(e["source"] == "clip" and e["views"] >= 1 for e in entries)


def test_confirm_refuses_a_link_in_place_of_the_log(page, edge_bundle, tmp_path):
    page.answer_becomes(lambda a: a["state"] == "unknown", "unknown")
    target = tmp_path / "elsewhere.txt"
    target.write_text("kept")
    os.symlink(target, os.path.join(edge_bundle, "confirmations.jsonl"))
    label = page.request("GET", "/api/answer")[1]["candidates"][0]["label"]
    status, refused = page.request("POST", "/api/confirm", {"label": label})
    assert status == 400 and "a symbolic link" in refused["error"] and "nothing logged" in refused["error"]
    assert target.read_text() == "kept"


def test_a_still_pill_is_answered_from_all_its_frames(identifier, edge_bundle):
    """The same pill, still, frame after frame: the answer gathers up to the track's frames;
    frame by frame (track_frames 1) it never does. Tiers measured for this model make an unknown
    answer "likely" within them, and the bundle panel says where the tiers come from."""
    still = pill_photos("cyan", 1, seed=3)
    with open(os.path.join(edge_bundle, "tiers.json"), "w") as handle:
        json.dump({"likely_distance": 2.0, "likely_gap": 0.0, "model_sha256": identifier.bundle.model_sha256,
                   "measured": {"likely_right": 0.9}}, handle)
    page = Page(identifier, looping(still * 5))
    try:
        answer = page.answer_becomes(lambda a: a.get("views", 0) >= 10, "ten frames of the still pill")
        assert answer["state"] == "unknown" and answer["tier"] == "likely"
        assert answer["tier_words"] == "likely — check it" and answer["guidance"] == []
        info = page.request("GET", "/api/bundle")[1]
        assert info["tiers_note"] == "measured on held-out real photos" and info["tiers"]["likely_distance"] == 2.0
    finally:
        page.close()
    os.unlink(os.path.join(edge_bundle, "tiers.json"))
    single = Page(identifier, looping(still * 5))
    single.counter.track = evidence.Track(1)
    try:
        answers = [single.answer_becomes(lambda a: a.get("sequence", 0) > n, f"frame {n}") for n in (3, 8)]
        assert [a["views"] for a in answers] == [1, 1] and answers[-1]["tier"] == "unsure"
        assert "no measured tiers" in single.request("GET", "/api/bundle")[1]["tiers_note"]
    finally:
        single.close()


def test_a_pill_too_far_from_the_camera_is_told_to_come_nearer(identifier):
    """A frame whose pill is under the bundle's smallest (so no pill is found, as in training) says
    so in the answer's guidance; an empty tray says nothing (issue 36, benchmarks/live_path.py)."""
    tray = np.random.default_rng(0).normal(182.0, 2.0, (480, 640, 3)).clip(0, 255).astype(np.uint8)
    far = tray.copy()
    cv2.ellipse(far, (300, 260), (20, 13), 20, 0, 360, (236, 150, 170), -1)
    page = Page(identifier, looping([far] * 10 + [tray] * 10))
    try:
        answer = page.answer_becomes(lambda a: a.get("frame", -1) in range(10), "a frame of the far pill")
        assert answer["tier"] == "none" and answer["guidance"] == [evidence.FAR_PILL_TIP]
        answer = page.answer_becomes(lambda a: a.get("frame", -1) in range(10, 20), "a frame of the empty tray")
        assert answer["tier"] == "none" and answer["guidance"] == []
    finally:
        page.close()
