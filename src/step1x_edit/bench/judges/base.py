"""The judge interface: one call turns a prompt and images into the judge's raw reply text.

Judges do transport only. Retrying, parsing and recording failures are done once for every judge by
:mod:`step1x_edit.bench.judging`, so a judge raises :class:`JudgeCallError` for a call that produced no usable
reply (network error, timeout, rate limit, server error, a response that is not a chat completion) and
:class:`JudgeRefusal` when the model declined; :class:`JudgeUnavailable` stops the whole run (no request can
succeed, e.g. a rejected API key). A reply that arrived but holds no answer is :class:`UnusableReply`, raised by
the parsers (:func:`~step1x_edit.bench.viescore.parse_scores`, :func:`~step1x_edit.bench.pairwise.parse_winner`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from PIL import Image

from ...errors import Step1XEditError


class JudgeCallError(RuntimeError):
    """A judge call that returned no reply (the caller retries it, then records a failure). ``retry_after`` is the
    wait in seconds the server asked for (HTTP Retry-After), 0 when it said nothing."""

    def __init__(self, message: str, retry_after: float = 0.0):
        super().__init__(message)
        self.retry_after = retry_after


class JudgeRefusal(JudgeCallError):
    """The judge declined to answer (refusal message or content filter); ``reply`` holds what it said."""

    def __init__(self, message: str, reply: str | None = None):
        super().__init__(message)
        self.reply = reply


class UnusableReply(ValueError):
    """A judge reply that holds no usable answer (no score, a score of the wrong type or out of range, no
    winner); the message says why. The caller retries the question, then records a failure."""


class JudgeUnavailable(Step1XEditError):
    """The judge cannot answer any request (bad credentials, unknown model): the run stops instead of recording
    every sample as failed."""


@runtime_checkable
class Judge(Protocol):
    """Anything that answers a multimodal prompt.

    ``info`` identifies the judge in every judgement it produces (at least ``kind`` and ``model``; remote judges
    add ``endpoint``). ``max_concurrency`` bounds how many calls may run at once (1 for in-process models).
    """

    info: dict[str, str]
    max_concurrency: int

    def complete(self, prompt: str, images: list[Image.Image]) -> str:
        """Return the judge's reply to ``prompt`` about ``images`` (in order), or raise :class:`JudgeCallError`."""
        ...
