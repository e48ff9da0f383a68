"""The command-line options that choose and load a model, shared by ``edit``, ``serve`` and ``edit-batch``: the
model folder, version, device, dtype, the MLLM's attention, and LoRA files with their multipliers. Nothing here
loads torch or the pipeline, so building the command line stays instant.
"""

from __future__ import annotations

import argparse

from . import validate
from .acceleration.choices import CACHES, DIT_STORAGES, MEMORY_MODES, OFFLOADS, PARALLELS, QUANTIZATIONS
from .errors import Step1XEditError
from .models.presets import ATTN_IMPLEMENTATIONS
from .versions import VERSION_NAMES

# The dtype names the commands accept, as torch dtype names (None: the device's default).
DTYPES = {"auto": None, "float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def torch_dtype(name: str):
    """The torch dtype a ``--dtype`` name stands for (None for ``auto``)."""
    import torch

    resolved = DTYPES[name]
    return None if resolved is None else getattr(torch, resolved)


def lora_scales(args: argparse.Namespace) -> list[float]:
    """One multiplier per ``--lora``: none given -> 1.0 each, one given -> that one for each."""
    if args.lora_scale and not args.lora:
        raise Step1XEditError("--lora-scale needs a --lora file")
    scales = args.lora_scale or [1.0]
    if len(scales) == 1:
        return scales * len(args.lora)
    if len(scales) != len(args.lora):
        raise Step1XEditError(f"{len(args.lora)} --lora file(s) but {len(scales)} --lora-scale values; give one "
                              "--lora-scale per --lora, or a single one for all")
    return scales


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose and load a model (``edit`` and ``serve``)."""
    parser.add_argument("--model", help="a Step1X-Edit model directory (official or diffusers layout); "
                        "default: the small built-in model")
    parser.add_argument("--version", choices=VERSION_NAMES, help="the version (model line and inference recipe) to "
                        "run a single-file checkpoint as, e.g. v1.1-diffusers to run v1.1 weights as the official "
                        "diffusers pipeline does (default: detected from the checkpoint; see docs/model.md)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="auto",
                        help="weights dtype (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--attn-implementation", choices=ATTN_IMPLEMENTATIONS, default="sdpa",
                        help="the MLLM's attention (default sdpa; flash_attention_2 needs the flash-attn package)")
    parser.add_argument("--lora", action="append", default=[], metavar="FILE",
                        help="a LoRA .safetensors file (official kohya-style or peft/diffusers names); repeatable "
                        "(default: none)")
    parser.add_argument("--lora-scale", action="append", type=validate.float_argument(), default=[], metavar="S",
                        help="LoRA multiplier, a finite number (default 1.0): one for all --lora files, or one per "
                        "--lora")
    add_acceleration_arguments(parser)


def add_reasoning_arguments(parser: argparse.ArgumentParser, instructions: str = "the instruction",
                            trace: str = "") -> argparse._ArgumentGroup:
    """A v1.2 model's thinking and reflection (``edit``, ``edit-batch``, ``bench generate``), in an argument group
    that is returned (for a command's own reasoning options): ``instructions`` names what thinking rewrites,
    ``trace`` says where the trace goes."""
    group = parser.add_argument_group("thinking and reflection (v1.2 models; see docs/reasoning.md)")
    group.add_argument("--think", action=argparse.BooleanOptionalAction, default=None,
                       help=f"rewrite {instructions} into concrete edit actions first (default: off)")
    group.add_argument("--reflect", action=argparse.BooleanOptionalAction, default=None,
                       help="judge each edit, retry with a refined instruction or from the source, keep the best "
                       f"round (default: on for v1.2 models, as the official pipeline){trace}")
    # 1 to step1x_edit.reasoning.MAX_TRIES, default DEFAULT_MAX_TRIES (that module loads torch; this one must not)
    group.add_argument("--max-tries", type=validate.int_argument(1, 10), default=None,
                       help="rounds of reflection at most, 1 to 10 (default 3)")
    return group


def add_acceleration_arguments(parser: argparse.ArgumentParser) -> None:
    """The memory, speed and multi-GPU modes (docs/performance.md)."""
    group = parser.add_argument_group("memory and speed (see docs/performance.md)")
    group.add_argument("--memory", choices=MEMORY_MODES, default="auto",
                       help="memory mode, named for the GPU it fits: full (about 50 GB for the released model), 24gb, "
                       "16gb, 12gb; auto picks the fastest that fits the free GPU memory and says which (default auto)")
    group.add_argument("--offload", nargs="?", const="group", choices=OFFLOADS,
                       help="where the DiT and the MLLM live: none (on the GPU), group (streamed to the GPU block by "
                       "block; the bare flag), model (each whole model moved to the GPU while it runs) (default: "
                       "the memory mode's)")
    group.add_argument("--dit-storage", choices=DIT_STORAGES,
                       help="the DiT's weight storage: auto (the compute dtype) or fp8 (half the memory of bf16, computed "
                       "in bf16) (default: the memory mode's)")
    group.add_argument("--quantize-dit", choices=QUANTIZATIONS,
                       help="quantize the DiT's weights: int8 or fp8 (torchao, weight-only) or nf4 (bitsandbytes) "
                       "(default none)")
    group.add_argument("--quantize-mllm", choices=QUANTIZATIONS,
                       help="quantize the MLLM's (Qwen2.5-VL) weights, as --quantize-dit (default none)")
    group.add_argument("--vae-tiling", action=argparse.BooleanOptionalAction,
                       help="decode (and encode) in tiles, for large outputs on small GPUs (default: the memory mode's)")
    group.add_argument("--compile", action="store_true",
                       help="compile the DiT's blocks with torch.compile (the first edit of each size compiles; "
                       "default off)")
    group.add_argument("--attention-backend", metavar="NAME",
                       help="the DiT's attention backend (diffusers' names: native, flash, _flash_3, sage, ...; "
                       "default: native PyTorch SDPA)")
    group.add_argument("--cache", choices=CACHES, default="none",
                       help="step caching (faster, lossy): first-block or taylorseer (default none)")
    group.add_argument("--cache-threshold", type=validate.float_argument(0.0, 1.0),
                       help="--cache first-block: the first block's relative change below which a step reuses the "
                       "cache (default 0.05; higher is faster and less exact)")
    group.add_argument("--parallel", choices=PARALLELS, default="none",
                       help="multi-GPU under torchrun: cfg (the guided and unguided halves on 2 GPUs) or context "
                       "(the DiT's sequence split over the GPUs) (default none)")


def acceleration_from_args(args: argparse.Namespace):
    """The :class:`~step1x_edit.acceleration.options.Acceleration` the arguments of
    :func:`add_acceleration_arguments` choose."""
    from .acceleration.options import Acceleration

    return Acceleration(memory=args.memory, offload=args.offload, dit_storage=args.dit_storage,
                        quantize_dit=args.quantize_dit, quantize_mllm=args.quantize_mllm, vae_tiling=args.vae_tiling,
                        compile=args.compile, attention_backend=args.attention_backend, cache=args.cache,
                        cache_threshold=args.cache_threshold, parallel=args.parallel)
