"""A chat client for any OpenAI-compatible endpoint (vLLM, SGLang, hosted models) with bounded retries.

Timeouts, rate limits (429), server errors (5xx), dropped connections and malformed replies (no choices, no
JSON, wrong fields) are retried with exponential backoff; after ``max_retries`` the call raises
:class:`AnnotationError` carrying the last reason, and the caller records it on the sample instead of losing it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ...errors import Step1XEditError


class AnnotationError(Step1XEditError):
    """An MLLM call that failed for good (after retries), or a reply that never became valid."""


@dataclass(frozen=True)
class ChatEndpoint:
    """Where and how to call the model. ``api_key`` defaults to ``$OPENAI_API_KEY`` (or ``"EMPTY"`` for local
    servers); it is never written to a store."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 60.0
    max_retries: int = 4
    backoff: float = 1.0
    max_backoff: float = 30.0
    temperature: float = 0.0
    max_tokens: int = 512

    def fingerprint(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }


def image_part(image: Image.Image) -> dict[str, Any]:
    """A chat content part holding ``image`` as a PNG data URL."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": url}}


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def parse_json_reply(text: str) -> dict[str, Any]:
    """The JSON object in a reply (bare, or inside a ```json fence, or the first {...} span)."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate.strip())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError(f"reply holds no JSON object: {text[:200]!r}")


class ChatClient:
    """Thin wrapper over ``openai.OpenAI`` (its own retries are off; ours are explicit and bounded)."""

    def __init__(self, endpoint: ChatEndpoint, sleep: Callable[[float], None] = time.sleep):
        import openai

        self.endpoint = endpoint
        self.sleep = sleep
        self._openai = openai
        self._client = openai.OpenAI(
            base_url=endpoint.base_url,
            api_key=endpoint.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
            timeout=endpoint.timeout,
            max_retries=0,
        )

    def _retryable(self, error: Exception) -> bool:
        errors = self._openai
        return isinstance(
            error,
            (
                errors.RateLimitError,
                errors.APITimeoutError,
                errors.APIConnectionError,
                errors.InternalServerError,
            ),
        )

    def complete(
        self,
        messages: list[dict[str, Any]],
        parse: Callable[[str], Any] = lambda text: text,
        seed: int | None = None,
    ) -> Any:
        """Send ``messages`` and return ``parse(reply_text)``; retry transient failures and parse errors.
        ``seed`` is forwarded to servers that support sampling seeds (vLLM, SGLang, OpenAI)."""
        extra = {"seed": seed} if seed is not None else {}
        last = "no attempt made"
        retry_after = 0.0
        for attempt in range(self.endpoint.max_retries + 1):
            if attempt:
                delay = max(retry_after, self.endpoint.backoff * 2 ** (attempt - 1))
                self.sleep(min(self.endpoint.max_backoff, delay))
            retry_after = 0.0
            try:
                response = self._client.chat.completions.create(
                    model=self.endpoint.model,
                    messages=messages,
                    temperature=self.endpoint.temperature,
                    max_tokens=self.endpoint.max_tokens,
                    **extra,
                )
                if not response.choices or response.choices[0].message.content is None:
                    raise ValueError("reply has no message content")
                return parse(response.choices[0].message.content)
            except (ValueError, KeyError, TypeError) as error:
                last = f"malformed reply: {error}"
            except self._openai.APIError as error:
                if not self._retryable(error):
                    raise AnnotationError(f"{self.endpoint.base_url} refused the request: {error}") from error
                last = f"{type(error).__name__}: {error}"
                retry_after = _retry_after(error)
        raise AnnotationError(f"gave up after {self.endpoint.max_retries + 1} attempts; last error: {last}")


def _retry_after(error: Exception) -> float:
    """Seconds a server asked us to wait (``Retry-After`` header in seconds), or 0."""
    response = getattr(error, "response", None)
    try:
        return max(0.0, float(response.headers.get("retry-after", 0))) if response is not None else 0.0
    except ValueError:  # an HTTP date instead of seconds: fall back to our own backoff
        return 0.0
