"""Checkpoints from someone else cannot run code: nothing is unpickled on resume (trainer and train-vae), a
damaged or half-written checkpoint is skipped for the one before it, and an unusable one is a clear error."""

import dataclasses
import math
import pickle

import pytest
import torch

from step1x_edit.cli import main
from step1x_edit.demo import vae as vae_training
from step1x_edit.demo.vae import VAETrainingConfig, train_vae
from step1x_edit.errors import CheckpointError
from step1x_edit.train import checkpoint
from step1x_edit.train.config import config_from_dict
from step1x_edit.train.trainer import train

# What accelerate's save_state writes (and torch.load / pickle would read back), plus other usual pickle names.
PICKLE_NAMES = ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "random_states_0.pkl", "optimizer.bin",
                "scheduler.bin", "pytorch_model.bin", "sampler.bin", "scaler.pt", "checkpoint.pt")


class _CreatesFile:
    """Unpickling this object opens (creates) ``marker``: proof that a pickle was loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _plant(folder, marker) -> None:
    """Every usual pickle checkpoint file in ``folder``, each creating ``marker`` when unpickled (raw pickles and
    torch.save archives)."""
    for index, name in enumerate(PICKLE_NAMES):
        if index % 2:
            torch.save({"state": _CreatesFile(marker)}, folder / name)
        else:
            (folder / name).write_bytes(pickle.dumps({"state": _CreatesFile(marker)}))


def test_the_planted_payload_does_create_its_file_when_unpickled(tmp_path):
    marker = tmp_path / "marker"
    _plant(tmp_path, marker)
    torch.load(tmp_path / "optimizer.bin", weights_only=False)
    assert marker.exists()  # so the tests below, which find no marker, would have seen a load


def _write(root, step, state, keep=2):
    folder = checkpoint.begin(root, step)
    checkpoint.write_state(folder, "state", state)
    return checkpoint.commit(folder, keep, step=step)


def _read(folder):
    checkpoint.verify(folder, checkpoint.state_files("state"))
    return checkpoint.read_state(folder, "state")


def test_state_round_trips_through_safetensors_and_json_with_its_types(tmp_path):
    weight = torch.randn(3, 4)
    state = {
        "step": 7, "lr": 1e-4, "nan": math.nan, "name": "adamw", "off": None, "flag": True,
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 2)}},
                      "param_groups": [{"betas": (0.9, 0.999), "params": [0, 1]}]},
        "shared": [weight, weight, weight[1:]],  # safetensors refuses tensors sharing memory unless copied
        "empty": torch.zeros(0), "bytes": torch.arange(5, dtype=torch.uint8),
    }
    loaded = _read(_write(tmp_path, 1, state))
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert list(loaded["optimizer"]["state"]) == [0]  # integer keys stay integers
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    assert torch.equal(loaded["shared"][1], weight) and torch.equal(loaded["shared"][2], weight[1:])
    assert loaded["bytes"].dtype == torch.uint8 and loaded["empty"].shape == (0,)
    assert math.isnan(loaded["nan"]) and (loaded["off"], loaded["flag"], loaded["name"]) == (None, True, "adamw")
    assert set(loaded) == set(state)


def test_a_pickle_in_place_of_a_state_file_is_refused_without_being_unpickled(tmp_path):
    marker = tmp_path / "marker"
    folder = checkpoint.begin(tmp_path / "checkpoints", 3)
    checkpoint.write_state(folder, "state", {"weight": torch.ones(2)})
    for name in checkpoint.state_files("state"):  # an attacker replaces both files and writes a matching manifest
        (folder / name).write_bytes(pickle.dumps(_CreatesFile(marker)))
    folder = checkpoint.commit(folder, keep=2, step=3)
    with pytest.raises(CheckpointError, match="unreadable state"):
        _read(folder)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "no-manifest", "bad-manifest"])
def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning_for_the_previous_one(tmp_path, damage):
    root = tmp_path / "checkpoints"
    _write(root, 1, {"step": 1, "weight": torch.ones(1000)})
    newest = _write(root, 2, {"step": 2, "weight": torch.full((1000,), 2.0)})
    tensors = newest / "state.safetensors"
    if damage == "truncate":
        tensors.write_bytes(tensors.read_bytes()[:-100])
    elif damage == "flip":
        data = bytearray(tensors.read_bytes())
        data[-10] ^= 0xFF
        tensors.write_bytes(bytes(data))
    elif damage == "delete":
        tensors.unlink()
    elif damage == "no-manifest":
        (newest / checkpoint.MANIFEST).unlink()
    else:
        (newest / checkpoint.MANIFEST).write_bytes(b"\xff\x00{")
    with pytest.warns(UserWarning, match="skipping the checkpoint .*step-0000002"):
        folder, state = checkpoint.load_newest(root, _read)
    assert folder.name == "step-0000001" and state["step"] == 1


def test_no_usable_checkpoint_is_one_clear_error_and_no_checkpoint_is_none(tmp_path):
    root = tmp_path / "checkpoints"
    assert checkpoint.load_newest(root, _read) is None
    (root / "step-0000004").mkdir(parents=True)  # the folder of another tool's (or an older) format
    _plant(root / "step-0000004", tmp_path / "marker")
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="no usable checkpoint in .*no manifest.json"):
        checkpoint.load_newest(root, _read)
    assert not (tmp_path / "marker").exists()


def test_a_half_written_checkpoint_is_not_listed_and_is_cleared_by_the_next_save(tmp_path):
    root = tmp_path / "checkpoints"
    checkpoint.begin(root, 5)  # a crash while writing step 5
    assert checkpoint.checkpoint_folders(root) == []
    _write(root, 6, {"step": 6})
    assert sorted(path.name for path in root.iterdir()) == ["step-0000006"]


def _lora_config(tables, tiny_model_dir, small_store, output, **training):
    values = tables(tiny_model_dir, small_store, output, max_steps=6, checkpoint_every=2, learning_rate=1e-2,
                    **training)
    values["model"].update(mode="lora", lora_rank=4, lora_alpha=4.0)
    return config_from_dict(values)


@pytest.mark.slow
def test_training_resume_skips_a_truncated_checkpoint_never_unpickles_planted_files_and_stays_exact(
        tables, tiny_model_dir, small_store, tmp_path):
    marker = tmp_path / "marker"
    whole = train(_lora_config(tables, tiny_model_dir, small_store, tmp_path / "whole"), progress=False)
    config = _lora_config(tables, tiny_model_dir, small_store, tmp_path / "split")
    train(_lora_config(tables, tiny_model_dir, small_store, tmp_path / "split", until_step=4), progress=False)
    folders = tmp_path / "split" / "checkpoints"
    assert sorted(path.name for path in folders.iterdir()) == ["step-0000002", "step-0000004"]
    for folder in folders.iterdir():
        _plant(folder, marker)
    state = folders / "step-0000004" / "training.safetensors"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # a crash or a full disk mid-copy

    with pytest.warns(UserWarning, match="skipping the checkpoint .*step-0000004.*truncated"):
        resumed = train(config, progress=False)
    assert not marker.exists()
    assert sorted(resumed.losses) == [3, 4, 5, 6]  # from step 2, the newest complete checkpoint
    for step in resumed.losses:
        assert resumed.losses[step] == pytest.approx(whole.losses[step], rel=1e-6)


def test_training_with_only_pickle_checkpoints_stops_with_one_line_and_loads_none(
        toml_config, tiny_model_dir, small_store, feature_cache, tmp_path, capsys):
    marker = tmp_path / "marker"
    folder = tmp_path / "run" / "checkpoints" / "step-0000002"
    folder.mkdir(parents=True)
    _plant(folder, marker)  # e.g. a run folder of another trainer, or one shared by someone else
    config = toml_config(tiny_model_dir, small_store, tmp_path / "run", max_steps=4)
    with pytest.warns(UserWarning, match="skipping the checkpoint step-0000002: .*has no manifest.json"):
        code = main(["train", str(config), "--set", f"data.cache_dir={feature_cache}", "--no-progress"])
    assert code == 2
    error = capsys.readouterr().err
    assert "no usable checkpoint in" in error and "no manifest.json" in error and "Traceback" not in error
    assert not marker.exists()


TINY_VAE = VAETrainingConfig(
    block_out_channels=(32, 32), latent_channels=4, resolution=64, crop=32, batch_size=2, steps=6, lr=2e-3,
    warmup_steps=1, checkpoint_every=2, eval_every=6, eval_images=2, calibration_images=4, save_fp16=False,
    num_threads=1,
)


def test_train_vae_refuses_a_pickle_checkpoint_of_an_earlier_version_without_loading_it(tmp_path, capsys):
    marker = tmp_path / "marker"
    (tmp_path / "run").mkdir()
    torch.save({"step": 1, "model": _CreatesFile(marker)}, tmp_path / "run" / "checkpoint.pt")
    assert main(["train-vae", "--output", str(tmp_path / "run"), "--steps", "2", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "checkpoint.pt is a pickle checkpoint" in error and "--no-resume" in error
    assert "Traceback" not in error and len(error.strip().splitlines()) == 1
    assert not marker.exists()


def test_train_vae_resume_skips_a_damaged_checkpoint_never_unpickles_planted_files_and_stays_exact(
        tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    uninterrupted = train_vae(TINY_VAE, tmp_path / "straight", progress=False)
    real_batch = vae_training.training_batch

    def interrupt_at_step_5(config, step, generator):
        if step == 5:
            raise KeyboardInterrupt
        return real_batch(config, step, generator)

    monkeypatch.setattr(vae_training, "training_batch", interrupt_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_vae(TINY_VAE, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(vae_training, "training_batch", real_batch)
    folders = tmp_path / "resumed" / "checkpoints"
    assert sorted(path.name for path in folders.iterdir()) == ["step-0000002", "step-0000004"]
    for folder in folders.iterdir():
        _plant(folder, marker)
    state = folders / "step-0000004" / "state.safetensors"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one damaged byte, same size
    state.write_bytes(bytes(data))

    with pytest.warns(UserWarning, match="skipping the checkpoint .*step-0000004.*damaged"):
        resumed = train_vae(TINY_VAE, tmp_path / "resumed", progress=False)
    assert not marker.exists()
    for name, value in uninterrupted.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_train_vae_without_resume_starts_over_and_forgets_old_checkpoints(tmp_path):
    train_vae(dataclasses.replace(TINY_VAE, steps=4), tmp_path, progress=False)
    train_vae(dataclasses.replace(TINY_VAE, steps=2, lr=1e-3), tmp_path, resume=False, progress=False)
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["step-0000002"]
