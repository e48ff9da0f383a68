"""Synthetic data generation speed: triplets per second per core, and scaling from 1 to 2 workers.

Measures the full path a dataset takes (scene drawing, edit, PNG encoding, Parquet shard write with markers)
through the local executor (after a warm-up run, best of ``--repeats``), plus a per-task breakdown of
drawing + encoding in this process.

    python benchmarks/bench_data.py --count 2000 --resolution 256
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from step1x_edit.data import TASKS, LocalExecutor, SyntheticConfig, generate_dataset, generate_sample
from step1x_edit.data.records import encode_png


def run_store(count: int, resolution: int, workers: int, shard_size: int, antialias: bool = False) -> float:
    config = SyntheticConfig(resolution=(resolution, resolution), shard_size=shard_size, antialias=antialias)
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        generate_dataset(f"{directory}/store", count, config, LocalExecutor(workers), progress=False)
        return count / (time.perf_counter() - start)


def per_task(resolution: int, samples: int, antialias: bool) -> dict[str, float]:
    rates = {}
    for task in TASKS:
        start = time.perf_counter()
        for seed in range(samples):
            sample = generate_sample(task, seed, resolution, antialias=antialias)
            encode_png(sample.source), encode_png(sample.target)
        rates[task] = samples / (time.perf_counter() - start)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=125)
    parser.add_argument("--per-task-samples", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs per setting")
    parser.add_argument(
        "--antialias", action="store_true", help="measure anti-aliased generation (2x supersampling)"
    )
    args = parser.parse_args()
    settings = (args.resolution, args.shard_size, args.antialias)
    run_store(min(args.count, 400), args.resolution, 1, *settings[1:])  # warm caches (fonts, sprites) first
    one = max(run_store(args.count, args.resolution, 1, *settings[1:]) for _ in range(args.repeats))
    two = max(run_store(args.count, args.resolution, 2, *settings[1:]) for _ in range(args.repeats))
    result = {
        "resolution": args.resolution,
        "antialias": args.antialias,
        "count": args.count,
        "triplets_per_s_1_worker": round(one, 1),
        "triplets_per_s_2_workers": round(two, 1),
        "scaling_1_to_2": round(two / one, 2),
        "per_task_triplets_per_s_1_core": {
            k: round(v, 1)
            for k, v in per_task(args.resolution, args.per_task_samples, args.antialias).items()
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
