"""The official diffusers-format Step1X-Edit repositories (``Step1X-Edit-v1p1-diffusers``, ``Step1X-Edit-v1p2``,
``Step1X-Edit-v1p2-preview``), read as they are downloaded.

Layout::

    model_index.json        _class_name Step1XEditPipeline (v1.1) or Step1XEditPipelineV1P2 (v1.2), components
                            named after the official diffusers fork's classes
    transformer/            config.json (the fork's field names) + diffusion_pytorch_model[-0000i-of-0000n].safetensors
                            (+ .index.json when sharded), the fork's tensor names
    text_encoder/           Qwen2.5-VL (v1.2: fine-tuned) in transformers' layout
    vae/, scheduler/        AutoencoderKL and FlowMatchEulerDiscreteScheduler configs (stock diffusers)
    processor/              tokenizer + Qwen2-VL image processor files

The fork's transformer is this project's :class:`~step1x_edit.models.transformer.Step1XEditTransformer2DModel`
under other names: :func:`transformer_config_from_fork` maps its config, :func:`fork_key_table` its tensors (the
DiT keeps diffusers' FLUX names except ``time_embed.{in,out}_layer`` / ``vec_embed.{in,out}_layer``; the connector
keeps the official single-file names ``connector.S.*``). Loading is strict (every tensor consumed, every shape
checked) and streaming (one tensor at a time, shard by shard), as for the single-file layout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights

from .. import validate
from ..errors import CheckpointError, InvalidValueError
from ..models.transformer import Step1XEditTransformer2DModel
from ..versions import detect_diffusers_version, get_version
from .folder import (
    check_processor_folder,
    check_scheduler_config,
    check_text_encoder_folder,
    check_vae_folder,
    weights_header,
)
from .official import (
    KeyRule,
    _check_keys,
    _stream_into,
    checked_transformer_config,
    read_json_config,
    transformer_key_table,
)

INDEX_FILE = "model_index.json"
COMPONENTS = ("transformer", "text_encoder", "vae", "scheduler", "processor")
# The classes the official model_index.json names, per component (the fork's transformer; stock classes otherwise).
FORK_COMPONENT_CLASSES = {
    "transformer": {("diffusers", "Step1XEditTransformer2DModel")},
    "text_encoder": {("transformers", "Qwen2_5_VLForConditionalGeneration")},
    "vae": {("diffusers", "AutoencoderKL")},
    "scheduler": {("diffusers", "FlowMatchEulerDiscreteScheduler")},
    "processor": {("transformers", "Qwen2_5_VLProcessor"), ("transformers", "AutoProcessor")},
}
# The fork's transformer config fields and the values this project's model supports for the fixed ones.
FORK_FIXED_FIELDS = {"patch_size": 1, "timestep_in_dim": 256, "guidance_embeds": False}
FORK_FIELDS = ("in_channels", "out_channels", "num_layers", "num_single_layers", "attention_head_dim",
               "num_attention_heads", "joint_attention_dim", "vector_in_dim", "connector_in_channels",
               "connector_hidden_size", "connector_heads_num", "connector_depth", "axes_dims_rope",
               "enable_text_token_mapping", *FORK_FIXED_FIELDS)
# Our module names of the DiT embedders -> the fork's.
_FORK_RENAMES = {
    "time_text_embed.timestep_embedder.linear_1": "time_embed.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_embed.out_layer",
    "time_text_embed.text_embedder.linear_1": "vec_embed.in_layer",
    "time_text_embed.text_embedder.linear_2": "vec_embed.out_layer",
}


def is_official_diffusers_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds an official diffusers-format repository: a ``model_index.json`` whose transformer is
    the fork's ``Step1XEditTransformer2DModel`` from ``diffusers``."""
    index_file = Path(path) / INDEX_FILE
    if not index_file.is_file():
        return False
    spec = read_json_config(index_file).get("transformer")
    return isinstance(spec, list) and tuple(spec) in FORK_COMPONENT_CLASSES["transformer"]


def transformer_config_from_fork(fork: Mapping[str, Any], version: str, source: str) -> dict[str, Any]:
    """The :class:`Step1XEditTransformer2DModel` config of the fork's transformer ``config.json`` fields ``fork``
    (bookkeeping ``_*`` entries ignored) for ``version``; raises :class:`CheckpointError` naming ``source`` and the
    field when one is missing, unknown, out of range or not supported."""
    fields = {key: value for key, value in fork.items() if not key.startswith("_")}
    unknown = sorted(set(fields) - set(FORK_FIELDS))
    if unknown:
        raise CheckpointError(f"{source}: unknown field(s) {unknown}; a Step1X-Edit transformer config has "
                              f"{list(FORK_FIELDS)}")
    required = [name for name in FORK_FIELDS if name not in FORK_FIXED_FIELDS
                and name not in ("out_channels", "enable_text_token_mapping")]
    missing = [name for name in required if name not in fields]
    if missing:
        raise CheckpointError(f"{source}: field(s) {missing} missing")
    for name, value in FORK_FIXED_FIELDS.items():
        if fields.get(name, value) != value:
            raise CheckpointError(f"{source}: {name} is {fields[name]!r}; Step1X-Edit models have {name}={value!r}")
    try:
        heads = validate.integer("num_attention_heads", fields["num_attention_heads"], 1, 1024)
        head_dim = validate.integer("attention_head_dim", fields["attention_head_dim"], 1, 65_536)
        axes = fields["axes_dims_rope"]
        if not isinstance(axes, (list, tuple)):
            raise InvalidValueError(f"axes_dims_rope must be a list of integers, got {axes!r}")
    except InvalidValueError as error:
        raise CheckpointError(f"{source}: {error}") from None
    out_channels = fields.get("out_channels")
    config = {
        "in_channels": fields["in_channels"],
        "out_channels": fields["in_channels"] if out_channels is None else out_channels,
        "vec_in_dim": fields["vector_in_dim"],
        "context_in_dim": fields["joint_attention_dim"],
        "hidden_size": heads * head_dim,
        "mlp_ratio": 4.0,
        "num_heads": heads,
        "depth": fields["num_layers"],
        "depth_single_blocks": fields["num_single_layers"],
        "axes_dim": tuple(axes),
        "theta": 10000,
        "qkv_bias": True,
        "mllm_hidden_size": fields["connector_in_channels"],
        "connector_num_heads": fields["connector_heads_num"],
        "connector_depth": fields["connector_depth"],
        "version": version,
        "prediction_type": "velocity",
    }
    checked_transformer_config(config, source)
    if fields["connector_hidden_size"] != fields["joint_attention_dim"]:
        raise CheckpointError(f"{source}: connector_hidden_size {fields['connector_hidden_size']} differs from "
                              f"joint_attention_dim {fields['joint_attention_dim']} (the connector feeds the DiT)")
    if fields.get("enable_text_token_mapping", False) != get_version(version).text_token_mapping:
        raise CheckpointError(f"{source}: enable_text_token_mapping={fields.get('enable_text_token_mapping')} does "
                              f"not match version {version}")
    return config


def fork_config_from_transformer(config: Mapping[str, Any]) -> dict[str, Any]:
    """The fork's transformer ``config.json`` fields of a :class:`Step1XEditTransformer2DModel` config (the inverse
    of :func:`transformer_config_from_fork`)."""
    return {
        "patch_size": 1, "in_channels": config["in_channels"], "out_channels": config["out_channels"],
        "num_layers": config["depth"], "num_single_layers": config["depth_single_blocks"],
        "attention_head_dim": config["hidden_size"] // config["num_heads"],
        "num_attention_heads": config["num_heads"], "joint_attention_dim": config["context_in_dim"],
        "timestep_in_dim": 256, "vector_in_dim": config["vec_in_dim"],
        "connector_in_channels": config["mllm_hidden_size"], "connector_hidden_size": config["context_in_dim"],
        "connector_heads_num": config["connector_num_heads"], "connector_depth": config["connector_depth"],
        "guidance_embeds": False, "axes_dims_rope": list(config["axes_dim"]),
        "enable_text_token_mapping": get_version(config["version"]).text_token_mapping,
    }


def fork_key_table(config: Mapping[str, Any]) -> list[KeyRule]:
    """The fork's tensor name -> this project's parameter(s) rules for a model with ``config`` (as
    :class:`~step1x_edit.checkpoints.official.KeyRule`, ``official`` holding the fork's name)."""
    connector = [rule for rule in transformer_key_table(config) if rule.official.startswith("connector.")]
    connector_targets = {target for rule in connector for target in rule.targets}
    with init_empty_weights():
        model = Step1XEditTransformer2DModel(**config)
    rules = list(connector)
    for name in model.state_dict():
        if name in connector_targets:
            continue
        module, _, leaf = name.rpartition(".")
        rules.append(KeyRule(f"{_FORK_RENAMES.get(module, module)}.{leaf}", (name,)))
    return rules


def official_to_fork(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A single-file (official names) DiT state dict in the fork's names, as the official converter writes it."""
    ours = {}
    for rule in transformer_key_table(config):
        ours.update(zip(rule.targets, rule.to_diffusers(state[rule.official]), strict=True))
    return {rule.official: rule.to_official([ours[target] for target in rule.targets]) for rule in fork_key_table(config)}


def read_index(path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """The version and the ``model_index.json`` of the official diffusers-format repository ``path``, its
    component classes checked; raises :class:`CheckpointError` naming the file and the reason."""
    path = Path(path)
    index_file = path / INDEX_FILE
    index = read_json_config(index_file)
    for name in COMPONENTS:
        spec = index.get(name)
        allowed = FORK_COMPONENT_CLASSES[name]
        if not (isinstance(spec, list) and all(isinstance(part, str) for part in spec) and tuple(spec) in allowed):
            raise CheckpointError(f"{index_file}: {name} must be one of {sorted(map(list, allowed))}, got {spec!r}")
    pipeline_class = index.get("_class_name")
    transformer_config = read_json_config(path / "transformer" / "config.json")
    version = detect_diffusers_version(pipeline_class, transformer_config, str(index_file))
    return version, index


def transformer_files(folder: Path) -> list[Path]:
    """The weight files of the fork's ``transformer/`` folder (one file, or the shards its index lists), headers
    checked."""

    return sorted({file for _, _, file in weights_header(folder, "diffusion_pytorch_model").values()})


def empty_fork_transformer_for(
    fork_config: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], version: str, source: str
) -> tuple[Step1XEditTransformer2DModel, list[KeyRule]]:
    """A meta-device model (no memory) for the fork's transformer config ``fork_config`` of ``version`` that
    accepts exactly the tensors ``shapes`` (fork name -> shape), and its key table; raises
    :class:`CheckpointError` naming ``source`` and the missing, unexpected or misshapen tensors."""
    config = transformer_config_from_fork(fork_config, version, source)
    try:
        with init_empty_weights():
            model = Step1XEditTransformer2DModel(**config)
    except ValueError as error:
        raise CheckpointError(f"{source}: {error}") from error
    rules = fork_key_table(model.config)
    _check_keys(source, {key: tuple(shape) for key, shape in shapes.items()}, rules, model, "")
    return model, rules


def empty_fork_transformer(folder: str | os.PathLike, version: str) -> tuple[Step1XEditTransformer2DModel, list[KeyRule]]:
    """:func:`empty_fork_transformer_for` the fork's ``transformer/`` ``folder`` (its config and weight headers)."""

    folder = Path(folder)
    shapes = {key: shape for key, (_, shape, _) in weights_header(folder, "diffusion_pytorch_model").items()}
    return empty_fork_transformer_for(read_json_config(folder / "config.json"), shapes, version, str(folder))


def load_fork_transformer(
    folder: str | os.PathLike, version: str, torch_dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Step1XEditTransformer2DModel:
    """The fork's ``transformer/`` folder (single file or shards) as a :class:`Step1XEditTransformer2DModel` of
    ``version``, strictly and streaming."""
    from .official import read_shapes

    folder = Path(folder)
    model, rules = empty_fork_transformer(folder, version)
    for file in transformer_files(folder):
        keys = set(read_shapes(file))
        _stream_into(model, file, [rule for rule in rules if rule.official in keys], torch_dtype, device,
                     check_complete=False)
    empty = [name for name, param in model.named_parameters() if param.device.type == "meta"]
    if empty:
        raise CheckpointError(f"{folder} left parameters unset: {empty[:5]}")
    return model.eval()


def check_official_diffusers_folder(path: str | os.PathLike) -> str:
    """Check an official diffusers-format repository from its JSON files and weight headers (component classes,
    version, every transformer tensor against the model its config builds, the VAE, text encoder, processor and
    scheduler as :mod:`step1x_edit.checkpoints.folder` checks them); its version. Nothing is loaded."""
    path = Path(path)
    version, _ = read_index(path)
    empty_fork_transformer(path / "transformer", version)
    check_vae_folder(path / "vae", "AutoencoderKL")
    check_text_encoder_folder(path / "text_encoder")
    check_processor_folder(path / "processor")
    check_scheduler_config(path / "scheduler" / "scheduler_config.json")
    return version


def transformer_state_dict_to_fork(model: Step1XEditTransformer2DModel) -> dict[str, torch.Tensor]:
    """The fork-named state dict of ``model`` (what the official diffusers repositories store)."""
    state = model.state_dict()
    return {rule.official: rule.to_official([state[target] for target in rule.targets]).contiguous()
            for rule in fork_key_table(model.config)}


