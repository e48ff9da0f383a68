"""Training a small FLUX-layout VAE (a diffusers ``AutoencoderKL``) on the synthetic editing world.

This is how the demo model's VAE is made. The recipe:

- **Model**: the FLUX ``AutoencoderKL`` layout (:func:`~step1x_edit.models.vae.diffusers_vae_config`: no quant
  convs, attention in the mid block), ``len(block_out_channels)`` levels (3 levels = 4x downsampling, 4 = 8x),
  ``latent_channels`` channels per latent pixel, every width a multiple of 32. ``norm_num_groups`` below the
  FLUX value of 32 matters for narrow models: GroupNorm normalises each group over the whole image, so with one
  channel a group it erases that channel's mean, and with it the absolute colour of flat regions (most of this
  world); training then stalls below 20 dB. The demo's values are the ``[vae]`` table of ``recipes/demo.toml``
  (also the defaults here).
- **Data**: fresh images every step, nothing stored on disk. Training image ``k`` is the source (even ``k``) or
  the target (odd ``k``) of ``generate_sample(tasks[(k // 2) % len(tasks)], seed=k // 2, resolution)``; each
  is cut to a random ``crop`` x ``crop`` window (convolutions are translation equivariant, so small crops
  teach the same filters for a fraction of the cost). Held-out images use seeds from :data:`HELDOUT_SEED`
  on, which training never reaches.
- **Loss**: L1 + MSE on pixels in [-1, 1], plus ``edge_weight`` x L1 of the horizontal and vertical pixel
  differences (sharp edges and text), plus ``kl_weight`` x KL(posterior || N(0, 1)) summed over the latent and
  divided by the number of pixel values (the LDM ratio between the two terms). The decoder sees a sample of the
  posterior, whose log-variance starts at -12 (:data:`INITIAL_LOGVAR`); the KL weight is tiny, so the posterior
  stays almost deterministic and the mode (what :func:`~step1x_edit.models.vae.encode_latents` uses) is what
  the decoder learns to invert.
- **Optimiser**: AdamW (betas 0.9 / 0.99, no weight decay), linear warm-up then cosine decay to zero
  (diffusers' ``get_cosine_schedule_with_warmup``), gradient norm clipped to 1.
- **Calibration**: after training, ``shift_factor`` = mean and ``scaling_factor`` = 1 / std of the posterior
  mode over held-out images (:func:`calibrate_latent_scale`), so normalised latents have zero mean, unit std.

:func:`train_vae` is deterministic given the config: every random draw after initialisation comes from one
``torch.Generator`` whose state is checkpointed with the model, optimiser, scheduler and step every
``checkpoint_every`` steps (``<output_dir>/checkpoints/step-N``, safetensors and JSON written atomically, see
:mod:`~step1x_edit.train.checkpoint`; the newest two are kept and a damaged one is skipped for the one before), so
an interrupted run that is resumed ends with the same weights as one that was never interrupted. The result is saved with
``save_pretrained`` to ``<output_dir>/vae`` (plus a ``fp16`` variant when ``save_fp16`` is set).

``step1x-edit train-vae`` (:mod:`step1x_edit.demo.cli`) is the command-line client.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.optimization import get_cosine_schedule_with_warmup
from tqdm.auto import tqdm

from ..data.synthetic import TASKS, generate_sample
from ..errors import CheckpointError, Step1XEditError
from ..models.vae import diffusers_vae_config, images_to_pixels
from ..train import checkpoint
from ..train.config import MAX_STEPS, check_fields, check_text_list, read_toml
from ..validate import integer, integers

HELDOUT_SEED = 1_000_000_000
"""First seed of the held-out images; training sample seeds stay below it."""

CHECKPOINTS = "checkpoints"
LEGACY_CHECKPOINT = "checkpoint.pt"
"""The pickle checkpoint of earlier versions: never loaded (unpickling can run code)."""


class VAEConfigError(Step1XEditError, ValueError):
    """A VAE training configuration is invalid, or does not match the checkpoint it should resume."""


@dataclass(frozen=True)
class VAETrainingConfig:
    """Everything that determines a VAE training run (the defaults are the demo recipe's ``[vae]`` table).

    ``resolution``: side of the generated images (and of the held-out images); ``crop``: side of the training
    windows cut from them. ``eval_every`` / ``eval_images``: how often and on how many held-out images the
    reconstruction PSNR is measured during training; ``calibration_images``: how many held-out images set the
    latent scale and shift at the end. ``num_threads``: torch CPU threads used while training.
    """

    block_out_channels: tuple[int, ...] = (32, 64, 96)
    layers_per_block: int = 1
    norm_num_groups: int = 4
    latent_channels: int = 16
    resolution: int = 128
    crop: int = 64
    batch_size: int = 8
    steps: int = 1500
    lr: float = 2e-3
    warmup_steps: int = 50
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    edge_weight: float = 0.5
    kl_weight: float = 1e-6
    seed: int = 0
    tasks: tuple[str, ...] = tuple(TASKS)
    checkpoint_every: int = 100
    eval_every: int = 250
    eval_images: int = 32
    calibration_images: int = 200
    num_threads: int = 2
    save_fp16: bool = True

    def __post_init__(self) -> None:
        widths = integers("block_out_channels", self.block_out_channels, 8, 32, 4096)
        if any(width % 32 for width in widths):
            raise VAEConfigError(f"block_out_channels must be positive multiples of 32, got {widths}")
        object.__setattr__(self, "block_out_channels", widths)  # TOML gives lists; tuples keep it hashable
        check_text_list(self, "", "tasks")
        check_fields(self, "", integers={
            "layers_per_block": (1, 16), "norm_num_groups": (1, 4096), "latent_channels": (1, 1024),
            "resolution": (16, 4096), "crop": (1, 4096), "batch_size": (1, 4096), "steps": (1, MAX_STEPS),
            "warmup_steps": (0, MAX_STEPS), "seed": (0, 2**32 - 1), "checkpoint_every": (1, MAX_STEPS),
            "eval_every": (1, MAX_STEPS), "eval_images": (1, 10_000), "calibration_images": (1, 100_000),
            "num_threads": (1, 4096),
        }, numbers={"lr": (0, 10, "open"), "l1_weight": (0, 1e6), "mse_weight": (0, 1e6), "edge_weight": (0, 1e6),
                    "kl_weight": (0, 1e6)}, flags=("save_fp16",))
        if any(width % self.norm_num_groups for width in widths):
            raise VAEConfigError(f"every width must be a multiple of norm_num_groups {self.norm_num_groups}")
        factor = self.downsampling
        if self.resolution % 16 or self.resolution % factor:
            raise VAEConfigError(f"resolution must be a multiple of 16 and of {factor}, got {self.resolution}")
        if self.crop > self.resolution or self.crop % factor:
            raise VAEConfigError(
                f"crop must be a multiple of {factor} (the downsampling) and at most resolution "
                f"{self.resolution}, got {self.crop}"
            )
        if self.l1_weight + self.mse_weight == 0:
            raise VAEConfigError("l1_weight and mse_weight cannot both be zero (nothing would be reconstructed)")
        unknown = sorted(set(self.tasks) - set(TASKS))
        if not self.tasks or unknown:
            raise VAEConfigError(f"tasks must be a non-empty subset of {', '.join(TASKS)}; unknown: {unknown}")
        if self.steps * self.batch_size // 2 >= HELDOUT_SEED:
            raise VAEConfigError("steps x batch_size is too large: training seeds would reach the held-out seeds")

    @property
    def downsampling(self) -> int:
        """Pixels per latent pixel along each side."""
        return 2 ** (len(self.block_out_channels) - 1)


def vae_config_from_dict(values: dict[str, Any]) -> VAETrainingConfig:
    """A :class:`VAETrainingConfig` from plain values (TOML / JSON); unknown keys are errors."""
    fields = {field.name for field in dataclasses.fields(VAETrainingConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise VAEConfigError(f"unknown VAE training field(s) {unknown}; valid: {sorted(fields)}")
    return VAETrainingConfig(**values)


def load_vae_config(path: str | os.PathLike, **overrides: Any) -> VAETrainingConfig:
    """Read a TOML file of :class:`VAETrainingConfig` fields (top-level keys); ``overrides`` replace fields."""
    return vae_config_from_dict({**read_toml(path, "VAE training config"), **overrides})


def build_vae(config: VAETrainingConfig) -> AutoencoderKL:
    """A randomly initialised FLUX-layout ``AutoencoderKL`` with the architecture of ``config`` (scale 1, shift 0).

    ``norm_num_groups`` below the FLUX value of 32 puts several channels in each GroupNorm group, which a narrow
    VAE needs: with one channel per group every norm erases that channel's mean, and with it the absolute colour."""
    ch = math.gcd(*config.block_out_channels)
    settings = diffusers_vae_config({
        "resolution": config.resolution,
        "in_channels": 3,
        "ch": ch,
        "out_ch": 3,
        "ch_mult": [width // ch for width in config.block_out_channels],
        "num_res_blocks": config.layers_per_block,
        "z_channels": config.latent_channels,
        "scale_factor": 1.0,
        "shift_factor": 0.0,
    })
    settings["norm_num_groups"] = config.norm_num_groups
    return AutoencoderKL(**settings)


INITIAL_LOGVAR = -12.0
"""Starting log-variance of the posterior (std 0.0025): the decoder sees almost the mode from the first step."""


def _start_almost_deterministic(vae: AutoencoderKL) -> None:
    """Set the bias of the encoder's log-variance outputs (the second half of ``conv_out``) to
    :data:`INITIAL_LOGVAR`. From the default 0 (std 1) the noise would drown the signal for hundreds of steps."""
    with torch.no_grad():
        vae.encoder.conv_out.bias[vae.config.latent_channels:] = INITIAL_LOGVAR


def heldout_images(count: int, resolution: int = 128, tasks: Sequence[str] = TASKS) -> torch.Tensor:
    """``count`` held-out images [count, 3, resolution, resolution] in [-1, 1]: sources of every task in turn,
    seeds from :data:`HELDOUT_SEED` on (disjoint from training)."""
    samples = [generate_sample(tasks[i % len(tasks)], HELDOUT_SEED + i, resolution=resolution) for i in range(count)]
    return images_to_pixels([sample.source for sample in samples])


def training_batch(config: VAETrainingConfig, step: int, generator: torch.Generator) -> torch.Tensor:
    """The batch of ``step`` (0-based): images ``step * batch_size`` onwards (see the module docstring), each cut
    to a random crop drawn from ``generator`` → [batch_size, 3, crop, crop] in [-1, 1]."""
    images = []
    for k in range(step * config.batch_size, (step + 1) * config.batch_size):
        sample = generate_sample(config.tasks[(k // 2) % len(config.tasks)], k // 2, resolution=config.resolution)
        images.append(sample.source if k % 2 == 0 else sample.target)
    pixels = images_to_pixels(images)  # [B, 3, resolution, resolution]
    span = config.resolution - config.crop + 1
    offsets = torch.randint(0, span, (config.batch_size, 2), generator=generator).tolist()
    return torch.stack([pixels[i, :, y:y + config.crop, x:x + config.crop] for i, (y, x) in enumerate(offsets)])


def _edge_l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the horizontal and vertical pixel differences of two [B, C, H, W] batches."""
    dx = (prediction.diff(dim=-1) - target.diff(dim=-1)).abs().mean()
    dy = (prediction.diff(dim=-2) - target.diff(dim=-2)).abs().mean()
    return dx + dy


def _psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of [B, 3, H, W] pixels in [-1, 1] (peak 1 on the [0, 1] scale) → [B]."""
    mse = ((prediction.clamp(-1, 1) - target) / 2).square().flatten(1).mean(dim=1)  # [B]
    return -10 * torch.log10(mse.clamp_min(1e-10))


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 16) -> float:
    """Mean PSNR (dB) of ``images`` [B, 3, H, W] in [-1, 1] and their reconstruction through the posterior mode,
    rounded to 8 bits as a saved image would be."""
    scores = []
    for start in range(0, len(images), batch_size):
        pixels = images[start:start + batch_size].to(device=vae.device, dtype=vae.dtype)
        decoded = vae.decode(vae.encode(pixels).latent_dist.mode()).sample.float()
        decoded = torch.round((decoded.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1  # 8-bit, back to [-1, 1]
        scores.append(_psnr(decoded, pixels.float()))
    return torch.cat(scores).mean().item()


@torch.no_grad()
def calibrate_latent_scale(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 16) -> tuple[float, float]:
    """Set ``vae.config.shift_factor`` to the mean and ``scaling_factor`` to 1 / std of the posterior mode of
    ``images`` [B, 3, H, W] in [-1, 1] (over every latent value), so normalised latents have zero mean and unit
    std. Returns ``(scaling_factor, shift_factor)``."""
    modes = []
    for start in range(0, len(images), batch_size):
        pixels = images[start:start + batch_size].to(device=vae.device, dtype=vae.dtype)
        modes.append(vae.encode(pixels).latent_dist.mode().float().flatten())
    values = torch.cat(modes).double()
    shift, std = values.mean().item(), values.std().item()
    if not std > 0:
        raise Step1XEditError("the VAE maps every image to the same latent; it cannot be calibrated")
    vae.register_to_config(scaling_factor=1.0 / std, shift_factor=shift)
    return 1.0 / std, shift


def _save_checkpoint(root: Path, state: dict[str, Any]) -> None:
    """Write ``state`` as the checkpoint ``root/step-N`` (keeping the newest two)."""
    temporary = checkpoint.begin(root, state["step"])
    checkpoint.write_state(temporary, "state", state)
    checkpoint.commit(temporary, keep=2, step=state["step"])


def _read_checkpoint(folder: Path) -> dict[str, Any]:
    checkpoint.verify(folder, checkpoint.state_files("state"))
    state = checkpoint.read_state(folder, "state")
    if not isinstance(state, dict) or not {"config", "step", "model", "optimizer", "scheduler", "generator"} <= set(
            state):
        raise CheckpointError(f"{folder}: not a VAE training state")
    return state


def train_vae(
    config: VAETrainingConfig, output_dir: str | os.PathLike, resume: bool = True, progress: bool = True
) -> AutoencoderKL:
    """Train a VAE with ``config`` (recipe in the module docstring) into ``output_dir`` and return it, calibrated.

    With ``resume`` (default) a checkpoint in ``output_dir`` from the same config is continued; without it the
    run starts over. The final model is saved to ``<output_dir>/vae``.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = output_dir / CHECKPOINTS
    if not resume:
        shutil.rmtree(checkpoints, ignore_errors=True)
    elif (output_dir / LEGACY_CHECKPOINT).exists() and not checkpoint.checkpoint_folders(checkpoints):
        raise CheckpointError(
            f"{output_dir / LEGACY_CHECKPOINT} is a pickle checkpoint of an earlier version, which is never loaded "
            "(unpickling can run code); pass resume=False (--no-resume) to start over, or delete it")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        torch.manual_seed(config.seed)
        vae = build_vae(config)
        _start_almost_deterministic(vae)
        vae.train()
        optimizer = torch.optim.AdamW(vae.parameters(), lr=config.lr, betas=(0.9, 0.99), weight_decay=0.0)
        scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
        generator = torch.Generator().manual_seed(config.seed)
        step = 0
        found = checkpoint.load_newest(checkpoints, _read_checkpoint) if resume else None
        if found is not None:
            folder, state = found
            if state["config"] != dataclasses.asdict(config):
                raise VAEConfigError(
                    f"{folder} was written with a different config; pass resume=False (--no-resume) to "
                    f"start over, or use the same config. Checkpoint config: {state['config']}"
                )
            try:
                vae.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                generator.set_state(state["generator"])
                step = integer("the checkpoint's step", state["step"], 0, config.steps)
            except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as error:
                raise CheckpointError(f"{folder} does not fit this VAE ({' '.join(str(error).split())}); delete it "
                                      "to resume from an earlier checkpoint") from None

        eval_pixels = heldout_images(config.eval_images, config.resolution, config.tasks)
        pixel_values = 3 * config.crop * config.crop
        bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="train-vae", dynamic_ncols=True)
        while step < config.steps:
            pixels = training_batch(config, step, generator)
            posterior = vae.encode(pixels).latent_dist
            decoded = vae.decode(posterior.sample(generator=generator)).sample
            l1 = (decoded - pixels).abs().mean()
            mse = (decoded - pixels).square().mean()
            edge = _edge_l1(decoded, pixels) if config.edge_weight else torch.zeros(())
            kl = posterior.kl().mean() / pixel_values
            loss = config.l1_weight * l1 + config.mse_weight * mse + config.edge_weight * edge + config.kl_weight * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{_psnr(decoded.detach(), pixels).mean().item():.2f}")
            if step % config.checkpoint_every == 0 or step == config.steps:
                _save_checkpoint(checkpoints, {
                    "config": dataclasses.asdict(config), "step": step, "model": vae.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                })
            if step % config.eval_every == 0 or step == config.steps:
                vae.eval()
                psnr = reconstruction_psnr(vae, eval_pixels)
                vae.train()
                tqdm.write(f"step {step}/{config.steps}: held-out PSNR {psnr:.2f} dB ({config.eval_images} images)")
        bar.close()

        vae.eval()
        scale, shift = calibrate_latent_scale(
            vae, heldout_images(config.calibration_images, config.resolution, config.tasks)
        )
        tqdm.write(f"latent calibration: scaling_factor {scale:.4f}, shift_factor {shift:.4f}")
        vae.save_pretrained(output_dir / "vae", safe_serialization=True)
        if config.save_fp16:
            half = build_vae(config)
            half.register_to_config(scaling_factor=scale, shift_factor=shift)
            half.load_state_dict(vae.state_dict())
            half.to(torch.float16).save_pretrained(output_dir / "vae", safe_serialization=True, variant="fp16")
        return vae
    finally:
        torch.set_num_threads(previous_threads)
