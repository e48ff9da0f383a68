"""Weight quantization of the DiT and the MLLM through torchao and bitsandbytes, and a quantized model saved to and
loaded back from safetensors.

The quantizations (:data:`~step1x_edit.acceleration.options.QUANTIZATIONS` but ``none``):

- ``int8``: torchao's ``Int8WeightOnlyConfig``: int8 weights with one scale per output row; the matmul runs in
  the activations' dtype;
- ``fp8``: torchao's ``Float8WeightOnlyConfig``: float8_e4m3fn weights with one scale per output row; the same
  compute as ``int8``, so it needs no fp8 matmul (any device that can cast to float8 runs it);
- ``nf4``: bitsandbytes' 4-bit NormalFloat (``Linear4bit``, blocks of 64 weights, the block scales themselves
  quantized), computed in the compute dtype.

All three run on CPU (the tests run them there) and, by the libraries' documentation, on CUDA GPUs. Only the
Linear layers of the repeated blocks are quantized (see :data:`QUANTIZED_LAYERS` for which and why). A quantized
model is saved as ``model.safetensors`` (torchao's tensors flattened by torchao's own safetensors helpers,
bitsandbytes' packed quantization state as its ``state_dict`` writes it), ``config.json`` and
``quantization.json`` (the method and the quantized layers), and :func:`load_quantized` rebuilds it from those
files without re-quantizing anything and without unpickling.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from ..errors import CheckpointError, InvalidValueError, UnsupportedModeError
from .memory import tensor_bytes

PARTS = ("dit", "mllm")
# The Linear layers quantized in each part, by name prefix: the repeated blocks, 95% of the DiT's weights and 86%
# of Qwen2.5-VL-7B's (its language-model layers, 79%, and vision blocks, 8%). The rest stays in the compute dtype,
# by measurement on random models (docs/performance.md): a layer that maps straight into or out of the model's
# stream carries its error undamped, so the DiT's x_embedder or proj_out alone adds 10 to 20 times the output error
# of all its blocks together, its time/text embedders or norm_out as much as the blocks (these four: 0.3% of the
# bytes), and the MLLM's vision merger alone as much as all its layers (0.6% of the bytes). The connector (4.3% of
# the DiT) makes the whole condition, whose effect a random DiT barely shows, so its measured effect cannot be
# trusted; its own output moves by 0.8% in nf4. lm_head (the 7B's 152k-token output layer, 6.6%) does not touch
# the condition but writes v1.2's reasoning, and transformers' quantizers keep it too.
QUANTIZED_LAYERS = {
    "dit": ("transformer_blocks.", "single_transformer_blocks."),
    "mllm": ("model.language_model.layers.", "model.visual.blocks."),
}
# Each quantization (the values of options.QUANTIZATIONS but "none", which imports this module and not the other
# way round), the package it needs and the lowest version tested (torchao's safetensors helpers and its
# Int8Tensor/Float8Tensor, bitsandbytes' CPU backend).
PACKAGES = {"int8": ("torchao", "0.18.0"), "fp8": ("torchao", "0.18.0"), "nf4": ("bitsandbytes", "0.50.0")}
INSTALL = "pip install 'step1x-edit[quantization]'"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
RECIPE_NAME = "quantization.json"


def _option(name: str, part: str | None) -> str:
    return f"--quantize-{part} {name}" if part else f"quantization {name}"


def _check_name(name: str, part: str | None) -> None:
    if part is not None and part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    if name != "none" and name not in PACKAGES:
        field = f"quantize_{part}" if part else "quantization"
        raise InvalidValueError(f"{field} must be one of none, {', '.join(PACKAGES)}, got {name!r}")


def _library(name: str, part: str | None = None) -> ModuleType:
    """The package quantization ``name`` runs on, imported, or :class:`UnsupportedModeError` saying how to get it."""
    package, lowest = PACKAGES[name]
    try:
        library = importlib.import_module(package)
    except ImportError as error:
        raise UnsupportedModeError(
            f"{_option(name, part)} needs the {package} package, which cannot be imported "
            f"({' '.join(str(error).split())}): {INSTALL}"
        ) from error
    from packaging.version import Version

    if Version(library.__version__) < Version(lowest):
        raise UnsupportedModeError(
            f"{_option(name, part)} needs {package} >= {lowest}, installed {library.__version__}: {INSTALL}"
        )
    return library


def check_quantization(name: str, device: torch.device, *, part: str | None = None) -> None:
    """Raise before any model is loaded unless quantization ``name`` (``none`` or one of :data:`PACKAGES`) can
    run on ``device``: :class:`InvalidValueError` for an unknown name, :class:`UnsupportedModeError` (one line,
    with what to do) when its package is missing or too old or does not run on the device type. ``part`` (``dit`` or
    ``mllm``) only names the option in the message."""
    _check_name(name, part)
    if name == "none":
        return
    library = _library(name, part)
    if name == "nf4" and device.type not in library.supported_torch_devices:
        raise UnsupportedModeError(
            f"{_option(name, part)} runs on {', '.join(sorted(library.supported_torch_devices))} devices with "
            f"bitsandbytes {library.__version__}, not {device.type}: choose int8 or fp8"
        )


def _selected(module: nn.Module, part: str) -> list[str]:
    """The names of the Linear layers of ``module`` that :data:`QUANTIZED_LAYERS` names for ``part`` and that are not
    quantized yet."""
    return [layer_name for layer_name, layer in module.named_modules()
            if type(layer) is nn.Linear and type(layer.weight) is nn.Parameter
            and layer_name.startswith(QUANTIZED_LAYERS[part])]


def _nf4_layer(layer: nn.Linear, compute_dtype: torch.dtype, bnb: ModuleType) -> nn.Module:
    """An empty bitsandbytes ``Linear4bit`` of ``layer``'s sizes (weights on the meta device, bias as ``layer``'s)."""
    quantized = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=layer.bias is not None,
                                  compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4",
                                  device="meta")
    # bitsandbytes' fused kernel for CPUs with AVX512-BF16 repacks the weights at the first forward, computes in
    # bfloat16 whatever the compute dtype, fails on layers whose sizes are not multiples of 32 and 64, and
    # re-quantizes the block scales when the layer is saved (so saving would change the model). Its portable path
    # dequantizes to the compute dtype, at about the same speed on CPU; GPUs are not concerned.
    quantized.support_avx512bf16_for_cpu = False
    if layer.bias is not None:
        quantized.bias = nn.Parameter(layer.bias.data, requires_grad=False)
    return quantized.train(layer.training)


def _to_nf4(layer: nn.Linear, compute_dtype: torch.dtype, bnb: ModuleType) -> nn.Module:
    """``layer`` as a bitsandbytes ``Linear4bit`` holding its weights in NF4 (quantized where they are)."""
    quantized = _nf4_layer(layer, compute_dtype, bnb)
    # Moving a Params4bit to a device is what quantizes it (bitsandbytes' own way).
    quantized.weight = bnb.nn.Params4bit(layer.weight.data, requires_grad=False, compress_statistics=True,
                                         quant_type="nf4", module=quantized).to(layer.weight.device)
    return quantized


def _replace(module: nn.Module, name: str, layer: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(module.get_submodule(parent), child, layer)


def _torchao_config(name: str, torchao: ModuleType):
    # set_inductor_config=False: left on, torchao would change process-wide settings (inductor flags and
    # torch.set_float32_matmul_precision("high"), which changes every float32 matmul on GPUs).
    if name == "int8":
        return torchao.quantization.Int8WeightOnlyConfig(set_inductor_config=False)
    return torchao.quantization.Float8WeightOnlyConfig(set_inductor_config=False)


def quantize_model(module: nn.Module, name: str, compute_dtype: torch.dtype, *, part: str) -> int:
    """Quantize in place the Linear layers of ``part`` (``"dit"``: a Step1XEditTransformer2DModel, ``"mllm"``:
    a Qwen2.5-VL) that :data:`QUANTIZED_LAYERS` names, with quantization ``name`` (one of :data:`PACKAGES`, or
    ``none``: nothing), where the weights are. ``compute_dtype`` is the dtype the nf4 layers compute in; the
    torchao layers compute in their weights' own dtype. Returns the bytes of weight storage saved."""
    _check_name(name, part)
    if name == "none":
        return 0
    library = _library(name, part)
    layers = _selected(module, part)
    if not layers:
        raise ValueError(f"{type(module).__name__} has no unquantized Linear layer under {QUANTIZED_LAYERS[part]} "
                         f"to quantize to {name}: is it the {part}?")
    before = weight_bytes(module)
    if name == "nf4":
        for layer_name in layers:
            _replace(module, layer_name, _to_nf4(module.get_submodule(layer_name), compute_dtype, library))
    else:
        selected = set(layers)
        library.quantization.quantize_(module, _torchao_config(name, library),
                                       filter_fn=lambda _, layer_name: layer_name in selected)
    return before - weight_bytes(module)


def weight_bytes(module: nn.Module) -> int:
    """The bytes ``module``'s parameters take, quantized ones with their scales and quantization state."""
    return sum(tensor_bytes(parameter) for parameter in module.parameters())


def quantized_layers(module: nn.Module) -> dict[str, str]:
    """``{layer name: quantization}`` of every quantized Linear layer of ``module``."""
    found = {}
    for layer_name, layer in module.named_modules():
        if type(layer).__name__ == "Linear4bit" and getattr(layer.weight, "quant_type", None) == "nf4":
            found[layer_name] = "nf4"
        elif isinstance(layer, nn.Linear):
            kind = {"Int8Tensor": "int8", "Float8Tensor": "fp8"}.get(type(layer.weight).__name__)
            if kind:
                found[layer_name] = kind
    return found


def save_quantized(module: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``module`` (quantized by :func:`quantize_model`; a diffusers or transformers model) to
    ``directory``: ``model.safetensors``, ``config.json`` and ``quantization.json``. Returns the directory."""
    layers = quantized_layers(module)
    methods = sorted(set(layers.values()))
    if len(methods) != 1:
        raise ValueError(f"{type(module).__name__} must hold layers of one quantization to be saved, found "
                         f"{methods or 'none'}")
    name = methods[0]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = module.state_dict()
    if name == "nf4":
        tensors, metadata = {key: value.contiguous() for key, value in state.items()}, {}
        compute_dtype = module.get_submodule(next(iter(layers))).compute_dtype
    else:
        from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

        tensors, metadata = flatten_tensor_state_dict(state)
        compute_dtype = module.get_submodule(next(iter(layers))).weight.dtype
    from safetensors.torch import save_file

    save_file(tensors, directory / WEIGHTS_NAME, metadata={**metadata, "format": "pt"})
    if hasattr(module, "save_config"):  # a diffusers model
        module.save_config(directory)
    else:  # a transformers model
        module.config.save_pretrained(directory)
    recipe = {"quantization": name, "compute_dtype": str(compute_dtype).removeprefix("torch."),
              "layers": list(layers)}
    (directory / RECIPE_NAME).write_text(json.dumps(recipe, indent=2) + "\n")
    return directory


def _read_recipe(directory: Path) -> tuple[str, torch.dtype, list[str]]:
    path = directory / RECIPE_NAME
    for required in (path, directory / WEIGHTS_NAME, directory / CONFIG_NAME):
        if not required.is_file():
            raise CheckpointError(f"{directory} is not a quantized model folder: {required.name} is missing")
    try:
        recipe = json.loads(path.read_text())
        name, layers = recipe["quantization"], recipe["layers"]
        compute_dtype = getattr(torch, recipe["compute_dtype"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{path} is not a quantization recipe: {error!r}") from error
    if name not in PACKAGES or not isinstance(compute_dtype, torch.dtype) or not isinstance(layers, list) \
            or not all(isinstance(layer, str) for layer in layers):
        raise CheckpointError(f"{path} names quantization {name!r} over {type(layers).__name__} layers; expected one "
                              f"of {', '.join(PACKAGES)} and a list of layer names")
    return name, compute_dtype, layers


def _empty_model(model_class: type, directory: Path) -> nn.Module:
    """``model_class`` built from ``directory``'s config with its parameters on the meta device (buffers real)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        if hasattr(model_class, "load_config"):  # a diffusers model
            return model_class.from_config(model_class.load_config(directory))
        return model_class(model_class.config_class.from_pretrained(directory))


def load_quantized(model_class: type, directory: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The model :func:`save_quantized` wrote to ``directory``, as a ``model_class`` (the saved model's class: a
    diffusers or transformers model) on ``device``, in eval mode. Every saved tensor must fit the model built from
    the saved config (:class:`CheckpointError` otherwise); nothing is unpickled or re-quantized."""
    directory = Path(directory)
    name, compute_dtype, layers = _read_recipe(directory)
    device = torch.device(device)
    check_quantization(name, device)
    library = _library(name)
    from safetensors import SafetensorError, safe_open

    leftover = {}
    try:
        model = _empty_model(model_class, directory)
        with safe_open(directory / WEIGHTS_NAME, framework="pt", device=str(device)) as file:
            metadata = file.metadata() or {}
            state = {key: file.get_tensor(key) for key in file.keys()}
        if name == "nf4":
            for layer_name in layers:
                quantized = _nf4_layer(model.get_submodule(layer_name), compute_dtype, library)
                prefix = f"{layer_name}.weight."
                stats = {key[len(prefix):]: state.pop(key) for key in list(state) if key.startswith(prefix)}
                quantized.weight = library.nn.Params4bit.from_prequantized(
                    state.pop(f"{layer_name}.weight"), stats, device=device, module=quantized)
                _replace(model, layer_name, quantized)
        else:
            from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

            state, leftover = unflatten_tensor_state_dict(state, metadata)
        unexpected = [*leftover, *model.load_state_dict(state, strict=False, assign=True).unexpected_keys]
    except (KeyError, ValueError, RuntimeError, OSError, SafetensorError) as error:
        raise CheckpointError(f"cannot load {directory / WEIGHTS_NAME} into {model_class.__name__}: "
                              f"{' '.join(str(error).split())}") from error
    missing = [key for key, parameter in model.named_parameters() if parameter.is_meta]
    if missing or unexpected:
        raise CheckpointError(f"{directory / WEIGHTS_NAME} does not fit {model_class.__name__}: missing "
                              f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    if quantized_layers(model) != dict.fromkeys(layers, name):
        raise CheckpointError(f"{directory / WEIGHTS_NAME} does not hold the {name} layers its recipe names")
    return model.to(device).eval().requires_grad_(False)

