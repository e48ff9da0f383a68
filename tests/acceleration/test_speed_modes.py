"""Speed modes on CPU: regional compilation compiles once per working size (never between steps or images),
attention backends match the default, step caching skips blocks, is reset between edits and stays off by default,
and an unknown or unavailable backend is refused with one clear line."""

import pytest
import torch
from PIL import Image

from step1x_edit.acceleration import speed
from step1x_edit.acceleration.options import Acceleration, apply_acceleration
from step1x_edit.errors import UnsupportedModeError
from step1x_edit.testing.compare import relative_error
from step1x_edit.testing.tiny import tiny_pipeline

LOSSLESS = 1e-5
IMAGE = Image.new("RGB", (64, 48), (120, 30, 200))


def _edit(pipe, seed=0, image=IMAGE, steps=4):
    generator = torch.Generator().manual_seed(seed)
    return pipe(image, "make it red", num_inference_steps=steps, size_level=64, generator=generator,
                output_type="latent").images


@pytest.fixture()
def fresh_dynamo():
    torch._dynamo.reset()
    yield torch._dynamo.utils.counters
    torch._dynamo.reset()


def test_regional_compilation_compiles_once_per_size_not_per_step_or_image(fresh_dynamo):
    reference = _edit(tiny_pipeline())
    pipe = tiny_pipeline()
    speed.compile_transformer(pipe.transformer, backend="eager")  # dynamo's capture, without inductor's build time
    first = _edit(pipe, steps=4)
    graphs = fresh_dynamo["stats"]["unique_graphs"]
    assert graphs >= 2  # a double and a single block
    _edit(pipe, seed=1, steps=6)  # more steps, another seed: the same size
    _edit(pipe, seed=2, image=IMAGE.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert fresh_dynamo["stats"]["unique_graphs"] == graphs  # nothing recompiled
    assert relative_error(first, reference) <= LOSSLESS


@pytest.mark.slow
def test_compiled_blocks_with_inductor_match_eager(fresh_dynamo):
    reference = _edit(tiny_pipeline())
    pipe = tiny_pipeline()
    apply_acceleration(pipe, Acceleration(compile=True), "cpu")
    assert relative_error(_edit(pipe), reference) <= 1e-4  # inductor fuses and reorders float32 sums


def test_the_math_attention_backend_matches_the_default():
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    active = _AttentionBackendRegistry.get_active_backend()[0]
    try:
        reference = _edit(tiny_pipeline())
        pipe = tiny_pipeline()
        notes = apply_acceleration(pipe, Acceleration(attention_backend="_native_math"), "cpu")
        assert "DiT attention backend: _native_math" in notes
        assert relative_error(_edit(pipe), reference) <= LOSSLESS
    finally:
        _AttentionBackendRegistry.set_active_backend(active)


@pytest.mark.parametrize("name, message", [
    ("fastest", "unknown attention backend 'fastest'; diffusers knows: "),
    ("flash", "attention backend flash cannot run here"),
])
def test_an_unknown_or_unavailable_attention_backend_is_refused(name, message):
    pipe = tiny_pipeline()
    with pytest.raises(UnsupportedModeError, match=message) as error:
        speed.set_attention_backend(pipe.transformer, name)
    assert "\n" not in str(error.value)


def _count_single_block_calls(pipe):
    calls = {"n": 0}

    def count(*_):
        calls["n"] += 1

    for block in pipe.transformer.single_transformer_blocks:  # its layers: a cache hook replaces the block's forward
        block.proj_mlp.register_forward_pre_hook(count)
    return calls


def test_first_block_cache_skips_the_other_blocks_when_the_first_changes_little():
    plain = tiny_pipeline()
    plain_calls = _count_single_block_calls(plain)
    reference = _edit(plain, steps=8)
    cached = tiny_pipeline()
    notes = apply_acceleration(cached, Acceleration(cache="first-block", cache_threshold=0.5), "cpu")
    assert "step caching: first-block" in notes
    cached_calls = _count_single_block_calls(cached)
    first = _edit(cached, steps=8)
    assert cached_calls["n"] < plain_calls["n"]  # steps were served from the cache
    assert 0 < relative_error(first, reference) < 0.5  # lossy, but an edit of the same image
    cached_calls["n"] = 0
    assert torch.equal(_edit(cached, steps=8), first)  # each edit starts with an empty cache


def test_taylorseer_runs_and_caching_is_off_by_default():
    pipe = tiny_pipeline()
    assert not pipe.transformer.is_cache_enabled
    reference = _edit(pipe, steps=8)
    apply_acceleration(pipe, Acceleration(cache="taylorseer"), "cpu")
    assert pipe.transformer.is_cache_enabled
    result = _edit(pipe, steps=8)
    assert result.shape == reference.shape and torch.isfinite(result).all()
    assert torch.equal(_edit(pipe, steps=8), result)


def test_caching_applies_to_the_two_call_recipe_of_the_diffusers_format_models():
    pipe = tiny_pipeline(version="v1.1-diffusers")
    reference = _edit(pipe, steps=6)
    apply_acceleration(pipe, Acceleration(cache="first-block", cache_threshold=0.5), "cpu")
    result = _edit(pipe, steps=6)
    assert torch.isfinite(result).all() and relative_error(result, reference) < 0.5
