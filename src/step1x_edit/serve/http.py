"""The HTTP API: a FastAPI app over one :class:`~step1x_edit.serve.service.EditService`.

Routes:

* ``POST /v1/edit``: multipart form (``image`` file, ``instruction`` and optional settings); answers the edited
  image's bytes (``image/png`` unless ``output_format`` says ``jpeg`` or ``webp``), its seed in ``X-Seed``. A v1.2
  model thinks and reflects as ``think``, ``reflect`` and ``max_tries`` say (``X-Reasoning-Rounds`` and
  ``X-Reasoning-Chosen`` tell how it went); ``response_format=json`` answers JSON instead: the image in base64 and
  the whole reasoning trace, each round's image included.
* ``POST /v1/images/edits``: the OpenAI images-edit shape (``image``, ``prompt``, ``n``, ``response_format=b64_json``),
  so the ``openai`` client and tools built on it work unchanged; the Step1X settings ride along as extra form
  fields (``extra_body`` in the client).
* ``GET /v1/models`` (OpenAI shape) and ``GET /health`` (status, model, defaults, limits, edits pending).

Every error is JSON ``{"error": {"message", "type", "param", "code"}}`` with a fitting status: 400 for a bad
image, instruction or setting, 401 without the API key (when one is set), 403 for a request whose ``Host`` or
``Origin`` is not an allowed host name, or a web-UI request naming a file the UI did not receive, 413 for a body
over the limit (declared or streamed), 422 for a field of the wrong type, 429 after repeated wrong keys or
passwords, 503 when the queue is full (with ``Retry-After``), the GPU ran out of memory or the edit ran past the
time limit, 500 for anything else (logged).

The guards are plain ASGI middleware, outermost first: host check, key check (with its rate limit), body-size
limit, a place in the queue for edit requests, and the web UI's file check; each answers before the request's
body is read, except the file check, which reads a (size-limited) JSON body once and replays it.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hmac
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import anyio
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException

from ..errors import Step1XEditError
from .service import EditCancelledError, EditService, EditTimeoutError, OutOfMemoryError, ServiceBusyError

logger = logging.getLogger(__name__)

# Output formats a client may ask for, as Pillow format names and media types.
OUTPUT_FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "jpg": ("JPEG", "image/jpeg"),
                  "webp": ("WEBP", "image/webp")}

# Multipart overhead allowed on top of the image itself before a request is refused unread.
FORM_OVERHEAD_BYTES = 1024 * 1024

RETRY_AFTER_SECONDS = 5

# The host names a server bound to a loopback address answers to by default (a web page on another site that
# points its own name at 127.0.0.1, DNS rebinding, gets 403).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")

# Where the routes and pages that need the API key (when one is set) live.
PROTECTED_PREFIXES = ("/v1/", "/docs", "/redoc", "/openapi.json")

# The routes that run an edit: each takes a place in the service's queue before its upload is read.
EDIT_ROUTES = ("/v1/edit", "/v1/images/edits")

UI_PATH = "/ui"

# Sent with a 413: the server closes the connection instead of reading the rest of the body to reuse it.
CLOSE_CONNECTION = {"Connection": "close"}


def create_app(service: EditService, ui: bool = False, api_key: str | None = None,
               allowed_hosts: Sequence[str] = LOOPBACK_HOSTS) -> FastAPI:
    """The HTTP API for ``service``; with ``ui=True`` the Gradio web UI is mounted at ``/ui`` (and ``/`` leads
    there).

    With ``api_key``, the ``/v1`` routes and the API docs (``/docs``, ``/openapi.json``) need the header
    ``Authorization: Bearer <api_key>`` (what the ``openai`` client sends) and the web UI a login whose password is
    the key; ``/health`` stays open for load balancers. Ten wrong keys or passwords from one address within five
    minutes lock that address out (429) until the oldest leaves the window.

    ``allowed_hosts`` are the names clients may reach the server by (the ``Host`` header, and the ``Origin`` of a
    browser's request); ``"*"`` allows any, ``"*.example.com"`` a domain's subdomains.
    """
    if api_key is not None and not api_key.strip():
        raise Step1XEditError("the API key is empty")
    app = FastAPI(title="Step1X-Edit", summary="Instruction-based image editing", version="1")
    limits = service.limits

    if ui:
        import gradio

        from .webui import create_ui

        page = create_ui(service).queue(max_size=limits.max_pending)
        app.add_middleware(UploadedFilesOnly, prefix=UI_PATH + "/", allowed=[page.GRADIO_CACHE, *page.example_files])
        app.add_middleware(UploadQuota, route=UI_PATH + "/gradio_api/upload", folder=page.GRADIO_CACHE,
                           limit=limits.max_ui_cache_bytes)
    app.add_middleware(AdmitEdits, service=service, routes=EDIT_ROUTES)
    app.add_middleware(BodySizeLimit, limit=limits.max_upload_bytes + FORM_OVERHEAD_BYTES)
    if api_key is not None:
        app.add_middleware(RequireApiKey, key=api_key, prefixes=PROTECTED_PREFIXES, login=UI_PATH + "/login",
                           failures=FailedAttempts())
    app.add_middleware(AllowedHosts, hosts=allowed_hosts)

    @app.exception_handler(ServiceBusyError)
    async def busy(request: Request, error: ServiceBusyError):
        return _error(503, str(error), "server_busy", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    @app.exception_handler(EditCancelledError)
    async def withdrawn(request: Request, error: EditCancelledError):
        return _error(499, str(error), "client_closed_request")  # nobody reads it: the client has gone

    @app.exception_handler(OutOfMemoryError)
    async def out_of_memory(request: Request, error: OutOfMemoryError):
        return _error(503, str(error), "out_of_memory")

    @app.exception_handler(EditTimeoutError)
    async def too_slow(request: Request, error: EditTimeoutError):
        return _error(503, str(error), "edit_timeout")

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception):
        logger.error("the edit failed", exc_info=error)
        return _error(500, f"the server failed on this request ({type(error).__name__}); see its log", "server_error")

    @app.exception_handler(Step1XEditError)
    async def bad_request(request: Request, error: Step1XEditError):
        return _error(400, str(error), "invalid_request_error")

    @app.exception_handler(RequestValidationError)
    async def bad_field(request: Request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(part) for part in item['loc'][1:]) or 'body'}: {item['msg']}"
                             for item in error.errors())
        return _error(422, problems, "invalid_request_error")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        kind = "request_too_large" if error.status_code == 413 else "invalid_request_error"
        return _error(error.status_code, str(error.detail), kind, headers=error.headers)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "pending": service.pending, **service.describe()}

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": service.name, "object": "model", "created": 0,
                                            "owned_by": "step1x-edit"}]}

    @app.post("/v1/edit", response_class=Response,
              responses={200: {"content": {media: {} for _, media in OUTPUT_FORMATS.values()},
                               "description": "the edited image"}})
    async def edit(
        request: Request,
        image: Annotated[UploadFile, File(description="the image to edit")],
        instruction: Annotated[str, Form(description='what to change, e.g. "make the sky stormy"')],
        num_inference_steps: Annotated[int | None, Form()] = None,
        guidance_scale: Annotated[float | None, Form()] = None,
        size_level: Annotated[int | None, Form()] = None,
        strength: Annotated[float | None, Form()] = None,
        seed: Annotated[int | None, Form(description="random when left out; returned in X-Seed")] = None,
        negative_prompt: Annotated[str, Form()] = "",
        output_format: Annotated[str, Form(description="png, jpeg or webp")] = "png",
        think: Annotated[bool | None, Form(description="v1.2 models: rewrite the instruction first (default "
                                                       "off)")] = None,
        reflect: Annotated[bool | None, Form(description="v1.2 models: judge each edit and retry (default on)")] = None,
        max_tries: Annotated[int | None, Form(description="v1.2 models: rounds of reflection at most (default "
                                                          "3)")] = None,
        response_format: Annotated[str, Form(description="image (default), or json: the image in base64 and the "
                                                         "reasoning trace")] = "image",
    ) -> Response:
        image_format, media_type = _output_format(output_format)
        if response_format not in ("image", "json"):
            raise HTTPException(400, f"response_format: image or json, got {response_format!r}")
        await _one_image(request, "image")
        result = await _edit_upload(
            service, request, image, instruction, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, size_level=size_level, strength=strength, seed=seed,
            negative_prompt=negative_prompt, think=think, reflect=reflect, max_tries=max_tries,
        )
        trace = result.reasoning[0] if result.reasoning else None
        if response_format == "json":
            return JSONResponse({"image": base64.b64encode(_encode(result.images[0], image_format)).decode("ascii"),
                                 "output_format": output_format, "seed": result.seeds[0], "seconds": result.seconds,
                                 "reasoning": None if trace is None else _trace_json(trace, image_format)})
        headers = {"X-Seed": str(result.seeds[0]), "X-Edit-Seconds": f"{result.seconds:.3f}"}
        if trace is not None:
            headers.update({"X-Reasoning-Rounds": str(len(trace.rounds)), "X-Reasoning-Chosen": str(trace.chosen)})
        return Response(_encode(result.images[0], image_format), media_type=media_type, headers=headers)

    @app.post("/v1/images/edits")
    async def openai_images_edits(
        request: Request,
        image: Annotated[UploadFile | None, File(description="the image to edit (one)")] = None,
        prompt: Annotated[str | None, Form(description="the instruction")] = None,
        n: Annotated[int, Form()] = 1,
        response_format: Annotated[str, Form()] = "b64_json",
        size: Annotated[str, Form()] = "auto",
        output_format: Annotated[str, Form()] = "png",
        mask: Annotated[UploadFile | None, File()] = None,
        images: Annotated[list[UploadFile] | None, File(alias="image[]")] = None,
        model: Annotated[str | None, Form()] = None,
        num_inference_steps: Annotated[int | None, Form()] = None,
        guidance_scale: Annotated[float | None, Form()] = None,
        size_level: Annotated[int | None, Form()] = None,
        strength: Annotated[float | None, Form()] = None,
        seed: Annotated[int | None, Form()] = None,
        negative_prompt: Annotated[str, Form()] = "",
        think: Annotated[bool | None, Form()] = None,
        reflect: Annotated[bool | None, Form()] = None,
        max_tries: Annotated[int | None, Form()] = None,
    ) -> dict:
        await _one_image(request, "image", "image[]")
        if images:
            image = images[0]
        if image is None:
            raise HTTPException(400, "image: send the image to edit as the multipart field 'image'")
        if prompt is None:
            raise HTTPException(400, "prompt: the edit instruction is required")
        if mask is not None:
            raise HTTPException(400, "mask: not supported; Step1X-Edit finds the region to edit from the prompt")
        if response_format != "b64_json":
            raise HTTPException(400, f"response_format: only 'b64_json' is supported, got {response_format!r}")
        if size != "auto":
            raise HTTPException(400, f"size: only 'auto' is supported (the result has the source's size), got {size!r}")
        if model is not None and model != service.name:
            raise HTTPException(400, f"model: this server serves {service.name!r}, not {model!r}")
        image_format, _ = _output_format(output_format)
        result = await _edit_upload(
            service, request, image, prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            size_level=size_level, strength=strength, seed=seed, negative_prompt=negative_prompt, num_images=n,
            think=think, reflect=reflect, max_tries=max_tries,
        )
        width, height = result.images[0].size
        return {
            "created": int(time.time()),
            "data": [{"b64_json": base64.b64encode(_encode(edited, image_format)).decode("ascii"), "seed": value}
                     for edited, value in zip(result.images, result.seeds, strict=True)],
            "output_format": output_format,
            "size": f"{width}x{height}",
        }

    if ui:
        login = None if api_key is None else (lambda _user, password: hmac.compare_digest(password.encode(),
                                                                                           api_key.encode()))
        # root_path: Gradio's direct (unqueued) routes, such as a click on an example, build file URLs from the
        # server's root without the mount path unless told it (a 404 on /gradio_api/file=... otherwise).
        gradio.mount_gradio_app(app, page, path=UI_PATH, root_path=UI_PATH, max_file_size=limits.max_upload_bytes,
                                auth=login,
                                auth_message="Any user name; the password is the server's API key.",
                                show_error=False)  # the page shows our errors (gr.Error), never internal ones

        @app.get("/", include_in_schema=False)
        def root() -> RedirectResponse:
            return RedirectResponse(UI_PATH)

    return app


class AllowedHosts:
    """ASGI middleware: a request whose ``Host`` header, or whose ``Origin`` (sent by browsers), names a host not in
    ``hosts`` is answered 403 unread; ``"*"`` allows any host, ``"*.example.com"`` a domain's subdomains."""

    def __init__(self, app, hosts: Sequence[str]):
        self.app = app
        self.hosts = {host.strip().lower().strip("[]").rstrip(".") for host in hosts if host.strip()}
        if not self.hosts:
            raise Step1XEditError("allowed hosts: give at least one host name, or '*' for any")

    def allows(self, host: str | None) -> bool:
        if "*" in self.hosts:
            return True
        if not host:
            return False
        host = host.lower().rstrip(".")
        return host in self.hosts or any(allowed.startswith("*.") and host.endswith(allowed[1:])
                                         for allowed in self.hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope["headers"])
            host = _host_name(headers.get(b"host", b"").decode("latin-1"))
            origin = headers.get(b"origin")
            problem = None
            if not self.allows(host):
                problem = (f"this server does not answer to the host name {host!r}; start it with --allowed-hosts "
                           "to add it", "forbidden_host")
            elif origin is not None and not self.allows(_origin_host(origin.decode("latin-1"))):
                problem = (f"requests from pages of other sites are refused (Origin {origin.decode('latin-1')!r})",
                           "forbidden_origin")
            if problem is not None:
                if scope["type"] == "websocket":
                    return await send({"type": "websocket.close", "code": 1008})
                return await _refuse(scope, receive, send, 403, *problem)
        await self.app(scope, receive, send)


class FailedAttempts:
    """Failed key or password checks per client address: ``limit`` of them within ``window`` seconds lock the
    address out until the oldest leaves the window. At most ``max_clients`` addresses are remembered (the
    longest-quiet are forgotten first), so the record itself cannot grow without bound."""

    def __init__(self, limit: int = 10, window: float = 300.0, max_clients: int = 10_000):
        self.limit, self.window, self.max_clients = limit, window, max_clients
        self._failures: collections.OrderedDict[str, collections.deque] = collections.OrderedDict()

    def retry_after(self, client: str) -> int | None:
        """Seconds until ``client`` may try again, or None when it may try now."""
        failures = self._recent(client)
        if len(failures) < self.limit:
            return None
        return max(1, int(failures[0] + self.window - time.monotonic()) + 1)

    def record(self, client: str) -> None:
        self._recent(client).append(time.monotonic())
        self._failures.move_to_end(client)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)

    def _recent(self, client: str) -> collections.deque:
        failures = self._failures.setdefault(client, collections.deque())
        while failures and failures[0] < time.monotonic() - self.window:
            failures.popleft()
        return failures


class RequireApiKey:
    """ASGI middleware: requests under ``prefixes`` without the header ``Authorization: Bearer <key>`` are
    answered 401 before their body is read; wrong keys, and failed logins to the web UI at ``login``, count toward
    the client's ``failures``, and a locked-out client gets 429 without its key or password being checked."""

    def __init__(self, app, key: str, prefixes: Sequence[str], login: str, failures: FailedAttempts):
        self.app, self.key, self.prefixes, self.login, self.failures = app, key.encode(), tuple(prefixes), login, failures

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        is_login = path.rstrip("/") == self.login and scope["method"] == "POST"
        if not (is_login or path.startswith(self.prefixes)):
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("unknown",))[0]
        wait = self.failures.retry_after(client)
        if wait is not None:
            return await _refuse(scope, receive, send, 429, f"too many wrong API keys or passwords from {client}; "
                                 f"retry in {wait} s", "rate_limited", headers={"Retry-After": str(wait)})
        if is_login:
            return await self.app(scope, receive, self._watch_login(client, send))
        scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.key):
            if given.strip():
                self.failures.record(client)
            return await _refuse(scope, receive, send, 401, "a valid API key is required: send the header "
                                 "'Authorization: Bearer <key>'", "authentication_error",
                                 headers={"WWW-Authenticate": "Bearer"})
        await self.app(scope, receive, send)

    def _watch_login(self, client: str, send):
        async def watched(message):
            if message["type"] == "http.response.start" and message["status"] >= 400:
                self.failures.record(client)
            await send(message)

        return watched


class BodySizeLimit:
    """ASGI middleware: a request whose declared length is above ``limit`` bytes is answered 413 unread, and one
    whose streamed body (chunked, no length) passes ``limit`` is cut off there and answered 413."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await _refuse(scope, receive, send, 413, f"the request has {int(declared):,} bytes; the limit is "
                                 f"{self.limit:,}", "request_too_large", headers=CLOSE_CONNECTION)
        received = 0
        cut_off = False
        started = False

        async def counted_receive():
            nonlocal received, cut_off
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    cut_off = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message):
            nonlocal started
            if cut_off:
                return  # the app's answer to a body it never got whole is replaced by the 413 below
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not cut_off:  # the app may wrap the cut-off in an error of its own
                raise
        if cut_off and not started:
            await _refuse(scope, receive, send, 413, f"the request body passed the limit of {self.limit:,} bytes",
                          "request_too_large", headers=CLOSE_CONNECTION)


class _BodyTooLarge(Exception):
    """Raised into the app when a streamed body passes the limit."""


class AdmitEdits:
    """ASGI middleware: a POST to one of ``routes`` takes a place in the service's queue before its body is read
    (503 with ``Retry-After`` when none is free), so slow or large uploads count against the bound; the route
    hands the place to the edit (``request.state.reserved``)."""

    def __init__(self, app, service: EditService, routes: Sequence[str]):
        self.app, self.service, self.routes = app, service, tuple(routes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") not in self.routes:
            return await self.app(scope, receive, send)
        with contextlib.ExitStack() as place:
            try:
                place.enter_context(self.service.reserve())
            except ServiceBusyError as error:
                return await _refuse(scope, receive, send, 503, str(error), "server_busy",
                                     headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            scope.setdefault("state", {})["reserved"] = True
            await self.app(scope, receive, send)


class UploadQuota:
    """ASGI middleware: an upload to the web UI's ``route`` while its ``folder`` already holds ``limit`` bytes or
    more is answered 503 unread (the cache is swept of old files on a schedule; until then it cannot fill the
    disk)."""

    def __init__(self, app, route: str, folder: str | os.PathLike, limit: int):
        self.app, self.route, self.folder, self.limit = app, route, Path(folder), limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].rstrip("/") == self.route:
            used = await anyio.to_thread.run_sync(_folder_bytes, self.folder)
            if used >= self.limit:
                logger.warning("refused an upload: the web UI's cache holds %s bytes (limit %s)", used, self.limit)
                return await _refuse(scope, receive, send, 503, "the server's upload space is full; retry later",
                                     "server_busy", headers={"Retry-After": str(RETRY_AFTER_SECONDS * 60)})
        await self.app(scope, receive, send)


def _folder_bytes(folder: Path) -> int:
    """The bytes of the files under ``folder`` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # deleted while we looked
                pass
    return total


class UploadedFilesOnly:
    """ASGI middleware for the web UI under ``prefix``: a request whose JSON body names a file (a ``"path"``
    anywhere in it) that is not one of ``allowed`` or inside one (the UI's upload folder, its example images) is
    answered 403 before Gradio sees it. Files reach the UI only through its upload route; without this check a
    mounted Gradio app copies any file the server can read into its cache and serves it back."""

    def __init__(self, app, prefix: str, allowed: Sequence[str | os.PathLike]):
        self.app, self.prefix = app, prefix
        self.allowed = [Path(os.path.realpath(path)) for path in allowed]
        self.upload_route = prefix + "gradio_api/upload"

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or not scope["path"].startswith(self.prefix)
                or scope["method"] in ("GET", "HEAD", "OPTIONS") or scope["path"].rstrip("/") == self.upload_route):
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
        refused = self.refused_path(body)
        if refused is not None:
            logger.warning("refused a web UI request naming the file %r", refused)
            return await _refuse(scope, receive, send, 403, "the web UI only accepts images uploaded to it",
                                 "forbidden_file")
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def refused_path(self, body: bytes) -> str | None:
        """The first file ``body`` names outside the allowed paths (or a URL, which Gradio would fetch), if any."""
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return None  # not JSON: Gradio's JSON routes refuse it themselves
        pending = [data]
        while pending:
            item = pending.pop()
            if isinstance(item, dict):
                path = item.get("path")
                if path is not None and not (isinstance(path, str) and self._inside(path)):
                    return str(path)
                pending.extend(item.values())
            elif isinstance(item, list):
                pending.extend(item)
        return None

    def _inside(self, path: str) -> bool:
        if "://" in path or "\0" in path:
            return False
        resolved = Path(os.path.realpath(path))
        return any(resolved.is_relative_to(allowed) for allowed in self.allowed)


async def _refuse(scope, receive, send, status: int, message: str, kind: str, headers: dict | None = None) -> None:
    """Answer a request with a JSON error without reading its body."""
    await _error(status, message, kind, headers=headers)(scope, receive, send)


def _host_name(host: str) -> str | None:
    """The host name of a ``Host`` header value (port dropped, IPv6 brackets removed), or None when malformed."""
    return _origin_host(f"//{host}")


def _origin_host(url: str) -> str | None:
    """The host name in ``url`` (an ``Origin`` such as ``http://localhost:7860``), or None when it has none."""
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


async def _one_image(request: Request, *fields: str) -> None:
    """400 unless the form holds exactly one file among ``fields`` (Step1X-Edit edits one image per request)."""
    form = await request.form()
    parts = sum(len(form.getlist(field)) for field in fields)
    if parts > 1:
        raise HTTPException(400, f"image: Step1X-Edit edits one image per request; this one has {parts} image parts")


async def _edit_upload(service: EditService, request: Request, upload: UploadFile, instruction: str, **settings):
    """Read the uploaded image (413 past the limit) and edit it in a worker thread, so the event loop stays free;
    the edit stops once the client of ``request`` has gone away."""
    data = await _read_upload(upload, service.limits.max_upload_bytes)

    def disconnected() -> bool:  # asked from the worker thread, answered by the event loop
        return anyio.from_thread.run(request.is_disconnected)

    return await run_in_threadpool(service.edit, data, instruction, cancelled=disconnected,
                                   reserved=getattr(request.state, "reserved", False), **settings)


def _error(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}},
                        status_code=status, headers=headers)


def _output_format(name: str) -> tuple[str, str]:
    if name.lower() not in OUTPUT_FORMATS:
        raise HTTPException(400, f"output_format: one of png, jpeg, webp, got {name!r}")
    return OUTPUT_FORMATS[name.lower()]


async def _read_upload(upload: UploadFile, limit: int) -> bytes:
    """The uploaded file's bytes; 413 past ``limit`` (a chunked body has no length to refuse it by earlier)."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"the image file is larger than the limit of {limit:,} bytes")
    return data


def _trace_json(trace, image_format: str) -> dict:
    """A reasoning trace as JSON, each round with its image in base64 (``image``)."""
    record = trace.to_dict()
    for item, shown in zip(trace.rounds, record["rounds"], strict=True):
        shown["image"] = base64.b64encode(_encode(item.image, image_format)).decode("ascii")
    return record


def _encode(image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()
