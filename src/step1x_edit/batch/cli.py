"""The ``step1x-edit edit-batch`` command: a thin client of :func:`~step1x_edit.batch.engines.edit_batch`."""

from __future__ import annotations

import argparse
import sys

from ..model_options import (
    DTYPES,
    acceleration_from_args,
    add_model_arguments,
    add_reasoning_arguments,
    lora_scales,
)
from ..validate import MAX_SEED, float_argument, int_argument, text_argument


def _edit_batch(args: argparse.Namespace) -> int:
    from ..errors import Step1XEditError
    from .editor import ModelSpec
    from .engines import LocalEngine, RayEngine, edit_batch
    from .inputs import Settings

    ray_flags = {"--ray-address": args.ray_address, "--actors": args.actors, "--gpus-per-actor": args.gpus_per_actor,
                 "--cpus-per-actor": args.cpus_per_actor}
    if args.parallel != "none":
        raise Step1XEditError("--parallel applies to step1x-edit edit under torchrun; to edit a dataset on several "
                              "GPUs, run one actor per GPU (--engine ray --actors N)")
    if args.engine == "local":
        given = [flag for flag, value in ray_flags.items() if value is not None]
        if given:
            raise Step1XEditError(f"{', '.join(given)} applies to --engine ray only")
        engine = LocalEngine()
    else:
        engine = RayEngine(address=args.ray_address, actors=args.actors or 1, gpus_per_actor=args.gpus_per_actor,
                           cpus_per_actor=args.cpus_per_actor or 1.0)
    if args.model is None:
        print("step1x-edit edit-batch: no --model given: using the small built-in demo model (see its model card). "
              "Pass --model DIR for real Step1X-Edit weights.", file=sys.stderr)
    model = ModelSpec(model=args.model, version=args.version, device=args.device, dtype=DTYPES[args.dtype],
                      loras=tuple(zip(args.lora, lora_scales(args), strict=True)),
                      acceleration=acceleration_from_args(args),
                      name=args.name, think=args.think, reflect=args.reflect, max_tries=args.max_tries,
                      attn_implementation=args.attn_implementation)
    settings = Settings(num_inference_steps=args.steps, guidance_scale=args.guidance, size_level=args.size_level,
                        strength=args.strength, negative_prompt=args.negative_prompt)
    summary = edit_batch(args.input, args.out, model=model, settings=settings, seed=args.seed,
                         batch_size=args.batch_size, shard_size=args.shard_size, engine=engine,
                         instructions=args.instructions, language=args.language,
                         include_rejected=args.include_rejected, png_dir=args.png_dir, overwrite=args.overwrite,
                         progress=not args.quiet)
    rate = f" ({summary.per_second:.2f} img/s)" if summary.processed else ""
    print(f"{summary.store}: {summary.edited} of {summary.total} samples edited, {summary.failed} failed; this run "
          f"processed {summary.processed} in {summary.seconds:.1f} s{rate}", file=sys.stderr)
    for sample_id, reason in summary.failures:
        print(f"  failed {sample_id}: {reason}", file=sys.stderr)
    if summary.failed > len(summary.failures):
        print(f"  and {summary.failed - len(summary.failures)} more failed (their reasons are in the store's 'error' "
              "column)", file=sys.stderr)
    return 0


def register(subcommands) -> None:
    from ..data.limits import MAX_SHARD_SIZE, MAX_WORKERS
    from ..models.presets import MAX_INFERENCE_STEPS, MAX_SIZE_LEVEL, MIN_SIZE_LEVEL
    from .inputs import INSTRUCTIONS_FILE
    from .limits import MAX_BATCH_SIZE, MAX_GPUS_PER_ACTOR

    parser = subcommands.add_parser(
        "edit-batch", help="edit a whole dataset into a resumable store (locally or on Ray)",
        description="Edit every sample of INPUT into the store OUT (Parquet shards with completion markers); rerun "
        "the same command to resume. INPUT is a .jsonl or .csv file (image, instruction, optional id, seed and "
        f"settings), a folder of images with {INSTRUCTIONS_FILE}, or a data store (step1x-edit data ...).")
    parser.add_argument("input", help="a .jsonl or .csv file, a folder of images, or a data store")
    parser.add_argument("--out", required=True, help="the output store (a folder; created, or resumed)")
    parser.add_argument("--png-dir", help="also write each edited image there as SAMPLE_ID.png (default: the store only)")
    parser.add_argument("--instructions", help=f"a folder input's instructions file (default: FOLDER/{INSTRUCTIONS_FILE}"
                        "), one instruction a line; every image is edited with each")
    parser.add_argument("--language", choices=("en", "zh"), default="en",
                        help="a data store's instruction column: instruction_en or instruction_zh (default en)")
    parser.add_argument("--include-rejected", action="store_true",
                        help="a data store's rejected rows too (default: skipped)")
    add_model_arguments(parser)
    parser.add_argument("--name", type=text_argument(200, allow_empty=False),
                        help="the model id written in each row (default: the model folder's name)")
    parser.add_argument("--steps", type=int_argument(1, MAX_INFERENCE_STEPS), default=None,
                        help="denoising steps for samples that give none (default: the model's)")
    parser.add_argument("--guidance", type=float_argument(0.0), default=None,
                        help="guidance scale for samples that give none (default: the model's)")
    parser.add_argument("--size-level", type=int_argument(MIN_SIZE_LEVEL, MAX_SIZE_LEVEL), default=None,
                        help="working size for samples that give none (default: the model's)")
    parser.add_argument("--strength", type=float_argument(0.0, 1.0, low_open=True), default=None,
                        help="strength in (0, 1] for samples that give none (default: the model's)")
    parser.add_argument("--negative-prompt", type=text_argument(20_000), default=None,
                        help='negative instruction for samples that give none (default "")')
    parser.add_argument("--seed", type=int_argument(0, MAX_SEED), default=0,
                        help="a sample without a seed gets one from its id and this (default 0)")
    parser.add_argument("--batch-size", type=int_argument(1, MAX_BATCH_SIZE), default=4,
                        help="samples of one working size per pipeline call (default 4)")
    parser.add_argument("--shard-size", type=int_argument(1, MAX_SHARD_SIZE), default=64,
                        help="samples per shard: the unit of resuming and of a Ray actor's work (default 64)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: one pipeline in this process (default); ray: a pool of Ray actors")
    parser.add_argument("--ray-address", help="join this Ray cluster ('auto', ray://head:10001; default: a local Ray)")
    parser.add_argument("--actors", type=int_argument(1, MAX_WORKERS), default=None,
                        help="Ray actors, each holding one pipeline (default 1)")
    parser.add_argument("--gpus-per-actor", type=float_argument(0.0, MAX_GPUS_PER_ACTOR), default=None,
                        help="GPUs per Ray actor (default: 1 when the cluster has GPUs, else 0)")
    parser.add_argument("--cpus-per-actor", type=float_argument(0.0, MAX_WORKERS, low_open=True), default=None,
                        help="CPUs per Ray actor (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an output store made with other settings")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_reasoning_arguments(parser, "each instruction", "; the trace goes to the 'reasoning' column")
    parser.set_defaults(handler=_edit_batch)
