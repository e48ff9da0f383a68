"""Named presets: the released sizes, and a tiny size for tests (speed is measured in benchmarks/)."""

import pytest
import torch

from step1x_edit.models.presets import build_transformer, transformer_config, vae_config


def test_full_preset_has_the_released_architecture():
    config = transformer_config("full")
    assert (config["hidden_size"], config["depth"], config["depth_single_blocks"]) == (3072, 19, 38)
    assert config["mllm_hidden_size"] == 3584 and config["context_in_dim"] == 4096
    with torch.device("meta"):
        model = build_transformer("full", version="v1.0")
    assert sum(p.numel() for p in model.parameters()) == 12_427_800_385


def test_tiny_preset_is_small_and_runs_a_cfg_step():
    model = build_transformer("tiny").eval()
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    assert model.config.prediction_type == "velocity"  # every preset predicts what the released model predicts
    tokens, states = torch.randn(2, 32, 64), torch.randn(2, 8, 32)
    ids = torch.zeros(32, 3), torch.zeros(8, 3)
    with torch.no_grad():
        out = model(tokens, torch.ones(2), states, torch.ones(2, 8), *ids)
    assert out.shape == tokens.shape and torch.isfinite(out).all()


def test_unknown_preset_and_field_are_refused():
    with pytest.raises(ValueError, match="unknown transformer preset"):
        transformer_config("huge")
    with pytest.raises(ValueError, match="unknown transformer config field"):
        transformer_config("tiny", hidden=3)
    with pytest.raises(ValueError, match="unknown VAE preset"):
        vae_config("huge")
