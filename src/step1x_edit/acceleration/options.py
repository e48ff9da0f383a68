"""One choice of memory, speed and multi-GPU modes (:class:`Acceleration`) and the one function that applies it to
a loaded pipeline (:func:`apply_acceleration`).

A memory mode is named for the card it serves (``full``, ``24gb``, ``16gb``, ``12gb``; ``auto`` picks one from the
free GPU memory and says which) and stands for a set of the underlying choices, each of which can also be given on
its own (``offload``, ``dit_storage``, ``quantize_dit``, ``quantize_mllm``, ``vae_tiling``); an explicit choice
overrides the mode's. Speed modes (``compile``, ``attention_backend``, ``cache``) and ``parallel`` compose with
every memory mode the libraries allow; a combination they do not allow is refused with one clear line
(:class:`~step1x_edit.errors.UnsupportedModeError`), never silently replaced.
"""

from __future__ import annotations

from dataclasses import dataclass

from .choices import CACHES, DIT_STORAGES, MEMORY_MODES, OFFLOADS, PARALLELS, QUANTIZATIONS


@dataclass(frozen=True)
class Acceleration:
    """How a pipeline runs. ``None`` fields take the memory mode's choice (see :data:`MEMORY_PLANS`).

    - ``memory``: one of :data:`MEMORY_MODES`;
    - ``offload``: one of :data:`OFFLOADS`; ``dit_storage``: one of :data:`DIT_STORAGES`;
    - ``quantize_dit`` / ``quantize_mllm``: one of :data:`QUANTIZATIONS`; ``vae_tiling``: decode in tiles;
    - ``compile``: regional compilation of the DiT's repeated blocks (``torch.compile``);
    - ``attention_backend``: the DiT's attention backend (diffusers' ``set_attention_backend`` names: ``native``,
      ``flash``, ``_flash_3``, ``sage``, ...; None: the default);
    - ``cache``: one of :data:`CACHES`, with ``cache_threshold`` (None: the cache's default);
    - ``parallel``: one of :data:`PARALLELS` (``cfg`` and ``context`` run under ``torchrun``).
    """

    memory: str = "full"
    offload: str | None = None
    dit_storage: str | None = None
    quantize_dit: str | None = None
    quantize_mllm: str | None = None
    vae_tiling: bool | None = None
    compile: bool = False
    attention_backend: str | None = None
    cache: str = "none"
    cache_threshold: float | None = None
    parallel: str = "none"


def acceleration_from_mapping(fields, where: str) -> Acceleration:
    """The :class:`Acceleration` a configuration file's mapping gives (``where`` names it in errors); unknown
    fields and values are refused."""
    from dataclasses import fields as dataclass_fields

    from ..errors import InvalidValueError

    if not isinstance(fields, dict):
        raise InvalidValueError(f"{where} must be a mapping of mode fields, got {type(fields).__name__}")
    known = {field.name for field in dataclass_fields(Acceleration)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise InvalidValueError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}; known: "
                                f"{', '.join(sorted(known))}")
    acceleration = Acceleration(**fields)
    check_acceleration(acceleration)
    return acceleration


def lossy_choices(acceleration: Acceleration) -> dict:
    """The choices of ``acceleration`` that change the edited images beyond rounding (weight formats, step
    caching), for records that say how an image was made; ``auto`` may pick an fp8 mode on a small GPU."""
    chosen = {"memory": acceleration.memory if acceleration.memory not in ("auto", "full") else None,
              "dit_storage": acceleration.dit_storage if acceleration.dit_storage != "auto" else None,
              "quantize_dit": acceleration.quantize_dit if acceleration.quantize_dit != "none" else None,
              "quantize_mllm": acceleration.quantize_mllm if acceleration.quantize_mllm != "none" else None,
              "cache": acceleration.cache if acceleration.cache != "none" else None,
              "cache_threshold": acceleration.cache_threshold}
    return {name: value for name, value in chosen.items() if value is not None}


def check_acceleration(acceleration: Acceleration) -> None:
    """Raise :class:`InvalidValueError` naming the field when a choice is not one of its allowed values."""
    from .. import validate
    from ..errors import InvalidValueError

    allowed = {"memory": MEMORY_MODES, "offload": OFFLOADS, "dit_storage": DIT_STORAGES,
               "quantize_dit": QUANTIZATIONS, "quantize_mllm": QUANTIZATIONS, "cache": CACHES,
               "parallel": PARALLELS}
    for field, values in allowed.items():
        value = getattr(acceleration, field)
        if value is not None and value not in values:
            raise InvalidValueError(f"{field} must be one of {', '.join(values)}, got {value!r}")
    if acceleration.cache_threshold is not None:
        validate.number("cache_threshold", acceleration.cache_threshold, 0.0, 1.0)
        if acceleration.cache != "first-block":
            raise InvalidValueError("cache_threshold applies to cache first-block only")


def resolved_plan(acceleration: Acceleration, memory: str):
    """The :class:`~step1x_edit.acceleration.memory.MemoryPlan` of memory mode ``memory`` (not ``auto``) with the
    explicit choices of ``acceleration`` put over it."""
    from dataclasses import replace

    from .memory import MEMORY_PLANS

    plan = MEMORY_PLANS[memory]
    if acceleration.offload is not None:
        plan = replace(plan, dit_offload=acceleration.offload, mllm_offload=acceleration.offload)
    if acceleration.dit_storage is not None:
        plan = replace(plan, dit_storage=acceleration.dit_storage)
    elif acceleration.quantize_dit not in (None, "none"):  # the quantized format takes the place of fp8 storage
        plan = replace(plan, dit_storage="auto")
    if acceleration.vae_tiling is not None:
        plan = replace(plan, vae_tiling=acceleration.vae_tiling)
    return plan


def loads_dit_in_fp8(acceleration: Acceleration) -> bool:
    """Whether ``acceleration`` stores the DiT's weights in fp8 whatever the free memory (so the loader can keep
    an fp8 checkpoint as it is stored)."""
    memory = "full" if acceleration.memory == "auto" else acceleration.memory  # auto's pick is not known yet
    return resolved_plan(acceleration, memory).dit_storage == "fp8"


def check_combination(acceleration: Acceleration, device) -> None:
    """Raise :class:`UnsupportedModeError` before any model is loaded when ``acceleration`` cannot run on
    ``device`` (a ``torch.device``) with the installed packages."""
    from ..errors import UnsupportedModeError

    check_acceleration(acceleration)
    if device.type != "cuda":
        if acceleration.memory not in ("auto", "full"):
            raise UnsupportedModeError(f"--memory {acceleration.memory} keeps weights in CPU memory and streams them "
                                       f"to a GPU, but the model runs on {device.type}; leave --memory out")
        if acceleration.offload in ("model", "group"):
            raise UnsupportedModeError(f"--offload {acceleration.offload} moves weights from CPU memory to a GPU, but "
                                       f"the model runs on {device.type}; leave --offload out")
    if acceleration.offload == "model" and acceleration.parallel != "none":
        raise UnsupportedModeError("--offload model cannot combine with --parallel (each rank holds its models)")
    quantized = {acceleration.quantize_dit, acceleration.quantize_mllm} - {None, "none"}
    if quantized:
        from .quantization import check_quantization

        for name in sorted(quantized):
            check_quantization(name, device)
    if acceleration.quantize_dit not in (None, "none") and acceleration.dit_storage == "fp8":
        raise UnsupportedModeError("--dit-storage fp8 and --quantize-dit both set the DiT's weight format; choose one")
    if loads_dit_in_fp8(acceleration):
        from .memory import check_fp8_storage

        check_fp8_storage(device)
    if acceleration.attention_backend is not None:
        from .speed import check_attention_backend

        check_attention_backend(acceleration.attention_backend)
    if acceleration.parallel != "none":
        from .parallel import check_parallel

        check_parallel(acceleration.parallel)


def apply_acceleration(pipe, acceleration: Acceleration, device) -> list[str]:
    """Apply ``acceleration`` to ``pipe`` (loaded on the CPU, in its compute dtype) for running on ``device``, and
    place its models there; returns one line per thing done (the memory mode ``auto`` picked among them).

    Order matters and is fixed here: weight formats first (quantization, fp8 storage; before anything moves to
    the GPU, so the full-precision weights never land there), then placement (resident, group-offloaded or
    whole-model offloaded), then VAE tiling, the attention backend, step caching, compilation and parallelism.
    """
    import torch

    from ..errors import UnsupportedModeError
    from . import memory, speed

    device = torch.device(device)
    check_combination(acceleration, device)
    done: list[str] = []
    mode = acceleration.memory
    if mode == "auto":
        mode, why = memory.choose_memory_mode(pipe, device)
        done.append(why)
    plan = resolved_plan(acceleration, mode)
    if acceleration.memory != "auto":
        done.append(f"memory mode {mode}: {memory.MEMORY_PLANS[mode].card}")

    # 1. Weight formats (LoRAs are merged into the weights first: an adapter stays exact only over full weights).
    changes_dit = acceleration.quantize_dit not in (None, "none") or plan.dit_storage == "fp8"
    if changes_dit and getattr(pipe.transformer, "peft_config", None) and not memory.uses_fp8_storage(pipe.transformer):
        pipe.transformer.fuse_lora()
        pipe.transformer.unload_lora()
        done.append("LoRAs merged into the DiT's weights (before their format changes)")
    for part, name, module in (("dit", acceleration.quantize_dit, pipe.transformer),
                               ("mllm", acceleration.quantize_mllm, pipe.text_encoder)):
        if name not in (None, "none"):
            from .quantization import quantize_model

            saved = quantize_model(module, name, pipe.transformer.dtype, part=part)
            done.append(f"{part.upper()} weights quantized to {name} ({saved / 2**30:.2f} GiB saved)")
    compute = str(pipe.transformer.dtype).removeprefix("torch.")
    if memory.uses_fp8_storage(pipe.transformer):  # an fp8 checkpoint, read as stored
        done.append(f"DiT weights kept in fp8 as the checkpoint stores them, computed in {compute}")
    elif plan.dit_storage == "fp8":
        saved = memory.enable_fp8_storage(pipe.transformer)
        done.append(f"DiT weights stored in fp8, computed in {compute} ({saved / 2**30:.2f} GiB saved)")

    # 2. Placement.
    if plan.dit_offload == "model":  # only an explicit --offload model, which applies to every model at once
        pipe.enable_model_cpu_offload(device=device)
        done.append("models offloaded whole: each moves to the GPU while it runs")
    else:
        for part, module, offload in (("dit", pipe.transformer, plan.dit_offload),
                                      ("mllm", pipe.text_encoder, plan.mllm_offload)):
            if offload == "group":
                memory.enable_group_offload(module, device, part)
                unit = "block" if part == "dit" else "layer"
                done.append(f"{part.upper()} streamed to the GPU {unit} by {unit} (group offloading)")
            else:
                module.to(device)
        pipe.vae.to(device)

    # 3. The rest.
    if plan.vae_tiling:
        if memory.enable_vae_tiling(pipe.vae):
            done.append("VAE decodes in tiles")
        elif acceleration.vae_tiling:
            raise UnsupportedModeError(f"--vae-tiling: this model's autoencoder ({type(pipe.vae).__name__}) has no "
                                       "tiling (it needs none: its memory does not grow beyond the image)")
    if acceleration.attention_backend is not None:
        speed.set_attention_backend(pipe.transformer, acceleration.attention_backend)
        done.append(f"DiT attention backend: {acceleration.attention_backend}")
    if acceleration.cache != "none":
        speed.enable_cache(pipe.transformer, acceleration.cache, acceleration.cache_threshold)
        done.append(f"step caching: {acceleration.cache}")
    if acceleration.compile:
        speed.compile_transformer(pipe.transformer)
        done.append("DiT blocks compiled (regional torch.compile; the first edit of each size compiles)")
    if acceleration.parallel == "cfg":
        from .parallel import enable_cfg_parallel

        done.append(enable_cfg_parallel(pipe))
    elif acceleration.parallel == "context":
        from .parallel import enable_context_parallel

        done.append(enable_context_parallel(pipe))
    return done
