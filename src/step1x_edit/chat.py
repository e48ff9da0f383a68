"""Calling an OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, SGLang) through the ``openai`` client.

What the data annotator (:mod:`step1x_edit.data.annotate.client`) and the benchmark judge
(:mod:`step1x_edit.bench.judges.openai_judge`) share: the client, with its own retries off because every caller
retries explicitly and boundedly; images as data URLs; what a failed call means for the next one
(:func:`classify`); and the wait between attempts (:func:`backoff_delay`). Each caller keeps its own retry loop
and error types.
"""

from __future__ import annotations

import base64
import functools
import importlib
import io
import os
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    import openai

# Statuses no retry can fix whatever is sent: bad credentials, no permission, unknown model or URL.
UNRECOVERABLE_STATUS = (401, 403, 404)

# The most of a reply's body the client reads: a chat completion is a few kB; an error reply is read for its
# message. A longer one ends the call as a dropped connection (retryable).
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_ERROR_BODY_BYTES = 64 * 1024
IMAGE_FORMATS = ("PNG", "JPEG")


def make_client(base_url: str | None, api_key: str | None = None, timeout: float = 60.0,
                max_body_bytes: int = MAX_BODY_BYTES) -> openai.OpenAI:
    """An ``openai.OpenAI`` client for ``base_url`` (``None``: ``$OPENAI_BASE_URL`` or the OpenAI API) that never
    retries by itself. ``api_key`` defaults to ``$OPENAI_API_KEY``, or ``"EMPTY"`` for local servers that need
    none; ``timeout`` is in seconds per call, the reply's body included.

    A reply whose body passes ``max_body_bytes`` (an error reply's: ``MAX_ERROR_BODY_BYTES``), takes longer than
    ``timeout`` to arrive in all, or breaks off, fails the call with ``openai.APIConnectionError``, which callers
    retry: the HTTP client's own timeout is per read, so a server trickling an endless body would otherwise hold a
    call forever."""
    import openai

    api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
    http_client = openai.DefaultHttpxClient(timeout=timeout,
                                            event_hooks={"response": [_bound_body(timeout, max_body_bytes)]})
    return openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0,
                         http_client=http_client)


def _bound_body(timeout: float, max_body_bytes: int):
    """A response hook that bounds the reply's body (see :func:`make_client`)."""

    def hook(response) -> None:
        limit = MAX_ERROR_BODY_BYTES if response.status_code >= 400 else max_body_bytes
        bounded = _bounded_stream_class(type(response).__module__.partition(".")[0])
        response.stream = bounded(response.stream, response.request, limit, timeout)

    return hook


@functools.cache
def _bounded_stream_class(library: str):
    """The body stream with a size limit and a deadline, for the HTTP library (``httpx`` or its fork ``httpx2``)
    that the installed ``openai`` uses."""
    import openai

    base = importlib.import_module(library).SyncByteStream

    class BoundedStream(base):
        def __init__(self, stream, request, limit: int, timeout: float):
            self.stream, self.request, self.limit, self.timeout = stream, request, limit, timeout
            self.deadline = time.monotonic() + timeout

        def __iter__(self):
            received = 0
            try:
                for chunk in self.stream:
                    received += len(chunk)
                    if received > self.limit:
                        raise self.failure(f"the reply is larger than {self.limit} bytes")
                    if time.monotonic() > self.deadline:
                        raise self.failure(f"the reply took longer than the {self.timeout:g} s timeout")
                    yield chunk
            except openai.APIConnectionError:
                raise
            except Exception as error:  # the connection broke or stalled mid-body
                raise self.failure(f"{type(error).__name__}: {error}") from error

        def failure(self, message: str):
            return openai.APIConnectionError(message=message, request=self.request)

        def close(self) -> None:
            self.stream.close()

    return BoundedStream


def data_url(image: Image.Image, format: str = "PNG") -> str:
    """``image`` as a base64 data URL: lossless ``"PNG"``, or ``"JPEG"`` (RGB, PIL's default quality)."""
    format = format.upper()
    if format not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {IMAGE_FORMATS}, not {format!r}")
    buffer = io.BytesIO()
    (image.convert("RGB") if format == "JPEG" else image).save(buffer, format=format)
    return f"data:image/{format.lower()};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_part(image: Image.Image, format: str = "PNG") -> dict[str, Any]:
    """A chat message content part holding ``image`` as a data URL (see :func:`data_url`)."""
    return {"type": "image_url", "image_url": {"url": data_url(image, format)}}


@dataclass(frozen=True)
class CallFailure:
    """What one failed call means for the next.

    ``retryable``: the same request may succeed later (rate limit 429, server error 5xx, timeout, dropped
    connection); wait at least ``retry_after`` seconds (the server's ``Retry-After``, 0 if it sent none).
    ``unrecoverable``: no request to this endpoint can succeed (HTTP 401, 403, 404) - stop.
    Neither (400, 422 and other 4xx, a reply the client rejected): this request is refused; others may pass.
    ``status`` is the HTTP status, ``None`` when no reply came.
    """

    status: int | None
    retryable: bool
    retry_after: float = 0.0

    @property
    def unrecoverable(self) -> bool:
        return self.status in UNRECOVERABLE_STATUS


def classify(error: openai.APIError) -> CallFailure:
    """Classify an error raised by the ``openai`` client (see :class:`CallFailure`)."""
    import openai

    transient = (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError)
    status = error.status_code if isinstance(error, openai.APIStatusError) else None
    return CallFailure(status, isinstance(error, transient), _retry_after(error))


def _retry_after(error: Exception) -> float:
    """Seconds a server asked us to wait (``Retry-After`` header in seconds), or 0."""
    response = getattr(error, "response", None)
    try:
        return max(0.0, float(response.headers.get("retry-after", 0))) if response is not None else 0.0
    except ValueError:  # an HTTP date instead of seconds: fall back to our own backoff
        return 0.0


def backoff_delay(
    retry: int, initial: float, maximum: float, retry_after: float = 0.0, jitter: bool = False
) -> float:
    """Seconds to wait before retry ``retry`` (0 = the first retry): ``initial * 2**retry``, with ``jitter`` a
    random 50-100% of it (so parallel workers do not retry in lockstep), capped at ``maximum``; never shorter
    than the server's ``retry_after`` (which is also capped at ``maximum``)."""
    delay = initial * 2**retry
    if jitter:
        delay *= 0.5 + random.random() / 2
    return min(maximum, max(retry_after, delay))
