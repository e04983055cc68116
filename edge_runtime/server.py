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
    GET  /api/answer          the latest answer (JSON): with its confidence tier and candidates
    GET  /crop.jpg            the pill in the live view as the model sees it (404: none in view)
    POST /api/confirm         staff confirm the pill in view is candidate `label` (logged); `add=1`
                              also adds the frame to that pill's gallery (the enroll path)
    GET  /api/bundle          model, profile, input size, naming rule, pills, photos, device step
    GET  /api/gallery         the enrolled pills, photo counts, thumbnails
    GET  /thumbnails/NAME     a pill's thumbnail (JPEG)
    GET  /api/shots           the shots taken for enrolling (count)
    GET  /api/shots/N.jpg     shot N's thumbnail
    POST /api/shots           take a shot of the live view (form field `replace`: retake shot N)
    POST /api/shots/clear     forget the shots
    POST /api/enroll          enroll: `label`, and `photos` (files) or `from_shots=1`; `new_gallery=1`
                              with `replaces`, the number of pills it removes (without it, or another
                              number: 409, saying how many in `removes`); `merge_into`: the enrolled
                              pill a label differing only in case or spacing goes into (without it:
                              409, naming that pill in `existing`)
    POST /api/remove          remove: `label`
    GET  /api/photos?label=X  one pill's photos: ids and thumbnail names
    POST /api/photos/remove   remove one photo of a pill: `label`, `photo` (its id)
    POST /api/rename          rename a pill: `label` to `new_label` (409: another pill has that name)
    POST /api/undo            take back the page's last enroll: the very photos it added (409: the
                              gallery changed since, or nothing to undo)
    POST /api/faces           one more face of the pill in view; the answer from all its faces together
    POST /api/faces/clear     start the faces again

Access: bound to a loopback address, reads need nothing; with an access token in force (given,
or required for any other address), every request that changes something must carry it, and so
must every request when not bound to loopback: header `X-PillTrack-Token` or query `?token=`.
Every request but GET and HEAD (every POST, and any PUT, DELETE, OPTIONS...) needs proof that it
comes from the page itself: the access token when one is in force, else the page key, a secret
made when the server starts that the page carries in a <meta> tag and its JavaScript sends in
header `X-PillTrack-Page`. Another site's page cannot read the page (no CORS is granted, and the
preflight a custom header needs is refused), so it can send neither; a request whose Origin is
another site is refused even with them, and a missing or `null` Origin (a sandboxed frame's)
proves nothing. On loopback only a loopback Host is answered (no DNS rebinding). Every response
forbids framing (`X-Frame-Options: DENY`, `Content-Security-Policy: frame-ancestors 'none'`),
and a connection that does not finish its request's headers within HEADER_TIMEOUT_S is closed.
Errors are JSON `{"error": "..."}`: 400 bad input (nothing changed) or a Host not loopback, 403
refused, 404, 409 a change that needs the user's word or no longer fits the gallery (nothing
changed; `existing` names the pill in question), 413 an upload over its limits, 503 the live view
or the bundle's lock not ready.
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
    import h11
    import uvicorn
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
except ImportError as error:  # the minimal client has no web server
    raise ImportError(f"the counter page needs the `serve` extra ({error.name} is missing): "
                      "pip install -e '.[edge,serve]'") from None
from starlette.concurrency import run_in_threadpool
from uvicorn.protocols.http.h11_impl import H11Protocol

from edge_runtime import limits, storage
from edge_runtime.counter import Conflict, Counter, NotReady, Refused

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page", "counter.html")
TOKEN_HEADER = "X-PillTrack-Token"
PAGE_HEADER = "X-PillTrack-Page"  # the page key, which the page's own requests carry
PAGE_KEY_MARK = "{{PAGE_KEY}}"  # in page/counter.html, replaced by the page key when served
KEEPALIVE_S = 15.0  # a comment line on an idle event stream, so proxies and tablets keep it open
HEADER_TIMEOUT_S = 10.0  # a request's headers must arrive within this, else the connection is closed
READ_METHODS = frozenset({"GET", "HEAD"})  # every other method is taken as changing something
NO_FRAMING = [(b"x-frame-options", b"DENY"), (b"content-security-policy", b"frame-ancestors 'none'"),
              (b"x-content-type-options", b"nosniff")]


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


def host_name(header: str | None) -> str | None:
    """The host name of a Host header ("127.0.0.2:8000" -> "127.0.0.2", "[::1]:80" -> "::1"),
    lower case; None when it is missing or malformed."""
    if not header:
        return None
    try:
        parts = urllib.parse.urlsplit("//" + header)
        parts.port  # noqa: B018 -- raises ValueError on a port that is not one
    except ValueError:
        return None
    if parts.username is not None or parts.password is not None or parts.path or parts.query or parts.fragment:
        return None
    return parts.hostname or None


def same_origin(origin: str, host: str | None) -> bool:
    """Whether an Origin header names this server, as the request's Host names it."""
    try:
        netloc = urllib.parse.urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(netloc) and host is not None and netloc.lower() == host.lower()


def _matches(given: str | None, secret: str) -> bool:
    return secrets.compare_digest((given or "").encode("utf-8"), secret.encode("utf-8"))


class _Guard:
    """ASGI middleware before the routes: `check(request)` refuses a request (its response) or
    lets it through, and every response gets the NO_FRAMING headers."""

    def __init__(self, app, check):
        self.app = app
        self.check = check

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_unframed(message):
            if message["type"] == "http.response.start":
                names = {name for name, _ in NO_FRAMING}
                headers = [(name, value) for name, value in message.get("headers", []) if name.lower() not in names]
                message = {**message, "headers": headers + NO_FRAMING}
            await send(message)

        problem = self.check(Request(scope))
        if problem is not None:
            await problem(scope, receive, send_unframed)
            return
        await self.app(scope, receive, send_unframed)


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

    page_key = make_token()  # proof that a change comes from the page this server served
    page = page.replace(PAGE_KEY_MARK, page_key)

    def access_problem(request: Request) -> JSONResponse | None:
        """Why a request is refused (the module docstring's rules), or None."""
        host = request.headers.get("host")
        if loopback and not is_loopback(host_name(host) or ""):
            return refuse(400, f"refused: Host {limits.shown(host)} is not a loopback address of this device "
                               "(a page of another site, through a name of its own); open the address that "
                               "`pilltrack-edge serve` printed")
        changes_something = request.method not in READ_METHODS
        origin = request.headers.get("origin")
        if changes_something and origin not in (None, "null") and not same_origin(origin, host):
            return refuse(403, f"refused: a request from another site's page ({limits.shown(origin)})")
        if token is not None and (changes_something or not loopback):
            if _matches(request.headers.get(TOKEN_HEADER) or request.query_params.get("token"), token):
                return None
            what = "a change" if changes_something else "this page, beyond loopback,"
            return refuse(403, f"refused: {what} needs the access token (printed when `pilltrack-edge serve` "
                               "started, or given with --token); open the page's address with ?token=...")
        if changes_something and not _matches(request.headers.get(PAGE_HEADER), page_key):
            return refuse(403, f"refused: {request.method} {request.url.path} without the counter page's key "
                               f"(header {PAGE_HEADER}, which only the page this server serves has): a request "
                               "from another site's page, or from a page loaded before the server restarted "
                               "(reload it); a script can run `serve --token` and send the token, or use "
                               "`pilltrack-edge enroll` / `remove`")
        return None

    def guarded(handler):
        async def endpoint(request: Request):
            try:
                return await handler(request)
            except Refused as error:
                return refuse(400, str(error))
            except Conflict as error:
                return JSONResponse({"error": str(error), "existing": error.existing, "removes": error.removes},
                                    status_code=409)
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
        last = counter.last_enroll
        undo = None if last is None else {"label": last["label"], "photos": len(last["embeddings"])}
        return JSONResponse({"pills": counter.gallery(), "undo": undo})

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
        merge_into = form.get("merge_into")
        merge_into = merge_into if isinstance(merge_into, str) and merge_into.strip() else None
        replaces = form.get("replaces")
        if replaces not in (None, ""):
            if not isinstance(replaces, str) or not replaces.isdigit():
                raise Refused(f"replaces must be the number of pills a new gallery removes, got {limits.shown(replaces)}")
            replaces = int(replaces)
        else:
            replaces = None
        if form.get("from_shots") in ("1", "on", "true"):
            done = await run_in_threadpool(counter.enroll_shots, label, new_gallery, merge_into, replaces)
        else:
            photos = []
            for upload in form.getlist("photos"):
                if isinstance(upload, str):
                    continue  # an empty file field
                photos.append((upload.filename or "upload", await read_upload(upload)))
            done = await run_in_threadpool(counter.enroll_photos, label, photos, new_gallery, merge_into, replaces)
        return JSONResponse(done)

    async def remove(request):
        label = given(await small_form(request), "label", "give the name (label) of the pill to remove")
        return JSONResponse(await run_in_threadpool(counter.remove, label))

    async def rename(request):
        form = await small_form(request)
        label, new_label = given(form, "label", "give the name (label) of the pill to rename"), form.get("new_label")
        if not isinstance(new_label, str):
            raise Refused("give the pill's new name (new_label)")
        return JSONResponse(await run_in_threadpool(counter.rename, label, new_label))

    async def crop(request):
        data = await run_in_threadpool(counter.live_crop)
        if data is None:
            return refuse(404, "no pill in the live view")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def confirm(request):
        form = await small_form(request)
        label = given(form, "label", "give the name (label) of the candidate to confirm")
        add = form.get("add") in ("1", "on", "true")
        return JSONResponse(await run_in_threadpool(counter.confirm, label, add))

    async def photos_list(request):
        label = request.query_params.get("label")
        if not label or not label.strip():
            raise Refused("give the name (label) of the pill whose photos to list: ?label=...")
        return JSONResponse(await run_in_threadpool(counter.photos, label))

    async def remove_photo(request):
        form = await small_form(request)
        label = given(form, "label", "give the name (label) of the pill whose photo to remove")
        photo = given(form, "photo", "give the photo to remove (its id, from /api/photos)")
        return JSONResponse(await run_in_threadpool(counter.remove_photo, label, photo))

    async def undo(request):
        return JSONResponse(await run_in_threadpool(counter.undo_enroll))

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
        Route("/api/shots", guarded(take_shot), methods=["POST"]),
        Route("/api/shots/clear", guarded(clear_shots), methods=["POST"]),
        Route("/api/enroll", guarded(enroll), methods=["POST"]),
        Route("/api/remove", guarded(remove), methods=["POST"]),
        Route("/api/rename", guarded(rename), methods=["POST"]),
        Route("/api/photos", guarded(photos_list)),
        Route("/crop.jpg", guarded(crop)),
        Route("/api/confirm", guarded(confirm), methods=["POST"]),
        Route("/api/photos/remove", guarded(remove_photo), methods=["POST"]),
        Route("/api/undo", guarded(undo), methods=["POST"]),
        Route("/api/faces", guarded(take_face), methods=["POST"]),
        Route("/api/faces/clear", guarded(clear_faces), methods=["POST"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(_Guard, check=access_problem)], lifespan=lifespan)


def given(form, field: str, missing: str) -> str:
    """The form's text `field`, or Refused saying `missing` when it is absent, not text, or blank."""
    value = form.get(field)
    if not isinstance(value, str) or not value.strip():
        raise Refused(missing)
    return value


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


class _HeaderTimedH11(H11Protocol):
    """uvicorn's h11 protocol, but a connection that has not sent a whole request's headers within
    `header_timeout_s` of opening (or of the previous response) is closed. uvicorn 0.54 has no such
    timeout: its keep-alive timer stops at the first byte, so a client sending the headers a byte at
    a time, or never their end, held the connection (and its memory) for ever. The headers' size is
    bounded by h11 (16 KiB, uvicorn's `h11_max_incomplete_event_size`)."""

    header_timeout_s = HEADER_TIMEOUT_S
    _header_timer = None

    def _awaiting_headers(self) -> bool:
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        if self._awaiting_headers():
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._awaiting_headers():
            self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._awaiting_headers():  # the headers are in (or the connection is ending)
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()  # the next request on this connection, if any, gets its own time

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)


def make_server(app: Starlette, header_timeout_s: float = HEADER_TIMEOUT_S) -> uvicorn.Server:
    """A uvicorn server for the app: its own log off (the CLI says what it serves), open streams
    given 2 s to end when it stops, and a request's headers given `header_timeout_s`."""
    protocol = type("HeaderTimedH11", (_HeaderTimedH11,), {"header_timeout_s": header_timeout_s})
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2,
                            lifespan="on", http=protocol)
    return _Server(config)
