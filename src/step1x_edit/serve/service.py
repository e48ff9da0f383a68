"""The one object the web UI and the HTTP API both call: a loaded pipeline, the limits a server puts on a
request, and a queue that runs one edit at a time.

:class:`EditService` checks every request field against :class:`ServeLimits` before any work (a client cannot ask
for 10,000 steps or a 20k-pixel working size), reads the image through :func:`~step1x_edit.image_io.load_image`
(the same checks as the CLI), and serialises the edits: a pipeline is not safe to call from two threads, and one
edit at a time is also what one GPU does best. Requests beyond ``max_pending`` (uploading, running or waiting) are
refused at once with :class:`ServiceBusyError` instead of piling up. A running edit can be stopped between any
two blocks of its models (the client went away, or it ran past ``max_seconds``), so one abandoned or oversized
request cannot hold the only worker for long.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .. import sampling, validate
from ..errors import InvalidValueError, Step1XEditError
from ..image_io import load_image
from ..pipeline import MAX_PROMPT_CHARS, Step1XEditPipeline, check_instruction
from ..reasoning import options_for

MAX_SEED = validate.MAX_SEED
# Random seeds stay at or below 2**53 - 1, the largest integer a JavaScript number holds exactly, so that the one
# the web page or a JSON client shows reproduces the image.
MAX_RANDOM_SEED = 2**53 - 1

# Between two checks of a running edit's ``cancelled`` (a round trip to the HTTP server's event loop), at least
# this long; the deadline is checked at every block.
CANCEL_CHECK_INTERVAL_SECONDS = 0.1


class ServiceBusyError(Step1XEditError):
    """Too many edits are running or waiting; the client should retry later."""


class EditCancelledError(Step1XEditError):
    """The request was withdrawn (its client went away) before or during its edit."""


class OutOfMemoryError(Step1XEditError):
    """The accelerator ran out of memory for this request (its memory is freed again; smaller settings may fit)."""


class EditTimeoutError(Step1XEditError):
    """The edit ran past the server's time limit per edit and was stopped."""


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for.

    ``max_steps`` and ``max_size_level`` left as ``None`` follow the served model (:meth:`for_model`): the larger
    of 50 and twice its default steps, and its own working size (the size it was trained at: 1024 for the released
    models, 96 for the built-in demo model), so a request cannot ask a small model for hours of work.
    """

    max_steps: int | None = None
    max_size_level: int | None = None
    max_guidance: float = 30.0
    max_images: int = 4  # images per request (the HTTP API's ``n``)
    max_pixels: int = 4096 * 4096  # of the decoded upload (a 12-megapixel photo fits; a 1-bit 8k x 8k bomb not)
    max_upload_bytes: int = 50 * 1024 * 1024
    max_prompt_chars: int = MAX_PROMPT_CHARS
    max_pending: int = 8  # requests uploading, running or waiting; more are refused with ServiceBusyError
    max_seconds: float = 300.0  # one edit's running time; past it the edit stops with EditTimeoutError
    max_ui_cache_bytes: int = 2 * 1024**3  # the web UI's uploads and results on disk; past it uploads get 503

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None and field.name in ("max_steps", "max_size_level"):
                continue
            low = 16 if field.name == "max_size_level" else 1
            if field.name in ("max_guidance", "max_seconds"):
                validate.number(f"the serving limit {field.name}", value, 0, low_open=True)
            else:
                validate.integer(f"the serving limit {field.name}", value, low)

    def for_model(self, defaults: dict) -> ServeLimits:
        """These limits with ``max_steps`` and ``max_size_level`` filled in from a model's ``defaults``."""
        return dataclasses.replace(
            self,
            max_steps=self.max_steps or max(50, 2 * defaults["num_inference_steps"]),
            max_size_level=self.max_size_level or defaults["size_level"],
        )


@dataclass(frozen=True)
class EditResult:
    images: list[Image.Image]
    seeds: list[int]  # image i was drawn with seeds[i] (seed, seed + 1, ...)
    seconds: float  # time spent editing, queueing excluded
    reasoning: list | None = None  # with thinking or reflection (v1.2): one ReasoningTrace per image


class EditService:
    """Edits images with one pipeline, one request at a time, within ``limits``.

    ``name`` is what the HTTP API reports as the model id (``/v1/models``).
    """

    def __init__(self, pipeline: Step1XEditPipeline, limits: ServeLimits | None = None, name: str = "step1x-edit"):
        self.pipeline = pipeline
        self.limits = (limits or ServeLimits()).for_model(self.defaults)
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
        """The model's own settings (:meth:`~step1x_edit.pipeline.Step1XEditPipeline.resolve_settings`), used for
        every field a request leaves out."""
        return self.pipeline.resolve_settings()

    @property
    def pending(self) -> int:
        """Requests holding a place now (uploading, waiting or running)."""
        return self._pending

    @contextlib.contextmanager
    def reserve(self):
        """Hold one of the ``max_pending`` places for the duration of the ``with`` block, or raise
        :class:`ServiceBusyError` at once when none is free. The HTTP API takes the place before it reads an upload,
        so slow uploads count against the bound too, and hands it to :meth:`edit` (``reserved=True``)."""
        with self._count_lock:
            if self._pending >= self.limits.max_pending:
                raise ServiceBusyError(f"{self._pending} edits are running or waiting (limit "
                                       f"{self.limits.max_pending}); retry in a moment")
            self._pending += 1
        try:
            yield
        finally:
            with self._count_lock:
                self._pending -= 1

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
        reserved: bool = False,
        think: bool | None = None,
        reflect: bool | None = None,
        max_tries: int | None = None,
    ) -> EditResult:
        """Edit ``image`` following ``instruction``; fields left as ``None`` take the model's defaults, and
        ``seed=None`` draws a random seed (returned in the result, so any result can be reproduced).

        ``cancelled``, when given, is asked when the edit's turn comes, after every denoising step and, at most every
        ``CANCEL_CHECK_INTERVAL_SECONDS``, between the blocks of the models; once it answers true the edit stops
        with :class:`EditCancelledError` (the HTTP API passes "has the client disconnected?", so an abandoned request
        does not hold the queue). An edit running longer than ``limits.max_seconds`` stops with
        :class:`EditTimeoutError`. ``reserved`` says the caller already holds a place (:meth:`reserve`).
        ``think``, ``reflect`` and ``max_tries`` choose the reasoning of a v1.2 model (:mod:`step1x_edit.reasoning`;
        ``None``: the model's default) and are refused for other models."""
        settings = self.check_request(instruction, num_inference_steps, guidance_scale, size_level, strength, seed,
                                      negative_prompt, num_images, think, reflect, max_tries)
        first_seed = settings.pop("seed")
        seeds = [first_seed + index for index in range(num_images)]
        with contextlib.nullcontext() if reserved else self.reserve():
            source = load_image(image, max_pixels=self.limits.max_pixels)
            return self.run([source] * num_images, [instruction] * num_images, negative_prompt, settings, seeds,
                            cancelled)

    def run(self, sources: list[Image.Image], instructions: list[str], negative_prompt: str, settings: dict,
            seeds: list[int], cancelled: Callable[[], bool] | None = None) -> EditResult:
        """Edit ``sources[i]`` following ``instructions[i]`` from the noise of ``seeds[i]``, in one pipeline call with
        ``settings`` (as :meth:`check_request` returns them, the seed left out), one call at a time; it stops as
        :meth:`edit` says. :meth:`edit` calls it for one request; a server that batches requests, for several."""
        with self._run_lock:
            if cancelled is not None and cancelled():
                raise EditCancelledError("the request was withdrawn before its edit started")
            start = time.perf_counter()
            stop = _Interrupter(cancelled, start + self.limits.max_seconds, self.limits.max_seconds,
                                settings["num_inference_steps"])
            try:
                with stop.between_blocks_of(self.pipeline):
                    result = self.pipeline(
                        image=sources,
                        prompt=instructions,
                        negative_prompt=negative_prompt,
                        generator=[torch.Generator("cpu").manual_seed(value) for value in seeds],
                        callback_on_step_end=stop.after_step,
                        **settings,
                    )
            except torch.cuda.OutOfMemoryError as error:
                torch.cuda.empty_cache()
                raise OutOfMemoryError(
                    f"out of GPU memory for {len(sources)} image(s) at size_level {settings['size_level']}; "
                    "ask for a smaller size_level or fewer images"
                ) from error
            return EditResult(images=list(result.images), seeds=seeds, seconds=time.perf_counter() - start,
                              reasoning=result.reasoning)

    def check_request(self, instruction, num_inference_steps, guidance_scale, size_level, strength, seed,
                      negative_prompt, num_images, think=None, reflect=None, max_tries=None) -> dict:
        """Every field checked against the limits, the defaults filled in; returns the pipeline's keyword
        arguments plus ``seed``. Raises :class:`InvalidRequestError` (or ``InvalidPromptError``) naming the field."""
        limits = self.limits
        given = self.pipeline.resolve_settings(num_inference_steps, guidance_scale, size_level, strength)
        check_instruction(instruction)
        validate.text("instruction", instruction, limits.max_prompt_chars)
        validate.text("negative_prompt", negative_prompt, limits.max_prompt_chars)
        steps = validate.integer("num_inference_steps", given["num_inference_steps"], 1, limits.max_steps)
        size = validate.integer("size_level", given["size_level"], 16, limits.max_size_level)
        count = validate.integer("n", num_images, 1, limits.max_images)
        guidance = validate.number("guidance_scale", given["guidance_scale"], 0.0, limits.max_guidance)
        strength = validate.number("strength", given["strength"], 0.0, 1.0)
        try:
            sampling.strength_steps(steps, strength)
        except ValueError as error:
            raise InvalidValueError(f"strength: {error}") from error
        if seed is None:
            seed = random.randint(0, MAX_RANDOM_SEED - count + 1)
        seed = validate.integer("seed", seed, 0, MAX_SEED - count + 1)
        reasoning = options_for(self.pipeline.version, think=think, reflect=reflect, max_tries=max_tries)
        return {"num_inference_steps": steps, "guidance_scale": guidance, "size_level": size, "strength": strength,
                "reasoning": reasoning, "seed": seed}


class _Interrupter:
    """Stops a running edit from inside the pipeline: after each denoising step, and before each block of its
    models (every member of an ``nn.ModuleList``: the DiT's blocks, the MLLM's layers, the autoencoder's stages), so
    a step of a large model at a large size need not finish first."""

    def __init__(self, cancelled: Callable[[], bool] | None, deadline: float, max_seconds: float, steps: int):
        self.cancelled, self.deadline, self.max_seconds, self.steps = cancelled, deadline, max_seconds, steps
        self.step = 0  # denoising steps finished
        self.last_asked = time.perf_counter()

    def check(self, ask: bool) -> None:
        now = time.perf_counter()
        if now > self.deadline:
            raise EditTimeoutError(f"the edit ran past the server's limit of {self.max_seconds:g} s per edit (in step "
                                   f"{self.step + 1} of {self.steps}); ask for fewer steps or a smaller size_level")
        if self.cancelled is not None and (ask or now - self.last_asked >= CANCEL_CHECK_INTERVAL_SECONDS):
            self.last_asked = now
            if self.cancelled():
                where = f"after step {self.step}" if ask else f"during step {self.step + 1}"
                raise EditCancelledError(f"the request was withdrawn during its edit ({where})")

    def after_step(self, pipeline, step_index, timestep, tensors) -> dict:
        """The pipeline's ``callback_on_step_end``: stop if asked to, else hand the tensors back unchanged."""
        self.step = step_index + 1
        self.check(ask=True)
        return tensors

    @contextlib.contextmanager
    def between_blocks_of(self, pipeline):
        """Check before every block of ``pipeline``'s models while the ``with`` block runs."""
        handles = []
        for name in ("text_encoder", "transformer", "vae"):
            model = getattr(pipeline, name, None)
            if not isinstance(model, torch.nn.Module):
                continue
            for module in model.modules():
                if isinstance(module, torch.nn.ModuleList):
                    handles += [block.register_forward_pre_hook(lambda *_: self.check(ask=False)) for block in module]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
