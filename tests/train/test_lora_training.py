"""LoRA training: adapters on the official targets, exact resume, and a kohya file the pipeline loads."""

import numpy as np
import torch
from PIL import Image

from step1x_edit.pipeline import Step1XEditPipeline
from step1x_edit.train.config import config_from_dict
from step1x_edit.train.trainer import train


def _edit(pipe):
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    return pipe(image=image, prompt="make it blue", num_inference_steps=3,
                generator=torch.Generator().manual_seed(0), output_type="np").images


def test_a_lora_trained_here_resumes_exactly_and_its_kohya_file_changes_the_pipeline(
        tables, tiny_model_dir, small_store, tmp_path):
    def config(output, **training):
        values = tables(tiny_model_dir, small_store, output, max_steps=6, checkpoint_every=3, learning_rate=1e-2,
                        **training)
        values["model"].update(mode="lora", lora_rank=4, lora_alpha=4.0)
        return config_from_dict(values)

    whole = train(config(tmp_path / "whole"), progress=False)
    train(config(tmp_path / "split", until_step=3), progress=False)
    resumed = train(config(tmp_path / "split"), progress=False)
    assert sorted(resumed.losses) == [4, 5, 6]
    for step in (4, 5, 6):
        assert abs(resumed.losses[step] - whole.losses[step]) <= 1e-6 * abs(whole.losses[step])

    final = whole.final_dir
    assert (final / "lora.safetensors").is_file() and (final / "lora_kohya.safetensors").is_file()
    pipe = Step1XEditPipeline.from_pretrained(tiny_model_dir)
    base = _edit(pipe)
    pipe.load_lora_weights(str(final / "lora_kohya.safetensors"))
    with_kohya = _edit(pipe)
    assert np.abs(with_kohya - base).max() > 1e-3

    other = Step1XEditPipeline.from_pretrained(tiny_model_dir)
    other.load_lora_weights(str(final / "lora.safetensors"))
    np.testing.assert_allclose(_edit(other), with_kohya, atol=2e-6)
