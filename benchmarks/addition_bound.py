"""How far above the identity can any model get on the synthetic world's subject additions?

An addition instruction ("Place a medium-sized yellow diamond in the top right corner.") names the shape, its
colour, a size band and one cell of a 3 x 3 grid, but not where in that cell the shape goes: the generator draws
the position uniformly (clear of the other shapes). A model can only guess it, so the scores against the exact
ground truth have a ceiling no model can pass. This script measures that ceiling with an oracle that knows
everything about the added shape (kind, colour, exact radius) except its position, which it draws from the
generator's own distribution restricted to the named cell:

* ``identity``: the source returned unchanged;
* ``oracle sample``: the exact shape drawn at a random position of the named cell (what a perfect generative
  model's single sample scores, averaged over the draws);
* ``oracle mean``: the mean of the draws, the best deterministic answer for squared error (PSNR);
* ``best for SSIM``: an image fitted by gradient ascent to maximise the mean SSIM over ``--draws`` draws, scored
  on the true target and on as many other draws it was not fitted to.

Samples are the bench's fresh ones (``step1x-edit bench synthetic --generate``: ids ``eval-<seed>-<i>``), so
these are the same additions the demo model's fresh-sample scores use. The scenes come from the generator
itself (its addition task and canvas size), so the draws are rendered exactly as the generator renders them.

    python benchmarks/addition_bound.py --samples 12 --draws 32 --iterations 60
"""

from __future__ import annotations

import argparse
import random
from dataclasses import replace

import numpy as np
import torch

from step1x_edit.bench.synthetic import generated_sample_seed
from step1x_edit.data.synthetic import TASKS, edit_scenes, generate_sample, render
from step1x_edit.data.synthetic.language import position_phrase
from step1x_edit.metrics import psnr, ssim, structural_similarity

TASK = "subject_addition"


def _scenes(index: int, seed: int, resolution: int):
    """The source and target scenes of fresh sample ``index`` and its source and target images (uint8 RGB), as
    :func:`generated_samples` makes it (the scenes are checked against the sample's images, so a change to the
    generator cannot go unnoticed here)."""
    sample_id, sample_seed = generated_sample_seed(seed, index)
    source, target = edit_scenes(TASK, sample_seed, resolution)
    sample = generate_sample(TASK, sample_seed, resolution, sample_id=sample_id)
    for scene, image in ((source, sample.source), (target, sample.target)):
        if render(scene).tobytes() != image.tobytes():
            raise RuntimeError(f"the scenes of {sample_id} no longer render as the generator's sample")
    return source, target, np.asarray(sample.source.convert("RGB")), np.asarray(sample.target.convert("RGB"))


def _draws(source, target, count: int, rng: random.Random) -> list[np.ndarray]:
    """``count`` renderings of ``target`` with its added shape moved to random positions that the instruction
    allows (same grid cell, same placement rules as the generator)."""
    added = next(shape for shape in target.shapes if shape not in source.shapes)
    width, height, radius = target.width, target.height, added.radius
    cell = position_phrase(added.cx, added.cy, width, height)
    images = []
    for _ in range(count * 1000):
        if len(images) == count:
            return images
        cx = rng.randrange(radius + 2, width - radius - 2)
        cy = rng.randrange(radius + 2, height - radius - 2)
        if position_phrase(cx, cy, width, height) != cell:
            continue
        if any((cx - s.cx) ** 2 + (cy - s.cy) ** 2 < (radius + s.radius + 5) ** 2 for s in source.shapes):
            continue
        moved = replace(added, cx=cx, cy=cy)
        scene = replace(target, shapes=tuple(moved if s == added else s for s in target.shapes))
        images.append(np.asarray(render(scene).convert("RGB")))
    raise RuntimeError("could not place the added shape in its cell")


def _tensor(images) -> torch.Tensor:
    """uint8 RGB images [H, W, 3] as [N, 3, H, W] float32 on the 0-255 scale."""
    return torch.tensor(np.stack(images), dtype=torch.float32).permute(0, 3, 1, 2)


def _ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of 0-255 tensors, differentiable: the trainer's :func:`structural_similarity` (the bench's
    definition; SSIM does not depend on the scale, given the data range)."""
    return structural_similarity(x / 127.5 - 1, y / 127.5 - 1)


def best_for_ssim(source: np.ndarray, fit: list[np.ndarray], iterations: int, lr: float) -> np.ndarray:
    """The 8-bit image maximising the mean SSIM against the ``fit`` images, by Adam from the source."""
    targets = _tensor(fit)
    image = _tensor([source]).requires_grad_(True)
    optimizer = torch.optim.Adam([image], lr=lr)
    for _ in range(iterations):
        loss = -_ssim(image.expand_as(targets), targets).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            image.clamp_(0, 255)
    return image.detach()[0].permute(1, 2, 0).round().to(torch.uint8).numpy()


def _gain(values: list[float], baseline: list[float], digits: int) -> str:
    gains = np.asarray(values) - np.asarray(baseline)
    error = gains.std(ddof=1) / np.sqrt(len(gains)) if len(gains) > 1 else 0.0
    return f"{gains.mean():+.{digits}f} ± {error:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=12, help="additions to measure")
    parser.add_argument("--draws", type=int, default=32, help="position draws per sample (fit and check each)")
    parser.add_argument("--iterations", type=int, default=60, help="Adam steps of the SSIM fit")
    parser.add_argument("--lr", type=float, default=0.5, help="Adam learning rate (0-255 scale)")
    parser.add_argument("--resolution", type=int, default=96)
    parser.add_argument("--seed", type=int, default=7, help="the bench's --seed of the fresh samples")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    columns = ("identity", "oracle sample", "oracle mean", "best for SSIM", "identity, other draws",
               "best for SSIM, other draws")
    psnrs: dict[str, list[float]] = {name: [] for name in columns[:4]}
    ssims: dict[str, list[float]] = {name: [] for name in columns}
    addition = TASKS.index(TASK)
    for number in range(args.samples):
        index = addition + number * len(TASKS)
        source_scene, target_scene, source, target = _scenes(index, args.seed, args.resolution)
        draws = _draws(source_scene, target_scene, 2 * args.draws, random.Random(index))
        fit, check = draws[: args.draws], draws[args.draws :]
        mean = np.round(np.mean(np.stack(fit).astype(np.float64), axis=0)).astype(np.uint8)
        best = best_for_ssim(source, fit, args.iterations, args.lr)
        for name, image in (("identity", source), ("oracle mean", mean), ("best for SSIM", best)):
            psnrs[name].append(psnr(image, target))
            ssims[name].append(ssim(image, target))
        psnrs["oracle sample"].append(float(np.mean([psnr(d, target) for d in fit])))
        ssims["oracle sample"].append(float(np.mean([ssim(d, target) for d in fit])))
        others = _tensor(check)
        for name, image in (("identity, other draws", source), ("best for SSIM, other draws", best)):
            ssims[name].append(float(_ssim(_tensor([image]).expand_as(others), others).mean()))
        print(f"sample {index}: SSIM identity {ssims['identity'][-1]:.5f}, best {ssims['best for SSIM'][-1]:.5f}",
              flush=True)

    print(f"\nsubject additions, {args.samples} fresh samples (seed {args.seed}, {args.resolution} px), "
          f"{args.draws} position draws each")
    print("(gain: over the identity on the same images, mean ± standard error over the samples)")
    print(f"{'answer':28s} {'PSNR':>8s} {'PSNR gain':>15s} {'SSIM':>8s} {'SSIM gain':>19s}")
    for name in columns:
        base = "identity, other draws" if "other draws" in name else "identity"
        psnr_text = f"{'':8s} {'':15s}"
        if name in psnrs:
            psnr_text = f"{np.mean(psnrs[name]):8.3f} {_gain(psnrs[name], psnrs[base], 2):>15s}"
        print(f"{name:28s} {psnr_text} {np.mean(ssims[name]):8.5f} {_gain(ssims[name], ssims[base], 5):>19s}")


if __name__ == "__main__":
    main()
