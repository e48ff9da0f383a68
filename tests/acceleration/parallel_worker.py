"""One rank of a parallel-equality check, started by ``torchrun`` (see test_parallel.py; on GPUs, by hand):

    torchrun --nproc-per-node 2 tests/acceleration/parallel_worker.py MODES VERSION OUT.json [PRESET]

For each of the comma-separated MODES (``context``, ``cfg``), every rank builds the tiny pipeline, computes the
single-process results (its transformer on fixed inputs, then a 2-step edit; with PRESET ``mid``, that preset's
transformer on the fixed inputs only), enables the mode, computes them again, and rank 0 writes the largest
absolute differences (or the mode's refusal) to OUT.json, with what :func:`check_parallel` says to context parallel
on this machine. Without GPUs, context parallel runs diffusers' engine over gloo once one accelerator is presented
to it (``STEP1X_PRESENT_ONE_ACCELERATOR=1``, after that check): the engine uses the count only to pick each rank's
device index.
"""

import json
import os
import sys

import numpy as np
import torch
from PIL import Image

from step1x_edit.acceleration import parallel
from step1x_edit.errors import UnsupportedModeError
from step1x_edit.models.presets import build_transformer
from step1x_edit.reasoning import PLAIN
from step1x_edit.testing.tiny import tiny_pipeline


def main(modes: str, version: str, out: str, preset: str = "tiny") -> None:
    device = parallel.init_from_environment()
    report = {"world_size": torch.distributed.get_world_size(), "context_check": None}
    try:
        parallel.check_parallel("context")
    except UnsupportedModeError as error:
        report["context_check"] = str(error)
    if os.environ.get("STEP1X_PRESENT_ONE_ACCELERATOR") == "1":
        torch.accelerator.device_count = lambda: 1
    for mode in modes.split(","):
        report[mode] = _check_mode(mode, version, preset, device)
    if parallel.is_main_process():
        with open(out, "w") as file:
            json.dump(report, file)
    torch.distributed.destroy_process_group()


def _check_mode(mode: str, version: str, preset: str, device: torch.device) -> dict:
    pipe = tiny_pipeline(seed=0, version=version)
    if preset != "tiny":  # the transformer alone: the tiny MLLM and VAE do not fit it
        torch.manual_seed(0)
        pipe.register_modules(transformer=build_transformer(preset, version=version).eval())
    pipe.to(device)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8))
    forward_inputs = {length: _forward_inputs(pipe.transformer, length, device) for length in (16, 15)}

    def results() -> dict[str, torch.Tensor]:
        with torch.no_grad():
            found = {f"forward_text_{length}": pipe.transformer(**inputs) for length, inputs in forward_inputs.items()}
        if preset == "tiny":
            found["edit"] = pipe(image=image, prompt="make it blue", num_inference_steps=2, size_level=64,
                                 guidance_scale=4.0, generator=torch.Generator().manual_seed(3), output_type="pt",
                                 reasoning=PLAIN if version == "v1.2" else None).images
        return found

    single = results()
    try:
        enabled = parallel.enable_context_parallel(pipe) if mode == "context" else parallel.enable_cfg_parallel(pipe)
    except UnsupportedModeError as error:
        return {"refused": str(error)}
    found = results()
    return {"refused": None, "enabled": enabled,
            "max_abs_diff": {name: (found[name] - single[name]).abs().max().item() for name in single},
            "shapes_equal": all(found[name].shape == single[name].shape for name in single)}


def _forward_inputs(transformer, text_length: int, device) -> dict[str, torch.Tensor]:
    """Transformer inputs for a batch of 2 (cond ; uncond) with 2 x 8 image tokens and ``text_length`` text tokens."""
    generator = torch.Generator().manual_seed(1)
    tokens = 8
    inputs = {
        "hidden_states": torch.randn(2, 2 * tokens, 64, generator=generator),
        "timestep": torch.rand(2, generator=generator),
        "encoder_hidden_states": torch.randn(2, text_length, transformer.config.mllm_hidden_size, generator=generator),
        "encoder_attention_mask": (torch.arange(text_length)[None] < torch.tensor([[text_length - 3], [5]])).long(),
        "img_ids": torch.randint(0, 8, (2 * tokens, 3), generator=generator).float(),
        "txt_ids": torch.zeros(text_length, 3),
    }
    if transformer.text_token_mapping is not None:
        inputs["text_embeddings"] = torch.randn(2, text_length, transformer.config.mllm_hidden_size,
                                                generator=generator)
        inputs["text_mask"] = (torch.arange(text_length)[None] % 3 == 0).expand(2, -1).long()
    return {name: value.to(device) for name, value in inputs.items()}


if __name__ == "__main__":
    main(*sys.argv[1:])
