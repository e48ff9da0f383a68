"""Shared fixtures of the training tests: a tiny pipeline folder and a small generated store."""

import pytest
from transformers import Qwen2VLImageProcessorPil

from step1x_edit.data.generate import SyntheticConfig, generate_dataset
from step1x_edit.models.mllm import build_processor
from step1x_edit.testing.tiny import tiny_pipeline, tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random pipeline in the diffusers layout with a small image budget for the MLLM (4-16 visual tokens),
    conditions of 96 positions and a default size of 64 px."""
    path = tmp_path_factory.mktemp("tiny-model")
    pipe = tiny_pipeline(seed=0)
    pipe.processor = build_processor(tiny_tokenizer(), Qwen2VLImageProcessorPil(min_pixels=4 * 28 * 28,
                                                                               max_pixels=16 * 28 * 28))
    pipe.register_to_config(max_sequence_length=96, default_size_level=64)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def small_store(tmp_path_factory):
    """96 synthetic triplets of all categories at 64 px (about 5 of them in the validation split)."""
    path = tmp_path_factory.mktemp("store")
    generate_dataset(path, 96, SyntheticConfig(resolution=(64, 64), shard_size=32), progress=False)
    return path


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory):
    """One feature cache for all tests (its sub-folders are keyed by model and settings)."""
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture()
def tables(feature_cache):
    """``tables(model_dir, store, output_dir, **training)``: a training config as nested tables, tiny full
    fine-tuning on ``store`` at 64 px without validation, features cached in the shared cache."""

    def build(model_dir, store, output_dir, **training):
        return {
            "model": {"path": str(model_dir), "mode": "full"},
            "data": {"store": str(store), "resolution": 64, "cache_dir": str(feature_cache)},
            "training": {"output_dir": str(output_dir), "max_steps": 8, "batch_size": 4, "learning_rate": 1e-3,
                         "checkpoint_every": 4, "seed": 0, **training},
            "validation": {"every": -1},
        }

    return build


@pytest.fixture()
def toml_config(tmp_path):
    """``toml_config(model_dir, store, output_dir, **training)``: writes ``tmp_path/train.toml`` for tiny full
    fine-tuning at 64 px, batch 2, no validation, plus the given ``[training]`` fields; returns its path."""

    def write(model_dir, store, output_dir, **training):
        extra = "".join(f"{key} = {value}\n" for key, value in training.items())
        path = tmp_path / "train.toml"
        path.write_text(
            f'[model]\npath = "{model_dir}"\nmode = "full"\n'
            f'[data]\nstore = "{store}"\nresolution = 64\n'
            f'[training]\noutput_dir = "{output_dir}"\nbatch_size = 2\n{extra}'
            "[validation]\nevery = -1\n"
        )
        return path

    return write
