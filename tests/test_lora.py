"""LoRA files: official kohya-style <-> peft conversion is exact, pipeline and CLI loading, bad files refused."""

import logging

import numpy as np
import pytest
import torch
from peft import LoraConfig
from PIL import Image
from safetensors.torch import save_file

from step1x_edit.checkpoints.lora import (
    default_lora_targets,
    is_kohya_state_dict,
    kohya_to_peft,
    load_lora,
    peft_to_kohya,
    save_lora,
)
from step1x_edit.checkpoints.official import (
    official_module_targets,
    transformer_key_table,
    transformer_state_dict_to_official,
)
from step1x_edit.cli import main
from step1x_edit.errors import CheckpointError
from step1x_edit.models.presets import build_transformer, transformer_config
from step1x_edit.models.transformer import Step1XEditTransformer2DModel
from step1x_edit.sampling import position_ids
from step1x_edit.testing.tiny import save_tiny_official, tiny_pipeline

FAST = dict(num_inference_steps=2, size_level=64)
BLOCK_PREFIXES = ("double_blocks.", "single_blocks.")


def _tiny():
    torch.manual_seed(0)
    return build_transformer("tiny").eval()


def _inputs(model):
    generator = torch.Generator().manual_seed(0)
    img_ids, txt_ids = position_ids(4, 6, 5, model.config.version)
    tokens = torch.randn(1, img_ids.shape[0], 64, generator=generator)
    states = torch.randn(1, 5, model.config.mllm_hidden_size, generator=generator)
    return tokens, torch.tensor([0.7]), states, torch.ones(1, 5, dtype=torch.long), img_ids, txt_ids


def _forward(model):
    with torch.no_grad():
        return model(*_inputs(model))


def _official_lora_modules(model):
    """Official LoRA-targeted module -> (in features, out features) of its weight."""
    official = transformer_state_dict_to_official(model)
    return {
        name: tuple(official[f"{name}.weight"].shape[::-1])
        for name in official_module_targets(model.config)
        if name.startswith(BLOCK_PREFIXES)
    }


def _random_kohya(model, seed=0):
    """A kohya-format LoRA with official key names and a different rank and alpha per module."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for index, (name, (in_features, out_features)) in enumerate(sorted(_official_lora_modules(model).items())):
        rank = 2 + index % 3
        key = "lora_unet_" + name.replace(".", "_")
        state_dict[f"{key}.lora_down.weight"] = 0.1 * torch.randn(rank, in_features, generator=generator)
        state_dict[f"{key}.lora_up.weight"] = 0.1 * torch.randn(out_features, rank, generator=generator)
        state_dict[f"{key}.alpha"] = torch.tensor(1.0 + index % 4)
    return state_dict


def _load_official(model, official):
    """Load an official-format state dict into ``model`` through the key table."""
    state = {}
    for rule in transformer_key_table(model.config):
        state.update(zip(rule.targets, rule.to_diffusers(official[rule.official]), strict=True))
    model.load_state_dict(state)


def _add_random_peft_lora(model, targets, seed=0):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, rank_pattern={r"attn\.to_k": 2},
                        alpha_pattern={r"proj_mlp": 3})
    model.add_adapter(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))


def test_default_targets_are_the_official_linear_layers_in_diffusers_names():
    with torch.device("meta"):
        full = Step1XEditTransformer2DModel(**transformer_config("full"))
    for model in (_tiny(), full):
        depth, single = model.config.depth, model.config.depth_single_blocks
        official = [name for name in official_module_targets(model.config) if name.startswith(BLOCK_PREFIXES)]
        assert len(official) == 10 * depth + 3 * single
        targets = default_lora_targets(model)
        assert len(targets) == len(set(targets)) == 14 * depth + 6 * single
        assert all(isinstance(model.get_submodule(name), torch.nn.Linear) for name in targets)
    assert len(official) == 304
    assert len(targets) == 494


def test_kohya_lora_gives_the_output_of_merging_it_into_the_official_weights():
    model, merged = _tiny(), _tiny()
    kohya, multiplier = _random_kohya(model), 0.7
    official = transformer_state_dict_to_official(merged)
    for name in _official_lora_modules(merged):
        key = "lora_unet_" + name.replace(".", "_")
        down, up, alpha = kohya[f"{key}.lora_down.weight"], kohya[f"{key}.lora_up.weight"], kohya[f"{key}.alpha"]
        official[f"{name}.weight"] += multiplier * (up @ down) * alpha / down.shape[0]
    _load_official(merged, official)

    load_lora(model, kohya, scale=multiplier)

    expected = _forward(merged)
    assert not torch.allclose(expected, _forward(_tiny()), atol=1e-3)
    torch.testing.assert_close(_forward(model), expected, atol=1e-5, rtol=1e-5)


def test_kohya_to_peft_shares_lora_down_and_splits_lora_up_by_rows():
    model = _tiny()
    kohya = _random_kohya(model)
    lora = kohya_to_peft(kohya, model)
    down = kohya["lora_unet_single_blocks_0_linear1.lora_down.weight"]
    up = kohya["lora_unet_single_blocks_0_linear1.lora_up.weight"]
    hidden = model.config.hidden_size
    pieces = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
    for index, piece in enumerate(pieces):
        key = f"single_transformer_blocks.0.{piece}"
        assert torch.equal(lora.state_dict[f"{key}.lora_A.weight"], down)
        rows = slice(index * hidden, (index + 1) * hidden if index < 3 else None)
        assert torch.equal(lora.state_dict[f"{key}.lora_B.weight"], up[rows])
    assert len(lora.ranks) == 14 * model.config.depth + 6 * model.config.depth_single_blocks


@pytest.mark.parametrize("targets", ["default", "some_pieces_of_fused_modules"])
@pytest.mark.parametrize("file_format", ["kohya", "peft"])
def test_peft_lora_saved_and_loaded_into_a_fresh_model_gives_identical_outputs(tmp_path, targets, file_format):
    model = _tiny()
    names = default_lora_targets(model) if targets == "default" else ["transformer_blocks.0.attn.to_k", "proj_mlp"]
    _add_random_peft_lora(model, names)
    path = save_lora(model, tmp_path / "lora.safetensors", format=file_format)

    fresh = _tiny()
    load_lora(fresh, path)

    torch.testing.assert_close(_forward(fresh), _forward(model), atol=1e-5, rtol=1e-5)


def test_kohya_file_round_trips_unchanged_through_peft(tmp_path):
    model = _tiny()
    kohya = _random_kohya(model)
    load_lora(model, kohya)
    exported = peft_to_kohya(model)
    assert exported.keys() == kohya.keys()
    for key, tensor in kohya.items():
        torch.testing.assert_close(exported[key], tensor)


def test_fused_lora_matches_the_adapter_and_unloading_restores_the_model():
    model = _tiny()
    original = _forward(model)
    load_lora(model, _random_kohya(model), scale=0.5)
    with_adapter = _forward(model)
    model.fuse_lora()
    torch.testing.assert_close(_forward(model), with_adapter, atol=1e-5, rtol=1e-5)
    model.unfuse_lora()
    model.unload_lora()
    torch.testing.assert_close(_forward(model), original, atol=1e-6, rtol=1e-6)
    load_lora(model, _random_kohya(model), scale=0.5)
    torch.testing.assert_close(_forward(model), with_adapter, atol=1e-5, rtol=1e-5)


@pytest.fixture()
def photo():
    pixels = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _edit(pipe, photo):
    return pipe(photo, "make it blue", generator=torch.Generator().manual_seed(0), output_type="np", **FAST).images


def test_pipeline_lora_changes_the_edit_and_scale_zero_keeps_it(photo):
    original = _edit(tiny_pipeline(), photo)
    kohya = _random_kohya(tiny_pipeline().transformer)

    changed = tiny_pipeline()
    changed.load_lora_weights(kohya)
    assert not np.allclose(_edit(changed, photo), original, atol=1e-3)

    zero = tiny_pipeline()
    zero.load_lora_weights(kohya, scale=0.0)
    np.testing.assert_array_equal(_edit(zero, photo), original)


def test_cli_edit_applies_lora_files(tmp_path):
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(image)
    lora = tmp_path / "lora.safetensors"
    save_file(_random_kohya(_tiny()), str(lora))
    model = save_tiny_official(tmp_path / "model")
    outputs = {}
    for name, extra in (("plain", []), ("lora", ["--lora", lora]), ("zero", ["--lora", lora, "--lora-scale", "0"])):
        outputs[name] = tmp_path / f"{name}.png"
        args = ["edit", image, "make it blue", "-o", outputs[name], "--steps", "2", "--size-level", "64", "--model", model, *extra]
        assert main([str(arg) for arg in args]) == 0
    plain, with_lora, zero = (np.asarray(Image.open(outputs[name])) for name in ("plain", "lora", "zero"))
    assert not np.array_equal(plain, with_lora)
    assert np.array_equal(plain, zero)


def test_cli_lora_scale_count_must_match(tmp_path, capsys):
    args = ["edit", "x.png", "blue", "--lora", "a.safetensors", "--lora", "b.safetensors",
            "--lora-scale", "1", "--lora-scale", "2", "--lora-scale", "3"]
    assert main(args) == 2
    assert "--lora-scale" in capsys.readouterr().err


def test_unknown_kohya_key_is_named():
    model = _tiny()
    kohya = _random_kohya(model)
    kohya["lora_unet_double_blocks_7_img_attn_qkv.lora_down.weight"] = torch.zeros(2, 64)
    with pytest.raises(CheckpointError, match="lora_unet_double_blocks_7_img_attn_qkv"):
        load_lora(model, kohya)


def test_wrong_lora_shape_names_the_tensor_and_both_shapes():
    model = _tiny()
    kohya = _random_kohya(model)
    rank = kohya["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape[0]
    kohya["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"] = torch.zeros(5, 2)
    message = (r"LoRA tensor lora_unet_double_blocks_0_img_attn_qkv\.lora_up\.weight has shape \(5, 2\), but the "
               rf"model's double_blocks\.0\.img_attn\.qkv needs \(192, {rank}\)")
    with pytest.raises(CheckpointError, match=message):
        load_lora(model, kohya)


def test_peft_key_of_a_missing_module_is_named():
    with pytest.raises(CheckpointError, match="transformer_blocks.3.attn.to_q"):
        load_lora(_tiny(), {"transformer_blocks.3.attn.to_q.lora_A.weight": torch.zeros(2, 64)})


def test_pickle_lora_files_are_refused(tmp_path):
    model = _tiny()
    for name in ("lora.pt", "disguised.safetensors"):
        torch.save(_random_kohya(model), tmp_path / name)
        with pytest.raises(CheckpointError, match="pickle"):
            load_lora(model, tmp_path / name)


def test_text_encoder_keys_are_ignored_with_a_warning(caplog):
    model = _tiny()
    kohya = {**_random_kohya(model), "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 8)}
    assert is_kohya_state_dict(kohya)
    with caplog.at_level(logging.WARNING, logger="step1x_edit.checkpoints.lora"):
        lora = kohya_to_peft(kohya, model)
    assert "text-encoder" in caplog.text
    assert not any("lora_te" in key for key in lora.state_dict)


def test_adapter_name_in_use_is_refused():
    model = _tiny()
    kohya = _random_kohya(model)
    load_lora(model, kohya)
    with pytest.raises(CheckpointError, match="already loaded"):
        load_lora(model, kohya)
