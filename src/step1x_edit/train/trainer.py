"""The Step1X-Edit trainer: rectified-flow fine-tuning of the DiT (LoRA or full) on accelerate.

:func:`train` runs a whole job described by a :class:`~step1x_edit.train.config.TrainConfig` with a
:class:`Trainer`:

1. loads the pipeline (VAE and MLLM frozen), makes LoRA adapters with peft (default targets: the Linear layers of
   the DiT blocks that the official LoRA trains) or unfreezes the whole DiT; optionally the connector too, and in
   full mode the MLLM's language model (``model.train_text_encoder``);
2. caches every sample's VAE latents and MLLM conditions (including the empty-instruction condition); a trained
   MLLM's conditions are instead computed at every step, with gradients, and only the latents are cached;
3. steps with the objective ``training.objective`` names (:mod:`~step1x_edit.train.objectives`; by default the
   official :func:`~step1x_edit.train.flow.flow_matching_loss`) under accelerate (data parallel over processes,
   gradient accumulation, mixed precision, gradient clipping, AdamW or 8-bit AdamW, a diffusers LR schedule,
   optional EMA and gradient checkpointing);
4. writes checkpoints ``<output_dir>/checkpoints/step-N`` atomically, in safetensors and JSON
   (:mod:`~step1x_edit.train.checkpoint`: loading one runs no code), with everything a resume needs (trained
   weights, optimizer, LR schedule, EMA, every RNG, the position in the data plan), so an interrupted run
   continues with exactly the losses of an uninterrupted one; a damaged newest checkpoint is skipped for the one
   before it; logs the loss to ``logs/loss.csv`` (and TensorBoard); validates on held-out samples (images +
   PSNR/SSIM, with the model's own default steps and guidance unless ``[validation]`` sets them);
5. saves the result in ``<output_dir>/final``: a LoRA in peft/diffusers and in the official kohya format, or a
   full pipeline in the diffusers layout.

Run it from the command line (``step1x-edit train CONFIG.toml``), with ``accelerate launch`` for several
processes, or call :func:`train` from Python. torch's CPU thread count (``training.num_threads``) is restored when
the job ends.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..errors import CheckpointError, DataFormatError, Step1XEditError
from ..metrics import psnr, ssim
from ..models.mllm import encode_prompts
from ..models.vae import decode_latents
from ..validate import integer
from . import checkpoint
from .config import TrainConfig, TrainingConfigError
from .data import (
    LANGUAGE_KEYS,
    FeatureCache,
    FeatureSource,
    Featurizer,
    collate,
    load_examples,
    model_fingerprint,
    plan_batches,
    repeat_tasks,
    resolve_store,
)
from .flow import (
    FlowTimeSampling,
    drop_conditions,
    drop_reference,
    dropout_draws,
    sample_flow_times,
    source_start_times,
)
from .objectives import FlowBatch, ObjectiveFactory, build_objective

LOG_FIELDS = ("step", "loss", "lr", "samples", "seconds")


@dataclass
class TrainResult:
    """What a run produced: the last step reached, the final model folder (``None`` when stopped early) and the
    per-step losses of this invocation."""

    step: int
    final_dir: Path | None
    losses: dict[int, float]


class _Progress:
    """The resumable counters (the same in every process) and this process's own RNG (noise, flow times, dropout,
    language choice)."""

    def __init__(self, seed: int, rank: int):
        self.step = 0
        self.micro_step = 0
        self.samples = 0
        self.generator = torch.Generator().manual_seed(seed * 1000 + rank)

    def counters(self) -> dict[str, int]:
        return {"step": self.step, "micro_step": self.micro_step, "samples": self.samples}

    def load_counters(self, counters: dict) -> None:
        self.step, self.micro_step, self.samples = (integer(f"the checkpoint's {name}", counters[name], 0)
                                                    for name in ("step", "micro_step", "samples"))


def _mixed_precision(name: str) -> str:
    if name != "auto":
        return name
    return "bf16" if torch.cuda.is_available() else "no"


def _set_trainable(transformer, config: TrainConfig) -> list[torch.nn.Parameter]:
    """Freeze or unfreeze / add adapters; returns the trained parameters."""
    model = config.model
    if model.mode == "full":
        transformer.requires_grad_(True)  # the connector included
    else:
        from peft import LoraConfig

        from ..checkpoints.lora import default_lora_targets

        transformer.requires_grad_(False)
        targets = list(model.lora_targets) or default_lora_targets(transformer)
        if "proj_out" not in targets and not transformer.proj_out.weight.any():
            raise TrainingConfigError(
                "this model's output layer is still zero (untrained, as a fresh reference_delta model's), so no "
                "gradient reaches LoRA adapters behind it; train it fully first (model.mode = 'full') or add "
                "'proj_out' to lora_targets"
            )
        transformer.add_adapter(LoraConfig(
            r=model.lora_rank, lora_alpha=model.lora_alpha, lora_dropout=model.lora_dropout,
            init_lora_weights="gaussian", target_modules=targets,
        ))
        if model.train_connector:
            transformer.connector.requires_grad_(True)
    return [param for param in transformer.parameters() if param.requires_grad]


QK_NORM_NAMES = ("norm_q.", "norm_k.", "norm_added_q.", "norm_added_k.")


def _parameter_groups(transformer, config: TrainConfig, text_params: tuple | list = ()) -> list[dict]:
    """The trained parameters as optimizer groups: the attention query/key RMSNorm gains (whose size sets the
    attention temperature, e.g. how sharply a noisy token can single out its reference token) at
    ``qk_norm_lr_scale`` times the learning rate, a trained text encoder's ``text_params`` at
    ``text_encoder_lr_scale`` times it, everything else at the learning rate."""
    t = config.training
    gains, rest = [], []
    for name, param in transformer.named_parameters():
        if param.requires_grad:
            (gains if t.qk_norm_lr_scale != 1 and any(part in name for part in QK_NORM_NAMES) else rest).append(param)
    groups = [{"params": rest}]
    if gains:
        groups.append({"params": gains, "lr": t.learning_rate * t.qk_norm_lr_scale})
    if text_params:
        groups.append({"params": list(text_params), "lr": t.learning_rate * t.text_encoder_lr_scale})
    return groups


def _optimizer(params, config: TrainConfig):
    t = config.training
    kwargs = {"lr": t.learning_rate, "betas": (t.adam_beta1, t.adam_beta2), "weight_decay": t.weight_decay,
              "eps": t.adam_epsilon}
    if t.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as error:
            raise TrainingConfigError(
                "training.use_8bit_adam needs bitsandbytes: pip install 'step1x-edit[train]'"
            ) from error
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def _trained_state_dict(transformer) -> dict[str, torch.Tensor]:
    """The trained tensors by parameter name (LoRA adapters, plus the connector when it is trained)."""
    return {name: param.detach().cpu().contiguous() for name, param in transformer.named_parameters()
            if param.requires_grad}


class _Checkpointer:
    """Writes and resumes the run's checkpoints (:mod:`~step1x_edit.train.checkpoint`) in ``<output_dir>/checkpoints``.

    ``training.*`` (written by the main process) holds the counters, the trained weights and the optimizer state
    (unsharded, by parameter name, through torch's distributed state-dict API, so it works under DDP and FSDP), the
    LR schedule and the EMA; ``process-R.*`` holds process R's own generator and global random states."""

    def __init__(self, accelerator, trained: dict, optimizer, lr_scheduler, ema, progress: _Progress,
                 root: Path, keep: int):
        self.accelerator = accelerator
        self.models = torch.nn.ModuleDict(trained)  # the trained modules under one roof, for one state dict
        self.optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds torch's
        self.lr_scheduler, self.ema, self.progress = lr_scheduler, ema, progress
        self.root, self.keep = root, keep

    def save(self) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        accelerator, progress = self.accelerator, self.progress
        main = accelerator.is_main_process
        temporary = checkpoint.temporary_folder(self.root, progress.step)
        if main:
            checkpoint.begin(self.root, progress.step)
        accelerator.wait_for_everyone()
        weights, optimizer = get_state_dict(self.models, self.optimizer, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True, ignore_frozen_params=True))
        if main:
            checkpoint.write_state(temporary, "training", {
                **progress.counters(), "weights": weights, "optimizer": optimizer,
                "lr_scheduler": self.lr_scheduler.state_dict(),
                "ema": None if self.ema is None else self.ema.state_dict(),
            })
        checkpoint.write_state(temporary, f"process-{accelerator.process_index}",
                               {"generator": progress.generator.get_state(), "rng": checkpoint.rng_state()})
        accelerator.wait_for_everyone()
        if main:
            checkpoint.commit(temporary, self.keep, step=progress.step, processes=accelerator.num_processes)
        accelerator.wait_for_everyone()

    def _read(self, folder: Path) -> tuple[dict | None, dict | None, object]:
        """This process's parts of the checkpoint in ``folder``: the training state (main process only; the others
        read it once every process accepted the checkpoint), its own process state (``None`` when the run that
        wrote it had fewer processes) and the number of processes of that run."""
        accelerator = self.accelerator
        main = accelerator.is_main_process
        manifest = checkpoint.verify(folder, checkpoint.state_files("training") if main else ())
        processes = manifest.get("processes")
        mine = accelerator.process_index < processes if isinstance(processes, int) else False
        if mine:
            checkpoint.verify(folder, checkpoint.state_files(f"process-{accelerator.process_index}"))
        training = checkpoint.read_state(folder, "training") if main else None
        if training is not None and not isinstance(training, dict):
            raise CheckpointError(f"{folder}: the training state is not a table")
        own = checkpoint.read_state(folder, f"process-{accelerator.process_index}") if mine else None
        return training, own, processes

    def resume(self) -> Path | None:
        """Load the newest usable checkpoint (``None`` when there is none; an error when none is usable)."""
        accelerator = self.accelerator

        def agree(ok: bool) -> bool:
            return bool(accelerator.gather(torch.tensor([int(ok)], device=accelerator.device)).all())

        found = checkpoint.load_newest(self.root, self._read, agree)
        if found is None:
            return None
        folder, (training, own, processes) = found
        if training is None:
            training = checkpoint.read_state(folder, "training")
        if processes != accelerator.num_processes and accelerator.is_main_process:
            warnings.warn(f"{folder} was written by {processes} process(es), this run has {accelerator.num_processes}: "
                          "batches are dealt differently, so the resumed run does not repeat an uninterrupted one "
                          "exactly", stacklevel=2)
        try:
            self._apply(folder, training, own)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as error:
            raise CheckpointError(f"{folder} does not fit this run ({' '.join(str(error).split())}); delete it to "
                                  "resume from an earlier checkpoint") from None
        return folder

    def _apply(self, folder: Path, training: dict, own: dict | None) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            set_state_dict,
        )

        weights = training["weights"]
        trained = set(get_model_state_dict(self.models, options=StateDictOptions(ignore_frozen_params=True)))
        if not isinstance(weights, dict) or set(weights) != trained or not all(
                isinstance(value, torch.Tensor) for value in weights.values()):
            names = set(weights) if isinstance(weights, dict) else set()
            raise CheckpointError(
                f"{folder} holds other trained weights than this run trains (missing {sorted(trained - names)[:3]}, "
                f"unexpected {sorted(names - trained)[:3]})")
        set_state_dict(self.models, self.optimizer, model_state_dict=weights,
                       optim_state_dict=training["optimizer"],
                       options=StateDictOptions(full_state_dict=True, strict=False))
        self.lr_scheduler.load_state_dict(training["lr_scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(training["ema"])
        self.progress.load_counters(training)
        if own is None:  # the run that wrote it had fewer processes: this one keeps its fresh random states
            return
        self.progress.generator.set_state(own["generator"])
        checkpoint.set_rng_state(own["rng"])


def _check_same_run(output_dir: Path, config: TrainConfig) -> None:
    """Refuse to continue a run in ``output_dir`` that was started with other settings."""
    path = output_dir / "config.json"
    current = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as read back
    current["training"].pop("until_step")
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as error:
            raise TrainingConfigError(f"{path} (the settings of the run in {output_dir}) is unreadable ({error}); "
                                      "use another training.output_dir or delete that folder") from None
        if not isinstance(previous, dict) or not all(isinstance(previous.get(table), dict) for table in current):
            raise TrainingConfigError(f"{path} does not hold a run's settings; use another training.output_dir or "
                                      "delete that folder")
        previous["training"].pop("until_step", None)
        if previous != current:
            changed = sorted(
                f"{table}.{key}" for table in current for key in current[table]
                if previous.get(table, {}).get(key) != current[table][key]
            )
            raise TrainingConfigError(
                f"{output_dir} holds a run with other settings (changed: {', '.join(changed)}); use another "
                "training.output_dir or delete that folder"
            )
    else:
        output_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(current, indent=1))


def _kept_rows(rows, resume_step: int) -> list[dict]:
    """The complete rows of a loss log up to ``resume_step`` (a row cut short by a crash is dropped)."""
    kept = []
    for row in rows:
        if None in row or None in row.values() or not str(row.get("step", "")).isdigit():
            continue
        if int(row["step"]) <= resume_step:
            kept.append(row)
    return kept


class _LossLog:
    """``logs/loss.csv``: one row per optimisation step; rows past a resumed step, and incomplete ones, are dropped
    first."""

    def __init__(self, output_dir: Path, resume_step: int, enabled: bool):
        self.path = output_dir / "logs" / "loss.csv"
        self.enabled = enabled
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if self.path.is_file():
            try:
                with self.path.open(newline="", encoding="utf-8", errors="replace") as handle:
                    rows = _kept_rows(csv.DictReader(handle, LOG_FIELDS), resume_step)
            except csv.Error as error:
                raise DataFormatError(f"{self.path} is not a loss log ({error}); move it away to continue") from None
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict) -> None:
        if self.enabled:
            with self.path.open("a", newline="") as handle:
                csv.DictWriter(handle, LOG_FIELDS).writerow(row)


def _save_validation(pipe, examples, config: TrainConfig, step: int, output_dir: Path,
                     progress: bool = True) -> dict[str, float]:
    """Edit the held-out ``examples`` (with ``validation.steps`` and ``guidance_scale``, or the model's own defaults
    when they are unset), save source | edit | target strips and return the mean PSNR/SSIM."""
    v = config.validation
    folder = output_dir / "validation" / f"step-{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    language = LANGUAGE_KEYS[config.data.language][0]
    pipe.set_progress_bar_config(disable=True)
    scores = {"psnr": [], "ssim": [], "identity_psnr": []}
    for index, example in enumerate(tqdm(examples, desc=f"validation at step {step}", unit="sample",
                                         disable=not progress, leave=False)):
        instruction = example.instructions[language]
        generator = torch.Generator("cpu").manual_seed(v.seed + index)
        edited = pipe(image=example.source, prompt=instruction, num_inference_steps=v.steps,
                      guidance_scale=v.guidance_scale, size_level=config.data.resolution,
                      generator=generator).images[0]
        target = np.asarray(example.target.convert("RGB"))
        output = np.asarray(edited.convert("RGB"))
        scores["psnr"].append(psnr(output, target))
        scores["ssim"].append(ssim(output, target))
        scores["identity_psnr"].append(psnr(np.asarray(example.source.convert("RGB")), target))
        strip = Image.new("RGB", (example.source.width * 3, example.source.height))
        for column, image in enumerate((example.source, edited, example.target)):
            strip.paste(image.convert("RGB"), (column * example.source.width, 0))
        strip.save(folder / f"{index:02d}-{example.task}.png")
        (folder / f"{index:02d}-{example.task}.txt").write_text(instruction + "\n", encoding="utf-8")
    metrics = {name: float(np.mean(values)) for name, values in scores.items()} if examples else {}
    (folder / "metrics.json").write_text(json.dumps({"step": step, **metrics}, indent=1))
    return metrics


class Trainer:
    """One training job (see the module docstring), in the phases :meth:`run` calls in turn: :meth:`setup_model`,
    :meth:`setup_data`, :meth:`setup_optimization` (and resume), then :meth:`step` until the last step, with
    :meth:`checkpoint` and :meth:`validate` on the way, and :meth:`save_final`.

    ``objectives`` adds named entries to the objectives registry (:mod:`~step1x_edit.train.objectives`) for
    ``training.objective`` to choose from; the objective and its options are checked before anything is loaded.
    Every phase that can take more than a moment shows a progress bar or says what it does (main process)."""

    def __init__(self, config: TrainConfig, progress: bool = True,
                 objectives: Mapping[str, ObjectiveFactory] | None = None):
        t = config.training
        self.config = config
        self.progress = progress
        self.output_dir = Path(t.output_dir)
        self.objective = build_objective(t.objective, t.objective_options, objectives)

    def say(self, message: str) -> None:
        """A line about the current phase (main process; on its own line, never inside a progress bar)."""
        if self.accelerator.is_main_process:
            tqdm.write(message, file=sys.stderr)

    def run(self) -> TrainResult:
        """Run (or resume) the job; torch's CPU thread count is restored afterwards."""
        threads = torch.get_num_threads()
        try:
            self.setup_accelerator()
            self.setup_model()
            self.setup_data()
            self.setup_optimization()
            return self.fit()
        finally:
            torch.set_num_threads(threads)

    def setup_accelerator(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedType, ProjectConfiguration, set_seed

        t = self.config.training
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        self.trackers = ["tensorboard"] if "tensorboard" in t.report_to else None
        self.accelerator = accelerator = Accelerator(
            mixed_precision=_mixed_precision(t.mixed_precision),
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            log_with=self.trackers,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir),
                                                logging_dir=str(self.output_dir / "logs")),
        )
        if accelerator.distributed_type == DistributedType.DEEPSPEED:
            raise TrainingConfigError("DeepSpeed is not supported: its optimizer state is saved and loaded with pickle "
                                      "(torch.save / torch.load), which this project never loads; use DDP or FSDP")
        self.main = accelerator.is_main_process
        if self.main:
            _check_same_run(self.output_dir, self.config)
        accelerator.wait_for_everyone()
        set_seed(t.seed)
        self.weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision,
                                                                                torch.float32)

    def setup_model(self) -> None:
        """Load the pipeline: frozen VAE and MLLM, the trained DiT parts in float32 (autocast does the low-precision
        math), LoRA adapters or the whole DiT (and, if asked, the MLLM's language model) trainable."""
        from ..pipeline import load_pipeline

        model, t = self.config.model, self.config.training
        device = self.accelerator.device
        self.say(f"loading the model from {model.path or 'the built-in demo model'}")
        self.pipe = pipe = load_pipeline(model.path, device="cpu", torch_dtype=torch.float32, version=model.version)
        pipe.vae.to(device).requires_grad_(False).eval()
        self.text_encoder = text_encoder = pipe.text_encoder
        text_encoder.to(device, dtype=torch.float32 if model.train_text_encoder else self.weight_dtype)
        text_encoder.requires_grad_(False).eval()
        transformer = pipe.transformer
        self.params = _set_trainable(transformer, self.config)
        self.text_params = []
        if model.train_text_encoder:  # the language model (embeddings, layers, final norm); the vision tower stays frozen
            text_encoder.model.language_model.requires_grad_(True)
            self.text_params = list(text_encoder.model.language_model.parameters())
        if model.mode == "lora" and self.weight_dtype != torch.float32:
            for param in transformer.parameters():
                if not param.requires_grad:
                    param.data = param.data.to(self.weight_dtype)
        transformer.to(device).train()
        if t.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        self.transformer = transformer
        self.version = transformer.config.version

    def setup_data(self) -> None:
        """The training examples (repeated per task), their cached VAE latents and MLLM conditions, the held-out
        examples for validation, and the number of batches in an epoch."""
        config, accelerator = self.config, self.accelerator
        data = config.data
        store = resolve_store(data, self.output_dir)
        self.say(f"reading the training samples of {store}")
        examples = load_examples(data, store)
        if not examples:
            raise Step1XEditError(f"no training samples in {store} (split {data.split!r}, "
                                  f"tasks {list(data.tasks) or 'all'}, language {data.language!r})")
        examples = repeat_tasks(examples, data.task_repeats)
        self.languages = LANGUAGE_KEYS[data.language]
        featurized = () if config.model.train_text_encoder else self.languages  # a trained MLLM's: at every step
        cache = None
        if data.cache:
            fingerprint = model_fingerprint(self.pipe, data.resolution, featurized)
            cache = FeatureCache(data.cache_dir or self.output_dir / "cache", fingerprint)
        self.source = FeatureSource(examples, data.resolution, Featurizer(self.pipe, featurized), cache)
        self.source.fill(progress=self.progress and self.main,
                         shard=(accelerator.process_index, accelerator.num_processes))
        accelerator.wait_for_everyone()
        self.validation_examples = []
        if config.validation.every >= 0 and self.main:
            self.validation_examples = load_examples(data, store, split="validation",
                                                     limit=config.validation.num_samples)
        t = config.training
        self.batches_per_epoch = len(plan_batches(self.source.sizes, t.batch_size, t.seed, 0,
                                                  accelerator.num_processes, 0))
        if self.batches_per_epoch == 0:
            raise Step1XEditError(f"{len(examples)} samples give no batch for {accelerator.num_processes} processes")

    def setup_optimization(self) -> None:
        """Optimizer, LR schedule, EMA, accelerate's wrappers, the checkpointer (resuming from the newest usable
        checkpoint), the loss log and the flow-time sampling."""
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        t, accelerator = self.config.training, self.accelerator
        optimizer = _optimizer(_parameter_groups(self.transformer, self.config, self.text_params), self.config)
        lr_scheduler = get_scheduler(
            t.lr_scheduler, optimizer, num_warmup_steps=t.warmup_steps * accelerator.num_processes,
            num_training_steps=t.max_steps * accelerator.num_processes,
        )
        self.params = self.params + self.text_params
        self.ema = EMAModel(self.params, decay=t.ema_decay) if t.ema_decay > 0 else None
        self.transformer, self.optimizer, self.lr_scheduler = accelerator.prepare(self.transformer, optimizer,
                                                                                  lr_scheduler)
        self.state = _Progress(t.seed, accelerator.process_index)
        trained = {"transformer": self.transformer}
        if self.config.model.train_text_encoder:  # not wrapped for data parallel (its gradients are averaged by hand)
            trained["text_encoder"] = self.text_encoder
        self.checkpointer = _Checkpointer(accelerator, trained, self.optimizer, self.lr_scheduler, self.ema, self.state,
                                          self.output_dir / "checkpoints", t.keep_checkpoints)
        resumed = self.checkpointer.resume()
        if resumed is not None:
            self.say(f"resumed from {resumed} (step {self.state.step})")
        if self.trackers:
            accelerator.init_trackers("step1x-edit-train", config={"max_steps": t.max_steps})
        self.log = _LossLog(self.output_dir, self.state.step, self.main and "csv" in t.report_to)
        schedule = self.pipe.scheduler.config  # the inference schedule's shift, matched by "logit_normal"
        self.time_sampling = FlowTimeSampling(
            t.timestep_sampling, t.shift, t.logit_mean, t.logit_std, base_shift=schedule.base_shift,
            max_shift=schedule.max_shift, base_seq_len=schedule.base_image_seq_len,
            max_seq_len=schedule.max_image_seq_len, pure_noise_rate=t.pure_noise_rate,
        )

    def fit(self) -> TrainResult:
        """Step until ``max_steps`` (or ``until_step``), logging, checkpointing and validating on the way; then the
        final validation and model."""
        t, accelerator, state = self.config.training, self.accelerator, self.state
        every = self.config.validation.every
        stop = t.max_steps if t.until_step is None else min(t.max_steps, t.until_step)
        losses: dict[int, float] = {}
        started = time.perf_counter()
        accumulated = []
        bar = tqdm(total=t.max_steps, initial=state.step, desc="training", unit="step",
                   disable=not (self.progress and self.main))
        plans: dict[int, list[list[int]]] = {}
        while state.step < stop:
            epoch, position = divmod(state.micro_step, self.batches_per_epoch)
            if epoch not in plans:
                plans = {epoch: plan_batches(self.source.sizes, t.batch_size, t.seed, epoch,
                                             accelerator.num_processes, accelerator.process_index)}
            accumulated.append(self.step(plans[epoch][position]))
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            if self.ema is not None:
                self.ema.step(self.params)
            step_loss = float(accelerator.gather(torch.stack(accumulated).mean()[None]).mean())
            accumulated = []
            if not math.isfinite(step_loss):
                raise Step1XEditError(f"the loss became {step_loss} at step {state.step}; lower the learning rate")
            losses[state.step] = step_loss
            if state.step % t.log_every == 0 or state.step == stop:
                lr = self.lr_scheduler.get_last_lr()[0]
                self.log.write({"step": state.step, "loss": f"{step_loss:.6g}", "lr": f"{lr:.6g}",
                                "samples": state.samples, "seconds": f"{time.perf_counter() - started:.3f}"})
                if self.trackers:
                    accelerator.log({"loss": step_loss, "lr": lr}, step=state.step)
            bar.update()
            bar.set_postfix(loss=f"{step_loss:.4f}")
            if state.step % t.checkpoint_every == 0 or state.step == stop:
                self.checkpoint()
            if every > 0 and state.step % every == 0:
                self.validate()
        bar.close()
        final_dir = None
        if state.step >= t.max_steps:
            final_dir = self.output_dir / "final"
            if every == 0 or (every > 0 and state.step % every):
                self.validate()
            if self.main:
                self.save_final(final_dir)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return TrainResult(state.step, final_dir, losses)

    def step(self, indices: list[int]) -> torch.Tensor:
        """One micro-step on the samples ``indices``: draw times, noise and dropout, compute the objective, step the
        optimizer when the gradients are accumulated. Returns the (detached) loss."""
        t, accelerator, state, source = self.config.training, self.accelerator, self.state, self.source
        train_text = self.config.model.train_text_encoder
        language = self.languages[int(torch.randint(len(self.languages), (1,), generator=state.generator))]
        batch = collate([source[i] for i in indices], language, self.pipe.config.max_sequence_length)
        batch = {key: value.to(accelerator.device) for key, value in batch.items()}
        target = batch["target"]
        flow_t = sample_flow_times(target.shape[0], target.shape[-2] * target.shape[-1] // 4, self.time_sampling,
                                   state.generator)
        noise = torch.randn(target.shape, generator=state.generator).to(accelerator.device)
        start_times = None
        if t.source_start_rate > 0:
            start_times = source_start_times(target.shape[0], t.source_start_rate, *t.source_start_range,
                                             state.generator)
            flow_t = flow_t * start_times
        if train_text:
            drop_text, drop_image = dropout_draws(len(indices), t.dropout_text, t.dropout_image, t.dropout_both,
                                                  state.generator)
            prompts = ["" if drop else source.examples[i].instructions[language]
                       for i, drop in zip(indices, drop_text.tolist(), strict=True)]
            reference = drop_reference(batch["reference"], drop_image)
        else:
            embeds, mask, reference = drop_conditions(
                batch["embeds"], batch["mask"], batch["uncond_embeds"], batch["uncond_mask"], batch["reference"],
                t.dropout_text, t.dropout_image, t.dropout_both, state.generator,
            )
        with accelerator.accumulate(self.transformer):
            with accelerator.autocast():
                if train_text:
                    embeds, mask = encode_prompts(self.text_encoder, self.pipe.processor,
                                                  [source.source_image(i) for i in indices], prompts,
                                                  max_length=self.pipe.config.max_sequence_length, grad=True)
                loss = self.objective(self.transformer, FlowBatch(
                    target, reference, embeds.to(self.weight_dtype), mask, flow_t, noise, self.version, start_times,
                    batch["reference"], self._decode))
            accelerator.backward(loss)
            if train_text and accelerator.sync_gradients and accelerator.num_processes > 1:
                for param in self.text_params:
                    if param.grad is not None:
                        param.grad = accelerator.reduce(param.grad, reduction="mean")
            if accelerator.sync_gradients and t.max_grad_norm > 0:
                accelerator.clip_grad_norm_(self.params, t.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        state.micro_step += 1
        state.samples += target.shape[0] * accelerator.num_processes
        return loss.detach()

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The frozen VAE's decoding of normalised latents (gradients flow through it to the transformer only)."""
        return decode_latents(self.pipe.vae, latents.to(self.accelerator.device))

    def checkpoint(self) -> None:
        """Write ``checkpoints/step-N`` (every process takes part)."""
        self.checkpointer.save()
        self.say(f"saved the checkpoint of step {self.state.step}")

    def validate(self) -> None:
        """Edit the held-out samples with the current (EMA) weights and log PSNR/SSIM (main process)."""
        if not self.validation_examples:
            return
        model = self.accelerator.unwrap_model(self.transformer)
        ema, params = self.ema, self.params
        if ema is not None:
            ema.store(params)
            ema.copy_to(params)
        model.eval()
        try:
            with self.accelerator.autocast():
                metrics = _save_validation(self.pipe, self.validation_examples, self.config, self.state.step,
                                           self.output_dir, progress=self.progress)
        finally:
            model.train()
            if ema is not None:
                ema.restore(params)
        self.say(f"validation at step {self.state.step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        if self.trackers:
            self.accelerator.log({f"validation/{k}": v for k, v in metrics.items()}, step=self.state.step)

    def save_final(self, final_dir: Path) -> None:
        """The result in ``final_dir`` (:func:`_save_final`)."""
        self.say(f"saving the final model to {final_dir}")
        _save_final(self.accelerator.unwrap_model(self.transformer), self.pipe, self.params, self.ema,
                    self.config.model.mode == "lora", final_dir)


def train(config: TrainConfig, progress: bool = True,
          objectives: Mapping[str, ObjectiveFactory] | None = None) -> TrainResult:
    """Run (or resume) the training job ``config`` (see the module docstring and :class:`Trainer`)."""
    return Trainer(config, progress, objectives).run()


def _save_final(model, pipe, params, ema, lora: bool, final_dir: Path) -> None:
    """LoRA: ``lora.safetensors`` (peft/diffusers keys) + ``lora_kohya.safetensors`` (official keys), and
    ``connector.safetensors`` when the connector was trained; full: the pipeline in the diffusers layout."""
    if ema is not None:
        ema.copy_to(params)
    final_dir.mkdir(parents=True, exist_ok=True)
    if lora:
        from ..checkpoints.lora import save_lora

        save_lora(model, final_dir / "lora.safetensors", format="peft")
        save_lora(model, final_dir / "lora_kohya.safetensors", format="kohya")
        others = {name: tensor for name, tensor in _trained_state_dict(model).items() if "lora_" not in name}
        if others:
            save_file(others, final_dir / "connector.safetensors")
    else:
        pipe.save_pretrained(final_dir, safe_serialization=True)
