"""Named model sizes: ``full`` (the released Step1X-Edit), ``mid`` (benchmarks) and ``tiny`` (tests, milliseconds on CPU),
and the bounds of an edit's settings whatever the model (light, so the command line can check them at parse time).

Transformer configs use the field names of :class:`~step1x_edit.models.transformer.Step1XEditTransformer2DModel`
(which mirror the official ``Step1XParams`` plus the connector); VAE configs are the official ``AutoEncoder``
arguments (see :func:`step1x_edit.models.vae.autoencoder_from_official_config`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from .. import validate

# Bounds of an edit's settings for every model (the released models run 28 steps at size_level 1024). The largest
# working size a device can hold is usually smaller: see ``Step1XEditPipeline.largest_size_level``.
MAX_INFERENCE_STEPS = 1000
# The MLLM's attention implementations (transformers' attn_implementation) a model may be loaded with.
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
MIN_SIZE_LEVEL = 16
MAX_SIZE_LEVEL = 8192

TRANSFORMER_PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "in_channels": 64, "out_channels": 64, "vec_in_dim": 768, "context_in_dim": 4096, "hidden_size": 3072,
        "mlp_ratio": 4.0, "num_heads": 24, "depth": 19, "depth_single_blocks": 38, "axes_dim": (16, 56, 56),
        "theta": 10000, "qkv_bias": True, "mllm_hidden_size": 3584, "connector_num_heads": 32, "connector_depth": 2,
        "version": "v1.1", "prediction_type": "velocity",
    },
    "mid": {
        "in_channels": 64, "out_channels": 64, "vec_in_dim": 768, "context_in_dim": 512, "hidden_size": 512,
        "mlp_ratio": 4.0, "num_heads": 8, "depth": 4, "depth_single_blocks": 8, "axes_dim": (8, 28, 28),
        "theta": 10000, "qkv_bias": True, "mllm_hidden_size": 512, "connector_num_heads": 8, "connector_depth": 2,
        "version": "v1.1", "prediction_type": "velocity",
    },
    "tiny": {
        "in_channels": 64, "out_channels": 64, "vec_in_dim": 768, "context_in_dim": 64, "hidden_size": 64,
        "mlp_ratio": 4.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "axes_dim": (8, 12, 12),
        "theta": 10000, "qkv_bias": True, "mllm_hidden_size": 32, "connector_num_heads": 2, "connector_depth": 2,
        "version": "v1.1", "prediction_type": "velocity",
    },
}

VAE_PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "resolution": 256, "in_channels": 3, "ch": 128, "out_ch": 3, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
        "z_channels": 16, "scale_factor": 0.3611, "shift_factor": 0.1159,
    },
    "mid": {
        "resolution": 256, "in_channels": 3, "ch": 64, "out_ch": 3, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 1,
        "z_channels": 16, "scale_factor": 0.3611, "shift_factor": 0.1159,
    },
    "tiny": {
        "resolution": 64, "in_channels": 3, "ch": 32, "out_ch": 3, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1,
        "z_channels": 16, "scale_factor": 0.3611, "shift_factor": 0.1159,
    },
}


def _preset(presets: dict[str, dict[str, Any]], name: str, kind: str) -> dict[str, Any]:
    if name not in presets:
        raise ValueError(f"unknown {kind} preset {name!r}; choose one of {sorted(presets)}")
    return copy.deepcopy(presets[name])


def transformer_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The transformer config of preset ``name`` (``full``, ``mid``, ``tiny``) with ``overrides`` applied."""
    config = _preset(TRANSFORMER_PRESETS, name, "transformer")
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"unknown transformer config field(s) {unknown}; valid fields are {sorted(config)}")
    config.update(overrides)
    return config


def vae_config(name: str) -> dict[str, Any]:
    """The official ``AutoEncoder`` arguments of VAE preset ``name`` (``full``, ``mid``, ``tiny``)."""
    return _preset(VAE_PRESETS, name, "VAE")


def build_transformer(name: str, model_class: type | None = None, **overrides: Any):
    """A randomly initialised :class:`Step1XEditTransformer2DModel` (or ``model_class``, a subclass, with its own
    ``prediction_type``) of preset ``name`` (float32, CPU)."""
    from .transformer import Step1XEditTransformer2DModel

    model_class = model_class or Step1XEditTransformer2DModel
    return model_class(**transformer_config(name, **{"prediction_type": model_class.PREDICTION_TYPE, **overrides}))


def build_vae(name: str):
    """A randomly initialised diffusers ``AutoencoderKL`` with the FLUX layout at preset size ``name``."""
    from .vae import autoencoder_from_official_config

    return autoencoder_from_official_config(vae_config(name))


# The longest MLLM condition a model may be saved with (Qwen2.5-VL's context is 32k tokens; released: 640).
MAX_SEQUENCE_LENGTH = 32_768
# The settings model_index.json saves beside the components, each checked by check_pipeline_settings.
PIPELINE_SETTINGS = ("max_sequence_length", "default_size_level", "default_guidance_scale", "default_strength",
                     "default_num_inference_steps")


def check_pipeline_settings(settings: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidValueError` naming the field unless every pipeline setting present in ``settings`` (the
    fields ``model_index.json`` saves beside the components) is in range; absent ones keep their defaults."""
    ranges = {"max_sequence_length": (1, MAX_SEQUENCE_LENGTH), "default_size_level": (MIN_SIZE_LEVEL, MAX_SIZE_LEVEL),
              "default_num_inference_steps": (1, MAX_INFERENCE_STEPS)}
    for name, (low, high) in ranges.items():
        if name in settings:
            validate.integer(name, settings[name], low, high)
    if "default_guidance_scale" in settings:
        validate.number("default_guidance_scale", settings["default_guidance_scale"], 0.0)
    if "default_strength" in settings:
        validate.number("default_strength", settings["default_strength"], 0.0, 1.0, low_open=True)
