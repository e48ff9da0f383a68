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
    python benchmarks/grounding.py --by-reference            # also split by how the instruction names the shape

The instructions name a shape by its colour and kind, its colour alone, its kind alone, or its place or size
("the leftmost shape", "the star on the right", "the largest shape"), whichever picks it out in the scene;
``--by-reference`` prints a row per way, since a model may learn to find a shape by colour long before it can
compare positions.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import defaultdict

import numpy as np
import torch

from step1x_edit.bench.synthetic import generated_sample_seed, pipeline_editor
from step1x_edit.data.synthetic import TASKS, edit_scenes, generate_sample, render
from step1x_edit.data.synthetic.world import shape_region
from step1x_edit.pipeline import load_pipeline

SHAPE_TASKS = ("subject_removal", "subject_replacement", "color_alteration", "material_modification")


def regions(task: str, sample_seed: int, resolution: int):
    """The source scene of a fresh sample, boolean masks of its named shapes, other shapes and background, and the
    named shapes; ``None`` when the source has no shape besides the named ones."""
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
    return source, named_mask, others_mask, ~(named_mask | others_mask), named


PLACE_WORDS = re.compile(r"\b(left|right|top|bottom|leftmost|rightmost|topmost|largest|smallest|big)\b")


def reference_kind(instruction: str, named: list) -> str:
    """How an English instruction names its shape: ``place or size``, ``colour and kind``, ``colour`` or ``kind``."""
    text = instruction.lower()
    if PLACE_WORDS.search(text):
        return "place or size"
    shape = named[0]
    has_colour = re.search(rf"\b{shape.color}\b", text) is not None
    has_kind = re.search(rf"\b{shape.kind}\b", text) is not None
    return "colour and kind" if has_colour and has_kind else "colour" if has_colour else "kind"


def summary_line(label: str, rows: list[dict]) -> str:
    """One printed row: mean changes, their ratio, the named shape's share of the shapes' change against its share
    of their area, and that excess (paired by sample) with its standard error."""
    named, others = np.mean([r["named"] for r in rows]), np.mean([r["others"] for r in rows])
    changed = [r for r in rows if r["named_sum"] + r["others_sum"] > 0]
    share = np.array([r["named_sum"] / (r["named_sum"] + r["others_sum"]) for r in changed])
    excess = share - np.array([r["area"] for r in changed])
    spread = excess.std(ddof=1) / np.sqrt(len(excess)) if len(excess) > 1 else float("nan")
    return (
        f"{label:22s} {len(rows):3d} {named:7.2f} {others:7.2f} {np.mean([r['background'] for r in rows]):7.2f} "
        f"{np.mean([r['target'] for r in rows]):7.2f} {named / max(others, 1e-9):12.2f} "
        f"{share.mean() if len(share) else float('nan'):14.3f} {np.mean([r['area'] for r in rows]):10.3f} "
        f"{excess.mean() if len(excess) else float('nan'):+8.3f} ± {spread:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory (default: the built-in demo model)")
    parser.add_argument("--samples", type=int, default=20, help="fresh samples per task")
    parser.add_argument("--seed", type=int, default=7, help="the bench's sample seed (--generate ... --seed)")
    parser.add_argument("--resolution", type=int, default=96)
    parser.add_argument("--tasks", nargs="+", default=list(SHAPE_TASKS), choices=SHAPE_TASKS)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--by-reference", action="store_true",
                        help="also a row per way the instruction names the shape (colour, kind, place, ...)")
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
        f"{'named/others':>12s} {'share on named':>14s} {'named area':>10s} {'share - area':>16s}"
    )
    for task in args.tasks:
        rows = []
        index = TASKS.index(task)
        while len(rows) < args.samples:
            sample_id, sample_seed = generated_sample_seed(args.seed, index)
            index += len(TASKS)
            found = regions(task, sample_seed, args.resolution)
            if found is None:
                continue
            scene, named, others, background, named_shapes = found
            sample = generate_sample(task, sample_seed, args.resolution, sample_id=sample_id)
            if render(scene).tobytes() != sample.source.tobytes():
                raise RuntimeError(f"the scene of {sample_id} no longer renders as the generator's sample")
            source = np.asarray(sample.source.convert("RGB"), dtype=np.float64)
            output = np.asarray(editor(sample.source, sample.instruction_en).convert("RGB"), dtype=np.float64)
            change = np.abs(output - source).max(axis=-1)
            wanted = np.abs(np.asarray(sample.target.convert("RGB"), dtype=np.float64) - source).max(axis=-1)
            rows.append({
                "reference": reference_kind(sample.instruction_en, named_shapes),
                "named": change[named].mean(), "others": change[others].mean(),
                "background": change[background].mean(), "target": wanted[named].mean(),
                "named_sum": change[named].sum(), "others_sum": change[others].sum(),
                "area": named.sum() / (named.sum() + others.sum()),
            })
        print(summary_line(task, rows))
        if args.by_reference:
            groups = defaultdict(list)
            for row in rows:
                groups[row["reference"]].append(row)
            for reference in sorted(groups):
                print(summary_line(f"  {reference}", groups[reference]))
    print(
        f"mean change per pixel (0-255); 'target' is the ground truth's change on the named shapes; 'share - area' "
        f"is per sample, with its standard error (0: the change spread over the shapes by area); "
        f"{time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
