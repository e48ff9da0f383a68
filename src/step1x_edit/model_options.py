"""The command-line options that choose and load a model, shared by ``edit``, ``serve`` and ``edit-batch``: the
model folder, version, device, dtype, the MLLM's attention, and LoRA files with their multipliers. Nothing here
loads torch or the pipeline, so building the command line stays instant.
"""

from __future__ import annotations

import argparse

from . import validate
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
    parser.add_argument("--offload", action="store_true", help="keep models on the CPU and move each to the GPU "
                        "only while it runs (lower GPU memory, slower)")
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
