"""Official checkpoint loading: full-size key tables, strict errors, version detection, round trips."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from step1x_edit.checkpoints.official import (
    detect_version,
    empty_transformer_for,
    empty_vae_for,
    find_official_files,
    load_official_transformer,
    load_official_vae,
    transformer_state_dict_to_official,
    vae_state_dict_to_official,
)
from step1x_edit.errors import CheckpointError
from step1x_edit.models.presets import build_transformer, build_vae, vae_config


@pytest.fixture(scope="module")
def full_size(shared_dir):
    with open(os.path.join(shared_dir, "fixtures", "step1x_official", "full_size_keys.json")) as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def fixture_dir(shared_dir):
    return Path(shared_dir, "fixtures", "step1x_official")


def _fixture_config(fixture_dir, version):
    config = json.loads((fixture_dir / version / "config.json").read_text())
    return {"axes_dim": config["dit"]["axes_dim"], "connector_num_heads": config["connector"]["heads_num"]}


def _count(model):
    return sum(parameter.numel() for parameter in model.parameters())


def test_full_size_model_accepts_every_released_v1_0_key_and_shape(full_size):
    shapes = {key: tuple(shape) for key, shape in full_size["dit"].items()}
    model = empty_transformer_for(shapes)
    assert model.config.version == "v1.0"
    assert _count(model) == full_size["dit_params"] == 12_427_800_385


def test_full_size_v1_1_model_has_no_scale_factor_and_one_parameter_fewer(full_size):
    shapes = {key: tuple(shape) for key, shape in full_size["dit"].items() if key != "connector.scale_factor"}
    model = empty_transformer_for(shapes)
    assert model.config.version == "v1.1"
    assert model.config.hidden_size == 3072 and model.config.depth == 19 and model.config.depth_single_blocks == 38
    assert _count(model) == full_size["dit_params"] - 1


def test_full_size_vae_accepts_every_released_key_and_shape(full_size):
    vae = empty_vae_for({key: tuple(shape) for key, shape in full_size["vae"].items()})
    assert _count(vae) == full_size["vae_params"] == 83_819_683
    assert vae.config.block_out_channels == (128, 256, 512, 512)
    assert vae.config.scaling_factor == 0.3611 and vae.config.shift_factor == 0.1159


def test_full_preset_vae_has_the_released_parameter_count():
    with torch.device("meta"):
        assert _count(build_vae("full")) == 83_819_683


@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_official_file_round_trips_through_diffusers_layout(fixture_dir, version, tmp_path):
    path = fixture_dir / version / "dit_official.safetensors"
    model = load_official_transformer(path, config=_fixture_config(fixture_dir, version))
    original = load_file(path)
    converted = transformer_state_dict_to_official(model)
    assert converted.keys() == original.keys()
    assert all(torch.equal(converted[key], original[key]) for key in original)
    save_file(converted, tmp_path / "again.safetensors")
    assert detect_version(tmp_path / "again.safetensors") == version


def test_vae_round_trips_through_diffusers_layout(fixture_dir):
    path = fixture_dir / "v1.0" / "vae_official.safetensors"
    config = json.loads((fixture_dir / "v1.0" / "config.json").read_text())["vae"]
    vae = load_official_vae(path, config=config)
    original = load_file(path)
    converted = vae_state_dict_to_official(vae, config)
    assert converted.keys() == original.keys()
    assert all(torch.equal(converted[key], original[key]) for key in original)


def test_version_is_detected_from_the_scale_factor_key(fixture_dir):
    assert detect_version(fixture_dir / "v1.0" / "dit_official.safetensors") == "v1.0"
    assert detect_version(fixture_dir / "v1.1" / "dit_official.safetensors") == "v1.1"


def test_v1_1_file_loaded_as_v1_0_names_the_likely_cause(fixture_dir):
    with pytest.raises(CheckpointError, match="no connector.scale_factor: this is a v1.1 file loaded as v1.0"):
        load_official_transformer(
            fixture_dir / "v1.1" / "dit_official.safetensors", version="v1.0",
            config=_fixture_config(fixture_dir, "v1.1"),
        )


@pytest.fixture(scope="module")
def tiny_official():
    """A tiny random v1.0 model and its official-format state dict."""
    torch.manual_seed(0)
    model = build_transformer("tiny", version="v1.0")
    return model, transformer_state_dict_to_official(model)


def test_missing_key_is_named(tiny_official, tmp_path):
    state = dict(tiny_official[1])
    del state["single_blocks.0.linear2.bias"]
    save_file(state, tmp_path / "step1x-edit-missing.safetensors")
    with pytest.raises(CheckpointError, match=r"missing 1 key\(s\): single_blocks.0.linear2.bias"):
        load_official_transformer(tmp_path / "step1x-edit-missing.safetensors", config={"axes_dim": (8, 12, 12)})


def test_unexpected_key_is_named(tiny_official, tmp_path):
    state = {**tiny_official[1], "guidance_in.in_layer.weight": torch.zeros(64, 256)}
    save_file(state, tmp_path / "extra.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected 1 key\(s\): guidance_in.in_layer.weight"):
        load_official_transformer(tmp_path / "extra.safetensors", config={"axes_dim": (8, 12, 12)})


def test_wrong_shape_is_named_before_any_data_is_read(tiny_official, tmp_path):
    state = {**tiny_official[1], "double_blocks.0.img_attn.proj.bias": torch.zeros(65)}
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match=r"double_blocks.0.img_attn.proj.bias \(65,\) \(expected \(64,\)\)"):
        load_official_transformer(tmp_path / "bad.safetensors", config={"axes_dim": (8, 12, 12)})


def test_truncated_file_is_refused_clearly(tiny_official, tmp_path):
    save_file(tiny_official[1], tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a complete safetensors file"):
        load_official_transformer(tmp_path / "cut.safetensors")


def test_pickle_checkpoints_are_refused(tiny_official, tmp_path):
    torch.save(tiny_official[1], tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="refusing to load a pickle"):
        load_official_transformer(tmp_path / "model.pt")
    (tmp_path / "renamed.safetensors").write_bytes((tmp_path / "model.pt").read_bytes())
    with pytest.raises(CheckpointError, match="not safetensors"):
        load_official_transformer(tmp_path / "renamed.safetensors")


def test_missing_file_is_reported():
    with pytest.raises(CheckpointError, match="not found"):
        load_official_transformer("/nonexistent/step1x-edit-i1258.safetensors")


def test_loaded_model_reproduces_the_saved_model_in_the_requested_dtype(tiny_official, tmp_path):
    model, state = tiny_official
    save_file(state, tmp_path / "tiny.safetensors")
    loaded = load_official_transformer(tmp_path / "tiny.safetensors", config={"axes_dim": (8, 12, 12)},
                                       torch_dtype=torch.bfloat16)
    assert loaded.config.version == "v1.0" and loaded.dtype == torch.bfloat16
    reference = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    assert all(torch.equal(loaded.state_dict()[k], reference[k]) for k in reference)


def test_non_released_sizes_need_the_rotary_axes(tiny_official, tmp_path):
    save_file(tiny_official[1], tmp_path / "tiny.safetensors")
    with pytest.raises(CheckpointError, match="axes_dim"):
        load_official_transformer(tmp_path / "tiny.safetensors")


def test_config_contradicting_the_shapes_is_refused(tiny_official, tmp_path):
    save_file(tiny_official[1], tmp_path / "tiny.safetensors")
    with pytest.raises(CheckpointError, match="hidden_size=128 but the checkpoint has hidden_size=64"):
        load_official_transformer(tmp_path / "tiny.safetensors", config={"axes_dim": (8, 12, 12), "hidden_size": 128})


def test_vae_file_is_not_mistaken_for_a_dit(fixture_dir):
    with pytest.raises(CheckpointError, match="not an official Step1X-Edit DiT checkpoint"):
        load_official_transformer(fixture_dir / "v1.0" / "vae_official.safetensors")


def test_model_directory_files_are_found(tmp_path):
    vae = build_vae("tiny")
    save_file(vae_state_dict_to_official(vae, vae_config("tiny")), tmp_path / "vae.safetensors")
    save_file({"x": torch.zeros(1)}, tmp_path / "step1x-edit-i1258.safetensors")
    files = find_official_files(tmp_path)
    assert files.transformer.name == "step1x-edit-i1258.safetensors" and files.mllm_dir is None
    save_file({"x": torch.zeros(1)}, tmp_path / "step1x-edit-v1p1-official.safetensors")
    (tmp_path / "Qwen2.5-VL-7B-Instruct").mkdir()
    files = find_official_files(tmp_path)
    assert files.transformer.name == "step1x-edit-v1p1-official.safetensors"
    assert files.mllm_dir == tmp_path / "Qwen2.5-VL-7B-Instruct"
    assert load_official_vae(files.vae).config.block_out_channels == (32, 32, 32, 32)


def test_model_directory_without_weights_is_explained(tmp_path):
    torch.save({}, tmp_path / "step1x-edit-i1258.pt")
    with pytest.raises(CheckpointError, match="pickle files"):
        find_official_files(tmp_path)
    save_file({"x": torch.zeros(1)}, tmp_path / "step1x-edit-custom.safetensors")
    with pytest.raises(CheckpointError, match="no vae.safetensors"):
        find_official_files(tmp_path)


def test_fp8_checkpoint_is_up_cast_on_load(tiny_official, tmp_path):
    model, state = tiny_official
    save_file({key: value.to(torch.float8_e4m3fn) for key, value in state.items()}, tmp_path / "fp8.safetensors")
    loaded = load_official_transformer(tmp_path / "fp8.safetensors", config={"axes_dim": (8, 12, 12)})
    assert loaded.dtype == torch.float32
    weight = model.transformer_blocks[0].attn.to_q.weight
    assert torch.equal(loaded.transformer_blocks[0].attn.to_q.weight, weight.to(torch.float8_e4m3fn).float())


def test_version_in_config_is_honoured_and_checked(fixture_dir):
    config = {**_fixture_config(fixture_dir, "v1.1"), "version": "v1.0"}
    with pytest.raises(CheckpointError, match="this is a v1.1 file loaded as v1.0"):
        load_official_transformer(fixture_dir / "v1.1" / "dit_official.safetensors", config=config)
    with pytest.raises(CheckpointError, match="contradicts"):
        load_official_transformer(fixture_dir / "v1.1" / "dit_official.safetensors", version="v1.1", config=config)
    with pytest.raises(CheckpointError, match="unknown transformer config field"):
        load_official_transformer(fixture_dir / "v1.1" / "dit_official.safetensors", config={"heads": 4})


def test_diffusers_format_file_is_pointed_to_from_pretrained(tiny_official, tmp_path):
    model = tiny_official[0]
    model.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="diffusers-format file"):
        load_official_transformer(tmp_path / "diffusion_pytorch_model.safetensors")


def test_official_modules_map_to_diffusers_modules_with_their_splits():
    from step1x_edit.checkpoints.official import official_module_targets
    from step1x_edit.models.presets import transformer_config

    targets = official_module_targets(transformer_config("full"))
    assert targets["double_blocks.3.img_attn.qkv"] == (
        ("transformer_blocks.3.attn.to_q", "transformer_blocks.3.attn.to_k", "transformer_blocks.3.attn.to_v"),
        (3072, 3072, 3072),
    )
    assert targets["single_blocks.10.linear1"][1] == (3072, 3072, 3072, 12288)
    assert targets["single_blocks.10.modulation.lin"] == (("single_transformer_blocks.10.norm.linear",), ())
    lora_targets = [name for name in targets if name.startswith(("double_blocks.", "single_blocks."))]
    assert len(lora_targets) == 19 * 10 + 38 * 3  # the 304 modules the official LoRA trainer targets


def test_safetensors_header_starting_like_a_pickle_is_still_read(tmp_path):
    from step1x_edit.checkpoints.official import read_shapes

    path = tmp_path / "header.safetensors"
    for length in range(1, 300):  # find a key length that makes the header size's first byte 0x80
        save_file({"k" * length: torch.zeros(1)}, path)
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert read_shapes(path) == {"k" * length: (1,)}


def test_the_velocity_only_official_format_neither_writes_nor_reads_a_reference_delta_model(tiny_official, tmp_path):
    from step1x_edit.checkpoints.official import CheckpointError
    from step1x_edit.demo.delta import ReferenceDeltaTransformer2DModel
    from step1x_edit.models.presets import build_transformer

    with pytest.raises(CheckpointError, match="official format holds velocity models only"):
        transformer_state_dict_to_official(build_transformer("tiny", ReferenceDeltaTransformer2DModel))
    save_file(tiny_official[1], tmp_path / "tiny.safetensors")
    with pytest.raises(CheckpointError, match="official-format files hold velocity models only"):
        load_official_transformer(tmp_path / "tiny.safetensors",
                                  config={"axes_dim": (8, 12, 12), "prediction_type": "reference_delta"})


# ------------------------------------------------------------------ official diffusers-format repositories
@pytest.fixture(scope="module")
def tiny_v1p2_repository(tmp_path_factory):
    from step1x_edit.testing.tiny import save_tiny_official_diffusers

    return save_tiny_official_diffusers(tmp_path_factory.mktemp("v1p2"), "v1.2", shards=2)


def _copy_repository(source, target):
    import shutil

    shutil.copytree(source, target)
    return target


@pytest.mark.parametrize(("version", "tensors", "parameters"),
                         [("v1.2", 1198, 12_442_484_544), ("v1.1-diffusers", 1196, 12_427_800_384)])
def test_full_size_official_repository_manifest_loads_on_meta_with_every_key_consumed(fixture_dir, version, tensors,
                                                                                      parameters):
    from step1x_edit.checkpoints.official_diffusers import empty_fork_transformer_for

    manifest = json.loads((fixture_dir / version / "keys" / "full_size_manifest.json").read_text())
    shapes = {name: tuple(shape) for name, shape, _ in manifest["tensors"]}
    model, rules = empty_fork_transformer_for(manifest["config"], shapes, version, "manifest")
    assert len(shapes) == tensors and {rule.official for rule in rules} == set(shapes)
    assert _count(model) == parameters
    assert model.config.version == version and model.config.hidden_size == 3072


def test_official_v1p2_repository_loads_as_released_without_conversion(tiny_v1p2_repository):
    from step1x_edit.pipeline import Step1XEditPipeline, load_pipeline

    assert len(list((tiny_v1p2_repository / "transformer").glob("*-of-00002.safetensors"))) == 2
    pipe = load_pipeline(tiny_v1p2_repository, device="cpu")
    assert pipe.version == "v1.2" and pipe.transformer.text_token_mapping is not None
    assert pipe.config.default_num_inference_steps == 28
    assert Step1XEditPipeline.from_pretrained(tiny_v1p2_repository).version == "v1.2"


def test_edit_command_runs_an_official_v1p2_repository(tiny_v1p2_repository, tmp_path):
    from PIL import Image

    from step1x_edit.cli import main

    Image.new("RGB", (72, 56), (20, 120, 200)).save(tmp_path / "in.png")
    code = main(["edit", str(tmp_path / "in.png"), 'write "HI" on it', "--model", str(tiny_v1p2_repository),
                 "--steps", "2", "--size-level", "64", "--device", "cpu", "--no-reflect", "-o", str(tmp_path / "out.png")])
    assert code == 0 and Image.open(tmp_path / "out.png").size == (72, 56)


def test_info_describes_an_official_repository_from_headers(tiny_v1p2_repository):
    from step1x_edit.checkpoints.inspect import describe_model

    description = describe_model(tiny_v1p2_repository)
    assert description["layout"] == "official diffusers" and description["version"] == "v1.2"
    assert description["components"]["transformer"]["parameters"] > 0


def test_convert_writes_this_projects_layout_from_an_official_repository(tiny_v1p2_repository, tmp_path):
    from step1x_edit.cli import main
    from step1x_edit.pipeline import load_pipeline

    assert main(["convert", str(tiny_v1p2_repository), str(tmp_path / "ours"), "--dtype", "fp32"]) == 0
    converted = load_pipeline(tmp_path / "ours", device="cpu")
    original = load_pipeline(tiny_v1p2_repository, device="cpu")
    assert converted.version == "v1.2"
    for name, tensor in original.transformer.state_dict().items():
        assert torch.equal(converted.transformer.state_dict()[name], tensor), name


def test_official_repository_with_a_missing_shard_is_refused(tiny_v1p2_repository, tmp_path):
    from step1x_edit.pipeline import load_pipeline

    repository = _copy_repository(tiny_v1p2_repository, tmp_path / "repo")
    next((repository / "transformer").glob("*-00002-of-00002.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="00002-of-00002"):
        load_pipeline(repository, device="cpu")


@pytest.mark.parametrize(("edit", "message"), [("rename", "unexpected 1 key"), ("reshape", "wrong shape")])
def test_official_repository_with_a_wrong_tensor_is_refused(tiny_v1p2_repository, tmp_path, edit, message):
    from step1x_edit.pipeline import load_pipeline

    repository = _copy_repository(tiny_v1p2_repository, tmp_path / "repo")
    index_file = repository / "transformer" / "diffusion_pytorch_model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = repository / "transformer" / index["weight_map"]["proj_out.bias"]
    tensors = load_file(shard)
    if edit == "rename":
        tensors["proj_out.bias_typo"] = tensors.pop("proj_out.bias")
        index["weight_map"]["proj_out.bias_typo"] = index["weight_map"].pop("proj_out.bias")
        index_file.write_text(json.dumps(index))
    else:
        tensors["proj_out.bias"] = torch.zeros(3)
    save_file(tensors, shard)
    with pytest.raises(CheckpointError, match=message):
        load_pipeline(repository, device="cpu")


def test_repository_of_an_unknown_version_is_refused_with_the_reason(tiny_v1p2_repository, tmp_path):
    from step1x_edit.pipeline import load_pipeline

    repository = _copy_repository(tiny_v1p2_repository, tmp_path / "repo")
    index = json.loads((repository / "model_index.json").read_text())
    (repository / "model_index.json").write_text(json.dumps({**index, "_class_name": "Step1XEditPipelineV2"}))
    with pytest.raises(CheckpointError, match="not a Step1X-Edit release.*refusing to guess"):
        load_pipeline(repository, device="cpu")


def test_official_repository_naming_another_transformer_class_is_refused(tiny_v1p2_repository, tmp_path):
    from step1x_edit.pipeline import load_pipeline

    repository = _copy_repository(tiny_v1p2_repository, tmp_path / "repo")
    index = json.loads((repository / "model_index.json").read_text())
    index["vae"] = ["mypackage", "EvilAutoencoder"]
    (repository / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="vae must be one of"):
        load_pipeline(repository, device="cpu")


def test_v1_1_single_file_can_run_as_the_diffusers_recipe_but_not_as_v1_2(tmp_path):
    model = build_transformer("tiny", version="v1.1")
    path = tmp_path / "step1x-edit-v1p1-official.safetensors"
    save_file(transformer_state_dict_to_official(model), path)
    config = {"axes_dim": list(model.config.axes_dim), "connector_num_heads": model.config.connector_num_heads}
    assert load_official_transformer(path, version="v1.1-diffusers", config=config).config.version == "v1.1-diffusers"
    with pytest.raises(CheckpointError, match="version mismatch"):
        load_official_transformer(path, version="v1.2", config=config)
