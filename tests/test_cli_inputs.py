"""Hostile input to edit / info / convert / merge and to the pipeline: each is refused with one specific line.

Bad numbers, a working size beyond memory, text that is not UTF-8, devices that do not exist, crafted
safetensors files, malformed config files, wrong LoRA files and unwritable outputs: every case ends as one
``step1x-edit CMD: error: ...`` line naming the field or file (exit 2, no traceback), before any work.
"""

import contextlib
import io
import json
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import init_empty_weights
from diffusers import FlowMatchEulerDiscreteScheduler
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file, save

from step1x_edit import validate
from step1x_edit.checkpoints.official import TRANSFORMER_FILE_NAMES
from step1x_edit.cli import build_parser, main
from step1x_edit.errors import CheckpointError, InvalidPromptError, InvalidValueError
from step1x_edit.models.presets import MAX_INFERENCE_STEPS, MAX_SIZE_LEVEL, build_transformer, build_vae
from step1x_edit.pipeline import (
    SCHEDULER_CONFIG,
    Step1XEditPipeline,
    check_instruction,
    load_pipeline,
    resolve_device,
)
from step1x_edit.testing.tiny import save_tiny_official, tiny_pipeline

DIT_FILE = TRANSFORMER_FILE_NAMES[0]  # the v1.1 file name
DIFFUSERS_DIT = "transformer/diffusion_pytorch_model.safetensors"
FAST = ["--steps", "1", "--size-level", "32"]


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory):
    return save_tiny_official(tmp_path_factory.mktemp("official") / "model")


@pytest.fixture(scope="module")
def diffusers_dir(tmp_path_factory, official_dir):
    out = tmp_path_factory.mktemp("diffusers") / "model"
    assert main(["convert", str(official_dir), str(out), "--dtype", "fp32"]) == 0
    return out


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture()
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


def _refused(capsys, *args) -> str:
    """Run the CLI on ``args``; it must exit 2 with exactly one error line and no traceback. Returns the line."""
    code = main([str(arg) for arg in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert code == 2 and len(lines) == 1, err
    return lines[0]


def _argparse_refused(capsys, *args) -> str:
    """argparse's own refusal of ``args``: exit 2, its usage and one error line. Returns the error line."""
    with pytest.raises(SystemExit) as refused:
        main([str(arg) for arg in args])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if ": error: " in line]
    return line


def _variant(source, target, changes):
    """``source`` rebuilt in ``target`` as symbolic links, except ``changes``: relative path -> new bytes, a
    function that edits the file's parsed JSON in place, or None (the file left out)."""
    for item in source.rglob("*"):
        relative = item.relative_to(source)
        if item.is_file() and str(relative) not in changes:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            (target / relative).symlink_to(item)
    for relative, change in changes.items():
        if change is None:
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        if callable(change):
            config = json.loads((source / relative).read_text())
            change(config)
            change = json.dumps(config).encode()
        (target / relative).write_bytes(change)
    return target


def _no_model_load(monkeypatch):
    """Fail the test if any model is read: load_pipeline's own checks still run, the loading itself does not."""
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("step1x_edit.pipeline._load", load)


# ------------------------------------------------------------------------------------------------ numbers
@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--steps", "0", "argument --steps: must be an integer between 1 and 1000, got 0"),
        ("--steps", "-3", "argument --steps: must be an integer between 1 and 1000, got -3"),
        ("--steps", "2.5", "argument --steps: must be an integer between 1 and 1000, got '2.5'"),
        ("--steps", str(2**64), f"argument --steps: must be an integer between 1 and 1000, got {2**64}"),
        ("--size-level", "0", "argument --size-level: must be an integer between 16 and 8192, got 0"),
        ("--size-level", "100000", "argument --size-level: must be an integer between 16 and 8192, got 100000"),
        ("--size-level", "big", "argument --size-level: must be an integer between 16 and 8192, got 'big'"),
        ("--seed", "-1", f"argument --seed: must be an integer between 0 and {validate.MAX_SEED}, got -1"),
        ("--seed", str(2**64), f"argument --seed: must be an integer between 0 and {validate.MAX_SEED}, got {2**64}"),
        ("--guidance", "nan", "argument --guidance: must be a finite number of at least 0.0, got nan"),
        ("--guidance", "inf", "argument --guidance: must be a finite number of at least 0.0, got inf"),
        ("--guidance", "-1", "argument --guidance: must be a finite number of at least 0.0, got -1.0"),
        ("--guidance", "six", "argument --guidance: must be a number of at least 0.0, got 'six'"),
        ("--strength", "0", "argument --strength: must be a finite number in (0.0, 1.0], got 0.0"),
        ("--strength", "nan", "argument --strength: must be a finite number in (0.0, 1.0], got nan"),
        ("--strength", "1.5", "argument --strength: must be a finite number in (0.0, 1.0], got 1.5"),
        ("--lora-scale", "nan", "argument --lora-scale: must be a finite number, got nan"),
        ("--lora-scale", "-inf", "argument --lora-scale: must be a finite number, got -inf"),
    ],
)
def test_a_bad_number_for_an_edit_flag_is_refused_before_the_model_loads(
    capsys, monkeypatch, photo, flag, value, message
):
    _no_model_load(monkeypatch)
    line = _argparse_refused(capsys, "edit", photo, "make it blue", f"{flag}={value}")
    assert line.endswith(message)


NUMBER_FLAGS = {
    "--steps": lambda v: isinstance(v, int) and 1 <= v <= MAX_INFERENCE_STEPS,
    "--size-level": lambda v: isinstance(v, int) and 16 <= v <= MAX_SIZE_LEVEL,
    "--seed": lambda v: isinstance(v, int) and 0 <= v <= validate.MAX_SEED,
    "--guidance": lambda v: math.isfinite(v) and v >= 0,
    "--strength": lambda v: math.isfinite(v) and 0 < v <= 1,
    "--lora-scale": lambda v: math.isfinite(v),
}
RAW_NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "-inf", "1e400", "0x10", "1_000", " 7 ", "", "4.0", "true"]),
    st.text(max_size=6),
)


@settings(max_examples=25, deadline=None)
@given(flag=st.sampled_from(sorted(NUMBER_FLAGS)), raw=RAW_NUMBERS)
def test_any_value_of_a_number_flag_is_parsed_in_range_or_refused_with_one_line(flag, raw):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            args = build_parser().parse_args(["edit", "image.png", "make it blue", f"{flag}={raw}"])
        except SystemExit as refused:
            assert refused.code == 2
            assert len([line for line in stderr.getvalue().splitlines() if ": error: " in line]) == 1
            return
    value = getattr(args, flag.removeprefix("--").replace("-", "_"))
    assert NUMBER_FLAGS[flag](value[0] if isinstance(value, list) else value)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("guidance_scale", float("nan"), "guidance_scale must be a finite number of at least 0.0, got nan"),
        ("guidance_scale", float("inf"), "guidance_scale must be a finite number"),
        ("guidance_scale", "6", "guidance_scale must be a number"),
        ("num_inference_steps", 2.5, "num_inference_steps must be an integer between 1 and 1000, got 2.5"),
        ("num_inference_steps", True, "num_inference_steps must be an integer"),
        ("num_inference_steps", 10**9, "num_inference_steps must be an integer between 1 and 1000"),
        ("size_level", 64.0, "size_level must be an integer between 16 and 8192, got 64.0"),
        ("size_level", 10**6, "size_level must be an integer between 16 and 8192"),
        ("strength", float("nan"), r"strength must be a finite number in \(0.0, 1.0\], got nan"),
    ],
)
def test_the_pipeline_refuses_a_bad_setting_before_any_work(pipe, photo, monkeypatch, setting, value, message):
    def load_image(*args, **kwargs):
        raise AssertionError("the pipeline started working before checking its settings")

    monkeypatch.setattr("step1x_edit.pipeline.load_image", load_image)
    with pytest.raises(InvalidValueError, match=message):
        pipe(image=photo, prompt="make it blue", **{"num_inference_steps": 1, "size_level": 32, setting: value})


def test_a_pipeline_cannot_be_made_with_a_nan_default_guidance(pipe):
    with pytest.raises(InvalidValueError, match="default_guidance_scale must be a finite number"):
        Step1XEditPipeline(pipe.transformer, pipe.vae, pipe.text_encoder, pipe.processor, pipe.scheduler,
                           default_guidance_scale=float("nan"))


# ------------------------------------------------------------------------------------------------ memory
def test_a_size_level_beyond_the_available_memory_is_refused_naming_the_largest_that_fits(pipe, photo, monkeypatch):
    monkeypatch.setattr("step1x_edit.pipeline.available_memory", lambda device: 64 * 2**20)
    largest = pipe.largest_size_level(1, guided=True)
    assert 16 < largest < 1024
    message = rf"size_level 1024 needs about [\d.]+ GiB for 1 image\(s\) on cpu, which has 0.1 GiB available: the " \
              rf"largest size_level that fits is {largest}"
    with pytest.raises(InvalidValueError, match=message):
        pipe(image=photo, prompt="make it blue", size_level=1024, num_inference_steps=1)
    assert pipe(image=photo, prompt="make it blue", size_level=largest // 16 * 16, num_inference_steps=1).images


def test_the_cli_refuses_a_size_level_the_device_cannot_hold(capsys, photo, tmp_path, monkeypatch):
    monkeypatch.setattr("step1x_edit.pipeline.available_memory", lambda device: 2**30)
    line = _refused(capsys, "edit", photo, "make it blue", "-o", tmp_path / "out.png", "--size-level", "8192")
    assert "size_level 8192 needs about" in line and "the largest size_level that fits is" in line
    assert not (tmp_path / "out.png").exists()


def test_the_released_size_fits_at_1024_where_its_weights_leave_38_gib(monkeypatch):
    with init_empty_weights():  # full-size models, no memory
        transformer = build_transformer("full").to(torch.bfloat16)
        vae = build_vae("full")
    released = Step1XEditPipeline(transformer, vae, None, None, FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG))
    assert 1024**2 * released.working_bytes_per_pixel(guided=True) < 8 * 2**30
    monkeypatch.setattr("step1x_edit.pipeline.available_memory", lambda device: 38 * 2**30)  # an 80 GB GPU
    assert released.largest_size_level(1, guided=True) >= 1024


def test_gpu_memory_available_counts_the_allocators_unused_reserve(monkeypatch):
    from step1x_edit.pipeline import available_memory

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 6 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 4 * 2**30)
    assert available_memory(torch.device("cuda", 0)) == 12 * 2**30
    assert available_memory(torch.device("meta")) is None


def test_the_demo_model_fits_at_its_default_size():
    demo = load_pipeline(None, device="cpu")
    assert demo.largest_size_level(1, guided=False) >= demo.config.default_size_level


# ------------------------------------------------------------------------------------------------ text
def test_an_instruction_that_is_not_utf8_is_refused(capsys, monkeypatch, photo, pipe):
    _no_model_load(monkeypatch)
    not_utf8 = "make the sky \udcff blue"  # how Linux hands over an argument with the byte 0xFF
    line = _refused(capsys, "edit", photo, not_utf8)
    assert line.endswith("the instruction is not valid UTF-8 text (a byte that is not UTF-8 at character 13); save "
                         "or type it as UTF-8")
    line = _refused(capsys, "edit", photo, "make it blue", "--negative-prompt", "\udcff")
    assert "the negative prompt is not valid UTF-8 text" in line
    with pytest.raises(InvalidPromptError, match="not valid UTF-8"):
        check_instruction(not_utf8)
    with pytest.raises(InvalidPromptError, match="the negative prompt is not valid UTF-8"):
        pipe(image=photo, prompt="make it blue", negative_prompt="bad \udc80", num_inference_steps=1, size_level=32)


# ------------------------------------------------------------------------------------------------ devices
@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("tpu", "device 'tpu' is not a device name; use cpu, cuda or cuda:N"),
        ("cuda:x", "device 'cuda:x' is not a device name"),
        ("cpu:abc", "device 'cpu:abc' is not a device name"),
        ("cpu:3", "device 'cpu:3' is not available here"),
        ("cuda:7", "device 'cuda:7' does not exist: this machine has 2 GPU(s), cuda:0 to cuda:1"),
    ],
)
def test_a_device_that_does_not_exist_is_refused_before_the_model_loads(
    capsys, monkeypatch, photo, tmp_path, device, message
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with two GPUs, whatever runs this
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    _no_model_load(monkeypatch)
    line = _refused(capsys, "edit", photo, "make it blue", "-o", tmp_path / "out.png", "--device", device)
    assert message in line


def test_cuda_is_refused_on_a_machine_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InvalidValueError, match="device 'cuda:0': this machine has no CUDA GPU that torch can use"):
        resolve_device("cuda:0")
    with pytest.raises(InvalidValueError, match="no CUDA GPU"):
        load_pipeline(None, device="cuda")
    assert resolve_device("cpu") == torch.device("cpu")


# ------------------------------------------------------------------------------------------------ safetensors
def _raw_safetensors(header: dict, data: bytes, length: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def _mutated(path, key, tensor) -> bytes:
    state = load_file(path)
    state[key] = tensor
    return save(state)


def _lying_header(path) -> bytes:
    data = path.read_bytes()
    return struct.pack("<Q", len(data) * 4) + data[8:]


DIT_CASES = {
    "rank-1": (lambda p: _mutated(p, "img_in.weight", torch.zeros(64)),
               "tensor img_in.weight has shape (64,), but a matrix (2 non-empty dimensions) belongs there"),
    "zero-size": (lambda p: _mutated(p, "img_in.weight", torch.zeros(0, 64)),
                  "tensor img_in.weight has an empty dimension (shape (0, 64))"),
    "int8": (lambda p: _mutated(p, "img_in.weight", torch.zeros(64, 64, dtype=torch.int8)),
             "tensor img_in.weight is stored as I8, but weights are floating point"),
    "bool": (lambda p: _mutated(p, "final_layer.linear.bias", torch.zeros(64, dtype=torch.bool)),
             "tensor final_layer.linear.bias is stored as BOOL"),
    "wrong shape": (lambda p: _mutated(p, "double_blocks.0.img_attn.proj.bias", torch.zeros(65)),
                    r"double_blocks.0.img_attn.proj.bias (65,) (expected (64,))"),
    "rank-2 norm": (lambda p: _mutated(p, "double_blocks.0.img_attn.norm.query_norm.scale", torch.zeros(4, 8)),
                    "tensor double_blocks.0.img_attn.norm.query_norm.scale has shape (4, 8), but a vector"),
    "absurd block index": (lambda p: _mutated(p, "double_blocks.5000.img_mod.lin.bias", torch.zeros(1)),
                           "(the sizes its tensor shapes imply): depth must be an integer between 0 and 1000, got 5001"),
    "header lies": (_lying_header, "is not a complete safetensors file"),
    "truncated": (lambda p: p.read_bytes()[:-100], "is not a complete safetensors file"),
    "huge header": (lambda p: _raw_safetensors({}, b"", length=2**63), "header too large"),
    "a PNG": (lambda p: b"\x89PNG\r\n\x1a\n" + bytes(64), "is not a complete safetensors file"),
    "empty": (lambda p: b"", "is not a complete safetensors file"),
}


@pytest.mark.parametrize("command", ["info", "edit", "convert"])
@pytest.mark.parametrize("case", sorted(DIT_CASES))
def test_a_crafted_official_dit_file_is_one_error_naming_the_file(
    capsys, official_dir, photo, tmp_path, command, case
):
    craft, message = DIT_CASES[case]
    model = _variant(official_dir, tmp_path / "model", {DIT_FILE: craft(official_dir / DIT_FILE)})
    args = {"info": ["info", model], "edit": ["edit", photo, "make it blue", "--model", model, *FAST],
            "convert": ["convert", model, tmp_path / "converted"]}[command]
    line = _refused(capsys, *args)
    assert str(model / DIT_FILE) in line and message in line


DIFFUSERS_WEIGHT_CASES = {
    "int8": (lambda p: _mutated(p, "proj_out.weight", torch.zeros(64, 64, dtype=torch.int8)),
             "tensor proj_out.weight is stored as I8"),
    "wrong shape": (lambda p: _mutated(p, "proj_out.weight", torch.zeros(64, 63)),
                    "tensor proj_out.weight has shape (64, 63), but"),
    "rank-1": (lambda p: _mutated(p, "proj_out.bias", torch.zeros(1, 64)), "tensor proj_out.bias has shape (1, 64)"),
    "missing tensor": (lambda p: save({k: v for k, v in load_file(p).items() if k != "proj_out.bias"}),
                       "missing 1 key(s): proj_out.bias"),
    "truncated": (lambda p: p.read_bytes()[:-8], "is not a complete safetensors file"),
}


@pytest.mark.parametrize("command", ["info", "edit"])
@pytest.mark.parametrize(
    ("tensor", "replacement", "message"),
    [("encoder.conv_in.weight", torch.zeros(32, 3, 3), "tensor encoder.conv_in.weight has shape (32, 3, 3), but a "
      "convolution kernel (4 non-empty dimensions) belongs there"),
     ("decoder.conv_out.bias", torch.zeros(3, dtype=torch.int8), "tensor decoder.conv_out.bias is stored as I8")],
)
def test_a_crafted_official_vae_file_is_one_error_naming_the_file(
    capsys, official_dir, photo, tmp_path, command, tensor, replacement, message
):
    model = _variant(official_dir, tmp_path / "model",
                     {"vae.safetensors": _mutated(official_dir / "vae.safetensors", tensor, replacement)})
    args = ["info", model] if command == "info" else ["edit", photo, "make it blue", "--model", model, *FAST]
    line = _refused(capsys, *args)
    assert str(model / "vae.safetensors") in line and message in line


@pytest.mark.parametrize("command", ["info", "edit"])
@pytest.mark.parametrize("case", sorted(DIFFUSERS_WEIGHT_CASES))
def test_a_crafted_diffusers_weight_file_is_one_error_naming_the_file(
    capsys, diffusers_dir, photo, tmp_path, command, case
):
    craft, message = DIFFUSERS_WEIGHT_CASES[case]
    model = _variant(diffusers_dir, tmp_path / "model", {DIFFUSERS_DIT: craft(diffusers_dir / DIFFUSERS_DIT)})
    args = ["info", model] if command == "info" else ["edit", photo, "make it blue", "--model", model, *FAST]
    line = _refused(capsys, *args)
    assert str(model / "transformer") in line and message in line


# ------------------------------------------------------------------------------------------------ config files
def _set(path: str, value):
    """A JSON edit: the dotted ``path`` set to ``value`` (``...`` deletes it)."""
    def change(config):
        *parents, last = path.split(".")
        for part in parents:
            config = config[part]
        if value is ...:
            del config[last]
        else:
            config[last] = value
    return change


CONFIG_CASES = {
    "index not JSON": ("model_index.json", b"{not json", "model_index.json is not valid JSON"),
    "index a list": ("model_index.json", b"[1, 2]", "model_index.json must hold a JSON object of config fields, not list"),
    "index foreign class": ("model_index.json", _set("vae", ["os", "system"]),
                            "model_index.json: vae must be one of"),
    "index NaN guidance": ("model_index.json", _set("default_guidance_scale", float("nan")),
                           "model_index.json: default_guidance_scale must be a finite number"),
    "index string size": ("model_index.json", _set("default_size_level", "96"),
                          "model_index.json: default_size_level must be an integer between 16 and 8192, got '96'"),
    "index unknown entry": ("model_index.json", _set("safety_checker", ["x", "y"]),
                            "model_index.json: unknown entries ['safety_checker']"),
    "dit string width": ("transformer/config.json", _set("hidden_size", "64"),
                         "transformer/config.json: hidden_size must be an integer between 1 and 65536, got '64'"),
    "dit negative depth": ("transformer/config.json", _set("depth", -1),
                           "transformer/config.json: depth must be an integer between 0 and 1000, got -1"),
    "dit a billion layers": ("transformer/config.json", _set("depth_single_blocks", 10**9),
                             "transformer/config.json: depth_single_blocks must be an integer between 0 and 1000"),
    "dit missing field": ("transformer/config.json", _set("hidden_size", ...),
                          "transformer/config.json: field(s) ['hidden_size'] missing"),
    "dit axes not a list": ("transformer/config.json", _set("axes_dim", "8,12,12"),
                            "transformer/config.json: axes_dim must be a list"),
    "dit heads do not divide": ("transformer/config.json", _set("num_heads", 3),
                                "transformer/config.json: hidden_size 64 is not divisible by num_heads 3"),
    "dit not an object": ("transformer/config.json", b'"config"', "must hold a JSON object"),
    "dit not UTF-8": ("transformer/config.json", b'{"hidden_size": "\xff"}', "transformer/config.json is not valid JSON"),
    "vae zero latent": ("vae/config.json", _set("latent_channels", 0),
                        "vae/config.json: latent_channels must be an integer between 1 and 1024, got 0"),
    "vae no widths": ("vae/config.json", _set("block_out_channels", []),
                      "vae/config.json: block_out_channels must be a list of 1 to 8 integers"),
    "mllm a billion layers": ("text_encoder/config.json", _set("text_config.num_hidden_layers", 10**9),
                              "text_encoder/config.json: num_hidden_layers must be an integer between 1 and 1000"),
    "mllm layers off by one": ("text_encoder/config.json", _set("text_config.num_hidden_layers", 3),
                               "text_encoder/config.json: num_hidden_layers is 3, but the weights"),
    "mllm missing width": ("text_encoder/config.json", _set("text_config.hidden_size", ...),
                           "text_encoder/config.json: hidden_size is missing"),
    "mllm vocabulary off": ("text_encoder/config.json", _set("text_config.vocab_size", 900),
                            "text_encoder/config.json implies (900, 32)"),
    "mllm vocabulary below its padding": ("text_encoder/config.json", _set("text_config.vocab_size", 99),
                                          "text_encoder/config.json: Padding_idx must be within num_embeddings"),
    "mllm mlp width off": ("text_encoder/config.json", _set("text_config.intermediate_size", 65),
                           "mlp.down_proj.weight has shape (32, 64), but"),
    "mllm vision width off": ("text_encoder/config.json", _set("vision_config.hidden_size", 24),
                              "text_encoder/model.safetensors: tensor visual."),
    "scheduler huge": ("scheduler/scheduler_config.json", _set("num_train_timesteps", 10**12),
                       "scheduler_config.json: num_train_timesteps must be an integer between 1 and 100000"),
    "scheduler flat shift": ("scheduler/scheduler_config.json", _set("max_image_seq_len", 256),
                             "base_image_seq_len (256) must be below max_image_seq_len (256)"),
    "processor huge images": ("processor/processor_config.json", _set("image_processor.size.longest_edge", 10**12),
                              "processor_config.json: size.longest_edge must be an integer between 1 and"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_a_malformed_diffusers_config_is_one_error_naming_the_file_and_field(diffusers_dir, tmp_path, case):
    relative, change, message = CONFIG_CASES[case]
    model = _variant(diffusers_dir, tmp_path / "model", {relative: change})
    with pytest.raises(CheckpointError) as refused:
        load_pipeline(model, device="cpu")
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_sharded_text_encoder_loads_and_a_shard_outside_its_folder_is_refused(diffusers_dir, tmp_path):
    state = load_file(diffusers_dir / "text_encoder" / "model.safetensors")
    names = sorted(state)
    shards = {"model-1.safetensors": names[: len(names) // 2], "model-2.safetensors": names[len(names) // 2:]}
    index = {"metadata": {"total_size": sum(tensor.nbytes for tensor in state.values())},
             "weight_map": {name: shard for shard, keys in shards.items() for name in keys}}
    changes = {f"text_encoder/{shard}": save({name: state[name] for name in keys}) for shard, keys in shards.items()}
    changes |= {"text_encoder/model.safetensors": None,
                "text_encoder/model.safetensors.index.json": json.dumps(index).encode()}
    sharded = _variant(diffusers_dir, tmp_path / "sharded", changes)
    assert load_pipeline(sharded, device="cpu").text_encoder is not None
    index["weight_map"][names[0]] = "../../outside.safetensors"
    changes["text_encoder/model.safetensors.index.json"] = json.dumps(index).encode()
    escaping = _variant(diffusers_dir, tmp_path / "escaping", changes)
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json: shard '../../outside.safetensors' is "
                                              "not the name of a .safetensors file beside it"):
        load_pipeline(escaping, device="cpu")


def test_pickle_weights_in_a_diffusers_folder_are_refused(diffusers_dir, tmp_path):
    model = _variant(diffusers_dir, tmp_path / "model", {DIFFUSERS_DIT: None,
                                                         "transformer/diffusion_pytorch_model.bin": b"\x80\x04K\x01."})
    with pytest.raises(CheckpointError, match=r"the pickle weights \['diffusion_pytorch_model.bin'\] are refused"):
        load_pipeline(model, device="cpu")


def test_info_and_merge_answer_a_malformed_config_with_one_line(capsys, diffusers_dir, tmp_path):
    model = _variant(diffusers_dir, tmp_path / "model", {"transformer/config.json": _set("depth", "two")})
    expected = "transformer/config.json: depth must be an integer between 0 and 1000, got 'two'"
    assert _refused(capsys, "info", model).endswith(expected)
    assert _refused(capsys, "merge", model, diffusers_dir, "--weight", "0.5", "-o", tmp_path / "merged").endswith(expected)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("axes_dim", "abc"), "transformer_config.json: axes_dim must be a list of 1 to 8 integers, got 'abc'"),
        (_set("theta", -1), "transformer_config.json: theta must be a finite number above 0.0, got -1.0"),
        (_set("heads", 4), "transformer_config.json: unknown transformer config field(s) ['heads']"),
        (_set("connector_num_heads", 0), "connector_num_heads must be an integer between 1 and 1024, got 0"),
    ],
)
def test_a_malformed_official_transformer_config_is_refused_by_info_and_edit(
    capsys, official_dir, photo, tmp_path, change, message
):
    model = _variant(official_dir, tmp_path / "model", {"transformer_config.json": change})
    assert message in _refused(capsys, "info", model)
    assert message in _refused(capsys, "edit", photo, "make it blue", "--model", model, *FAST)


# ------------------------------------------------------------------------------------------------ LoRA files
def _peft_lora(in_features=64):
    return {"transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, in_features),
            "transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(64, 4)}


LORA_CASES = {
    "peft wrong shape": (lambda: save(_peft_lora(in_features=48)),
                         "LoRA tensor transformer_blocks.0.attn.to_q.lora_A.weight has shape (4, 48), but the model's "
                         "transformer_blocks.0.attn.to_q needs (r, 64)"),
    "kohya wrong shape": (lambda: save({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(2, 64),
                                        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(64, 2)}),
                          "LoRA tensor lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight has shape (64, 2), but "
                          "the model's double_blocks.0.img_attn.qkv needs (192, 2)"),
    "NaN values": (lambda: save({k: torch.full_like(v, float("nan")) for k, v in _peft_lora().items()}),
                   "LoRA tensor transformer_blocks.0.attn.to_q.lora_A.weight holds NaN or infinite values"),
    "int8": (lambda: save({k: v.to(torch.int8) for k, v in _peft_lora().items()}),
             "tensor transformer_blocks.0.attn.to_q.lora_A.weight is stored as I8"),
    "alpha not a number": (lambda: save({"lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.zeros(3)}),
                           "tensor lora_unet_double_blocks_0_img_attn_qkv.alpha is F32 of shape (3,), but alpha is one"),
    "bad alpha pattern": (lambda: save(_peft_lora(), metadata={"lora_adapter_metadata": '{"alpha_pattern": {"(": 2}}'}),
                          "alpha_pattern holds an invalid regular expression '('"),
    "NaN lora_alpha": (lambda: save(_peft_lora(), metadata={"lora_adapter_metadata": '{"lora_alpha": NaN}'}),
                       "lora_alpha must be a finite number, got nan"),
    "no tensors": (lambda: save({}), "holds no tensors"),
    "empty file": (lambda: b"", "is not a complete safetensors file"),
    "not safetensors": (lambda: b"\x89PNG\r\n\x1a\n" + bytes(64), "is not a complete safetensors file"),
    "a pickle": (lambda: b"\x80\x04K\x01.", "is a pickle/zip (torch.save) file, not safetensors"),
}


@pytest.mark.parametrize("case", sorted(LORA_CASES))
def test_a_bad_lora_file_is_one_error_naming_the_tensor(capsys, official_dir, photo, tmp_path, case):
    craft, message = LORA_CASES[case]
    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(craft())
    line = _refused(capsys, "edit", photo, "make it blue", "--model", official_dir, "--lora", lora, *FAST)
    assert message in line


def test_a_bad_lora_file_is_refused_before_the_model_loads(capsys, monkeypatch, photo, tmp_path):
    _no_model_load(monkeypatch)
    (tmp_path / "lora.safetensors").write_bytes(b"")
    line = _refused(capsys, "edit", photo, "make it blue", "--lora", tmp_path / "lora.safetensors")
    assert "lora.safetensors is not a complete safetensors file" in line


# ------------------------------------------------------------------------------------------------ outputs
@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("somefile.png/out.png", "somefile.png is a file, not a folder"),
        ("somefile.png/deeper/out.png", "somefile.png is a file, not a folder"),
        ("out.xbm", "cannot save an RGB image as '.xbm'"),
        ("out.bufr", "cannot save an RGB image as '.bufr'"),
        ("out.unknown", "unknown image extension '.unknown'"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_the_model_loads(
    capsys, monkeypatch, photo, tmp_path, output, message
):
    _no_model_load(monkeypatch)
    Image.new("RGB", (4, 4)).save(tmp_path / "somefile.png")
    line = _refused(capsys, "edit", photo, "make it blue", "-o", tmp_path / output)
    assert message in line
    assert (tmp_path / "somefile.png").is_file()  # nothing was overwritten or replaced


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_output_folder_is_refused(capsys, monkeypatch, photo, tmp_path):
    _no_model_load(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    line = _refused(capsys, "edit", photo, "make it blue", "-o", locked / "new" / "out.png")
    assert f"permission denied in {locked}" in line


def test_convert_refuses_an_output_that_is_a_file_before_loading(capsys, monkeypatch, official_dir, tmp_path):
    def from_official(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr("step1x_edit.pipeline.Step1XEditPipeline.from_official", from_official)
    (tmp_path / "taken").write_text("a file")
    for out in (tmp_path / "taken", tmp_path / "taken" / "model"):
        line = _refused(capsys, "convert", official_dir, out)
        assert line.endswith(f"cannot write {out}: {tmp_path / 'taken'} is a file, not a folder")


def test_names_too_long_for_the_file_system_are_one_line(capsys, monkeypatch, photo, tmp_path):
    _no_model_load(monkeypatch)
    long_name = tmp_path / ("a" * 300 + ".png")
    assert _refused(capsys, "edit", long_name, "make it blue").endswith(f"cannot open {long_name}: File name too long")
    line = _refused(capsys, "edit", photo, "make it blue", "-o", long_name)
    assert line.endswith(f"cannot write {long_name}: File name too long")
    line = _refused(capsys, "convert", tmp_path, long_name.with_suffix(""))
    assert line.endswith("File name too long")


def test_a_model_argument_that_is_not_a_model_folder_is_one_line(capsys, photo, diffusers_dir):
    line = _refused(capsys, "edit", photo, "make it blue", "--model", photo)
    assert line.endswith(f"model directory is not a directory: {photo}")
    assert _refused(capsys, "info", photo).endswith(f"model directory is not a directory: {photo}")
    line = _refused(capsys, "edit", photo, "make it blue", "--model", diffusers_dir, "--version", "v1.0")
    assert line.endswith(f"a version (v1.0) applies to official checkpoints only; the diffusers folder "
                         f"{diffusers_dir} records its own")


def test_saving_that_fails_after_the_edit_is_one_line(capsys, monkeypatch, photo, tmp_path):
    original = Image.Image.save

    def save(self, target, *args, **kwargs):  # the output check's trial save in memory still works; the disk is full
        if isinstance(target, io.BytesIO):
            return original(self, target, *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", save)
    line = _refused(capsys, "edit", photo, "make it blue", "-o", tmp_path / "out.png")
    assert line.endswith(f"cannot write {tmp_path / 'out.png'}: [Errno 28] No space left on device")


def test_the_attention_implementation_flag_reaches_the_loader_and_refuses_unknown_names(monkeypatch, tmp_path, capsys):
    from step1x_edit import cli, pipeline

    seen = {}
    real = pipeline.load_pipeline

    def recording(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "load_pipeline", recording)
    example = Path(__file__).resolve().parents[1] / "examples" / "shapes.png"
    assert cli.main(["edit", str(example), "Change the background to cream.", "-o", str(tmp_path / "e.png"),
                     "--device", "cpu", "--attn-implementation", "eager"]) == 0
    assert seen["attn_implementation"] == "eager"
    with pytest.raises(SystemExit):
        cli.main(["edit", str(example), "x", "--attn-implementation", "fastest"])
    assert "invalid choice: 'fastest'" in capsys.readouterr().err
