"""Data-parallel training with ``accelerate launch`` over two CPU processes."""

import csv
import os
import socket
import subprocess
import sys

import pytest


def _launch_two_processes(*arguments: str) -> None:
    """``step1x-edit ARGUMENTS`` under accelerate's multi-process launcher (torchrun underneath) with two CPU
    processes (ACCELERATE_USE_CPU makes it gloo data parallel)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--main_process_port", str(port), "--mixed_precision", "no",
               "--dynamo_backend", "no", "-m", "step1x_edit.cli", *arguments]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def _log(run_dir) -> list[dict]:
    with open(run_dir / "logs" / "loss.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("extra", [[], ["--set", "model.train_text_encoder=true"]], ids=["dit", "dit-and-text-encoder"])
def test_two_cpu_processes_train_on_disjoint_batches_and_save_one_model(
        toml_config, tiny_model_dir, small_store, tmp_path, extra):
    config = toml_config(tiny_model_dir, small_store, tmp_path / "run", max_steps=4, checkpoint_every=2)
    _launch_two_processes("train", str(config), "--no-progress", *extra)
    rows = _log(tmp_path / "run")
    assert [int(row["step"]) for row in rows] == [1, 2, 3, 4]
    assert int(rows[-1]["samples"]) == 4 * 2 * 2  # steps x batch x processes
    assert (tmp_path / "run" / "final" / "model_index.json").is_file()
    assert sorted(path.name for path in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "step-0000002", "step-0000004"]


@pytest.mark.slow
def test_two_cpu_processes_resume_an_interrupted_run_with_identical_losses(
        toml_config, tiny_model_dir, small_store, tmp_path):
    config = toml_config(tiny_model_dir, small_store, tmp_path / "unused", max_steps=4, checkpoint_every=2,
                         dropout_text=0.5)
    _launch_two_processes("train", str(config), "--output-dir", str(tmp_path / "whole"), "--no-progress")
    _launch_two_processes("train", str(config), "--output-dir", str(tmp_path / "split"), "--until-step", "2",
                          "--no-progress")
    assert sorted(path.name for path in (tmp_path / "split" / "checkpoints" / "step-0000002").iterdir()) == [
        "manifest.json", "process-0.json", "process-0.safetensors", "process-1.json", "process-1.safetensors",
        "training.json", "training.safetensors"]
    _launch_two_processes("train", str(config), "--output-dir", str(tmp_path / "split"), "--no-progress")
    whole, split = _log(tmp_path / "whole"), _log(tmp_path / "split")
    assert [row["step"] for row in split] == ["1", "2", "3", "4"]
    assert [row["loss"] for row in split] == [row["loss"] for row in whole]
