"""The demo model's experimental training objectives: errors of the implied clean image instead of the velocity.

The official objective (:func:`~step1x_edit.train.flow.flow_matching_loss`) is the mean squared velocity error.
The demo recipe trains a small model from scratch with two named objectives of its own, passed to the trainer as
extra entries of its objectives registry (:data:`DEMO_OBJECTIVES`, :mod:`step1x_edit.train.objectives`):

* ``"x0"``: each sample's squared error times t², which makes it the error of the implied clean latents
  ``x_t - t * v`` (every path ends at the target at t = 0). It keeps the loss of a ``reference_delta`` model, whose
  velocity error is its delta error over t, bounded at small t.
* ``"x0_relative"``: that error divided by the sample's no-edit error (target vs source, at least
  :data:`RELATIVE_FLOOR`), so every sample counts by how much of its own edit is still missing (1 = no better than
  returning the source): the per-image PSNR gain over the identity is the log of that ratio, and without it the
  samples with large edits (new backgrounds, styles) outweigh the small ones.

Their ``training.objective_options``:

* ``space``: ``"latent"`` (default) or ``"pixel"``: measure the errors on the frozen VAE's decoding of the implied
  clean latents, the target and the source (the loss then weighs each latent direction by how much it moves the
  pixels; with ``"x0_relative"`` it is the per-image squared pixel error over the identity's, whose log is the PSNR
  gain). Exact and cheap for a linear patch autoencoder, a decoder pass per step for the FLUX VAE.
* ``squared`` (1.0) scales the squared error (0 leaves it out); in pixel space only, ``absolute`` (0.0) adds that
  multiple of the mean absolute error and ``ssim`` (0.0) that multiple of the structural dissimilarity ``1 - SSIM``
  (:func:`step1x_edit.metrics.structural_similarity`), each relative to the source's with ``"x0_relative"``. The
  squared error alone does not mind faint blotches on flat regions, which break the image's structure; and under an
  instruction that leaves the model unsure which object it names, the squared error's minimiser is each pixel's
  mean edit, a little change on every candidate, the absolute error's the median, no change on an object it is less
  than even sure of.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from .. import sampling
from ..metrics import structural_similarity
from ..train.config import TrainingConfigError
from ..train.flow import check_latent_shapes, flow_path, predict_velocity
from ..train.objectives import FlowBatch, Objective
from ..validate import number

WEIGHTINGS = ("x0", "x0_relative")
SPACES = ("latent", "pixel")
RELATIVE_FLOOR = 0.01
"""``"x0_relative"``: a sample's no-edit error (target vs source latents, mean square) counts as at least this much."""
PIXEL_RELATIVE_FLOOR = 1e-4
"""... and in pixels ([-1, 1], mean square over pixels and channels; 1e-4 is a PSNR of about 46 dB)."""
PIXEL_ABSOLUTE_RELATIVE_FLOOR = 0.01
"""... its mean absolute difference in pixels (the absolute term; 0.01 is the square root of the above)."""
SSIM_RELATIVE_FLOOR = 1e-3
"""... and its structural dissimilarity 1 - SSIM."""
OPTIONS = {"space": "latent", "squared": 1.0, "absolute": 0.0, "ssim": 0.0}
MAX_WEIGHT = 1e6


def clean_image_loss(
    transformer: torch.nn.Module,
    target_latents: torch.Tensor,
    reference_latents: torch.Tensor,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    version: str,
    start_times: torch.Tensor | None = None,
    source_latents: torch.Tensor | None = None,
    weighting: str = "x0",
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    squared_weight: float = 1.0,
    absolute_weight: float = 0.0,
    ssim_weight: float = 0.0,
) -> torch.Tensor:
    """The error of the implied clean image (module docstring) with the ``weighting`` ``"x0"`` or ``"x0_relative"``.

    The arguments up to ``source_latents`` are those of :func:`~step1x_edit.train.flow.flow_matching_loss`.
    ``decode`` (latents [B, C, h, w] -> pixels [B, 3, H, W], e.g. the frozen VAE's decoder) measures the errors in
    pixels; ``absolute_weight`` and ``ssim_weight`` need it."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if min(squared_weight, absolute_weight, ssim_weight) < 0 or squared_weight + absolute_weight + ssim_weight == 0:
        raise ValueError("the loss weights (squared_weight, absolute_weight, ssim_weight) must be non-negative and "
                         "not all zero")
    if (absolute_weight or ssim_weight) and decode is None:
        raise ValueError("absolute_weight and ssim_weight need a pixel-space loss (decode)")
    check_latent_shapes(target_latents, reference_latents, noise)
    latent_size = tuple(target_latents.shape[-2:])
    t = t.to(device=target_latents.device, dtype=target_latents.dtype)
    x0 = sampling.pack_latents(target_latents)  # [B, N, 4C]
    reference = sampling.pack_latents(reference_latents)  # [B, N, 4C]
    source = reference if source_latents is None else sampling.pack_latents(source_latents)  # [B, N, 4C]
    noisy, velocity = flow_path(x0, sampling.pack_latents(noise), t, start_times, source)
    prediction = predict_velocity(transformer, noisy, reference, embeds, mask, t, version, latent_size)
    relative = weighting == "x0_relative"
    if decode is None:
        squared = (prediction.float() - velocity.float()).square()  # [B, N, 4C]
        no_edit = (x0 - source).float().square().mean(dim=(1, 2))  # [B]
        terms = [(squared_weight, squared.mean(dim=(1, 2)) * t.float().square(), no_edit, RELATIVE_FLOOR)]
    else:  # the implied clean latents (every path ends at the target at t = 0), in pixels
        implied = noisy.float() - t.float()[:, None, None] * prediction.float()

        def pixels(tokens: torch.Tensor) -> torch.Tensor:
            return decode(sampling.unpack_latents(tokens, *latent_size)).float()

        target_pixels, implied_pixels = pixels(x0).detach(), pixels(implied)
        source_pixels = pixels(source).detach() if relative else None  # only the relative weighting needs it
        measures = []  # (weight, error per image [B] of pixels a against the target b, floor of the identity's)
        if squared_weight:
            measures.append((squared_weight, lambda a, b: (a - b).square().mean(dim=(1, 2, 3)), PIXEL_RELATIVE_FLOOR))
        if absolute_weight:
            measures.append((absolute_weight, lambda a, b: (a - b).abs().mean(dim=(1, 2, 3)),
                             PIXEL_ABSOLUTE_RELATIVE_FLOOR))
        if ssim_weight:
            measures.append((ssim_weight, lambda a, b: 1 - structural_similarity(a, b), SSIM_RELATIVE_FLOOR))
        terms = [(weight, error(implied_pixels, target_pixels),
                  error(source_pixels, target_pixels) if relative else None, floor)
                 for weight, error, floor in measures]
    loss = 0.0
    for weight, model_error, no_edit_error, floor in terms:
        if relative:
            model_error = model_error / no_edit_error.clamp_min(floor)
        loss = loss + weight * model_error.mean()
    return loss


def objective_settings(options: Mapping[str, Any]) -> dict[str, Any]:
    """``training.objective_options`` of a demo objective with its defaults filled in, each checked (one-line
    :class:`~step1x_edit.train.config.TrainingConfigError` naming the option otherwise)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TrainingConfigError(f"training.objective_options: unknown option(s) {unknown}; valid: {sorted(OPTIONS)}")
    settings = {**OPTIONS, **options}
    if settings["space"] not in SPACES:
        raise TrainingConfigError(f"training.objective_options.space must be one of {', '.join(map(repr, SPACES))}, "
                                  f"got {settings['space']!r}")
    for name in ("squared", "absolute", "ssim"):
        settings[name] = number(f"training.objective_options.{name}", settings[name], 0, MAX_WEIGHT)
    if settings["space"] == "latent" and (settings["absolute"] or settings["ssim"]):
        raise TrainingConfigError("training.objective_options: the absolute and ssim terms need space = 'pixel'")
    if not settings["squared"] + settings["absolute"] + settings["ssim"]:
        raise TrainingConfigError("training.objective_options: the loss weights (squared, absolute, ssim) are all "
                                  "zero")
    return settings


def _objective(weighting: str) -> Callable[[Mapping[str, Any]], Objective]:
    def build(options: Mapping[str, Any]) -> Objective:
        settings = objective_settings(options)
        pixel = settings["space"] == "pixel"

        def loss(transformer: torch.nn.Module, batch: FlowBatch) -> torch.Tensor:
            return clean_image_loss(transformer, batch.target, batch.reference, batch.embeds, batch.mask, batch.t,
                                    batch.noise, batch.version, batch.start_times, batch.source, weighting,
                                    batch.decode if pixel else None, settings["squared"], settings["absolute"],
                                    settings["ssim"])

        return loss

    return build


DEMO_OBJECTIVES = {weighting: _objective(weighting) for weighting in WEIGHTINGS}
"""The demo's entries of the trainer's objectives registry, by ``training.objective`` name."""
