"""The Step1X-Edit sampler as pure functions, exactly as the official inference code does it.

Input resizing to a ``size_level`` area, the resolution-shifted rectified-flow schedule (the official float
formula and the diffusers scheduler's sigmas), 2x2 latent packing, the rotary position ids of each version,
classifier-free guidance with its "renorm", and the Euler loop that updates the noisy tokens while the reference
tokens stay fixed. What differs between versions is read from :mod:`step1x_edit.versions`. No devices, offloading,
progress bars or scheduler state here: the pipeline owns those (it passes its scheduler's step and a per-step
``callback`` to the loop).

Rectified flow: ``x_t = (1 - t) * x0 + t * noise``; the model predicts ``noise - x0``; t goes from 1 to 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import validate
from .errors import InvalidValueError
from .versions import (
    REFERENCE_IDS_GRID,
    REFERENCE_IDS_SAME,
    SAMPLER_DIFFUSERS,
    SAMPLER_OFFICIAL,
    VERSIONS,
    get_version,
)

LATENT_CHANNELS = 16
PATCH = 2  # latent pixels per token side
PIXELS_PER_TOKEN = 16  # VAE /8 times PATCH
_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
# The PIL filter of each version's working-size resize.
RESIZE_FILTER = {name: _FILTERS[version.resize_filter] for name, version in VERSIONS.items()}


def resize_dimensions(width: int, height: int, size_level: int) -> tuple[int, int]:
    """The model input size for an image of ``width`` x ``height``: about ``size_level``² pixels, same aspect.

    The longer side is fitted first with ceilings, then both sides are floored to multiples of 16.
    """
    if width <= 0 or height <= 0 or size_level <= 0:
        raise ValueError(f"width, height and size_level must be positive, got {width}, {height}, {size_level}")
    ratio = width / height
    if width > height:
        new_width = math.ceil(math.sqrt(size_level * size_level * ratio))
        new_height = math.ceil(new_width / ratio)
    else:
        new_height = math.ceil(math.sqrt(size_level * size_level / ratio))
        new_width = math.ceil(new_height * ratio)
    new_width, new_height = new_width // 16 * 16, new_height // 16 * 16
    if new_width == 0 or new_height == 0:
        raise ValueError(f"a {width}x{height} image is too elongated for size_level {size_level}")
    return new_width, new_height


def resize_for_model(image: Image.Image, size_level: int, version: str) -> Image.Image:
    """``image`` resized to :func:`resize_dimensions` with the version's filter (v1.0 bicubic, later Lanczos)."""
    get_version(version)
    size = resize_dimensions(image.width, image.height, size_level)
    return image.resize(size, RESIZE_FILTER[version])


def shift_mu(
    image_seq_len: int,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
) -> float:
    """The schedule's shift mu for ``image_seq_len`` noisy tokens, (H/16)(W/16): linear through
    (base_seq_len, base_shift) and (max_seq_len, max_shift), extrapolated outside."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return slope * image_seq_len + (base_shift - slope * base_seq_len)


def shift_parameters(scheduler_config: Mapping[str, Any]) -> dict[str, float]:
    """The keyword arguments of :func:`shift_mu` and :func:`get_schedule` that a diffusers scheduler config holds
    (``base_shift``, ``max_shift``, ``base_image_seq_len``, ``max_image_seq_len``; those it lacks keep the FLUX
    values)."""
    names = {"base_shift": "base_shift", "max_shift": "max_shift", "base_image_seq_len": "base_seq_len",
             "max_image_seq_len": "max_seq_len"}
    return {argument: scheduler_config[key] for key, argument in names.items() if key in scheduler_config}


def get_schedule(
    num_steps: int,
    image_seq_len: int,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
) -> list[float]:
    """The ``num_steps + 1`` flow times from 1 to 0, shifted towards 1 for long sequences.

    ``image_seq_len`` counts the noisy tokens only, (H/16)(W/16); mu is :func:`shift_mu`;
    t -> e^mu / (e^mu + (1/t - 1)), applied to :func:`unshifted_sigmas` and the final 0. Float32 torch arithmetic,
    like the official code, so the values match it bit for bit.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    mu = shift_mu(image_seq_len, base_shift, max_shift, base_seq_len, max_seq_len)
    timesteps = torch.linspace(1, 0, num_steps + 1)
    timesteps = math.exp(mu) / (math.exp(mu) + (1 / timesteps - 1) ** 1.0)
    return timesteps.tolist()


def unshifted_sigmas(num_steps: int, sampler: str) -> np.ndarray:
    """The ``num_steps`` flow times before the resolution shift, the final 0 left out, as each recipe
    (:data:`~step1x_edit.versions.SAMPLER_OFFICIAL` or ``SAMPLER_DIFFUSERS``) spaces them: the official code's
    float32 ``linspace(1, 0, num_steps + 1)``, or the diffusers pipelines' ``linspace(1, 1/num_steps, num_steps)``.
    What a pipeline passes to its scheduler's ``set_timesteps(sigmas=...)``."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if sampler == SAMPLER_OFFICIAL:
        return torch.linspace(1, 0, num_steps + 1)[:-1].numpy()
    if sampler == SAMPLER_DIFFUSERS:
        return np.linspace(1.0, 1 / num_steps, num_steps)
    raise ValueError(f"unknown sampler {sampler!r}; expected {SAMPLER_OFFICIAL!r} or {SAMPLER_DIFFUSERS!r}")


def scheduler_sigmas(scheduler_config: Mapping[str, Any], num_steps: int, image_seq_len: int) -> list[float]:
    """The ``num_steps + 1`` flow times (sigmas, last 0) the diffusers pipelines run: diffusers'
    ``FlowMatchEulerDiscreteScheduler`` with ``scheduler_config``, given the diffusers recipe's
    :func:`unshifted_sigmas` and the shift :func:`shift_mu` of ``image_seq_len`` noisy tokens. Float32 values, as
    the scheduler holds them."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler_config))
    scheduler.set_timesteps(sigmas=unshifted_sigmas(num_steps, SAMPLER_DIFFUSERS),
                            mu=shift_mu(image_seq_len, **shift_parameters(scheduler.config)))
    return scheduler.sigmas.float().tolist()


def check_strength(strength: float) -> None:
    """Refuse (:class:`~step1x_edit.errors.InvalidValueError`) an image-to-image ``strength`` outside (0, 1], NaN
    included."""
    validate.number("strength", strength, 0.0, 1.0, low_open=True)


def strength_steps(num_steps: int, strength: float) -> int:
    """How many of ``num_steps`` an image-to-image edit of ``strength`` in (0, 1] runs: ``round(num_steps *
    strength)``, which must be at least one."""
    check_strength(strength)
    kept = round(num_steps * strength)
    if kept < 1:
        raise InvalidValueError(f"strength {strength} keeps no step of {num_steps}; raise strength or the number of "
                                "steps")
    return kept


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] latents -> [B, (h/2)(w/2), 4C] tokens, feature index c*4 + ph*2 + pw, tokens row-major."""
    batch, channels, height, width = latents.shape
    if height % PATCH or width % PATCH:
        raise ValueError(f"latent height and width must be even, got {height}x{width}")
    tokens = latents.reshape(batch, channels, height // PATCH, PATCH, width // PATCH, PATCH)  # b c h ph w pw
    tokens = tokens.permute(0, 2, 4, 1, 3, 5)  # b h w c ph pw
    return tokens.reshape(batch, (height // PATCH) * (width // PATCH), channels * PATCH * PATCH)


def unpack_latents(tokens: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """The inverse of :func:`pack_latents`: [B, (h/2)(w/2), 4C] -> [B, C, latent_height, latent_width]."""
    batch, length, features = tokens.shape
    rows, cols = latent_height // PATCH, latent_width // PATCH
    if latent_height % PATCH or latent_width % PATCH or length != rows * cols or features % (PATCH * PATCH):
        raise ValueError(
            f"cannot unpack {length} tokens of width {features} into a {latent_height}x{latent_width} latent"
        )
    latents = tokens.reshape(batch, rows, cols, features // (PATCH * PATCH), PATCH, PATCH)  # b h w c ph pw
    latents = latents.permute(0, 3, 1, 4, 2, 5)  # b c h ph w pw
    return latents.reshape(batch, features // (PATCH * PATCH), latent_height, latent_width)


def position_ids(
    latent_height: int, latent_width: int, text_length: int, version: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary ids ``(img_ids [2N, 3], txt_ids [L, 3])`` for ``[noisy ; reference]`` image tokens and the text.

    Text ids are 0 (v1.2 computes its own, see :mod:`step1x_edit.models.mllm_v1p2`); the noisy token at packed
    (row r, col c) is (0, r, c); the reference token is (0, r, c) in v1.0 (identical to the noisy ids),
    (1, r + 1, c + 1) in v1.1 and (1, r, c) in v1.2.
    """
    rule = get_version(version).reference_ids
    rows, cols = latent_height // PATCH, latent_width // PATCH
    grid_rows, grid_cols = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    noisy = torch.stack([torch.zeros_like(grid_rows), grid_rows, grid_cols], dim=-1).reshape(rows * cols, 3)
    if rule == REFERENCE_IDS_SAME:
        reference = noisy.clone()
    elif rule == REFERENCE_IDS_GRID:
        reference = noisy.clone()
        reference[:, 0] = 1
    else:
        reference = noisy + 1
    img_ids = torch.cat([noisy, reference], dim=0).float()  # [2N, 3]
    return img_ids, torch.zeros(text_length, 3)


def guided_velocity(
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance_scale: float,
    t: float,
    renorm_threshold: float,
    renorm_power: float = 0.4,
) -> torch.Tensor:
    """Classifier-free guidance ``uncond + g * (cond - uncond) / d``.

    While ``t > renorm_threshold``, d = ||cond - uncond||^renorm_power per token (L2 over the last dimension)
    where that norm exceeds 1, else 1; afterwards d = 1.
    """
    difference = cond - uncond
    if t > renorm_threshold:
        norm = difference.norm(dim=-1, keepdim=True)
        difference = difference / torch.where(norm > 1, norm**renorm_power, torch.ones_like(norm))
    return uncond + guidance_scale * difference


def denoise(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noisy_tokens: torch.Tensor,
    reference_tokens: torch.Tensor,
    timesteps: Sequence[float],
    guidance_scale: float,
    renorm_threshold: float,
    renorm_power: float = 0.4,
    callback: Callable[[int, float, torch.Tensor], torch.Tensor | None] | None = None,
    uncond_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    step_fn: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Integrate the noisy tokens [B, N, 64] from ``timesteps[0]`` to ``timesteps[-1]``, one model evaluation per
    time but the last.

    ``model_fn(tokens [k*B, 2N, 64], t [k*B]) -> [k*B, 2N, 64]`` sees ``[noisy ; reference]`` tokens; with
    ``guidance_scale > 1``, k = 2 and the batch is the B conditional rows, then the B unconditional rows;
    otherwise k = 1 (conditional only). With ``uncond_fn`` (the diffusers pipelines, whose conditions differ in
    length), guidance makes two calls instead: ``model_fn`` on the B rows for the condition, then ``uncond_fn``
    on the same rows for the negative. The reference tokens never change.

    ``step_fn(step_index, velocity, tokens) -> tokens`` makes each update (a pipeline passes its scheduler's
    ``step``); by default the Euler step ``tokens + (timesteps[i + 1] - timesteps[i]) * velocity`` of the official
    code. ``callback(step_index, t, tokens)`` runs after every step; tokens it returns replace the current ones
    (``None`` keeps them). Returns the final noisy tokens.
    """
    if noisy_tokens.shape != reference_tokens.shape:
        raise ValueError(
            f"noisy {tuple(noisy_tokens.shape)} and reference {tuple(reference_tokens.shape)} tokens differ in shape"
        )
    guided = guidance_scale > 1
    tokens = noisy_tokens
    num_noisy = tokens.shape[1]
    for step, (t_curr, t_prev) in enumerate(zip(timesteps[:-1], timesteps[1:], strict=True)):
        model_input = torch.cat([tokens, reference_tokens], dim=1)  # [B, 2N, 64]
        batched = guided and uncond_fn is None
        if batched:
            model_input = torch.cat([model_input, model_input], dim=0)  # [2B, 2N, 64]
        t_vec = torch.full((model_input.shape[0],), t_curr, dtype=tokens.dtype, device=tokens.device)
        prediction = model_fn(model_input, t_vec)[:, :num_noisy]
        if guided:
            if batched:
                cond, uncond = prediction.chunk(2, dim=0)
            else:
                cond, uncond = prediction, uncond_fn(model_input, t_vec)[:, :num_noisy]
            velocity = guided_velocity(cond, uncond, guidance_scale, t_curr, renorm_threshold, renorm_power)
        else:
            velocity = prediction
        if step_fn is None:
            tokens = tokens + (t_prev - t_curr) * velocity
        else:
            tokens = step_fn(step, velocity, tokens)
        if callback is not None:
            replaced = callback(step, t_curr, tokens)
            if replaced is not None:
                if replaced.shape != tokens.shape:
                    raise ValueError(f"the step callback returned latents of shape {tuple(replaced.shape)}; the "
                                     f"denoising loop's are {tuple(tokens.shape)}")
                tokens = replaced
    return tokens
