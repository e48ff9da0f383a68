"""A linear patch autoencoder: the demo model's stand-in for the FLUX VAE, fitted (PCA) on the synthetic world.

Each ``patch_size`` x ``patch_size`` RGB patch (``3 p²`` values in [-1, 1]) is projected on the first
``latent_channels`` principal components of such patches, so the latent has ``latent_channels`` channels at
``1/patch_size`` of the resolution, each component scaled to unit variance (whitened); decoding is the
transpose with the scales undone. PCA is the optimal linear autoencoder for the
patch distribution it is fitted on, and on the flat-coloured synthetic scenes it reconstructs at about 43 dB
(4 x 4 patches, 32 components), where a small FLUX-layout KL autoencoder trained for the same CPU budget
reaches about 19 dB (its GroupNorms make absolute colour slow to learn). It has the interface the pipeline uses
(``encode(x).latent_dist.mode()``, ``decode(z).sample``, ``config.scaling_factor`` / ``shift_factor``),
so it is a drop-in ``vae`` component; the released Step1X-Edit uses the FLUX ``AutoencoderKL``.

:meth:`PatchAutoencoder.fit` estimates the components and their scales from images; the latent normalisation
(``scaling_factor * (z - shift_factor)``) is set so normalised latents have zero mean and unit variance (every
channel, not only overall: without whitening the first component's spread is ~65x the last's, and the sampler's
leftover noise in the weak components decodes to coloured blocky texture).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .. import validate
from ..errors import InvalidValueError

# Log-variance reported for the (deterministic) posterior, so ``latent_dist.sample()`` equals the mode.
DETERMINISTIC_LOGVAR = -30.0
# Bounds of the config (the demo model: 4 x 4 patches, 48 components, RGB).
MAX_PATCH_SIZE = 64
MAX_IN_CHANNELS = 16


def check_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`~step1x_edit.errors.InvalidValueError` naming the field unless the ``PatchAutoencoder``
    config ``config`` (a ``vae/config.json``) has its sizes, each in range, and a sensible latent normalisation."""
    for name in ("patch_size", "latent_channels"):
        if name not in config:
            raise InvalidValueError(f"{name} is missing")
    patch = validate.integer("patch_size", config["patch_size"], 1, MAX_PATCH_SIZE)
    channels = validate.integer("in_channels", config.get("in_channels", 3), 1, MAX_IN_CHANNELS)
    validate.integer("latent_channels", config["latent_channels"], 1, channels * patch**2)
    if "scaling_factor" in config:
        validate.number("scaling_factor", config["scaling_factor"], 0.0, low_open=True)
    if "shift_factor" in config:
        validate.number("shift_factor", config["shift_factor"])


class PatchAutoencoder(ModelMixin, ConfigMixin):
    """Linear autoencoder of ``patch_size`` x ``patch_size`` patches with ``latent_channels`` components."""

    @register_to_config
    def __init__(self, patch_size: int = 4, latent_channels: int = 32, in_channels: int = 3,
                 scaling_factor: float = 1.0, shift_factor: float = 0.0):
        super().__init__()
        if latent_channels > in_channels * patch_size**2:
            raise ValueError(f"latent_channels {latent_channels} exceeds the {in_channels * patch_size**2} values "
                             f"of a {patch_size}x{patch_size} patch")
        self.encoder = nn.Conv2d(in_channels, latent_channels, patch_size, stride=patch_size)
        self.decoder = nn.ConvTranspose2d(latent_channels, in_channels, patch_size, stride=patch_size)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """Pixels [B, 3, H, W] in [-1, 1] (H, W multiples of ``patch_size``) -> posterior over [B, C, H/p, W/p]."""
        mean = self.encoder(x.to(self.dtype))
        parameters = torch.cat([mean, torch.full_like(mean, DETERMINISTIC_LOGVAR)], dim=1)  # [B, 2C, h, w]
        posterior = DiagonalGaussianDistribution(parameters)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        """Latents [B, C, h, w] -> pixels [B, 3, h p, w p] (about [-1, 1], not clamped)."""
        sample = self.decoder(z.to(self.dtype))
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, sample: torch.Tensor) -> DecoderOutput:
        return self.decode(self.encode(sample).latent_dist.mode())

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> PatchAutoencoder:
        """Set the components to the principal components of the patches of ``images`` [N, 3, H, W] in [-1, 1],
        each scaled to unit variance (whitened), with the mean folded into the biases; the latent normalisation
        is then the identity up to rounding (``scaling_factor`` / ``shift_factor`` measured on ``images``)."""
        p, channels = self.config.patch_size, self.config.latent_channels
        batch, colours, height, width = images.shape
        if height % p or width % p:
            raise ValueError(f"image sides must be multiples of {p}, got {height}x{width}")
        patches = images.double().reshape(batch, colours, height // p, p, width // p, p)  # b c h ph w pw
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(-1, colours * p * p)  # [patches, 3 p²]
        # centre by the mean colour (one value per channel, which the decoder's bias can add back)
        colour_mean = images.double().mean((0, 2, 3))  # [3]
        centre = colour_mean.repeat_interleave(p * p)  # [3 p²], channel-major like the patches
        _, singular, components = torch.linalg.svd(patches - centre, full_matrices=False)
        basis = components[:channels]  # [C, 3 p²], orthonormal rows
        # Whitening: component c has standard deviation singular[c] / sqrt(n) over the patches. Equal variances
        # give every channel the same signal-to-noise ratio under the flow's Gaussian noise, so the sampler's
        # residual error in a weak (fine-detail) component decodes to a proportionally small pixel error.
        scale = (singular[:channels] / len(patches) ** 0.5).clamp_min(1e-6)  # [C]
        self.encoder.weight.copy_((basis / scale[:, None]).reshape(channels, colours, p, p).to(self.dtype))
        self.encoder.bias.copy_(-(basis @ centre) / scale)
        self.decoder.weight.copy_((basis * scale[:, None]).reshape(channels, colours, p, p).to(self.dtype))
        self.decoder.bias.copy_(colour_mean)
        latents = self.encoder(images.to(self.dtype))
        self.register_to_config(scaling_factor=float(1 / latents.std()), shift_factor=float(latents.mean()))
        return self


def reconstruction_psnr(vae, images: torch.Tensor) -> float:
    """Mean per-image PSNR (dB, pixels in [-1, 1] counted on the [0, 1] scale) of ``vae`` on ``images``."""
    with torch.no_grad():
        decoded = vae.decode(vae.encode(images).latent_dist.mode()).sample.clamp(-1, 1)
    mse = ((decoded - images) / 2).square().flatten(1).mean(1)
    return float(np.mean(-10 * np.log10(mse.clamp_min(1e-12).cpu().numpy())))
