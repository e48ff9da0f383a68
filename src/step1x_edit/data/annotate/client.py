"""A chat client for any OpenAI-compatible endpoint (vLLM, SGLang, hosted models) with bounded retries.

Timeouts, rate limits (429), server errors (5xx), dropped connections and malformed replies (no choices, no
JSON, wrong fields) are retried with exponential backoff; after ``max_retries`` the call raises
:class:`AnnotationError` carrying the last reason, and the caller records it on the sample instead of losing it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...chat import backoff_delay, classify, image_part, make_client
from ...errors import Step1XEditError
from ...validate import integer, number
from ..limits import MAX_RETRIES, MAX_TIMEOUT

__all__ = ["AnnotationError", "ChatClient", "ChatEndpoint", "image_part", "parse_json_reply"]


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

    def __post_init__(self) -> None:
        number("timeout", self.timeout, 0, MAX_TIMEOUT, low_open=True)
        integer("max_retries", self.max_retries, 0, MAX_RETRIES)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }


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
        self.endpoint = endpoint
        self.sleep = sleep
        self._client = make_client(endpoint.base_url, endpoint.api_key, endpoint.timeout)

    def complete(
        self,
        messages: list[dict[str, Any]],
        parse: Callable[[str], Any] = lambda text: text,
        seed: int | None = None,
    ) -> Any:
        """Send ``messages`` and return ``parse(reply_text)``; retry transient failures and parse errors.
        ``seed`` is forwarded to servers that support sampling seeds (vLLM, SGLang, OpenAI)."""
        import openai

        extra = {"seed": seed} if seed is not None else {}
        last = "no attempt made"
        retry_after = 0.0
        for attempt in range(self.endpoint.max_retries + 1):
            if attempt:
                self.sleep(
                    backoff_delay(attempt - 1, self.endpoint.backoff, self.endpoint.max_backoff, retry_after)
                )
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
            except openai.APIError as error:
                failure = classify(error)
                if not failure.retryable:
                    raise AnnotationError(f"{self.endpoint.base_url} refused the request: {error}") from error
                last = f"{type(error).__name__}: {error}"
                retry_after = failure.retry_after
        raise AnnotationError(f"gave up after {self.endpoint.max_retries + 1} attempts; last error: {last}")
