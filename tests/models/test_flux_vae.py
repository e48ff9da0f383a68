"""The FLUX autoencoder helpers: normalised posterior-mode latents at /8 and their exact inverse."""

import torch

from step1x_edit.models.presets import build_vae, vae_config
from step1x_edit.models.vae import decode_latents, diffusers_vae_config, encode_latents


def test_latents_are_the_scaled_shifted_posterior_mode_at_one_eighth_size():
    torch.manual_seed(0)
    vae = build_vae("tiny").eval()
    pixels = torch.rand(1, 3, 48, 32) * 2 - 1
    with torch.no_grad():
        latents = encode_latents(vae, pixels)
        mode = vae.encode(pixels).latent_dist.mode()
    assert latents.shape == (1, 16, 6, 4)
    assert torch.allclose(latents, 0.3611 * (mode - 0.1159))


def test_decode_undoes_the_latent_normalisation():
    torch.manual_seed(0)
    vae = build_vae("tiny").eval()
    latents = torch.randn(1, 16, 4, 4)
    with torch.no_grad():
        pixels = decode_latents(vae, latents)
        direct = vae.decode(latents / 0.3611 + 0.1159).sample
    assert pixels.shape == (1, 3, 32, 32)
    assert torch.equal(pixels, direct)


def test_official_arguments_map_to_the_flux_autoencoder_config():
    config = diffusers_vae_config(vae_config("full"))
    assert config["block_out_channels"] == (128, 256, 512, 512) and config["layers_per_block"] == 2
    assert config["latent_channels"] == 16 and not config["use_quant_conv"] and not config["use_post_quant_conv"]
