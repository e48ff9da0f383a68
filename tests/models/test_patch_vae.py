"""The linear patch autoencoder: PCA fit, near-lossless on the synthetic world, a drop-in pipeline VAE."""

import numpy as np
import pytest
import torch

from step1x_edit.data.synthetic import TASKS, generate_sample
from step1x_edit.models.patch_vae import PatchAutoencoder, reconstruction_psnr
from step1x_edit.models.vae import decode_latents, encode_latents


def _pixels(seeds, resolution=64):
    images = []
    for seed in seeds:
        sample = generate_sample(TASKS[seed % len(TASKS)], seed, resolution=resolution)
        images += [sample.source, sample.target]
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1


def test_fitted_components_reconstruct_held_out_scenes_almost_exactly():
    vae = PatchAutoencoder(patch_size=4, latent_channels=32).fit(_pixels(range(120)))
    held_out = _pixels(range(10_000, 10_030))
    assert reconstruction_psnr(vae, held_out) > 38
    lossless = PatchAutoencoder(patch_size=2, latent_channels=12).fit(_pixels(range(20)))
    assert reconstruction_psnr(lossless, held_out) > 80  # all 12 components of a 2x2 patch: exact


def test_normalised_latents_have_zero_mean_unit_variance_and_round_trip():
    images = _pixels(range(60))
    vae = PatchAutoencoder(patch_size=4, latent_channels=16).fit(images)
    with torch.no_grad():
        latents = encode_latents(vae, images)  # normalised
    assert latents.shape == (images.shape[0], 16, 16, 16)
    assert float(latents.mean()) == pytest.approx(0, abs=1e-3) and float(latents.std()) == pytest.approx(1, abs=1e-3)
    decoded = decode_latents(vae, latents)
    direct = vae.decode(vae.encode(images).latent_dist.mode()).sample
    torch.testing.assert_close(decoded, direct, atol=1e-5, rtol=1e-5)


def test_too_many_components_for_the_patch_is_an_error():
    with pytest.raises(ValueError, match="exceeds"):
        PatchAutoencoder(patch_size=2, latent_channels=13)


def test_a_pipeline_with_it_saves_and_loads(tmp_path):
    from step1x_edit.pipeline import Step1XEditPipeline
    from step1x_edit.testing.tiny import tiny_pipeline

    pipe = tiny_pipeline()
    pipe.vae = PatchAutoencoder(patch_size=8, latent_channels=16).fit(_pixels(range(30)))  # 16 channels, /8
    pipe.register_modules(vae=pipe.vae)
    pipe.save_pretrained(tmp_path)
    loaded = Step1XEditPipeline.from_pretrained(tmp_path)
    assert isinstance(loaded.vae, PatchAutoencoder)
    image = loaded(image=_to_image(), prompt="make it red", num_inference_steps=2, size_level=64).images[0]
    assert image.size == (64, 64)


def _to_image():
    from PIL import Image

    return Image.new("RGB", (64, 64), (20, 120, 200))


def test_every_latent_channel_is_whitened_so_sampler_noise_in_weak_components_stays_small():
    images = _pixels(range(60))
    vae = PatchAutoencoder(patch_size=4, latent_channels=16).fit(images)
    with torch.no_grad():
        latents = encode_latents(vae, images)
    per_channel = latents.std(dim=(0, 2, 3))
    torch.testing.assert_close(per_channel, torch.ones(16), atol=0.02, rtol=0)
    # unit noise in the last (weakest) channel moves the pixels far less than the same noise in the first
    noise = torch.zeros(1, 16, 4, 4)
    base = decode_latents(vae, noise)
    first, last = noise.clone(), noise.clone()
    first[:, 0], last[:, -1] = 1.0, 1.0
    assert (decode_latents(vae, last) - base).abs().mean() < 0.5 * (decode_latents(vae, first) - base).abs().mean()


def test_an_untrained_reference_delta_pipeline_on_the_full_patch_autoencoder_returns_the_source_exactly():
    from step1x_edit.demo.delta import ReferenceDeltaTransformer2DModel
    from step1x_edit.models.presets import build_transformer
    from step1x_edit.testing.tiny import tiny_pipeline

    pipe = tiny_pipeline()
    pipe.vae = PatchAutoencoder(patch_size=4, latent_channels=48).fit(_pixels(range(30)))  # every component
    pipe.transformer = build_transformer("tiny", ReferenceDeltaTransformer2DModel, in_channels=192,
                                         out_channels=192, mllm_hidden_size=32).eval()
    pipe.register_modules(vae=pipe.vae, transformer=pipe.transformer)
    source = generate_sample(TASKS[0], 7, resolution=64).source
    for guidance, strength in ((1.0, 1.0), (3.0, 1.0), (1.0, 0.5)):
        edited = pipe(image=source, prompt="add a red circle", num_inference_steps=6, size_level=64,
                      guidance_scale=guidance, strength=strength).images[0]
        error = np.abs(np.asarray(edited, dtype=np.int16) - np.asarray(source, dtype=np.int16))
        assert error.max() <= 1  # only 8-bit rounding: the noise never reaches the output
