"""The memory and speed modes from the command line: a mode this machine cannot run is one line and exit 2 before
the model loads, the modes that run say what they did, and ``--parallel cfg`` under torchrun writes the image the
single process writes."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from step1x_edit import cli

EXAMPLE = Path(cli.__file__).parents[2] / "examples" / "shapes.png"


def _edit(tmp_path, *flags, name="out.png"):
    return cli.main(["edit", str(EXAMPLE), "make the background blue", "-o", str(tmp_path / name), "--seed", "3",
                     "--guidance", "3", *flags])


@pytest.mark.parametrize("flags, message", [
    (["--memory", "24gb"], "--memory 24gb keeps weights in CPU memory and streams them to a GPU"),
    (["--offload"], "--offload group moves weights from CPU memory to a GPU"),
    (["--cache-threshold", "0.2"], "cache_threshold applies to cache first-block only"),
    (["--attention-backend", "fastest"], "unknown attention backend 'fastest'"),
    (["--parallel", "cfg"], "launch one process per GPU with torchrun"),
])
def test_a_mode_this_machine_cannot_run_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, flags, message):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert _edit(tmp_path, *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("step1x-edit edit: error:") and message in err[-1]
    assert not (tmp_path / "out.png").exists()


def test_modes_that_run_on_the_cpu_say_what_they_did(tmp_path, capsys):
    assert _edit(tmp_path, "--dit-storage", "fp8", "--cache", "first-block", "--cache-threshold", "0.2") == 0
    err = capsys.readouterr().err
    assert "step1x-edit: memory mode full: running on cpu" in err
    assert "step1x-edit: DiT weights stored in fp8" in err and "step1x-edit: step caching: first-block" in err
    assert Image.open(tmp_path / "out.png").size == Image.open(EXAMPLE).size


@pytest.mark.slow
def test_cfg_parallel_under_torchrun_writes_the_single_process_image(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    command = shutil.which("step1x-edit", path=str(Path(sys.executable).parent))
    assert _edit(tmp_path, name="single.png") == 0
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([torchrun, "--nproc-per-node", "2", "--master-port", "29517", command, "edit", str(EXAMPLE),
                          "make the background blue", "-o", str(tmp_path / "parallel.png"), "--seed", "3",
                          "--guidance", "3", "--parallel", "cfg"], capture_output=True, text=True, timeout=600,
                         env=environment)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stderr.count("cfg parallel: the conditional and unconditional halves") == 1  # rank 0 speaks
    assert np.array_equal(np.asarray(Image.open(tmp_path / "parallel.png")),
                          np.asarray(Image.open(tmp_path / "single.png")))


def test_a_batch_model_records_the_modes_that_change_its_images_and_applies_them():
    from step1x_edit.acceleration.memory import uses_fp8_storage
    from step1x_edit.acceleration.options import Acceleration
    from step1x_edit.batch.editor import ModelSpec

    plain = ModelSpec()
    assert "weights" not in plain.identity()
    assert ModelSpec(acceleration=Acceleration(compile=True, attention_backend="native")).identity() == \
        plain.identity()  # speed modes that keep the images leave a store's identity alone
    lossy = ModelSpec(acceleration=Acceleration(dit_storage="fp8", cache="first-block", cache_threshold=0.1))
    assert lossy.identity()["weights"] == {"dit_storage": "fp8", "cache": "first-block", "cache_threshold": 0.1}
    pipe = lossy.load()
    assert uses_fp8_storage(pipe.transformer) and pipe.transformer.is_cache_enabled
