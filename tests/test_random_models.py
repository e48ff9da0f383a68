"""The random full-size pipeline builder of step1x_edit.testing.random_models, at the tiny preset (and the 7B
architecture on the meta device, where it costs nothing)."""

import torch
from accelerate import init_empty_weights
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration

from step1x_edit.testing.random_models import WEIGHT_STD, materialize, qwen2_5_vl_7b_config, random_pipeline
from step1x_edit.testing.tiny import tiny_tokenizer


def test_the_7b_configuration_has_the_released_mllm_size():
    with init_empty_weights():
        model = Qwen2_5_VLForConditionalGeneration(qwen2_5_vl_7b_config(tiny_tokenizer()))
    assert round(sum(parameter.numel() for parameter in model.parameters()) / 1e9, 2) == 8.29


def test_materialized_weights_are_the_same_for_the_same_seed_and_differ_for_another():
    def build():
        return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 8))

    first, again, other = (materialize(build, "cpu", torch.float32, seed) for seed in (0, 0, 1))
    for left, right in zip(first.parameters(), again.parameters(), strict=True):
        assert torch.equal(left, right)
    assert not torch.equal(first[0].weight, other[0].weight)
    assert torch.equal(first[1].weight, torch.ones(32)) and torch.equal(first[1].bias, torch.zeros(32))
    assert torch.equal(first[0].bias, torch.zeros(32))
    assert abs(first[0].weight.std().item() - WEIGHT_STD) < 0.005
    assert not first[0].weight.requires_grad and not first.training


def test_a_random_pipeline_is_built_in_the_asked_dtype_and_edits():
    pipe = random_pipeline("tiny", "cpu", torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16
    assert pipe.vae.dtype == torch.float32
    rotary = dict(pipe.text_encoder.named_buffers())["model.language_model.rotary_emb.inv_freq"]
    assert rotary.dtype == torch.float32  # buffers keep the dtype the model's constructor gives them
    edited = pipe(Image.new("RGB", (64, 64), "gray"), "make it red", num_inference_steps=1, size_level=64,
                  output_type="pt").images
    assert edited.shape == (1, 3, 64, 64) and torch.isfinite(edited).all()
