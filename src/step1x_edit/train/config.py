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
silently ignored, and every value is checked for its type and range (:mod:`step1x_edit.validate`: an integer
field takes no ``4.5`` and no ``true``, a number no NaN). :func:`load_config` reads a file, :func:`config_from_dict`
a dict, and ``overrides`` (``{"training.max_steps": 10}``) let the command line change single fields.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffusers.optimization import SchedulerType

from ..errors import InvalidValueError, Step1XEditError
from ..validate import integer, number, text
from .flow import TIMESTEP_SAMPLING

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class TrainingConfigError(Step1XEditError, ValueError):
    """A training configuration is invalid (unknown field, wrong type, impossible value)."""


MAX_STEPS = 10**9
"""The most optimisation steps (and the bound of every field counted in steps)."""
MAX_TRAIN_SEED = 2**32 - 1
"""The largest training seed (accelerate's ``set_seed`` seeds NumPy too, which takes 32-bit seeds)."""
MAX_CONFIG_BYTES = 1 << 20
"""The largest TOML file read as a config or recipe."""
SCHEDULERS = tuple(kind.value for kind in SchedulerType)


def read_toml(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The tables of the TOML file ``path``; a one-line :class:`TrainingConfigError` naming ``what`` and the file
    when it cannot be read, is not UTF-8 text or not valid TOML."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise TrainingConfigError(f"cannot read {what} {path}: {error.strerror or error}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise TrainingConfigError(f"{what} {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB; is it a TOML file?")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise TrainingConfigError(f"{what} {path} is not UTF-8 text (byte 0x{raw[error.start]:02x} at offset "
                                  f"{error.start}); is it a TOML file?") from None
    except tomllib.TOMLDecodeError as error:
        raise TrainingConfigError(f"{what} {path} is not valid TOML: {error}") from None


def _field(table: str, name: str) -> str:
    return f"{table}.{name}" if table else name


def check_fields(config, table: str, integers: dict[str, tuple] | None = None,
                 numbers: dict[str, tuple] | None = None, flags: Iterable[str] = (),
                 choices: dict[str, tuple[str, ...]] | None = None) -> None:
    """Check the fields of the frozen dataclass ``config`` (errors name them ``table.field``, or ``field`` when
    ``table`` is empty): ``integers`` maps a field to ``(low, high)``; ``numbers`` to ``(low, high)`` or
    ``(low, high, "open")`` (strictly above ``low``), and stores it as a float; ``flags`` must be booleans;
    ``choices`` maps a field to its allowed strings."""
    for name, (low, high) in (integers or {}).items():
        integer(_field(table, name), getattr(config, name), low, high)
    for name, bounds in (numbers or {}).items():
        low, high = bounds[:2]
        value = number(_field(table, name), getattr(config, name), low, high, low_open=bounds[2:] == ("open",))
        object.__setattr__(config, name, value)
    for name in flags:
        if not isinstance(getattr(config, name), bool):
            raise InvalidValueError(f"{_field(table, name)} must be true or false, got {getattr(config, name)!r}")
    for name, allowed in (choices or {}).items():
        value = getattr(config, name)
        if not isinstance(value, str) or value not in allowed:
            raise InvalidValueError(f"{_field(table, name)} must be one of {', '.join(map(repr, allowed))}, got "
                                    f"{value!r}")


def check_texts(config, table: str, *names: str, optional: bool = False) -> None:
    """The fields ``names`` of ``config`` are UTF-8 strings that are not blank (or ``None`` when ``optional``)."""
    for name in names:
        value = getattr(config, name)
        if not (optional and value is None):
            text(f"{table}.{name}", value, 4096, allow_empty=False)


def check_text_list(config, table: str, name: str) -> None:
    """The field ``name`` is a list of UTF-8 strings; stored as a tuple."""
    values = getattr(config, name)
    if not isinstance(values, (list, tuple)):
        raise InvalidValueError(f"{_field(table, name)} must be a list of strings, got {values!r}")
    object.__setattr__(config, name, tuple(text(f"{_field(table, name)}[{index}]", value, 4096, allow_empty=False)
                                           for index, value in enumerate(values)))


def check_below_one(config, table: str, name: str) -> None:
    """The field ``name`` is a number in [0, 1)."""
    value = number(f"{table}.{name}", getattr(config, name), 0, 1)
    if value == 1:
        raise InvalidValueError(f"{table}.{name} must be a number of at least 0 and below 1, got {value!r}")
    object.__setattr__(config, name, value)


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
        check_texts(self, "model", "path", "version", optional=True)
        check_fields(self, "model", integers={"lora_rank": (1, 4096)},
                     numbers={"lora_alpha": (0, 65536, "open"), "lora_dropout": (0, 1)},
                     flags=("train_connector", "train_text_encoder"), choices={"mode": ("lora", "full")})
        check_text_list(self, "model", "lora_targets")
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
        check_texts(self, "data", "store", "metadata", "image_dir", "cache_dir", optional=True)
        check_fields(self, "data", integers={"resolution": (16, 8192)}, numbers={"validation_fraction": (0, 1)},
                     flags=("cache",), choices={"language": ("en", "zh", "both"),
                                                "split": ("train", "validation", "all")})
        check_text_list(self, "data", "tasks")
        if not isinstance(self.task_repeats, dict):
            raise InvalidValueError(f"data.task_repeats must map task names to counts, got {self.task_repeats!r}")
        for task, count in self.task_repeats.items():
            text("a data.task_repeats key", task, 4096, allow_empty=False)
            integer(f"data.task_repeats.{task}", count, 1, 1000)


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
    precisely). ``objective`` names the loss (:mod:`step1x_edit.train.objectives`; ``"flow_matching"``, the official
    mean squared velocity error, unless the caller of the trainer registered others) and ``objective_options`` are
    its settings (a table; the official objective has none).
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
    objective: str = "flow_matching"
    objective_options: dict[str, Any] = field(default_factory=dict)
    ema_decay: float = 0.0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 1
    report_to: tuple[str, ...] = ("csv",)
    num_threads: int = 0
    until_step: int | None = None

    def __post_init__(self) -> None:
        check_texts(self, "training", "output_dir", "objective")
        rate = (0, 1)
        check_fields(
            self, "training",
            integers={"seed": (0, MAX_TRAIN_SEED), "max_steps": (1, MAX_STEPS), "batch_size": (1, 4096),
                      "gradient_accumulation_steps": (1, 4096), "warmup_steps": (0, MAX_STEPS),
                      "checkpoint_every": (1, MAX_STEPS), "keep_checkpoints": (1, 1000), "log_every": (1, MAX_STEPS),
                      "num_threads": (0, 4096)},
            numbers={"learning_rate": (0, 10, "open"), "weight_decay": (0, 10), "adam_epsilon": (0, 1, "open"),
                     "max_grad_norm": (0, 1e6), "shift": (0, 1000, "open"), "logit_mean": (-10, 10),
                     "logit_std": (0, 10, "open"), "pure_noise_rate": rate, "dropout_text": rate,
                     "dropout_image": rate, "dropout_both": rate, "source_start_rate": rate,
                     "qk_norm_lr_scale": (0, 1e4, "open"), "text_encoder_lr_scale": (0, 1e4, "open")},
            flags=("use_8bit_adam", "gradient_checkpointing"),
            choices={"lr_scheduler": SCHEDULERS, "mixed_precision": ("auto", "no", "bf16", "fp16"),
                     "timestep_sampling": TIMESTEP_SAMPLING},
        )
        for name in ("adam_beta1", "adam_beta2", "ema_decay"):
            check_below_one(self, "training", name)
        if self.until_step is not None:
            integer("training.until_step", self.until_step, 1, MAX_STEPS)
        if not isinstance(self.objective_options, dict):
            raise InvalidValueError(f"training.objective_options must be a table of option = value, got "
                                    f"{self.objective_options!r}")
        for name in self.objective_options:
            text("a training.objective_options key", name, 4096, allow_empty=False)
        if self.dropout_text + self.dropout_image + self.dropout_both > 1:
            raise TrainingConfigError("training: the dropout rates (text, image, both) sum to more than 1")
        pair = self.source_start_range
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise InvalidValueError(f"training.source_start_range must be a pair [low, high], got {pair!r}")
        low, high = (number(f"training.source_start_range[{index}]", value, 0, 1, low_open=True)
                     for index, value in enumerate(pair))
        if low > high:
            raise TrainingConfigError(f"training.source_start_range must be a pair low <= high, got {pair!r}")
        object.__setattr__(self, "source_start_range", (low, high))
        check_text_list(self, "training", "report_to")
        unknown = set(self.report_to) - {"csv", "tensorboard"}
        if unknown:
            raise TrainingConfigError(f"training.report_to accepts 'csv' and 'tensorboard', got {sorted(unknown)}")


@dataclass(frozen=True)
class ValidationConfig:
    """Periodic validation: every ``every`` steps (0 = only at the end; -1 = never) the model edits the first
    ``num_samples`` held-out samples; images and PSNR/SSIM go to ``<output_dir>/validation/step-N/``. ``steps`` and
    ``guidance_scale`` unset (the default) use the model's own defaults (its pipeline's
    ``default_num_inference_steps`` and ``default_guidance_scale``: 28 and 6 for the released models, 1 and 1 for
    the built-in demo model)."""

    every: int = 0
    num_samples: int = 8
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, "validation",
                     integers={"every": (-1, MAX_STEPS), "num_samples": (1, 10_000), "seed": (0, MAX_TRAIN_SEED)})
        if self.steps is not None:
            integer("validation.steps", self.steps, 1, 1000)
        if self.guidance_scale is not None:
            object.__setattr__(self, "guidance_scale", number("validation.guidance_scale", self.guidance_scale, 0, 100))


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
    unknown = sorted(set(values) - set(_SECTIONS))
    if unknown:
        raise TrainingConfigError(f"unknown table(s) {unknown}; valid: {sorted(_SECTIONS)}")
    not_tables = [name for name in _SECTIONS if not isinstance(values.get(name, {}), dict)]
    if not_tables:
        raise TrainingConfigError(f"{', '.join(not_tables)} must be a table ([{not_tables[0]}]), not a value")
    tables = {name: dict(values.get(name, {})) for name in _SECTIONS}
    for dotted, value in (overrides or {}).items():
        table, _, key = dotted.partition(".")
        if table not in _SECTIONS or not key:
            raise TrainingConfigError(f"override {dotted!r} must be TABLE.FIELD with TABLE in {sorted(_SECTIONS)}")
        tables[table][key] = value
    return TrainConfig(**{name: _coerce(cls, name, tables[name]) for name, cls in _SECTIONS.items()})


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a TOML training config (relative paths in it are relative to the working directory)."""
    return config_from_dict(read_toml(path, "training config"), overrides)
