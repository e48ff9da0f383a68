"""The trainer: the loss falls, an interrupted run resumes exactly, settings are guarded, the CLI works."""

import csv
import json

import pytest
import torch

from step1x_edit.cli import main
from step1x_edit.errors import Step1XEditError
from step1x_edit.pipeline import Step1XEditPipeline
from step1x_edit.train.config import TrainingConfigError, config_from_dict
from step1x_edit.train.trainer import train


def _losses(run_dir):
    with open(run_dir / "logs" / "loss.csv", newline="") as handle:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(handle)}


@pytest.mark.parametrize("source_start_rate", [0.0, 0.5], ids=["plain-paths", "half-image-to-image-paths"])
def test_loss_falls_and_an_interrupted_run_resumes_with_identical_losses(tables, tiny_model_dir, small_store, tmp_path,
                                                                         source_start_rate):
    steps = 30
    whole = train(config_from_dict(tables(tiny_model_dir, small_store, tmp_path / "whole", max_steps=steps,
                                          checkpoint_every=10, source_start_rate=source_start_rate)),
                  progress=False)
    losses = [whole.losses[step] for step in range(1, steps + 1)]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5

    split = tables(tiny_model_dir, small_store, tmp_path / "split", max_steps=steps, checkpoint_every=10,
                   source_start_rate=source_start_rate)
    first = train(config_from_dict(split, {"training.until_step": 13}), progress=False)
    assert first.step == 13 and first.final_dir is None
    second = train(config_from_dict(split), progress=False)
    assert second.step == steps and second.final_dir is not None
    assert min(second.losses) == 14  # resumed after the step-13 checkpoint, nothing repeated
    for step in range(14, steps + 1):
        assert second.losses[step] == pytest.approx(whole.losses[step], rel=1e-5, abs=1e-7)
    assert _losses(tmp_path / "split") == pytest.approx(_losses(tmp_path / "whole"), rel=1e-5)


def test_full_fine_tuning_saves_a_loadable_pipeline_with_the_trained_weights(tables, tiny_model_dir, small_store, tmp_path):
    result = train(config_from_dict(tables(tiny_model_dir, small_store, tmp_path / "run", ema_decay=0.9)),
                   progress=False)
    trained = Step1XEditPipeline.from_pretrained(result.final_dir)
    original = Step1XEditPipeline.from_pretrained(tiny_model_dir)
    changed = [name for name, value in trained.transformer.state_dict().items()
               if not torch.equal(value, original.transformer.state_dict()[name])]
    assert any(name.startswith("transformer_blocks") for name in changed)
    assert any(name.startswith("connector") for name in changed)
    assert trained.config.max_sequence_length == 96
    image = trained(image=_image(), prompt="make it red", num_inference_steps=2).images[0]
    assert image.size == (64, 64)


def test_a_trained_text_encoder_learns_its_language_model_only_and_resumes_exactly(tables, tiny_model_dir,
                                                                                    small_store, tmp_path):
    def config(name, **training):
        built = tables(tiny_model_dir, small_store, tmp_path / name, max_steps=8, checkpoint_every=4,
                       dropout_text=0.3, **training)
        built["model"]["train_text_encoder"] = True
        return config_from_dict(built)

    whole = train(config("whole"), progress=False)
    first = train(config("split", until_step=5), progress=False)
    assert first.final_dir is None
    second = train(config("split"), progress=False)
    assert min(second.losses) == 6  # resumed from the step-5 checkpoint, which holds the encoder
    for step in range(6, 9):
        assert second.losses[step] == pytest.approx(whole.losses[step], rel=1e-5, abs=1e-7)

    trained = Step1XEditPipeline.from_pretrained(whole.final_dir).text_encoder.state_dict()
    original = Step1XEditPipeline.from_pretrained(tiny_model_dir).text_encoder.state_dict()
    changed = {name for name, value in trained.items() if not torch.equal(value, original[name])}
    assert any("language_model.layers" in name for name in changed)
    assert any("embed_tokens" in name for name in changed)
    assert not any(name.startswith(("model.visual", "visual", "lm_head")) for name in changed)


def test_training_the_text_encoder_with_lora_is_refused(tables, tiny_model_dir, small_store, tmp_path):
    built = tables(tiny_model_dir, small_store, tmp_path / "run")
    built["model"].update(mode="lora", train_text_encoder=True)
    with pytest.raises(TrainingConfigError, match="train_text_encoder needs model.mode = 'full'"):
        config_from_dict(built)


def _image():
    from PIL import Image

    return Image.new("RGB", (64, 64), (200, 30, 30))


def test_a_run_with_other_settings_in_the_same_folder_is_refused(tables, tiny_model_dir, small_store, tmp_path):
    config = tables(tiny_model_dir, small_store, tmp_path / "run", max_steps=2, checkpoint_every=2)
    train(config_from_dict(config), progress=False)
    with pytest.raises(TrainingConfigError, match="learning_rate"):
        train(config_from_dict(config, {"training.learning_rate": 5e-4}), progress=False)


def test_a_registered_objective_and_its_options_reach_the_training_step(tables, tiny_model_dir, small_store,
                                                                       tmp_path):
    from step1x_edit.demo.objectives import DEMO_OBJECTIVES

    def first_loss(name: str, **options) -> float:
        config = tables(tiny_model_dir, small_store, tmp_path / name, max_steps=1, checkpoint_every=1,
                        objective="x0_relative", objective_options={"space": "pixel", **options})
        return train(config_from_dict(config), progress=False, objectives=DEMO_OBJECTIVES).losses[1]

    squared = first_loss("squared")
    both = first_loss("both", absolute=1.0)
    absolute = first_loss("absolute", squared=0.0, absolute=1.0)
    assert both == pytest.approx(squared + absolute, rel=1e-4)  # the same batch, noise and weights at step 1
    assert absolute != pytest.approx(squared, rel=1e-3)
    # the product knows only the official objective, and a bad option is refused before anything is loaded
    with pytest.raises(TrainingConfigError, match="training.objective must be one of 'flow_matching'"):
        train(config_from_dict(tables(tiny_model_dir, small_store, tmp_path / "unknown", objective="x0")),
              progress=False)
    with pytest.raises(TrainingConfigError, match="objective_options.space"):
        train(config_from_dict(tables(tiny_model_dir, small_store, tmp_path / "bad", objective="x0",
                                      objective_options={"space": "rgb"})), progress=False, objectives=DEMO_OBJECTIVES)
    assert not (tmp_path / "bad").exists()


def test_attention_query_key_gains_get_their_own_learning_rate(tiny_model_dir, small_store, tmp_path):
    from step1x_edit.train.trainer import _parameter_groups

    transformer = Step1XEditPipeline.from_pretrained(tiny_model_dir).transformer
    config = config_from_dict({"model": {"path": str(tiny_model_dir)}, "data": {"store": str(small_store)},
                               "training": {"learning_rate": 1e-4, "qk_norm_lr_scale": 10}})
    rest, gains = _parameter_groups(transformer, config)
    names = {id(param): name for name, param in transformer.named_parameters()}
    gain_names = [names[id(param)] for param in gains["params"]]
    assert gain_names and all(".norm_q." in name or ".norm_k." in name or ".norm_added_" in name
                              for name in gain_names)
    assert any(name.startswith("single_transformer_blocks") for name in gain_names)
    assert gains["lr"] == pytest.approx(1e-3) and "lr" not in rest
    assert len(rest["params"]) + len(gains["params"]) == sum(1 for _ in transformer.parameters())
    plain = config_from_dict({"model": {"path": str(tiny_model_dir)}, "data": {"store": str(small_store)}})
    assert len(_parameter_groups(transformer, plain)) == 1


def test_a_trained_text_encoder_gets_its_own_learning_rate(tiny_model_dir, small_store):
    from step1x_edit.train.trainer import _parameter_groups

    pipe = Step1XEditPipeline.from_pretrained(tiny_model_dir)
    text_params = list(pipe.text_encoder.model.language_model.parameters())
    config = config_from_dict({"model": {"path": str(tiny_model_dir), "mode": "full", "train_text_encoder": True},
                               "data": {"store": str(small_store)},
                               "training": {"learning_rate": 1e-4, "text_encoder_lr_scale": 0.1}})
    rest, text = _parameter_groups(pipe.transformer, config, text_params)
    assert text["lr"] == pytest.approx(1e-5) and "lr" not in rest
    assert [id(param) for param in text["params"]] == [id(param) for param in text_params]


def test_unknown_config_fields_and_bad_values_are_errors():
    with pytest.raises(TrainingConfigError, match="lerning_rate"):
        config_from_dict({"data": {"store": "x"}, "training": {"lerning_rate": 1}})
    with pytest.raises(Step1XEditError, match="mode"):
        config_from_dict({"data": {"store": "x"}, "model": {"mode": "half"}})
    with pytest.raises(TrainingConfigError, match="exactly one"):
        config_from_dict({"data": {}})
    with pytest.raises(Step1XEditError, match=r"text_encoder_lr_scale must be a finite number in \(0, "):
        config_from_dict({"data": {"store": "x"}, "training": {"text_encoder_lr_scale": 0}})
    with pytest.raises(TrainingConfigError, match="dropout"):
        config_from_dict({"data": {"store": "x"}, "training": {"dropout_text": 0.7, "dropout_both": 0.5}})
    for bad in ({"source_start_rate": 1.5}, {"source_start_range": [0.8, 0.3]}, {"source_start_range": [0, 0.5]},
                {"source_start_range": [0.5]}):
        with pytest.raises(Step1XEditError, match="source_start"):
            config_from_dict({"data": {"store": "x"}, "training": bad})
    with pytest.raises(Step1XEditError, match="pure_noise_rate"):
        config_from_dict({"data": {"store": "x"}, "training": {"pure_noise_rate": -0.1}})
    with pytest.raises(Step1XEditError, match="objective_options must be a table"):
        config_from_dict({"data": {"store": "x"}, "training": {"objective_options": ["x0"]}})


def test_cli_trains_from_a_toml_file_with_overrides(toml_config, tiny_model_dir, small_store, tmp_path):
    config = toml_config(tiny_model_dir, small_store, tmp_path / "run", max_steps=50)
    assert main(["train", str(config), "--max-steps", "3", "--set", "training.checkpoint_every=3",
                 "--no-progress"]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["training"]["max_steps"] == 3
    assert (tmp_path / "run" / "final" / "model_index.json").is_file()
    assert main(["train", str(tmp_path / "missing.toml")]) == 2


def test_training_reads_an_official_metadata_json(tables, tiny_model_dir, small_store, tmp_path):
    from step1x_edit.data.interchange import export_official_json

    metadata = export_official_json(small_store, tmp_path / "official", absolute_paths=False)
    config = tables(tiny_model_dir, small_store, tmp_path / "run", max_steps=2, checkpoint_every=2)
    config["data"] = {"metadata": str(metadata), "resolution": 64, "split": "all"}
    result = train(config_from_dict(config), progress=False)
    assert result.step == 2 and (tmp_path / "run" / "imported-data" / "store.json").is_file()


def test_lora_on_an_untrained_reference_delta_model_is_refused_unless_its_output_layer_is_adapted():
    from step1x_edit.demo.delta import ReferenceDeltaTransformer2DModel
    from step1x_edit.models.presets import build_transformer
    from step1x_edit.train.trainer import _set_trainable

    lora = config_from_dict({"data": {"store": "x"}, "model": {"mode": "lora", "lora_rank": 2}})
    with pytest.raises(TrainingConfigError, match="output layer is still zero"):
        _set_trainable(build_transformer("tiny", ReferenceDeltaTransformer2DModel), lora)
    with_output = config_from_dict({"data": {"store": "x"}, "model": {
        "mode": "lora", "lora_rank": 2, "lora_targets": ["to_q", "proj_out"]}})
    assert _set_trainable(build_transformer("tiny", ReferenceDeltaTransformer2DModel), with_output)
    assert _set_trainable(build_transformer("tiny"), lora)  # velocity models are unaffected


def test_validation_edits_with_the_model_s_own_defaults_and_the_thread_count_is_restored(
        tables, tiny_model_dir, small_store, tmp_path, monkeypatch):
    from step1x_edit.models.transformer import Step1XEditTransformer2DModel

    model_dir = tmp_path / "one-step-model"  # a model whose own defaults are the demo model's: 1 step, guidance 1
    pipe = Step1XEditPipeline.from_pretrained(tiny_model_dir)
    pipe.register_to_config(default_num_inference_steps=1, default_guidance_scale=1.0)
    pipe.save_pretrained(model_dir, safe_serialization=True)
    edits = []
    forward = Step1XEditTransformer2DModel.forward

    def counting(self, *args, **kwargs):
        if not self.training:  # the validation's edits (training steps run in train mode)
            edits.append(kwargs["hidden_states"].shape[0])
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Step1XEditTransformer2DModel, "forward", counting)
    config = tables(model_dir, small_store, tmp_path / "run", max_steps=1, checkpoint_every=1, num_threads=1)
    config["validation"] = {"every": 0, "num_samples": 2}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train(config_from_dict(config), progress=False)
        assert torch.get_num_threads() == 2  # the run used 1 and gave the caller's back
    finally:
        torch.set_num_threads(threads)
    assert edits == [1, 1]  # one transformer call per sample: 1 step, no guidance (not 28 steps of CFG)
    metrics = json.loads((tmp_path / "run" / "validation" / "step-000001" / "metrics.json").read_text())
    assert {"psnr", "ssim", "identity_psnr"} <= set(metrics)
