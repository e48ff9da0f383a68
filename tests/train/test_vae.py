"""The VAE trainer: learns, resumes exactly, calibrates the latent scale, rejects bad configs, runs from the CLI."""

import dataclasses

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors import safe_open

from step1x_edit.cli import main
from step1x_edit.demo import vae as vae_training
from step1x_edit.demo.vae import (
    VAEConfigError,
    VAETrainingConfig,
    build_vae,
    calibrate_latent_scale,
    heldout_images,
    load_vae_config,
    reconstruction_psnr,
    train_vae,
)
from step1x_edit.errors import Step1XEditError
from step1x_edit.models.vae import encode_latents

TINY = VAETrainingConfig(
    block_out_channels=(32, 32), latent_channels=4, resolution=64, crop=32, batch_size=4, steps=30, lr=2e-3,
    warmup_steps=2, checkpoint_every=10, eval_every=30, eval_images=4, calibration_images=8, save_fp16=False,
    num_threads=1,
)


def test_thirty_steps_of_training_raise_the_heldout_psnr(tmp_path):
    images = heldout_images(8, resolution=64)
    torch.manual_seed(TINY.seed)
    before = reconstruction_psnr(build_vae(TINY).eval(), images)
    vae = train_vae(TINY, tmp_path, progress=False)
    after = reconstruction_psnr(vae, images)
    assert after > before + 3, (before, after)


def test_saved_vae_loads_with_the_calibrated_scale(tmp_path):
    config = dataclasses.replace(TINY, steps=2, save_fp16=True)
    vae = train_vae(config, tmp_path, progress=False)
    loaded = AutoencoderKL.from_pretrained(tmp_path / "vae")
    assert loaded.config.scaling_factor == pytest.approx(vae.config.scaling_factor)
    assert loaded.config.shift_factor == pytest.approx(vae.config.shift_factor)
    with safe_open(tmp_path / "vae" / "diffusion_pytorch_model.fp16.safetensors", "pt") as half:
        assert {half.get_tensor(name).dtype for name in half.keys()} == {torch.float16}


def test_interrupted_run_resumed_ends_with_the_same_weights(tmp_path, monkeypatch):
    config = dataclasses.replace(TINY, steps=6, checkpoint_every=3, eval_every=6)
    uninterrupted = train_vae(config, tmp_path / "straight", progress=False)

    real_batch = vae_training.training_batch

    def interrupt_at_step_4(config, step, generator):
        if step == 4:
            raise KeyboardInterrupt
        return real_batch(config, step, generator)

    monkeypatch.setattr(vae_training, "training_batch", interrupt_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train_vae(config, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(vae_training, "training_batch", real_batch)
    assert [folder.name for folder in (tmp_path / "resumed" / "checkpoints").iterdir()] == ["step-0000003"]
    resumed = train_vae(config, tmp_path / "resumed", progress=False)

    expected, actual = uninterrupted.state_dict(), resumed.state_dict()
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_resuming_with_a_different_config_is_refused(tmp_path):
    train_vae(dataclasses.replace(TINY, steps=2), tmp_path, progress=False)
    with pytest.raises(VAEConfigError, match="different config"):
        train_vae(dataclasses.replace(TINY, steps=2, lr=1e-4), tmp_path, progress=False)


def test_calibration_gives_zero_mean_unit_std_latents():
    torch.manual_seed(0)
    vae = build_vae(TINY).eval()
    images = heldout_images(8, resolution=64)
    scale, shift = calibrate_latent_scale(vae, images)
    assert vae.config.scaling_factor == scale and vae.config.shift_factor == shift
    with torch.no_grad():
        latents = encode_latents(vae, images)
    assert latents.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert latents.std().item() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("block_out_channels", (32, 48), "multiples of 32"),
        ("block_out_channels", (), "a list of 1 to 8 integers"),
        ("norm_num_groups", 3, "multiple of norm_num_groups 3"),
        ("crop", 33, "crop must be a multiple of 2"),
        ("crop", 128, "at most resolution"),
        ("resolution", 72, "resolution must be a multiple of 16"),
        ("batch_size", 0, "batch_size must be an integer between 1 and 4096, got 0"),
        ("lr", 0.0, r"lr must be a finite number in \(0, 10\], got 0.0"),
        ("kl_weight", -1e-6, "kl_weight must be a finite number between 0 and"),
        ("tasks", ("juggling",), "unknown: \\['juggling'\\]"),
    ],
)
def test_bad_config_values_raise_clear_errors(field, value, message):
    with pytest.raises(Step1XEditError, match=message):
        dataclasses.replace(TINY, **{field: value})


def test_lists_from_toml_become_tuples():
    config = VAETrainingConfig(block_out_channels=[32, 32], tasks=["text_modification"])
    assert config.block_out_channels == (32, 32) and config.tasks == ("text_modification",)


def test_unknown_toml_field_is_an_error(tmp_path):
    path = tmp_path / "vae.toml"
    path.write_text("block_out_channels = [32, 32]\nlearning_rate = 1e-3\n")
    with pytest.raises(VAEConfigError, match="unknown VAE training field.*learning_rate"):
        load_vae_config(path)


def test_train_vae_command_trains_from_a_toml_config(tmp_path, capsys):
    path = tmp_path / "vae.toml"
    fields = {**dataclasses.asdict(TINY), "steps": 50}
    path.write_text("".join(f"{key} = {_toml(value)}\n" for key, value in fields.items()))
    assert main(["train-vae", "--output", str(tmp_path / "run"), "--config", str(path), "--steps", "2",
                 "--no-progress"]) == 0
    assert "held-out reconstruction PSNR" in capsys.readouterr().out
    assert [folder.name for folder in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-0000002"]
    assert (tmp_path / "run" / "vae" / "config.json").exists()


def _toml(value):
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return repr(value)
