"""End-to-end editing with tiny components: the CLI, both checkpoint layouts, batching and bad input."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from step1x_edit import sampling
from step1x_edit.cli import main
from step1x_edit.errors import CheckpointError, InvalidImageError, InvalidPromptError
from step1x_edit.pipeline import DEMO_MODEL_DIR, Step1XEditPipeline, load_pipeline
from step1x_edit.testing.tiny import save_tiny_official, tiny_pipeline

FAST = dict(num_inference_steps=2, size_level=64)


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory):
    return save_tiny_official(tmp_path_factory.mktemp("official") / "v1.1", version="v1.1")


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
    pixels = np.random.default_rng(0).integers(0, 255, (50, 77, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _edit(args):
    return main(["edit", *map(str, args), "--steps", "2", "--size-level", "64"])


def test_cli_edit_keeps_input_size_and_same_seed_gives_same_image(tmp_path, photo, diffusers_dir):
    first, second, other = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    for out, seed in ((first, 1), (second, 1), (other, 2)):
        assert _edit([photo, "make it blue", "-o", out, "--model", diffusers_dir, "--seed", seed]) == 0
    a, b, c = (np.asarray(Image.open(path)) for path in (first, second, other))
    assert Image.open(first).size == (77, 50)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_cli_edit_without_model_uses_the_shipped_demo_model_and_says_so(tmp_path, photo, capsys):
    assert _edit([photo, "make it blue", "-o", tmp_path / "out.png"]) == 0
    assert "built-in demo model" in capsys.readouterr().err
    assert Image.open(tmp_path / "out.png").size == (77, 50)


def test_the_shipped_demo_model_loads_with_its_own_defaults():
    pipe = load_pipeline(None, device="cpu")
    assert pipe.transformer.dtype == torch.float32  # stored as float16, run as float32 on CPU
    assert pipe.config.default_size_level == 96 and pipe.config.max_sequence_length == 80
    assert (DEMO_MODEL_DIR / "MODEL_CARD.md").is_file()
    size = sum(path.stat().st_size for path in DEMO_MODEL_DIR.rglob("*") if path.is_file())
    assert size <= 25 * 2**20


def test_official_and_converted_diffusers_layouts_edit_identically(official_dir, diffusers_dir, photo):
    results = []
    for model in (official_dir, diffusers_dir):
        pipe = load_pipeline(model, device="cpu")
        assert pipe.version == "v1.1"
        image = pipe(image=photo, prompt="make it blue", generator=torch.Generator().manual_seed(0), **FAST).images[0]
        results.append(np.asarray(image))
    assert np.array_equal(results[0], results[1])


def test_cli_info_reports_version_and_parameter_counts(official_dir, diffusers_dir, capsys):
    assert main(["info", str(official_dir)]) == 0
    official = capsys.readouterr().out
    assert "official layout" in official and "v1.1" in official and "parameters" in official
    assert main(["info", str(diffusers_dir)]) == 0
    converted = capsys.readouterr().out
    assert "diffusers layout" in converted and "prediction_type velocity" in converted


def test_wrong_version_is_an_error_naming_the_cause(official_dir, photo, tmp_path, capsys):
    code = _edit([photo, "x", "-o", tmp_path / "o.png", "--model", official_dir, "--version", "v1.0"])
    assert code == 2
    assert "v1.1 file loaded as v1.0" in capsys.readouterr().err


def test_missing_and_partial_model_directories_are_reported(official_dir, tmp_path, photo, capsys):
    assert _edit([photo, "x", "--model", tmp_path / "absent"]) == 2
    assert "not found" in capsys.readouterr().err
    partial = tmp_path / "partial"
    partial.mkdir()
    for item in official_dir.iterdir():
        if item.name != "vae.safetensors":
            (partial / item.name).symlink_to(item)
    assert _edit([photo, "x", "--model", partial]) == 2
    assert "vae.safetensors" in capsys.readouterr().err


def test_pickle_checkpoint_is_refused(tmp_path):
    (tmp_path / "step1x-edit-i1258.ckpt").write_bytes(b"\x80\x04pickle")
    (tmp_path / "vae.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="pickle"):
        load_pipeline(tmp_path, device="cpu")


def test_empty_instruction_is_refused(pipe, photo, tmp_path, capsys):
    with pytest.raises(InvalidPromptError, match="empty"):
        pipe(image=photo, prompt="   ", **FAST)
    assert _edit([photo, "", "-o", tmp_path / "o.png"]) == 2
    assert "instruction is empty" in capsys.readouterr().err


def test_ten_thousand_character_instruction_is_truncated_with_a_warning(pipe, photo):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = pipe(image=photo, prompt="make the sky darker " * 500, **FAST).images[0]
    assert image.size == (77, 50)
    assert any("keeping the first 640" in str(item.message) for item in caught)


def test_image_smaller_than_one_patch_is_upscaled_and_returned_at_its_size(pipe):
    image = pipe(image=Image.new("RGB", (8, 6), (200, 10, 10)), prompt="make it green", **FAST).images[0]
    assert image.size == (8, 6)


def test_extreme_aspect_ratio_is_refused(pipe):
    with pytest.raises(InvalidImageError, match="aspect ratio"):
        pipe(image=Image.new("RGB", (1, 2000)), prompt="make it green", **FAST)


def test_unreadable_image_is_refused_by_the_cli(tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    assert _edit([bad, "make it blue"]) == 2
    assert "not an image" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("image", "instruction", "output", "message"),
    [
        ("missing.png", "make it blue", "out.png", "not found"),
        ("photo", "   ", "out.png", "instruction is empty"),
        ("photo", "make it blue", "out.xyz", "unknown image extension"),
        ("photo", "make it blue", "no_extension", "unknown image extension"),
        ("photo", "make it blue", "folder.png", "is a folder"),
    ],
)
def test_cli_refuses_bad_input_and_bad_output_paths_before_loading_the_model(
    tmp_path, photo, monkeypatch, capsys, image, instruction, output, message
):
    def load_pipeline(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("step1x_edit.pipeline.load_pipeline", load_pipeline)
    (tmp_path / "folder.png").mkdir()
    source = photo if image == "photo" else tmp_path / image
    assert _edit([source, instruction, "-o", tmp_path / output]) == 2
    assert message in capsys.readouterr().err


def test_cli_creates_missing_output_folders(tmp_path, photo):
    out = tmp_path / "new" / "deeper" / "edited.jpg"
    assert _edit([photo, "make it blue", "-o", out]) == 0
    assert Image.open(out).size == (77, 50)


def test_batch_matches_one_by_one_edits(pipe, photo):
    prompts = ["make it blue", "add a hat"]
    noise = torch.randn(2, 16, 6, 10, generator=torch.Generator().manual_seed(3))
    batch = pipe(image=photo, prompt=prompts, latents=noise, output_type="pt", **FAST).images
    for index, prompt in enumerate(prompts):
        single = pipe(image=photo, prompt=prompt, latents=noise[index : index + 1], output_type="pt", **FAST).images
        torch.testing.assert_close(batch[index : index + 1], single, atol=1e-4, rtol=1e-4)


def test_precomputed_embeddings_give_the_same_edit(pipe, photo):
    generator = torch.Generator().manual_seed(0)
    direct = pipe(image=photo, prompt="make it blue", generator=generator, output_type="pt", **FAST).images
    # The embeddings are computed from the working-size image, exactly as the pipeline does.
    working = sampling.resize_for_model(Image.open(photo).convert("RGB"), 64, pipe.version)
    embeds, mask = pipe.encode_prompt([working], ["make it blue"])
    negative, negative_mask = pipe.encode_prompt([working], [""])
    generator = torch.Generator().manual_seed(0)
    precomputed = pipe(
        image=photo, prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=negative,
        negative_prompt_attention_mask=negative_mask, generator=generator, output_type="pt", **FAST,
    ).images
    torch.testing.assert_close(direct, precomputed)


def test_guidance_scale_one_runs_one_model_call_per_step_without_negative(pipe, photo):
    batch_sizes = []
    original = pipe.transformer.forward

    def counting_forward(*args, **kwargs):
        batch_sizes.append(kwargs["hidden_states"].shape[0])
        return original(*args, **kwargs)

    pipe.transformer.forward = counting_forward
    try:
        pipe(image=photo, prompt="make it blue", guidance_scale=1.0, **FAST)
        pipe(image=photo, prompt="make it blue", guidance_scale=6.0, **FAST)
    finally:
        del pipe.transformer.forward
    assert batch_sizes == [1, 1, 2, 2]


def test_directory_with_both_releases_loads_the_requested_version(official_dir, tmp_path):
    both = save_tiny_official(tmp_path / "both", version="v1.0")
    (both / "step1x-edit-v1p1-official.safetensors").symlink_to(official_dir / "step1x-edit-v1p1-official.safetensors")
    assert load_pipeline(both, device="cpu").version == "v1.1"
    assert load_pipeline(both, device="cpu", version="v1.0").version == "v1.0"


def test_info_of_an_official_folder_shows_the_architecture(official_dir, capsys):
    assert main(["info", str(official_dir), "--json"]) == 0
    transformer = json.loads(capsys.readouterr().out)["components"]["transformer"]
    assert (transformer["hidden_size"], transformer["depth"], transformer["depth_single_blocks"]) == (64, 1, 1)


def test_malformed_transformer_config_file_is_reported(official_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in official_dir.iterdir():
        if item.name != "transformer_config.json":
            (broken / item.name).symlink_to(item)
    (broken / "transformer_config.json").write_text("{axes_dim: [8, 12, 12]")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_pipeline(broken, device="cpu")


def test_strength_runs_the_schedule_tail_from_the_noised_source(pipe, photo):
    seen = []
    call = dict(image=photo, prompt="make it blue", guidance_scale=1.0, num_inference_steps=8, size_level=64,
                output_type="latent", callback_on_step_end=lambda p, i, t, state: seen.append(t))
    full = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    schedule, seen[:] = list(seen), []
    assert len(schedule) == 8
    half = pipe(**call, strength=0.5, generator=torch.Generator().manual_seed(0)).images
    assert seen == schedule[4:]  # the last round(8 * 0.5) steps
    assert not torch.allclose(full, half)
    # strength 1 is the official behaviour: pure noise, the whole schedule
    seen[:] = []
    same = pipe(**call, strength=1.0, generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(same, full)
    assert len(seen) == 8


def test_low_strength_runs_the_tail_of_the_schedule(pipe):
    whole = pipe.set_timesteps(10, 64).tolist()
    assert len(whole) == 10 and pipe.scheduler.begin_index == 0
    assert pipe.set_timesteps(10, 64, strength=0.3).tolist() == whole[7:]
    assert pipe.scheduler.begin_index == 7  # the scheduler's first step is the tail's
    for bad in (0.0, -0.2, 1.5):
        with pytest.raises(ValueError, match="strength"):
            pipe.set_timesteps(10, 64, strength=bad)
    with pytest.raises(ValueError, match="keeps no step"):
        pipe.set_timesteps(10, 64, strength=0.01)


def test_bad_strength_is_refused_before_any_work(pipe, photo, tmp_path, capsys):
    with pytest.raises(ValueError, match="strength"):
        pipe(image=photo, prompt="make it blue", strength=0.01, **FAST)
    with pytest.raises(ValueError, match="strength"):
        pipe(image=photo, prompt="make it blue", strength=2.0, **FAST)
    with pytest.raises(SystemExit) as refused:  # argparse's own refusal: usage and one error line, exit 2
        _edit([photo, "make it blue", "--strength", "0", "-o", tmp_path / "x.png"])
    assert refused.value.code == 2
    assert "argument --strength: must be a finite number in (0.0, 1.0], got 0.0" in capsys.readouterr().err


def _saved_with_defaults(pipe, directory, **defaults):
    """``pipe`` saved in ``directory`` with ``defaults`` written into its model_index.json, loaded back."""
    pipe.save_pretrained(directory)
    config_path = directory / "model_index.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **defaults}))
    return load_pipeline(directory, device="cpu")


def _steps_run(pipe, photo, **call) -> int:
    seen = []
    pipe(image=photo, prompt="make it blue", guidance_scale=1.0, size_level=64,
         callback_on_step_end=lambda p, i, t, state: seen.append(t), **call)
    return len(seen)


def test_a_saved_default_step_count_is_used_when_the_call_gives_none(pipe, photo, tmp_path):
    loaded = _saved_with_defaults(pipe, tmp_path / "model", default_num_inference_steps=3)
    assert loaded.config.default_num_inference_steps == 3
    assert _steps_run(loaded, photo) == 3
    assert _steps_run(loaded, photo, num_inference_steps=2) == 2
    with pytest.raises(ValueError, match="default_num_inference_steps"):
        Step1XEditPipeline(loaded.transformer, loaded.vae, loaded.text_encoder, loaded.processor, loaded.scheduler,
                           default_num_inference_steps=0)


def test_a_saved_default_strength_is_used_when_the_call_gives_none(pipe, photo, tmp_path):
    loaded = _saved_with_defaults(pipe, tmp_path / "model", default_strength=0.5)
    assert loaded.config.default_strength == 0.5
    assert _steps_run(loaded, photo, num_inference_steps=6) == 3
