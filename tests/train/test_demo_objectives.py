"""The demo's objectives: the error of the implied clean image, relative to the source's, in latents or pixels, with
the absolute and structural terms; the trainer's registry reaches them by name and checks their options."""

import pytest
import torch

from step1x_edit.demo.objectives import DEMO_OBJECTIVES, RELATIVE_FLOOR, clean_image_loss
from step1x_edit.errors import Step1XEditError
from step1x_edit.testing.fakes import TargetPredictor
from step1x_edit.train.flow import flow_matching_loss
from step1x_edit.train.objectives import FlowBatch, build_objective


def test_x0_weighting_is_the_error_of_the_implied_clean_latents():
    generator = torch.Generator().manual_seed(1)
    x0, reference, eps = (torch.randn(3, 16, 4, 6, generator=generator) for _ in range(3))
    t = torch.tensor([0.05, 0.5, 0.9])
    embeds, mask = torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.long)
    copier = TargetPredictor(reference)  # answers "the target is the reference", i.e. makes no edit
    loss = clean_image_loss(copier, x0, reference, embeds, mask, t, eps, "v1.1", weighting="x0")
    assert float(loss) == pytest.approx(float(((x0 - reference) ** 2).mean()), rel=1e-5)  # the same at every t
    plain = flow_matching_loss(copier, x0, reference, embeds, mask, t, eps, "v1.1")
    per_sample = ((x0 - reference) ** 2).mean(dim=(1, 2, 3)) / t**2
    assert float(plain) == pytest.approx(float(per_sample.mean()), rel=1e-5)  # the velocity error grows as 1/t
    with pytest.raises(ValueError, match="weighting must be one of"):
        clean_image_loss(copier, x0, reference, embeds, mask, t, eps, "v1.1", weighting="snr")


def test_relative_x0_weighting_scores_each_sample_against_returning_its_source():
    generator = torch.Generator().manual_seed(5)
    x0, reference, eps = (torch.randn(3, 4, 4, 6, generator=generator) for _ in range(3))
    x0[0] = reference[0] + 0.2 * (x0[0] - reference[0])  # a small edit counts as much as the large ones
    t = torch.tensor([0.2, 0.7, 1.0])
    embeds, mask = torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.long)
    args = (x0, reference, embeds, mask, t, eps, "v1.1")
    no_edit = clean_image_loss(TargetPredictor(reference), *args, weighting="x0_relative")
    assert float(no_edit) == pytest.approx(1.0, rel=1e-5)  # no better than the identity, at every t
    exact = clean_image_loss(TargetPredictor(x0), *args, weighting="x0_relative")
    assert float(exact) == pytest.approx(0.0, abs=1e-6)
    halfway = clean_image_loss(TargetPredictor((x0 + reference) / 2), *args, weighting="x0_relative")
    assert float(halfway) == pytest.approx(0.25, rel=1e-4)
    # the reference dropped by condition dropout: the no-edit error is still measured against the source
    dropped = clean_image_loss(TargetPredictor(reference), x0, torch.zeros_like(reference), embeds, mask, t, eps,
                                 "v1.1", source_latents=reference, weighting="x0_relative")
    assert float(dropped) == pytest.approx(1.0, rel=1e-5)
    # a sample whose target equals its source is measured against the floor, not divided by zero
    same = clean_image_loss(TargetPredictor(reference + 0.05), reference, reference, embeds, mask, t, eps, "v1.1",
                              weighting="x0_relative")
    assert float(same) == pytest.approx(0.05**2 / RELATIVE_FLOOR, rel=1e-4)


def test_a_fresh_reference_delta_transformer_has_the_no_edit_loss_at_every_time():
    from step1x_edit.demo.delta import ReferenceDeltaTransformer2DModel
    from step1x_edit.models.presets import build_transformer

    torch.manual_seed(0)
    model = build_transformer("tiny", ReferenceDeltaTransformer2DModel, mllm_hidden_size=8)
    generator = torch.Generator().manual_seed(2)
    x0, reference, eps = (torch.randn(2, 16, 4, 6, generator=generator) for _ in range(3))
    embeds, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.long)
    no_edit = float(((x0 - reference) ** 2).mean())
    for t in (torch.tensor([0.1, 0.3]), torch.tensor([0.6, 0.95])):
        with torch.no_grad():
                loss = clean_image_loss(model, x0, reference, embeds, mask, t, eps, "v1.1", weighting="x0")
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
    exact = clean_image_loss(TargetPredictor(x0), *args, weighting="x0_relative", decode=decoder)
    assert float(exact) == pytest.approx(0.0, abs=1e-6)
    no_edit = clean_image_loss(TargetPredictor(reference), *args, weighting="x0_relative", decode=decoder)
    assert float(no_edit) == pytest.approx(1.0, rel=1e-5)
    # the same latent error costs far more in a strong channel than in a weak one, unlike in the latent space
    strong, weak = x0.clone(), x0.clone()
    strong[:, 0] += 0.5
    weak[:, -1] += 0.5
    pixel = [float(clean_image_loss(TargetPredictor(guess), *args, weighting="x0", decode=decoder))
             for guess in (strong, weak)]
    latent = [float(clean_image_loss(TargetPredictor(guess), *args, weighting="x0")) for guess in (strong, weak)]
    assert latent[0] == pytest.approx(latent[1], rel=1e-4)
    assert pixel[0] > 100 * pixel[1]
    # the loss reaches the transformer's output through the frozen decoder
    prediction = torch.zeros(2, 12, 64, requires_grad=True)

    class Model(torch.nn.Module):
        def forward(self, hidden_states, timestep, **_):
            return torch.cat([prediction, torch.zeros_like(prediction)], dim=1)

    clean_image_loss(Model(), *args, weighting="x0_relative", decode=decoder).backward()
    assert prediction.grad.abs().sum() > 0


def test_the_ssim_term_scores_structure_relative_to_the_source_and_needs_pixels():
    from step1x_edit.metrics import structural_similarity

    generator = torch.Generator().manual_seed(4)
    x0, reference, eps = (torch.randn(2, 16, 8, 8, generator=generator) for _ in range(3))
    t = torch.ones(2)
    embeds, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.long)
    decoder = _patch_decoder()
    args = (x0, reference, embeds, mask, t, eps, "v1.1")
    plain = clean_image_loss(TargetPredictor(reference), *args, weighting="x0_relative", decode=decoder)
    with_ssim = clean_image_loss(TargetPredictor(reference), *args, weighting="x0_relative", decode=decoder,
                                   ssim_weight=0.5)
    assert float(with_ssim) == pytest.approx(float(plain) + 0.5, rel=1e-5)  # the identity: 1 + 0.5 * 1
    exact = clean_image_loss(TargetPredictor(x0), *args, weighting="x0_relative", decode=decoder,
                               ssim_weight=0.5)
    assert float(exact) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="ssim_weight"):
        clean_image_loss(TargetPredictor(x0), *args, weighting="x0_relative", ssim_weight=0.5)
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
        return float(clean_image_loss(TargetPredictor(guess), targets, source, embeds, mask, t, eps, "v1.1",
                                        weighting="x0_relative", decode=lambda z: z, squared_weight=squared,
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
        clean_image_loss(TargetPredictor(source), targets, source, embeds, mask, t, eps, "v1.1",
                           weighting="x0_relative", absolute_weight=1.0)


def test_structural_similarity_is_the_evaluation_ssim():
    import numpy as np

    from step1x_edit.metrics import ssim, structural_similarity

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)

    def pixels(array):
        return torch.tensor(array, dtype=torch.float64).permute(2, 0, 1)[None] / 127.5 - 1

    assert float(structural_similarity(pixels(a), pixels(b))) == pytest.approx(ssim(a, b), rel=1e-9)


def test_the_registry_builds_the_official_objective_and_the_demo_s_by_name_and_checks_their_options():
    generator = torch.Generator().manual_seed(6)
    x0, reference, eps = (torch.randn(2, 4, 4, 6, generator=generator) for _ in range(3))
    embeds, mask, t = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.long), torch.tensor([0.3, 0.8])
    batch = FlowBatch(x0, reference, embeds, mask, t, eps, "v1.1", None, reference, lambda z: z)
    copier = TargetPredictor(reference)
    official = build_objective("flow_matching", {})(copier, batch)
    assert float(official) == pytest.approx(float(flow_matching_loss(copier, x0, reference, embeds, mask, t, eps,
                                                                     "v1.1")))
    relative = build_objective("x0_relative", {}, DEMO_OBJECTIVES)(copier, batch)
    assert float(relative) == pytest.approx(1.0, rel=1e-5)  # no better than the identity
    pixel = build_objective("x0_relative", {"space": "pixel", "absolute": 1}, DEMO_OBJECTIVES)(copier, batch)
    assert float(pixel) == pytest.approx(2.0, rel=1e-5)  # the identity scores the sum of the weights
    for name, options, message in (
            ("x0", {}, "training.objective must be one of 'flow_matching', got 'x0'"),
            ("flow_matching", {"ssim": 1}, "'flow_matching' takes no options"),
            ("x0", {"gamma": 1}, "unknown option(s) ['gamma']"),
            ("x0", {"space": "rgb"}, "training.objective_options.space must be one of"),
            ("x0", {"ssim": -1}, "training.objective_options.ssim must be a finite number"),
            ("x0", {"ssim": 1}, "need space = 'pixel'"),
            ("x0", {"squared": 0}, "are all zero")):
        with pytest.raises(Step1XEditError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            build_objective(name, options, None if name == "x0" and not options else DEMO_OBJECTIVES)
