"""Strict, streaming loading of the official Step1X-Edit checkpoint files, and the official key tables.

Official files (safetensors only, never pickles):

* ``step1x-edit-i1258.safetensors`` (v1.0) / ``step1x-edit-v1p1-official.safetensors`` (v1.1): the DiT and the
  connector, FLUX naming (``double_blocks.*``, ``single_blocks.*``, ``connector.S.*``; v1.0 also has
  ``connector.scale_factor``);
* ``vae.safetensors``: the FLUX.1 autoencoder, original FLUX naming (``encoder.down.*``, ``decoder.up.*``).

Every official tensor maps to one or more diffusers parameters through a :class:`KeyRule` (copy, split a fused
tensor along dim 0, swap the two halves of the final adaLN, or squeeze a 1x1 conv into a linear). The tables are
generated from the model config, so they work for every size; the same rules run backwards to write official
files (:func:`transformer_state_dict_to_official`, :func:`vae_state_dict_to_official`).

Loading builds the model on the meta device, reads one tensor at a time with ``safetensors.safe_open`` (the file
is re-opened every 64 MB so the mapped pages do not accumulate), converts it into an owned tensor of the
requested dtype and device and assigns it with accelerate's ``set_module_tensor_to_device``: peak memory is
about one copy of the weights (plus at most 64 MB of mapped file). Every key must be
consumed and every shape must match, otherwise :class:`~step1x_edit.errors.CheckpointError` names the keys.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from accelerate.utils import set_module_tensor_to_device
from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import CheckpointError, InvalidValueError
from ..models.presets import transformer_config
from ..models.transformer import Step1XEditTransformer2DModel
from ..models.transformer import check_config as check_transformer_config
from ..models.vae import MAX_VAE_LEVELS, OFFICIAL_VAE_FIELDS, autoencoder_from_official_config
from ..models.vae import check_official_config as check_official_vae_config
from ..versions import (
    OFFICIAL_VERSIONS,
    VERSION_NAMES,
    VERSIONS,
    detect_official_version,
    get_version,
    same_weights,
)

# The released DiT files, newest first.
TRANSFORMER_FILE_NAMES = tuple(name for version in reversed(OFFICIAL_VERSIONS) for name in VERSIONS[version].official_files)
VAE_FILE_NAME = "vae.safetensors"
MLLM_DIR_NAME = "Qwen2.5-VL-7B-Instruct"
# Optional: transformer config fields the weights cannot tell (``axes_dim``, ``theta``, ``connector_num_heads``),
# needed only for non-released sizes. Not part of the official release.
TRANSFORMER_CONFIG_FILE_NAME = "transformer_config.json"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
# Released values of what the tensor shapes cannot tell.
RELEASED_AXES_DIM = (16, 56, 56)
RELEASED_CONNECTOR_HEADS = 32
RELEASED_THETA = 10000
RELEASED_VAE_SCALE_FACTOR = 0.3611
RELEASED_VAE_SHIFT_FACTOR = 0.1159
# Largest config file read (the released ones are a few kB; a tokenizer is not a config).
MAX_CONFIG_BYTES = 1_000_000
# The safetensors dtypes a weight may be stored in, with their sizes in bytes (torch up-casts the 8-bit floats).
WEIGHT_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
# Re-open the file after this many bytes so that safetensors' memory map does not hold every page read so far.
_REOPEN_BYTES = 64 * 2**20


@dataclass(frozen=True)
class KeyRule:
    """How one official tensor becomes diffusers parameters.

    ``kind`` is ``"copy"`` (one target), ``"split"`` (chunks of ``sizes`` along dim 0, one per target),
    ``"swap"`` (the two halves along dim 0 exchanged) or ``"conv1x1"`` (a [C, C, 1, 1] conv weight as a linear).
    """

    official: str
    targets: tuple[str, ...]
    kind: str = "copy"
    sizes: tuple[int, ...] = ()

    def to_diffusers(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """The target tensors, in the order of ``targets`` (possibly views of ``tensor``)."""
        if self.kind == "split":
            return list(torch.split(tensor, list(self.sizes), dim=0))
        if self.kind == "swap":
            first, second = tensor.chunk(2, dim=0)
            return [torch.cat([second, first], dim=0)]
        if self.kind == "conv1x1":
            return [tensor.reshape(tensor.shape[0], tensor.shape[1])]
        return [tensor]

    def to_official(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """The inverse of :meth:`to_diffusers`."""
        if self.kind == "split":
            return torch.cat(tensors, dim=0)
        if self.kind == "swap":
            first, second = tensors[0].chunk(2, dim=0)
            return torch.cat([second, first], dim=0)
        if self.kind == "conv1x1":
            return tensors[0].reshape(*tensors[0].shape, 1, 1)
        return tensors[0]


@dataclass(frozen=True)
class OfficialFiles:
    """The files of an official model directory. ``transformer_config`` holds the fields of the optional
    ``transformer_config.json`` (what shapes cannot tell for non-released sizes), else ``None``."""

    transformer: Path
    vae: Path
    mllm_dir: Path | None
    transformer_config: dict[str, Any] | None = None


def _linear(official: str, target: str, kind: str = "copy") -> list[KeyRule]:
    return [KeyRule(f"{official}.weight", (f"{target}.weight",), kind),
            KeyRule(f"{official}.bias", (f"{target}.bias",), kind)]


def _split_linear(official: str, targets: Iterable[str], sizes: tuple[int, ...]) -> list[KeyRule]:
    targets = tuple(targets)
    return [KeyRule(f"{official}.{p}", tuple(f"{t}.{p}" for t in targets), "split", sizes) for p in ("weight", "bias")]


def transformer_key_table(config: Mapping[str, Any]) -> list[KeyRule]:
    """The official -> diffusers rules for a :class:`Step1XEditTransformer2DModel` with ``config``."""
    hidden = config["hidden_size"]
    mlp = int(hidden * config["mlp_ratio"])
    context = config["context_in_dim"]
    rules = [
        *_linear("img_in", "x_embedder"),
        *_linear("txt_in", "context_embedder"),
        *_linear("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
        *_linear("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
        *_linear("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
        *_linear("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
    ]
    for i in range(config["depth"]):
        src, dst = f"double_blocks.{i}", f"transformer_blocks.{i}"
        for stream, mod, qkv, norm, proj, ff in (
            ("img", "norm1", ("to_q", "to_k", "to_v"), ("norm_q", "norm_k"), "to_out.0", "ff"),
            ("txt", "norm1_context", ("add_q_proj", "add_k_proj", "add_v_proj"), ("norm_added_q", "norm_added_k"),
             "to_add_out", "ff_context"),
        ):
            rules += _linear(f"{src}.{stream}_mod.lin", f"{dst}.{mod}.linear")
            rules += _split_linear(f"{src}.{stream}_attn.qkv", (f"{dst}.attn.{t}" for t in qkv), (hidden,) * 3)
            rules += [
                KeyRule(f"{src}.{stream}_attn.norm.query_norm.scale", (f"{dst}.attn.{norm[0]}.weight",)),
                KeyRule(f"{src}.{stream}_attn.norm.key_norm.scale", (f"{dst}.attn.{norm[1]}.weight",)),
            ]
            rules += _linear(f"{src}.{stream}_attn.proj", f"{dst}.attn.{proj}")
            rules += _linear(f"{src}.{stream}_mlp.0", f"{dst}.{ff}.net.0.proj")
            rules += _linear(f"{src}.{stream}_mlp.2", f"{dst}.{ff}.net.2")
    for i in range(config["depth_single_blocks"]):
        src, dst = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        rules += _split_linear(
            f"{src}.linear1",
            (f"{dst}.attn.to_q", f"{dst}.attn.to_k", f"{dst}.attn.to_v", f"{dst}.proj_mlp"),
            (hidden, hidden, hidden, mlp),
        )
        rules += _linear(f"{src}.linear2", f"{dst}.proj_out")
        rules += _linear(f"{src}.modulation.lin", f"{dst}.norm.linear")
        rules += [
            KeyRule(f"{src}.norm.query_norm.scale", (f"{dst}.attn.norm_q.weight",)),
            KeyRule(f"{src}.norm.key_norm.scale", (f"{dst}.attn.norm_k.weight",)),
        ]
    rules += _linear("final_layer.linear", "proj_out")
    rules += _linear("final_layer.adaLN_modulation.1", "norm_out.linear", kind="swap")

    src, dst = "connector.S", "connector.refiner"
    rules += _linear(f"{src}.input_embedder", f"{dst}.proj_in")
    rules += _linear(f"{src}.t_embedder.mlp.0", f"{dst}.time_text_embed.timestep_embedder.linear_1")
    rules += _linear(f"{src}.t_embedder.mlp.2", f"{dst}.time_text_embed.timestep_embedder.linear_2")
    rules += _linear(f"{src}.c_embedder.linear_1", f"{dst}.time_text_embed.text_embedder.linear_1")
    rules += _linear(f"{src}.c_embedder.linear_2", f"{dst}.time_text_embed.text_embedder.linear_2")
    for i in range(config["connector_depth"]):
        block_src = f"{src}.individual_token_refiner.blocks.{i}"
        block_dst = f"{dst}.token_refiner.refiner_blocks.{i}"
        rules += _linear(f"{block_src}.norm1", f"{block_dst}.norm1")
        rules += _split_linear(
            f"{block_src}.self_attn_qkv", (f"{block_dst}.attn.to_{t}" for t in "qkv"), (context,) * 3
        )
        rules += _linear(f"{block_src}.self_attn_proj", f"{block_dst}.attn.to_out.0")
        rules += _linear(f"{block_src}.norm2", f"{block_dst}.norm2")
        rules += _linear(f"{block_src}.mlp.fc1", f"{block_dst}.ff.net.0.proj")
        rules += _linear(f"{block_src}.mlp.fc2", f"{block_dst}.ff.net.2")
        rules += _linear(f"{block_src}.adaLN_modulation.1", f"{block_dst}.norm_out.linear")
    rules += _linear("connector.global_proj_out", "connector.global_proj_out")
    line = get_version(config["version"])
    if line.connector_scale_factor:
        rules.append(KeyRule("connector.scale_factor", ("connector.scale_factor",)))
    if line.text_token_mapping:
        rules += _linear("text_token_mapping", "text_token_mapping")
    return rules


def official_module_targets(config: Mapping[str, Any]) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """Official module name -> (diffusers module names, output sizes they split into; () when not split).

    From :func:`transformer_key_table`, for modules with a ``.weight``; what a converter of kohya-style LoRA
    files (``lora_unet_double_blocks_0_img_attn_qkv`` ...) needs to find the modules and split fused outputs.
    The final adaLN (halves swapped) maps as ``(("norm_out.linear",), ())`` and needs the same swap.
    """
    targets = {}
    for rule in transformer_key_table(config):
        if rule.official.endswith(".weight"):
            modules = tuple(target.removesuffix(".weight") for target in rule.targets)
            targets[rule.official.removesuffix(".weight")] = (modules, rule.sizes)
    return targets


def _resnet(official: str, target: str, has_shortcut: bool) -> list[KeyRule]:
    rules = []
    for name in ("norm1", "conv1", "norm2", "conv2"):
        rules += _linear(f"{official}.{name}", f"{target}.{name}")
    if has_shortcut:
        rules += _linear(f"{official}.nin_shortcut", f"{target}.conv_shortcut")
    return rules


def _mid_block(official: str, target: str) -> list[KeyRule]:
    rules = _resnet(f"{official}.block_1", f"{target}.resnets.0", False)
    rules += _linear(f"{official}.attn_1.norm", f"{target}.attentions.0.group_norm")
    for src, dst in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        rules += [
            KeyRule(f"{official}.attn_1.{src}.weight", (f"{target}.attentions.0.{dst}.weight",), "conv1x1"),
            KeyRule(f"{official}.attn_1.{src}.bias", (f"{target}.attentions.0.{dst}.bias",)),
        ]
    rules += _resnet(f"{official}.block_2", f"{target}.resnets.1", False)
    return rules


def vae_key_table(official_config: Mapping[str, Any]) -> list[KeyRule]:
    """The official FLUX autoencoder -> diffusers ``AutoencoderKL`` rules for the official ``AutoEncoder`` args."""
    ch, mults, blocks = official_config["ch"], list(official_config["ch_mult"]), official_config["num_res_blocks"]
    widths = [ch * m for m in mults]
    levels = len(widths)
    rules = _linear("encoder.conv_in", "encoder.conv_in")
    previous = ch
    for i, width in enumerate(widths):
        for j in range(blocks):
            has_shortcut = j == 0 and previous != width
            rules += _resnet(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", has_shortcut)
            previous = width
        if i < levels - 1:
            rules += _linear(f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv")
    rules += _mid_block("encoder.mid", "encoder.mid_block")
    rules += _linear("encoder.norm_out", "encoder.conv_norm_out")
    rules += _linear("encoder.conv_out", "encoder.conv_out")

    rules += _linear("decoder.conv_in", "decoder.conv_in")
    rules += _mid_block("decoder.mid", "decoder.mid_block")
    previous = widths[-1]
    for i in reversed(range(levels)):  # official up.{i} is diffusers up_blocks.{levels - 1 - i}
        width, up = widths[i], levels - 1 - i
        for j in range(blocks + 1):
            has_shortcut = j == 0 and previous != width
            rules += _resnet(f"decoder.up.{i}.block.{j}", f"decoder.up_blocks.{up}.resnets.{j}", has_shortcut)
            previous = width
        if i > 0:
            rules += _linear(f"decoder.up.{i}.upsample.conv", f"decoder.up_blocks.{up}.upsamplers.0.conv")
    rules += _linear("decoder.norm_out", "decoder.conv_norm_out")
    rules += _linear("decoder.conv_out", "decoder.conv_out")
    return rules


# ----------------------------------------------------------------------------------------------------------------
# Reading files


def _check_file(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: refusing to load a pickle checkpoint ({path.suffix}); pickles can run arbitrary code. "
            "Convert it to .safetensors first."
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    return path


def read_json_config(path: str | Path) -> dict[str, Any]:
    """The JSON object in the config file ``path``; raises :class:`CheckpointError` naming the file when it is
    missing, larger than ``MAX_CONFIG_BYTES``, not UTF-8 JSON, or not an object."""
    path = Path(path)
    try:
        if not path.is_file():
            raise CheckpointError(f"config file not found: {path}")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise CheckpointError(f"{path} is {path.stat().st_size:,} bytes, too large for a config file (limit "
                                  f"{MAX_CONFIG_BYTES:,})")
        config = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror or error}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {' '.join(str(error).split())}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object of config fields, not {type(config).__name__}")
    return config


def read_header(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every tensor of the safetensors file ``path`` as name -> (safetensors dtype name, shape), from the header
    only (safetensors checks that the header is JSON and that the data covers every tensor exactly).

    Raises :class:`CheckpointError` for pickles, missing files, and files that are truncated or not safetensors.
    """
    path = _check_file(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: (handle.get_slice(key).get_dtype(), tuple(handle.get_slice(key).get_shape()))
                    for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        try:
            with path.open("rb") as handle:
                start = handle.read(2)
        except OSError:
            start = b""
        if start == b"PK" or start[:1] == b"\x80":  # torch.save zip archive or a raw pickle
            raise CheckpointError(
                f"{path} is a pickle/zip (torch.save) file, not safetensors; refusing to load it"
            ) from error
        raise CheckpointError(
            f"{path} is not a complete safetensors file (truncated or interrupted download, or another format "
            f"named .safetensors?): {error}"
        ) from error


def check_weights(path: str | Path, header: Mapping[str, tuple[str, tuple[int, ...]]]) -> None:
    """Raise :class:`CheckpointError` naming ``path`` and the tensor unless every tensor of ``header`` (from
    :func:`read_header`) is a floating-point weight without an empty dimension."""
    for key, (dtype, shape) in header.items():
        if dtype not in WEIGHT_DTYPES:
            raise CheckpointError(f"{path}: tensor {key} is stored as {dtype}, but weights are floating point "
                                  f"({', '.join(WEIGHT_DTYPES)})")
        if 0 in shape:
            raise CheckpointError(f"{path}: tensor {key} has an empty dimension (shape {shape})")


def read_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape in the safetensors file ``path`` (reads the header only).

    Raises :class:`CheckpointError` for pickles, missing files, truncated or corrupt files, and tensors that are
    not floating-point weights or have an empty dimension (see :func:`check_weights`).
    """
    header = read_header(path)
    check_weights(path, header)
    return {key: shape for key, (_, shape) in header.items()}


def stored_in_fp8(path: str | Path) -> bool:
    """Whether the official DiT file ``path`` holds its weight matrices in float8_e4m3fn, as the community FP8
    release (``step1x-edit-i1258-FP8.safetensors``) does (reads the header only)."""
    matrices = [dtype for dtype, shape in read_header(path).values() if len(shape) == 2]
    return bool(matrices) and all(dtype == "F8_E4M3" for dtype in matrices)


def _iter_tensors(path: Path, keys: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(key, tensor)`` one at a time, re-opening the file every ``_REOPEN_BYTES``."""
    sizes = {key: math.prod(shape) * WEIGHT_DTYPES[dtype] for key, (dtype, shape) in read_header(path).items()}
    batch: list[str] = []
    batch_bytes = 0
    batches = []
    for key in keys:
        batch.append(key)
        batch_bytes += sizes[key]
        if batch_bytes >= _REOPEN_BYTES:
            batches.append(batch)
            batch, batch_bytes = [], 0
    if batch:
        batches.append(batch)
    for batch in batches:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in batch:
                    yield key, handle.get_tensor(key)
        except SafetensorError as error:
            raise CheckpointError(f"{path}: cannot read tensor data (corrupt file?): {error}") from error


def key_mismatch(expected: Iterable[str], found: Iterable[str]) -> str:
    """What differs between the ``expected`` and the ``found`` tensor names ("missing …; unexpected …"), or ""."""
    expected, found = set(expected), set(found)
    parts = []
    if expected - found:
        parts.append(f"missing {_describe(expected - found)}")
    if found - expected:
        parts.append(f"unexpected {_describe(found - expected)}")
    return "; ".join(parts)


def _describe(keys: Iterable[str], limit: int = 5) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} key(s): {shown}{', ...' if len(keys) > limit else ''}"


def _check_keys(
    source: str, shapes: Mapping[str, tuple[int, ...]], rules: list[KeyRule], model: nn.Module, hint: str
) -> None:
    """Every official key present, none unexpected, every shape as the (meta-device) ``model`` expects."""
    expected = {rule.official for rule in rules}
    mismatch = key_mismatch(expected, shapes)
    if mismatch:
        raise CheckpointError(f"{source} does not match the model: {mismatch}.{hint}")
    params = dict(model.named_parameters())
    wrong = []
    for rule in rules:
        wanted = tuple(rule.to_official([params[target] for target in rule.targets]).shape)
        if shapes[rule.official] != wanted:
            wrong.append(f"{rule.official} {shapes[rule.official]} (expected {wanted})")
    if wrong:
        shown = ", ".join(wrong[:5])
        raise CheckpointError(f"{source}: {len(wrong)} tensor(s) have the wrong shape: {shown}{hint}")


def _stream_into(
    model: nn.Module, path: Path, rules: list[KeyRule], torch_dtype: torch.dtype, device: str | torch.device,
    check_complete: bool = True, storage_dtype: torch.dtype | None = None,
) -> None:
    """Assign every tensor of ``path`` to the meta-device ``model`` through ``rules`` (keys and shapes checked);
    with ``check_complete``, no parameter may stay unset (a sharded checkpoint checks after its last shard).
    Parameters the model already holds in ``storage_dtype`` (layerwise casting) are stored in it, the others in
    ``torch_dtype``."""
    by_key = {rule.official: rule for rule in rules}
    stored = {name for name, param in model.named_parameters() if storage_dtype is not None
              and param.dtype == storage_dtype}
    for key, tensor in _iter_tensors(path, list(by_key)):
        rule = by_key[key]
        for piece, target in zip(rule.to_diffusers(tensor), rule.targets, strict=True):
            # An owned copy: never a view of the file's memory map (or of a fused tensor), so the map is
            # released when its batch closes and the parameters stay valid whatever happens to the file.
            dtype = storage_dtype if target in stored else torch_dtype
            piece = piece.to(device=device, dtype=dtype, copy=True)
            set_module_tensor_to_device(model, target, device, value=piece, dtype=dtype)
    still_empty = [name for name, param in model.named_parameters() if param.device.type == "meta"]
    if check_complete and still_empty:
        raise CheckpointError(f"{path} left parameters unset: {_describe(still_empty)}")


# ----------------------------------------------------------------------------------------------------------------
# Transformer


def _count_blocks(shapes: Iterable[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    indices = {int(m.group(1)) for key in shapes if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def detect_version(path: str | Path) -> str:
    """The version of an official DiT file from its tensor names (see
    :func:`step1x_edit.versions.detect_official_version`)."""
    return detect_official_version(read_shapes(path))


def _dims(shapes: Mapping[str, tuple[int, ...]], key: str, rank: int, source: str) -> tuple[int, ...] | None:
    """The shape of tensor ``key`` (``None`` when absent: the key check names it), which must have ``rank``
    non-empty dimensions; the sizes inferred from it would be nonsense otherwise."""
    if key not in shapes:
        return None
    shape = tuple(shapes[key])
    if len(shape) != rank or 0 in shape:
        kind = {1: "a vector", 2: "a matrix", 4: "a convolution kernel"}[rank]
        raise CheckpointError(f"{source}: tensor {key} has shape {shape}, but {kind} ({rank} non-empty dimensions) "
                              "belongs there")
    return shape


def checked_transformer_config(config: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``config`` (transformer config fields) with every field's type and range checked; raises
    :class:`CheckpointError` naming ``source`` and the field."""
    try:
        check_transformer_config(config)
    except InvalidValueError as error:
        raise CheckpointError(f"{source}: {error}") from None
    return dict(config)


def infer_transformer_config(
    shapes: Mapping[str, tuple[int, ...]], version: str | None = None, config: Mapping[str, Any] | None = None,
    source: str = "checkpoint",
) -> dict[str, Any]:
    """The model config of an official DiT file from its tensor shapes.

    Sizes come from the shapes; what shapes cannot tell (rotary ``axes_dim``, ``theta``, connector heads) comes
    from ``config`` or else the released values. Fields given in ``config`` must agree with the shapes. Errors
    name ``source`` (the file).
    """
    config = dict(config or {})
    unknown = sorted(set(config) - set(transformer_config("full")))
    if unknown:
        raise CheckpointError(f"unknown transformer config field(s) {unknown}; valid: {sorted(transformer_config('full'))}")
    checked_transformer_config(config, "the transformer config")
    if config.get("prediction_type", "velocity") != "velocity":
        raise CheckpointError(
            f"config says prediction_type={config['prediction_type']!r}, but official-format files hold velocity "
            "models only"
        )
    config_version = config.pop("version", None)
    if version is not None and config_version is not None and version != config_version:
        raise CheckpointError(f"version={version!r} contradicts the config's version={config_version!r}")
    version = version if version is not None else config_version
    required = ("img_in.weight", "txt_in.weight", "vector_in.in_layer.weight", "final_layer.linear.weight",
                "connector.S.input_embedder.weight")
    absent = [key for key in required if key not in shapes]
    if absent:
        if any(key.startswith("transformer_blocks.") for key in shapes):
            cause = "this looks like a diffusers-format file: load its folder with Step1XEditTransformer2DModel.from_pretrained"
        else:
            cause = "is this a VAE or MLLM file?"
        raise CheckpointError(f"not an official Step1X-Edit DiT checkpoint: {_describe(absent)} absent ({cause})")
    hidden, in_channels = _dims(shapes, "img_in.weight", 2, source)
    context = _dims(shapes, "txt_in.weight", 2, source)[1]
    depth = _count_blocks(shapes, "double_blocks")
    single = _count_blocks(shapes, "single_blocks")
    norm_key = "double_blocks.0.img_attn.norm.query_norm.scale" if depth else "single_blocks.0.norm.query_norm.scale"
    norm = _dims(shapes, norm_key, 1, source)
    head_dim = norm[0] if norm else hidden // config.get("num_heads", 24)
    mlp_in = _dims(shapes, "double_blocks.0.img_mlp.0.weight", 2, source) if depth else None
    linear1 = _dims(shapes, "single_blocks.0.linear1.weight", 2, source) if single else None
    if mlp_in:
        mlp = mlp_in[0]
    elif linear1:
        mlp = linear1[0] - 3 * hidden
    else:
        mlp = int(hidden * config.get("mlp_ratio", 4.0))
    inferred = {
        "in_channels": in_channels,
        "out_channels": _dims(shapes, "final_layer.linear.weight", 2, source)[0],
        "vec_in_dim": _dims(shapes, "vector_in.in_layer.weight", 2, source)[1],
        "context_in_dim": context,
        "hidden_size": hidden,
        "mlp_ratio": mlp / hidden,
        "num_heads": hidden // head_dim,
        "depth": depth,
        "depth_single_blocks": single,
        "mllm_hidden_size": _dims(shapes, "connector.S.input_embedder.weight", 2, source)[1],
        "connector_depth": _count_blocks(shapes, "connector.S.individual_token_refiner.blocks"),
        "version": detect_official_version(shapes),
    }
    checked_transformer_config(inferred, f"{source} (the sizes its tensor shapes imply)")
    for field, value in inferred.items():
        if field in config and config[field] != value and not (field == "mlp_ratio" and float(config[field]) == value):
            raise CheckpointError(f"config says {field}={config[field]!r} but the checkpoint has {field}={value!r}")
    if version is not None:
        if version not in VERSION_NAMES:
            raise CheckpointError(f"unknown version {version!r}; expected one of {VERSION_NAMES}")
        if not same_weights(version, inferred["version"]):
            if "connector.scale_factor" in shapes:
                cause = f"checkpoint has connector.scale_factor: this is a v1.0 file loaded as {version}"
            else:
                cause = (f"checkpoint has no connector.scale_factor: this is a {inferred['version']} file loaded as "
                         f"{version}")
            raise CheckpointError(f"version mismatch: {cause}")
        inferred["version"] = version  # the recipe the caller asked for, on the same weights
    defaults = {
        "axes_dim": RELEASED_AXES_DIM,
        "theta": RELEASED_THETA,
        "qkv_bias": True,
        "connector_num_heads": RELEASED_CONNECTOR_HEADS,
    }
    result = {**defaults, **config, **inferred}
    if sum(result["axes_dim"]) != head_dim:
        raise CheckpointError(
            f"{source}: the checkpoint's head dim is {head_dim} but axes_dim {tuple(result['axes_dim'])} sums to "
            f"{sum(result['axes_dim'])}; pass config={{'axes_dim': ...}} for this non-released size"
        )
    if context % result["connector_num_heads"]:
        raise CheckpointError(
            f"{source}: the connector width {context} (txt_in.weight's inputs) is not divisible by "
            f"{result['connector_num_heads']} heads; pass "
            "config={'connector_num_heads': ...} for this non-released size"
        )
    result["axes_dim"] = tuple(result["axes_dim"])
    return result


def load_official_transformer(
    path: str | Path,
    version: str | None = None,
    config: Mapping[str, Any] | None = None,
    torch_dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    storage_dtype: torch.dtype | None = None,
) -> Step1XEditTransformer2DModel:
    """Load an official DiT + connector file strictly and streaming.

    Args:
        path: ``step1x-edit-*.safetensors``.
        version: ``"v1.0"``/``"v1.1"``; detected from the keys when ``None``, checked against them otherwise.
        config: model config fields (see :class:`Step1XEditTransformer2DModel`) for what the shapes cannot tell
            (``axes_dim``, ``theta``, ``connector_num_heads``); sizes are inferred from the shapes.
        torch_dtype: dtype of the loaded parameters.
        device: where the parameters are placed.
        storage_dtype: with ``torch.float8_e4m3fn``, the layers' weights are kept in fp8 and computed in
            ``torch_dtype`` (diffusers' layerwise casting), read straight from the file: the official FP8
            checkpoint is never up-cast, and no full-precision copy is ever made.
    """
    path = _check_file(path)
    model = empty_transformer_for(read_shapes(path), version, config, source=str(path))
    if storage_dtype is not None:
        model.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=torch_dtype)
    _stream_into(model, path, transformer_key_table(model.config), torch_dtype, device, storage_dtype=storage_dtype)
    return model.eval()


def empty_transformer_for(
    shapes: Mapping[str, tuple[int, ...]],
    version: str | None = None,
    config: Mapping[str, Any] | None = None,
    source: str = "checkpoint",
) -> Step1XEditTransformer2DModel:
    """A meta-device model that accepts exactly the official tensors ``shapes`` (name -> shape).

    Raises :class:`CheckpointError` naming missing/unexpected keys or wrong shapes; ``source`` names the file.
    """
    model_config = infer_transformer_config(shapes, version, config, source=source)
    try:
        with init_empty_weights():
            model = Step1XEditTransformer2DModel(**model_config)
    except ValueError as error:  # fields that do not combine, e.g. a width the heads do not divide
        raise CheckpointError(f"{source}: {error}") from error
    hint = ""
    if model_config["version"] == "v1.0" and "connector.scale_factor" not in shapes:
        hint = " (checkpoint has no connector.scale_factor: this is a v1.1 file loaded as v1.0)"
    _check_keys(source, shapes, transformer_key_table(model.config), model, hint)
    return model


def transformer_state_dict_to_official(model: Step1XEditTransformer2DModel) -> dict[str, torch.Tensor]:
    """The official-format state dict of ``model`` (inverse of :func:`load_official_transformer`)."""
    if model.config.prediction_type != "velocity":
        raise CheckpointError(
            f"this model predicts {model.config.prediction_type!r}, but the official format holds velocity models "
            "only (the official code would read its output as a velocity); keep it in the diffusers layout"
        )
    return _to_official(model.state_dict(), transformer_key_table(model.config))


def _to_official(state: Mapping[str, torch.Tensor], rules: list[KeyRule]) -> dict[str, torch.Tensor]:
    used = {target for rule in rules for target in rule.targets}
    missing = used - set(state)
    extra = set(state) - used
    if missing or extra:
        raise CheckpointError(
            f"model state does not match the official key table: missing {_describe(missing)}, "
            f"unmapped {_describe(extra)}"
        )
    return {rule.official: rule.to_official([state[t] for t in rule.targets]).contiguous() for rule in rules}


# ----------------------------------------------------------------------------------------------------------------
# VAE


def infer_vae_config(
    shapes: Mapping[str, tuple[int, ...]], config: Mapping[str, Any] | None = None, source: str = "checkpoint"
) -> dict[str, Any]:
    """The official ``AutoEncoder`` arguments of a FLUX VAE file from its shapes (``config`` fills the rest);
    errors name ``source`` (the file)."""
    if "encoder.conv_in.weight" not in shapes or "decoder.conv_in.weight" not in shapes:
        raise CheckpointError(f"{source}: not a FLUX autoencoder checkpoint: encoder.conv_in / decoder.conv_in absent")

    def kernel(key: str) -> tuple[int, ...]:
        shape = _dims(shapes, key, 4, source)
        if shape is None:
            raise CheckpointError(f"{source}: not a complete FLUX autoencoder checkpoint: {key} is absent")
        return shape

    ch, in_channels = kernel("encoder.conv_in.weight")[:2]
    levels = _count_blocks(shapes, "encoder.down")
    if not 1 <= levels <= MAX_VAE_LEVELS:
        raise CheckpointError(f"{source}: the encoder has {levels} resolution levels (encoder.down.N); a FLUX "
                              f"autoencoder has 1 to {MAX_VAE_LEVELS}")
    mults = [kernel(f"encoder.down.{i}.block.0.conv1.weight")[0] // ch for i in range(levels)]
    inferred = {
        "in_channels": in_channels,
        "ch": ch,
        "out_ch": kernel("decoder.conv_out.weight")[0],
        "ch_mult": mults,
        "num_res_blocks": _count_blocks(shapes, "encoder.down.0.block"),
        "z_channels": kernel("decoder.conv_in.weight")[1],
    }
    config = dict(config or {})
    unknown = sorted(set(config) - set(OFFICIAL_VAE_FIELDS))
    if unknown:
        raise CheckpointError(f"unknown VAE config field(s) {unknown}; valid: {list(OFFICIAL_VAE_FIELDS)}")
    for fields, what in ((config, "the VAE config"), (inferred, f"{source} (the sizes its tensor shapes imply)")):
        try:
            check_official_vae_config(fields)
        except InvalidValueError as error:
            raise CheckpointError(f"{what}: {error}") from None
    for field, value in inferred.items():
        if field in config and (list(config[field]) if field == "ch_mult" else config[field]) != value:
            raise CheckpointError(f"VAE config says {field}={config[field]!r} but the checkpoint has {value!r}")
    defaults = {
        "resolution": 256,
        "scale_factor": RELEASED_VAE_SCALE_FACTOR,
        "shift_factor": RELEASED_VAE_SHIFT_FACTOR,
    }
    return {**defaults, **config, **inferred}


def load_official_vae(
    path: str | Path,
    config: Mapping[str, Any] | None = None,
    torch_dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
):
    """Load the official ``vae.safetensors`` (FLUX naming) into a diffusers ``AutoencoderKL``, strictly.

    ``config`` holds official ``AutoEncoder`` arguments; sizes are inferred from the shapes and the latent
    ``scale_factor``/``shift_factor`` default to the released 0.3611 / 0.1159.
    """
    path = _check_file(path)
    shapes = read_shapes(path)
    official_config = infer_vae_config(shapes, config, str(path))
    vae = empty_vae_for(shapes, official_config, source=str(path))
    _stream_into(vae, path, vae_key_table(official_config), torch_dtype, device)
    return vae.eval()


def empty_vae_for(
    shapes: Mapping[str, tuple[int, ...]], config: Mapping[str, Any] | None = None, source: str = "checkpoint"
):
    """A meta-device ``AutoencoderKL`` that accepts exactly the official FLUX VAE tensors ``shapes``."""
    official_config = infer_vae_config(shapes, config, source)
    try:
        with init_empty_weights():
            vae = autoencoder_from_official_config(official_config)
    except ValueError as error:  # widths GroupNorm cannot split, say
        raise CheckpointError(f"{source}: {error}") from error
    _check_keys(source, shapes, vae_key_table(official_config), vae, "")
    return vae


def vae_state_dict_to_official(vae, official_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The official FLUX-format state dict of a diffusers ``AutoencoderKL`` built with ``official_config``."""
    return _to_official(vae.state_dict(), vae_key_table(official_config))


# ----------------------------------------------------------------------------------------------------------------
# Model directory


def find_official_files(model_dir: str | Path, version: str | None = None) -> OfficialFiles:
    """Locate the DiT, VAE and (optional) Qwen2.5-VL folder in an official Step1X-Edit model directory.

    The DiT file is ``step1x-edit-v1p1-official.safetensors`` or ``step1x-edit-i1258.safetensors`` (the file
    of ``version`` when given and present, else the v1.1 file when both are present), else the single
    ``step1x-edit*.safetensors`` in the directory.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        found = "is not a directory" if model_dir.exists() else "not found"
        raise CheckpointError(f"model directory {found}: {model_dir}")
    names = TRANSFORMER_FILE_NAMES
    if version is not None:  # that version's own file first
        own = tuple(get_version(version).official_files)
        names = own + tuple(name for name in names if name not in own)
    transformer = next((model_dir / name for name in names if (model_dir / name).is_file()), None)
    if transformer is None:
        candidates = sorted(model_dir.glob("step1x-edit*.safetensors"))
        if len(candidates) > 1:
            names = ", ".join(p.name for p in candidates)
            raise CheckpointError(f"{model_dir} holds several DiT files ({names}); pass the one to use explicitly")
        if not candidates:
            pickles = sorted(p.name for p in model_dir.glob("step1x-edit*") if p.suffix.lower() in PICKLE_SUFFIXES)
            extra = f" (found pickle files {pickles}, which are refused; use the .safetensors release)" if pickles else ""
            raise CheckpointError(
                f"{model_dir} has no Step1X-Edit DiT file (expected one of {TRANSFORMER_FILE_NAMES}){extra}"
            )
        transformer = candidates[0]
    vae = model_dir / VAE_FILE_NAME
    if not vae.is_file():
        raise CheckpointError(f"{model_dir} has no {VAE_FILE_NAME} (the FLUX.1 autoencoder)")
    mllm_dir = model_dir / MLLM_DIR_NAME
    config_file = model_dir / TRANSFORMER_CONFIG_FILE_NAME
    config = None
    if config_file.exists():
        config = read_json_config(config_file)
        unknown = sorted(set(config) - set(transformer_config("full")))
        if unknown:
            raise CheckpointError(f"{config_file}: unknown transformer config field(s) {unknown}; valid: "
                                  f"{sorted(transformer_config('full'))}")
        checked_transformer_config(config, str(config_file))
    return OfficialFiles(
        transformer=transformer,
        vae=vae,
        mllm_dir=mllm_dir if mllm_dir.is_dir() else None,
        transformer_config=config,
    )
