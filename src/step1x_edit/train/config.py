"""Training configuration: frozen dataclasses read from a TOML file with four tables.

```toml
[model]        # what is trained
path = "models/step1x-edit-diffusers"   # diffusers or official layout; omit for the built-in small model
mode = "lora"                            # "lora" or "full"

[data]         # what it is trained on
store = "data/synthetic"                 # a store written by `step1x-edit data ...`
resolution = 512                         # buckets of about resolution² pixels, sides multiples of 16

[training]     # how
output_dir = "runs/my-lora"
max_steps = 1000

[validation]   # what is checked on the way
every = 250
```

Every field has a default (see the dataclasses); unknown tables or fields are errors, so a typo cannot be
silently ignored. :func:`load_config` reads a file, :func:`config_from_dict` a dict, and ``overrides``
(``{"training.max_steps": 10}``) let the command line change single fields.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Step1XEditError
from .flow import LOSS_SPACES, LOSS_WEIGHTINGS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class TrainingConfigError(Step1XEditError, ValueError):
    """A training configuration is invalid (unknown field, wrong type, impossible value)."""


@dataclass(frozen=True)
class ModelConfig:
    """The model to start from and what of it is trained.

    ``path``: a pipeline directory (diffusers or official layout); ``None`` = the built-in small model.
    ``mode``: ``"lora"`` (peft adapters on the DiT blocks; base frozen) or ``"full"`` (every DiT weight).
    ``train_connector``: also train the connector in LoRA mode (full mode always trains it).
    ``train_text_encoder``: full mode only: also train the MLLM's language model (not its vision tower) through the
    DiT's loss. The instruction conditions are then computed at every step, with gradients (the cache keeps only
    the latents); meant for small encoders such as the demo model's, not the 7B one.
    ``lora_targets``: diffusers module names; empty = the Linear layers the official LoRA targets.
    """

    path: str | None = None
    mode: str = "lora"
    version: str | None = None
    train_connector: bool = False
    train_text_encoder: bool = False
    lora_rank: int = 64
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in ("lora", "full"):
            raise TrainingConfigError(f"model.mode must be 'lora' or 'full', got {self.mode!r}")
        if self.lora_rank < 1 or self.lora_alpha <= 0:
            raise TrainingConfigError("model.lora_rank and model.lora_alpha must be positive")
        if self.train_text_encoder and self.mode != "full":
            raise TrainingConfigError("model.train_text_encoder needs model.mode = 'full'")


@dataclass(frozen=True)
class DataConfig:
    """Training data: a store (``store``) or an official metadata JSON (``metadata``, paths relative to
    ``image_dir`` or to the JSON's folder). ``language``: which instruction is used ("en", "zh" or "both": one of
    the two drawn per step). ``cache_dir``: where VAE latents and MLLM conditions are cached (default:
    ``<output_dir>/cache``; ``cache = false`` computes them at every step instead). ``task_repeats`` maps a task
    (category) to how many times each of its samples appears per epoch (default 1), to train more on some
    categories without generating more data."""

    store: str | None = None
    metadata: str | None = None
    image_dir: str | None = None
    split: str = "train"
    validation_fraction: float = 0.05
    tasks: tuple[str, ...] = ()
    language: str = "en"
    resolution: int = 512
    cache: bool = True
    cache_dir: str | None = None
    task_repeats: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.store is None) == (self.metadata is None):
            raise TrainingConfigError("set exactly one of data.store and data.metadata")
        if self.language not in ("en", "zh", "both"):
            raise TrainingConfigError(f"data.language must be 'en', 'zh' or 'both', got {self.language!r}")
        if self.resolution < 16:
            raise TrainingConfigError(f"data.resolution must be at least 16, got {self.resolution}")
        if self.split not in ("train", "validation", "all"):
            raise TrainingConfigError(f"data.split must be 'train', 'validation' or 'all', got {self.split!r}")
        if not isinstance(self.task_repeats, dict) or not all(
                isinstance(count, int) and not isinstance(count, bool) and count >= 1
                for count in self.task_repeats.values()):
            raise TrainingConfigError(
                f"data.task_repeats must map task names to whole numbers of at least 1, got {self.task_repeats!r}")


@dataclass(frozen=True)
class OptimConfig:
    """Optimisation. ``timestep_sampling``: "shift" (official, ``shift``), "logit_normal" (with the inference
    schedule's resolution shift) or "uniform"; ``pure_noise_rate``: the share of samples trained at ``t = 1``
    exactly (pure noise: the edit must come from the instruction; see :mod:`step1x_edit.train.flow`). Dropout
    rates: instruction, reference image, both (for CFG).
    ``source_start_rate``: the fraction of samples trained on image-to-image paths that start at a flow time
    ``t0`` drawn uniformly from ``source_start_range`` from the noised source (the pipeline's ``strength`` start;
    see :mod:`step1x_edit.train.flow`), their times scaled into ``(0, t0]``; 0 (default) is the official objective.
    ``text_encoder_lr_scale`` multiplies the learning rate of a trained text encoder (``model.train_text_encoder``).
    ``qk_norm_lr_scale`` multiplies the learning rate of the attention query/key RMSNorm gains, which set how
    sharp attention can be (a small model trained from scratch needs them to grow to copy its reference tokens
    precisely). ``loss_weighting``: "none" (default, the official objective: mean squared velocity error) or "x0"
    (each sample's error times t², i.e. the error of the implied clean latents ``x_t - t * v``; it keeps the loss
    of a ``reference_delta`` model, whose velocity error is its delta error over t, bounded at small t) or
    "x0_relative" (that error divided by the sample's no-edit error, so small edits count as much as large ones).
    ``loss_space``: "latent" (default) or "pixel": with an x0 weighting, measure those errors on the frozen VAE's
    decoding instead (exact and cheap for the demo's linear patch autoencoder, a decoder pass per step for the
    FLUX VAE); pixels, not latent channels, are then what counts, which is what PSNR scores.
    ``ssim_loss_weight`` (pixel space) adds that multiple of the structural dissimilarity (1 - SSIM).
    ``absolute_loss_weight`` (pixel space) adds that multiple of the mean absolute error, whose minimiser leaves an
    object alone unless the model is more than even sure the instruction names it; ``squared_loss_weight`` (1)
    scales the squared error (0 leaves it out).
    ``ema_decay`` > 0 keeps an exponential moving average of the trained weights (used for validation and the
    saved model). ``until_step`` stops early (a checkpoint is written) without changing the schedule, like a
    preemption; a rerun resumes."""

    output_dir: str = "runs/step1x-edit"
    seed: int = 42
    max_steps: int = 1000
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    use_8bit_adam: bool = False
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    timestep_sampling: str = "shift"
    shift: float = 3.1582
    logit_mean: float = 0.0
    logit_std: float = 1.0
    pure_noise_rate: float = 0.0
    dropout_text: float = 0.05
    dropout_image: float = 0.0
    dropout_both: float = 0.0
    source_start_rate: float = 0.0
    source_start_range: tuple[float, float] = (0.3, 0.8)
    qk_norm_lr_scale: float = 1.0
    text_encoder_lr_scale: float = 1.0
    loss_weighting: str = "none"
    loss_space: str = "latent"
    ssim_loss_weight: float = 0.0
    squared_loss_weight: float = 1.0
    absolute_loss_weight: float = 0.0
    ema_decay: float = 0.0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 1
    report_to: tuple[str, ...] = ("csv",)
    num_threads: int = 0
    until_step: int | None = None

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise TrainingConfigError("max_steps, batch_size and gradient_accumulation_steps must be >= 1")
        if self.learning_rate <= 0:
            raise TrainingConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0 <= self.pure_noise_rate <= 1:
            raise TrainingConfigError(f"training.pure_noise_rate must be in [0, 1], got {self.pure_noise_rate}")
        if self.qk_norm_lr_scale <= 0:
            raise TrainingConfigError(f"qk_norm_lr_scale must be positive, got {self.qk_norm_lr_scale}")
        if self.text_encoder_lr_scale <= 0:
            raise TrainingConfigError(f"text_encoder_lr_scale must be positive, got {self.text_encoder_lr_scale}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise TrainingConfigError(
                f"training.loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}"
            )
        if self.loss_space not in LOSS_SPACES:
            raise TrainingConfigError(f"training.loss_space must be one of {LOSS_SPACES}, got {self.loss_space!r}")
        if self.loss_space == "pixel" and self.loss_weighting == "none":
            raise TrainingConfigError("training.loss_space 'pixel' needs loss_weighting 'x0' or 'x0_relative'")
        if self.ssim_loss_weight < 0 or (self.ssim_loss_weight and self.loss_space != "pixel"):
            raise TrainingConfigError("training.ssim_loss_weight must be non-negative and needs loss_space 'pixel'")
        if self.absolute_loss_weight < 0 or (self.absolute_loss_weight and self.loss_space != "pixel"):
            raise TrainingConfigError("training.absolute_loss_weight must be non-negative and needs loss_space 'pixel'")
        if self.squared_loss_weight < 0 or not self.squared_loss_weight + self.absolute_loss_weight + self.ssim_loss_weight:
            raise TrainingConfigError("training.squared_loss_weight must be non-negative, and the loss weights "
                                      "(squared, absolute, ssim) not all zero")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise TrainingConfigError("training.mixed_precision must be 'auto', 'no', 'bf16' or 'fp16'")
        if not 0 <= self.ema_decay < 1:
            raise TrainingConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if min(self.dropout_text, self.dropout_image, self.dropout_both) < 0 or (
            self.dropout_text + self.dropout_image + self.dropout_both > 1
        ):
            raise TrainingConfigError("dropout rates must be non-negative and sum to at most 1")
        low_high = tuple(self.source_start_range)
        if not 0 <= self.source_start_rate <= 1 or len(low_high) != 2 or not 0 < low_high[0] <= low_high[1] <= 1:
            raise TrainingConfigError(
                "training.source_start_rate must be in [0, 1] and source_start_range a pair 0 < low <= high <= 1, got "
                f"{self.source_start_rate} and {self.source_start_range!r}"
            )
        unknown = set(self.report_to) - {"csv", "tensorboard"}
        if unknown:
            raise TrainingConfigError(f"training.report_to accepts 'csv' and 'tensorboard', got {sorted(unknown)}")
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise TrainingConfigError("checkpoint_every and keep_checkpoints must be >= 1")


@dataclass(frozen=True)
class ValidationConfig:
    """Periodic validation: every ``every`` steps (0 = only at the end; -1 = never) the model edits the first
    ``num_samples`` held-out samples; images and PSNR/SSIM go to ``<output_dir>/validation/step-N/``."""

    every: int = 0
    num_samples: int = 8
    steps: int = 28
    guidance_scale: float = 6.0
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run (see the module docstring for the TOML layout)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(store="data"))
    training: OptimConfig = field(default_factory=OptimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "training": OptimConfig, "validation": ValidationConfig}


def _coerce(cls, name: str, values: dict[str, Any]):
    fields = {item.name: item for item in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise TrainingConfigError(f"unknown field(s) in [{name}]: {unknown}; valid: {sorted(fields)}")
    coerced = {}
    for key, value in values.items():
        default = fields[key].default
        if isinstance(value, list):
            value = tuple(value)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        coerced[key] = value
    try:
        return cls(**coerced)
    except TypeError as error:
        raise TrainingConfigError(f"[{name}]: {error}") from error


def config_from_dict(values: dict[str, Any], overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from nested tables; ``overrides`` maps ``"table.field"`` to a value."""
    tables = {name: dict(values.get(name, {})) for name in _SECTIONS}
    unknown = sorted(set(values) - set(_SECTIONS))
    if unknown:
        raise TrainingConfigError(f"unknown table(s) {unknown}; valid: {sorted(_SECTIONS)}")
    for dotted, value in (overrides or {}).items():
        table, _, key = dotted.partition(".")
        if table not in _SECTIONS or not key:
            raise TrainingConfigError(f"override {dotted!r} must be TABLE.FIELD with TABLE in {sorted(_SECTIONS)}")
        tables[table][key] = value
    return TrainConfig(**{name: _coerce(cls, name, tables[name]) for name, cls in _SECTIONS.items()})


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a TOML training config (relative paths in it are relative to the working directory)."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise TrainingConfigError(f"cannot read training config {path}: {error}") from error
    return config_from_dict(values, overrides)
