"""The counter page's web server: Starlette routes over a `counter.Counter`, served by uvicorn.

Starlette and uvicorn (the `serve` extra) are pure Python, maintained, and small enough for a Pi:
no compiled event loop or parser to build (uvicorn without its `standard` extra), a few
megabytes installed. The page is one file (`page/counter.html`: HTML, CSS and JavaScript
inline, no build step, nothing fetched from elsewhere); the live view is an MJPEG stream
(`multipart/x-mixed-replace`, which an <img> plays in every browser) and the answers are
server-sent events, one per frame.

    GET  /                    the page
    GET  /stream.mjpg         the live view, the pill's box drawn in
    GET  /events              server-sent events: the answer to each frame (JSON)
    GET  /api/answer          the latest answer (JSON)
    GET  /api/bundle          model, profile, input size, naming rule, pills, photos, device step
    GET  /api/gallery         the enrolled pills, photo counts, thumbnails
    GET  /thumbnails/NAME     a pill's thumbnail (JPEG)
    GET  /api/shots           the shots taken for enrolling (count)
    GET  /api/shots/N.jpg     shot N's thumbnail
    POST /api/shots           take a shot of the live view (form field `replace`: retake shot N)
    POST /api/shots/clear     forget the shots
    POST /api/enroll          enroll: `label`, and `photos` (files) or `from_shots=1`; `new_gallery=1`
    POST /api/remove          remove: `label`
    POST /api/faces           one more face of the pill in view; the answer from all its faces together
    POST /api/faces/clear     start the faces again

Access: bound to a loopback address, reads need nothing; with an access token in force (given,
or required for any other address), every POST must carry it, and so must every request when
not bound to loopback: header `X-PillTrack-Token` or query `?token=`. A POST from another site's
page (its Origin not this server) is refused, and on loopback only a loopback Host is answered
(no DNS rebinding). Errors are JSON `{"error": "..."}`: 400 bad input (nothing changed), 403
refused, 404, 413 an upload over its limits, 503 the live view or the bundle's lock not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import socket
import urllib.parse

try:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
except ImportError as error:  # the minimal client has no web server
    raise ImportError(f"the counter page needs the `serve` extra ({error.name} is missing): "
                      "pip install -e '.[edge,serve]'") from None
from starlette.concurrency import run_in_threadpool

from edge_runtime import limits, storage
from edge_runtime.counter import Counter, NotReady, Refused

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page", "counter.html")
TOKEN_HEADER = "X-PillTrack-Token"
KEEPALIVE_S = 15.0  # a comment line on an idle event stream, so proxies and tablets keep it open
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


class UploadTooLarge(Exception):
    pass


def is_loopback(host: str) -> bool:
    """Whether a bind address is loopback only: localhost, 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, treated as reachable from elsewhere


def make_token() -> str:
    return secrets.token_urlsafe(18)


def make_app(counter: Counter, token: str | None, loopback: bool, shots: int, countdown_s: float) -> Starlette:
    """The page's routes (module docstring) over `counter`. `token`: the access token, or None
    (allowed on loopback only); `shots` and `countdown_s` are the page's enroll settings."""
    if token is None and not loopback:
        raise ValueError("serving beyond loopback needs an access token")
    with open(PAGE, encoding="utf-8") as handle:
        page = handle.read()
    wakers: set[asyncio.Event] = set()
    loop_holder: dict = {}

    def wake_all() -> None:
        for event in list(wakers):
            event.set()

    def on_frame() -> None:  # the counter's thread: hand over to the event loop
        loop = loop_holder.get("loop")
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake_all)

    counter.on_frame = on_frame

    async def changes():
        """Wake once per new answer (or after KEEPALIVE_S: None)."""
        event = asyncio.Event()
        wakers.add(event)
        try:
            while True:
                try:
                    await asyncio.wait_for(event.wait(), KEEPALIVE_S)
                    event.clear()
                    yield True
                except asyncio.TimeoutError:
                    yield None
        finally:
            wakers.discard(event)

    def refuse(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def access_problem(request: Request, changes_something: bool) -> JSONResponse | None:
        if changes_something:
            origin = request.headers.get("origin")
            if origin and origin != "null" and urllib.parse.urlsplit(origin).netloc != request.headers.get("host"):
                return refuse(403, f"refused: a request from another site ({origin})")
        if token is None or (loopback and not changes_something):
            return None
        given = request.headers.get(TOKEN_HEADER) or request.query_params.get("token") or ""
        if secrets.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
            return None
        what = "changing the gallery" if changes_something else "this page, beyond loopback,"
        return refuse(403, f"refused: {what} needs the access token (printed when `pilltrack-edge serve` "
                           "started, or given with --token); open the page's address with ?token=...")

    def guarded(handler, changes_something: bool = False):
        async def endpoint(request: Request):
            problem = access_problem(request, changes_something)
            if problem is not None:
                return problem
            try:
                return await handler(request)
            except Refused as error:
                return refuse(400, str(error))
            except NotReady as error:
                return refuse(503, str(error))
            except storage.LockTimeout as error:
                return refuse(503, str(error))
            except UploadTooLarge as error:
                return refuse(413, str(error))
            except ValueError as error:  # a limit, a label not enrolled, a bundle refusing the change
                return refuse(400, str(error))
            except OSError as error:
                return refuse(500, f"the device could not write: {error.strerror or error}")
        return endpoint

    async def index(request):
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def stream(request):
        counter.viewers += 1

        async def frames():
            sent = 0
            try:
                async for _ in changes():
                    live = counter.live
                    if live is None or live.sequence == sent or live.jpeg is None:
                        continue
                    sent = live.sequence
                    yield (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                           + str(len(live.jpeg)).encode() + b"\r\n\r\n" + live.jpeg + b"\r\n")
            finally:
                counter.viewers -= 1

        return StreamingResponse(frames(), media_type="multipart/x-mixed-replace; boundary=frame",
                                 headers={"Cache-Control": "no-store"})

    async def events(request):
        async def answers():
            sent = None
            yield f"retry: 1000\ndata: {json.dumps(counter.status())}\n\n"
            async for woke in changes():
                if woke is None:
                    yield ": keepalive\n\n"
                    continue
                answer = counter.status()
                key = (answer.get("sequence"), answer.get("error"))
                if key != sent:
                    sent = key
                    yield f"data: {json.dumps(answer)}\n\n"

        return StreamingResponse(answers(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def answer(request):
        return JSONResponse(counter.status())

    async def bundle(request):
        info = counter.bundle_info()
        info["settings"] = {"shots": shots, "countdown_s": countdown_s, "max_upload_files": limits.MAX_UPLOAD_FILES,
                            "max_upload_bytes": limits.MAX_UPLOAD_BYTES}
        return JSONResponse(info)

    async def gallery_list(request):
        return JSONResponse({"pills": counter.gallery()})

    async def thumbnail(request):
        data = await run_in_threadpool(counter.thumbnail, request.path_params["name"])
        if data is None:
            return refuse(404, "no such thumbnail")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def shots_list(request):
        return JSONResponse({"shots": len(counter.shots)})

    async def shot_thumbnail(request):
        number = request.path_params["number"]
        if not 0 <= number < len(counter.shots):
            return refuse(404, f"no shot {number}")
        return Response(counter.shots[number]["thumbnail"], media_type="image/jpeg",
                        headers={"Cache-Control": "no-store"})

    async def take_shot(request):
        form = await small_form(request)
        replace = form.get("replace")
        if replace not in (None, ""):
            try:
                replace = int(replace)
            except ValueError:
                raise Refused(f"replace must be a shot number, got {limits.shown(replace)}") from None
        else:
            replace = None
        return JSONResponse(await run_in_threadpool(counter.take_shot, replace))

    async def clear_shots(request):
        counter.clear_shots()
        return JSONResponse({"shots": 0})

    async def enroll(request):
        form = await upload_form(request)
        label = form.get("label")
        if not isinstance(label, str):
            raise Refused("give the pill's name (label)")
        new_gallery = form.get("new_gallery") in ("1", "on", "true")
        if form.get("from_shots") in ("1", "on", "true"):
            done = await run_in_threadpool(counter.enroll_shots, label, new_gallery)
        else:
            photos = []
            for upload in form.getlist("photos"):
                if isinstance(upload, str):
                    continue  # an empty file field
                photos.append((upload.filename or "upload", await read_upload(upload)))
            done = await run_in_threadpool(counter.enroll_photos, label, photos, new_gallery)
        return JSONResponse(done)

    async def remove(request):
        form = await small_form(request)
        label = form.get("label")
        if not isinstance(label, str) or not label.strip():
            raise Refused("give the name (label) of the pill to remove")
        return JSONResponse(await run_in_threadpool(counter.remove, label))

    async def take_face(request):
        return JSONResponse(await run_in_threadpool(counter.take_face))

    async def clear_faces(request):
        counter.clear_faces()
        return JSONResponse({"views": 0})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        loop_holder["loop"] = asyncio.get_running_loop()
        yield
        loop_holder.pop("loop", None)
        wake_all()

    routes = [
        Route("/", guarded(index)),
        Route("/stream.mjpg", guarded(stream)),
        Route("/events", guarded(events)),
        Route("/api/answer", guarded(answer)),
        Route("/api/bundle", guarded(bundle)),
        Route("/api/gallery", guarded(gallery_list)),
        Route("/thumbnails/{name}", guarded(thumbnail)),
        Route("/api/shots", guarded(shots_list)),
        Route("/api/shots/{number:int}.jpg", guarded(shot_thumbnail)),
        Route("/api/shots", guarded(take_shot, True), methods=["POST"]),
        Route("/api/shots/clear", guarded(clear_shots, True), methods=["POST"]),
        Route("/api/enroll", guarded(enroll, True), methods=["POST"]),
        Route("/api/remove", guarded(remove, True), methods=["POST"]),
        Route("/api/faces", guarded(take_face, True), methods=["POST"]),
        Route("/api/faces/clear", guarded(clear_faces, True), methods=["POST"]),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK_NAMES))] if loopback else []
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


async def small_form(request: Request):
    """A form of a few short fields (no files)."""
    try:
        return await request.form(max_files=0, max_fields=limits.MAX_VIEWS)
    except ClientDisconnect:
        raise Refused("the upload was cut off") from None
    except Exception as error:  # starlette's MultiPartException / HTTPException: a malformed form
        raise Refused(f"not a usable form ({getattr(error, 'detail', None) or error})") from None


async def upload_form(request: Request):
    """The enroll form with its photos, held to limits.MAX_UPLOAD_BYTES (checked on the declared
    length first, then on the bytes as they arrive) and limits.MAX_UPLOAD_FILES."""
    declared = request.headers.get("content-length")
    too_large = (f"the upload is over the limit of {shown_size(limits.MAX_UPLOAD_BYTES)}; "
                 "upload fewer or smaller photos; nothing enrolled")
    if declared is not None and declared.isdigit() and int(declared) > limits.MAX_UPLOAD_BYTES:
        raise UploadTooLarge(f"{int(declared)} bytes: {too_large}")
    received = 0
    receive = request.receive

    async def counted():
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        if received > limits.MAX_UPLOAD_BYTES:
            raise UploadTooLarge(too_large)
        return message

    counted_request = Request(request.scope, counted)
    try:
        return await counted_request.form(max_files=limits.MAX_UPLOAD_FILES, max_fields=limits.MAX_VIEWS)
    except UploadTooLarge:
        raise
    except ClientDisconnect:
        raise Refused("the upload was cut off") from None
    except Exception as error:  # too many files, a malformed form (starlette's own message)
        detail = getattr(error, "detail", None) or str(error)
        if "files" in detail.lower():
            raise Refused(f"too many photos in one upload, over the limit of {limits.MAX_UPLOAD_FILES}") from None
        raise Refused(f"not a usable upload ({detail})") from None


async def read_upload(upload) -> bytes:
    """An uploaded photo's bytes, at most limits.MAX_IMAGE_BYTES (the CLI's limit on an image file)."""
    data = await upload.read(limits.MAX_IMAGE_BYTES + 1)
    if len(data) > limits.MAX_IMAGE_BYTES:
        raise Refused(f"{upload.filename}: over the limit of {shown_size(limits.MAX_IMAGE_BYTES)} for one photo; "
                      "nothing enrolled")
    return data


def shown_size(size: int) -> str:
    """Bytes as an error message says them: in MiB when a whole number of them."""
    return f"{size >> 20} MiB" if size and size % (1 << 20) == 0 else f"{size:,} bytes"


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one), or OSError naming the address."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(64)
    except OSError as error:
        sock.close()
        raise OSError(f"{host}:{port}: cannot listen there ({error.strerror or error})") from None
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, but stopped by Ctrl+C or SIGTERM it returns (and `serve` exits 0) instead of
    raising the signal again once it has shut down gracefully."""

    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            yield
            self._captured_signals.clear()  # uvicorn 0.54's list of signals to raise again


def make_server(app: Starlette) -> uvicorn.Server:
    """A uvicorn server for the app: its own log off (the CLI says what it serves), and open
    streams given 2 s to end when it stops."""
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2,
                            lifespan="on")
    return _Server(config)
