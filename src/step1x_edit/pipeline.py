"""``Step1XEditPipeline``: instruction-based image editing with Step1X-Edit, as a diffusers pipeline.

The pipeline only orchestrates; the math lives elsewhere:
- ``step1x_edit.models.mllm``: the Qwen2.5-VL condition (prompt, quote tokenization, prefix drop, padding);
- ``step1x_edit.models.transformer``: the connector + FLUX-style DiT, one forward per denoising step;
- ``step1x_edit.models.vae``: the FLUX autoencoder (scale 0.3611, shift 0.1159);
- ``step1x_edit.sampling``: resize rule, schedule, packing, position ids, CFG and the Euler loop.

Loading: :meth:`Step1XEditPipeline.from_pretrained` reads the diffusers layout (``model_index.json``),
:meth:`Step1XEditPipeline.from_official` reads the released layout (``step1x-edit-*.safetensors``,
``vae.safetensors``, ``Qwen2.5-VL-7B-Instruct/``), and :func:`load_pipeline` picks the right one.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from . import sampling, validate
from .acceleration.options import Acceleration
from .acceleration.quantization import quantized_layers
from .errors import CheckpointError, InvalidImageError, InvalidPromptError, InvalidValueError, Step1XEditError
from .image_io import load_image
from .models import mllm_v1p2
from .models.mllm import MAX_LENGTH, check_attn_implementation, encode_prompts, set_attn_implementation
from .models.patch_vae import PatchAutoencoder
from .models.presets import (
    MAX_INFERENCE_STEPS,
    MAX_SIZE_LEVEL,
    MIN_SIZE_LEVEL,
    check_pipeline_settings,
)
from .models.transformer import Step1XEditTransformer2DModel
from .models.vae import decode_latents, encode_latents, images_to_pixels
from .reasoning import LocalChat, reasoning_seed, resolve_options
from .reasoning import run as run_reasoning
from .versions import RECIPE_V1P2, SAMPLER_DIFFUSERS, SAMPLER_OFFICIAL, VAE_INPUT_ANTIALIAS, get_version

# The resolution-dependent shift of the schedule (FLUX): mu goes from 0.5 at 256 noisy tokens to 1.15 at 4096.
SCHEDULER_CONFIG = {
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "use_dynamic_shifting": True,
    "time_shift_type": "exponential",
}
# The stock scheduler shifts the official recipe's sigmas in numpy, at most one float32 rounding (6e-8) away from the
# official code's torch arithmetic; a schedule this close to the official one is taken to be it.
OFFICIAL_SCHEDULE_ATOL = 1e-6

# What ``output_type`` may be.
OUTPUT_TYPES = ("pil", "np", "pt", "latent")

# The small demo model shipped inside the package (float16; see its MODEL_CARD.md).
DEMO_MODEL_DIR = Path(__file__).parent / "assets" / "demo"

# Longest instruction accepted, in characters. The MLLM condition is truncated at 640 tokens anyway; this only
# stops absurd inputs (a pasted file) before they reach the tokenizer.
MAX_PROMPT_CHARS = 20_000

# A rough cost of one working pixel of one image, measured on CPU with the FLUX-layout presets: the VAE holds about
# 8 float32 copies of its first block's width at full resolution, the DiT about 24 copies of its hidden width per
# token (noisy and reference: 2 tokens per 2x2 latent patch, twice with guidance), the host 64 bytes (pixels).
VAE_COPIES_PER_PIXEL = 8
DIT_COPIES_PER_TOKEN = 24
HOST_BYTES_PER_PIXEL = 64


def check_instruction(prompt) -> None:
    """Raise :class:`InvalidPromptError` unless ``prompt`` is a non-blank UTF-8 string of at most
    ``MAX_PROMPT_CHARS``."""
    _check_prompt("the instruction", prompt)
    if not prompt.strip():
        raise InvalidPromptError("the instruction is empty; say what to change, e.g. 'make the sky blue'")


def check_output_type(output_type) -> None:
    """Raise :class:`InvalidValueError` unless ``output_type`` is one of :data:`OUTPUT_TYPES`."""
    if output_type not in OUTPUT_TYPES:
        raise InvalidValueError(f"output_type must be one of {', '.join(map(repr, OUTPUT_TYPES))}, got {output_type!r}")


def check_negative_prompt(prompt) -> None:
    """Raise :class:`InvalidPromptError` unless ``prompt`` is a UTF-8 string (empty allowed) of at most
    ``MAX_PROMPT_CHARS``."""
    _check_prompt("the negative prompt", prompt)


def _check_prompt(name: str, prompt) -> None:
    try:
        validate.text(name, prompt, MAX_PROMPT_CHARS)
    except InvalidValueError as error:  # a command-line argument that is not UTF-8 arrives with lone surrogates
        raise InvalidPromptError(str(error)) from None


# The settings a pipeline saves in model_index.json beside its components.
def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | int | None) -> torch.device:
    """``device`` as a torch device that exists on this machine (``None``: :func:`default_device`); raises
    :class:`InvalidValueError` naming it when it is not a device name or names one this machine lacks."""
    if device is None:
        return default_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InvalidValueError(f"device {device!r} is not a device name; use cpu, cuda or cuda:N") from None
    if resolved.type == "cpu" and resolved.index in (None, 0):
        return resolved
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InvalidValueError(f"device {device!r}: this machine has no CUDA GPU that torch can use; use cpu")
        if resolved.index is not None and resolved.index >= count:
            raise InvalidValueError(f"device {device!r} does not exist: this machine has {count} GPU(s), cuda:0 to "
                                    f"cuda:{count - 1}")
        return resolved
    if resolved.type == "mps" and torch.backends.mps.is_available():
        return resolved
    raise InvalidValueError(f"device {device!r} is not available here; use cpu, cuda or cuda:N")


def available_memory(device: torch.device) -> int | None:
    """Bytes that a call could still allocate on ``device``: available RAM on the CPU, free memory (the caching
    allocator's unused reserve included) on a CUDA GPU; ``None`` for other devices (not measured)."""
    if device.type == "cpu":
        import psutil

        return psutil.virtual_memory().available
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return None


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bfloat16 on GPU, float32 on CPU (bfloat16 matmuls are many times slower on most CPUs)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


@dataclass
class Step1XEditPipelineOutput(BaseOutput):
    """Edited images: a list of PIL images, or an array/tensor for ``output_type`` "np"/"pt"/"latent"; with thinking
    or reflection (v1.2), ``reasoning`` holds one :class:`~step1x_edit.reasoning.ReasoningTrace` per image (every
    round, its images, reflections and scores, and the chosen round, which ``images`` holds)."""

    images: list[Image.Image] | np.ndarray | torch.Tensor
    reasoning: list | None = None


class Step1XEditPipeline(DiffusionPipeline):
    """Edit images from natural-language instructions with Step1X-Edit (v1.0 and v1.1 weights).

    Components: ``transformer`` (:class:`Step1XEditTransformer2DModel`, connector included), ``vae``
    (``AutoencoderKL``, FLUX configuration; the built-in demo model uses a linear
    :class:`~step1x_edit.models.patch_vae.PatchAutoencoder`), ``text_encoder`` (``Qwen2_5_VLForConditionalGeneration``),
    ``processor`` (``Qwen2_5_VLProcessor``) and ``scheduler`` (``FlowMatchEulerDiscreteScheduler`` by default, with
    the schedule's shift parameters in its config; it drives the denoising loop, see :meth:`set_timesteps`). ``max_sequence_length`` is the length the MLLM condition is
    padded or cut to: 640 for the released models; smaller models may be trained with a shorter one.
    ``default_size_level`` is the working resolution used when a call does not give one (the resolution the
    model was trained at: 1024 for the released models), ``default_guidance_scale`` likewise (6.0),
    ``default_strength`` (1.0: start from pure noise, as the official code does) and ``default_num_inference_steps``
    (28).
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        transformer: Step1XEditTransformer2DModel,
        vae: AutoencoderKL | PatchAutoencoder,
        text_encoder: Any,
        processor: Any,
        scheduler: FlowMatchEulerDiscreteScheduler,
        max_sequence_length: int = MAX_LENGTH,
        default_size_level: int = 1024,
        default_guidance_scale: float = 6.0,
        default_strength: float = 1.0,
        default_num_inference_steps: int = 28,
    ):
        super().__init__()
        check_pipeline_settings({"max_sequence_length": max_sequence_length, "default_size_level": default_size_level,
                               "default_guidance_scale": default_guidance_scale, "default_strength": default_strength,
                               "default_num_inference_steps": default_num_inference_steps})
        self.register_modules(
            transformer=transformer, vae=vae, text_encoder=text_encoder, processor=processor, scheduler=scheduler
        )
        self.register_to_config(max_sequence_length=max_sequence_length, default_size_level=default_size_level,
                                default_guidance_scale=default_guidance_scale, default_strength=default_strength,
                                default_num_inference_steps=default_num_inference_steps)

    @property
    def version(self) -> str:
        """The Step1X-Edit version (:mod:`step1x_edit.versions`) the pipeline runs as: the model line and its
        inference recipe."""
        return self.transformer.config.version

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_official(
        cls,
        model_dir: str | os.PathLike,
        version: str | None = None,
        mllm_dir: str | os.PathLike | None = None,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        attn_implementation: str = "sdpa",
        dit_storage_dtype: torch.dtype | None = None,
    ) -> Step1XEditPipeline:
        """Load the released layout: ``step1x-edit-i1258.safetensors`` (v1.0) or
        ``step1x-edit-v1p1-official.safetensors`` (v1.1), ``vae.safetensors`` and ``Qwen2.5-VL-7B-Instruct/``.

        ``version`` is detected from the checkpoint when not given (``connector.scale_factor`` exists only in
        v1.0); a mismatch raises :class:`CheckpointError`. ``mllm_dir`` overrides where Qwen2.5-VL is read from.
        A ``transformer_config.json`` beside the weights, if present, supplies the config fields that shapes cannot
        tell (rotary ``axes_dim``, ``theta``, ``connector_num_heads``) for non-released sizes.
        ``attn_implementation`` is the MLLM's attention (:data:`~step1x_edit.models.mllm.ATTN_IMPLEMENTATIONS`).
        ``dit_storage_dtype`` (``torch.float8_e4m3fn``) keeps the DiT's layer weights in fp8, read as stored (see
        :func:`~step1x_edit.checkpoints.official.load_official_transformer`).
        """
        from .checkpoints.folder import check_processor_folder, check_text_encoder_folder
        from .checkpoints.official import find_official_files, load_official_transformer, load_official_vae
        from .models.mllm import load_processor, load_text_encoder

        check_attn_implementation(attn_implementation)
        device = resolve_device(device)
        torch_dtype = torch_dtype or default_dtype(device)
        files = find_official_files(model_dir, version)
        mllm_path = Path(mllm_dir) if mllm_dir is not None else files.mllm_dir
        if mllm_path is None:
            raise CheckpointError(
                f"no Qwen2.5-VL folder in {model_dir}: expected {Path(model_dir) / 'Qwen2.5-VL-7B-Instruct'} "
                "(download Qwen/Qwen2.5-VL-7B-Instruct there) or pass mllm_dir"
            )
        if mllm_path.is_dir():  # else the loaders below say what is missing
            check_text_encoder_folder(mllm_path)
            check_processor_folder(mllm_path)
        transformer = load_official_transformer(
            files.transformer, version=version, config=files.transformer_config, torch_dtype=torch_dtype,
            storage_dtype=dit_storage_dtype,
        )
        vae = load_official_vae(files.vae, torch_dtype=torch.float32)
        text_encoder = load_text_encoder(mllm_path, torch_dtype=torch_dtype, attn_implementation=attn_implementation)
        processor = load_processor(mllm_path)
        pipe = cls(transformer, vae, text_encoder, processor, FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG))
        return pipe.place(device, torch_dtype)

    @classmethod
    def from_official_diffusers(
        cls,
        model_dir: str | os.PathLike,
        version: str | None = None,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        attn_implementation: str = "sdpa",
    ) -> Step1XEditPipeline:
        """Load an official diffusers-format repository as downloaded (``Step1X-Edit-v1p1-diffusers``,
        ``Step1X-Edit-v1p2``, ``Step1X-Edit-v1p2-preview``; see :mod:`step1x_edit.checkpoints.official_diffusers`),
        without conversion. Its version comes from ``model_index.json`` and the transformer config (a repository
        that matches no known version is refused); ``version`` may pick another recipe for the same weights (e.g.
        ``"v1.1"`` to run the v1.1 repository as ``inference.py`` does). The pipeline's defaults (steps, guidance,
        working size) are the version's; ``attn_implementation`` is the MLLM's attention."""
        from .checkpoints.official_diffusers import check_official_diffusers_folder, load_fork_transformer
        from .models.mllm import load_processor, load_text_encoder
        from .versions import same_weights

        check_attn_implementation(attn_implementation)
        device = resolve_device(device)
        torch_dtype = torch_dtype or default_dtype(device)
        path = Path(model_dir)
        detected = check_official_diffusers_folder(path)  # headers and config files, before anything is built
        if version is not None and not same_weights(version, detected):
            raise CheckpointError(f"{path} holds a {detected} model; it cannot run as {version}")
        line = get_version(version or detected)
        transformer = load_fork_transformer(path / "transformer", line.name, torch_dtype=torch_dtype)
        try:
            vae = AutoencoderKL.from_pretrained(path / "vae", use_safetensors=True, torch_dtype=torch.float32)
            scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path / "scheduler")
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
            raise CheckpointError(f"cannot load the VAE or scheduler of {path}: {_one_line(error)}") from error
        text_encoder = load_text_encoder(path / "text_encoder", torch_dtype=torch_dtype,
                                         attn_implementation=attn_implementation)
        processor = load_processor(path / "processor", pixels=line.processor_pixels)
        pipe = cls(transformer, vae.eval(), text_encoder, processor, scheduler,
                   default_size_level=line.fixed_size_level or line.default_size_level,
                   default_guidance_scale=line.default_guidance_scale,
                   default_num_inference_steps=line.default_num_inference_steps)
        return pipe.place(device, torch_dtype)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, attn_implementation: str = "sdpa", **kwargs):
        """diffusers' ``from_pretrained`` for this project's layout, the MLLM running with ``attn_implementation``
        (:data:`~step1x_edit.models.mllm.ATTN_IMPLEMENTATIONS`, checked first); an official diffusers-format
        repository (its ``model_index.json`` names the official fork's classes) goes to
        :meth:`from_official_diffusers` (``torch_dtype`` and ``device`` are honoured)."""
        from .checkpoints.official_diffusers import is_official_diffusers_folder

        check_attn_implementation(attn_implementation)
        if Path(pretrained_model_name_or_path).is_dir() and is_official_diffusers_folder(pretrained_model_name_or_path):
            return cls.from_official_diffusers(pretrained_model_name_or_path, version=kwargs.get("version"),
                                               torch_dtype=kwargs.get("torch_dtype"), device=kwargs.get("device"),
                                               attn_implementation=attn_implementation)
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if pipe.text_encoder.config._attn_implementation != attn_implementation:
            set_attn_implementation(pipe.text_encoder, attn_implementation)
        return pipe

    def place(self, device: str | torch.device, torch_dtype: torch.dtype) -> Step1XEditPipeline:
        """Move every component to ``device``: the transformer and the MLLM in ``torch_dtype`` (a quantized one in
        the compute dtype it was quantized for), the VAE in float32 (as the official code runs it; it is small and
        its decode is precision-sensitive)."""
        for module, dtype in ((self.transformer, torch_dtype), (self.text_encoder, torch_dtype), (self.vae, torch.float32)):
            if module.dtype != dtype and not quantized_layers(module):  # quantized weights keep their compute dtype
                module.to(dtype=dtype)
            module.to(device=device)
        return self

    # ------------------------------------------------------------------ LoRA
    def load_lora_weights(
        self, path_or_state_dict: str | os.PathLike | dict[str, torch.Tensor], adapter_name: str = "default",
        scale: float = 1.0,
    ) -> None:
        """Add a LoRA to the transformer as peft adapter ``adapter_name`` with multiplier ``scale``: a kohya-style
        file (the official ``lora_unet_*`` names) or a peft/diffusers one, detected from the keys (see
        :mod:`step1x_edit.checkpoints.lora`). LoRAs loaded before stay active."""
        from .checkpoints.lora import load_lora

        load_lora(self.transformer, path_or_state_dict, adapter_name=adapter_name, scale=scale)

    def fuse_lora(self, scale: float = 1.0) -> None:
        """Merge the active LoRAs into the transformer weights (faster inference; undo with ``unfuse_lora``)."""
        self.transformer.fuse_lora(lora_scale=scale)

    def unfuse_lora(self) -> None:
        """Undo :meth:`fuse_lora`."""
        self.transformer.unfuse_lora()

    def unload_lora_weights(self) -> None:
        """Remove every LoRA from the transformer (the original weights come back)."""
        self.transformer.unload_lora()

    # ------------------------------------------------------------------ inputs
    def _check_inputs(self, images, prompts, negative_prompts, precomputed: bool, size_level, num_inference_steps,
                      guidance_scale, strength):
        if not precomputed:
            for prompt in prompts:
                check_instruction(prompt)
            if len(negative_prompts) != len(prompts):
                raise ValueError(f"got {len(negative_prompts)} negative prompts for {len(prompts)} prompts")
            for prompt in negative_prompts:
                check_negative_prompt(prompt)
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images for {len(prompts)} prompts")
        validate.integer("num_inference_steps", num_inference_steps, 1, MAX_INFERENCE_STEPS)
        validate.number("guidance_scale", guidance_scale, 0.0)
        validate.number("strength", strength, 0.0, 1.0, low_open=True)
        sampling.strength_steps(num_inference_steps, strength)
        self.check_size_level(size_level, len(prompts), guided=guidance_scale > 1.0)

    def working_bytes_per_pixel(self, guided: bool = True) -> int:
        """A rough estimate of the memory one working pixel of one image takes during a call (VAE activations in
        float32, DiT activations in the transformer's dtype, twice the tokens with guidance), beyond the weights."""
        vae = self.vae.config
        widths = getattr(vae, "block_out_channels", None)
        vae_width = widths[0] if widths else vae.in_channels
        latent_scale = getattr(vae, "patch_size", None) or 2 ** (len(widths) - 1)  # pixels per latent pixel
        tokens_per_pixel = 2 / (latent_scale * sampling.PATCH) ** 2  # noisy and reference
        token_bytes = DIT_COPIES_PER_TOKEN * self.transformer.config.hidden_size * self.transformer.dtype.itemsize
        return math.ceil(HOST_BYTES_PER_PIXEL + VAE_COPIES_PER_PIXEL * 4 * vae_width
                         + tokens_per_pixel * token_bytes * (2 if guided else 1))

    def largest_size_level(self, batch_size: int = 1, guided: bool = True) -> int:
        """The largest ``size_level`` a call editing ``batch_size`` images can run at on the execution device, from
        the memory available there now and :meth:`working_bytes_per_pixel`; at most ``MAX_SIZE_LEVEL``."""
        available = available_memory(self._execution_device)
        if available is None:
            return MAX_SIZE_LEVEL
        return min(MAX_SIZE_LEVEL, math.isqrt(available // (batch_size * self.working_bytes_per_pixel(guided))))

    def check_size_level(self, size_level: int, batch_size: int = 1, guided: bool = True) -> None:
        """Raise :class:`InvalidValueError` (naming the value and the largest that fits) unless ``size_level`` is an
        integer from ``MIN_SIZE_LEVEL`` to ``MAX_SIZE_LEVEL`` that the execution device has the memory for."""
        validate.integer("size_level", size_level, MIN_SIZE_LEVEL, MAX_SIZE_LEVEL)
        largest = self.largest_size_level(batch_size, guided)
        if size_level <= largest:
            return
        device = self._execution_device  # below MAX_SIZE_LEVEL, so its memory was measured
        available = available_memory(device)
        needed = size_level**2 * batch_size * self.working_bytes_per_pixel(guided)
        raise InvalidValueError(
            f"size_level {size_level} needs about {needed / 2**30:.1f} GiB for {batch_size} image(s) on {device}, "
            f"which has {available / 2**30:.1f} GiB available: the largest size_level that fits is {largest}"
        )

    @staticmethod
    def _as_list(value, count: int | None = None) -> list:
        if isinstance(value, (list, tuple)):
            return list(value)
        return [value] * (count or 1)

    # ------------------------------------------------------------------ call
    def resolve_settings(self, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                         size_level: int | None = None, strength: float | None = None) -> dict[str, Any]:
        """A call's ``num_inference_steps``, ``guidance_scale``, ``size_level`` and ``strength``, each left as
        ``None`` replaced by the model's own default (``default_*`` in the config). What :meth:`__call__` runs with,
        and what a server fills a request in with; values are returned as given (checking them is the caller's)."""
        config = self.config
        given = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
                 "size_level": size_level, "strength": strength}
        return {name: getattr(config, f"default_{name}") if value is None else value for name, value in given.items()}

    @torch.no_grad()
    def __call__(
        self,
        image: Image.Image | str | os.PathLike | list | None = None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] = "",
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        size_level: int | None = None,
        strength: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        reasoning=None,
    ) -> Step1XEditPipelineOutput:
        """Edit ``image`` following ``prompt``.

        Args:
            image: a PIL image or path, or a list of them (one per prompt; a single image is shared by all prompts).
            prompt: the instruction(s). Quoted text ("OPEN") is fed to the MLLM character by character.
            negative_prompt: the CFG negative instruction(s); the released model uses "" (the default).
            num_inference_steps: denoising steps (default: the pipeline's ``default_num_inference_steps``, 28 unless
                the model was saved with another).
            guidance_scale: classifier-free guidance weight (default: the pipeline's ``default_guidance_scale``, 6.0
                for the released models); 1.0 or less disables CFG (one model call per step).
            size_level: the edit runs at about ``size_level**2`` pixels (sides multiples of 16); the result is
                resized back to the input's size. Default: the pipeline's ``default_size_level``.
            strength: how far from the source the edit may go, in (0, 1] (image-to-image, as in diffusers): the edit
                starts at the flow time of step ``steps - round(steps * strength)`` from the source latent mixed with
                the noise, and runs the remaining steps. 1 (the default unless the pipeline's ``default_strength``
                says otherwise) starts from pure noise, as the official code does; lower keeps more of the source.
            generator: torch generator(s) for the initial noise.
            output_type: "pil" (default), "np" (float arrays in [0, 1], input size), "pt" (tensor at the working
                size) or "latent" (unpacked latents); checked before any work.
            latents: initial noise [B, 16, H/8, W/8] at the working size, instead of drawing it.
            prompt_embeds, prompt_attention_mask: precomputed MLLM condition [B, L, C] / [B, L] (see
                :meth:`encode_prompt`); the negative pair likewise. When given, ``prompt`` is not encoded.
            callback_on_step_end: ``fn(pipe, step_index, timestep, callback_kwargs) -> dict`` called after each
                step, as in diffusers (a ``PipelineCallback`` too): ``callback_kwargs`` holds the tensors named in
                ``callback_on_step_end_tensor_inputs`` (``"latents"``: the packed noisy tokens [B, N, 64]) and, in
                the v1.1-diffusers and v1.2 recipes, which edit one image at a time, ``"image_index"``; a
                ``"latents"`` entry of the returned dict replaces the current latents (returning ``None`` keeps
                them). ``timestep`` is the scheduler's.
            callback_on_step_end_tensor_inputs: the tensors the callback gets (default and only one: ``"latents"``).
            reasoning: a :class:`~step1x_edit.reasoning.ReasoningOptions`: thinking (rewrite the instruction first)
                and reflection (judge each edit, retry, keep the best of at most ``max_tries`` rounds), v1.2 models
                only. Default: the official v1.2 call's (reflection, 3 rounds, no thinking) for v1.2 models, none
                for the others; ``step1x_edit.reasoning.PLAIN`` edits once without either.

        The registered ``scheduler`` drives the denoising loop (see :meth:`set_timesteps`); the model's hooks
        (offloading) are freed when the call ends, however it ends.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        check_output_type(output_type)
        self._check_callback_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        self.check_scheduler()
        if prompt_embeds is None and prompt is None:
            raise InvalidPromptError("pass a prompt (the edit instruction) or prompt_embeds")
        count = len(prompt) if isinstance(prompt, (list, tuple)) else None
        if count is None and prompt_embeds is not None:
            count = prompt_embeds.shape[0]
        prompts = self._as_list(prompt, count) if prompt is not None else [None] * count
        images = self._as_list(image, len(prompts))
        if len(images) == 1 and len(prompts) > 1:
            images = images * len(prompts)
        if any(item is None for item in images):
            raise InvalidImageError("pass the image to edit")
        negative_prompts = self._as_list(negative_prompt, len(prompts))
        settings = self.resolve_settings(num_inference_steps, guidance_scale, size_level, strength)
        # Every setting is checked before any work (a NaN guidance would otherwise give a black image).
        self._check_inputs(images, prompts, negative_prompts, prompt_embeds is not None, **settings)
        for embeds, mask, name in (
            (prompt_embeds, prompt_attention_mask, "prompt"),
            (negative_prompt_embeds, negative_prompt_attention_mask, "negative_prompt"),
        ):
            if embeds is not None and mask is None:
                raise ValueError(f"{name}_embeds needs its {name}_attention_mask (both come from encode_prompt)")
        reasoning = resolve_options(self.version, reasoning)
        diffusers_recipe = get_version(self.version).sampler == SAMPLER_DIFFUSERS
        if diffusers_recipe and (prompt_embeds is not None or negative_prompt_embeds is not None or latents is not None):
            raise InvalidValueError(f"a {self.version} pipeline encodes its own conditions and draws its own noise "
                                    "(as the official diffusers pipeline does); pass prompts and a generator, not "
                                    "prompt_embeds or latents")
        if reasoning.active and output_type not in ("pil", "np"):
            raise InvalidValueError(f"output_type {output_type!r} cannot be used with thinking or reflection, which "
                                    "judge images: ask for 'pil' or 'np', or pass reasoning=PLAIN")
        try:
            if reasoning.active:
                return self._call_with_reasoning(images, prompts, negative_prompts, settings, generator, output_type,
                                                 callback_on_step_end, callback_on_step_end_tensor_inputs, reasoning)
            if diffusers_recipe:
                return self._call_diffusers_recipe(images, prompts, negative_prompts, settings, generator,
                                                   output_type, callback_on_step_end,
                                                   callback_on_step_end_tensor_inputs)
            return self._call_official_recipe(images, prompts, negative_prompts, settings, generator, output_type,
                                              latents, prompt_embeds, prompt_attention_mask, negative_prompt_embeds,
                                              negative_prompt_attention_mask, callback_on_step_end,
                                              callback_on_step_end_tensor_inputs)
        finally:
            self.maybe_free_model_hooks()

    def _check_callback_inputs(self, callback_on_step_end, tensor_inputs: Sequence[str]) -> None:
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise InvalidValueError(f"callback_on_step_end must be callable, got {type(callback_on_step_end).__name__}")
        if isinstance(tensor_inputs, str) or not set(tensor_inputs) <= set(self._callback_tensor_inputs):
            raise InvalidValueError(f"callback_on_step_end_tensor_inputs must be a list drawn from "
                                    f"{self._callback_tensor_inputs}, got {tensor_inputs!r}")

    def _step_callback(self, callback_on_step_end, tensor_inputs: Sequence[str], image_index: int | None = None):
        """The denoising loop's ``callback(step_index, timestep, tokens)`` that calls ``callback_on_step_end`` as
        diffusers does and returns the latents it gives back (``None``: keep them); ``None`` without a callback."""
        if callback_on_step_end is None:
            return None

        def on_step(step_index: int, timestep: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor | None:
            callback_kwargs = {name: tokens for name in tensor_inputs}  # "latents" is the only one
            if image_index is not None:
                callback_kwargs["image_index"] = image_index
            outputs = callback_on_step_end(self, step_index, timestep, callback_kwargs)
            if outputs is None:
                return None
            if not isinstance(outputs, Mapping):
                raise InvalidValueError(f"callback_on_step_end must return a dict (the tensors to replace, e.g. "
                                        f"{{'latents': ...}}) or None, got {type(outputs).__name__}")
            return outputs.get("latents")
        return on_step

    # ------------------------------------------------------------------ the scheduler and the loop
    def set_timesteps(self, num_inference_steps: int, image_seq_len: int, strength: float = 1.0,
                      device: torch.device | None = None) -> torch.Tensor:
        """Set the registered scheduler's schedule for one edit of ``image_seq_len`` noisy tokens and return the
        timesteps the edit runs (the last ``round(num_inference_steps * strength)`` of them).

        As diffusers' FLUX pipelines do, the scheduler gets this version's unshifted sigmas
        (:func:`~step1x_edit.sampling.unshifted_sigmas`) and the resolution shift mu of its own config
        (:func:`~step1x_edit.sampling.shift_mu`); its ``set_timesteps`` must take ``sigmas`` and ``mu``
        (``FlowMatchEulerDiscreteScheduler``, ``FlowMatchLCMScheduler``). The official recipe (v1.0, v1.1) shifts in
        the official code's float32 torch arithmetic (:func:`~step1x_edit.sampling.get_schedule`), which the stock
        scheduler's numpy arithmetic can miss by one rounding: where the scheduler's sigmas are that schedule up to
        float32 rounding, the official values are used, bit for bit; any other schedule is the scheduler's own.
        """
        self.check_scheduler()
        kept = sampling.strength_steps(num_inference_steps, strength)
        scheduler = self.scheduler
        sampler = get_version(self.version).sampler
        shift = sampling.shift_parameters(scheduler.config)
        scheduler.set_timesteps(sigmas=sampling.unshifted_sigmas(num_inference_steps, sampler),
                                mu=sampling.shift_mu(image_seq_len, **shift), device=device)
        if sampler == SAMPLER_OFFICIAL:
            official = torch.tensor(sampling.get_schedule(num_inference_steps, image_seq_len, **shift), device=device)
            if scheduler.sigmas.shape == official.shape and torch.allclose(scheduler.sigmas, official, rtol=0,
                                                                           atol=OFFICIAL_SCHEDULE_ATOL):
                scheduler.sigmas = official
                scheduler.timesteps = official[:-1] * scheduler.config.num_train_timesteps
        start = (num_inference_steps - kept) * scheduler.order
        scheduler.set_begin_index(start)
        return scheduler.timesteps[start:]

    def check_scheduler(self) -> None:
        """Raise :class:`InvalidValueError` unless the registered scheduler can drive this pipeline: its
        ``set_timesteps`` takes ``sigmas`` and ``mu``, as diffusers' flow-matching schedulers for FLUX do."""
        parameters = inspect.signature(self.scheduler.set_timesteps).parameters
        if not {"sigmas", "mu"} <= set(parameters):
            raise InvalidValueError(f"the scheduler {type(self.scheduler).__name__} cannot drive this pipeline: its "
                                    "set_timesteps takes no sigmas and mu; use a flow-matching scheduler that does, "
                                    "such as FlowMatchEulerDiscreteScheduler")

    def _denoise(self, predict, noisy_tokens: torch.Tensor, reference_tokens: torch.Tensor, num_inference_steps: int,
                 guidance_scale: float, strength: float, callback=None, predict_uncond=None) -> torch.Tensor:
        """Run the scheduler's schedule (:meth:`set_timesteps`) over the noisy tokens [B, N, 64] with
        :func:`~step1x_edit.sampling.denoise`, each update made by the scheduler's ``step``; below strength 1 the
        start is the source latent mixed with the noise at the first timestep's flow time. ``callback(step_index,
        timestep, tokens)`` runs after each step and may return replacement tokens. Returns the final tokens."""
        line = get_version(self.version)
        timesteps = self.set_timesteps(num_inference_steps, noisy_tokens.shape[1], strength, noisy_tokens.device)
        if self.transformer.is_cache_enabled:  # step caching (docs/performance.md): a fresh cache per edit
            self.transformer._reset_stateful_cache()
            predict = self._in_cache_context(predict, "cond")
            predict_uncond = self._in_cache_context(predict_uncond, "uncond")
        start = self.scheduler.begin_index
        sigmas = self.scheduler.sigmas[start:start + len(timesteps) + 1].tolist()  # the flow time of each timestep
        if strength < 1:  # image-to-image: start part-way, from the source latent mixed with the noise
            noisy_tokens = sigmas[0] * noisy_tokens + (1 - sigmas[0]) * reference_tokens

        def step(step_index: int, velocity: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            return self.scheduler.step(velocity, timesteps[step_index], tokens, return_dict=False)[0]

        with self.progress_bar(total=len(timesteps)) as progress:
            def on_step(step_index: int, _: float, tokens: torch.Tensor) -> torch.Tensor | None:
                progress.update()
                return callback(step_index, timesteps[step_index], tokens) if callback is not None else None

            return sampling.denoise(predict, noisy_tokens, reference_tokens, sigmas, guidance_scale=guidance_scale,
                                    renorm_threshold=line.renorm_threshold, renorm_power=line.renorm_power,
                                    callback=on_step, uncond_fn=predict_uncond, step_fn=step)

    def _in_cache_context(self, model_fn, name: str):
        """``model_fn`` run in the DiT's cache context ``name`` (the conditional and unconditional calls keep apart
        caches), or None for None."""
        if model_fn is None:
            return None

        def run(tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with self.transformer.cache_context(name):
                return model_fn(tokens, t)
        return run

    # ------------------------------------------------------------------ the official recipe (v1.0, v1.1)
    def _call_official_recipe(self, images, prompts, negative_prompts, settings, generator, output_type, latents,
                              prompt_embeds, prompt_attention_mask, negative_prompt_embeds,
                              negative_prompt_attention_mask, callback_on_step_end, tensor_inputs):
        """Edit the batch as the official inference code does: batched CFG, the VAE mean, one schedule."""
        size_level, guidance_scale = settings["size_level"], settings["guidance_scale"]
        # 1. Read and resize the inputs to the working size (area ~ size_level**2, sides multiples of 16).
        originals = [load_image(item) for item in images]
        for item in originals:
            try:
                sampling.resize_dimensions(item.width, item.height, size_level)
            except ValueError as error:
                raise InvalidImageError(f"{error} (its aspect ratio is too extreme); crop or pad it first") from error
        resized = [sampling.resize_for_model(item, size_level, self.version) for item in originals]
        working_sizes = {item.size for item in resized}
        if len(working_sizes) > 1:
            raise InvalidImageError(
                "images of one batch must share an aspect ratio (they resize to "
                f"{sorted(working_sizes)}); call the pipeline once per image instead"
            )
        device = self._execution_device
        dtype = self.transformer.dtype

        # 2. The MLLM condition for the instruction and for the CFG negative (same image, other text).
        do_cfg = guidance_scale > 1.0
        if prompt_embeds is None:
            prompt_embeds, prompt_attention_mask = self.encode_prompt(resized, prompts)
        if do_cfg and negative_prompt_embeds is None:
            negative_prompt_embeds, negative_prompt_attention_mask = self.encode_prompt(resized, negative_prompts)
        embeds, mask = prompt_embeds, prompt_attention_mask
        if do_cfg:
            embeds = torch.cat([prompt_embeds, negative_prompt_embeds])
            mask = torch.cat([prompt_attention_mask, negative_prompt_attention_mask])
        embeds, mask = embeds.to(device=device, dtype=dtype), mask.to(device)

        # 3. Reference latents from the resized source; initial noise at the same latent size.
        pixels = images_to_pixels(resized).to(device=device, dtype=self.vae.dtype)
        reference = encode_latents(self.vae, pixels).to(dtype)  # [B, 16, H/8, W/8]
        latent_height, latent_width = reference.shape[-2:]
        if latents is None:
            latents = randn_tensor(reference.shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != tuple(reference.shape):
            raise ValueError(f"latents must have shape {tuple(reference.shape)}, got {tuple(latents.shape)}")
        noisy_tokens = sampling.pack_latents(latents.to(device=device, dtype=dtype))  # [B, N, 64]
        reference_tokens = sampling.pack_latents(reference)  # [B, N, 64]

        # 4. Position ids; 5. denoise: one transformer call per step over [cond ; uncond] x [noisy ; reference].
        img_ids, txt_ids = sampling.position_ids(latent_height, latent_width, embeds.shape[1], self.version)
        img_ids, txt_ids = img_ids.to(device), txt_ids.to(device)

        def model_fn(tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.transformer(
                hidden_states=tokens,
                timestep=t.to(dtype),
                encoder_hidden_states=embeds,
                encoder_attention_mask=mask,
                img_ids=img_ids,
                txt_ids=txt_ids,
            )

        noisy_tokens = self._denoise(model_fn, noisy_tokens, reference_tokens, settings["num_inference_steps"],
                                     guidance_scale, settings["strength"],
                                     self._step_callback(callback_on_step_end, tensor_inputs))

        # 6. Decode and resize back to each input's size.
        latents = sampling.unpack_latents(noisy_tokens, latent_height, latent_width)  # [B, 16, H/8, W/8]
        if output_type == "latent":
            return Step1XEditPipelineOutput(images=latents)
        decoded = decode_latents(self.vae, latents.to(self.vae.dtype)).float().clamp(-1, 1)  # [B, 3, H, W]
        decoded = decoded * 0.5 + 0.5
        if output_type == "pt":
            return Step1XEditPipelineOutput(images=decoded)
        return self._output(self._to_pil(decoded, [item.size for item in originals]), output_type)

    @staticmethod
    def _output(edited: list[Image.Image], output_type: str, reasoning: list | None = None) -> Step1XEditPipelineOutput:
        """The output of PIL images ``edited`` for ``output_type`` "pil" or "np" (float arrays in [0, 1])."""
        if output_type == "np":
            return Step1XEditPipelineOutput(
                images=np.stack([np.asarray(item, dtype=np.float32) / 255.0 for item in edited]), reasoning=reasoning)
        return Step1XEditPipelineOutput(images=edited, reasoning=reasoning)

    # ------------------------------------------------------------------ the official diffusers recipe
    def _call_diffusers_recipe(self, images, prompts, negative_prompts, settings, generator, output_type,
                               callback_on_step_end, tensor_inputs):
        """Edit each (image, prompt) pair on its own, as the official diffusers pipelines do (see
        :meth:`edit_as_diffusers`), then decode; ``generator`` (one, shared in order, or one per image) draws each
        edit's VAE sample and noise."""
        generators = generator if isinstance(generator, list) else [generator] * len(prompts)
        if len(generators) != len(prompts):
            raise ValueError(f"got {len(generators)} generators for {len(prompts)} prompts")
        originals = [load_image(item) for item in images]
        results = []
        for index, (original, prompt, negative, item_generator) in enumerate(
                zip(originals, prompts, negative_prompts, generators, strict=True)):
            results.append(self.edit_as_diffusers(
                original, prompt, negative, settings["num_inference_steps"], settings["guidance_scale"],
                settings["size_level"], settings["strength"], item_generator,
                self._step_callback(callback_on_step_end, tensor_inputs, image_index=index)))
        if output_type == "latent":
            return Step1XEditPipelineOutput(images=self._stack_same_size(results, "latents"))
        decoded = [decode_latents(self.vae, item.to(self.vae.dtype)).float().clamp(-1, 1) * 0.5 + 0.5
                   for item in results]  # each [1, 3, H, W] in [0, 1]
        if output_type == "pt":
            return Step1XEditPipelineOutput(images=self._stack_same_size(decoded, "decoded images"))
        edited = [self._to_pil(item, [original.size])[0] for item, original in zip(decoded, originals, strict=True)]
        return self._output(edited, output_type)

    def _call_with_reasoning(self, images, prompts, negative_prompts, settings, generator, output_type,
                             callback_on_step_end, tensor_inputs, options):
        """Edit each (image, prompt) pair with thinking and/or reflection (:func:`step1x_edit.reasoning.run`): every
        round is one official diffusers-recipe edit, all rounds of an image drawing from its generator in turn."""
        generators = generator if isinstance(generator, list) else [generator] * len(prompts)
        if len(generators) != len(prompts):
            raise ValueError(f"got {len(generators)} generators for {len(prompts)} prompts")
        traces = []
        for index, (image, prompt, negative, item_generator) in enumerate(
                zip(images, prompts, negative_prompts, generators, strict=True)):
            def on_step(pipe, step_index, timestep, tensors, index=index):
                return callback_on_step_end(pipe, step_index, timestep, {**tensors, "image_index": index})

            def edit(source, instruction, negative=negative, item_generator=item_generator):
                return self._call_diffusers_recipe(
                    [source], [instruction], [negative], settings, item_generator, "pil",
                    on_step if callback_on_step_end is not None else None, tensor_inputs).images[0]

            seed = reasoning_seed(options, item_generator)
            model = LocalChat(self.text_encoder, self.processor, options.max_new_tokens, options.greedy, seed)
            traces.append(run_reasoning(edit, load_image(image), prompt, options, model, seed))
        return self._output([trace.image for trace in traces], output_type, reasoning=traces)

    @staticmethod
    def _stack_same_size(tensors: list[torch.Tensor], what: str) -> torch.Tensor:
        shapes = {tuple(item.shape) for item in tensors}
        if len(shapes) > 1:
            raise InvalidImageError(f"the {what} of this batch differ in size ({sorted(shapes)}); ask for 'pil' or "
                                    "'np' output, or call the pipeline once per image")
        return torch.cat(tensors)

    def working_image(self, original: Image.Image, size_level: int) -> Image.Image:
        """The working-size image the MLLM reads: ``original`` resized to about ``size_level``² pixels (or the
        version's fixed size) with the version's filter."""
        line = get_version(self.version)
        return sampling.resize_for_model(original, line.fixed_size_level or size_level, self.version)

    def vae_pixels(self, original: Image.Image, working: Image.Image) -> torch.Tensor:
        """The VAE input [1, 3, H, W] in [-1, 1]: the working image (v1.1), or a bilinear antialiased resize of the
        original to the working size (v1.2)."""
        if get_version(self.version).vae_input != VAE_INPUT_ANTIALIAS:
            return images_to_pixels([working])
        pixels = torch.from_numpy(np.asarray(original.convert("RGB")).copy()).float().permute(2, 0, 1)[None] / 255.0
        pixels = torch.nn.functional.interpolate(pixels, (working.height, working.width), mode="bilinear",
                                                 antialias=True)  # [1, 3, H, W]
        return pixels * 2 - 1

    def encode_condition(self, working: Image.Image, prompt: str) -> dict[str, torch.Tensor]:
        """The DiT's text inputs for one (working image, prompt) pair in this version's recipe:
        ``encoder_hidden_states`` [1, L, C], ``encoder_attention_mask`` [1, L], ``txt_ids`` [L, 3] and, for v1.2,
        ``text_embeddings`` [1, L, C] and ``text_mask`` [1, L]."""
        device, dtype = self._execution_device, self.transformer.dtype
        if get_version(self.version).recipe == RECIPE_V1P2:
            condition = mllm_v1p2.encode(self.text_encoder, self.processor, working, prompt)
            inputs = {"encoder_hidden_states": condition.embedding, "encoder_attention_mask": condition.mask,
                      "txt_ids": condition.txt_ids, "text_embeddings": condition.text_embeds,
                      "text_mask": condition.text_masks}
        else:
            embeds, mask = self.encode_prompt([working], [prompt])
            inputs = {"encoder_hidden_states": embeds, "encoder_attention_mask": mask,
                      "txt_ids": torch.zeros(embeds.shape[1], 3)}
        return {key: value.to(device=device, dtype=dtype if value.is_floating_point() and key != "txt_ids" else None)
                for key, value in inputs.items()}

    def edit_as_diffusers(self, original: Image.Image, prompt: str, negative_prompt: str, num_inference_steps: int,
                          guidance_scale: float, size_level: int, strength: float = 1.0,
                          generator: torch.Generator | None = None, callback=None) -> torch.Tensor:
        """One edit exactly as the official diffusers pipeline of this version runs it; the final latents
        [1, 16, H/8, W/8].

        The working image (Lanczos) conditions the MLLM; the VAE latent is **sampled** with ``generator``, then the
        noise is drawn from it; the registered scheduler drives the loop (:meth:`set_timesteps`; the official
        pipelines' ``FlowMatchEulerDiscreteScheduler`` by default); guidance makes two transformer calls (condition,
        then negative, each with its own length) and renormalises at every step (the official code compares the
        0..1000 timestep with 0.93). ``callback(step_index, timestep, tokens)`` runs after each step; tokens
        [1, N, 64] it returns replace the current ones.
        """
        device, dtype = self._execution_device, self.transformer.dtype
        working = self.working_image(original, size_level)
        guided = guidance_scale > 1.0
        cond = self.encode_condition(working, prompt)
        uncond = self.encode_condition(working, negative_prompt) if guided else None
        pixels = self.vae_pixels(original, working).to(device=device, dtype=self.vae.dtype)
        posterior = self.vae.encode(pixels).latent_dist
        sample = posterior.sample(generator)  # [1, 16, H/8, W/8]
        reference = ((sample - self.vae.config.shift_factor) * self.vae.config.scaling_factor).to(dtype)
        noise = randn_tensor(reference.shape, generator=generator, device=device, dtype=dtype)
        latent_height, latent_width = reference.shape[-2:]
        noisy_tokens = sampling.pack_latents(noise)  # [1, N, 64]
        reference_tokens = sampling.pack_latents(reference)  # [1, N, 64]
        img_ids, _ = sampling.position_ids(latent_height, latent_width, 0, self.version)
        img_ids = img_ids.to(device)

        def predict(condition):
            def model_fn(tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return self.transformer(hidden_states=tokens, timestep=t.to(dtype), img_ids=img_ids, **condition)
            return model_fn

        noisy_tokens = self._denoise(predict(cond), noisy_tokens, reference_tokens, num_inference_steps,
                                     guidance_scale, strength, callback, predict(uncond) if guided else None)
        return sampling.unpack_latents(noisy_tokens, latent_height, latent_width)

    # ------------------------------------------------------------------ helpers
    def encode_prompt(self, images: list[Image.Image], prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The MLLM condition for (working-size image, instruction) pairs: embeddings [B, L, C], mask [B, L] with
        L = ``max_sequence_length`` (640 for the released models)."""
        return encode_prompts(self.text_encoder, self.processor, images, prompts, max_length=self.config.max_sequence_length)

    def _to_pil(self, pixels: torch.Tensor, sizes: list[tuple[int, int]]) -> list[Image.Image]:
        """Tensor [B, 3, H, W] in [0, 1] -> PIL images resized back to ``sizes`` (width, height), bicubic as the
        official code does for both versions."""
        array = (pixels.permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().astype(np.uint8)  # [B, H, W, 3]
        images = [Image.fromarray(item) for item in array]
        return [
            item if item.size == size else item.resize(size, Image.Resampling.BICUBIC)
            for item, size in zip(images, sizes, strict=True)
        ]


def load_pipeline(
    model: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    torch_dtype: torch.dtype | None = None,
    version: str | None = None,
    attn_implementation: str = "sdpa",
    loras: Sequence[tuple[str | os.PathLike, float]] = (),
    acceleration: Acceleration | None = None,
) -> Step1XEditPipeline:
    """Load a pipeline from a diffusers-layout directory, an official-layout directory, or the built-in model.

    ``model=None`` loads the demo model shipped with the package (:data:`DEMO_MODEL_DIR`, trained by
    ``step1x-edit train-demo``; see its ``MODEL_CARD.md``). ``attn_implementation`` is the MLLM's attention
    (:data:`~step1x_edit.models.mllm.ATTN_IMPLEMENTATIONS`; checked before anything is read). ``loras`` are
    (file, multiplier) pairs, loaded in order. ``acceleration`` (:class:`~step1x_edit.acceleration.options.
    Acceleration`: memory, speed and multi-GPU modes) is checked before anything loads; the models are then
    loaded on the CPU and placed on ``device`` by the modes, and what was done is in ``pipe.acceleration_notes``.
    """
    from .acceleration.options import apply_acceleration, check_combination, loads_dit_in_fp8
    from .checkpoints.lora import check_lora_file

    check_attn_implementation(attn_implementation)
    device = resolve_device(device)
    torch_dtype = torch_dtype or default_dtype(device)
    if acceleration is not None:
        check_combination(acceleration, device)
    for path, _ in loras:
        check_lora_file(path)
    storage = None
    if acceleration is not None and not loras:  # (a LoRA is merged into full-precision weights first)
        kept = _fp8_file(model, version) and acceleration.dit_storage is None and \
            acceleration.quantize_dit in (None, "none")
        if loads_dit_in_fp8(acceleration) or kept:
            storage = torch.float8_e4m3fn
    pipe = _load(model, device if acceleration is None else torch.device("cpu"), torch_dtype, version,
                 attn_implementation, storage)
    for index, (path, scale) in enumerate(loras):
        pipe.load_lora_weights(path, adapter_name=f"lora{index}", scale=scale)
    pipe.acceleration_notes = [] if acceleration is None else apply_acceleration(pipe, acceleration, device)
    return pipe


def _quantized_components(path: Path) -> dict[str, torch.nn.Module]:
    """The quantized components of the diffusers-layout folder ``path`` (written by ``convert --quantize-dit``
    or ``--quantize-mllm``), loaded as saved: nothing is re-quantized or unpickled."""
    import json

    from transformers import Qwen2_5_VLForConditionalGeneration

    from .acceleration.quantization import load_quantized
    from .checkpoints.folder import is_quantized_folder, transformer_class

    components = {}
    if is_quantized_folder(path / "transformer"):
        spec = json.loads((path / "model_index.json").read_text(encoding="utf-8"))["transformer"]
        components["transformer"] = load_quantized(transformer_class(spec), path / "transformer")
    if is_quantized_folder(path / "text_encoder"):
        components["text_encoder"] = load_quantized(Qwen2_5_VLForConditionalGeneration, path / "text_encoder")
    return components


def _fp8_file(model, version: str | None) -> bool:
    """Whether ``model`` is an official-layout folder whose DiT file is stored in fp8: its weights then stay in
    fp8 (diffusers' layerwise casting, computed in the compute dtype) unless the DiT's format is chosen
    otherwise."""
    from .checkpoints.official import find_official_files, stored_in_fp8

    if model is None or not Path(model).is_dir() or (Path(model) / "model_index.json").is_file():
        return False
    return stored_in_fp8(find_official_files(model, version).transformer)


def _load(model, device: torch.device, torch_dtype: torch.dtype, version: str | None, attn_implementation: str,
          dit_storage_dtype: torch.dtype | None) -> Step1XEditPipeline:
    """:func:`load_pipeline` without the LoRAs and the acceleration."""
    if model is None:
        if not (DEMO_MODEL_DIR / "model_index.json").is_file():
            raise CheckpointError(
                f"the built-in demo model is missing from {DEMO_MODEL_DIR} (a broken install?); reinstall "
                "step1x-edit or pass a model directory"
            )
        model = DEMO_MODEL_DIR
    path = Path(model)
    if not path.exists():
        raise CheckpointError(f"model directory not found: {path}")
    if (path / "model_index.json").is_file():
        from .checkpoints.folder import check_diffusers_folder
        from .checkpoints.official_diffusers import is_official_diffusers_folder

        if is_official_diffusers_folder(path):
            return Step1XEditPipeline.from_official_diffusers(path, version=version, torch_dtype=torch_dtype,
                                                             device=device, attn_implementation=attn_implementation)

        if version is not None:
            raise InvalidValueError(f"a version ({version}) applies to official checkpoints only; the diffusers "
                                    f"folder {path} records its own")
        check_diffusers_folder(path)  # config files and weight headers, before anything is built
        quantized = _quantized_components(path)
        try:
            pipe = Step1XEditPipeline.from_pretrained(path, attn_implementation=attn_implementation,
                                                      use_safetensors=True, **quantized)
        except Step1XEditError:
            raise
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:  # what the checks cannot foresee
            raise CheckpointError(f"cannot load the diffusers-layout model in {path}: {_one_line(error)}") from error
        return pipe.place(device, torch_dtype)
    return Step1XEditPipeline.from_official(path, version=version, torch_dtype=torch_dtype, device=device,
                                            attn_implementation=attn_implementation,
                                            dit_storage_dtype=dit_storage_dtype)




def _one_line(error: BaseException, limit: int = 500) -> str:
    """``error``'s message on one line, at most ``limit`` characters (library messages can list every tensor)."""
    message = " ".join(str(error).split()) or type(error).__name__
    return message if len(message) <= limit else message[: limit - 3] + "..."
