"""Training throughput and peak memory on CPU: the real :func:`~step1x_edit.train.trainer.train` per configuration.

Two model sizes, random weights:

* ``tiny``: :func:`step1x_edit.testing.tiny.tiny_pipeline` (the ``tiny`` presets) at 64 px;
* ``demo``: the demo model's architecture from ``recipes/demo.toml`` (its ``[transformer]``, ``[text_encoder]`` and
  ``[vae]`` autoencoder, assembled by :func:`step1x_edit.demo.build.assemble`) at the recipe's
  resolution (96 px).

Each is trained (full fine-tuning by default) on a generated store of ``--samples`` triplets at its resolution,
with and without gradient checkpointing and with and without the feature cache (without it every step runs the
VAE encoder and the MLLM on the batch). Every configuration runs in a fresh subprocess, so its peak RSS is its
own. Throughput comes from the run's ``logs/loss.csv`` (columns step, loss, lr, samples, seconds), leaving out
the first ``--warmup`` steps. The cache is filled beforehand in a subprocess of its own, whose time and peak RSS
are reported separately.

    python benchmarks/bench_train.py --steps 20 --batch-size 4 --threads 1
    python benchmarks/bench_train.py --configs demo demo-gc-nocache --json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo.toml"
MODELS = ("tiny", "demo")
TINY_RESOLUTION = 64
CONFIGS = tuple(f"{model}{gc}{cache}" for model in MODELS for gc in ("", "-gc") for cache in ("", "-nocache"))


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB: ``VmHWM`` of /proc/self/status (``getrusage``'s ``ru_maxrss``
    would also count the parent's peak, which a child started with vfork + exec inherits)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not in /proc/self/status (Linux only)")


def prepare_tiny(work: Path, samples: int) -> tuple[Path, Path]:
    """The tiny pipeline (small MLLM image budget, conditions of 96 positions) and a 64-px store."""
    from transformers import Qwen2VLImageProcessorPil

    from step1x_edit.data.generate import SyntheticConfig, generate_dataset
    from step1x_edit.models.mllm import build_processor
    from step1x_edit.testing.tiny import tiny_pipeline, tiny_tokenizer

    model_dir, store = work / "tiny" / "model", work / "tiny" / "data"
    pipe = tiny_pipeline(seed=0)
    pipe.processor = build_processor(tiny_tokenizer(), Qwen2VLImageProcessorPil(min_pixels=4 * 28 * 28,
                                                                               max_pixels=16 * 28 * 28))
    pipe.register_to_config(max_sequence_length=96, default_size_level=TINY_RESOLUTION)
    pipe.save_pretrained(model_dir, safe_serialization=True)
    generate_dataset(store, samples, SyntheticConfig(resolution=(TINY_RESOLUTION, TINY_RESOLUTION)), progress=False)
    return model_dir, store


def prepare_demo(work: Path, samples: int) -> tuple[Path, Path]:
    """The demo architecture (the recipe's autoencoder built from the store, random DiT) and a store at its size."""
    from step1x_edit.data.generate import SyntheticConfig, generate_dataset
    from step1x_edit.demo.build import assemble, build_vae
    from step1x_edit.demo.recipe import load_recipe

    recipe = load_recipe(RECIPE)
    resolution = int(recipe["demo"]["resolution"])
    store = work / "demo" / "data"
    generate_dataset(store, samples, SyntheticConfig(resolution=(resolution, resolution)), progress=False)
    if recipe["vae"].get("kind", "flux") == "flux":
        recipe["vae"]["steps"] = 1  # an (almost) untrained VAE of the recipe's architecture is enough to time steps
    vae_dir = build_vae(recipe, work / "demo", store, progress=False)
    return assemble(recipe, work / "demo", store, vae_dir), store


def tables(args: argparse.Namespace, work: Path, name: str, model_dir: Path, store: Path) -> dict:
    """The training config of configuration ``name`` (e.g. ``demo-gc-nocache``) as nested tables."""
    from step1x_edit.demo.recipe import load_recipe

    model = name.split("-")[0]
    resolution = TINY_RESOLUTION if model == "tiny" else int(load_recipe(RECIPE)["demo"]["resolution"])
    return {
        "model": {"path": str(model_dir), "mode": args.mode},
        "data": {"store": str(store), "resolution": resolution, "cache": "-nocache" not in name,
                 "cache_dir": str(work / model / "cache")},
        "training": {"output_dir": str(work / "runs" / name), "max_steps": args.steps, "batch_size": args.batch_size,
                     "gradient_checkpointing": "-gc" in name, "num_threads": args.threads, "seed": 0,
                     "checkpoint_every": args.steps, "report_to": ["csv"]},
        "validation": {"every": -1},
    }


def child_fill(values: dict) -> dict:
    """Fill the feature cache the way :func:`~step1x_edit.train.trainer.train` does; time it."""
    import torch

    from step1x_edit.pipeline import load_pipeline
    from step1x_edit.train.config import config_from_dict
    from step1x_edit.train.data import (
        LANGUAGE_KEYS,
        FeatureCache,
        FeatureSource,
        Featurizer,
        load_examples,
        model_fingerprint,
        resolve_store,
    )

    config = config_from_dict(values)
    torch.set_num_threads(config.training.num_threads)
    pipe = load_pipeline(config.model.path, device="cpu", torch_dtype=torch.float32)
    examples = load_examples(config.data, resolve_store(config.data, config.training.output_dir))
    languages = LANGUAGE_KEYS[config.data.language]
    fingerprint = model_fingerprint(pipe, config.data.resolution, languages)
    source = FeatureSource(examples, config.data.resolution, Featurizer(pipe, languages),
                           FeatureCache(config.data.cache_dir, fingerprint))
    start = time.perf_counter()
    filled = source.fill(progress=False)
    seconds = time.perf_counter() - start
    return {"samples": filled, "seconds": seconds, "samples_per_s": filled / seconds if filled else None,
            "peak_rss_mb": _peak_rss_mb()}


def child_train(values: dict, warmup: int) -> dict:
    """Run :func:`~step1x_edit.train.trainer.train` and read its throughput after ``warmup`` steps from the CSV."""
    from step1x_edit.train.config import config_from_dict
    from step1x_edit.train.trainer import train

    config = config_from_dict(values)
    start = time.perf_counter()
    train(config, progress=False)
    total = time.perf_counter() - start
    with open(Path(config.training.output_dir) / "logs" / "loss.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    first, last = rows[warmup - 1], rows[-1]
    steps = int(last["step"]) - int(first["step"])
    seconds = float(last["seconds"]) - float(first["seconds"])
    samples = int(last["samples"]) - int(first["samples"])
    transformer = json.loads((Path(config.model.path) / "transformer" / "config.json").read_text())
    return {
        "timed_steps": steps, "seconds_per_step": seconds / steps, "samples_per_s": samples / seconds,
        "train_call_seconds": total, "peak_rss_mb": _peak_rss_mb(), "final_loss": float(last["loss"]),
        "dit_hidden_size": transformer["hidden_size"],
    }


def _run_child(kind: str, values: dict, args: argparse.Namespace) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    command = [sys.executable, __file__, "--child", kind, "--values", json.dumps(values), "--warmup", str(args.warmup)]
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise SystemExit(f"the {kind} run failed:\n{run.stderr[-4000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def markdown(results: dict, args: argparse.Namespace) -> str:
    lines = [
        f"model.mode = {args.mode}, batch {args.batch_size}, {args.threads} thread(s), "
        f"{args.steps} steps ({args.warmup} warm-up steps not timed), float32 CPU.",
        "",
        "| configuration | gradient checkpointing | feature cache | s/step | samples/s | peak RSS (MiB) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for name, row in results["train"].items():
        lines.append(
            f"| {name} | {'yes' if '-gc' in name else 'no'} | {'no' if '-nocache' in name else 'yes'} | "
            f"{row['seconds_per_step']:.3f} | {row['samples_per_s']:.1f} | {row['peak_rss_mb']:.0f} |"
        )
    if results["fill"]:
        lines += ["", "| cache fill | samples | seconds | samples/s | peak RSS (MiB) |", "|---|---:|---:|---:|---:|"]
        for model, row in results["fill"].items():
            rate = f"{row['samples_per_s']:.1f}" if row["samples_per_s"] else "-"
            lines.append(f"| {model} | {row['samples']} | {row['seconds']:.1f} | {rate} | {row['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS,
                        help="MODEL[-gc][-nocache]: -gc = gradient checkpointing, -nocache = no feature cache")
    parser.add_argument("--steps", type=int, default=20, help="optimisation steps per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--samples", type=int, default=64, help="triplets in each generated store")
    parser.add_argument("--mode", choices=["full", "lora"], default="full", help="model.mode of the runs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of Markdown")
    parser.add_argument("--child", choices=["fill", "train"], help=argparse.SUPPRESS)
    parser.add_argument("--values", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "fill":
        print(json.dumps(child_fill(json.loads(args.values))))
        return
    if args.child == "train":
        print(json.dumps(child_train(json.loads(args.values), args.warmup)))
        return
    if not 1 <= args.warmup < args.steps:
        parser.error("--warmup must be at least 1 and below --steps")

    results: dict = {"settings": {key: getattr(args, key) for key in
                                  ("steps", "warmup", "batch_size", "threads", "samples", "mode")},
                     "fill": {}, "train": {}}
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        prepared = {}
        for model in MODELS:
            if any(name.split("-")[0] == model for name in args.configs):
                prepare = prepare_tiny if model == "tiny" else prepare_demo
                prepared[model] = prepare(work, args.samples)
        for name in args.configs:
            model = name.split("-")[0]
            values = tables(args, work, name, *prepared[model])
            if values["data"]["cache"] and model not in results["fill"]:
                results["fill"][model] = _run_child("fill", values, args)
            results["train"][name] = _run_child("train", values, args)
            print(f"{name}: {results['train'][name]['seconds_per_step']:.3f} s/step", file=sys.stderr)
    print(json.dumps(results, indent=1) if args.json else markdown(results, args))


if __name__ == "__main__":
    main()
