"""The FLUX.1 autoencoder used by Step1X-Edit, as a diffusers ``AutoencoderKL``, and the latent helpers.

The official ``AutoEncoder`` arguments (``resolution, in_channels, ch, out_ch, ch_mult, num_res_blocks,
z_channels, scale_factor, shift_factor``) map onto ``AutoencoderKL`` with ``block_out_channels = ch * ch_mult``,
``layers_per_block = num_res_blocks``, ``latent_channels = z_channels``, no quant convs and the FLUX latent
normalisation (scale 0.3611, shift 0.1159 for the released VAE). The official-key table is in
:mod:`step1x_edit.checkpoints.official`.

Latents are ``scale * (z - shift)`` of the posterior **mode** (the official encoder samples; the mode keeps
edits deterministic and is what the parity fixtures use).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from .. import validate
from ..errors import InvalidValueError

OFFICIAL_VAE_FIELDS = (
    "resolution", "in_channels", "ch", "out_ch", "ch_mult", "num_res_blocks", "z_channels", "scale_factor",
    "shift_factor",
)
# Bounds of the sizes, far above the released VAE (ch 128, 4 levels, 2 res blocks, 16 latent channels), so that
# an absurd config is refused before an autoencoder is built from it.
MAX_VAE_LEVELS = 8
MAX_VAE_WIDTH = 8_192
MAX_VAE_CHANNELS = 1_024
MAX_VAE_RES_BLOCKS = 32


def check_official_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`~step1x_edit.errors.InvalidValueError` naming the field unless every official ``AutoEncoder``
    argument present in ``config`` has a sensible type and range."""
    for name in ("in_channels", "out_ch", "z_channels"):
        if name in config:
            validate.integer(name, config[name], 1, MAX_VAE_CHANNELS)
    if "ch" in config:
        validate.integer("ch", config["ch"], 1, MAX_VAE_WIDTH)
    if "resolution" in config:
        validate.integer("resolution", config["resolution"], 1, MAX_VAE_WIDTH)
    if "num_res_blocks" in config:
        validate.integer("num_res_blocks", config["num_res_blocks"], 1, MAX_VAE_RES_BLOCKS)
    if "ch_mult" in config:
        validate.integers("ch_mult", config["ch_mult"], MAX_VAE_LEVELS, 1, MAX_VAE_WIDTH)
    if "scale_factor" in config:
        validate.number("scale_factor", config["scale_factor"], 0.0, low_open=True)
    if "shift_factor" in config:
        validate.number("shift_factor", config["shift_factor"])


def check_diffusers_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`~step1x_edit.errors.InvalidValueError` naming the field unless the ``AutoencoderKL`` config
    ``config`` (a ``vae/config.json``) has its sizes, each in range, and sensible latent normalisation."""
    for name in ("in_channels", "out_channels", "latent_channels", "block_out_channels", "layers_per_block"):
        if name not in config:
            raise InvalidValueError(f"{name} is missing")
    for name in ("in_channels", "out_channels", "latent_channels"):
        validate.integer(name, config[name], 1, MAX_VAE_CHANNELS)
    widths = validate.integers("block_out_channels", config["block_out_channels"], MAX_VAE_LEVELS, 1, MAX_VAE_WIDTH)
    validate.integer("layers_per_block", config["layers_per_block"], 1, MAX_VAE_RES_BLOCKS)
    if "norm_num_groups" in config:
        validate.integer("norm_num_groups", config["norm_num_groups"], 1, MAX_VAE_WIDTH)
    for name in ("down_block_types", "up_block_types"):
        kinds = config.get(name, ())
        if not isinstance(kinds, (list, tuple)) or len(kinds) != len(widths) or not all(isinstance(k, str) for k in kinds):
            raise InvalidValueError(f"{name} must be a list of {len(widths)} block type names (one per "
                                    f"block_out_channels entry), got {kinds!r}")
    if config.get("scaling_factor") is not None:
        validate.number("scaling_factor", config["scaling_factor"], 0.0, low_open=True)
    if config.get("shift_factor") is not None:
        validate.number("shift_factor", config["shift_factor"])


def diffusers_vae_config(official: Mapping[str, Any]) -> dict[str, Any]:
    """The ``AutoencoderKL`` config equivalent to the official ``AutoEncoder`` arguments ``official``."""
    missing = [field for field in OFFICIAL_VAE_FIELDS if field not in official]
    unknown = sorted(set(official) - set(OFFICIAL_VAE_FIELDS))
    if missing or unknown:
        raise ValueError(f"official VAE config: missing fields {missing}, unknown fields {unknown}")
    widths = [official["ch"] * mult for mult in official["ch_mult"]]
    if any(width % 32 for width in widths):
        raise ValueError(f"every VAE width must be a multiple of 32 (GroupNorm groups), got {widths}")
    levels = len(widths)
    return {
        "in_channels": official["in_channels"],
        "out_channels": official["out_ch"],
        "down_block_types": ("DownEncoderBlock2D",) * levels,
        "up_block_types": ("UpDecoderBlock2D",) * levels,
        "block_out_channels": tuple(widths),
        "layers_per_block": official["num_res_blocks"],
        "act_fn": "silu",
        "latent_channels": official["z_channels"],
        "norm_num_groups": 32,
        "sample_size": official["resolution"],
        "scaling_factor": official["scale_factor"],
        "shift_factor": official["shift_factor"],
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "mid_block_add_attention": True,
    }


def autoencoder_from_official_config(official: Mapping[str, Any]) -> AutoencoderKL:
    """A randomly initialised ``AutoencoderKL`` with the layout of the official ``AutoEncoder(**official)``."""
    return AutoencoderKL(**diffusers_vae_config(official))


def images_to_pixels(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images of one size -> the VAE's input, float pixels [B, 3, H, W] in [-1, 1]."""
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])  # [B, H, W, 3]
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0  # [B, 3, H, W]


def encode_latents(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """Encode ``pixels`` [B, 3, H, W] in [-1, 1] to normalised latents [B, z, H/8, W/8] (posterior mode)."""
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    z = vae.encode(pixels).latent_dist.mode()
    return vae.config.scaling_factor * (z - vae.config.shift_factor)


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Decode normalised ``latents`` [B, z, h, w] to pixels [B, 3, 8h, 8w] (about [-1, 1], not clamped)."""
    z = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
    return vae.decode(z).sample
