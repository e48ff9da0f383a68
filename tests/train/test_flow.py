"""The training objective: flow times, the velocity target on noisy tokens only, condition dropout."""

import math

import pytest
import torch

from step1x_edit import sampling
from step1x_edit.train.flow import (
    RELATIVE_FLOOR,
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


class _TargetPredictor(torch.nn.Module):
    """Knows the target ``x0`` and answers the velocity ``(x_t - x0) / t`` that points straight at it."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = sampling.pack_latents(x0)
        self.seen = {}

    def forward(self, hidden_states, timestep, encoder_hidden_states=None, encoder_attention_mask=None, img_ids=None,
                txt_ids=None):
        count = self.x0.shape[1]
        self.seen = {"tokens": hidden_states[:, :count], "t": timestep}
        velocity = (hidden_states[:, :count] - self.x0) / timestep[:, None, None]
        return torch.cat([velocity, torch.zeros_like(velocity)], dim=1)


def test_source_start_paths_begin_at_the_pipelines_strength_start_and_point_at_the_target():
    generator = torch.Generator().manual_seed(0)
    x0, source, eps = (torch.randn(3, 16, 4, 4, generator=generator) for _ in range(3))
    embeds, mask = torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.long)
    start = torch.tensor([0.4, 0.7, 1.0])
    oracle = _TargetPredictor(x0)
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
    timesteps = sampling.start_at_strength(sampling.get_schedule(28, 4), 0.5)
    t0 = timesteps[0]
    start = t0 * sampling.pack_latents(eps) + (1 - t0) * sampling.pack_latents(source)
    oracle = _TargetPredictor(x0)
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


def test_x0_weighting_is_the_error_of_the_implied_clean_latents():
    generator = torch.Generator().manual_seed(1)
    x0, reference, eps = (torch.randn(3, 16, 4, 6, generator=generator) for _ in range(3))
    t = torch.tensor([0.05, 0.5, 0.9])
    embeds, mask = torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.long)
    copier = _TargetPredictor(reference)  # answers "the target is the reference", i.e. makes no edit
    loss = flow_matching_loss(copier, x0, reference, embeds, mask, t, eps, "v1.1", loss_weighting="x0")
    assert float(loss) == pytest.approx(float(((x0 - reference) ** 2).mean()), rel=1e-5)  # the same at every t
    plain = flow_matching_loss(copier, x0, reference, embeds, mask, t, eps, "v1.1")
    per_sample = ((x0 - reference) ** 2).mean(dim=(1, 2, 3)) / t**2
    assert float(plain) == pytest.approx(float(per_sample.mean()), rel=1e-5)  # the velocity error grows as 1/t
    with pytest.raises(ValueError, match="loss_weighting must be one of"):
        flow_matching_loss(copier, x0, reference, embeds, mask, t, eps, "v1.1", loss_weighting="snr")


def test_relative_x0_weighting_scores_each_sample_against_returning_its_source():
    generator = torch.Generator().manual_seed(5)
    x0, reference, eps = (torch.randn(3, 4, 4, 6, generator=generator) for _ in range(3))
    x0[0] = reference[0] + 0.2 * (x0[0] - reference[0])  # a small edit counts as much as the large ones
    t = torch.tensor([0.2, 0.7, 1.0])
    embeds, mask = torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.long)
    args = (x0, reference, embeds, mask, t, eps, "v1.1")
    no_edit = flow_matching_loss(_TargetPredictor(reference), *args, loss_weighting="x0_relative")
    assert float(no_edit) == pytest.approx(1.0, rel=1e-5)  # no better than the identity, at every t
    exact = flow_matching_loss(_TargetPredictor(x0), *args, loss_weighting="x0_relative")
    assert float(exact) == pytest.approx(0.0, abs=1e-6)
    halfway = flow_matching_loss(_TargetPredictor((x0 + reference) / 2), *args, loss_weighting="x0_relative")
    assert float(halfway) == pytest.approx(0.25, rel=1e-4)
    # the reference dropped by condition dropout: the no-edit error is still measured against the source
    dropped = flow_matching_loss(_TargetPredictor(reference), x0, torch.zeros_like(reference), embeds, mask, t, eps,
                                 "v1.1", source_latents=reference, loss_weighting="x0_relative")
    assert float(dropped) == pytest.approx(1.0, rel=1e-5)
    # a sample whose target equals its source is measured against the floor, not divided by zero
    same = flow_matching_loss(_TargetPredictor(reference + 0.05), reference, reference, embeds, mask, t, eps, "v1.1",
                              loss_weighting="x0_relative")
    assert float(same) == pytest.approx(0.05**2 / RELATIVE_FLOOR, rel=1e-4)


def test_a_fresh_reference_delta_transformer_has_the_no_edit_loss_at_every_time():
    from step1x_edit.models.presets import build_transformer

    torch.manual_seed(0)
    model = build_transformer("tiny", prediction_type="reference_delta", mllm_hidden_size=8)
    generator = torch.Generator().manual_seed(2)
    x0, reference, eps = (torch.randn(2, 16, 4, 6, generator=generator) for _ in range(3))
    embeds, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.long)
    no_edit = float(((x0 - reference) ** 2).mean())
    for t in (torch.tensor([0.1, 0.3]), torch.tensor([0.6, 0.95])):
        with torch.no_grad():
                loss = flow_matching_loss(model, x0, reference, embeds, mask, t, eps, "v1.1", loss_weighting="x0")
        assert float(loss) == pytest.approx(no_edit, rel=1e-4)


def _patch_decoder(channels: int = 16, patch: int = 2, seed: int = 0):
    """A linear patch decoder (latents [B, C, h, w] -> pixels [B, 3, 2h, 2w]) whose channels move the pixels by
    very different amounts, like the whitened patch autoencoder's."""
    torch.manual_seed(seed)
    decoder = torch.nn.ConvTranspose2d(channels, 3, patch, stride=patch)
    with torch.no_grad():
        decoder.weight.mul_(torch.logspace(0, -2, channels)[:, None, None, None])
    return decoder.requires_grad_(False)


def test_the_pixel_space_loss_weighs_latent_channels_by_how_much_they_move_the_pixels():
    generator = torch.Generator().manual_seed(3)
    x0, reference, eps = (torch.randn(2, 16, 4, 6, generator=generator) for _ in range(3))
    t = torch.tensor([0.4, 1.0])
    embeds, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.long)
    decoder = _patch_decoder()
    args = (x0, reference, embeds, mask, t, eps, "v1.1")
    exact = flow_matching_loss(_TargetPredictor(x0), *args, loss_weighting="x0_relative", decode=decoder)
    assert float(exact) == pytest.approx(0.0, abs=1e-6)
    no_edit = flow_matching_loss(_TargetPredictor(reference), *args, loss_weighting="x0_relative", decode=decoder)
    assert float(no_edit) == pytest.approx(1.0, rel=1e-5)
    # the same latent error costs far more in a strong channel than in a weak one, unlike in the latent space
    strong, weak = x0.clone(), x0.clone()
    strong[:, 0] += 0.5
    weak[:, -1] += 0.5
    pixel = [float(flow_matching_loss(_TargetPredictor(guess), *args, loss_weighting="x0", decode=decoder))
             for guess in (strong, weak)]
    latent = [float(flow_matching_loss(_TargetPredictor(guess), *args, loss_weighting="x0")) for guess in (strong, weak)]
    assert latent[0] == pytest.approx(latent[1], rel=1e-4)
    assert pixel[0] > 100 * pixel[1]
    # the loss reaches the transformer's output through the frozen decoder
    prediction = torch.zeros(2, 12, 64, requires_grad=True)

    class Model(torch.nn.Module):
        def forward(self, hidden_states, timestep, **_):
            return torch.cat([prediction, torch.zeros_like(prediction)], dim=1)

    flow_matching_loss(Model(), *args, loss_weighting="x0_relative", decode=decoder).backward()
    assert prediction.grad.abs().sum() > 0


def test_the_ssim_term_scores_structure_relative_to_the_source_and_needs_pixels():
    from step1x_edit.train.flow import structural_similarity

    generator = torch.Generator().manual_seed(4)
    x0, reference, eps = (torch.randn(2, 16, 8, 8, generator=generator) for _ in range(3))
    t = torch.ones(2)
    embeds, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.long)
    decoder = _patch_decoder()
    args = (x0, reference, embeds, mask, t, eps, "v1.1")
    plain = flow_matching_loss(_TargetPredictor(reference), *args, loss_weighting="x0_relative", decode=decoder)
    with_ssim = flow_matching_loss(_TargetPredictor(reference), *args, loss_weighting="x0_relative", decode=decoder,
                                   ssim_weight=0.5)
    assert float(with_ssim) == pytest.approx(float(plain) + 0.5, rel=1e-5)  # the identity: 1 + 0.5 * 1
    exact = flow_matching_loss(_TargetPredictor(x0), *args, loss_weighting="x0_relative", decode=decoder,
                               ssim_weight=0.5)
    assert float(exact) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="ssim_weight"):
        flow_matching_loss(_TargetPredictor(x0), *args, loss_weighting="x0_relative", ssim_weight=0.5)
    with pytest.raises(ValueError, match="pixel-space loss"):
        flow_matching_loss(_TargetPredictor(x0), *args, decode=decoder)
    pixels = torch.rand(1, 3, 16, 16) * 2 - 1
    assert float(structural_similarity(pixels, pixels)) == pytest.approx(1.0)
    assert float(structural_similarity(pixels, -pixels)) < 0.5


def test_the_absolute_pixel_error_leaves_an_uncertain_edit_out_where_the_squared_error_hedges():
    # three samples from the same source, each editing its own region; one answer for region 0 serves all three
    # (the model cannot tell from the instruction whether region 0 is the one named): the squared error's best
    # answer there is the mean edit (1/3), the absolute error's the median (no change)
    source = torch.zeros(3, 3, 4, 4)
    targets = source.clone()
    for index in range(3):
        targets[index, :, index, :] = 1.0
    t, eps = torch.ones(3), torch.randn(3, 3, 4, 4)
    embeds, mask = torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.long)

    def loss(answer: float, squared: float, absolute: float, guess: torch.Tensor | None = None) -> float:
        if guess is None:
            guess = targets.clone()
            guess[:, :, 0, :] = answer
        return float(flow_matching_loss(_TargetPredictor(guess), targets, source, embeds, mask, t, eps, "v1.1",
                                        loss_weighting="x0_relative", decode=lambda z: z, squared_weight=squared,
                                        absolute_weight=absolute))

    assert loss(1 / 3, 1, 0) < loss(0.0, 1, 0)
    assert loss(0.0, 0, 1) < loss(1 / 3, 0, 1) < loss(1.0, 0, 1)
    # each term is relative to returning the source: the identity scores the sum of the weights
    assert loss(0.0, 0, 1, guess=source) == pytest.approx(1.0)
    assert loss(0.0, 1, 0.5, guess=source) == pytest.approx(1.5)
    assert loss(0.0, 1, 0.5) == pytest.approx(loss(0.0, 1, 0) + 0.5 * loss(0.0, 0, 1))
    with pytest.raises(ValueError, match="not all zero"):
        loss(0.0, 0, 0)
    with pytest.raises(ValueError, match="pixel-space"):
        flow_matching_loss(_TargetPredictor(source), targets, source, embeds, mask, t, eps, "v1.1",
                           loss_weighting="x0_relative", absolute_weight=1.0)


def test_structural_similarity_is_the_evaluation_ssim():
    import numpy as np

    from step1x_edit.metrics import ssim
    from step1x_edit.train.flow import structural_similarity

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)

    def pixels(array):
        return torch.tensor(array, dtype=torch.float64).permute(2, 0, 1)[None] / 127.5 - 1

    assert float(structural_similarity(pixels(a), pixels(b))) == pytest.approx(ssim(a, b), rel=1e-9)
