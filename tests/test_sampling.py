"""The sampler functions follow the official rules: resize, schedule, packing, position ids, CFG, Euler."""

import math

import pytest
import torch
from PIL import Image

from step1x_edit.sampling import (
    denoise,
    get_schedule,
    guided_velocity,
    pack_latents,
    position_ids,
    resize_dimensions,
    resize_for_model,
    unpack_latents,
)
from step1x_edit.versions import get_version


@pytest.mark.parametrize(
    ("size", "level", "expected"),
    [((800, 600), 512, (592, 432)), ((800, 600), 1024, (1168, 880)), ((1920, 1080), 512, (672, 384)),
     ((1920, 1080), 1024, (1360, 768)), ((500, 500), 768, (768, 768)), ((64, 2000), 512, (80, 2848))],
)
def test_resize_fits_the_area_then_floors_to_multiples_of_16(size, level, expected):
    assert resize_dimensions(*size, level) == expected


def test_resize_filter_depends_on_the_version():
    image = Image.linear_gradient("L").convert("RGB").resize((300, 200))
    v10, v11 = resize_for_model(image, 256, "v1.0"), resize_for_model(image, 256, "v1.1")
    assert v10.size == v11.size == resize_dimensions(300, 200, 256)
    assert v10.tobytes() == image.resize(v10.size, Image.Resampling.BICUBIC).tobytes()
    assert v11.tobytes() == image.resize(v11.size, Image.Resampling.LANCZOS).tobytes()


def test_schedule_runs_from_one_to_zero_shifted_by_sequence_length():
    long, short = get_schedule(28, 4096), get_schedule(28, 1024)
    assert len(long) == 29 and long[0] == 1.0 and long[-1] == 0.0
    assert all(a > b for a, b in zip(long[:-1], long[1:], strict=True))
    assert long[1] == pytest.approx(0.98841, abs=1e-5) and long[-2] == pytest.approx(0.10472, abs=1e-5)
    assert short[1] == pytest.approx(0.98066, abs=1e-5)
    mu = 1.15
    t = 0.5
    assert get_schedule(2, 4096)[1] == pytest.approx(math.exp(mu) / (math.exp(mu) + (1 / t - 1)), rel=1e-6)


def test_pack_puts_channel_then_subpixel_in_the_feature_index_and_unpack_inverts_it():
    latents = torch.randn(2, 16, 6, 8)
    tokens = pack_latents(latents)
    assert tokens.shape == (2, 12, 64)
    c, row, col, ph, pw = 5, 1, 2, 1, 0
    assert tokens[1, row * 4 + col, c * 4 + ph * 2 + pw] == latents[1, c, 2 * row + ph, 2 * col + pw]
    assert torch.equal(unpack_latents(tokens, 6, 8), latents)
    with pytest.raises(ValueError, match="even"):
        pack_latents(torch.zeros(1, 16, 5, 8))
    with pytest.raises(ValueError, match="cannot unpack"):
        unpack_latents(tokens, 8, 8)


def test_reference_position_ids_depend_on_the_version():
    img10, txt = position_ids(4, 6, 7, "v1.0")
    img11, _ = position_ids(4, 6, 7, "v1.1")
    img12, _ = position_ids(4, 6, 7, "v1.2")
    assert img10.shape == (12, 3) and txt.shape == (7, 3) and not txt.any()
    noisy = img10[:6]
    assert noisy[4].tolist() == [0.0, 1.0, 1.0]  # packed row 1, col 1 of a 2x3 grid
    assert torch.equal(img10[6:], noisy)
    assert torch.equal(img11[:6], noisy) and torch.equal(img11[6:], noisy + 1)
    assert torch.equal(img12[:6], noisy) and torch.equal(img12[6:, 1:], noisy[:, 1:]) and (img12[6:, 0] == 1).all()
    with pytest.raises(ValueError, match="version"):
        position_ids(4, 6, 7, "v2")


def test_cfg_renorm_divides_large_differences_only_above_the_threshold():
    uncond = torch.zeros(1, 2, 4)
    cond = torch.tensor([[[3.0, 4.0, 0.0, 0.0], [0.3, 0.4, 0.0, 0.0]]])  # norms 5 and 0.5
    plain = guided_velocity(cond, uncond, 2.0, t=0.9, renorm_threshold=0.93)
    assert torch.allclose(plain, 2 * cond)
    renormed = guided_velocity(cond, uncond, 2.0, t=0.95, renorm_threshold=0.93)
    assert torch.allclose(renormed[0, 0], 2 * cond[0, 0] / 5**0.4)
    assert torch.allclose(renormed[0, 1], 2 * cond[0, 1])
    v10 = get_version("v1.0").renorm_threshold
    assert (v10, get_version("v1.1").renorm_threshold) == (1.0, 0.93)
    assert torch.equal(guided_velocity(cond, uncond, 2.0, t=1.0, renorm_threshold=v10), plain)


def test_denoise_updates_noisy_tokens_only_with_cond_then_uncond_batches():
    noisy, reference = torch.randn(1, 3, 64), torch.randn(1, 3, 64)
    seen = []

    def model_fn(tokens, t):
        seen.append((tokens.clone(), t.clone()))
        assert torch.equal(tokens[:, 3:], reference.expand(2, -1, -1))  # reference tokens never change
        velocity = torch.ones_like(tokens)
        velocity[1] = 0  # the unconditional row
        return velocity

    steps = []
    out = denoise(model_fn, noisy, reference, [1.0, 0.5, 0.0], 3.0, 1.0,
                  callback=lambda i, t, x: steps.append((i, t)))
    assert torch.allclose(out, noisy - 3.0)  # v = 0 + 3 * (1 - 0) for the whole unit of time
    assert [t.tolist() for _, t in seen] == [[1.0, 1.0], [0.5, 0.5]]
    assert steps == [(0, 1.0), (1, 0.5)]


def test_denoise_without_guidance_runs_one_batch():
    noisy = torch.zeros(2, 4, 64)
    out = denoise(lambda tokens, t: torch.full_like(tokens, 2.0) * (tokens.shape[0] == 2), noisy, noisy.clone(),
                  [1.0, 0.25, 0.0], 1.0, 0.93)
    assert torch.allclose(out, torch.full_like(noisy, -2.0))
