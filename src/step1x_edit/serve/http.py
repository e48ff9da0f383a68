"""The HTTP API: a FastAPI app over one :class:`~step1x_edit.serve.service.EditService`.

Routes:

* ``POST /v1/edit``: multipart form (``image`` file, ``instruction`` and optional settings); answers the edited
  image's bytes (``image/png`` unless ``output_format`` says ``jpeg`` or ``webp``), its seed in ``X-Seed``.
* ``POST /v1/images/edits``: the OpenAI images-edit shape (``image``, ``prompt``, ``n``, ``response_format=b64_json``),
  so the ``openai`` client and tools built on it work unchanged; the Step1X settings ride along as extra form
  fields (``extra_body`` in the client).
* ``GET /v1/models`` (OpenAI shape) and ``GET /health`` (status, model, defaults, limits, edits pending).

Every error is JSON ``{"error": {"message", "type", "param", "code"}}`` with a fitting status: 400 for a bad
image, instruction or setting, 401 without the API key (when one is set), 413 for an upload over the limit, 422
for a field of the wrong type, 503 when the queue is full (with ``Retry-After``) or the GPU ran out of memory for
the request, 500 for anything else (logged).
"""

from __future__ import annotations

import base64
import hmac
import io
import logging
import time
from typing import Annotated

import anyio
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException

from ..errors import Step1XEditError
from .service import EditCancelledError, EditService, OutOfMemoryError, ServiceBusyError

logger = logging.getLogger(__name__)

# Output formats a client may ask for, as Pillow format names and media types.
OUTPUT_FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "jpg": ("JPEG", "image/jpeg"),
                  "webp": ("WEBP", "image/webp")}

# Multipart overhead allowed on top of the image itself before a request is refused unread.
FORM_OVERHEAD_BYTES = 1024 * 1024

RETRY_AFTER_SECONDS = 5


def create_app(service: EditService, ui: bool = False, api_key: str | None = None) -> FastAPI:
    """The HTTP API for ``service``; with ``ui=True`` the Gradio web UI is mounted at ``/ui`` (and ``/`` leads
    there).

    With ``api_key``, the ``/v1`` routes need the header ``Authorization: Bearer <api_key>`` (what the ``openai``
    client sends) and the web UI a login whose password is the key; ``/health`` stays open for load balancers.
    """
    if api_key is not None and not api_key.strip():
        raise Step1XEditError("the API key is empty")
    app = FastAPI(title="Step1X-Edit", summary="Instruction-based image editing", version="1")
    limits = service.limits

    if api_key is not None:
        app.add_middleware(RequireApiKey, key=api_key, prefix="/v1/")
    app.add_middleware(BodySizeLimit, limit=limits.max_upload_bytes + FORM_OVERHEAD_BYTES)

    @app.exception_handler(ServiceBusyError)
    async def busy(request: Request, error: ServiceBusyError):
        return _error(503, str(error), "server_busy", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    @app.exception_handler(EditCancelledError)
    async def withdrawn(request: Request, error: EditCancelledError):
        return _error(499, str(error), "client_closed_request")  # nobody reads it: the client has gone

    @app.exception_handler(OutOfMemoryError)
    async def out_of_memory(request: Request, error: OutOfMemoryError):
        return _error(503, str(error), "out_of_memory")

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
    ) -> Response:
        image_format, media_type = _output_format(output_format)
        result = await _edit_upload(
            service, request, image, instruction, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, size_level=size_level, strength=strength, seed=seed,
            negative_prompt=negative_prompt,
        )
        return Response(_encode(result.images[0], image_format), media_type=media_type,
                        headers={"X-Seed": str(result.seeds[0]), "X-Edit-Seconds": f"{result.seconds:.3f}"})

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
    ) -> dict:
        if images:
            if image is not None or len(images) > 1:
                raise HTTPException(400, "Step1X-Edit edits one image per request; send a single image")
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
        import gradio

        from .webui import create_ui

        page = create_ui(service).queue(max_size=limits.max_pending)
        login = None if api_key is None else (lambda _user, password: hmac.compare_digest(password.encode(),
                                                                                           api_key.encode()))
        gradio.mount_gradio_app(app, page, path="/ui", max_file_size=limits.max_upload_bytes, auth=login,
                                auth_message="Any user name; the password is the server's API key.")

        @app.get("/", include_in_schema=False)
        def root() -> RedirectResponse:
            return RedirectResponse("/ui")

    return app


class BodySizeLimit:
    """ASGI middleware: a request whose declared length is above ``limit`` bytes is answered 413 unread."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            declared = dict(scope["headers"]).get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self.limit:
                response = _error(413, f"the request has {int(declared):,} bytes; the limit is {self.limit:,}",
                                  "request_too_large")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RequireApiKey:
    """ASGI middleware: requests under ``prefix`` without the header ``Authorization: Bearer <key>`` are answered
    401 before their body is read."""

    def __init__(self, app, key: str, prefix: str):
        self.app, self.key, self.prefix = app, key.encode(), prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.key):
                response = _error(401, "a valid API key is required: send the header 'Authorization: Bearer <key>'",
                                  "authentication_error", headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _edit_upload(service: EditService, request: Request, upload: UploadFile, instruction: str, **settings):
    """Read the uploaded image (413 past the limit) and edit it in a worker thread, so the event loop stays free;
    the edit stops once the client of ``request`` has gone away."""
    data = await _read_upload(upload, service.limits.max_upload_bytes)

    def disconnected() -> bool:  # asked from the worker thread, answered by the event loop
        return anyio.from_thread.run(request.is_disconnected)

    return await run_in_threadpool(service.edit, data, instruction, cancelled=disconnected, **settings)


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


def _encode(image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()
