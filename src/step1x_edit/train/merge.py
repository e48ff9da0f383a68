"""Weight averaging of two fully fine-tuned models of one lineage (a "model soup", WiSE-FT).

Two models fine-tuned from a common ancestor can often be averaged weight by weight into one that keeps much of
what each learned (Wortsman et al., "Robust fine-tuning of zero-shot models", 2022; "Model soups", 2022). The
parts the trainer can train are averaged, the DiT (with its connector) and the text encoder (identical weights
average to themselves, so a frozen encoder stays as it was); the autoencoder must be the same in both.

    average_models("run-a/final", "run-b/final", weight=0.3, out_dir="merged")  # 0.7 x a + 0.3 x b
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ..errors import CheckpointError

AVERAGED = ("transformer", "text_encoder")


def average_models(first: str | os.PathLike, second: str | os.PathLike, weight: float,
                   out_dir: str | os.PathLike, torch_dtype: torch.dtype = torch.float32) -> Path:
    """Write to ``out_dir`` the pipeline of ``first`` whose DiT and text encoder weights are ``(1 - weight) *
    first's + weight * second's`` (computed in float32, saved in ``torch_dtype``). Both must be diffusers-layout
    pipelines of the same architecture with the same VAE; both are held in memory in float32. The folder appears
    complete or not at all."""
    from ..pipeline import load_pipeline

    weight = float(weight)
    if not 0.0 < weight < 1.0:
        raise ValueError(f"the merge weight must be between 0 and 1 (exclusive), got {weight!r}")
    out = Path(out_dir)
    pipes = [load_pipeline(path, device="cpu", torch_dtype=torch.float32) for path in (first, second)]
    ours, theirs = (pipe.vae.state_dict() for pipe in pipes)
    if ours.keys() != theirs.keys() or any(not torch.equal(ours[key], theirs[key]) for key in ours):
        raise CheckpointError(f"cannot average {first} and {second}: their autoencoders differ (the latents of "
                              "one would not be the other's)")
    for name in AVERAGED:
        ours, theirs = (getattr(pipe, name).state_dict() for pipe in pipes)
        if ours.keys() != theirs.keys() or any(ours[key].shape != theirs[key].shape for key in ours):
            raise CheckpointError(f"cannot average {first} and {second}: their {name} architectures differ")
        merged = {key: torch.lerp(value, theirs[key], weight) if value.is_floating_point() else value
                  for key, value in ours.items()}
        getattr(pipes[0], name).load_state_dict(merged)
    pipes[0].place(torch.device("cpu"), torch_dtype)
    temporary = out.with_name(out.name + ".partial")
    shutil.rmtree(temporary, ignore_errors=True)
    pipes[0].save_pretrained(temporary, safe_serialization=True)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(temporary, out)
    return out
