"""A judge served by any OpenAI-compatible chat-completions endpoint, through the ``openai`` client.

The request follows the official GPT-4.1 judge: one user message whose content is the prompt text followed by
the images as base64 JPEG data URLs (PIL's default quality), ``max_tokens`` 1400. Unlike the official call it
sets ``temperature`` 0 by default (pass ``temperature=None`` to leave the server default). The same class talks
to vLLM or SGLang serving an open VLM: pass ``base_url`` and the served ``model`` name.

The client's own retries are disabled; :mod:`step1x_edit.bench.judging` retries with backoff for every judge.
"""

from __future__ import annotations

from PIL import Image

from ...chat import UNRECOVERABLE_STATUS, classify, data_url, image_part, make_client
from .base import JudgeCallError, JudgeRefusal, JudgeUnavailable

DEFAULT_MODEL = "gpt-4.1"
__all__ = ["DEFAULT_MODEL", "UNRECOVERABLE_STATUS", "OpenAIJudge", "jpeg_data_url"]


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
        timeout: seconds before one call is abandoned (counted as a failed attempt).
        concurrency: requests allowed in flight at once.
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
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.max_concurrency = concurrency
        self.client = make_client(base_url, api_key, timeout)
        self.info = {"kind": "openai", "model": model, "endpoint": str(self.client.base_url)}
        if temperature is not None:
            self.info["temperature"] = str(temperature)

    def complete(self, prompt: str, images: list[Image.Image]) -> str:
        import openai

        content = [{"type": "text", "text": prompt}]
        content += [image_part(image, "JPEG") for image in images]
        options = {} if self.temperature is None else {"temperature": self.temperature}
        try:
            response = self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": content}],
                max_tokens=self.max_tokens,
                **options,
            )
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
        if not response.choices:
            raise JudgeCallError("response has no choices")
        choice = response.choices[0]
        message = choice.message
        refusal = getattr(message, "refusal", None)
        if refusal or choice.finish_reason == "content_filter":
            raise JudgeRefusal(f"judge refused (finish_reason={choice.finish_reason})", refusal or message.content)
        if not message.content:
            raise JudgeCallError(f"empty reply (finish_reason={choice.finish_reason})")
        return message.content
