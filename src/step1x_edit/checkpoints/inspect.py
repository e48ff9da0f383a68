"""Describe a model directory (layout, version, parameter counts, dtypes) from file headers only.

Nothing is loaded into memory: safetensors headers give every tensor's shape and dtype, so ``describe_model``
is instant even for the 25 GB released checkpoints. The headers and config files are checked as loading checks them
(tensor dtypes and ranks, config fields), so a malformed folder is one clear
:class:`~step1x_edit.errors.CheckpointError`, not a crash.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

from ..errors import CheckpointError
from .folder import check_diffusers_folder, check_text_encoder_folder, transformer_class
from .official import (
    empty_transformer_for,
    empty_vae_for,
    find_official_files,
    read_header,
    read_json_config,
    read_shapes,
)
from .official_diffusers import (
    check_official_diffusers_folder,
    is_official_diffusers_folder,
    transformer_config_from_fork,
    transformer_files,
)

# Transformer config fields worth showing: the sizes that tell the released model from a smaller one.
ARCHITECTURE_FIELDS = ("hidden_size", "depth", "depth_single_blocks", "num_heads", "mllm_hidden_size")


def describe_safetensors(paths: list[Path]) -> dict:
    """Parameter count and dtype(s) of the tensors stored in ``paths`` (safetensors files, headers only)."""
    if not paths:
        raise CheckpointError("no .safetensors files to describe")
    count = 0
    dtypes: Counter[str] = Counter()
    for path in paths:
        for dtype, shape in read_header(path).values():
            numel = math.prod(shape)
            count += numel
            dtypes[dtype] += numel
    return {"parameters": count, "dtype": "/".join(name for name, _ in dtypes.most_common())}


def describe_model(model_dir: str | os.PathLike) -> dict:
    """Layout ("official", "official diffusers" or "diffusers"), version and per-component parameter counts of a
    model directory."""
    path = Path(model_dir)
    if not path.is_dir():
        raise CheckpointError(f"model directory {'is not a directory' if path.exists() else 'not found'}: {path}")
    if (path / "model_index.json").is_file():
        return _describe_diffusers(path)
    files = find_official_files(path)
    # Built on the meta device (no memory), so keys and shapes are checked as loading checks them.
    config = empty_transformer_for(read_shapes(files.transformer), config=files.transformer_config,
                                   source=str(files.transformer)).config
    empty_vae_for(read_shapes(files.vae), source=str(files.vae))
    if files.mllm_dir is not None:
        check_text_encoder_folder(files.mllm_dir)
    components = {
        "transformer": {
            "file": files.transformer.name,
            **{field: config[field] for field in ARCHITECTURE_FIELDS},
            **describe_safetensors([files.transformer]),
        },
        "vae": {"file": files.vae.name, **describe_safetensors([files.vae])},
    }
    if files.mllm_dir is not None:
        components["text_encoder"] = {
            "folder": files.mllm_dir.name,
            **describe_safetensors(sorted(files.mllm_dir.glob("*.safetensors"))),
        }
    return {"layout": "official", "version": config["version"], "components": components}


def _describe_official_diffusers(path: Path) -> dict:
    """An official diffusers-format repository: its version from the registry, the transformer's sizes in this
    project's field names."""
    version = check_official_diffusers_folder(path)
    config = transformer_config_from_fork(read_json_config(path / "transformer" / "config.json"), version,
                                          str(path / "transformer"))
    components = {"transformer": {"class": "Step1XEditTransformer2DModel (official diffusers fork)",
                                  **{field: config[field] for field in ARCHITECTURE_FIELDS},
                                  **describe_safetensors(transformer_files(path / "transformer"))}}
    for name in ("text_encoder", "vae"):
        weights = sorted((path / name).glob("*.safetensors"))
        if weights:
            components[name] = describe_safetensors(weights)
    return {"layout": "official diffusers", "version": version, "components": components}


def _describe_diffusers(path: Path) -> dict:
    if is_official_diffusers_folder(path):
        return _describe_official_diffusers(path)
    check_diffusers_folder(path)  # so that what follows reads well-formed files
    index = read_json_config(path / "model_index.json")
    components = {}
    version = "unknown"
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list):
            continue
        folder = path / name
        weights = sorted(folder.glob("*.safetensors"))
        if not weights:
            continue
        components[name] = {"class": spec[1]}
        config_file = folder / "config.json"
        if name == "transformer" and config_file.is_file():
            config = read_json_config(config_file)
            version = config.get("version", version)
            components[name].update({field: config[field] for field in ARCHITECTURE_FIELDS if field in config})
            components[name]["prediction_type"] = config.get("prediction_type",
                                                             transformer_class(spec).PREDICTION_TYPE)
        components[name].update(describe_safetensors(weights))
    return {"layout": "diffusers", "version": version, "components": components}
