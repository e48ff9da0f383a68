"""The pipeline behaves as diffusers users expect: its scheduler drives the loop, step callbacks can replace the
latents, settings are checked before any work, hooks are freed however a call ends, the MLLM's attention is
chosen at load time, and a server fills in defaults from the pipeline."""

import importlib.util

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from diffusers.callbacks import PipelineCallback
from PIL import Image

from step1x_edit import sampling
from step1x_edit.errors import InvalidValueError
from step1x_edit.models.vae import encode_latents, images_to_pixels
from step1x_edit.pipeline import Step1XEditPipeline, load_pipeline
from step1x_edit.reasoning import PLAIN, ReasoningOptions
from step1x_edit.serve.service import EditCancelledError, EditService
from step1x_edit.testing.tiny import save_tiny_official, save_tiny_official_diffusers, tiny_pipeline

FAST = dict(prompt="make it blue", num_inference_steps=3, size_level=64, reasoning=PLAIN)


@pytest.fixture(scope="module")
def pipes():
    """A pipeline of each recipe: the official one (v1.1) and the official diffusers one (v1.2)."""
    return {"v1.1": tiny_pipeline(), "v1.2": tiny_pipeline(version="v1.2")}


@pytest.fixture()
def photo():
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 77, 3), dtype=np.uint8))


def _latents(pipe, photo, **call):
    return pipe(image=photo, output_type="latent", generator=torch.Generator().manual_seed(0),
                **{**FAST, **call}).images


@pytest.fixture()
def swap_scheduler():
    """Put a scheduler in a pipeline for one test and the original back afterwards."""
    swapped = []

    def swap(pipe, scheduler):
        swapped.append((pipe, pipe.scheduler))
        pipe.scheduler = scheduler

    yield swap
    for pipe, original in reversed(swapped):
        pipe.scheduler = original


# ---------------------------------------------------------------- the scheduler drives the loop
def test_the_default_scheduler_runs_the_official_schedule_bit_for_bit(pipes):
    official, diffusers_recipe = pipes["v1.1"], pipes["v1.2"]
    for steps in (1, 2, 7, 28, 50):
        for tokens in (1, 36, 256, 1024, 4096, 9000):
            official.set_timesteps(steps, tokens)
            assert official.scheduler.sigmas.tolist() == sampling.get_schedule(steps, tokens)
            diffusers_recipe.set_timesteps(steps, tokens)
            assert diffusers_recipe.scheduler.sigmas.tolist() == sampling.scheduler_sigmas(
                diffusers_recipe.scheduler.config, steps, tokens)


def test_the_default_scheduler_reproduces_the_official_loop_bit_for_bit(pipes, photo):
    pipe = pipes["v1.1"]
    working = sampling.resize_for_model(photo, 64, pipe.version)
    embeds, mask = pipe.encode_prompt([working], ["make it blue"])
    reference = encode_latents(pipe.vae, images_to_pixels([working]))
    noise = torch.randn(reference.shape, generator=torch.Generator().manual_seed(1))
    img_ids, txt_ids = sampling.position_ids(*reference.shape[-2:], embeds.shape[1], pipe.version)

    def model_fn(tokens, t):
        return pipe.transformer(hidden_states=tokens, timestep=t, encoder_hidden_states=embeds,
                                encoder_attention_mask=mask, img_ids=img_ids, txt_ids=txt_ids)

    noisy, fixed = sampling.pack_latents(noise), sampling.pack_latents(reference)
    with torch.no_grad():
        expected = sampling.denoise(model_fn, noisy, fixed, sampling.get_schedule(3, noisy.shape[1]), 1.0, 0.93)
    edited = pipe(image=photo, latents=noise, guidance_scale=1.0, output_type="latent", **FAST).images
    assert torch.equal(edited, sampling.unpack_latents(expected, *reference.shape[-2:]))


@pytest.mark.parametrize("version", ["v1.1", "v1.2"])
def test_swapping_the_scheduler_changes_the_edit(pipes, photo, swap_scheduler, version):
    pipe = pipes[version]
    default = _latents(pipe, photo)
    config = pipe.scheduler.config
    swap_scheduler(pipe, FlowMatchEulerDiscreteScheduler.from_config(config, time_shift_type="linear"))
    assert not torch.allclose(_latents(pipe, photo), default)  # another schedule

    class CountingScheduler(FlowMatchEulerDiscreteScheduler):
        steps = 0

        def step(self, *args, **kwargs):
            CountingScheduler.steps += 1
            return super().step(*args, **kwargs)

    swap_scheduler(pipe, CountingScheduler.from_config(config))
    torch.testing.assert_close(_latents(pipe, photo), default, rtol=0, atol=0)  # the default, by another name
    assert CountingScheduler.steps == 3  # every update is the scheduler's
    swap_scheduler(pipe, FlowMatchEulerDiscreteScheduler.from_config(config, stochastic_sampling=True))
    assert not torch.allclose(_latents(pipe, photo), default)  # another update rule


def _model_calls(pipe) -> tuple[list, list]:
    """A list that records every forward of the pipeline's models, and the hook handles to remove."""
    calls = []
    handles = [model.register_forward_pre_hook(lambda *args: calls.append(args))
               for model in (pipe.text_encoder, pipe.transformer, pipe.vae)]
    return calls, handles


def test_a_scheduler_that_takes_no_sigmas_is_refused_before_any_work(pipes, photo, swap_scheduler):
    pipe = pipes["v1.1"]
    swap_scheduler(pipe, FlowMatchHeunDiscreteScheduler())
    calls, handles = _model_calls(pipe)
    try:
        with pytest.raises(InvalidValueError, match="FlowMatchHeunDiscreteScheduler cannot drive this pipeline"):
            pipe(image=photo, **FAST)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == []


# ---------------------------------------------------------------- step callbacks
@pytest.mark.parametrize("version", ["v1.1", "v1.2"])
def test_a_step_callback_can_replace_the_latents(pipes, photo, version):
    pipe = pipes[version]
    seen = []

    def replace_at_the_last_step(pipeline, step_index, timestep, callback_kwargs):
        seen.append((step_index, float(timestep)))
        if step_index == 2:
            return {"latents": torch.full_like(callback_kwargs["latents"], 0.25)}
        return callback_kwargs

    replaced = _latents(pipe, photo, callback_on_step_end=replace_at_the_last_step)
    assert torch.equal(replaced, torch.full_like(replaced, 0.25))
    assert [index for index, _ in seen] == [0, 1, 2]
    assert [t for _, t in seen] == pipe.scheduler.timesteps.tolist()  # the scheduler's timesteps, as in diffusers

    def zero_after_the_first_step(pipeline, step_index, timestep, callback_kwargs):
        return {"latents": torch.zeros_like(callback_kwargs["latents"])} if step_index == 0 else {}

    assert not torch.allclose(_latents(pipe, photo, callback_on_step_end=zero_after_the_first_step), _latents(pipe, photo))


def test_a_step_callback_replaces_the_latents_of_a_reasoning_edit_too(pipes, photo):
    indices = []

    def zero_at_the_last_step(pipeline, step_index, timestep, callback_kwargs):
        indices.append(callback_kwargs["image_index"])
        return {"latents": torch.zeros_like(callback_kwargs["latents"])} if step_index == 2 else None

    call = dict(image=[photo, photo], prompt=["make it blue", "make it red"], num_inference_steps=3, size_level=64,
                output_type="np", generator=torch.Generator().manual_seed(0))
    thinking = ReasoningOptions(think=True, reflect=False, max_new_tokens=4)
    zeroed = pipes["v1.2"](**call, reasoning=thinking, callback_on_step_end=zero_at_the_last_step).images
    assert indices == [0, 0, 0, 1, 1, 1]
    # whatever the rewritten instruction, the final latents are the callback's: the plain edit's zeroed ones
    call["generator"] = torch.Generator().manual_seed(0)
    assert np.array_equal(zeroed, pipes["v1.2"](**call, reasoning=PLAIN, callback_on_step_end=zero_at_the_last_step).images)
    call["generator"] = torch.Generator().manual_seed(0)
    assert not np.array_equal(zeroed, pipes["v1.2"](**call, reasoning=thinking).images)


def test_a_callback_that_hands_the_tensors_back_changes_nothing(pipes, photo):
    pipe = pipes["v1.1"]
    unchanged = _latents(pipe, photo, callback_on_step_end=lambda pipeline, i, t, kwargs: kwargs)
    assert torch.equal(unchanged, _latents(pipe, photo))


def test_a_diffusers_pipeline_callback_object_is_honoured(pipes, photo):
    class ZeroFromTheLastStep(PipelineCallback):
        tensor_inputs = ["latents"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            if step_index >= self.config.cutoff_step_index:
                callback_kwargs["latents"] = torch.zeros_like(callback_kwargs["latents"])
            return callback_kwargs

    edited = _latents(pipes["v1.1"], photo, callback_on_step_end=ZeroFromTheLastStep(cutoff_step_ratio=None,
                                                                                     cutoff_step_index=2))
    assert torch.equal(edited, torch.zeros_like(edited))


def test_bad_callbacks_are_refused(pipes, photo):
    pipe = pipes["v1.1"]
    with pytest.raises(InvalidValueError, match="callback_on_step_end_tensor_inputs must be a list drawn from"):
        pipe(image=photo, callback_on_step_end=lambda *args: {}, callback_on_step_end_tensor_inputs=["prompt_embeds"],
             **FAST)
    with pytest.raises(InvalidValueError, match="must return a dict .* or None, got list"):
        pipe(image=photo, callback_on_step_end=lambda *args: [], **FAST)
    with pytest.raises(ValueError, match="returned latents of shape"):
        pipe(image=photo, callback_on_step_end=lambda *args: {"latents": torch.zeros(1, 2, 3)}, **FAST)


# ---------------------------------------------------------------- checks before work, hooks after it
def test_an_unknown_output_type_is_refused_before_any_work(pipes, photo):
    pipe = pipes["v1.1"]
    calls, handles = _model_calls(pipe)
    try:
        with pytest.raises(InvalidValueError, match="output_type must be one of 'pil', 'np', 'pt', 'latent', got 'PIL'"):
            pipe(image=photo, output_type="PIL", **FAST)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == []


@pytest.mark.parametrize("version", ["v1.1", "v1.2"])
def test_model_hooks_are_freed_however_a_call_ends(pipes, photo, monkeypatch, version):
    pipe = pipes[version]
    freed = []
    monkeypatch.setattr(pipe, "maybe_free_model_hooks", lambda: freed.append(True))
    _latents(pipe, photo)
    assert len(freed) == 1

    def fail(*args):
        raise RuntimeError("the callback failed")

    with pytest.raises(RuntimeError, match="the callback failed"):
        _latents(pipe, photo, callback_on_step_end=fail)
    assert len(freed) == 2
    with pytest.raises(EditCancelledError):
        EditService(pipe).edit(photo, "make it blue", num_inference_steps=3, size_level=64, reflect=False,
                               cancelled=iter([False, True]).__next__)
    assert len(freed) == 3


# ---------------------------------------------------------------- the MLLM's attention
def _attention(pipe) -> set[str]:
    config = pipe.text_encoder.config
    return {config._attn_implementation, config.text_config._attn_implementation,
            config.vision_config._attn_implementation}


def test_attn_implementation_reaches_the_mllm_in_every_layout(tmp_path):
    official = save_tiny_official(tmp_path / "official")
    converted = tmp_path / "converted"
    tiny_pipeline().save_pretrained(converted)
    released_diffusers = save_tiny_official_diffusers(tmp_path / "v1.2")
    for folder in (official, converted, released_diffusers):
        assert _attention(load_pipeline(folder, device="cpu")) == {"sdpa"}
        assert _attention(load_pipeline(folder, device="cpu", attn_implementation="eager")) == {"eager"}
    assert _attention(Step1XEditPipeline.from_pretrained(converted, attn_implementation="eager")) == {"eager"}
    assert _attention(Step1XEditPipeline.from_official(official, device="cpu", attn_implementation="eager")) == {
        "eager"}


def test_an_unknown_attn_implementation_is_refused_before_loading(tmp_path):
    for load in (lambda: load_pipeline(tmp_path / "absent", attn_implementation="flash"),
                 lambda: Step1XEditPipeline.from_official(tmp_path / "absent", attn_implementation="flash"),
                 lambda: Step1XEditPipeline.from_pretrained(tmp_path / "absent", attn_implementation="flash")):
        with pytest.raises(InvalidValueError) as refused:
            load()
        assert str(refused.value) == ("attn_implementation must be one of sdpa, eager, flash_attention_2, "
                                      "flash_attention_3, flex_attention, got 'flash'")


def test_an_attn_implementation_this_machine_lacks_is_a_one_line_error(tmp_path):
    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    with pytest.raises(InvalidValueError, match="attn_implementation 'flash_attention_2' cannot be used here: ") as refused:
        load_pipeline(save_tiny_official(tmp_path / "official"), device="cpu", attn_implementation="flash_attention_2")
    assert "\n" not in str(refused.value)


# ---------------------------------------------------------------- defaults in one place
def test_the_service_fills_in_a_request_from_the_pipelines_defaults(photo):
    pipe = tiny_pipeline()
    pipe.register_to_config(default_num_inference_steps=3, default_guidance_scale=2.5, default_size_level=48,
                            default_strength=0.5)
    expected = {"num_inference_steps": 3, "guidance_scale": 2.5, "size_level": 48, "strength": 0.5}
    assert pipe.resolve_settings() == expected
    assert pipe.resolve_settings(guidance_scale=1.0, size_level=64) == {**expected, "guidance_scale": 1.0,
                                                                        "size_level": 64}
    service = EditService(pipe)
    assert service.defaults == expected
    request = service.check_request("make it blue", None, None, None, None, 0, "", 1)
    assert {key: request[key] for key in expected} == expected
    request = service.check_request("make it blue", 4, None, 32, None, 0, "", 1)
    assert {key: request[key] for key in expected} == {**expected, "num_inference_steps": 4, "size_level": 32}
