"""The Step1X-Edit model lines and everything that differs between them, in one table.

Each released line is one :class:`ModelVersion`: how its weights are laid out, which conditioning recipe and
position ids its DiT was trained with, how classifier-free guidance is renormalised, how the source image is
resized, and the settings its authors run it with. The sampler, the transformer, the loaders, the command line and
the server read their version facts from here; nothing else names a version's behaviour.

Two inference recipes exist for the same v1.1 weights: the official ``inference.py`` (version ``"v1.1"``, the
single-file checkpoint) and the official diffusers pipeline (``"v1.1-diffusers"``, the diffusers-format
repository). Loading picks the recipe of the layout it reads; ``docs/model.md`` lists the differences.

Detection is positive: :func:`detect_diffusers_version` names the version of an official diffusers-format
repository from its ``model_index.json`` and transformer config, and refuses (with the reason) anything that matches
no entry, so an unknown checkpoint is never taken for another version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import CheckpointError, InvalidValueError

# Conditioning recipes (see step1x_edit.models.mllm and step1x_edit.models.mllm_v1p2).
RECIPE_V1 = "v1"  # fixed prefix, quotes incl. apostrophes, 217 positions dropped, padded to 640
RECIPE_V1P2 = "v1.2"  # new prefix, quotes and special tokens split, 90 dropped, valid length only, M-RoPE text ids
# Reference-token position ids: the noisy token at packed (r, c) is (0, r, c).
REFERENCE_IDS_SAME = "same"  # (0, r, c): identical to the noisy tokens (v1.0)
REFERENCE_IDS_OFFSET = "offset"  # (1, r + 1, c + 1) (v1.1)
REFERENCE_IDS_GRID = "grid"  # (1, r, c) (v1.2)
# Where the sampler's pieces come from.
SAMPLER_OFFICIAL = "official"  # inference.py: batched CFG, VAE mean, float schedule of get_schedule
SAMPLER_DIFFUSERS = "diffusers"  # the diffusers fork: two CFG calls, sampled VAE latent, FlowMatchEuler sigmas
# How the VAE input is made from the source image.
VAE_INPUT_RESIZED = "resized"  # the working-size resized image (PIL filter of the version)
VAE_INPUT_ANTIALIAS = "antialias"  # bilinear antialiased interpolation of the original (v1.2)


@dataclass(frozen=True)
class ModelVersion:
    """What one Step1X-Edit model line is and how it runs.

    ``renorm_threshold`` is in flow time (t in [0, 1]): the CFG renorm divides ``cond - uncond`` by its per-token
    norm to the power ``renorm_power`` (where the norm exceeds 1) while ``t > renorm_threshold``. The diffusers
    pipelines compare the 0..1000 scheduler timestep with 0.93, so they renormalise at every step: 0.93 / 1000 in
    flow time. ``fixed_size_level`` is the working size a pipeline always uses (the v1.1 diffusers pipeline has no
    size argument), else ``None``.
    """

    name: str
    summary: str
    layout: str  # "official" (single-file DiT + vae.safetensors + Qwen folder) or "diffusers" (the official repos)
    hub_repo: str
    official_files: tuple[str, ...]  # DiT file names of the official single-file layout
    pipeline_class: str | None  # model_index.json _class_name of the official diffusers repository
    connector_scale_factor: bool
    text_token_mapping: bool
    recipe: str
    reference_ids: str
    sampler: str
    renorm_threshold: float
    renorm_power: float
    resize_filter: str  # PIL filter of the working-size image: "bicubic" or "lanczos"
    vae_input: str
    fixed_size_level: int | None
    processor_pixels: tuple[int, int]  # Qwen2.5-VL image processor min/max pixels of the conditioning image
    prediction: str
    default_num_inference_steps: int
    default_guidance_scale: float
    default_size_level: int


_V1_PIXELS = (256 * 28 * 28, 324 * 28 * 28)
_V1P2_PIXELS = (256 * 28 * 28, 400 * 28 * 28)

VERSIONS: dict[str, ModelVersion] = {
    version.name: version
    for version in (
        ModelVersion(
            name="v1.0", summary="the first release (April 2025)", layout="official",
            hub_repo="stepfun-ai/Step1X-Edit", official_files=("step1x-edit-i1258.safetensors",),
            pipeline_class=None, connector_scale_factor=True, text_token_mapping=False, recipe=RECIPE_V1,
            reference_ids=REFERENCE_IDS_SAME, sampler=SAMPLER_OFFICIAL, renorm_threshold=1.0, renorm_power=0.4,
            resize_filter="bicubic", vae_input=VAE_INPUT_RESIZED, fixed_size_level=None,
            processor_pixels=_V1_PIXELS, prediction="velocity", default_num_inference_steps=28,
            default_guidance_scale=6.0, default_size_level=1024,
        ),
        ModelVersion(
            name="v1.1", summary="v1.1 single-file checkpoint run as the official inference.py (July 2025)",
            layout="official", hub_repo="stepfun-ai/Step1X-Edit",
            official_files=("step1x-edit-v1p1-official.safetensors",), pipeline_class=None,
            connector_scale_factor=False, text_token_mapping=False, recipe=RECIPE_V1,
            reference_ids=REFERENCE_IDS_OFFSET, sampler=SAMPLER_OFFICIAL, renorm_threshold=0.93, renorm_power=0.4,
            resize_filter="lanczos", vae_input=VAE_INPUT_RESIZED, fixed_size_level=None,
            processor_pixels=_V1_PIXELS, prediction="velocity", default_num_inference_steps=28,
            default_guidance_scale=6.0, default_size_level=1024,
        ),
        ModelVersion(
            name="v1.1-diffusers", summary="v1.1 weights in diffusers format, run as the official diffusers pipeline",
            layout="diffusers", hub_repo="stepfun-ai/Step1X-Edit-v1p1-diffusers", official_files=(),
            pipeline_class="Step1XEditPipeline", connector_scale_factor=False, text_token_mapping=False,
            recipe=RECIPE_V1, reference_ids=REFERENCE_IDS_OFFSET, sampler=SAMPLER_DIFFUSERS,
            renorm_threshold=0.93 / 1000, renorm_power=0.4, resize_filter="lanczos", vae_input=VAE_INPUT_RESIZED,
            fixed_size_level=1024, processor_pixels=_V1_PIXELS, prediction="velocity",
            default_num_inference_steps=28, default_guidance_scale=6.0, default_size_level=1024,
        ),
        ModelVersion(
            name="v1.2-preview", summary="ReasonEdit-S preview (September 2025), diffusers format only",
            layout="diffusers", hub_repo="stepfun-ai/Step1X-Edit-v1p2-preview", official_files=(),
            pipeline_class="Step1XEditPipelineV1P2", connector_scale_factor=False, text_token_mapping=False,
            recipe=RECIPE_V1P2, reference_ids=REFERENCE_IDS_GRID, sampler=SAMPLER_DIFFUSERS,
            renorm_threshold=0.93 / 1000, renorm_power=0.4, resize_filter="lanczos", vae_input=VAE_INPUT_ANTIALIAS,
            fixed_size_level=None, processor_pixels=_V1P2_PIXELS, prediction="velocity",
            default_num_inference_steps=28, default_guidance_scale=4.0, default_size_level=1024,
        ),
        ModelVersion(
            name="v1.2", summary="ReasonEdit-S (November 2025): fine-tuned MLLM, text-token mapping, diffusers only",
            layout="diffusers", hub_repo="stepfun-ai/Step1X-Edit-v1p2", official_files=(),
            pipeline_class="Step1XEditPipelineV1P2", connector_scale_factor=False, text_token_mapping=True,
            recipe=RECIPE_V1P2, reference_ids=REFERENCE_IDS_GRID, sampler=SAMPLER_DIFFUSERS,
            renorm_threshold=0.93 / 1000, renorm_power=0.4, resize_filter="lanczos", vae_input=VAE_INPUT_ANTIALIAS,
            fixed_size_level=None, processor_pixels=_V1P2_PIXELS, prediction="velocity",
            default_num_inference_steps=28, default_guidance_scale=6.0, default_size_level=1024,
        ),
    )
}
VERSION_NAMES = tuple(VERSIONS)
OFFICIAL_VERSIONS = tuple(name for name, version in VERSIONS.items() if version.layout == "official")


def get_version(name: str) -> ModelVersion:
    """The registry entry ``name``; :class:`~step1x_edit.errors.InvalidValueError` naming the known ones otherwise."""
    if name not in VERSIONS:
        raise InvalidValueError(f"version {name!r} is not a Step1X-Edit version; known: {', '.join(VERSION_NAMES)}")
    return VERSIONS[name]


def same_weights(first: str, second: str) -> bool:
    """Whether versions ``first`` and ``second`` run the same transformer (so one's weights may run with the other's
    recipe): the same connector, text-token mapping and reference position ids."""
    a, b = get_version(first), get_version(second)
    return (a.connector_scale_factor, a.text_token_mapping, a.reference_ids) == (
        b.connector_scale_factor, b.text_token_mapping, b.reference_ids)


def detect_official_version(keys: Mapping[str, Any]) -> str:
    """The version of an official single-file DiT checkpoint from its tensor names: ``connector.scale_factor``
    exists only in v1.0, ``text_token_mapping.*`` only in v1.2 (released in diffusers format only; the official
    converter reads a single file with these names). Raises :class:`CheckpointError` for a combination no version
    has."""
    has_scale = "connector.scale_factor" in keys
    has_mapping = any(key.startswith("text_token_mapping.") for key in keys)
    matching = [version for version in VERSIONS.values()
                if (version.connector_scale_factor, version.text_token_mapping) == (has_scale, has_mapping)]
    if not matching:
        raise CheckpointError("the checkpoint has both connector.scale_factor (v1.0 only) and text_token_mapping "
                              "(v1.2 only): it matches no Step1X-Edit version")
    official = [version for version in matching if version.layout == "official"]
    return (official or matching)[0].name


def detect_diffusers_version(pipeline_class: str, transformer_config: Mapping[str, Any], source: str) -> str:
    """The version of an official diffusers-format repository from its ``model_index.json`` ``_class_name`` and its
    transformer ``config.json`` (``enable_text_token_mapping``); raises :class:`CheckpointError` naming ``source``
    and the reason when no entry matches."""
    mapping = transformer_config.get("enable_text_token_mapping", False)
    if not isinstance(mapping, bool):
        raise CheckpointError(f"{source}: enable_text_token_mapping must be true or false, got {mapping!r}")
    candidates = [version for version in VERSIONS.values() if version.layout == "diffusers"]
    classes = sorted({version.pipeline_class for version in candidates})
    matching = [version for version in candidates if version.pipeline_class == pipeline_class]
    if not matching:
        raise CheckpointError(f"{source}: pipeline class {pipeline_class!r} is not a Step1X-Edit release "
                              f"(known: {', '.join(classes)}); refusing to guess its version")
    for version in matching:
        if version.text_token_mapping == mapping:
            return version.name
    raise CheckpointError(f"{source}: a {pipeline_class} repository with enable_text_token_mapping={mapping} matches "
                          "no known Step1X-Edit version; refusing to guess")
