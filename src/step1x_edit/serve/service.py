"""The one object the web UI and the HTTP API both call: a loaded pipeline, the limits a server puts on a
request, and a queue that runs one edit at a time.

:class:`EditService` checks every request field against :class:`ServeLimits` before any work (a client cannot ask
for 10,000 steps or a 20k-pixel working size), reads the image through :func:`~step1x_edit.image_io.load_image`
(the same checks as the CLI), and serialises the edits: a pipeline is not safe to call from two threads, and one
edit at a time is also what one GPU does best. Requests beyond ``max_pending`` (running plus waiting) are refused
at once with :class:`ServiceBusyError` instead of piling up.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .. import sampling
from ..errors import Step1XEditError
from ..image_io import MAX_IMAGE_PIXELS, load_image
from ..pipeline import MAX_PROMPT_CHARS, Step1XEditPipeline, check_instruction

MAX_SEED = 2**63 - 1


class InvalidRequestError(Step1XEditError, ValueError):
    """A request field outside what the server accepts (the message names the field and its range)."""


class ServiceBusyError(Step1XEditError):
    """Too many edits are running or waiting; the client should retry later."""


class EditCancelledError(Step1XEditError):
    """The request was withdrawn (its client went away) before or during its edit."""


class OutOfMemoryError(Step1XEditError):
    """The accelerator ran out of memory for this request (its memory is freed again; smaller settings may fit)."""


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for. The defaults suit one GPU serving the released models."""

    max_steps: int = 100
    max_size_level: int = 1024
    max_guidance: float = 30.0
    max_images: int = 4  # images per request (the HTTP API's ``n``)
    max_pixels: int = MAX_IMAGE_PIXELS  # of the uploaded image
    max_upload_bytes: int = 50 * 1024 * 1024
    max_prompt_chars: int = MAX_PROMPT_CHARS
    max_pending: int = 8  # edits running or waiting; more are refused with ServiceBusyError

    def __post_init__(self):
        for key in self.__dataclass_fields__:
            if not getattr(self, key) > 0:
                raise Step1XEditError(f"the serving limit {key} must be positive, got {getattr(self, key)}")
        if self.max_size_level < 16:
            raise Step1XEditError(f"the serving limit max_size_level must be at least 16, got {self.max_size_level}")


@dataclass(frozen=True)
class EditResult:
    images: list[Image.Image]
    seeds: list[int]  # image i was drawn with seeds[i] (seed, seed + 1, ...)
    seconds: float  # time spent editing, queueing excluded


class EditService:
    """Edits images with one pipeline, one request at a time, within ``limits``.

    ``name`` is what the HTTP API reports as the model id (``/v1/models``).
    """

    def __init__(self, pipeline: Step1XEditPipeline, limits: ServeLimits | None = None, name: str = "step1x-edit"):
        self.pipeline = pipeline
        self.limits = limits or ServeLimits()
        self.name = name
        self._run_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._pending = 0
        defaults = self.defaults
        for key, limit in (("num_inference_steps", self.limits.max_steps), ("size_level", self.limits.max_size_level),
                           ("guidance_scale", self.limits.max_guidance)):
            if defaults[key] > limit:  # else every request that leaves the field out would be refused
                raise Step1XEditError(f"the model's default {key} ({defaults[key]}) is above the serving limit "
                                      f"({limit}); raise the limit")
        pipeline.set_progress_bar_config(disable=True)

    @property
    def defaults(self) -> dict:
        """The model's own settings, used for every field a request leaves out."""
        config = self.pipeline.config
        return {
            "num_inference_steps": config.default_num_inference_steps,
            "guidance_scale": config.default_guidance_scale,
            "size_level": config.default_size_level,
            "strength": config.default_strength,
        }

    @property
    def pending(self) -> int:
        """Edits running or waiting now."""
        return self._pending

    def describe(self) -> dict:
        """The model, its defaults and the limits, as JSON-ready values."""
        return {
            "model": self.name,
            "version": self.pipeline.version,
            "defaults": self.defaults,
            "limits": {key: getattr(self.limits, key) for key in self.limits.__dataclass_fields__},
        }

    def edit(
        self,
        image: str | Path | bytes | Image.Image,
        instruction: str,
        *,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        size_level: int | None = None,
        strength: float | None = None,
        seed: int | None = None,
        negative_prompt: str = "",
        num_images: int = 1,
        cancelled: Callable[[], bool] | None = None,
    ) -> EditResult:
        """Edit ``image`` following ``instruction``; fields left as ``None`` take the model's defaults, and
        ``seed=None`` draws a random seed (returned in the result, so any result can be reproduced).

        ``cancelled``, when given, is asked when the edit's turn comes and after every denoising step; once it
        answers true the edit stops with :class:`EditCancelledError` (the HTTP API passes "has the client
        disconnected?", so an abandoned request does not hold the queue)."""
        settings = self.check_request(instruction, num_inference_steps, guidance_scale, size_level, strength, seed,
                                      negative_prompt, num_images)
        first_seed = settings.pop("seed")
        seeds = [first_seed + index for index in range(num_images)]
        with self._count_lock:
            if self._pending >= self.limits.max_pending:
                raise ServiceBusyError(f"{self._pending} edits are running or waiting (limit "
                                       f"{self.limits.max_pending}); retry in a moment")
            self._pending += 1
        try:
            source = load_image(image, max_pixels=self.limits.max_pixels)
            with self._run_lock:
                if cancelled is not None and cancelled():
                    raise EditCancelledError("the request was withdrawn before its edit started")
                start = time.perf_counter()
                try:
                    result = self.pipeline(
                        image=source,
                        prompt=[instruction] * num_images,
                        negative_prompt=negative_prompt,
                        generator=[torch.Generator("cpu").manual_seed(value) for value in seeds],
                        callback_on_step_end=None if cancelled is None else _stop_when(cancelled),
                        **settings,
                    )
                except torch.cuda.OutOfMemoryError as error:
                    torch.cuda.empty_cache()
                    raise OutOfMemoryError(
                        f"out of GPU memory for {num_images} image(s) at size_level {settings['size_level']}; "
                        "ask for a smaller size_level or fewer images"
                    ) from error
                return EditResult(images=list(result.images), seeds=seeds, seconds=time.perf_counter() - start)
        finally:
            with self._count_lock:
                self._pending -= 1

    def check_request(self, instruction, num_inference_steps, guidance_scale, size_level, strength, seed,
                      negative_prompt, num_images) -> dict:
        """Every field checked against the limits, the defaults filled in; returns the pipeline's keyword
        arguments plus ``seed``. Raises :class:`InvalidRequestError` (or ``InvalidPromptError``) naming the field."""
        limits, defaults = self.limits, self.defaults
        check_instruction(instruction)
        if len(instruction) > limits.max_prompt_chars:
            raise InvalidRequestError(f"the instruction has {len(instruction):,} characters (limit "
                                      f"{limits.max_prompt_chars:,})")
        if not isinstance(negative_prompt, str) or len(negative_prompt) > limits.max_prompt_chars:
            raise InvalidRequestError(f"negative_prompt must be a string of at most {limits.max_prompt_chars:,} "
                                      "characters")
        steps = _integer("num_inference_steps", num_inference_steps, defaults["num_inference_steps"], 1,
                         limits.max_steps)
        size = _integer("size_level", size_level, defaults["size_level"], 16, limits.max_size_level)
        count = _integer("n", num_images, 1, 1, limits.max_images)
        guidance = _number("guidance_scale", guidance_scale, defaults["guidance_scale"], 0.0, limits.max_guidance)
        strength = _number("strength", strength, defaults["strength"], 0.0, 1.0)
        try:
            sampling.strength_steps(steps, strength)
        except ValueError as error:
            raise InvalidRequestError(f"strength: {error}") from error
        if seed is None:
            seed = random.randrange(MAX_SEED - limits.max_images)
        seed = _integer("seed", seed, 0, 0, MAX_SEED - count + 1)
        return {"num_inference_steps": steps, "guidance_scale": guidance, "size_level": size, "strength": strength,
                "seed": seed}


def _stop_when(cancelled: Callable[[], bool]):
    """A pipeline step callback that stops the edit once ``cancelled()`` is true."""

    def check(pipeline, step_index, t, tensors) -> None:
        if cancelled():
            raise EditCancelledError(f"the request was withdrawn during its edit (after step {step_index + 1})")

    return check


def _integer(name: str, value, default: int, low: int, high: int) -> int:
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise InvalidRequestError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _number(name: str, value, default: float, low: float, high: float) -> float:
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequestError(f"{name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise InvalidRequestError(f"{name} must be between {low} and {high}, got {value}")
    return float(value)
