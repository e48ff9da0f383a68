"""Does a model change the shape the instruction names, or every shape a little?

On the synthetic world's shape edits (removal, replacement, colour and material change of one shape, with other
shapes left as they are) the scenes say exactly which shape the instruction names. This script edits fresh samples
of those tasks with a model and splits the change it makes (the largest channel difference from the source, 0-255
scale, per pixel) between

* the named shape's pixels (where the edit belongs),
* the pixels of the other shapes, which the target leaves unchanged,
* the background.

A model that reads the instruction puts its change on the named shape: its ``named / others`` ratio is well above
1 (the ground truth's is infinite). A model that knows the kind of edit but not which shape is meant changes all
shapes alike (a ratio near 1), and every change to another shape costs it against the identity. The samples are
the bench's fresh ones (``step1x-edit bench synthetic --generate N --seed S`` makes the same images, sample ``i``
being task ``i % 11``), so the numbers line up with its scores.

    python benchmarks/grounding.py --samples 20              # the built-in demo model
    python benchmarks/grounding.py --model DIR --samples 20
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from step1x_edit.bench.synthetic import generated_sample_seed, pipeline_editor
from step1x_edit.data.synthetic import TASKS, edit_scenes, generate_sample, render
from step1x_edit.data.synthetic.world import shape_region
from step1x_edit.pipeline import load_pipeline

SHAPE_TASKS = ("subject_removal", "subject_replacement", "color_alteration", "material_modification")


def regions(task: str, sample_seed: int, resolution: int):
    """Boolean masks (named shapes, other shapes, background) of a fresh sample, or ``None`` when its source has
    no shape besides the named ones. Checked against the generator's rendering."""
    source, target = edit_scenes(task, sample_seed, resolution)
    named = [shape for shape in source.shapes if shape not in target.shapes]
    others = [shape for shape in source.shapes if shape in target.shapes]
    if not named or not others:
        return None
    size = (source.height, source.width)
    named_mask, others_mask = np.zeros(size, bool), np.zeros(size, bool)
    for shape in named:
        named_mask |= shape_region(shape, source.width, source.height)
    for shape in others:
        others_mask |= shape_region(shape, source.width, source.height)
    others_mask &= ~named_mask
    return source, named_mask, others_mask, ~(named_mask | others_mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory (default: the built-in demo model)")
    parser.add_argument("--samples", type=int, default=20, help="fresh samples per task")
    parser.add_argument("--seed", type=int, default=7, help="the bench's sample seed (--generate ... --seed)")
    parser.add_argument("--resolution", type=int, default=96)
    parser.add_argument("--tasks", nargs="+", default=list(SHAPE_TASKS), choices=SHAPE_TASKS)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    pipe = load_pipeline(args.model, device="cpu", torch_dtype=torch.float32)
    editor = pipeline_editor(pipe, seed=0, size_level=args.resolution)
    start = time.perf_counter()
    print(
        f"{'task':22s} {'n':>3s} {'named':>7s} {'others':>7s} {'backgr.':>7s} {'target':>7s} "
        f"{'named/others':>12s} {'share on named':>14s} {'named area':>10s}"
    )
    for task in args.tasks:
        named_change, others_change, background_change, target_change, share, area = [], [], [], [], [], []
        index = TASKS.index(task)
        while len(named_change) < args.samples:
            sample_id, sample_seed = generated_sample_seed(args.seed, index)
            index += len(TASKS)
            found = regions(task, sample_seed, args.resolution)
            if found is None:
                continue
            scene, named, others, background = found
            sample = generate_sample(task, sample_seed, args.resolution, sample_id=sample_id)
            if render(scene).tobytes() != sample.source.tobytes():
                raise RuntimeError(f"the scene of {sample_id} no longer renders as the generator's sample")
            source = np.asarray(sample.source.convert("RGB"), dtype=np.float64)
            output = np.asarray(editor(sample.source, sample.instruction_en).convert("RGB"), dtype=np.float64)
            change = np.abs(output - source).max(axis=-1)
            wanted = np.abs(np.asarray(sample.target.convert("RGB"), dtype=np.float64) - source).max(axis=-1)
            named_change.append(change[named].mean())
            others_change.append(change[others].mean())
            background_change.append(change[background].mean())
            target_change.append(wanted[named].mean())
            shapes = change[named].sum() + change[others].sum()
            share.append(change[named].sum() / shapes if shapes > 0 else np.nan)
            area.append(named.sum() / (named.sum() + others.sum()))
        ratio = np.mean(named_change) / max(np.mean(others_change), 1e-9)
        print(
            f"{task:22s} {len(named_change):3d} {np.mean(named_change):7.2f} {np.mean(others_change):7.2f} "
            f"{np.mean(background_change):7.2f} {np.mean(target_change):7.2f} {ratio:12.2f} "
            f"{np.nanmean(share):14.3f} {np.mean(area):10.3f}"
        )
    print(
        f"mean change per pixel (0-255); 'target' is the ground truth's change on the named shapes; "
        f"{time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
