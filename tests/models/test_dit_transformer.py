"""Step1XEditTransformer2DModel: signature, connector behaviour, no DiT mask, checkpointing, LoRA, config checks."""

import pytest
import torch

from step1x_edit.errors import InvalidValueError
from step1x_edit.models.presets import build_transformer
from step1x_edit.models.transformer import Step1XEditTransformer2DModel
from step1x_edit.sampling import position_ids


def _inputs(model, batch=2, latent_hw=(4, 6), text_length=5, valid=(5, 3)):
    generator = torch.Generator().manual_seed(0)
    img_ids, txt_ids = position_ids(*latent_hw, text_length, model.config.version)
    tokens = torch.randn(batch, img_ids.shape[0], 64, generator=generator)
    states = torch.randn(batch, text_length, model.config.mllm_hidden_size, generator=generator)
    mask = torch.zeros(batch, text_length, dtype=torch.long)
    for row, length in enumerate(valid[:batch]):
        mask[row, :length] = 1
    states = states * mask.unsqueeze(-1)  # the MLLM encoder zeroes padded positions
    return tokens, torch.tensor([0.9, 0.4][:batch]), states, mask, img_ids, txt_ids


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_transformer("tiny").eval()


def test_forward_predicts_every_image_token(tiny):
    tokens, t, states, mask, img_ids, txt_ids = _inputs(tiny)
    with torch.no_grad():
        out = tiny(tokens, t, states, mask, img_ids, txt_ids)
        batched_ids = tiny(tokens, t, states, mask, img_ids.expand(2, -1, -1), txt_ids.expand(2, -1, -1))
    assert out.shape == tokens.shape
    assert torch.equal(out, batched_ids)


def test_padded_context_takes_part_in_the_dit_attention(tiny):
    tokens, t, states, mask, img_ids, txt_ids = _inputs(tiny)
    changed = states.clone()
    changed[1, 4] = 5.0  # a padded position of row 1 (not seen by the connector's valid rows or mean)
    with torch.no_grad():
        context, pooled = tiny.connector(states, t, mask)
        context2, pooled2 = tiny.connector(changed, t, mask)
        out, out2 = tiny(tokens, t, states, mask, img_ids, txt_ids), tiny(tokens, t, changed, mask, img_ids, txt_ids)
    assert torch.equal(pooled, pooled2)
    assert torch.allclose(context[1, :3], context2[1, :3], atol=1e-6)  # valid rows ignore padded keys
    assert not torch.allclose(context[1, 4], context2[1, 4])
    assert not torch.allclose(out[1], out2[1])  # ... and the DiT sees the padded outputs (no mask)
    assert torch.equal(out[0], out2[0])


def test_connector_depends_on_the_timestep(tiny):
    _, t, states, mask, _, _ = _inputs(tiny)
    with torch.no_grad():
        first, _ = tiny.connector(states, t, mask)
        second, _ = tiny.connector(states, t * 0.5, mask)
    assert not torch.allclose(first, second)


def test_v1_0_pooled_vector_scales_the_masked_mean():
    torch.manual_seed(0)
    model = build_transformer("tiny", version="v1.0").eval()
    _, t, states, mask, _, _ = _inputs(model)
    connector = model.connector
    with torch.no_grad():
        connector.scale_factor.fill_(-1.0)  # multiplier 0: the pooled vector is the projection's bias
        _, pooled = connector(states, t, mask)
        assert torch.allclose(pooled, connector.global_proj_out.bias.expand(2, -1))
        connector.scale_factor.fill_(0.5)
        _, pooled = connector(states, t, mask)
        mean = states.sum(1) / mask.sum(1, keepdim=True)
        assert torch.allclose(pooled, connector.global_proj_out(1.5 * mean), atol=1e-6)
    assert build_transformer("tiny").connector.scale_factor is None


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = build_transformer("tiny")
    inputs = _inputs(model)
    model(*inputs).square().mean().backward()
    reference = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing
    model(*inputs).square().mean().backward()
    for name, parameter in model.named_parameters():
        assert torch.allclose(parameter.grad, reference[name], atol=1e-6), name


def test_peft_lora_adapters_attach_to_the_documented_module_names():
    from peft import LoraConfig

    torch.manual_seed(0)
    model = build_transformer("tiny").eval()
    inputs = _inputs(model)
    with torch.no_grad():
        before = model(*inputs)
    targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "proj_mlp", "proj_out", "norm1.linear"]
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False))
    names = [name for name, _ in model.named_parameters() if "lora_A" in name]
    assert any(name.startswith("transformer_blocks.0.attn.to_q") for name in names)
    assert any(name.startswith("single_transformer_blocks.0.proj_mlp") for name in names)
    with torch.no_grad():
        assert not torch.allclose(model(*inputs), before)
        model.disable_adapters()
        assert torch.allclose(model(*inputs), before)


def test_save_and_load_pretrained_round_trip(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    loaded = Step1XEditTransformer2DModel.from_pretrained(tmp_path).eval()
    inputs = _inputs(tiny)
    with torch.no_grad():
        assert torch.equal(loaded(*inputs), tiny(*inputs))
    assert tuple(loaded.config.axes_dim) == tuple(tiny.config.axes_dim)


def test_bfloat16_model_runs_on_float32_inputs(tiny):
    model = build_transformer("tiny").to(torch.bfloat16)
    tokens, t, states, mask, img_ids, txt_ids = _inputs(model)
    with torch.no_grad():
        assert model(tokens.bfloat16(), t, states, mask, img_ids, txt_ids).dtype == torch.bfloat16


def test_non_default_mlp_ratio_resizes_both_block_kinds():
    model = build_transformer("tiny", mlp_ratio=2.0)
    assert model.transformer_blocks[0].ff.net[2].in_features == 128
    assert model.single_transformer_blocks[0].proj_mlp.out_features == 128
    assert model(*_inputs(model)).shape == (2, 12, 64)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"axes_dim": (8, 8, 8)}, "must equal the head dim 32"), ({"version": "v2.0"}, "version must be one of"),
     ({"num_heads": 3}, "not divisible"), ({"qkv_bias": False}, "qkv_bias=False"),
     ({"axes_dim": (9, 11, 12)}, "even")],
)
def test_invalid_config_is_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_transformer("tiny", **overrides)


def test_mismatched_inputs_are_refused(tiny):
    tokens, t, states, mask, img_ids, txt_ids = _inputs(tiny)
    with pytest.raises(ValueError, match="position ids"):
        tiny(tokens, t, states, mask, img_ids[:-1], txt_ids)
    with pytest.raises(ValueError, match="encoder_attention_mask"):
        tiny(tokens, t, states, mask[:, :-1], img_ids, txt_ids)


def test_bfloat16_model_embeds_bfloat16_rounded_times():
    torch.manual_seed(0)
    model = build_transformer("tiny").to(torch.bfloat16).eval()
    tokens, _, states, mask, img_ids, txt_ids = _inputs(model, batch=1)
    with torch.no_grad():
        exact = model(tokens.bfloat16(), torch.tensor([0.9]), states, mask, img_ids, txt_ids)
        rounded = model(tokens.bfloat16(), torch.tensor([0.8984375]), states, mask, img_ids, txt_ids)
        scalar = model(tokens.bfloat16(), torch.tensor(0.9), states, mask, img_ids, txt_ids)
    assert torch.equal(exact, rounded) and torch.equal(exact, scalar)


def test_mask_without_valid_positions_is_refused(tiny):
    tokens, t, states, mask, img_ids, txt_ids = _inputs(tiny)
    mask[1] = 0
    with pytest.raises(ValueError, match="at least one valid position"):
        tiny(tokens, t, states, mask, img_ids, txt_ids)


def test_the_released_class_refuses_another_prediction_type_naming_the_class_that_predicts_it():
    with pytest.raises(InvalidValueError, match=r"^Step1XEditTransformer2DModel takes prediction_type 'velocity' only, "
                       r"got 'reference_delta'; a reference_delta model is a step1x_edit\.demo\.delta\."
                       r"ReferenceDeltaTransformer2DModel$"):
        build_transformer("tiny", prediction_type="reference_delta")
    with pytest.raises(InvalidValueError, match=r"got 'epsilon' \(known: \['reference_delta', 'velocity'\]\)$"):
        build_transformer("tiny", prediction_type="epsilon")
