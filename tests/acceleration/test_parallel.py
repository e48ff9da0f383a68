"""Multi-GPU modes: CFG-parallel and context parallelism give the single-process result (2 CPU processes over gloo,
started with torchrun), and every mode this process cannot run is refused in one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from step1x_edit.acceleration import parallel
from step1x_edit.errors import UnsupportedModeError
from step1x_edit.testing.tiny import tiny_pipeline

WORKER = Path(__file__).with_name("parallel_worker.py")
# float32 on CPU: the split changes only the order of the attention sums (context) or the matmul batch (cfg).
TOLERANCE = 1e-5


def _run_on_two_processes(tmp_path, modes: str, version: str, preset: str = "tiny") -> dict:
    out = tmp_path / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STEP1X_PRESENT_ONE_ACCELERATOR": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(WORKER), modes, version, str(out), preset]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(out.read_text())


def _assert_equal_to_single_process(result: dict) -> None:
    assert result["refused"] is None
    assert result["shapes_equal"]
    assert max(result["max_abs_diff"].values()) <= TOLERANCE, result["max_abs_diff"]


def test_context_and_cfg_parallel_on_two_processes_give_the_single_process_forward_and_edit(tmp_path):
    report = _run_on_two_processes(tmp_path, "context,cfg", "v1.1")
    assert report["world_size"] == 2
    assert "Ulysses x2" in report["context"]["enabled"]
    assert "2 processes" in report["cfg"]["enabled"]
    # Text lengths 16 and 15: an odd length is divided unevenly, not refused.
    assert set(report["context"]["max_abs_diff"]) == {"forward_text_16", "forward_text_15", "edit"}
    _assert_equal_to_single_process(report["context"])
    _assert_equal_to_single_process(report["cfg"])
    # This machine has no GPU: until one accelerator is presented to diffusers' engine, context parallel is refused.
    assert "needs a GPU per process" in report["context_check"] and "\n" not in report["context_check"]


@pytest.mark.slow
def test_v1p2_runs_context_parallel_with_uneven_text_lengths_and_refuses_cfg_parallel(tmp_path):
    report = _run_on_two_processes(tmp_path, "context,cfg", "v1.2")
    _assert_equal_to_single_process(report["context"])
    assert "calls the transformer twice per step" in report["cfg"]["refused"]


@pytest.mark.slow
def test_context_parallel_gives_the_single_process_forward_of_the_mid_transformer(tmp_path):
    result = _run_on_two_processes(tmp_path, "context", "v1.1", preset="mid")["context"]
    assert set(result["max_abs_diff"]) == {"forward_text_16", "forward_text_15"}
    _assert_equal_to_single_process(result)


@pytest.mark.parametrize("enable", [parallel.enable_context_parallel, parallel.enable_cfg_parallel])
def test_parallel_without_a_process_group_is_one_error_line_naming_torchrun(enable):
    with pytest.raises(UnsupportedModeError) as caught:
        enable(tiny_pipeline())
    assert "torchrun" in str(caught.value) and "\n" not in str(caught.value)


@pytest.fixture
def one_process_group(tmp_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def test_parallel_modes_refuse_a_one_process_world(one_process_group):
    with pytest.raises(UnsupportedModeError, match="2 processes; this run has 1"):
        parallel.check_parallel("cfg")
    with pytest.raises(UnsupportedModeError, match="2 or more processes; this run has 1"):
        parallel.check_parallel("context")
    parallel.check_parallel("none")
    assert parallel.is_main_process()


def test_an_unknown_parallel_mode_is_refused_naming_the_choices():
    with pytest.raises(UnsupportedModeError, match="none, cfg or context, got 'tensor'"):
        parallel.check_parallel("tensor")


def test_context_degrees_default_to_ulysses_over_every_process_and_fill_in_the_other():
    assert parallel.context_degrees(4, None, None) == (4, 1)
    assert parallel.context_degrees(4, 2, None) == (2, 2)
    assert parallel.context_degrees(4, None, 4) == (1, 4)
    assert parallel.context_degrees(4, 3, None) == (3, 1)  # check_parallel refuses the product 3


def test_init_from_environment_outside_a_launcher_names_the_missing_variables(monkeypatch):
    for name in parallel.LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UnsupportedModeError, match="RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not set"):
        parallel.init_from_environment()


def test_ulysses_with_ring_refuses_a_sequence_the_processes_do_not_divide_before_any_communication():
    check = parallel._EvenSequenceCheck(world_size=2)
    inputs = {"hidden_states": torch.zeros(2, 32, 64), "timestep": torch.zeros(2),
              "encoder_hidden_states": torch.zeros(2, 15, 32), "encoder_attention_mask": torch.ones(2, 15),
              "img_ids": torch.zeros(32, 3), "txt_ids": torch.zeros(15, 3)}
    with pytest.raises(UnsupportedModeError, match="text sequence equally over 2 processes; its 15 tokens"):
        check.pre_forward(None, **inputs)
    inputs["encoder_hidden_states"], inputs["encoder_attention_mask"] = torch.zeros(2, 16, 32), torch.ones(2, 16)
    inputs["txt_ids"] = torch.zeros(16, 3)
    assert check.pre_forward(None, **inputs) == ((), inputs)
