"""The synthetic world: every task has exact ground truth, bilingual instructions, and is deterministic."""

import numpy as np
import pytest

from step1x_edit.data.synthetic import TASKS, edit_scenes, generate_sample, render, reverse_sample
from step1x_edit.data.synthetic.generators import LOCAL_TASKS
from step1x_edit.data.synthetic.world import Scene, Shape

SEEDS = range(12)


def _arrays(sample):
    return np.asarray(sample.source), np.asarray(sample.target)


def test_there_are_eleven_task_categories():
    assert len(TASKS) == 11 and len(set(TASKS)) == 11


@pytest.mark.parametrize("antialias", [False, True], ids=["sharp", "antialiased"])
@pytest.mark.parametrize("task", TASKS)
def test_every_task_changes_pixels_only_inside_its_mask(task, antialias):
    for seed in SEEDS:
        sample = generate_sample(task, seed, resolution=(128, 192), antialias=antialias)
        source, target = _arrays(sample)
        assert source.shape == target.shape and source.dtype == np.uint8
        changed = (source != target).any(axis=2)
        assert changed.any(), f"{task} seed {seed} made no change"
        if task in LOCAL_TASKS:
            mask = np.asarray(sample.mask) > 0
            assert not (changed & ~mask).any(), f"{task} seed {seed} changed pixels outside its mask"
        else:
            assert sample.mask is None
        assert sample.instruction_en.strip() and sample.instruction_zh.strip()
        assert any("\u4e00" <= ch <= "\u9fff" for ch in sample.instruction_zh)


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_gives_identical_pixels_and_words(task):
    first, second = generate_sample(task, 7), generate_sample(task, 7)
    assert np.array_equal(np.asarray(first.source), np.asarray(second.source))
    assert np.array_equal(np.asarray(first.target), np.asarray(second.target))
    assert (first.instruction_en, first.instruction_zh) == (second.instruction_en, second.instruction_zh)


@pytest.mark.parametrize("task", TASKS)
def test_edit_scenes_render_as_the_sample_they_describe(task):
    for seed in range(4):
        sample = generate_sample(task, seed, resolution=(96, 160))
        source, target = edit_scenes(task, seed, resolution=(96, 160))
        drawn_source, drawn_target = np.asarray(render(source)), np.asarray(render(target))
        if task in LOCAL_TASKS:
            assert np.array_equal(drawn_source, np.asarray(sample.source.convert("RGB")))
            assert np.array_equal(drawn_target, np.asarray(sample.target.convert("RGB")))
        else:  # one scene; the change is applied to its image (an inverse edit makes it the target)
            assert np.array_equal(drawn_source, drawn_target)
            assert any(
                np.array_equal(drawn_source, np.asarray(side.convert("RGB")))
                for side in (sample.source, sample.target)
            )


def test_removed_object_reveals_exact_background():
    for task in ("subject_removal", "subject_addition"):
        for seed in SEEDS:
            sample = generate_sample(task, seed, resolution=(128, 192))
            width, height = sample.source.size
            empty = np.asarray(render(Scene(width, height, sample.meta["background"])))
            where = np.asarray(sample.mask) > 0
            without = np.asarray(sample.target if task == "subject_removal" else sample.source)
            with_object = np.asarray(sample.source if task == "subject_removal" else sample.target)
            assert np.array_equal(without[where], empty[where])  # exactly the background the scene renders
            assert (with_object[where] != empty[where]).any(axis=1).mean() > 0.5
            assert Shape(**sample.meta["object"]).color in sample.instruction_en or task == "subject_removal"


def test_color_alteration_recolours_exactly_the_object():
    for seed in SEEDS:
        sample = generate_sample("color_alteration", seed, resolution=128)
        source, target = _arrays(sample)
        mask = np.asarray(sample.mask) > 0
        changed = (source != target).any(axis=2)
        assert not (changed & ~mask).any()
        assert np.array_equal(changed, mask)  # the whole object and nothing else


def test_text_edit_keeps_box_and_font_and_changes_the_word():
    for seed in SEEDS:
        sample = generate_sample("text_modification", seed, resolution=192)
        old, new = sample.meta["old"], sample.meta["new"]
        assert old != new and f"“{new}”" in sample.instruction_zh and new in sample.instruction_en
        x0, y0, x1, y1 = sample.meta["box"]
        source, target = _arrays(sample)
        assert (source[y0:y1, x0:x1] != target[y0:y1, x0:x1]).any()
        outside = np.ones(source.shape[:2], bool)
        outside[y0:y1, x0:x1] = False
        assert np.array_equal(source[outside], target[outside])


def test_addition_is_the_reverse_of_removal_and_reverse_sample_swaps_back():
    removal = generate_sample("subject_removal", 3)
    addition = reverse_sample(removal)
    assert addition.task == "subject_addition"
    assert np.array_equal(np.asarray(addition.source), np.asarray(removal.target))
    assert np.array_equal(np.asarray(addition.target), np.asarray(removal.source))
    assert addition.instruction_en.split()[0] in {"Add", "Put", "Place", "Draw", "Insert"}
    with pytest.raises(ValueError, match="no meaningful reverse"):
        reverse_sample(generate_sample("style_transfer", 3))


def test_instructions_vary_across_seeds():
    for task in TASKS:
        phrasings = {generate_sample(task, seed).instruction_en.split()[0] for seed in range(30)}
        assert len(phrasings) >= 2, f"{task} always starts with {phrasings}"


def test_resolution_and_aspect_ratio_are_configurable():
    sample = generate_sample("color_alteration", 1, resolution=256, aspect_ratios=(2.0,))
    width, height = sample.source.size
    assert width % 16 == 0 and height % 16 == 0 and width > height
    sizes = {
        generate_sample("tone_transformation", seed, resolution=(128, 256)).source.size for seed in range(20)
    }
    assert len(sizes) > 1 and all(128 <= w <= 256 for w, _ in sizes)
    with pytest.raises(ValueError, match="unknown task"):
        generate_sample("teleportation", 0)
