"""A judge served by any OpenAI-compatible chat-completions endpoint, through the ``openai`` client.

The request follows the official GPT-4.1 judge: one user message whose content is the prompt text followed by
the images as base64 JPEG data URLs (PIL's default quality), ``max_tokens`` 1400. Unlike the official call it
sets ``temperature`` 0 by default (pass ``temperature=None`` to leave the server default). The same class talks
to vLLM or SGLang serving an open VLM: pass ``base_url`` and the served ``model`` name.

The client's own retries are disabled; :mod:`step1x_edit.bench.judging` retries with backoff for every judge.
The response is read and checked here rather than by the client's lenient models: a body that is not a chat
completion (not JSON, cut short, no choices, no message, content that is not text), larger than
:data:`MAX_REPLY_BYTES`, or slower in total than ``timeout`` (a server trickling bytes; the client from
:func:`~step1x_edit.chat.make_client` bounds both) is a :class:`~.base.JudgeCallError`, retried like a dropped
connection.
"""

from __future__ import annotations

import json

from PIL import Image

from ...chat import UNRECOVERABLE_STATUS, classify, data_url, image_part, make_client
from ...validate import integer, number
from .base import JudgeCallError, JudgeRefusal, JudgeUnavailable

DEFAULT_MODEL = "gpt-4.1"
MAX_REPLY_BYTES = 4 * 1024 * 1024  # a judgement is a few kB (max_tokens 1400); more is not a judge's reply
TEMPERATURE_RANGE = (0, 2)  # what the OpenAI API accepts
MAX_TIMEOUT = 3600
MAX_CONCURRENCY = 256
__all__ = ["DEFAULT_MODEL", "MAX_REPLY_BYTES", "UNRECOVERABLE_STATUS", "OpenAIJudge", "completion_text", "jpeg_data_url"]


def jpeg_data_url(image: Image.Image) -> str:
    """``image`` as a base64 JPEG data URL, as the official judge sends it."""
    return data_url(image, "JPEG")


class OpenAIJudge:
    """Judge through ``POST {base_url}/chat/completions``.

    Args:
        model: served model name (``gpt-4.1`` for the official judge, e.g. ``Qwen/Qwen2.5-VL-72B-Instruct``
            for vLLM).
        base_url: endpoint root; ``None`` uses ``OPENAI_BASE_URL`` or the OpenAI API.
        api_key: key; ``None`` uses ``OPENAI_API_KEY`` (or ``"EMPTY"`` for local servers that need none).
        temperature: sampling temperature (0 = greedy); ``None`` omits it from the request.
        max_tokens: reply length limit.
        timeout: seconds before one call is abandoned (counted as a failed attempt), at most ``MAX_TIMEOUT``.
        concurrency: requests allowed in flight at once (1 to ``MAX_CONCURRENCY``).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        base_url: str | None = None,
        api_key: str | None = None,
        temperature: float | None = 0.0,
        max_tokens: int = 1400,
        timeout: float = 120.0,
        concurrency: int = 6,
    ):
        if temperature is not None:
            number("temperature", temperature, *TEMPERATURE_RANGE)
        self.model = model
        self.temperature = temperature
        self.max_tokens = integer("max_tokens", max_tokens, 1)
        self.timeout = number("timeout", timeout, 0.0, MAX_TIMEOUT, low_open=True)
        self.max_concurrency = integer("concurrency", concurrency, 1, MAX_CONCURRENCY)
        self.client = make_client(base_url, api_key, timeout, max_body_bytes=MAX_REPLY_BYTES)
        self.info = {"kind": "openai", "model": model, "endpoint": str(self.client.base_url)}
        if temperature is not None:
            self.info["temperature"] = str(temperature)

    def complete(self, prompt: str, images: list[Image.Image]) -> str:
        import openai

        content = [{"type": "text", "text": prompt}]
        content += [image_part(image, "JPEG") for image in images]
        options = {} if self.temperature is None else {"temperature": self.temperature}
        try:  # the client bounds the body's size and time (an error past them is an APIConnectionError)
            with self.client.chat.completions.with_streaming_response.create(
                model=self.model,
                messages=[{"role": "user", "content": content}],
                max_tokens=self.max_tokens,
                **options,
            ) as response:
                body = response.read()
        except openai.APIError as error:  # every one is retried by the caller, except an unusable endpoint
            failure = classify(error)
            if failure.unrecoverable:
                raise JudgeUnavailable(
                    f"judge endpoint {self.info['endpoint']} refused model {self.model!r}: HTTP {failure.status} "
                    f"{error.message}"
                ) from error
            if failure.status is not None:
                raise JudgeCallError(f"HTTP {failure.status}: {error.message}", failure.retry_after) from error
            raise JudgeCallError(f"{type(error).__name__}: {error}") from error  # timeouts, dropped connections
        return completion_text(body)


def completion_text(body: bytes) -> str:
    """The reply text of a chat-completion response ``body`` (its first choice's ``message.content``).

    Raises :class:`JudgeRefusal` for a refusal (a ``refusal`` message or ``finish_reason`` ``content_filter``) and
    :class:`JudgeCallError` for a body that is not a chat completion with text content.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as error:  # undecodable bytes and over-long integers are ValueErrors too
        raise JudgeCallError(f"the response is not JSON ({error})") from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise JudgeCallError("the response has no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise JudgeCallError("the response's first choice has no message")
    text, refusal, finish = message.get("content"), message.get("refusal"), str(choice.get("finish_reason"))[:40]
    if refusal or finish == "content_filter":
        said = refusal if isinstance(refusal, str) else text if isinstance(text, str) else None
        raise JudgeRefusal(f"judge refused (finish_reason={finish})", said)
    if text is not None and not isinstance(text, str):
        raise JudgeCallError(f"the reply's content is {type(text).__name__}, not text")
    if not text:
        raise JudgeCallError(f"empty reply (finish_reason={finish})")
    return text
