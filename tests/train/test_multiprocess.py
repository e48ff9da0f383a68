"""Data-parallel training with ``accelerate launch`` over two CPU processes."""

import csv
import os
import socket
import subprocess
import sys

import pytest


@pytest.mark.parametrize("extra", [[], ["--set", "model.train_text_encoder=true"]], ids=["dit", "dit-and-text-encoder"])
def test_two_cpu_processes_train_on_disjoint_batches_and_save_one_model(
        toml_config, tiny_model_dir, small_store, tmp_path, extra):
    config = toml_config(tiny_model_dir, small_store, tmp_path / "run", max_steps=4, checkpoint_every=2)
    # accelerate's multi-process launcher (torchrun underneath); ACCELERATE_USE_CPU makes it gloo data parallel on CPUs
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--main_process_port", str(port), "--mixed_precision", "no",
               "--dynamo_backend", "no", "-m", "step1x_edit.cli", "train", str(config), "--no-progress", *extra]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "run" / "logs" / "loss.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == [1, 2, 3, 4]
    assert int(rows[-1]["samples"]) == 4 * 2 * 2  # steps x batch x processes
    assert (tmp_path / "run" / "final" / "model_index.json").is_file()
    assert sorted(path.name for path in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "step-0000002", "step-0000004"]
