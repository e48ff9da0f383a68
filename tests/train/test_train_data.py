"""Training data: buckets follow the inference resize rule, batches are deterministic and split across
processes, features are cached once and re-read."""

import pytest
import torch
from PIL import Image

from step1x_edit import sampling
from step1x_edit.errors import DataFormatError, Step1XEditError
from step1x_edit.pipeline import Step1XEditPipeline
from step1x_edit.train.config import DataConfig, load_config
from step1x_edit.train.data import (
    EditExample,
    FeatureCache,
    FeatureSource,
    Featurizer,
    bucket_of,
    collate,
    load_examples,
    model_fingerprint,
    plan_batches,
    repeat_tasks,
)


def _example(width, height, name="x", task="color_alteration"):
    image = Image.new("RGB", (width, height), (10, 200, 30))
    return EditExample(name, task, image, image, {"en": "make it red", "zh": "把它变成红色"})


def test_buckets_are_the_sizes_the_pipeline_edits_at():
    for width, height in ((64, 64), (100, 50), (37, 90), (1024, 768)):
        size = bucket_of(_example(width, height), 128)
        assert size == sampling.resize_dimensions(width, height, 128)
        assert size[0] % 16 == 0 and size[1] % 16 == 0
        assert abs(size[0] * size[1] - 128 * 128) < 0.35 * 128 * 128


def test_batches_hold_one_bucket_are_reproducible_and_split_across_processes():
    sizes = [(64, 64)] * 10 + [(96, 48)] * 7 + [(48, 96)] * 5
    one = plan_batches(sizes, 4, seed=3, epoch=0)
    assert one == plan_batches(sizes, 4, seed=3, epoch=0)
    assert one != plan_batches(sizes, 4, seed=3, epoch=1)
    assert sorted(i for batch in one for i in batch) == list(range(len(sizes)))
    assert all(len({sizes[i] for i in batch}) == 1 and len(batch) <= 4 for batch in one)
    ranks = [plan_batches(sizes, 4, seed=3, epoch=0, world_size=2, rank=rank) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])
    assert not {i for b in ranks[0] for i in b} & {i for b in ranks[1] for i in b}


def test_task_repeats_list_a_category_s_samples_that_many_times_and_reject_unknown_tasks(tmp_path):
    examples = [_example(64, 64, "a", "color_alteration"), _example(64, 64, "b", "subject_addition"),
                _example(64, 64, "c", "color_alteration")]
    repeated = repeat_tasks(examples, {"subject_addition": 3})
    assert [example.sample_id for example in repeated] == ["a", "b", "b", "b", "c"]
    assert repeat_tasks(examples, {}) == examples
    with pytest.raises(DataFormatError, match="subject_removal"):
        repeat_tasks(examples, {"subject_removal": 2})
    config_file = tmp_path / "train.toml"
    config_file.write_text('[data]\nstore = "s"\ntask_repeats = {subject_addition = 3}\n', encoding="utf-8")
    assert load_config(config_file).data.task_repeats == {"subject_addition": 3}
    for bad in ({"subject_addition": 0}, {"subject_addition": 1.5}, ["subject_addition"]):
        with pytest.raises(Step1XEditError, match="task_repeats"):
            DataConfig(store="s", task_repeats=bad)


def test_a_repeated_sample_is_cached_once(tiny_model_dir, small_store, tmp_path):
    pipe = Step1XEditPipeline.from_pretrained(tiny_model_dir)
    examples = load_examples(DataConfig(store=str(small_store), resolution=64), small_store)[:3]
    repeated = [examples[0], examples[1], examples[0], examples[2], examples[1]]
    cache = FeatureCache(tmp_path, model_fingerprint(pipe, 64, ("en",)))
    shares = [FeatureSource(repeated, 64, Featurizer(pipe, ("en",)), cache).fill(progress=False, shard=(rank, 2))
              for rank in (0, 1)]
    assert shares == [2, 1]
    assert all(example.sample_id in cache for example in examples)


def test_the_feature_fingerprint_follows_the_frozen_weights_not_the_folder(tiny_model_dir, tmp_path):
    pipe = Step1XEditPipeline.from_pretrained(tiny_model_dir)
    copy = tmp_path / "copy"
    pipe.save_pretrained(copy)
    fingerprint = model_fingerprint(pipe, 64, ("en",))
    assert model_fingerprint(Step1XEditPipeline.from_pretrained(copy), 64, ("en",)) == fingerprint
    with torch.no_grad():
        pipe.transformer.proj_out.weight.add_(1.0)  # trained parts do not change the features
    assert model_fingerprint(pipe, 64, ("en",)) == fingerprint
    with torch.no_grad():
        next(pipe.text_encoder.parameters()).view(-1)[-1] += 1.0  # one MLLM weight does
    assert model_fingerprint(pipe, 64, ("en",)) != fingerprint


def test_features_are_cached_once_and_read_back(tiny_model_dir, small_store, tmp_path):
    pipe = Step1XEditPipeline.from_pretrained(tiny_model_dir)
    config = DataConfig(store=str(small_store), resolution=64, language="both")
    examples = load_examples(config, small_store)[:6]
    assert examples and all(example.instructions["en"] and example.instructions["zh"] for example in examples)
    fingerprint = model_fingerprint(pipe, 64, ("en", "zh"))
    assert fingerprint != model_fingerprint(pipe, 128, ("en", "zh"))
    source = FeatureSource(examples, 64, Featurizer(pipe, ("en", "zh")), FeatureCache(tmp_path, fingerprint))
    assert source.fill(progress=False) == 6
    assert source.fill(progress=False) == 0
    features = source[0]
    assert features["target"].shape == features["reference"].shape == (16, 8, 8)
    assert features["embeds_uncond"].shape[0] < features["embeds_en"].shape[0] <= 96
    batch = collate([source[i] for i in range(3)], "zh", 96)
    assert batch["embeds"].shape == (3, 96, 32) and batch["mask"].sum(1).tolist() == [
        source[i]["embeds_zh"].shape[0] for i in range(3)]
    assert batch["uncond_mask"].sum() < batch["mask"].sum()


def test_latents_only_features_skip_the_mllm_and_do_not_depend_on_it(tiny_model_dir, small_store, tmp_path):
    pipe = Step1XEditPipeline.from_pretrained(tiny_model_dir)
    examples = load_examples(DataConfig(store=str(small_store), resolution=64), small_store)[:2]
    fingerprint = model_fingerprint(pipe, 64, ())
    assert fingerprint != model_fingerprint(pipe, 64, ("en",))
    source = FeatureSource(examples, 64, Featurizer(pipe, ()), FeatureCache(tmp_path, fingerprint))
    assert source.fill(progress=False) == 2
    assert sorted(source[0]) == ["reference", "target"]
    assert sorted(collate([source[0], source[1]], "en", 96)) == ["reference", "target"]
    with torch.no_grad():  # a trained text encoder leaves a latents-only cache valid
        next(pipe.text_encoder.parameters()).add_(1.0)
    assert model_fingerprint(pipe, 64, ()) == fingerprint
