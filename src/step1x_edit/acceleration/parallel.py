"""Multi-GPU editing, one process per GPU under ``torchrun`` (or ``accelerate launch``): CFG-parallel and context
parallelism for the DiT.

* :func:`init_from_environment` starts the process group from the launcher's environment (NCCL on CUDA, each rank
  on its ``LOCAL_RANK`` GPU; gloo on CPU) and :func:`is_main_process` says which rank writes the outputs (rank 0).
* :func:`enable_cfg_parallel`: the batched-CFG transformer call ``[cond ; uncond]`` is split over two ranks, each
  computing one half, and the halves are all-gathered (a diffusers ``ModelHook`` on the transformer).
* :func:`enable_context_parallel`: diffusers' context-parallel engine (``ContextParallelConfig`` +
  ``enable_parallelism``) with the model's ``_cp_plan``: the connector reads the whole MLLM sequence on every rank,
  then each rank keeps its share of the text and image tokens, attention runs as Ulysses (all-to-all over heads),
  ring (key/value passed around) or both, and ``proj_out`` gathers the image sequence.
* :func:`check_parallel` refuses, in one line (:class:`~step1x_edit.errors.UnsupportedModeError`), a mode this
  process cannot run: no process group, a wrong world size, degrees that do not multiply to it, no GPU.

Every rank runs the whole pipeline on the same inputs (same prompt, image and seed): the MLLM, the VAE and the
scheduler are replicated, only the DiT's work is divided; every rank ends with the same result.
"""

from __future__ import annotations

import inspect
import os

import torch
import torch.distributed as dist
from diffusers.hooks import HookRegistry, ModelHook

from .. import validate
from ..errors import UnsupportedModeError
from ..models.transformer import Step1XEditTransformer2DModel
from ..versions import SAMPLER_DIFFUSERS, get_version

# The modes this module runs (with "none", the choices of Acceleration.parallel).
MODES = ("cfg", "context")
# What torchrun (and accelerate launch, which runs it) sets in each process it starts.
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
LAUNCH_HINT = "launch one process per GPU with torchrun --nproc-per-node N (or accelerate launch)"
CFG_PARALLEL_HOOK = "step1x_cfg_parallel"
# The transformer inputs whose first dimension is the batch (the CFG-parallel hook splits these).
BATCH_INPUTS = ("hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask", "text_embeddings",
                "text_mask")
# Attention backends whose kernel cannot return the log-sum-exp that ring attention merges its partial results
# with: they run Ulysses only (diffusers raises inside the first forward otherwise).
BACKENDS_WITHOUT_LSE = ("native", "_native_npu")


def init_from_environment() -> torch.device:
    """Join the process group the launcher describes (``torchrun``'s environment variables) and return this
    rank's device: ``cuda:LOCAL_RANK`` (made the current device) with NCCL where CUDA is available, the CPU with
    gloo otherwise. Safe to call again once the group exists."""
    if not dist.is_available():
        raise UnsupportedModeError("multi-GPU modes need torch.distributed, which this PyTorch build lacks")
    missing = [name for name in LAUNCHER_VARIABLES if name not in os.environ]
    if missing:
        raise UnsupportedModeError(f"multi-GPU modes run under a launcher, but {', '.join(missing)} "
                                   f"{'is' if len(missing) == 1 else 'are'} not set: {LAUNCH_HINT}")
    raw_local_rank = os.environ["LOCAL_RANK"]
    if not raw_local_rank.isdigit():
        raise UnsupportedModeError(f"LOCAL_RANK must be a whole number from 0, got {raw_local_rank!r}")
    local_rank = int(raw_local_rank)
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise UnsupportedModeError(f"LOCAL_RANK {local_rank} has no GPU: this machine has "
                                       f"{torch.cuda.device_count()} (start at most that many processes per node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return device


def is_main_process() -> bool:
    """True in the process that writes outputs: rank 0, or the only process when there is no process group."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def check_parallel(mode: str, ulysses_degree: int | None = None, ring_degree: int | None = None) -> None:
    """Raise :class:`~step1x_edit.errors.UnsupportedModeError` unless this process can run parallel ``mode``
    (``none`` or one of :data:`MODES`): ``cfg`` needs a process group of exactly 2 ranks;
    ``context`` needs at least 2, an accelerator for each (diffusers' engine places rank r on accelerator
    r % count), and ``ulysses_degree`` x ``ring_degree`` equal to the world size (None: Ulysses over all ranks)."""
    if mode == "none":
        return
    if mode not in MODES:
        raise UnsupportedModeError(f"parallel must be none, {' or '.join(MODES)}, got {mode!r}")
    if not (dist.is_available() and dist.is_initialized()):
        raise UnsupportedModeError(f"parallel {mode!r} needs a process group and this process has none: {LAUNCH_HINT}")
    world_size = dist.get_world_size()
    if mode == "cfg":
        if world_size != 2:
            raise UnsupportedModeError(f"parallel 'cfg' puts the conditional and unconditional halves on 2 processes; "
                                       f"this run has {world_size} (use --nproc-per-node 2, or parallel 'context')")
        return
    if world_size < 2:
        raise UnsupportedModeError(f"parallel 'context' divides the sequence over 2 or more processes; this run has "
                                   f"{world_size} ({LAUNCH_HINT})")
    ulysses, ring = context_degrees(world_size, ulysses_degree, ring_degree)
    if ulysses * ring != world_size:
        raise UnsupportedModeError(f"ulysses_degree x ring_degree must equal the {world_size} processes, got "
                                   f"{ulysses} x {ring} = {ulysses * ring}")
    if torch.accelerator.device_count() == 0:
        raise UnsupportedModeError("parallel 'context' needs a GPU per process (diffusers' context-parallel engine "
                                   "places rank r on accelerator r % count) and this machine has none; on CPU use "
                                   "parallel 'cfg' or 'none'")


def context_degrees(world_size: int, ulysses_degree: int | None, ring_degree: int | None) -> tuple[int, int]:
    """``(ulysses, ring)`` with the missing one filled in: Ulysses over every rank when neither is given, else the
    world size divided by the given one (rounded down: :func:`check_parallel` refuses a product that falls short)."""
    ulysses = None if ulysses_degree is None else validate.integer("ulysses_degree", ulysses_degree, 1, world_size)
    ring = None if ring_degree is None else validate.integer("ring_degree", ring_degree, 1, world_size)
    if ulysses is None and ring is None:
        return world_size, 1
    if ulysses is None:
        ulysses = world_size // ring
    if ring is None:
        ring = world_size // ulysses
    return ulysses, ring


def attention_backend(transformer: torch.nn.Module) -> str:
    """The attention backend the DiT's blocks run (diffusers' name; ``native`` unless one was set)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    for module in transformer.modules():
        backend = getattr(getattr(module, "processor", None), "_attention_backend", None)
        if backend is not None:
            return str(getattr(backend, "value", backend))
    return _AttentionBackendRegistry.get_active_backend()[0].value


def enable_context_parallel(pipe, ulysses_degree: int | None = None, ring_degree: int | None = None) -> str:
    """Divide the DiT's token sequence over the process group with diffusers' context-parallel engine and return
    one line saying how.

    Ulysses alone and ring alone take any sequence length (diffusers' ``ulysses_anything``/``ring_anything``: the
    last rank's share may be shorter); both at once need the text and image lengths divisible by the world size
    (refused at the call otherwise). Ulysses runs on every attention backend that supports context parallelism
    (the default ``native`` included); ring needs one whose kernel returns the log-sum-exp (``flash``,
    ``_flash_3_hub``, ``_native_cudnn``, ``_native_flash``, ``sage``: CUDA). Set the attention backend before calling
    this."""
    check_parallel("context", ulysses_degree, ring_degree)
    from diffusers import ContextParallelConfig

    transformer = _step1x_transformer(pipe, "context")
    world_size = dist.get_world_size()
    ulysses, ring = context_degrees(world_size, ulysses_degree, ring_degree)
    backend = attention_backend(transformer)
    if ring > 1 and backend in BACKENDS_WITHOUT_LSE:
        raise UnsupportedModeError(f"ring attention (ring_degree {ring}) merges partial results by their "
                                   f"log-sum-exp, which the {backend!r} attention backend does not return: choose "
                                   "attention backend flash, _flash_3_hub, _native_cudnn, _native_flash or sage, or "
                                   "Ulysses only")
    heads = transformer.config.num_heads
    if ulysses > 1 and ring > 1 and heads % ulysses:
        raise UnsupportedModeError(f"Ulysses x{ulysses} with ring attention divides the {heads} attention heads "
                                   "equally; they do not divide (use Ulysses or ring alone)")
    config = ContextParallelConfig(ulysses_degree=ulysses, ring_degree=ring, ulysses_anything=ring == 1,
                                   ring_anything=ulysses == 1)
    try:
        transformer.enable_parallelism(config=config)
    except (ValueError, RuntimeError) as error:  # diffusers' refusal: backend without context parallelism, ...
        raise UnsupportedModeError(f"context parallel: {' '.join(str(error).split())}") from error
    if ulysses > 1 and ring > 1:
        HookRegistry.check_if_exists_or_initialize(transformer).register_hook(
            _EvenSequenceCheck(world_size), "step1x_context_parallel_check")
    _quiet_other_ranks(pipe)
    kinds = [f"Ulysses x{ulysses}"] * (ulysses > 1) + [f"ring x{ring}"] * (ring > 1)
    return (f"context parallel: the DiT's sequence divided over {world_size} processes ({' and '.join(kinds)} "
            f"attention, {backend} backend)")


def enable_cfg_parallel(pipe) -> str:
    """Run the conditional and unconditional halves of each guided transformer call on two ranks and return one
    line saying so.

    The batched-CFG recipe (v1.0, v1.1) calls the transformer once per step on ``[cond ; uncond]``: rank 0
    computes the first half of that batch, rank 1 the second, and both receive the whole result (an all-gather).
    The diffusers-format recipe (v1.1-diffusers, v1.2) makes two calls per step (the condition, then the negative,
    each with its own text length), so no call holds both halves to divide: refused (use parallel 'context')."""
    check_parallel("cfg")
    transformer = _step1x_transformer(pipe, "cfg")
    version = pipe.version
    if get_version(version).sampler == SAMPLER_DIFFUSERS:
        raise UnsupportedModeError(f"parallel 'cfg' splits the batched [cond ; uncond] call of the v1.0/v1.1 recipe; "
                                   f"a {version} pipeline calls the transformer twice per step, one half at a "
                                   "time (use parallel 'context' instead)")
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(_CfgParallelHook(), CFG_PARALLEL_HOOK)
    _quiet_other_ranks(pipe)
    return "cfg parallel: the conditional and unconditional halves of each step on 2 processes"


def _step1x_transformer(pipe, mode: str) -> Step1XEditTransformer2DModel:
    transformer = getattr(pipe, "transformer", None)
    if not isinstance(transformer, Step1XEditTransformer2DModel):
        raise UnsupportedModeError(f"parallel {mode!r} runs a Step1XEditTransformer2DModel; this pipeline's "
                                   f"transformer is a {type(transformer).__name__}")
    if getattr(transformer, "_parallel_config", None) is not None or (
            HookRegistry.check_if_exists_or_initialize(transformer).get_hook(CFG_PARALLEL_HOOK) is not None):
        raise UnsupportedModeError(f"parallel {mode!r}: this transformer already runs in a parallel mode (one per "
                                   "pipeline)")
    return transformer


def _quiet_other_ranks(pipe) -> None:
    """One progress bar per run: rank 0's."""
    if not is_main_process():
        pipe.set_progress_bar_config(disable=True)


class _CfgParallelHook(ModelHook):
    """Split the transformer's batch in two (rank 0: the first half, rank 1: the second), run this rank's half
    and all-gather the halves back into the whole batch's output."""

    def pre_forward(self, module, *args, **kwargs):
        inputs = inspect.signature(Step1XEditTransformer2DModel.forward).bind(module, *args, **kwargs).arguments
        inputs.pop("self")
        batch = inputs["hidden_states"].shape[0]
        if batch % 2:
            raise UnsupportedModeError(f"parallel 'cfg' splits the transformer's batch [cond ; uncond] over 2 "
                                       f"processes; this call's batch is {batch} (guidance_scale 1 or less has no "
                                       "unconditional half: use guidance above 1, or parallel 'none')")
        rank = dist.get_rank()
        for name in BATCH_INPUTS:
            value = inputs.get(name)
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch:
                inputs[name] = value.chunk(2, dim=0)[rank]
        return (), inputs

    def post_forward(self, module, output):
        halves = [torch.empty_like(output) for _ in range(2)]
        dist.all_gather(halves, output.contiguous())
        return torch.cat(halves, dim=0)


class _EvenSequenceCheck(ModelHook):
    """Refuse, before any collective, a call whose text or image sequence the world size does not divide (Ulysses
    and ring combined split every rank's share equally)."""

    def __init__(self, world_size: int) -> None:
        super().__init__()
        self.world_size = world_size

    def pre_forward(self, module, *args, **kwargs):
        inputs = inspect.signature(Step1XEditTransformer2DModel.forward).bind(module, *args, **kwargs).arguments
        lengths = {"image": inputs["hidden_states"].shape[1], "text": inputs["encoder_hidden_states"].shape[1]}
        for what, length in lengths.items():
            if length % self.world_size:
                raise UnsupportedModeError(f"Ulysses and ring attention together split the {what} sequence equally "
                                           f"over {self.world_size} processes; its {length} tokens do not divide "
                                           "(use Ulysses or ring alone, which take any length)")
        return args, kwargs
