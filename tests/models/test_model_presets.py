"""Named presets: the released sizes, and a tiny size that runs in milliseconds."""

import time

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


def test_tiny_preset_runs_a_cfg_step_in_milliseconds():
    model = build_transformer("tiny").eval()
    tokens, states = torch.randn(2, 32, 64), torch.randn(2, 8, 32)
    ids = torch.zeros(32, 3), torch.zeros(8, 3)
    with torch.no_grad():
        model(tokens, torch.ones(2), states, torch.ones(2, 8), *ids)
        start = time.perf_counter()
        model(tokens, torch.ones(2), states, torch.ones(2, 8), *ids)
    assert time.perf_counter() - start < 0.5


def test_unknown_preset_and_field_are_refused():
    with pytest.raises(ValueError, match="unknown transformer preset"):
        transformer_config("huge")
    with pytest.raises(ValueError, match="unknown transformer config field"):
        transformer_config("tiny", hidden=3)
    with pytest.raises(ValueError, match="unknown VAE preset"):
        vae_config("huge")
