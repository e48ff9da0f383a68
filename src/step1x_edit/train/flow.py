"""The rectified-flow training objective of Step1X-Edit, as pure tensor functions.

Rectified flow: ``x_t = (1 - t) * x0 + t * noise`` and the transformer predicts the velocity ``noise - x0``
(the convention of :mod:`step1x_edit.sampling`, so training and inference agree). The transformer sees
``[noisy ; reference]`` tokens with the version's position ids (:func:`step1x_edit.sampling.position_ids`);
the reference tokens are the clean source latents and the loss is the mean squared error on the noisy
(target) tokens only.

Flow times ``t`` (:func:`sample_flow_times`):

* ``"shift"`` — the official fine-tuning recipe: ``t = sigmoid(N(0, 1))`` then ``t <- s t / (1 + (s - 1) t)``
  with ``s = 3.1582``;
* ``"logit_normal"`` — ``t = sigmoid(N(mean, std))`` then the resolution-dependent shift of the inference
  schedule (:func:`step1x_edit.sampling.get_schedule`): ``t <- e^mu / (e^mu + 1/t - 1)`` with ``mu`` linear in the
  number of noisy tokens, so the times trained on are the times sampled at that resolution;
* ``"uniform"`` — ``t ~ U(0, 1)``.

``pure_noise_rate`` puts that share of the samples at ``t = 1`` exactly: their input holds nothing of the target,
so the edit has to come from the instruction and the source alone. The schemes above rarely draw a time near 1
(the official shift: about 4% above 0.95), and at any ``t < 1`` the noisy input already shows where the target
differs from the source; a small model trained from scratch then learns to denoise that signal instead of reading
the instruction, and from pure noise it has nothing to go on.

Image-to-image paths (:func:`source_start_times`): the pipeline's ``strength`` starts sampling at ``t0 < 1`` from
``t0 * noise + (1 - t0) * source`` instead of pure noise. A model trained only on ``x_t = (1 - t) x0 + t noise``
never sees such states: in the edited region they show the *source*, so it keeps it. With ``start_times`` a
sample's path instead runs straight from that start to the target,
``x_t = t noise + (t / t0)(1 - t0) source + (1 - t / t0) x0`` for ``t <= t0``, whose velocity
``(x_t - x0) / t = noise + ((1 - t0) / t0)(source - x0) - x0`` still points at the target (the same ``x0``
parametrisation as the plain flow, which is the case ``t0 = 1``). The Euler sampler started at ``t0`` then lands
on the target when the prediction is exact.

Condition dropout (:func:`drop_conditions`) replaces, per sample, the instruction by the empty instruction
(the MLLM condition of the same image with "" — the CFG negative used at inference), the reference latents by
zeros, or both, so that classifier-free guidance has an unconditional model to extrapolate from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import sampling

TIMESTEP_SAMPLING = ("shift", "logit_normal", "uniform")
OFFICIAL_SHIFT = 3.1582


@dataclass(frozen=True)
class FlowTimeSampling:
    """How flow times are drawn (see the module docstring). ``base_shift`` ... ``max_seq_len`` are the inference
    schedule's shift parameters (the pipeline scheduler's config) used by ``"logit_normal"``."""

    scheme: str = "shift"
    shift: float = OFFICIAL_SHIFT
    logit_mean: float = 0.0
    logit_std: float = 1.0
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_seq_len: int = 256
    max_seq_len: int = 4096
    pure_noise_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.scheme not in TIMESTEP_SAMPLING:
            raise ValueError(f"timestep sampling must be one of {TIMESTEP_SAMPLING}, got {self.scheme!r}")
        if not 0 <= self.pure_noise_rate <= 1:
            raise ValueError(f"pure_noise_rate must be in [0, 1], got {self.pure_noise_rate}")
        if self.shift <= 0 or self.logit_std <= 0:
            raise ValueError("shift and logit_std must be positive")


def schedule_mu(image_seq_len: int, sampling_config: FlowTimeSampling) -> float:
    """The inference schedule's ``mu`` for ``image_seq_len`` noisy tokens (linear, extrapolated)."""
    c = sampling_config
    slope = (c.max_shift - c.base_shift) / (c.max_seq_len - c.base_seq_len)
    return slope * image_seq_len + (c.base_shift - slope * c.base_seq_len)


def sample_flow_times(
    batch_size: int, image_seq_len: int, sampling_config: FlowTimeSampling, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Flow times ``t`` [batch_size] (float32, CPU) drawn with ``sampling_config``: in (0, 1), and exactly 1 for
    the ``pure_noise_rate`` share of the samples."""
    c = sampling_config
    if c.scheme == "uniform":
        t = torch.rand(batch_size, generator=generator)
    elif c.scheme == "shift":
        t = torch.sigmoid(torch.randn(batch_size, generator=generator))
        t = c.shift * t / (1 + (c.shift - 1) * t)
    else:
        t = torch.sigmoid(c.logit_mean + c.logit_std * torch.randn(batch_size, generator=generator))
        shift = math.exp(schedule_mu(image_seq_len, c))
        t = shift / (shift + (1 / t - 1))
    if c.pure_noise_rate > 0:  # no extra draw otherwise: runs without it keep their random stream
        t = torch.where(torch.rand(batch_size, generator=generator) < c.pure_noise_rate, torch.ones(()), t)
    return t


def source_start_times(
    batch_size: int, rate: float, low: float, high: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-sample path starts ``t0`` [batch_size] (float32, CPU): with probability ``rate`` uniform in
    ``[low, high]`` (an image-to-image path from the noised source), else 1 (the plain path from pure noise)."""
    if not 0 <= rate <= 1 or not 0 < low <= high <= 1:
        raise ValueError(f"need 0 <= rate <= 1 and 0 < low <= high <= 1, got rate {rate}, range [{low}, {high}]")
    use = torch.rand(batch_size, generator=generator) < rate
    t0 = low + (high - low) * torch.rand(batch_size, generator=generator)
    return torch.where(use, t0, torch.ones(batch_size))


def dropout_draws(batch: int, text_rate: float, image_rate: float, both_rate: float,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Which samples of a batch lose their instruction and which their reference image: with probability
    ``text_rate`` the instruction, ``image_rate`` the image, ``both_rate`` both (mutually exclusive draws).
    Returns two bool tensors [batch]."""
    if min(text_rate, image_rate, both_rate) < 0 or text_rate + image_rate + both_rate > 1:
        raise ValueError("dropout rates must be non-negative and sum to at most 1")
    draw = torch.rand(batch, generator=generator)
    drop_text = draw < text_rate + both_rate
    drop_image = (draw >= text_rate) & (draw < text_rate + both_rate + image_rate)
    return drop_text, drop_image


def drop_reference(reference: torch.Tensor, drop_image: torch.Tensor) -> torch.Tensor:
    """``reference`` [B, ...] with the samples where ``drop_image`` [B] is true set to zeros."""
    keep_image = (~drop_image).to(reference.device).view(-1, *([1] * (reference.ndim - 1)))
    return reference * keep_image.to(reference.dtype)


def drop_conditions(
    embeds: torch.Tensor,
    mask: torch.Tensor,
    uncond_embeds: torch.Tensor,
    uncond_mask: torch.Tensor,
    reference: torch.Tensor,
    text_rate: float,
    image_rate: float,
    both_rate: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample condition dropout (:func:`dropout_draws`): a dropped instruction is replaced by the empty
    instruction's condition, a dropped reference by zeros. Shapes: embeds/uncond [B, L, C], masks [B, L],
    reference [B, ...]."""
    drop_text, drop_image = dropout_draws(embeds.shape[0], text_rate, image_rate, both_rate, generator)
    keep_text = ~drop_text.to(embeds.device)
    embeds = torch.where(keep_text[:, None, None], embeds, uncond_embeds.to(embeds.dtype))
    mask = torch.where(keep_text[:, None], mask, uncond_mask)
    return embeds, mask, drop_reference(reference, drop_image)


def flow_path(
    target_tokens: torch.Tensor,
    noise_tokens: torch.Tensor,
    t: torch.Tensor,
    start_times: torch.Tensor | None = None,
    source_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The noisy tokens ``x_t`` and the true velocity [B, N, D] of packed ``target_tokens`` and ``noise_tokens`` at
    flow times ``t`` [B]: the plain path ``(1 - t) x0 + t noise``, or with ``start_times`` ``t0`` [B] the path from
    the noised ``source_tokens`` (module docstring; ``t`` at most ``t0``)."""
    if start_times is None:
        noisy = (1 - t[:, None, None]) * target_tokens + t[:, None, None] * noise_tokens
        return noisy, noise_tokens - target_tokens
    t0 = start_times.to(device=target_tokens.device, dtype=target_tokens.dtype)[:, None, None]
    along = t[:, None, None] / t0  # fraction of the path from the target (0) to the start (1)
    noisy = t[:, None, None] * noise_tokens + along * (1 - t0) * source_tokens + (1 - along) * target_tokens
    return noisy, noise_tokens + (1 - t0) / t0 * (source_tokens - target_tokens) - target_tokens


def predict_velocity(
    transformer: torch.nn.Module,
    noisy: torch.Tensor,
    reference: torch.Tensor,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    t: torch.Tensor,
    version: str,
    latent_size: tuple[int, int],
) -> torch.Tensor:
    """The transformer's velocity [B, N, D] for the ``noisy`` tokens, with the clean ``reference`` tokens [B, N, D]
    after them and the version's position ids for a latent of ``latent_size`` (height, width)."""
    img_ids, txt_ids = sampling.position_ids(*latent_size, embeds.shape[1], version)
    return transformer(
        hidden_states=torch.cat([noisy, reference], dim=1),  # [B, 2N, D]
        timestep=t,
        encoder_hidden_states=embeds,
        encoder_attention_mask=mask,
        img_ids=img_ids.to(noisy.device),
        txt_ids=txt_ids.to(noisy.device),
    )[:, : noisy.shape[1]]


def check_latent_shapes(target_latents: torch.Tensor, reference_latents: torch.Tensor, noise: torch.Tensor) -> None:
    """Target, reference and noise latents [B, C, h, w] must share one shape."""
    if target_latents.shape != reference_latents.shape or noise.shape != target_latents.shape:
        raise ValueError(
            f"target {tuple(target_latents.shape)}, reference {tuple(reference_latents.shape)} and noise "
            f"{tuple(noise.shape)} latents must share one shape"
        )


def flow_matching_loss(
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
) -> torch.Tensor:
    """The official objective: the mean squared error between the predicted and the true velocity ``noise - x0`` on
    the noisy tokens.

    ``target_latents``/``reference_latents``/``noise``: [B, C, h, w] normalised latents (``noise`` like the target);
    ``embeds``/``mask``: the MLLM condition [B, L, C'] / [B, L]; ``t``: flow times [B]. ``version`` selects the
    reference position ids (v1.0: same as the noisy tokens; v1.1: offset). ``start_times`` [B] (``t0``, default
    all 1) makes a sample's path start from its noised ``source_latents`` (default ``reference_latents``; pass the
    source itself when condition dropout zeroed the reference) at ``t0`` (module docstring); ``t`` must then be at
    most ``t0``.
    """
    check_latent_shapes(target_latents, reference_latents, noise)
    t = t.to(device=target_latents.device, dtype=target_latents.dtype)
    reference = sampling.pack_latents(reference_latents)  # [B, N, 4C]
    source = reference if source_latents is None else sampling.pack_latents(source_latents)  # [B, N, 4C]
    noisy, velocity = flow_path(sampling.pack_latents(target_latents), sampling.pack_latents(noise), t, start_times,
                                source)
    prediction = predict_velocity(transformer, noisy, reference, embeds, mask, t, version,
                                  tuple(target_latents.shape[-2:]))
    return (prediction.float() - velocity.float()).square().mean()
