"""The edit service behind the web UI and the HTTP API: seeds, defaults, limits and its queue."""

import math
import threading

import numpy as np
import pytest

from step1x_edit.errors import InvalidImageError, InvalidPromptError, InvalidValueError, Step1XEditError
from step1x_edit.serve import service as service_module
from step1x_edit.serve.service import (
    EditCancelledError,
    EditService,
    EditTimeoutError,
    ServeLimits,
    ServiceBusyError,
)

INSTRUCTION = "Make the red circle green."


def _pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_same_seed_gives_the_same_edit_and_no_seed_draws_one_that_reproduces_it(demo_pipeline, example):
    service = EditService(demo_pipeline)
    first = service.edit(example, INSTRUCTION, seed=3)
    again = service.edit(example, INSTRUCTION, seed=3)
    assert first.seeds == [3]
    assert np.array_equal(_pixels(first.images[0]), _pixels(again.images[0]))
    drawn = service.edit(example, INSTRUCTION)
    replay = service.edit(example, INSTRUCTION, seed=drawn.seeds[0])
    assert np.array_equal(_pixels(drawn.images[0]), _pixels(replay.images[0]))


def test_image_i_of_a_request_equals_a_single_edit_with_seed_plus_i(demo_pipeline, example):
    service = EditService(demo_pipeline)
    batch = service.edit(example, INSTRUCTION, seed=10, num_images=3)
    assert batch.seeds == [10, 11, 12]
    single = service.edit(example, INSTRUCTION, seed=12)
    assert np.array_equal(_pixels(batch.images[2]), _pixels(single.images[0]))
    assert not np.array_equal(_pixels(batch.images[0]), _pixels(batch.images[2]))


def test_fields_left_out_take_the_models_defaults(demo_pipeline, example):
    service = EditService(demo_pipeline)
    defaults = service.defaults
    assert defaults == {"num_inference_steps": demo_pipeline.config.default_num_inference_steps,
                        "guidance_scale": demo_pipeline.config.default_guidance_scale,
                        "size_level": demo_pipeline.config.default_size_level,
                        "strength": demo_pipeline.config.default_strength}
    implicit = service.edit(example, INSTRUCTION, seed=1)
    explicit = service.edit(example, INSTRUCTION, seed=1, **defaults)
    assert np.array_equal(_pixels(implicit.images[0]), _pixels(explicit.images[0]))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_inference_steps", 0, "num_inference_steps must be an integer between 1 and 20"),
        ("num_inference_steps", 21, "num_inference_steps must be an integer between 1 and 20"),
        ("num_inference_steps", 2.5, "num_inference_steps must be an integer"),
        ("size_level", 4096, "size_level must be an integer between 16 and 256"),
        ("size_level", True, "size_level must be an integer"),
        ("guidance_scale", math.nan, "guidance_scale must be a finite number"),
        ("guidance_scale", 31.0, "guidance_scale must be a finite number between"),
        ("strength", 0.0, "strength"),
        ("strength", 1.5, "strength must be a finite number between"),
        ("seed", -1, "seed must be an integer between"),
        ("num_images", 3, "n must be an integer between 1 and 2"),
        ("negative_prompt", "x" * 101, "negative_prompt"),
        ("negative_prompt", "bad \udcff byte", "negative_prompt is not valid UTF-8"),
        ("seed", 2**64, "seed must be an integer between 0"),
        ("guidance_scale", "6", "guidance_scale must be a number"),
    ],
)
def test_fields_outside_the_limits_are_refused_naming_the_field(demo_pipeline, example, field, value, message):
    limits = ServeLimits(max_steps=20, max_size_level=256, max_images=2, max_prompt_chars=100)
    with pytest.raises(InvalidValueError, match=message):
        EditService(demo_pipeline, limits).edit(example, INSTRUCTION, **{field: value})


def test_bad_instructions_and_images_are_refused(demo_pipeline, example):
    service = EditService(demo_pipeline, ServeLimits(max_prompt_chars=100, max_pixels=200 * 200))
    with pytest.raises(InvalidPromptError, match="empty"):
        service.edit(example, "   ")
    with pytest.raises(InvalidValueError, match="101 characters"):
        service.edit(example, "x" * 101)
    with pytest.raises(InvalidImageError, match="not an image"):
        service.edit(b"GIF89a but not really", INSTRUCTION)
    with pytest.raises(InvalidImageError, match="above the limit"):
        service.edit(example, INSTRUCTION)  # 256 x 256 > 200 x 200
    assert service.pending == 0


def test_a_full_queue_refuses_new_edits_at_once_and_frees_its_place_after(gated_pipeline, example):
    gate = gated_pipeline
    service = EditService(gate, ServeLimits(max_pending=1))
    results = []
    running = threading.Thread(target=lambda: results.append(service.edit(example, INSTRUCTION, seed=0)))
    running.start()
    try:
        assert gate.entered.wait(30)
        assert service.pending == 1
        with pytest.raises(ServiceBusyError, match="limit 1"):
            service.edit(example, INSTRUCTION, seed=0)
    finally:
        gate.release.set()
        running.join(30)
    assert len(results) == 1 and service.pending == 0
    assert service.edit(example, INSTRUCTION, seed=0).seeds == [0]


def test_a_withdrawn_request_never_runs_and_one_withdrawn_midway_stops_at_the_next_step(gated_pipeline, example,
                                                                                     monkeypatch):
    monkeypatch.setattr(service_module, "CANCEL_CHECK_INTERVAL_SECONDS", 3600.0)  # asked after steps only
    gated_pipeline.release.set()
    service = EditService(gated_pipeline)
    with pytest.raises(EditCancelledError, match="before its edit started"):
        service.edit(example, INSTRUCTION, cancelled=lambda: True)
    assert gated_pipeline.calls == 0 and service.pending == 0
    asked = []

    def gone_after_two_questions() -> bool:
        asked.append(True)
        return len(asked) > 2  # asked once when the edit's turn comes, then after each step

    with pytest.raises(EditCancelledError, match="after step 2"):
        service.edit(example, INSTRUCTION, num_inference_steps=5, cancelled=gone_after_two_questions)
    assert len(asked) == 3 and service.pending == 0


def test_a_request_withdrawn_inside_a_step_stops_before_the_next_block_of_the_model(demo_pipeline, example,
                                                                                  monkeypatch):
    monkeypatch.setattr(service_module, "CANCEL_CHECK_INTERVAL_SECONDS", 0.0)
    blocks_run = []
    first_block = demo_pipeline.transformer.transformer_blocks[0]
    handle = first_block.register_forward_hook(lambda *_: blocks_run.append(True))
    try:
        asked = []

        def gone_once_started() -> bool:
            asked.append(True)
            return len(asked) > 1  # the edit starts, then the client leaves

        with pytest.raises(EditCancelledError, match="during step 1"):
            EditService(demo_pipeline).edit(example, INSTRUCTION, num_inference_steps=1, cancelled=gone_once_started)
        assert blocks_run == []  # stopped before the DiT's first block (in the text encoder)
    finally:
        handle.remove()
    assert all(not module._forward_pre_hooks for module in demo_pipeline.transformer.modules())  # hooks removed


def test_an_edit_past_the_time_limit_stops_with_a_clear_error_and_frees_the_service(gated_pipeline, example):
    gated_pipeline.release.set()
    service = EditService(gated_pipeline, ServeLimits(max_seconds=1e-9))
    with pytest.raises(EditTimeoutError, match="limit of 1e-09 s per edit"):
        service.edit(example, INSTRUCTION, seed=0)
    assert service.pending == 0
    assert EditService(gated_pipeline).edit(example, INSTRUCTION, seed=0).seeds == [0]


def test_limits_left_open_follow_the_served_model(demo_pipeline):
    limits = EditService(demo_pipeline).limits
    assert limits.max_size_level == demo_pipeline.config.default_size_level == 96
    assert limits.max_steps == max(50, 2 * demo_pipeline.config.default_num_inference_steps)
    assert EditService(demo_pipeline, ServeLimits(max_size_level=512)).limits.max_size_level == 512


def test_the_place_taken_before_an_upload_counts_against_the_bound_and_is_handed_to_the_edit(demo_pipeline,
                                                                                            example):
    service = EditService(demo_pipeline, ServeLimits(max_pending=1))
    with service.reserve():
        assert service.pending == 1
        with pytest.raises(ServiceBusyError):
            service.edit(example, INSTRUCTION, seed=0)
        assert service.edit(example, INSTRUCTION, seed=0, reserved=True).seeds == [0]
    assert service.pending == 0


def test_limits_that_refuse_the_models_own_defaults_or_are_not_positive_are_refused_at_start(demo_pipeline):
    with pytest.raises(Step1XEditError, match=r"default size_level \(96\) is above the serving limit \(64\)"):
        EditService(demo_pipeline, ServeLimits(max_size_level=64))
    with pytest.raises(Step1XEditError, match="max_pending must be an integer of at least 1, got 0"):
        ServeLimits(max_pending=0)
    with pytest.raises(Step1XEditError, match="max_size_level must be an integer of at least 16, got 8"):
        ServeLimits(max_size_level=8)
    with pytest.raises(Step1XEditError, match="max_seconds must be a finite number above 0"):
        ServeLimits(max_seconds=float("nan"))
