"""Training data: buckets follow the inference resize rule, batches are deterministic and split across
processes, features are cached once and re-read."""

import torch
from PIL import Image

from step1x_edit import sampling
from step1x_edit.pipeline import Step1XEditPipeline
from step1x_edit.train.config import DataConfig
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
)


def _example(width, height, name="x"):
    image = Image.new("RGB", (width, height), (10, 200, 30))
    return EditExample(name, "color_alteration", image, image, {"en": "make it red", "zh": "把它变成红色"})


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
