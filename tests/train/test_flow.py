"""The training objective: flow times, the velocity target on noisy tokens only, condition dropout."""

import math

import pytest
import torch

from step1x_edit import sampling
from step1x_edit.testing.fakes import TargetPredictor
from step1x_edit.train.flow import (
    FlowTimeSampling,
    drop_conditions,
    flow_matching_loss,
    sample_flow_times,
    schedule_mu,
    source_start_times,
)


def test_official_shift_sampling_maps_the_median_through_the_shift():
    t = sample_flow_times(200_000, 64, FlowTimeSampling("shift"), torch.Generator().manual_seed(0))
    shift = 3.1582
    assert 0 < t.min() and t.max() < 1
    assert float(t.median()) == pytest.approx(shift * 0.5 / (1 + (shift - 1) * 0.5), abs=0.01)


def test_logit_normal_sampling_uses_the_inference_schedule_shift_for_the_resolution():
    config = FlowTimeSampling("logit_normal")
    for tokens in (64, 1024, 4096):
        t = sample_flow_times(200_000, tokens, config, torch.Generator().manual_seed(0))
        shift = math.exp(schedule_mu(tokens, config))
        # the median of sigmoid(N(0, 1)) is 0.5, which the shift maps to shift / (shift + 1)
        assert float(t.median()) == pytest.approx(shift / (shift + 1), abs=0.01)
        # the same mapping as the sampler's schedule at that sequence length
        schedule = sampling.get_schedule(4, tokens)
        assert schedule[2] == pytest.approx(shift / (shift + 1), abs=1e-5)


def test_uniform_sampling_covers_the_unit_interval():
    t = sample_flow_times(100_000, 64, FlowTimeSampling("uniform"), torch.Generator().manual_seed(0))
    assert float(t.mean()) == pytest.approx(0.5, abs=0.01) and float(t.min()) < 0.01 and float(t.max()) > 0.99


@pytest.mark.parametrize("scheme", ["shift", "logit_normal", "uniform"])
def test_pure_noise_rate_puts_that_share_of_samples_at_exactly_one(scheme):
    generator = torch.Generator().manual_seed(0)
    t = sample_flow_times(100_000, 64, FlowTimeSampling(scheme, pure_noise_rate=0.3), generator)
    at_one = t == 1
    assert float(at_one.float().mean()) == pytest.approx(0.3, abs=0.01)
    rest = t[~at_one]  # the others keep the scheme's distribution
    plain = sample_flow_times(100_000, 64, FlowTimeSampling(scheme), torch.Generator().manual_seed(0))
    assert float(rest.median()) == pytest.approx(float(plain.median()), abs=0.01)
    assert float(rest.max()) < 1


def test_without_pure_noise_the_drawn_times_are_unchanged_by_the_option():
    default = sample_flow_times(64, 64, FlowTimeSampling("shift"), torch.Generator().manual_seed(3))
    zero = sample_flow_times(64, 64, FlowTimeSampling("shift", pure_noise_rate=0.0), torch.Generator().manual_seed(3))
    assert torch.equal(default, zero)
    with pytest.raises(ValueError, match="pure_noise_rate"):
        FlowTimeSampling("shift", pure_noise_rate=1.5)


def test_unknown_sampling_scheme_is_an_error():
    with pytest.raises(ValueError, match="timestep sampling"):
        FlowTimeSampling("cosine")


class _Oracle(torch.nn.Module):
    """Predicts ``noise - x0`` exactly for the noisy tokens given the truth, and garbage for the reference tokens."""

    def __init__(self, x0, eps):
        super().__init__()
        self.truth = sampling.pack_latents(eps) - sampling.pack_latents(x0)
        self.seen = {}

    def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, img_ids, txt_ids):
        self.seen = {"tokens": hidden_states, "t": timestep, "img_ids": img_ids}
        count = self.truth.shape[1]
        return torch.cat([self.truth, torch.full_like(hidden_states[:, count:], 1e3)], dim=1)


@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_the_loss_is_the_velocity_error_on_noisy_tokens_with_clean_reference_tokens(version):
    generator = torch.Generator().manual_seed(0)
    x0, reference, eps = (torch.randn(2, 16, 4, 6, generator=generator) for _ in range(3))
    t = torch.tensor([0.25, 0.75])
    oracle = _Oracle(x0, eps)
    embeds, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.long)
    loss = flow_matching_loss(oracle, x0, reference, embeds, mask, t, eps, version)
    assert float(loss) == 0.0  # the reference half of the output is ignored
    tokens = oracle.seen["tokens"]
    count = tokens.shape[1] // 2
    expected_noisy = (1 - t[:, None, None]) * sampling.pack_latents(x0) + t[:, None, None] * sampling.pack_latents(eps)
    assert torch.allclose(tokens[:, :count], expected_noisy)
    assert torch.equal(tokens[:, count:], sampling.pack_latents(reference))  # clean, unchanged
    assert torch.equal(oracle.seen["img_ids"], sampling.position_ids(4, 6, 5, version)[0])

    wrong = flow_matching_loss(_Oracle(x0, torch.zeros_like(eps)), x0, reference, embeds, mask, t, eps, version)
    assert float(wrong) == pytest.approx(float((sampling.pack_latents(eps) ** 2).mean()), rel=1e-6)


def test_source_start_paths_begin_at_the_pipelines_strength_start_and_point_at_the_target():
    generator = torch.Generator().manual_seed(0)
    x0, source, eps = (torch.randn(3, 16, 4, 4, generator=generator) for _ in range(3))
    embeds, mask = torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.long)
    start = torch.tensor([0.4, 0.7, 1.0])
    oracle = TargetPredictor(x0)
    # at t = t0 the noisy tokens are the sampler's image-to-image start t0 * noise + (1 - t0) * source
    loss = flow_matching_loss(oracle, x0, torch.zeros_like(source), embeds, mask, start, eps, "v1.1", start, source)
    expected = start[:, None, None] * sampling.pack_latents(eps) + (1 - start[:, None, None]) * sampling.pack_latents(
        source)
    expected[2] = sampling.pack_latents(eps)[2]  # t0 = 1: pure noise, the plain path
    assert torch.allclose(oracle.seen["tokens"], expected, atol=1e-6)
    assert float(loss) < 1e-10  # the velocity target is (x_t - x0) / t all along the path
    # inside the path too, and t0 = 1 is exactly the plain objective
    t = start * torch.tensor([0.3, 0.8, 0.55])
    assert float(flow_matching_loss(oracle, x0, source, embeds, mask, t, eps, "v1.0", start)) < 1e-10
    wrong = _Oracle(x0, torch.zeros_like(eps))
    plain = flow_matching_loss(wrong, x0, source, embeds, mask, t, eps, "v1.0")
    with_start = flow_matching_loss(wrong, x0, source, embeds, mask, t, eps, "v1.0", torch.ones(3))
    assert float(plain) == pytest.approx(float(with_start), rel=1e-6)


def test_sampling_from_the_strength_start_with_the_trained_velocity_lands_on_the_target():
    generator = torch.Generator().manual_seed(1)
    x0, source, eps = (torch.randn(1, 16, 4, 4, generator=generator) for _ in range(3))
    schedule = sampling.get_schedule(28, 4)
    timesteps = schedule[28 - sampling.strength_steps(28, 0.5):]  # the tail an edit of strength 0.5 runs
    t0 = timesteps[0]
    start = t0 * sampling.pack_latents(eps) + (1 - t0) * sampling.pack_latents(source)
    oracle = TargetPredictor(x0)
    landed = sampling.denoise(lambda tokens, t: oracle(tokens, t), start, sampling.pack_latents(source), timesteps,
                              1.0, 0.0)
    assert torch.allclose(landed, sampling.pack_latents(x0), atol=1e-5)


def test_source_start_times_mix_image_to_image_and_plain_paths_at_the_given_rate():
    t0 = source_start_times(100_000, 0.25, 0.3, 0.8, torch.Generator().manual_seed(0))
    image_to_image = t0 < 1
    assert float(image_to_image.float().mean()) == pytest.approx(0.25, abs=0.01)
    assert float(t0[image_to_image].min()) >= 0.3 and float(t0[image_to_image].max()) <= 0.8
    assert torch.all(source_start_times(10, 0.0, 0.3, 0.8) == 1)
    with pytest.raises(ValueError):
        source_start_times(4, 0.5, 0.9, 0.2)


def test_condition_dropout_replaces_the_instruction_the_image_or_both():
    embeds, mask = torch.ones(4, 3, 2), torch.ones(4, 3, dtype=torch.long)
    uncond, uncond_mask = torch.zeros(4, 3, 2), torch.tensor([[1, 0, 0]] * 4)
    reference = torch.ones(4, 2, 2, 2)
    args = (embeds, mask, uncond, uncond_mask, reference)
    kept = drop_conditions(*args, 0.0, 0.0, 0.0)
    assert torch.equal(kept[0], embeds) and torch.equal(kept[1], mask) and torch.equal(kept[2], reference)
    text = drop_conditions(*args, 1.0, 0.0, 0.0)
    assert torch.equal(text[0], uncond) and torch.equal(text[1], uncond_mask) and torch.equal(text[2], reference)
    image = drop_conditions(*args, 0.0, 1.0, 0.0)
    assert torch.equal(image[0], embeds) and not image[2].any()
    both = drop_conditions(*args, 0.0, 0.0, 1.0)
    assert torch.equal(both[0], uncond) and not both[2].any()
    many = torch.ones(10_000, 1, 1)
    dropped = drop_conditions(many, torch.ones(10_000, 1), many * 0, torch.ones(10_000, 1), torch.ones(10_000, 1),
                              0.1, 0.05, 0.05, torch.Generator().manual_seed(0))
    assert (dropped[0] == 0).float().mean() == pytest.approx(0.15, abs=0.015)
    assert (dropped[2] == 0).float().mean() == pytest.approx(0.10, abs=0.015)
    with pytest.raises(ValueError, match="dropout"):
        drop_conditions(*args, 0.6, 0.6, 0.0)
