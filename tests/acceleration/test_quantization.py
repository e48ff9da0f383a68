"""Weight quantization of the DiT and the MLLM (torchao int8/fp8 weight-only, bitsandbytes NF4) on CPU: the output
stays within a measured bound, the weights shrink, a saved model reloads with identical outputs, and what cannot
run is refused before any model is touched. Tests that need a quantization package skip without it (the
``quantization`` extra brings both)."""

import copy
import importlib.util
import json
import sys
import types

import pytest
import torch
from PIL import Image
from torch import nn
from transformers import Qwen2_5_VLForConditionalGeneration

from step1x_edit.acceleration import options, quantization
from step1x_edit.demo.components import seeded
from step1x_edit.errors import CheckpointError, InvalidValueError, UnsupportedModeError
from step1x_edit.models.mllm import encode_prompts
from step1x_edit.models.presets import build_transformer
from step1x_edit.models.transformer import Step1XEditTransformer2DModel
from step1x_edit.sampling import position_ids
from step1x_edit.testing.compare import relative_error
from step1x_edit.testing.tiny import tiny_processor, tiny_text_encoder

CPU = torch.device("cpu")


def _method(name: str):
    package = quantization.PACKAGES[name][0]
    missing = importlib.util.find_spec(package) is None
    return pytest.param(name, marks=pytest.mark.skipif(missing, reason=f"{package} is not installed (the "
                                                                         "quantization extra)"))


METHODS = [_method(name) for name in ("int8", "fp8", "nf4")]
# The largest relative max error of the DiT's output (float32, blocks quantized), about 2.5 times the larger of the
# two presets' measured errors: int8 0.00041 (mid 0.00035), fp8 0.0026 (tiny 0.0025), nf4 0.0114 (mid 0.0102).
DIT_BOUNDS = {"int8": 0.001, "fp8": 0.0065, "nf4": 0.03}
# The same for the MLLM's condition (tiny Qwen2.5-VL, float32, language layers and vision blocks), twice the
# measured errors: int8 0.0012, fp8 0.0088, nf4 0.175 (4 bits are coarse for layers 16 and 32 wide).
MLLM_BOUNDS = {"int8": 0.003, "fp8": 0.02, "nf4": 0.35}
# The storage of the quantized layers' weights against bfloat16: int8 and fp8 are one byte a weight plus a scale
# per row (measured 0.5046 and 0.5038 on the mid preset), nf4 half a byte plus the quantized block scales (0.2600).
STORAGE_RATIOS = {"int8": 0.51, "fp8": 0.51, "nf4": 0.265}


def _dit_inputs(model, dtype=torch.float32, latent=(4, 6), text_length=5):
    generator = torch.Generator().manual_seed(0)
    img_ids, txt_ids = position_ids(*latent, text_length, model.config.version)
    tokens = torch.randn(2, img_ids.shape[0], model.config.in_channels, generator=generator)
    states = torch.randn(2, text_length, model.config.mllm_hidden_size, generator=generator)
    mask = torch.ones(2, text_length, dtype=torch.long)
    return tokens.to(dtype), torch.tensor([0.9, 0.4]), states.to(dtype), mask, img_ids, txt_ids


def _forward(model, inputs):
    with torch.no_grad():
        return model(*inputs)


@pytest.fixture(scope="module")
def dits():
    return {preset: seeded(1, lambda preset=preset: build_transformer(preset)).eval() for preset in ("tiny", "mid")}


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


@pytest.fixture(scope="module")
def image():
    return Image.new("RGB", (96, 64), (30, 120, 200))


def _condition(text_encoder, processor, image):
    embeddings, _ = encode_prompts(text_encoder, processor, [image], ["make the sky blue"], max_length=16)
    return embeddings


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("preset", ["tiny", "mid"])
def test_a_quantized_dit_stays_within_the_measured_bound(dits, preset, name):
    model = copy.deepcopy(dits[preset])
    inputs = _dit_inputs(model, latent=(8, 8), text_length=16) if preset == "mid" else _dit_inputs(model)
    reference = _forward(model, inputs)
    quantization.quantize_model(model, name, torch.float32, part="dit")
    error = relative_error(_forward(model, inputs), reference)
    assert 0 < error < DIT_BOUNDS[name]


@pytest.mark.parametrize("name", METHODS)
def test_quantization_shrinks_the_quantized_weights_and_reports_the_bytes_saved(dits, name):
    model = copy.deepcopy(dits["mid"]).to(torch.bfloat16)
    before = quantization.weight_bytes(model)
    layers_before = {layer_name: quantization.weight_bytes(layer) for layer_name, layer in model.named_modules()}
    saved = quantization.quantize_model(model, name, torch.bfloat16, part="dit")
    layers = quantization.quantized_layers(model)
    layers_after = sum(quantization.weight_bytes(model.get_submodule(layer)) for layer in layers)
    assert saved == before - quantization.weight_bytes(model)
    assert saved == sum(layers_before[layer] for layer in layers) - layers_after
    assert layers_after < STORAGE_RATIOS[name] * sum(layers_before[layer] for layer in layers)


@pytest.mark.parametrize("name", METHODS)
def test_quantization_keeps_the_dit_input_output_and_condition_layers_in_the_compute_dtype(dits, name):
    model = copy.deepcopy(dits["tiny"])
    quantization.quantize_model(model, name, torch.float32, part="dit")
    quantized = set(quantization.quantized_layers(model))
    linears = {layer_name for layer_name, layer in model.named_modules() if isinstance(layer, nn.Linear)}
    assert quantized == {layer for layer in linears if layer.split(".")[0].endswith("transformer_blocks")}
    for kept in ("x_embedder", "context_embedder", "proj_out", "norm_out.linear", "connector.global_proj_out",
                 "time_text_embed.timestep_embedder.linear_1"):
        assert type(model.get_submodule(kept).weight) is nn.Parameter


@pytest.mark.parametrize("name", METHODS)
def test_a_quantized_mllm_keeps_the_condition_within_the_measured_bound(processor, image, name):
    model = tiny_text_encoder()
    reference = _condition(model, processor, image)
    before = quantization.weight_bytes(model)
    saved = quantization.quantize_model(model, name, torch.float32, part="mllm")
    error = relative_error(_condition(model, processor, image), reference)
    assert 0 < error < MLLM_BOUNDS[name]
    assert 0 < saved < before
    quantized = set(quantization.quantized_layers(model))
    assert any(layer.startswith("model.visual.blocks.") for layer in quantized)
    assert not any(layer.startswith(("lm_head", "model.visual.merger")) for layer in quantized)


@pytest.mark.parametrize("name", METHODS)
def test_a_saved_quantized_dit_reloads_with_identical_outputs(dits, name, tmp_path):
    model = copy.deepcopy(dits["tiny"]).to(torch.bfloat16)
    quantization.quantize_model(model, name, torch.bfloat16, part="dit")
    inputs = _dit_inputs(model, torch.bfloat16)
    expected = _forward(model, inputs)
    quantization.save_quantized(model, tmp_path)
    reloaded = quantization.load_quantized(Step1XEditTransformer2DModel, tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.json", "model.safetensors",
                                                                 "quantization.json"]
    assert quantization.quantized_layers(reloaded) == quantization.quantized_layers(model)
    assert torch.equal(_forward(reloaded, inputs), expected)
    assert torch.equal(_forward(model, inputs), expected)  # saving left the model as it was


@pytest.mark.parametrize("name", METHODS)
def test_a_saved_quantized_mllm_reloads_with_identical_outputs(processor, image, name, tmp_path):
    model = tiny_text_encoder()
    quantization.quantize_model(model, name, torch.float32, part="mllm")
    expected = _condition(model, processor, image)
    quantization.save_quantized(model, tmp_path)
    reloaded = quantization.load_quantized(Qwen2_5_VLForConditionalGeneration, tmp_path)
    assert torch.equal(_condition(reloaded, processor, image), expected)


def test_none_changes_nothing(dits):
    model = copy.deepcopy(dits["tiny"])
    assert quantization.quantize_model(model, "none", torch.float32, part="dit") == 0
    assert not quantization.quantized_layers(model)
    quantization.check_quantization("none", CPU)


@pytest.mark.parametrize("name", METHODS)
def test_every_quantization_runs_on_cpu(name):
    quantization.check_quantization(name, CPU)


def test_the_quantizations_are_those_the_options_offer():
    assert options.QUANTIZATIONS == ("none", *quantization.PACKAGES)


def test_an_unknown_quantization_is_refused_naming_the_field(dits):
    with pytest.raises(InvalidValueError, match="quantize_dit must be one of none, int8, fp8, nf4, got 'int4'"):
        quantization.check_quantization("int4", CPU, part="dit")
    with pytest.raises(InvalidValueError, match="quantize_mllm must be one of"):
        quantization.quantize_model(copy.deepcopy(dits["tiny"]), "int4", torch.float32, part="mllm")


@pytest.mark.parametrize(("name", "package"), [("int8", "torchao"), ("fp8", "torchao"), ("nf4", "bitsandbytes")])
def test_a_missing_package_is_refused_with_the_install_command(dits, monkeypatch, name, package):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as it does when the package is absent
    with pytest.raises(UnsupportedModeError) as error:
        quantization.check_quantization(name, CPU, part="dit")
    message = str(error.value)
    assert message.startswith(f"--quantize-dit {name} needs the {package} package")
    assert message.endswith("pip install 'step1x-edit[quantization]'")
    assert "\n" not in message
    model = copy.deepcopy(dits["tiny"])
    with pytest.raises(UnsupportedModeError, match="pip install"):
        quantization.quantize_model(model, name, torch.float32, part="dit")
    assert not quantization.quantized_layers(model)


def test_a_package_older_than_the_tested_one_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", types.SimpleNamespace(__version__="0.9.0"))
    with pytest.raises(UnsupportedModeError, match=r"^--quantize-mllm int8 needs torchao >= 0\.18\.0, installed "
                                                   r"0\.9\.0: pip install 'step1x-edit\[quantization\]'$"):
        quantization.check_quantization("int8", CPU, part="mllm")


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_nf4_is_refused_on_a_device_bitsandbytes_does_not_support():
    with pytest.raises(UnsupportedModeError, match=r"^quantization nf4 runs on .*cpu.*cuda.* devices with "
                                                   r"bitsandbytes .*, not meta: choose int8 or fp8$"):
        quantization.check_quantization("nf4", torch.device("meta"))


@pytest.mark.parametrize("name", METHODS)
def test_a_quantized_model_is_not_quantized_again(dits, name):
    model = copy.deepcopy(dits["tiny"])
    quantization.quantize_model(model, name, torch.float32, part="dit")
    with pytest.raises(ValueError, match="has no unquantized Linear layer under"):
        quantization.quantize_model(model, "int8", torch.float32, part="dit")


def test_a_model_without_quantized_layers_is_not_saved(dits, tmp_path):
    with pytest.raises(ValueError, match="must hold layers of one quantization to be saved, found none"):
        quantization.save_quantized(dits["tiny"], tmp_path)


@pytest.mark.parametrize("name", METHODS[:1])
def test_a_folder_that_does_not_fit_is_refused(dits, name, tmp_path):
    with pytest.raises(CheckpointError, match="quantization.json is missing"):
        quantization.load_quantized(Step1XEditTransformer2DModel, tmp_path)
    model = copy.deepcopy(dits["tiny"])
    quantization.quantize_model(model, name, torch.float32, part="dit")
    quantization.save_quantized(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "depth_single_blocks": 2}))
    with pytest.raises(CheckpointError, match=r"does not fit Step1XEditTransformer2DModel: missing "
                                              r"\['single_transformer_blocks\.1\."):
        quantization.load_quantized(Step1XEditTransformer2DModel, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot load .*model.safetensors into Step1XEditTransformer2DModel"):
        quantization.load_quantized(Step1XEditTransformer2DModel, tmp_path)
    (tmp_path / "quantization.json").write_text(json.dumps({"quantization": "int3", "compute_dtype": "float32",
                                                             "layers": []}))
    with pytest.raises(CheckpointError, match="names quantization 'int3'"):
        quantization.load_quantized(Step1XEditTransformer2DModel, tmp_path)
