"""Checks of a diffusers-layout model folder, made before anything is loaded from it.

diffusers builds each component from its ``config.json`` and only then reads the weights, so a malformed or
hostile folder would fail deep inside a library (a traceback), allocate an absurd model first (``num_layers`` of a
billion), or import whatever class ``model_index.json`` names. :func:`check_diffusers_folder` reads JSON files and
safetensors headers only:

* ``model_index.json`` names the classes this project writes (the demo model's transformer included), and its
  settings are in range (an official released repository, which names the diffusers fork's classes, is checked by
  :func:`step1x_edit.checkpoints.official_diffusers.check_official_diffusers_folder` instead, with the checks
  below);
* every config file is a JSON object whose sizes are integers within bounds, none of them missing;
* the transformer and VAE weights hold exactly the tensors (names and shapes) of the model their config builds
  (the class ``model_index.json`` names, on the meta device: no memory); the text encoder's weights hold the
  layers and blocks its config says, each tensor of its model's shape; every weight is floating point; the
  scheduler and image-processor settings are within bounds.

Each refusal is one :class:`~step1x_edit.errors.CheckpointError` naming the file and the field or tensor.
:func:`check_text_encoder_folder` and :func:`check_processor_folder` also serve the Qwen2.5-VL folder of the
official layout.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from accelerate import init_empty_weights
from diffusers import AutoencoderKL
from torch import nn
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from .. import validate
from ..errors import CheckpointError, InvalidValueError
from ..models.mllm import check_image_processor_config, check_text_encoder_config
from ..models.patch_vae import PatchAutoencoder
from ..models.patch_vae import check_config as check_patch_vae_config
from ..models.presets import PIPELINE_SETTINGS, check_pipeline_settings, transformer_config
from ..models.transformer import check_config as check_transformer_config
from ..models.vae import check_diffusers_config as check_vae_config
from .official import check_weights, key_mismatch, read_header, read_json_config

INDEX_FILE = "model_index.json"
# The classes model_index.json may name, per component: those this project writes (diffusers imports the module
# a component names, so nothing else is accepted). The second transformer is the demo model's.
COMPONENT_CLASSES = {
    "transformer": {("step1x_edit.models.transformer", "Step1XEditTransformer2DModel"),
                    ("step1x_edit.demo.delta", "ReferenceDeltaTransformer2DModel")},
    "vae": {("diffusers", "AutoencoderKL"), ("step1x_edit.models.patch_vae", "PatchAutoencoder")},
    "text_encoder": {("transformers", "Qwen2_5_VLForConditionalGeneration")},
    "processor": {("step1x_edit.models.mllm", "ImageOnlyQwen2_5_VLProcessor"), ("transformers", "Qwen2_5_VLProcessor")},
    "scheduler": {("diffusers", "FlowMatchEulerDiscreteScheduler")},
}
# Transformer config fields a saved model may lack: prediction_type came later, and its default is the class's own.
OPTIONAL_TRANSFORMER_FIELDS = ("prediction_type",)
# Scheduler bounds (the released schedule: 1000 training steps, the shift moving from 256 to 4096 tokens).
MAX_TRAIN_TIMESTEPS = 100_000
MAX_SCHEDULE_TOKENS = 10_000_000
_TEXT_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_VISION_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def check_diffusers_folder(path: str | Path) -> None:
    """Check the diffusers-layout model folder ``path`` from its JSON files and weight headers (see the module
    docstring); raises :class:`CheckpointError` naming the file and the field or tensor."""
    path = Path(path)
    index_file = path / INDEX_FILE
    index = read_json_config(index_file)
    _checked(index_file, check_pipeline_settings, index)
    unknown = sorted(key for key in index
                     if not key.startswith("_") and key not in COMPONENT_CLASSES and key not in PIPELINE_SETTINGS)
    if unknown:
        raise CheckpointError(f"{index_file}: unknown entries {unknown}; expected the components "
                              f"{sorted(COMPONENT_CLASSES)} and the settings {list(PIPELINE_SETTINGS)}")
    for name, allowed in COMPONENT_CLASSES.items():
        spec = index.get(name)
        if not (isinstance(spec, list) and all(isinstance(part, str) for part in spec) and tuple(spec) in allowed):
            raise CheckpointError(f"{index_file}: {name} must be one of {sorted(map(list, allowed))}, got {spec!r}")
    # A quantized component (written by ``convert --quantize-*``) is checked by its own loader, which fits every
    # saved tensor to the model its config builds.
    if not is_quantized_folder(path / "transformer"):
        _check_transformer(path / "transformer", transformer_class(index["transformer"]))
    check_vae_folder(path / "vae", index["vae"][1])
    if not is_quantized_folder(path / "text_encoder"):
        check_text_encoder_folder(path / "text_encoder")
    check_processor_folder(path / "processor")
    check_scheduler_config(path / "scheduler" / "scheduler_config.json")


def is_quantized_folder(folder: Path) -> bool:
    """Whether the component folder ``folder`` holds a quantized model (its ``quantization.json``)."""
    from ..acceleration.quantization import RECIPE_NAME

    return (folder / RECIPE_NAME).is_file()


def check_text_encoder_folder(folder: str | Path) -> None:
    """Check a Qwen2.5-VL folder's ``config.json`` (every size present and within bounds) against its safetensors
    headers: as many text layers and vision blocks as the config says, every tensor of the shape the model built
    from the config (on the meta device) has, every weight floating point."""
    folder = Path(folder)
    config_file = folder / "config.json"
    config = read_json_config(config_file)
    _checked(config_file, check_text_encoder_config, config)
    header = weights_header(folder, "model")
    text, vision = {**config, **config.get("text_config", {})}, config["vision_config"]
    for pattern, field, value, what in ((_TEXT_LAYER, "num_hidden_layers", text["num_hidden_layers"], "text layers"),
                                        (_VISION_BLOCK, "vision_config.depth", vision["depth"], "vision blocks")):
        found = {int(match.group(1)) for key in header if (match := pattern.search(key))}
        if found != set(range(value)):
            raise CheckpointError(f"{config_file}: {field} is {value}, but the weights in {folder} hold "
                                  f"{len(found)} {what}")
    model = _build(config_file, lambda: Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig.from_dict(config)))
    expected = {_plain_name(key): tuple(value.shape) for key, value in model.state_dict().items()}
    for key, (_, shape, file) in header.items():
        wanted = expected.get(_plain_name(key))
        if wanted is not None and shape != wanted:
            raise CheckpointError(f"{file}: tensor {key} has shape {shape}, but {config_file} implies {wanted}")


def _plain_name(key: str) -> str:
    """A Qwen2.5-VL tensor name without its ``model.`` / ``language_model.`` prefixes, which differ between the
    released files (``model.layers.0...``, ``visual.blocks.0...``) and transformers 5 (``model.language_model.layers.0
    ...``, ``model.visual.blocks.0...``)."""
    parts = key.split(".")
    while parts and parts[0] in ("model", "language_model"):
        parts = parts[1:]
    return ".".join(parts)


def check_processor_folder(folder: str | Path) -> None:
    """Check a processor folder's JSON files: ``tokenizer_config.json`` an object, the image processor's sizes
    (``preprocessor_config.json`` or ``processor_config.json``) within bounds."""
    folder = Path(folder)
    for name in ("preprocessor_config.json", "processor_config.json"):
        config_file = folder / name
        if not config_file.exists():
            continue
        config = read_json_config(config_file)
        settings = config.get("image_processor", config) if name == "processor_config.json" else config
        if not isinstance(settings, Mapping):
            raise CheckpointError(f"{config_file}: image_processor must be an object, got {settings!r}")
        _checked(config_file, check_image_processor_config, settings)
    if (folder / "tokenizer_config.json").exists():
        read_json_config(folder / "tokenizer_config.json")


def weights_header(folder: Path, stem: str) -> dict[str, tuple[str, tuple[int, ...], Path]]:
    """Every tensor of the weights ``stem``.safetensors in ``folder`` (or of the shards its
    ``stem``.safetensors.index.json lists) as name -> (dtype, shape, file), each checked to be a floating-point
    weight; pickle weights are refused."""
    single, index_file = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
    weight_map = None
    if single.is_file():
        files = [single]
    elif index_file.is_file():
        weight_map = read_json_config(index_file).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index_file}: weight_map must be an object of tensor name -> shard file name")
        for shard in set(weight_map.values()):
            if not isinstance(shard, str) or Path(shard).name != shard or not shard.endswith(".safetensors"):
                raise CheckpointError(f"{index_file}: shard {shard!r} is not the name of a .safetensors file beside it")
        files = [folder / shard for shard in sorted(set(weight_map.values()))]
    else:
        pickles = sorted(path.name for path in folder.glob(f"{stem}*.bin")) if folder.is_dir() else []
        refused = f"; the pickle weights {pickles} are refused, convert them to safetensors" if pickles else ""
        raise CheckpointError(f"{folder} has no {single.name} (nor {index_file.name} and its shards){refused}")
    header = {}
    for file in files:
        tensors = read_header(file)
        check_weights(file, tensors)
        header.update({key: (dtype, shape, file) for key, (dtype, shape) in tensors.items()})
    for key, shard in (weight_map or {}).items():
        if key not in header or header[key][2].name != shard:
            raise CheckpointError(f"{index_file} puts tensor {key} in {shard}, but that file does not hold it")
    return header


def transformer_class(spec: list[str]) -> type:
    """The transformer class of a ``model_index.json`` entry ``[module, class]`` (one of
    :data:`COMPONENT_CLASSES`), imported by its module name as diffusers does when it loads the folder."""
    if tuple(spec) not in COMPONENT_CLASSES["transformer"]:
        raise CheckpointError(f"transformer must be one of {sorted(map(list, COMPONENT_CLASSES['transformer']))}, "
                              f"got {spec!r}")
    module, name = spec
    return getattr(importlib.import_module(module), name)


def _check_transformer(folder: Path, model_class: type) -> None:
    config_file = folder / "config.json"
    config = _fields(read_json_config(config_file))
    missing = sorted(set(transformer_config("full")) - set(config) - set(OPTIONAL_TRANSFORMER_FIELDS))
    if missing:
        raise CheckpointError(f"{config_file}: field(s) {missing} missing")
    _checked(config_file, check_transformer_config, config)
    model = _build(config_file, lambda: model_class.from_config(config))
    _check_tensors(folder, config_file, model)


def check_vae_folder(folder: Path, class_name: str) -> None:
    """Check a VAE folder's ``config.json`` (bounds) against its weight headers (every tensor, shape for shape)."""
    config_file = folder / "config.json"
    config = _fields(read_json_config(config_file))
    if class_name == PatchAutoencoder.__name__:
        _checked(config_file, check_patch_vae_config, config)
        model = _build(config_file, lambda: PatchAutoencoder.from_config(config))
    else:
        _checked(config_file, check_vae_config, config)
        model = _build(config_file, lambda: AutoencoderKL.from_config(config))
    _check_tensors(folder, config_file, model)


def check_scheduler_config(config_file: Path) -> None:
    """Check a ``FlowMatchEulerDiscreteScheduler`` config file's settings (bounds)."""
    def check(config: Mapping[str, Any]) -> None:
        if "num_train_timesteps" in config:
            validate.integer("num_train_timesteps", config["num_train_timesteps"], 1, MAX_TRAIN_TIMESTEPS)
        if "shift" in config:
            validate.number("shift", config["shift"], 0.0, low_open=True)
        for name in ("base_shift", "max_shift"):
            if name in config:
                validate.number(name, config[name])
        base = validate.integer("base_image_seq_len", config.get("base_image_seq_len", 256), 1, MAX_SCHEDULE_TOKENS)
        top = validate.integer("max_image_seq_len", config.get("max_image_seq_len", 4096), 1, MAX_SCHEDULE_TOKENS)
        if base >= top:
            raise InvalidValueError(f"base_image_seq_len ({base}) must be below max_image_seq_len ({top})")

    _checked(config_file, check, read_json_config(config_file))


def _check_tensors(folder: Path, config_file: Path, model: nn.Module) -> None:
    """The weights in ``folder`` hold exactly the tensors of the (meta-device) ``model`` built from
    ``config_file``, shape for shape."""
    header = weights_header(folder, "diffusion_pytorch_model")
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    mismatch = key_mismatch(expected, header)
    if mismatch:
        raise CheckpointError(f"the weights in {folder} do not match {config_file}: {mismatch}")
    for key, shape in expected.items():
        _, got, file = header[key]
        if got != shape:
            raise CheckpointError(f"{file}: tensor {key} has shape {got}, but {config_file} implies {shape}")


def _fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config without diffusers' bookkeeping entries (``_class_name``, ``_diffusers_version``...)."""
    return {key: value for key, value in config.items() if not key.startswith("_")}


def _checked(source: Path, check: Callable[[Mapping[str, Any]], None], config: Mapping[str, Any]) -> None:
    try:
        check(config)
    except InvalidValueError as error:
        raise CheckpointError(f"{source}: {error}") from None


def _build(config_file: Path, build: Callable[[], nn.Module]) -> nn.Module:
    """The model ``build`` makes, on the meta device (no memory); a config it refuses raises
    :class:`CheckpointError` naming ``config_file``."""
    try:
        with init_empty_weights():
            return build()
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, AssertionError) as error:
        raise CheckpointError(f"{config_file}: {' '.join(str(error).split())}") from None
