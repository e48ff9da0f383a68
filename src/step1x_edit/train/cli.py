"""``step1x-edit train`` (fine-tune from a TOML config) and ``merge`` (average two fine-tuned models). Handlers
import the heavy modules, so ``--help`` stays instant."""

from __future__ import annotations

import argparse
import json

from ..validate import float_argument, int_argument

MAX_STEPS = 10**9  # step1x_edit.train.config.MAX_STEPS, repeated so that --help imports nothing heavy
MERGE_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _parse_value(text: str):
    """A TOML-ish scalar from the command line: JSON when it parses (numbers, booleans, lists), else a string."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return text


def _train(args: argparse.Namespace) -> int:
    from .config import TrainingConfigError, load_config
    from .trainer import train

    overrides = {}
    for item in args.set or []:
        key, separator, value = item.partition("=")
        if not separator:
            raise TrainingConfigError(f"--set expects TABLE.FIELD=VALUE, got {item!r}")
        overrides[key] = _parse_value(value)
    for key, value in (("training.output_dir", args.output_dir), ("training.max_steps", args.max_steps),
                       ("training.until_step", args.until_step), ("model.path", args.model)):
        if value is not None:
            overrides[key] = value
    config = load_config(args.config, overrides)
    result = train(config, progress=not args.no_progress)
    if result.final_dir is None:
        print(f"stopped at step {result.step}; run the same command again to resume")
    else:
        print(f"finished at step {result.step}; result in {result.final_dir}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from ..errors import Step1XEditError
    from .merge import average_models

    out = Path(args.output)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise Step1XEditError(f"{out} is not empty; pass --overwrite to replace it")
    try:
        average_models(args.first, args.second, args.weight, out, torch_dtype=getattr(torch, MERGE_DTYPES[args.dtype]))
    except ValueError as error:
        raise Step1XEditError(str(error)) from error
    print(f"wrote {1 - args.weight:g} x {args.first} + {args.weight:g} x {args.second} to {out}")
    return 0


def register(subcommands) -> None:
    parser = subcommands.add_parser(
        "train", help="fine-tune Step1X-Edit (LoRA or full) from a TOML config",
        description="Train with rectified flow on accelerate. Run it again with the same config to resume; "
        "use `accelerate launch -m step1x_edit.cli train CONFIG` for several processes.",
    )
    parser.add_argument("config", help="training config TOML ([model], [data], [training], [validation])")
    parser.add_argument("--set", action="append", metavar="TABLE.FIELD=VALUE",
                        help="override one config field, e.g. --set training.learning_rate=5e-5 (repeatable; "
                        "default: the config's values)")
    parser.add_argument("--model", help="shortcut for --set model.path=... (default: the config's)")
    parser.add_argument("--output-dir", help="shortcut for --set training.output_dir=... (default: the config's)")
    parser.add_argument("--max-steps", type=int_argument(1, MAX_STEPS),
                        help="shortcut for --set training.max_steps=... (default: the config's)")
    parser.add_argument("--until-step", type=int_argument(1, MAX_STEPS),
                        help="stop (with a checkpoint) at this step; rerun to continue (default: run to max_steps)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_train)

    merge = subcommands.add_parser(
        "merge", help="average the weights of two fully fine-tuned models of one lineage (a model soup)",
        description="Write FIRST's pipeline with its DiT and text encoder weights averaged with SECOND's: "
        "(1 - WEIGHT) x FIRST + WEIGHT x SECOND. Both must share the autoencoder (fine-tuned from one model).",
    )
    merge.add_argument("first", help="a diffusers-layout model folder (e.g. a run's final/)")
    merge.add_argument("second", help="the model to average it with, e.g. the one it was fine-tuned from")
    merge.add_argument("--weight", type=float_argument(0, 1, low_open=True), required=True,
                       help="SECOND's share, between 0 and 1 (exclusive)")
    merge.add_argument("-o", "--output", required=True, help="the folder to write")
    merge.add_argument("--dtype", choices=list(MERGE_DTYPES), default="fp32", help="saved weights' dtype (default fp32)")
    merge.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    merge.set_defaults(handler=_merge)
