"""LoRA files for the Step1X-Edit transformer: the official kohya-style format and the peft/diffusers format.

Two formats are read and written (safetensors only):

* **kohya** (the official ``--lora`` files): ``lora_unet_<official module, dots as underscores>`` with
  ``.lora_down.weight`` [r, in], ``.lora_up.weight`` [out, r] and ``.alpha`` (scalar); the update is
  ``W += multiplier * (up @ down) * alpha / r`` on the official module. ``lora_te*`` (text encoder) keys are
  ignored with a warning.
* **peft** (diffusers module names): ``transformer_blocks.0.attn.to_q.lora_A.weight`` [r, in] and
  ``.lora_B.weight`` [out, r]; ranks and alphas are stored as JSON in the safetensors metadata under
  ``lora_adapter_metadata`` (the key diffusers reads), alpha = r when absent.

The official <-> diffusers module mapping comes from the key table of :mod:`step1x_edit.checkpoints.official`:
a fused official module (``img_attn.qkv`` -> ``to_q, to_k, to_v``; single-block ``linear1`` -> ``to_q, to_k,
to_v, proj_mlp``) maps to several diffusers modules. Kohya -> peft is exact: every piece shares ``lora_down`` as
its ``lora_A`` and takes its rows of ``lora_up`` as ``lora_B``. Peft -> kohya is exact too: pieces that share
one ``lora_A`` and scale are written back compactly; otherwise ``lora_down`` stacks the pieces' ``lora_A``
[sum r, in] and ``lora_up`` is block-diagonal (each piece's rows read only its own ``lora_A`` rows), with
``alpha = sum r`` and each piece's scale folded into its block.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .. import validate
from ..errors import CheckpointError, InvalidValueError
from .official import KeyRule, check_weights, official_module_targets, read_header, transformer_key_table

logger = logging.getLogger(__name__)

LORA_PREFIX = "lora_unet_"
TEXT_ENCODER_PREFIX = "lora_te"
KOHYA_SUFFIXES = ("lora_down.weight", "lora_up.weight", "alpha")
ADAPTER_METADATA_KEY = "lora_adapter_metadata"
# Official modules targeted by the official LoRA (every nn.Linear of the double and single blocks).
DEFAULT_TARGET_BLOCKS = ("double_blocks.", "single_blocks.")
# Prefixes that diffusers (``transformer.``) and peft (``base_model.model.``) put before module names.
PEFT_KEY_PREFIXES = ("transformer.", "base_model.model.")


@dataclass
class PeftLora:
    """A LoRA in diffusers module names, ready for peft.

    ``state_dict`` holds ``<module>.lora_A.weight`` [r, in] and ``<module>.lora_B.weight`` [out, r];
    ``ranks`` and ``alphas`` give each module's r and alpha (scale = alpha / r).
    """

    state_dict: dict[str, torch.Tensor]
    ranks: dict[str, int]
    alphas: dict[str, float]

    def lora_config(self) -> LoraConfig:
        """A peft ``LoraConfig`` targeting exactly these modules with their ranks and alphas."""
        rank = Counter(self.ranks.values()).most_common(1)[0][0]
        alpha = Counter(self.alphas.values()).most_common(1)[0][0]
        return LoraConfig(
            r=rank,
            lora_alpha=alpha,
            target_modules=sorted(self.ranks),
            # peft reads pattern keys as regular expressions: escape the dots of the module names.
            rank_pattern={re.escape(m): r for m, r in self.ranks.items() if r != rank},
            alpha_pattern={re.escape(m): a for m, a in self.alphas.items() if a != alpha},
        )


def _describe(keys: Iterable[str], limit: int = 5) -> str:
    keys = sorted(keys)
    return f"{len(keys)} key(s): {', '.join(keys[:limit])}{', ...' if len(keys) > limit else ''}"


def _kohya_name(official_module: str) -> str:
    return LORA_PREFIX + official_module.replace(".", "_")


def _linear_rules(transformer: nn.Module) -> dict[str, KeyRule]:
    """Official module -> its ``.weight`` key rule, for every official module made of ``nn.Linear`` layers."""
    rules = {}
    for rule in transformer_key_table(transformer.config):
        if not rule.official.endswith(".weight"):
            continue
        modules = [transformer.get_submodule(target.removesuffix(".weight")) for target in rule.targets]
        if all(isinstance(_base_layer(module), nn.Linear) for module in modules):
            rules[rule.official.removesuffix(".weight")] = rule
    return rules


def _base_layer(module: nn.Module) -> nn.Module:
    """The wrapped layer of a peft LoRA layer, else ``module``."""
    return module.get_base_layer() if isinstance(module, LoraLayer) else module


def default_lora_targets(transformer: nn.Module) -> list[str]:
    """The diffusers module names equivalent to the official LoRA targets (every ``nn.Linear`` of the double and
    single blocks: 10 official modules per double block -> 14 diffusers modules, 3 per single block -> 6).

    The default ``target_modules`` of a peft ``LoraConfig`` for this transformer.
    """
    targets = []
    for official, (modules, _) in official_module_targets(transformer.config).items():
        if official.startswith(DEFAULT_TARGET_BLOCKS):
            targets += modules
    return targets


def is_kohya_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state_dict`` uses the kohya key names (``lora_unet_*`` / ``lora_te*``)."""
    return any(key.startswith((LORA_PREFIX, TEXT_ENCODER_PREFIX)) for key in state_dict)


def kohya_to_peft(state_dict: Mapping[str, torch.Tensor], transformer: nn.Module) -> PeftLora:
    """Convert a kohya-style LoRA (official module names) into diffusers module names, exactly.

    Raises :class:`CheckpointError` for keys that name no LoRA-able official module, incomplete modules and
    shapes that do not fit ``transformer``.
    """
    rules = {_kohya_name(official): rule for official, rule in _linear_rules(transformer).items()}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    unknown, text_encoder = [], []
    for key, tensor in state_dict.items():
        name, _, suffix = key.partition(".")
        if key.startswith(TEXT_ENCODER_PREFIX):
            text_encoder.append(key)
        elif name in rules and suffix in KOHYA_SUFFIXES:
            groups.setdefault(name, {})[suffix] = tensor
        else:
            unknown.append(key)
    if text_encoder:
        logger.warning("ignoring %d text-encoder LoRA tensor(s) (lora_te*): only the transformer takes a LoRA",
                       len(text_encoder))
    if unknown:
        raise CheckpointError(
            f"LoRA file has keys that name no LoRA-able transformer module: {_describe(unknown)}; expected "
            f"'{LORA_PREFIX}<official module>.{{{','.join(KOHYA_SUFFIXES)}}}', e.g. "
            f"'{LORA_PREFIX}double_blocks_0_img_attn_qkv.lora_down.weight'"
        )
    converted = PeftLora({}, {}, {})
    for name, parts in sorted(groups.items()):
        if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
            raise CheckpointError(f"LoRA module {name} needs both lora_down.weight and lora_up.weight")
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        rule = rules[name]
        official = rule.official.removesuffix(".weight")
        modules = [target.removesuffix(".weight") for target in rule.targets]
        layers = [_base_layer(transformer.get_submodule(module)) for module in modules]
        expected_in, expected_out = layers[0].in_features, sum(layer.out_features for layer in layers)
        _check_lora_shape(f"{name}.lora_down.weight", down, ("r", expected_in), official)
        _check_lora_shape(f"{name}.lora_up.weight", up, (expected_out, down.shape[0]), official)
        rank = down.shape[0]
        alpha = _alpha(f"{name}.alpha", parts["alpha"]) if "alpha" in parts else float(rank)
        for module, piece in zip(modules, rule.to_diffusers(up), strict=True):
            converted.state_dict[f"{module}.lora_A.weight"] = down.clone()
            converted.state_dict[f"{module}.lora_B.weight"] = piece.contiguous()
            converted.ranks[module] = rank
            converted.alphas[module] = alpha
    if not converted.ranks:
        raise CheckpointError("LoRA file has no transformer LoRA tensors")
    return converted


def peft_state_dict_to_lora(
    state_dict: Mapping[str, torch.Tensor], transformer: nn.Module, adapter_config: Mapping | None = None
) -> PeftLora:
    """Read a peft/diffusers-format LoRA state dict (``transformer.``/``base_model.model.`` prefixes allowed).

    ``adapter_config`` holds ``r``, ``lora_alpha`` and optionally ``alpha_pattern`` (peft's fields); without
    it alpha = r. Raises :class:`CheckpointError` for keys that name no ``nn.Linear`` of ``transformer``, a
    module without both its A and B tensors, and shapes that do not fit the layer.
    """
    linear = {name: _base_layer(module) for name, module in transformer.named_modules()
              if isinstance(_base_layer(module), nn.Linear)}
    converted = PeftLora({}, {}, {})
    unknown = []
    pieces: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, tensor in state_dict.items():
        name = next((key.removeprefix(p) for p in PEFT_KEY_PREFIXES if key.startswith(p)), key)
        module, _, suffix = name.rpartition(".lora_")
        if module not in linear or suffix not in ("A.weight", "B.weight"):
            unknown.append(key)
            continue
        pieces.setdefault(module, {})[suffix] = (key, tensor)
        converted.state_dict[name] = tensor
    if unknown:
        raise CheckpointError(
            f"LoRA file has keys that name no Linear layer of the transformer: {_describe(unknown)}; expected "
            "'<module>.lora_A.weight' / '<module>.lora_B.weight', e.g. 'transformer_blocks.0.attn.to_q.lora_A.weight'"
        )
    for module, parts in sorted(pieces.items()):
        if len(parts) != 2:
            raise CheckpointError(f"LoRA module {module} needs both lora_A.weight and lora_B.weight")
        (a_key, lora_a), (b_key, lora_b) = parts["A.weight"], parts["B.weight"]
        layer = linear[module]
        _check_lora_shape(a_key, lora_a, ("r", layer.in_features), module)
        _check_lora_shape(b_key, lora_b, (layer.out_features, lora_a.shape[0]), module)
        converted.ranks[module] = lora_a.shape[0]
    if not converted.ranks:
        raise CheckpointError("LoRA file has no transformer LoRA tensors")
    config = _checked_adapter_config(adapter_config)
    alpha_pattern = config.get("alpha_pattern") or {}
    for module, rank in converted.ranks.items():
        pattern = next((p for p in alpha_pattern if re.match(rf"(.*\.)?({p})$", module)), None)
        converted.alphas[module] = float(alpha_pattern[pattern] if pattern else config.get("lora_alpha", rank))
    return converted


def _check_lora_shape(key: str, tensor: torch.Tensor, expected: tuple, module: str) -> None:
    """Raise :class:`CheckpointError` naming ``key`` unless ``tensor`` is a finite floating-point matrix of shape
    ``expected`` (``"r"`` matches any rank) for the model's ``module``."""
    got = tuple(tensor.shape)
    if len(got) != 2 or any(want != "r" and size != want for size, want in zip(got, expected, strict=True)):
        shown = "(" + ", ".join(map(str, expected)) + ")"
        raise CheckpointError(f"LoRA tensor {key} has shape {got}, but the model's {module} needs {shown}")
    if not tensor.is_floating_point():
        raise CheckpointError(f"LoRA tensor {key} is {tensor.dtype}, not floating point")
    if not bool(torch.isfinite(tensor).all()):
        raise CheckpointError(f"LoRA tensor {key} holds NaN or infinite values")


def _alpha(key: str, tensor: torch.Tensor) -> float:
    """The kohya ``alpha`` scalar of ``key``, which must be one finite number."""
    if tensor.numel() != 1:
        raise CheckpointError(f"LoRA tensor {key} has shape {tuple(tensor.shape)}, but alpha is one number")
    alpha = float(tensor.reshape(()))
    if not math.isfinite(alpha):
        raise CheckpointError(f"LoRA tensor {key} is {alpha}, but alpha must be a finite number")
    return alpha


def _checked_adapter_config(adapter_config: Mapping | None) -> dict:
    """The peft adapter config of a LoRA file with the fields this reader uses checked: ``lora_alpha`` a finite
    number, ``alpha_pattern`` an object of regular expression -> finite number."""
    config = dict(adapter_config or {})
    try:
        if "lora_alpha" in config:
            validate.number("lora_alpha", config["lora_alpha"])
        alpha_pattern = config.get("alpha_pattern") or {}
        if not isinstance(alpha_pattern, Mapping):
            raise CheckpointError(f"the LoRA's {ADAPTER_METADATA_KEY} alpha_pattern must be an object, got "
                                  f"{type(alpha_pattern).__name__}")
        for pattern, alpha in alpha_pattern.items():
            validate.number(f"alpha_pattern[{pattern!r}]", alpha)
            re.compile(pattern)
    except InvalidValueError as error:
        raise CheckpointError(f"the LoRA's {ADAPTER_METADATA_KEY}: {error}") from None
    except re.error as error:
        raise CheckpointError(f"the LoRA's {ADAPTER_METADATA_KEY} alpha_pattern holds an invalid regular expression "
                              f"{error.pattern!r}: {error}") from None
    return config


def peft_to_kohya(transformer: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The kohya-format (official names) state dict of the peft LoRA ``adapter_name`` on ``transformer``, exact:
    merging it into the official weights changes them as the adapter changes the diffusers weights.

    Modules without LoRA are omitted. Raises :class:`CheckpointError` when the adapter does not exist or sits on
    a module that has no official counterpart.
    """
    layers = {
        name: module for name, module in transformer.named_modules()
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A
    }
    if not layers:
        raise CheckpointError(f"the transformer has no LoRA adapter named {adapter_name!r}")
    exported: dict[str, torch.Tensor] = {}
    covered = set()
    for official, rule in _linear_rules(transformer).items():
        modules = [target.removesuffix(".weight") for target in rule.targets]
        if not any(module in layers for module in modules):
            continue
        covered.update(modules)
        down, up, alpha = _official_lora(rule, [layers[m] if m in layers else transformer.get_submodule(m) for m in modules],
                                         adapter_name)
        name = _kohya_name(official)
        exported[f"{name}.lora_down.weight"] = down.contiguous()
        exported[f"{name}.lora_up.weight"] = up.contiguous()
        exported[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    leftover = set(layers) - covered
    if leftover:
        raise CheckpointError(f"LoRA on modules the official format cannot express: {_describe(leftover)}")
    return exported


def _official_lora(rule: KeyRule, layers: list[nn.Module], adapter_name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(down [R, in], up [out, R], alpha) of one official module from its diffusers pieces (``nn.Linear`` for
    pieces without LoRA)."""
    pieces = [
        (layer.lora_A[adapter_name].weight.detach(), layer.lora_B[adapter_name].weight.detach(),
         float(layer.scaling[adapter_name]))
        if isinstance(layer, LoraLayer) and adapter_name in layer.lora_A else None
        for layer in layers
    ]
    present = [piece for piece in pieces if piece is not None]
    first_down, first_up, first_scale = present[0]
    rank = first_down.shape[0]
    shared = len(present) == len(pieces) and all(
        torch.equal(down, first_down) and scale == first_scale for down, _, scale in present
    )
    if shared:  # one lora_down and one scale for every piece: write them as they are
        return first_down, rule.to_official([up for _, up, _ in present]), first_scale * rank
    # Stack the pieces' lora_A; each piece's rows of lora_up read only its own block, scale folded in (alpha = R).
    total_rank = sum(piece[0].shape[0] for piece in present)
    down = torch.cat([piece[0] for piece in present], dim=0)  # [R, in]
    blocks, offset = [], 0
    for piece, layer in zip(pieces, layers, strict=True):
        out_features = _base_layer(layer).out_features
        block = torch.zeros(out_features, total_rank, dtype=torch.float32, device=down.device)  # [out_i, R]
        if piece is not None:
            piece_down, piece_up, scale = piece
            block[:, offset:offset + piece_down.shape[0]] = piece_up.float() * scale
            offset += piece_down.shape[0]
        blocks.append(block.to(first_up.dtype))
    return down, rule.to_official(blocks), float(total_rank)


# ----------------------------------------------------------------------------------------------------------------
# Files


def _adapter_metadata(transformer: nn.Module, adapter_name: str) -> dict:
    """``r``, ``lora_alpha``, ``rank_pattern``, ``alpha_pattern`` of an adapter, from its layers."""
    lora = PeftLora({}, {}, {})
    for name, module in transformer.named_modules():
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
            lora.ranks[name] = module.r[adapter_name]
            lora.alphas[name] = float(module.lora_alpha[adapter_name])
    config = lora.lora_config()
    return {"r": config.r, "lora_alpha": config.lora_alpha, "rank_pattern": config.rank_pattern,
            "alpha_pattern": config.alpha_pattern, "target_modules": sorted(lora.ranks)}


def save_lora(
    transformer: nn.Module, path: str | os.PathLike, format: str = "kohya", adapter_name: str = "default"
) -> Path:
    """Write the peft LoRA ``adapter_name`` of ``transformer`` to the safetensors file ``path``.

    ``format="kohya"``: official names (what the official ``--lora`` reads); ``format="peft"``: diffusers names
    with the ranks and alphas in the file's metadata.
    """
    from peft import get_peft_model_state_dict

    path = Path(path)
    if format == "kohya":
        state_dict, metadata = peft_to_kohya(transformer, adapter_name), {"format": "pt"}
    elif format == "peft":
        if adapter_name not in getattr(transformer, "peft_config", {}):
            raise CheckpointError(f"the transformer has no LoRA adapter named {adapter_name!r}")
        state_dict = get_peft_model_state_dict(transformer, adapter_name=adapter_name)
        metadata = {"format": "pt", ADAPTER_METADATA_KEY: json.dumps(_adapter_metadata(transformer, adapter_name))}
    else:
        raise ValueError(f"format must be 'kohya' or 'peft', got {format!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.detach().contiguous().cpu() for key, value in state_dict.items()}, str(path), metadata)
    return path


def check_lora_file(path: str | os.PathLike) -> None:
    """Check the header of the LoRA file ``path`` without reading its tensors: a safetensors file (pickles are
    refused) holding at least one tensor, every tensor floating point without an empty dimension, and every
    ``alpha`` one number. Raises :class:`CheckpointError` naming the file and the tensor."""
    header = read_header(path)
    if not header:
        raise CheckpointError(f"{path} holds no tensors; a LoRA file holds lora_A/lora_B (or lora_down/lora_up) "
                              "matrices")
    for key, (dtype, shape) in header.items():
        if key.endswith(".alpha"):
            if math.prod(shape) != 1 or dtype == "BOOL":
                raise CheckpointError(f"{path}: tensor {key} is {dtype} of shape {shape}, but alpha is one number")
            continue
        check_weights(path, {key: (dtype, shape)})


def load_lora_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA safetensors file, its header checked first (:func:`check_lora_file`)."""
    check_lora_file(path)
    return load_file(str(path))


def load_lora_metadata(path: str | os.PathLike) -> dict | None:
    """The peft adapter config stored in a LoRA file's metadata (``lora_adapter_metadata``), if any."""
    with safe_open(str(path), framework="pt") as handle:
        text = (handle.metadata() or {}).get(ADAPTER_METADATA_KEY)
    try:
        config = json.loads(text) if text else None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: {ADAPTER_METADATA_KEY} metadata is not valid JSON: {error}") from error
    if config is not None and not isinstance(config, dict):
        raise CheckpointError(f"{path}: {ADAPTER_METADATA_KEY} metadata must be a JSON object, got "
                              f"{type(config).__name__}")
    return config


def read_lora(source: str | os.PathLike | Mapping[str, torch.Tensor], transformer: nn.Module) -> PeftLora:
    """A kohya or peft LoRA (file path or state dict, format detected) in diffusers module names."""
    adapter_config = None
    if isinstance(source, Mapping):
        state_dict = dict(source)
    else:
        state_dict = load_lora_state_dict(source)
        adapter_config = load_lora_metadata(source)
    if is_kohya_state_dict(state_dict):
        return kohya_to_peft(state_dict, transformer)
    return peft_state_dict_to_lora(state_dict, transformer, adapter_config)


def load_lora(
    transformer: nn.Module,
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    adapter_name: str = "default",
    scale: float = 1.0,
) -> None:
    """Add the LoRA ``source`` (kohya or peft format) to ``transformer`` as peft adapter ``adapter_name`` with
    multiplier ``scale``; adapters loaded before stay active.

    Raises :class:`CheckpointError` for unknown keys, wrong shapes and an adapter name already in use, and
    :class:`~step1x_edit.errors.InvalidValueError` for a ``scale`` that is not a finite number.
    """
    scale = validate.number("the LoRA scale", scale)
    lora = read_lora(source, transformer)
    existing = getattr(transformer, "peft_config", {})
    if adapter_name in existing:
        raise CheckpointError(f"a LoRA adapter named {adapter_name!r} is already loaded; pass another adapter_name")
    active = list(transformer.active_adapters()) if existing else []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # several adapters are intended
        transformer.add_adapter(lora.lora_config(), adapter_name)
    dtype = next(transformer.parameters()).dtype
    state_dict = {key: value.to(dtype) for key, value in lora.state_dict.items()}
    result = set_peft_model_state_dict(transformer, state_dict, adapter_name=adapter_name)
    missing = [key for key in result.missing_keys if "lora_" in key and f".{adapter_name}." in key]
    if result.unexpected_keys or missing:
        transformer.delete_adapters(adapter_name)
        raise CheckpointError(
            f"LoRA does not fit the transformer: missing {_describe(missing)}, unexpected "
            f"{_describe(result.unexpected_keys)}"
        )
    transformer.set_adapter([*active, adapter_name])
    for module in transformer.modules():
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
            module.set_scale(adapter_name, scale)
