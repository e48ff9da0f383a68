"""Parity checks against reference outputs of the official Step1X-Edit code.

:func:`check_fixture` reads a directory in the format of ``fixtures/step1x_official/<version>/`` (a
``config.json`` plus official-format weights and recorded inputs/outputs, any size, seed or version), builds
this project's models from the official weights with :mod:`step1x_edit.checkpoints.official`, reruns every
recorded computation and returns the relative max error (max abs error / max abs reference) per output.
:data:`FIXTURE_TOLERANCES` holds the agreement expected in float32. Fixtures of the official diffusers pipelines
(v1.2, v1.1-diffusers) are checked by :mod:`step1x_edit.testing.parity_diffusers`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..checkpoints.official import load_official_transformer, load_official_vae
from ..errors import DataFormatError
from ..models.vae import decode_latents, encode_latents
from ..sampling import denoise, get_schedule, pack_latents, position_ids, resize_dimensions, unpack_latents
from .compare import relative_error

FIXTURE_TOLERANCES: dict[str, float] = {
    "dit_out": 1e-4,
    "connector_txt": 1e-4,
    "connector_vec": 1e-4,
    "denoise": 1e-3,
    "vae_encode": 1e-4,
    "vae_decode": 1e-4,
    "schedules": 0.0,
    "resize": 0.0,
}
# The sub-folders of a fixture made with the official diffusers pipelines (v1.2, v1.1-diffusers).
DIFFUSERS_FIXTURE_FOLDERS = ("models", "transformer", "denoise", "keys")
FIXTURE_FILES = (
    "config.json", "dit_official.safetensors", "dit_forward.safetensors", "denoise.safetensors",
    "vae_official.safetensors", "vae_io.safetensors",
)


def transformer_config_from_fixture(config: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`Step1XEditTransformer2DModel` config of a fixture ``config.json`` (official field names)."""
    dit, connector = config["dit"], config["connector"]
    if connector["hidden_size"] != dit["context_in_dim"]:
        raise DataFormatError(
            f"connector hidden_size {connector['hidden_size']} differs from the DiT context_in_dim "
            f"{dit['context_in_dim']}"
        )
    return {
        **{key: dit[key] for key in (
            "in_channels", "out_channels", "vec_in_dim", "context_in_dim", "hidden_size", "mlp_ratio", "num_heads",
            "depth", "depth_single_blocks", "theta", "qkv_bias",
        )},
        "axes_dim": tuple(dit["axes_dim"]),
        "mllm_hidden_size": connector["in_channels"],
        "connector_num_heads": connector["heads_num"],
        "connector_depth": connector["depth"],
        "version": config["version"],
    }


def check_fixture(directory: str | Path) -> dict[str, float]:
    """Rerun a fixture directory's recorded computations; the relative max error of each output.

    A folder in the format of the ``v1.2/`` or ``v1.1-diffusers/`` fixtures (``models/``, ``transformer/``,
    ``denoise/``, ``keys/``; made with the official diffusers pipelines) is checked by
    :func:`step1x_edit.testing.parity_diffusers.check_diffusers_fixture`, whose keys are listed there. Otherwise:

    Keys: ``dit_out``, ``connector_txt``, ``connector_vec`` (one DiT forward), ``denoise`` (the whole loop over
    the recorded timesteps, with this project's position ids and CFG), ``vae_encode``, ``vae_decode``,
    ``schedules`` (the config's table and the recorded loop's timesteps), ``resize``.
    """
    directory = Path(directory)
    if all((directory / name).is_dir() for name in DIFFUSERS_FIXTURE_FOLDERS):
        from .parity_diffusers import check_diffusers_fixture

        return check_diffusers_fixture(directory)
    absent = [name for name in FIXTURE_FILES if not (directory / name).is_file()]
    if absent:
        raise DataFormatError(f"{directory} is not a parity fixture directory: {absent} missing")
    config = json.loads((directory / "config.json").read_text())
    version = config["version"]
    results: dict[str, float] = {}

    model = load_official_transformer(
        directory / "dit_official.safetensors", version=version, config=transformer_config_from_fixture(config)
    )
    forward = load_file(directory / "dit_forward.safetensors")
    with torch.no_grad():
        out = model(
            forward["img"], forward["timesteps"], forward["llm_embedding"], forward["mask"], forward["img_ids"],
            forward["txt_ids"],
        )
        context, pooled = model.connector(forward["llm_embedding"], forward["timesteps"], forward["mask"])
    results["dit_out"] = relative_error(out, forward["out"])
    results["connector_txt"] = relative_error(context, forward["connector_txt"])
    results["connector_vec"] = relative_error(pooled, forward["connector_vec"])

    loop = load_file(directory / "denoise.safetensors")
    latent_height, latent_width = config["latent_hw"]
    embedding, mask = loop["llm_embedding"], loop["mask"]
    img_ids, txt_ids = position_ids(latent_height, latent_width, embedding.shape[1], version)
    timesteps = loop["timesteps"].tolist()

    def model_fn(tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        rows = tokens.shape[0]  # [cond ; uncond] with guidance, cond only without
        return model(tokens, t, embedding[:rows], mask[:rows], img_ids, txt_ids)

    with torch.no_grad():
        tokens = denoise(
            model_fn, pack_latents(loop["noise"]), pack_latents(loop["ref_latent"]), timesteps,
            config["cfg_guidance"], config["timesteps_truncate"],
        )
    results["denoise"] = relative_error(unpack_latents(tokens, latent_height, latent_width), loop["latent_out"])

    vae = load_official_vae(directory / "vae_official.safetensors", config=config["vae"])
    vae_io = load_file(directory / "vae_io.safetensors")
    with torch.no_grad():
        results["vae_encode"] = relative_error(encode_latents(vae, vae_io["pixels"]), vae_io["latent_mean"])
        results["vae_decode"] = relative_error(decode_latents(vae, vae_io["latent_mean"]), vae_io["decoded"])

    image_seq_len = (latent_height // 2) * (latent_width // 2)
    schedule_errors = [relative_error(torch.tensor(get_schedule(len(timesteps) - 1, image_seq_len)), loop["timesteps"])]
    for key, reference in config["schedules"].items():
        num_steps, seq_len = (int(part) for part in key.split("_"))
        schedule_errors.append(relative_error(torch.tensor(get_schedule(num_steps, seq_len)), torch.tensor(reference)))
    results["schedules"] = max(schedule_errors)

    resize_errors = []
    for case in config["resize"]:
        ours = resize_dimensions(case["width"], case["height"], case["size_level"])
        resize_errors.append(relative_error(torch.tensor(ours), torch.tensor(case["resized"])))
    results["resize"] = max(resize_errors, default=0.0)
    return results
