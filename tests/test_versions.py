"""The version registry: every model line's facts in one place, and positive detection of a checkpoint's version."""

import pytest

from step1x_edit.errors import CheckpointError, InvalidValueError
from step1x_edit.versions import (
    VERSIONS,
    detect_diffusers_version,
    detect_official_version,
    get_version,
    same_weights,
)


def test_registry_holds_every_released_line_with_its_recipe():
    assert set(VERSIONS) == {"v1.0", "v1.1", "v1.1-diffusers", "v1.2-preview", "v1.2"}
    assert [VERSIONS[name].reference_ids for name in ("v1.0", "v1.1", "v1.2")] == ["same", "offset", "grid"]
    assert get_version("v1.0").connector_scale_factor and not get_version("v1.1").connector_scale_factor
    assert get_version("v1.2").text_token_mapping and get_version("v1.2").recipe == "v1.2"
    # the diffusers pipelines compare the 0..1000 timestep with 0.93: renorm at every step
    assert get_version("v1.1").renorm_threshold == 0.93 and get_version("v1.1-diffusers").renorm_threshold < 0.001
    assert get_version("v1.1-diffusers").fixed_size_level == 1024
    assert get_version("v1.2").processor_pixels == (256 * 28 * 28, 400 * 28 * 28)


def test_unknown_version_name_lists_the_known_ones():
    with pytest.raises(InvalidValueError, match="v1.0, v1.1, v1.1-diffusers"):
        get_version("v3")


def test_same_weights_allows_another_recipe_of_one_model_only():
    assert same_weights("v1.1", "v1.1-diffusers")
    assert not same_weights("v1.1", "v1.2") and not same_weights("v1.0", "v1.1")


def test_single_file_version_is_detected_from_its_keys():
    assert detect_official_version({"connector.scale_factor": (1,), "img_in.weight": (2, 2)}) == "v1.0"
    assert detect_official_version({"img_in.weight": (2, 2)}) == "v1.1"
    assert detect_official_version({"text_token_mapping.weight": (2, 2)}) == "v1.2"
    with pytest.raises(CheckpointError, match="matches no Step1X-Edit version"):
        detect_official_version({"connector.scale_factor": (1,), "text_token_mapping.bias": (2,)})


@pytest.mark.parametrize(("pipeline_class", "mapping", "version"), [
    ("Step1XEditPipeline", False, "v1.1-diffusers"), ("Step1XEditPipelineV1P2", True, "v1.2"),
    ("Step1XEditPipelineV1P2", False, "v1.2-preview"),
])
def test_official_repository_version_comes_from_its_pipeline_class_and_transformer(pipeline_class, mapping, version):
    assert detect_diffusers_version(pipeline_class, {"enable_text_token_mapping": mapping}, "repo") == version


def test_repository_matching_no_version_is_refused_never_guessed():
    with pytest.raises(CheckpointError, match="'FluxKontextPipeline' is not a Step1X-Edit release"):
        detect_diffusers_version("FluxKontextPipeline", {}, "repo")
    with pytest.raises(CheckpointError, match="matches no known Step1X-Edit version"):
        detect_diffusers_version("Step1XEditPipeline", {"enable_text_token_mapping": True}, "repo")
