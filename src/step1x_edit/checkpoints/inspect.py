"""Describe a model directory (layout, version, parameter counts, dtypes) from file headers only.

Nothing is loaded into memory: safetensors headers give every tensor's shape and dtype, so ``describe_model``
is instant even for the 25 GB released checkpoints.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

from safetensors import safe_open

from ..errors import CheckpointError

# Transformer config fields worth showing: the sizes that tell the released model from a smaller one.
ARCHITECTURE_FIELDS = ("hidden_size", "depth", "depth_single_blocks", "num_heads", "mllm_hidden_size")


def describe_safetensors(paths: list[Path]) -> dict:
    """Parameter count and dtype(s) of the tensors stored in ``paths`` (safetensors files)."""
    if not paths:
        raise CheckpointError("no .safetensors files to describe")
    count = 0
    dtypes: Counter[str] = Counter()
    for path in paths:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    tensor = handle.get_slice(key)
                    numel = math.prod(tensor.get_shape())
                    count += numel
                    dtypes[tensor.get_dtype()] += numel
        except Exception as error:  # safetensors raises its own error types for bad headers
            raise CheckpointError(f"{path} is not a readable safetensors file: {error}") from error
    return {"parameters": count, "dtype": "/".join(name for name, _ in dtypes.most_common())}


def describe_model(model_dir: str | os.PathLike) -> dict:
    """Layout ("official" or "diffusers"), version and per-component parameter counts of a model directory."""
    path = Path(model_dir)
    if not path.is_dir():
        raise CheckpointError(f"model directory not found: {path}")
    if (path / "model_index.json").is_file():
        return _describe_diffusers(path)
    from .official import find_official_files, infer_transformer_config, read_shapes

    files = find_official_files(path)
    config = infer_transformer_config(read_shapes(files.transformer), config=files.transformer_config)
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


def _describe_diffusers(path: Path) -> dict:
    index = json.loads((path / "model_index.json").read_text())
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
            config = json.loads(config_file.read_text())
            version = config.get("version", version)
            components[name].update({field: config[field] for field in ARCHITECTURE_FIELDS if field in config})
            components[name]["prediction_type"] = config.get("prediction_type", "velocity")
        components[name].update(describe_safetensors(weights))
    return {"layout": "diffusers", "version": version, "components": components}
