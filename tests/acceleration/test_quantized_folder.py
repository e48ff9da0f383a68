"""A model quantized once by ``convert --quantize-dit/--quantize-mllm`` loads quantized, without its full-precision
weights, and edits exactly as the same model quantized in memory."""

import pytest
import torch
from PIL import Image

from step1x_edit.acceleration.options import Acceleration
from step1x_edit.acceleration.quantization import quantized_layers
from step1x_edit.cli import main
from step1x_edit.errors import CheckpointError
from step1x_edit.pipeline import load_pipeline
from step1x_edit.testing.tiny import save_tiny_official

pytest.importorskip("torchao", reason="the quantization extra (torchao) is not installed")
pytest.importorskip("bitsandbytes", reason="the quantization extra (bitsandbytes) is not installed")

IMAGE = Image.new("RGB", (64, 48), (100, 20, 30))


def _latents(pipe):
    return pipe(IMAGE, "make it red", num_inference_steps=2, size_level=64,
                generator=torch.Generator().manual_seed(0), output_type="latent").images


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    return save_tiny_official(tmp_path_factory.mktemp("official") / "model")


@pytest.mark.parametrize("name", ["int8", "nf4"])
def test_a_converted_quantized_model_loads_quantized_and_edits_as_quantized_in_memory(official, tmp_path, name):
    out = tmp_path / name
    assert main(["convert", str(official), str(out), "--dtype", "fp32", "--quantize-dit", name,
                 "--quantize-mllm", name]) == 0
    assert not list((out / "transformer").glob("diffusion_pytorch_model*"))  # the full-precision weights are gone
    pipe = load_pipeline(out, device="cpu")
    assert set(quantized_layers(pipe.transformer).values()) == {name}
    assert set(quantized_layers(pipe.text_encoder).values()) == {name}
    in_memory = load_pipeline(official, device="cpu", acceleration=Acceleration(quantize_dit=name, quantize_mllm=name))
    assert torch.equal(_latents(pipe), _latents(in_memory))
    assert main(["info", str(out)]) == 0


def test_a_quantized_component_that_does_not_fit_its_config_is_refused(official, tmp_path):
    out = tmp_path / "int8"
    assert main(["convert", str(official), str(out), "--dtype", "fp32", "--quantize-dit", "int8"]) == 0
    config = (out / "transformer" / "config.json")
    config.write_text(config.read_text().replace('"depth": 1', '"depth": 2'))
    with pytest.raises(CheckpointError, match="does not fit Step1XEditTransformer2DModel"):
        load_pipeline(out, device="cpu")
